//! Tests of config loading: defaults, layering, and the messages operators see.

use std::os::unix::fs::PermissionsExt;

use super::*;

const KEY: &str = "sk-CANARY-config-0123456789abcdef";

fn with_key() -> Env {
    Env::from_pairs(&[("OPENAI_API_KEY", KEY)])
}

/// Loads `toml` as a config file in a fresh directory that is also the current directory.
fn load(toml: &str, env: &Env) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boxedclaw.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load_in(Some(&path), env, dir.path())
}

fn err(toml: &str, env: &Env) -> String {
    let e = load(toml, env).unwrap_err().to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn defaults_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::load_in(None, &with_key(), dir.path()).unwrap();
    assert_eq!(c.sandbox, SandboxChoice::Auto);
    assert_eq!(c.workspace_root, dir.path().join("workspace"));
    assert_eq!(c.data_dir, dir.path().join("data"));
    assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
    assert!(c.admins.is_empty() && c.approvers.is_empty());
    assert_eq!(c.llm.base_url, OPENAI_BASE_URL);
    assert_eq!(c.llm.model, "gpt-4o-mini");
    assert_eq!(c.llm.api_key.as_ref().unwrap().expose(), KEY);
    assert_eq!(
        (c.llm.timeout, c.llm.max_retries, c.llm.max_tokens),
        (Duration::from_secs(120), 3, 4096)
    );
    assert_eq!(
        c.agent.limits,
        AgentLimits {
            max_tool_iterations: 16,
            shell_timeout_secs: 60,
            tool_output_cap: 65536,
            max_history_bytes: 262_144
        }
    );
    assert!(c.agent.system_prompt.contains("/workspace"));
    assert_eq!(c.agent.binary, None);
    assert_eq!(c.agent.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.agent.ready_timeout, Duration::from_secs(10));
    assert_eq!(c.agent.turn_timeout, Duration::from_secs(1800));
    assert_eq!(c.limits.memory_bytes, 1024 << 20);
    assert_eq!(c.limits.open_files, 256);
    assert_eq!(
        c.limits.workspace_bytes,
        1024 << 20,
        "workspaces have a quota by default"
    );
    assert_eq!(c.approvals.timeout, Duration::from_secs(600));
    assert_eq!(
        c.router,
        RouterConfig {
            queue_depth: 32,
            max_conversations: 1000,
            drain_timeout: Duration::from_secs(30),
            outbox_retry: Duration::from_secs(30),
        }
    );
    assert_eq!(c.config_file, None);
    assert_eq!(c.channels, ChannelsPresent::default());
}

#[test]
fn finds_boxedclaw_toml_in_the_current_directory_or_via_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("boxedclaw.toml"),
        "sandbox = \"namespace\"\n",
    )
    .unwrap();
    let c = Config::load_in(None, &with_key(), dir.path()).unwrap();
    assert_eq!(c.sandbox, SandboxChoice::Namespace);
    assert_eq!(c.config_file, Some(dir.path().join("boxedclaw.toml")));

    std::fs::write(dir.path().join("other.toml"), "sandbox = \"boxlite\"\n").unwrap();
    let env = Env::from_pairs(&[("OPENAI_API_KEY", KEY), ("BOXEDCLAW_CONFIG", "other.toml")]);
    let c = Config::load_in(None, &env, dir.path()).unwrap();
    assert_eq!(c.sandbox, SandboxChoice::Boxlite);
    assert_eq!(c.config_file, Some(dir.path().join("other.toml")));

    let e = Config::load_in(Some(Path::new("/nonexistent/x.toml")), &env, dir.path()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.toml"), "{e}");
}

#[test]
fn env_overrides_the_file() {
    let toml = r#"
        sandbox = "boxlite"
        workspace = "/srv/ws"
        http_addr = "0.0.0.0:9000"
        admins = ["slack:U1"]
        [llm]
        base_url = "http://file:1/v1"
        model = "file-model"
        max_tokens = 100
    "#;
    let env = Env::from_pairs(&[
        ("BOXEDCLAW_SANDBOX", "namespace"),
        ("BOXEDCLAW_WORKSPACE", "/env/ws"),
        ("BOXEDCLAW_HTTP_ADDR", "127.0.0.1:7000"),
        ("BOXEDCLAW_ADMINS", "telegram:42, discord:7,,"),
        ("BOXEDCLAW_APPROVERS", "slack:U9"),
        ("OPENAI_BASE_URL", "http://localhost:11434/v1/"),
        ("OPENAI_MODEL", "llama3.2"),
        ("SLACK_BOT_TOKEN", "xoxb-x"),
        ("SLACK_APP_TOKEN", "xapp-x"),
        ("TELEGRAM_BOT_TOKEN", "  "),
    ]);
    let c = load(toml, &env).unwrap();
    assert_eq!(c.sandbox, SandboxChoice::Namespace);
    assert_eq!(c.workspace_root, Path::new("/env/ws"));
    assert_eq!(c.http_addr, "127.0.0.1:7000".parse().unwrap());
    let admins: Vec<String> = c.admins.iter().map(ToString::to_string).collect();
    assert_eq!(admins, ["telegram:42", "discord:7"]);
    assert_eq!(c.approvers.len(), 1);
    assert_eq!(c.llm.base_url, "http://localhost:11434/v1");
    assert_eq!(c.llm.model, "llama3.2");
    assert_eq!(c.llm.max_tokens, 100);
    // A base URL alone is enough (local servers need no key).
    assert!(c.llm.api_key.is_none());
    assert_eq!(
        c.channels,
        ChannelsPresent {
            telegram: false,
            slack: true,
            discord: false
        }
    );
}

#[test]
fn unknown_keys_are_named() {
    let e = err("sandbox = \"auto\"\nworkspaces = \"x\"\n", &with_key());
    assert!(
        e.contains("boxedclaw.toml:2:1: unknown key `workspaces`"),
        "{e}"
    );
    let e = err("[llm]\nmodel = \"m\"\ntimeout = 5\n", &with_key());
    assert!(e.contains(":3:1: unknown key `llm.timeout`"), "{e}");
    assert!(e.contains("timeout_secs"), "{e}");
    let e = err("[llm]\napi_key = \"sk-inline\"\n", &with_key());
    assert!(
        e.contains("unknown key `llm.api_key`") && e.contains("api_key_file"),
        "{e}"
    );
    assert!(e.contains("OPENAI_API_KEY"), "{e}");
    let e = err("[agent.extra]\nx = 1\n", &with_key());
    assert!(e.contains("unknown key `agent.extra`"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        (
            "sandbox = \"vm\"",
            &["`sandbox`", "auto, namespace, boxlite"][..],
        ),
        ("http_addr = \"garbage\"", &["`http_addr`", "IP:port"]),
        (
            "[llm]\ntimeout_secs = 0",
            &["`llm.timeout_secs`", "1 to 600"],
        ),
        ("[llm]\nmax_retries = 11", &["`llm.max_retries`", "0 to 10"]),
        (
            "[llm]\nbase_url = \"ftp://x\"",
            &["`llm.base_url`", "http://"],
        ),
        ("[router]\nqueue_depth = 5000", &["`router.queue_depth`"]),
        ("admins = [\"irc:bob\"]", &["`admins`", "irc"]),
        (
            "[agent]\ntool_output_cap = 10",
            &["`agent.tool_output_cap`", "1024"],
        ),
        (
            "[llm]\ntimeout_secs = \"ten\"",
            &[":2:", "`llm.timeout_secs`", "invalid type"],
        ),
        ("[llm]\nmax_tokens = -1", &["`llm.max_tokens`"]),
        ("sandbox = ", &["boxedclaw.toml:1:"]),
    ];
    for (toml, wants) in cases {
        let e = err(toml, &with_key());
        for want in wants {
            assert!(e.contains(want), "{toml:?}: {e}");
        }
    }
    let env = Env::from_pairs(&[("OPENAI_API_KEY", KEY), ("BOXEDCLAW_SANDBOX", "vm")]);
    let e = err("", &env);
    assert!(e.starts_with("invalid BOXEDCLAW_SANDBOX: "), "{e}");
    let env = Env::from_pairs(&[("OPENAI_BASE_URL", "http://user:pw@host/v1")]);
    assert!(err("", &env).contains("credentials"));
}

#[test]
fn no_llm_is_its_own_one_line_error() {
    let e = load("", &Env::default()).unwrap_err();
    assert!(matches!(e, ConfigError::NoLlm));
    assert_eq!(e.to_string(), NO_LLM);
    assert!(NO_LLM.contains("OPENAI_API_KEY") && NO_LLM.contains("ANTHROPIC_API_KEY"));
    // Blank values count as unset.
    assert!(matches!(
        load("", &Env::from_pairs(&[("OPENAI_API_KEY", " ")])),
        Err(ConfigError::NoLlm)
    ));
}

#[test]
fn api_key_file_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = format!("[llm]\napi_key_file = \"{}\"\n", key.display());
    let e = err(&toml, &Env::default());
    assert!(
        e.contains("`llm.api_key_file`") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = load(&toml, &Env::default()).unwrap();
    assert_eq!(c.llm.api_key.unwrap().expose(), KEY);
}

#[test]
fn anthropic_key_alone_selects_anthropic() {
    let env = Env::from_pairs(&[("ANTHROPIC_API_KEY", "sk-ant-xyz")]);
    let c = load("", &env).unwrap();
    assert_eq!(c.llm.base_url, ANTHROPIC_BASE_URL);
    assert_eq!(c.llm.model, "claude-sonnet-4-5");
    assert_eq!(c.llm.api_key.unwrap().expose(), "sk-ant-xyz");
    // With an OpenAI key too, OpenAI wins.
    let env = Env::from_pairs(&[("ANTHROPIC_API_KEY", "sk-ant-xyz"), ("OPENAI_API_KEY", KEY)]);
    let c = load("", &env).unwrap();
    assert_eq!(c.llm.base_url, OPENAI_BASE_URL);
    assert_eq!(c.llm.api_key.unwrap().expose(), KEY);
}

#[test]
fn relative_paths_are_made_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "workspace = \"ws\"\ndata_dir = \"./d/e\"\n[agent]\nbinary = \"bin/agent\"\n",
    )
    .unwrap();
    let c = Config::load_in(Some(Path::new("c.toml")), &with_key(), dir.path()).unwrap();
    assert_eq!(c.workspace_root, dir.path().join("ws"));
    assert_eq!(c.data_dir, dir.path().join("d/e"));
    assert_eq!(c.agent.binary, Some(dir.path().join("bin/agent")));
    assert_eq!(c.config_file, Some(path));
    assert!(c.workspace_root.is_absolute());
}

#[test]
fn debug_never_shows_the_key() {
    let c = load("", &with_key()).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("CANARY"), "{shown}");
    assert!(shown.contains("[REDACTED]"));
    assert!(!format!("{:?}", with_key()).contains("CANARY"));
}

#[test]
fn boxlite_section_defaults_env_and_errors() {
    let env = Env::from_pairs(&[("OPENAI_API_KEY", KEY), ("HOME", "/home/op")]);
    let c = load("", &env).unwrap();
    assert_eq!(
        c.boxlite.runtime_dir,
        Path::new("/home/op/.local/share/boxedclaw/boxlite/v0.10.8")
    );
    assert_eq!(
        c.boxlite.image,
        GuestImage::Layout(c.data_dir.join("boxlite/guest-image"))
    );
    assert_eq!(
        (c.boxlite.cpus, c.boxlite.memory_mib, c.boxlite.warm_pool),
        (1, 512, 0)
    );

    let toml = "[boxlite]\nruntime_dir = \"/opt/bx\"\nimage = \"debian:bookworm-slim\"\ncpus = 2\nwarm_pool = 3\n";
    let c = load(toml, &env).unwrap();
    assert_eq!(c.boxlite.runtime_dir, Path::new("/opt/bx"));
    assert_eq!(
        c.boxlite.image,
        GuestImage::Reference("debian:bookworm-slim".into())
    );
    assert_eq!((c.boxlite.cpus, c.boxlite.warm_pool), (2, 3));

    let env2 = Env::from_pairs(&[("OPENAI_API_KEY", KEY), ("BOXLITE_RUNTIME_DIR", "/env/rt")]);
    assert_eq!(
        load(toml, &env2).unwrap().boxlite.runtime_dir,
        Path::new("/env/rt")
    );
    let c = load("[boxlite]\nimage = \"oci:/srv/img\"\n", &env).unwrap();
    assert_eq!(c.boxlite.image, GuestImage::Layout("/srv/img".into()));

    assert!(err("[boxlite]\nwarm_pool = 65\n", &env).contains("boxlite.warm_pool"));
    assert!(err("[boxlite]\nimage = \"two words\"\n", &env).contains("boxlite.image"));
    assert!(err("[boxlite]\nnetwork = true\n", &env).contains("network"));
}

#[test]
fn telegram_is_enabled_by_its_token_and_webhook_mode_needs_its_own_secret() {
    let token = "123:telegram-token";
    let c = load(
        "[telegram]\npoll_timeout_secs = 5\n",
        &Env::from_pairs(&[
            ("OPENAI_API_KEY", KEY),
            ("TELEGRAM_BOT_TOKEN", token),
            ("TELEGRAM_API_URL", "http://127.0.0.1:9/"),
        ]),
    )
    .unwrap();
    let t = c.telegram.as_ref().unwrap();
    assert_eq!(t.token.expose(), token);
    assert_eq!(t.api_url.as_deref(), Some("http://127.0.0.1:9"));
    assert_eq!(t.poll_timeout, Duration::from_secs(5));
    assert!(t.webhook.is_none(), "long polling by default");
    assert!(c.channels.telegram);
    assert!(
        !format!("{c:?}").contains(token),
        "Debug must not print the token"
    );

    let webhook = |secret: Option<&'static str>| {
        let mut vars = vec![
            ("OPENAI_API_KEY", KEY),
            ("TELEGRAM_BOT_TOKEN", token),
            ("TELEGRAM_WEBHOOK_URL", "https://bot.example/tg"),
        ];
        if let Some(s) = secret {
            vars.push(("TELEGRAM_WEBHOOK_SECRET", s));
        }
        Env::from_pairs(&vars)
    };
    assert!(err("", &webhook(None)).contains("needs a secret"));
    assert!(err("", &webhook(Some(token))).contains("must differ from the bot token"));
    let c = load("", &webhook(Some("s3cret_value"))).unwrap();
    let w = c.telegram.unwrap().webhook.unwrap();
    assert_eq!(
        (w.public_url.as_str(), w.path.as_str()),
        ("https://bot.example/tg", "/telegram/webhook")
    );
    assert!(w.secret.matches(b"s3cret_value"));
    // Without a token the channel is off, whatever else is set.
    assert!(load("", &with_key()).unwrap().telegram.is_none());
}

#[test]
fn console_is_on_by_default_and_needs_a_token_off_loopback() {
    let c = load("", &with_key()).unwrap();
    assert!(c.console.enabled);
    assert!(c.console.admin_token.is_none());

    let mut vars = vec![
        ("OPENAI_API_KEY", KEY),
        ("BOXEDCLAW_HTTP_ADDR", "0.0.0.0:8080"),
    ];
    let e = err("", &Env::from_pairs(&vars));
    assert!(e.contains("BOXEDCLAW_ADMIN_TOKEN"), "{e}");
    assert!(e.contains("0.0.0.0:8080"), "{e}");

    vars.push(("BOXEDCLAW_ADMIN_TOKEN", "too-short"));
    let e = err("", &Env::from_pairs(&vars));
    assert!(e.contains("at least 16"), "{e}");
    assert!(
        !e.contains("too-short"),
        "the token itself is never echoed: {e}"
    );

    vars.pop();
    vars.push(("BOXEDCLAW_ADMIN_TOKEN", "a-long-enough-admin-token"));
    let c = load("", &Env::from_pairs(&vars)).unwrap();
    assert!(c.console.admin_token.is_some());

    // Without the console a public address needs no token (platform webhooks only).
    vars.pop();
    let c = load("[console]\nenabled = false", &Env::from_pairs(&vars)).unwrap();
    assert!(!c.console.enabled);
    assert!(err("[console]\nenable = true", &with_key()).contains("console.enable"));
}

#[test]
fn discord_approver_roles_from_file_or_env() {
    let token = [
        ("OPENAI_API_KEY", KEY),
        ("DISCORD_BOT_TOKEN", "discord-token"),
    ];
    let c = load(
        "[discord]\napprover_roles = [\"900\", \"901\", \"900\"]\n",
        &Env::from_pairs(&token),
    )
    .unwrap();
    assert_eq!(c.discord.unwrap().approver_roles, [900, 901]);
    let mut env = token.to_vec();
    env.push(("DISCORD_APPROVER_ROLES", " 42 ,,"));
    let c = load("", &Env::from_pairs(&env)).unwrap();
    assert_eq!(c.discord.unwrap().approver_roles, [42]);
    env.pop();
    env.push(("DISCORD_APPROVER_ROLES", "42,moderators"));
    let e = err("", &Env::from_pairs(&env));
    assert!(
        e.contains("DISCORD_APPROVER_ROLES")
            && e.contains("\"moderators\" is not a Discord role id"),
        "{e}"
    );
}

#[test]
fn slack_approvers_channel_from_file_or_env() {
    let slack = [
        ("OPENAI_API_KEY", KEY),
        ("SLACK_BOT_TOKEN", "xoxb-slack-token"),
        ("SLACK_APP_TOKEN", "xapp-slack-token"),
    ];
    let c = load("", &Env::from_pairs(&slack)).unwrap();
    assert_eq!(c.slack.unwrap().approvers_channel, None, "off by default");
    let c = load(
        "[slack]\napprovers_channel = \"C0123ABCD\"\n",
        &Env::from_pairs(&slack),
    )
    .unwrap();
    assert_eq!(
        c.slack.unwrap().approvers_channel.as_deref(),
        Some("C0123ABCD")
    );
    let mut env = slack.to_vec();
    env.push(("SLACK_APPROVERS_CHANNEL", " G0PRIVATE "));
    let c = load(
        "[slack]\napprovers_channel = \"C0123ABCD\"\n",
        &Env::from_pairs(&env),
    )
    .unwrap();
    assert_eq!(
        c.slack.unwrap().approvers_channel.as_deref(),
        Some("G0PRIVATE"),
        "the environment wins"
    );

    let e = err(
        "[slack]\napprovers_channel = \"#approvals\"\n",
        &Env::from_pairs(&slack),
    );
    assert!(
        e.contains("`slack.approvers_channel`") && e.contains("not a Slack channel id"),
        "{e}"
    );
    for bad in ["c0123", "U0123ABCD", "C", "C01 23"] {
        let mut env = slack.to_vec();
        env.push(("SLACK_APPROVERS_CHANNEL", bad));
        let e = err("", &Env::from_pairs(&env));
        assert!(
            e.starts_with("invalid SLACK_APPROVERS_CHANNEL: ") && e.contains("C0123ABCD"),
            "{bad:?}: {e}"
        );
    }
    assert!(KNOWN_ENV_VARS.contains(&"SLACK_APPROVERS_CHANNEL"));
    // Without a bot token Slack is off, whatever else is set.
    let e = Env::from_pairs(&[("OPENAI_API_KEY", KEY), ("SLACK_APPROVERS_CHANNEL", "#x")]);
    assert!(load("", &e).unwrap().slack.is_none());
}

#[test]
fn discord_public_key_enables_the_interactions_endpoint() {
    let hex_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let token = [
        ("OPENAI_API_KEY", KEY),
        ("DISCORD_BOT_TOKEN", "discord-token"),
    ];
    let c = load("", &Env::from_pairs(&token)).unwrap();
    assert!(c.discord.unwrap().interactions_public_key.is_none());
    let toml =
        format!("[discord]\npublic_key = \"{hex_key}\"\ninteractions_path = \"/hooks/discord\"\n");
    let d = load(&toml, &Env::from_pairs(&token))
        .unwrap()
        .discord
        .unwrap();
    assert_eq!(
        d.interactions_public_key.unwrap().to_bytes().to_vec(),
        hex::decode(hex_key).unwrap()
    );
    assert_eq!(d.interactions_path, "/hooks/discord");
    let mut env = token.to_vec();
    env.push(("DISCORD_PUBLIC_KEY", "not-hex"));
    let e = err("", &Env::from_pairs(&env));
    assert!(
        e.contains("DISCORD_PUBLIC_KEY") && e.contains("64 hex digits"),
        "{e}"
    );
    let e = err(
        "[discord]\ninteractions_path = \"discord\"\n",
        &Env::from_pairs(&token),
    );
    assert!(e.contains("discord.interactions_path"), "{e}");
}

#[test]
fn a_workspace_quota_is_off_or_big_enough_for_a_filesystem() {
    let quota = |mib: u64| load(&format!("[limits]\nworkspace_mib = {mib}\n"), &with_key());
    assert_eq!(quota(0).unwrap().limits.workspace_bytes, 0);
    assert_eq!(quota(16).unwrap().limits.workspace_bytes, 16 << 20);
    let e = err("[limits]\nworkspace_mib = 8\n", &with_key());
    assert!(
        e.contains("limits.workspace_mib") && e.contains("0 (no quota) or at least 16"),
        "{e}"
    );
}
