//! The deployment files stay in step with the gateway: every environment variable they set is
//! one the gateway reads, every config file they carry loads, and the pod waits longer than the
//! gateway's drain.
// Test code: panicking on failure is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use boxedclaw_gateway::config::{Config, Env, KNOWN_ENV_VARS};

fn repo_file(relative: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// Variable names a file sets, by the syntax of its kind.
fn variables_set(relative: &str) -> BTreeSet<String> {
    let (_, text) = repo_file(relative);
    let is_var = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    let mut names = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        // `.env.example`: `NAME=`; systemd: `Environment=NAME=value`; Containerfile:
        // `ENV NAME=value \` and continuation lines `NAME=value`; Kubernetes: `- name: NAME`.
        let candidate = line
            .strip_prefix("Environment=")
            .or_else(|| line.strip_prefix("ENV "))
            .unwrap_or(line);
        if let Some(name) = candidate.strip_prefix("- name: ") {
            if is_var(name) {
                names.insert(name.to_owned());
            }
        } else if let Some((name, _)) = candidate.split_once('=')
            && is_var(name)
        {
            names.insert(name.to_owned());
        }
    }
    names
}

#[test]
fn every_variable_a_deployment_file_sets_is_one_the_gateway_reads() {
    let known: BTreeSet<String> = KNOWN_ENV_VARS.iter().map(|s| (*s).to_owned()).collect();
    for file in [
        ".env.example",
        "deploy/container/Containerfile",
        "deploy/systemd/boxedclaw.service",
        "deploy/kubernetes/boxedclaw.yaml",
    ] {
        let set = variables_set(file);
        assert!(!set.is_empty(), "{file}: no variables found");
        let unknown: Vec<_> = set.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} sets {unknown:?}, which the gateway never reads"
        );
    }
    // And `.env.example` lists everything the gateway reads, but for the XDG paths.
    let listed = variables_set(".env.example");
    let unlisted: Vec<_> = known
        .iter()
        .filter(|v| !listed.contains(*v) && !["HOME", "XDG_DATA_HOME"].contains(&v.as_str()))
        .collect();
    assert!(unlisted.is_empty(), ".env.example lacks {unlisted:?}");
}

/// Loads `toml` as the gateway would, with a key in the environment.
fn load(toml: &str, origin: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boxedclaw.toml");
    std::fs::write(&path, toml).unwrap();
    let data = dir.path().join("data");
    let env = Env::from_pairs(&[
        ("OPENAI_API_KEY", "sk-deploy-files-0123456789"),
        ("BOXEDCLAW_DATA_DIR", data.to_str().unwrap()),
    ]);
    Config::load(Some(&path), &env).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

#[test]
fn the_example_config_loads() {
    let (_, toml) = repo_file("deploy/boxedclaw.example.toml");
    load(&toml, "deploy/boxedclaw.example.toml");
}

#[test]
fn the_kubernetes_config_loads_and_the_pod_outlasts_the_drain() {
    let (_, yaml) = repo_file("deploy/kubernetes/boxedclaw.yaml");
    // The ConfigMap's `boxedclaw.toml: |` block: the lines indented deeper than its key.
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "boxedclaw.toml: |");
    let key = lines.next().expect("no boxedclaw.toml in the ConfigMap");
    let key_indent = key.len() - key.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    let toml: String = block
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    let config = load(&toml, "the ConfigMap in deploy/kubernetes/boxedclaw.yaml");

    let grace: u64 = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .expect("no terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    assert!(
        grace > config.router.drain_timeout.as_secs(),
        "the pod is killed ({grace} s) before the gateway's drain ({:?}) ends",
        config.router.drain_timeout
    );
}
