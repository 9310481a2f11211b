#!/usr/bin/env bash
# Builds the BoxedClaw guest image for the BoxLite backend as a local OCI image layout directory
# (no registry, no docker): a static busybox userland from Debian's busybox-static package, an
# `agent` user (uid 1000), /workspace, /tmp, and the static agent at
# /opt/boxedclaw/boxedclaw-agent. Reproducible: the same inputs and SOURCE_DATE_EPOCH (default 0)
# give byte-identical blobs, so the same manifest digest.
#
# Usage: build-guest-image.sh --agent PATH [--out DIR] [--busybox PATH] [--no-gzip]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AGENT=""
OUT=""
BUSYBOX=""
NO_GZIP=0
SCRIPT_AGENT=0

# Busybox applets linked into /bin (each must exist in the busybox used).
APPLETS=(
    sh ls cat echo mkdir rm cp mv grep head tail tr env id sleep find wc sed awk printf test true
    false touch chmod uname ps kill
    '[' ln pwd sort uniq cut xargs date basename dirname which tee readlink stat du
)

usage() {
    cat <<EOF
Usage: $0 --agent PATH [--out DIR] [--busybox PATH] [--no-gzip]

  --agent PATH    statically linked boxedclaw-agent (x86-64), e.g. built with
                  cargo rustc -p boxedclaw-agent --release --bin boxedclaw-agent -- -C target-feature=+crt-static
  --out DIR       OCI layout directory to write (default: \${BOXEDCLAW_DATA_DIR:-./data}/boxlite/guest-image,
                  the gateway's default [boxlite] image)
  --busybox PATH  static busybox to use instead of the one from Debian's busybox-static
  --no-gzip       store the layer uncompressed (media type ...layer.v1.tar)
  --script-agent  the agent is a #!/bin/sh script run by busybox (test images only,
                  e.g. the hostile agent of gateway/tests/support/flows.rs)

SOURCE_DATE_EPOCH (default 0) sets every file's mtime in the image.
EOF
}

die() { echo "build-guest-image: error: $*" >&2; exit 1; }
info() { echo "build-guest-image: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --agent) [ $# -ge 2 ] || die "--agent needs a value"; AGENT="$2"; shift 2 ;;
        --agent=*) AGENT="${1#--agent=}"; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        --busybox) [ $# -ge 2 ] || die "--busybox needs a value"; BUSYBOX="$2"; shift 2 ;;
        --busybox=*) BUSYBOX="${1#--busybox=}"; shift ;;
        --no-gzip) NO_GZIP=1; shift ;;
        --script-agent) SCRIPT_AGENT=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ -n "$AGENT" ] || { usage >&2; die "--agent is required"; }
[ -n "$OUT" ] || OUT="${BOXEDCLAW_DATA_DIR:-./data}/boxlite/guest-image"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
OUT="${OUT%/}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"
[[ "$SOURCE_DATE_EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be a non-negative integer"

command -v python3 >/dev/null || die "python3 not found; install it with: apt-get install python3"
command -v ldd >/dev/null || die "ldd not found; install it with: apt-get install libc-bin"

# is_static PATH: ldd says the binary needs no shared libraries.
is_static() {
    local out
    out="$(LC_ALL=C ldd "$1" 2>&1 || true)"
    case "$out" in
        *"statically linked"*|*"not a dynamic executable"*) return 0 ;;
        *) return 1 ;;
    esac
}

[ -f "$AGENT" ] || die "agent binary not found: $AGENT"
if [ "${SCRIPT_AGENT:-0}" = 1 ]; then
    info "agent is a script (test image)"
elif ! is_static "$AGENT"; then
    echo "build-guest-image: $AGENT is dynamically linked:" >&2
    LC_ALL=C ldd "$AGENT" 2>&1 | sed 's/^/  /' >&2 || true
    die "the guest image has no C library, so the agent must be static. Build it with:
  cargo rustc -p boxedclaw-agent --release --bin boxedclaw-agent -- -C target-feature=+crt-static"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/boxedclaw-guest-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

BUSYBOX_FROM=""
if [ -n "$BUSYBOX" ]; then
    [ -f "$BUSYBOX" ] || die "busybox not found: $BUSYBOX"
    BUSYBOX_FROM="$BUSYBOX (given)"
elif command -v dpkg >/dev/null && dpkg -s busybox-static >/dev/null 2>&1; then
    for p in $(dpkg -L busybox-static | grep -E '^(/usr)?/bin/busybox$'); do
        [ -f "$p" ] && BUSYBOX="$p" && break
    done
    [ -n "$BUSYBOX" ] || die "busybox-static is installed but dpkg -L lists no bin/busybox; reinstall it: apt-get install --reinstall busybox-static"
    BUSYBOX_FROM="$BUSYBOX from the installed busybox-static $(dpkg-query -W -f='${Version}' busybox-static)"
elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    info "busybox-static is not installed; fetching the package with apt-get download"
    if (cd "$WORK" && apt-get download busybox-static >&2) && deb="$(find "$WORK" -maxdepth 1 -name 'busybox-static_*.deb' | head -n 1)" && [ -n "$deb" ]; then
        dpkg-deb -x "$deb" "$WORK/bb"
        for p in "$WORK/bb/bin/busybox" "$WORK/bb/usr/bin/busybox"; do
            [ -f "$p" ] && BUSYBOX="$p" && break
        done
        [ -n "$BUSYBOX" ] || die "$(basename "$deb") holds no bin/busybox"
        BUSYBOX_FROM="$(basename "$deb") (apt-get download)"
    else
        die "could not get busybox-static; install it with: apt-get update && apt-get install busybox-static"
    fi
else
    die "no busybox found; install it with: apt-get install busybox-static (or pass --busybox PATH to a static busybox)"
fi
is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked; use the static one from Debian's busybox-static package"

# Every applet we link must exist in this busybox.
if list="$("$BUSYBOX" --list 2>/dev/null)"; then
    missing=()
    for a in "${APPLETS[@]}"; do
        grep -qxF -- "$a" <<<"$list" || missing+=("$a")
    done
    [ "${#missing[@]}" = 0 ] || die "$BUSYBOX lacks the applets: ${missing[*]}"
else
    info "warning: could not run '$BUSYBOX --list'; not checking its applets"
fi

args=(--agent "$AGENT" --busybox "$BUSYBOX" --out "$OUT")
for a in "${APPLETS[@]}"; do args+=(--applet "$a"); done
[ "$NO_GZIP" = 1 ] && args+=(--no-gzip)
[ "${SCRIPT_AGENT:-0}" = 1 ] && args+=(--script-agent)

info "busybox: $BUSYBOX_FROM"
info "agent:   $AGENT (sha256 $(sha256sum "$AGENT" | cut -d' ' -f1))"
DIGEST="$(python3 "$HERE/mkoci.py" "${args[@]}")"

echo "OCI image layout: $OUT"
echo "manifest digest:  $DIGEST"
echo
echo "Point the gateway at it in boxedclaw.toml:"
echo "  [boxlite]"
echo "  image = \"oci:$OUT\""
