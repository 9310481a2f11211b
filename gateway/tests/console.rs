//! The web console end to end: the real gateway (namespace sandbox, real agent, fake LLM) with
//! its console, driven by headless Chromium as a user would, and over plain HTTP for the access
//! rule and `/metrics`. The run also writes the README's screenshots to `docs/screenshots/`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use browser::{Browser, Page};
use serde_json::json;
use support::in_process::{RunningGateway, WAIT, line_count};
use support::{text, tool};

const ADMIN_TOKEN: &str = "console-admin-token-0123456789";

/// Every web conversation's workspace (their names carry the browser session id, which the
/// page cannot read: the session cookie is HttpOnly).
fn web_workspaces(g: &RunningGateway) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(g.workspace_root()) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("web+"))
        .collect();
    out.sort();
    out
}

/// Where a screenshot goes: `target/tmp/screenshots/` on every run, or the README's own
/// `docs/screenshots/` with `BOXEDCLAW_UPDATE_SCREENSHOTS=1` (so ordinary runs leave the
/// checkout clean).
fn screenshot_path(name: &str) -> PathBuf {
    let dir = if std::env::var_os("BOXEDCLAW_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    dir.join(name)
}

/// Starts the gateway and waits until `/readyz` says it is ready (503 `starting` while the
/// store opens, the channels connect and pending work is recovered).
async fn start_gateway(bind: &str, vars: &[(&str, &str)]) -> RunningGateway {
    ready(RunningGateway::start_on(bind, "", vars, 0).await).await
}

async fn ready(g: RunningGateway) -> RunningGateway {
    let readyz = format!("http://127.0.0.1:{}/readyz", g.http.port());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = reqwest::get(&readyz).await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        if status == 200 {
            assert_eq!(body, "ready\n");
            return g;
        }
        assert_eq!((status.as_u16(), body.as_str()), (503, "starting\n"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn send(page: &Page, message: &str) {
    page.type_text("#input", message).await;
    page.press_enter("#input").await;
}

/// Waits for an agent message containing `needle`.
async fn agent_says(page: &Page, needle: &str) {
    let js = format!(
        "[...document.querySelectorAll('#messages .msg-agent')].some(e => e.textContent.includes({}))",
        serde_json::to_string(needle).unwrap()
    );
    page.wait_for(&js, &format!("an agent reply containing {needle:?}"))
        .await;
}

async fn texts(page: &Page, selector: &str) -> Vec<String> {
    let js = format!(
        "[...document.querySelectorAll({})].map(e => e.textContent)",
        serde_json::to_string(selector).unwrap()
    );
    serde_json::from_value(page.eval(&js).await).unwrap()
}

const XSS_REPLY: &str =
    "Hi! <script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\"> <b>bold?</b>";
const XSS_COMMAND: &str = "echo '<script>window.__xss=3</script><img src=x onerror=window.__xss=4>' >> /workspace/log.txt";

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_chats_approves_and_sees_only_its_own_conversation() {
    let g = start_gateway("127.0.0.1:0", &[]).await;
    let base = format!("http://{}", g.http);
    // Scripts are keyed by a conversation's first message; each turn takes the next steps.
    g.llm.script(
        "hello there",
        vec![
            text(XSS_REPLY),
            tool("shell", json!({ "command": XSS_COMMAND })),
            text("finished: {last_tool_result}"),
        ],
    );
    g.llm.script(
        "who else is here?",
        vec![
            text("only you, second visitor"),
            tool(
                "shell",
                json!({ "command": "echo second >> /workspace/second.txt" }),
            ),
            text("second job done"),
        ],
    );
    let browser = Browser::launch().await;

    // First visitor: a reply full of markup shows as text and runs nothing.
    let alice = browser.new_page().await;
    alice.goto(&format!("{base}/")).await;
    alice
        .wait_for(
            "document.getElementById('status').textContent.includes('connected')",
            "the event stream",
        )
        .await;
    send(&alice, "hello there").await;
    agent_says(&alice, "Hi!").await;
    let replies = texts(&alice, "#messages .msg-agent").await;
    assert!(
        replies
            .iter()
            .any(|r| r.contains("<script>window.__xss = 1</script>")),
        "{replies:?}"
    );
    assert!(
        replies.iter().any(|r| r.contains("<img src=x onerror=")),
        "{replies:?}"
    );
    assert_eq!(alice.eval("typeof window.__xss").await, json!("undefined"));
    assert_eq!(
        alice
            .eval(
                "document.querySelectorAll('#messages img, #messages script, #messages b').length"
            )
            .await,
        json!(0)
    );

    // A risky call: an approval card shows the exact action, as text.
    send(&alice, "please run it").await;
    alice
        .wait_for(
            "document.querySelector('.approval[data-approval] button.approve') !== null",
            "an approval card",
        )
        .await;
    let action = texts(&alice, ".approval .approval-action").await;
    assert_eq!(action.len(), 1);
    assert!(
        action[0].contains(XSS_COMMAND),
        "the exact action: {action:?}"
    );
    alice.screenshot(&screenshot_path("chat.png")).await;
    let workspaces = web_workspaces(&g);
    assert_eq!(workspaces.len(), 1, "{workspaces:?}");
    let log = workspaces[0].join("log.txt");
    assert_eq!(line_count(&log), 0, "nothing runs before the click");

    alice.click(".approval button.approve").await;
    agent_says(&alice, "finished:").await;
    alice
        .wait_for("[...document.querySelectorAll('.approval-outcome')].some(e => e.textContent.includes('approved by web:'))", "the decided card")
        .await;
    assert_eq!(
        alice
            .eval("document.querySelectorAll('.approval button.approve').length")
            .await,
        json!(0),
        "buttons removed"
    );
    assert_eq!(line_count(&log), 1, "the approved command ran once");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("<script>window.__xss=3</script>")
    );
    assert_eq!(alice.eval("typeof window.__xss").await, json!("undefined"));

    // A second browser context is a second visitor with its own conversation.
    let bob = browser.new_page().await;
    bob.goto(&format!("{base}/")).await;
    bob.wait_for(
        "document.getElementById('status').textContent.includes('connected')",
        "the event stream",
    )
    .await;
    assert!(
        texts(&bob, "#messages .msg").await.is_empty(),
        "a new visitor sees nothing of the first"
    );
    send(&bob, "who else is here?").await;
    agent_says(&bob, "only you, second visitor").await;
    let bob_sees = texts(&bob, "#messages .msg").await.join("\n");
    assert!(
        !bob_sees.contains("hello there") && !bob_sees.contains("Hi!"),
        "{bob_sees}"
    );
    let alice_sees = texts(&alice, "#messages .msg").await.join("\n");
    assert!(!alice_sees.contains("second visitor"), "{alice_sees}");
    for req in g.llm.requests_for("who else is here?") {
        assert!(!req.to_string().contains("hello there"), "{req}");
    }
    assert_eq!(web_workspaces(&g).len(), 2);

    // The operator approves Bob's call from the dashboard.
    send(&bob, "run the second job").await;
    bob.wait_for(
        "document.querySelector('.approval[data-approval]') !== null",
        "Bob's approval card",
    )
    .await;
    let dashboard = browser.new_page().await;
    dashboard.goto(&format!("{base}/dashboard")).await;
    dashboard
        .wait_for(
            "document.querySelector('#approvals tr[data-approval] button.approve') !== null",
            "the pending approval on the dashboard",
        )
        .await;
    dashboard
        .wait_for(
            "document.querySelectorAll('#conversations tr[data-conversation]').length === 2",
            "both conversations",
        )
        .await;
    dashboard
        .wait_for(
            "document.getElementById('audit-chain').textContent.startsWith('intact')",
            "a verified audit chain",
        )
        .await;
    dashboard
        .wait_for("[...document.querySelectorAll('#channels td')].some(e => e.textContent === 'connected')", "the web channel connected")
        .await;
    let running = texts(&dashboard, "#conversations tr.running").await;
    assert!(
        !running.is_empty(),
        "running sandboxes are listed with their use"
    );
    assert!(running.iter().any(|r| r.contains("MiB")), "{running:?}");
    dashboard
        .screenshot(&screenshot_path("dashboard.png"))
        .await;
    dashboard
        .click("#approvals tr[data-approval] button.approve")
        .await;
    agent_says(&bob, "second job done").await;
    bob.wait_for("[...document.querySelectorAll('.approval-outcome')].some(e => e.textContent.includes('approved by web:operator'))", "the operator's decision in Bob's chat").await;
    let second = web_workspaces(&g)
        .into_iter()
        .map(|w| line_count(&w.join("second.txt")))
        .sum::<usize>();
    assert_eq!(second, 1, "the second job ran once");
    assert!(
        texts(&dashboard, "#decision-result")
            .await
            .join("")
            .contains("approved"),
        "the dashboard says what happened"
    );

    // Nothing was blocked by the Content-Security-Policy and no script failed.
    for page in [&alice, &bob, &dashboard] {
        let errors = page.console_errors().await;
        assert!(errors.is_empty(), "{errors:?}");
    }
    g.stop().await;
}

/// Parses Prometheus text exposition strictly: `# HELP`/`# TYPE` comments, and samples
/// `name{label="value",…} number`, each of a family with a `# TYPE`. Returns sample → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap());
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "untyped",
                            "info",
                            "stateset",
                            "gaugehistogram",
                            "unknown"
                        ]
                        .contains(&t),
                        "{line}"
                    );
                    typed.insert(name.to_owned());
                }
                "HELP" | "UNIT" => {}
                "EOF" => {}
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        if line == "# EOF" {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels: {line}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("label: {line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count", "_total", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample without # TYPE: {line}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The `name=value` part of a response's `Set-Cookie` header.
fn cookie_of(r: &reqwest::Response) -> String {
    let set = r.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_count_the_turn_that_just_happened() {
    let g = start_gateway("127.0.0.1:0", &[]).await;
    let base = format!("http://{}", g.http);
    g.llm.script("count me", vec![text("counted")]);
    let http = reqwest::Client::new();
    let metrics = || async {
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
            "{ct}"
        );
        parse_prometheus(&r.text().await.unwrap())
    };
    let completed = r#"boxedclaw_turns_total{outcome="completed"}"#;
    let before = metrics().await;
    assert_eq!(
        before.get(completed).copied().unwrap_or(0.0),
        0.0,
        "{before:?}"
    );

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let session = cookie_of(&page);
    let sent = http
        .post(format!("{base}/api/chat/messages"))
        .header("cookie", &session)
        .json(&json!({ "text": "count me" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let m = metrics().await;
        if m.get(completed).copied().unwrap_or(0.0) >= 1.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no turn counted: {m:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(after[completed], 1.0);
    let web_messages = r#"boxedclaw_messages_received_total{platform="web"}"#;
    assert_eq!(after.get(web_messages).copied(), Some(1.0), "{after:?}");
    let llm_calls: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("boxedclaw_llm_request_duration_seconds_count"))
        .map(|(_, v)| v)
        .sum();
    assert!(llm_calls >= 1.0, "{after:?}");
    g.stop().await;
}

/// The chat page, as a browser holding `cookie` asks for it.
async fn chat_page(http: &reqwest::Client, base: &str, cookie: &str) -> reqwest::Response {
    http.get(format!("{base}/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// Waits until the conversation that began with `first` has made `n` LLM calls.
async fn wait_for_llm_calls(g: &RunningGateway, first: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while g.llm.requests_for(first).len() < n {
        assert!(tokio::time::Instant::now() < deadline, "no LLM call {n}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A browser's session outlives a gateway restart: its signed cookie names the same
/// conversation, whose agent resumes its memory; a cookie the gateway never signed names
/// nothing and gets a session of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_browsers_conversation_survives_a_gateway_restart() {
    let g = start_gateway("127.0.0.1:0", &[]).await;
    // The fake LLM follows a conversation by its first user message.
    g.llm.script(
        "remember the walrus",
        vec![text("noted"), text("you told me about the walrus")],
    );
    let http = reqwest::Client::new();
    let base = format!("http://{}", g.http);
    let page = http.get(format!("{base}/")).send().await.unwrap();
    let session = cookie_of(&page);
    let say = |g: &RunningGateway, cookie: String, text: &'static str| {
        let url = format!("http://{}/api/chat/messages", g.http);
        let http = http.clone();
        async move {
            let r = http
                .post(url)
                .header("cookie", cookie)
                .json(&json!({ "text": text }))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(say(&g, session.clone(), "remember the walrus").await, 202);
    wait_for_llm_calls(&g, "remember the walrus", 1).await;
    let workspaces = web_workspaces(&g);
    assert_eq!(workspaces.len(), 1);

    let g = ready(g.restart(&[], 0).await).await;
    // The page knows the cookie: no new session is handed out.
    let again = chat_page(&http, &base, &session).await;
    assert!(
        again.headers().get("set-cookie").is_none(),
        "a new session after the restart"
    );
    assert_eq!(say(&g, session.clone(), "what did I tell you").await, 202);
    wait_for_llm_calls(&g, "remember the walrus", 2).await;
    let resumed = &g.llm.requests_for("remember the walrus")[1];
    assert!(
        resumed.to_string().contains("what did I tell you"),
        "the second message went to another conversation: {resumed}"
    );
    assert_eq!(
        web_workspaces(&g),
        workspaces,
        "the same workspace, no new one"
    );

    // A cookie of the right shape that the gateway never signed.
    let (secret, _) = session.split_once('.').unwrap();
    let forged = format!("{secret}.{}", "0".repeat(32));
    assert_eq!(say(&g, forged.clone(), "let me in").await, 401);
    let fresh = chat_page(&http, &base, &forged).await;
    assert_ne!(cookie_of(&fresh), session);
    g.stop().await;
}

/// This machine's address on its default route: a peer address that is not loopback.
fn non_loopback_ip() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface.
    socket
        .connect("192.0.2.1:9")
        .expect("this test needs a non-loopback network interface (none has a route)");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

#[tokio::test(flavor = "multi_thread")]
async fn other_machines_need_the_admin_token() {
    let token_var = [("BOXEDCLAW_ADMIN_TOKEN", ADMIN_TOKEN)];
    let g = start_gateway("0.0.0.0:0", &token_var).await;
    let remote = SocketAddr::new(non_loopback_ip(), g.http.port());
    let base = format!("http://{remote}");
    let plain = reqwest::Client::new();
    for path in [
        "/",
        "/dashboard",
        "/api/dashboard",
        "/metrics",
        "/api/chat/events",
    ] {
        let r = plain.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
        assert!(
            r.headers().contains_key("content-security-policy"),
            "{path}"
        );
        let r = plain
            .get(format!("{base}{path}"))
            .bearer_auth("console-admin-token-012345678X")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    // Health endpoints stay open for load balancers.
    assert_eq!(
        plain
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let with_token = plain
        .get(format!("{base}/api/dashboard"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let snapshot: serde_json::Value = with_token.json().await.unwrap();
    assert!(snapshot["gateway"]["sandbox"].is_string(), "{snapshot}");

    // A browser logs in once; its cookie holds a derived value, not the token.
    let browser = reqwest::Client::new();
    let page = browser
        .get(format!("{base}/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401);
    assert!(page.text().await.unwrap().contains("admin token"));
    let login = browser
        .post(format!("{base}/api/login"))
        .json(&json!({ "token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 204);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        !set_cookie.contains(ADMIN_TOKEN) && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    let admin = cookie_of(&login);
    let dashboard = browser
        .get(format!("{base}/dashboard"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), 200);

    // A cross-site form post is refused even with the cookie.
    let forged = browser
        .post(format!("{base}/api/chat/messages"))
        .header("cookie", &admin)
        .header("origin", "http://evil.example")
        .json(&json!({ "text": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    // Loopback still gets in without a token, as long as it names a local host.
    let local = format!("http://127.0.0.1:{}", g.http.port());
    assert_eq!(
        plain
            .get(format!("{local}/dashboard"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let rebound = plain
        .get(format!("{local}/dashboard"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        rebound.status(),
        401,
        "DNS rebinding: a local peer naming a foreign host"
    );
    g.stop().await;
}
