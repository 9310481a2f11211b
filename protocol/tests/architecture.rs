//! The protocol crate stays pure data: no async runtime, no I/O crates. Checked from the
//! manifest so a new dependency is a deliberate, reviewed change.

#[test]
fn protocol_depends_only_on_data_crates() {
    let manifest = include_str!("../Cargo.toml");
    let deps = manifest
        .split("\n[")
        .find(|section| section.starts_with("dependencies]"))
        .expect("a [dependencies] section");
    let names: Vec<&str> = deps
        .lines()
        .skip(1)
        .filter_map(|l| l.split(['=', '.']).next())
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect();
    assert_eq!(
        names,
        ["serde", "serde_json", "thiserror"],
        "protocol must stay pure data"
    );
}
