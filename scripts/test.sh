#!/usr/bin/env bash
# The project's test command (see README): formatting, lints, every test, and the static agent.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build without the boxlite feature"
cargo check -p boxedclaw-gateway --no-default-features --locked

echo "== build (the end-to-end tests run the built agent and gateway binaries)"
cargo build --workspace --bins --locked

echo "== static agent (runs in any guest image)"
cargo rustc -p boxedclaw-agent --release --bin boxedclaw-agent --locked -- -C target-feature=+crt-static
linkage=$(ldd target/release/boxedclaw-agent 2>&1 || true)
case "$linkage" in
  *"statically linked"* | *"not a dynamic executable"*) ;;
  *) echo "target/release/boxedclaw-agent is not static: $linkage" >&2; exit 1 ;;
esac
echo "static agent: $(stat -c %s target/release/boxedclaw-agent) bytes, no dynamic dependencies"

echo "== tests${BOXEDCLAW_TEST_DATABASE_URL:+ (store on PostgreSQL)}"
cargo test --workspace --locked

if [ -n "${BOXEDCLAW_TEST_DATABASE_URL:-}" ]; then
  echo "== durable-state tests again, store on SQLite"
  env -u BOXEDCLAW_TEST_DATABASE_URL cargo test --locked -p boxedclaw-gateway --test durable
fi
