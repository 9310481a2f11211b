#!/usr/bin/env bash
# Installs the BoxLite runtime (boxlite-shim, boxlite-guest, libkrunfw, ext4 tools, bwrap) whose
# version matches the `boxlite` crate the gateway is built with, into a directory the gateway
# finds through BOXLITE_RUNTIME_DIR or `[boxlite] runtime_dir`.
#
# Sources, in order:
#   1. the GitHub release tarball boxlite-runtime-v$VERSION-linux-x64-gnu.tar.gz (or the URL in
#      BOXLITE_RUNTIME_URL);
#   2. the PyPI wheel boxlite==$VERSION, whose Python extension module embeds the same runtime
#      files; the module is loaded from the unpacked wheel (no venv, nothing installed) with HOME
#      pointed at a scratch directory, which makes it write the files out, and their content hash
#      is checked against the one BoxLite stamps on the directory name.
#
# Usage: install-runtime.sh [--version 0.10.8] [--dest DIR] [--from auto|github|pypi] [--check] [--force]
set -euo pipefail

VERSION=0.10.8
DEST=""
FROM=auto
CHECK_ONLY=0
FORCE=0

# Every file BoxLite 0.10.x uses at run time. libkrunfw.so.* is checked separately.
REQUIRED_EXEC=(boxlite-shim boxlite-guest mke2fs debugfs bwrap guest-mke2fs guest-resize2fs)

usage() {
    cat <<EOF
Usage: $0 [--version V] [--dest DIR] [--from auto|github|pypi] [--check] [--force]

Installs the BoxLite runtime v\$V (default $VERSION, must match the gateway's boxlite crate)
into DIR (default \${XDG_DATA_HOME:-\$HOME/.local/share}/boxedclaw/boxlite/v\$V).

  --from github   only try the GitHub release tarball
  --from pypi     only try the PyPI wheel (works where GitHub is unreachable)
  --check         only verify an existing install in DIR; exit 1 if it is not complete
  --force         replace DIR even if it holds something that is not a BoxLite runtime install
EOF
}

die() { echo "install-runtime: error: $*" >&2; exit 1; }
info() { echo "install-runtime: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --version) [ $# -ge 2 ] || die "--version needs a value"; VERSION="${2#v}"; shift 2 ;;
        --version=*) VERSION="${1#--version=}"; VERSION="${VERSION#v}"; shift ;;
        --dest) [ $# -ge 2 ] || die "--dest needs a value"; DEST="$2"; shift 2 ;;
        --dest=*) DEST="${1#--dest=}"; shift ;;
        --from) [ $# -ge 2 ] || die "--from needs a value"; FROM="$2"; shift 2 ;;
        --from=*) FROM="${1#--from=}"; shift ;;
        --check) CHECK_ONLY=1; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.-][0-9A-Za-z.]+)?$ ]] || die "not a version: $VERSION"
case "$FROM" in auto|github|pypi) ;; *) die "--from must be auto, github or pypi (got $FROM)" ;; esac

if [ -z "$DEST" ]; then
    [ -n "${XDG_DATA_HOME:-}" ] || [ -n "${HOME:-}" ] || die "neither XDG_DATA_HOME nor HOME is set; pass --dest"
    DEST="${XDG_DATA_HOME:-$HOME/.local/share}/boxedclaw/boxlite/v$VERSION"
fi
case "$DEST" in /*) ;; *) DEST="$PWD/$DEST" ;; esac
DEST="${DEST%/}"
if [ -z "$DEST" ] || [ "$DEST" = "/" ]; then die "refusing to install into /"; fi

# BOXLITE_RUNTIME_URL (also honoured by the boxlite crate's build script) points at a mirror or a
# local copy of the tarball, e.g. file:///srv/boxlite-runtime-v0.10.8-linux-x64-gnu.tar.gz.
TARBALL_URL="${BOXLITE_RUNTIME_URL:-https://github.com/boxlite-ai/boxlite/releases/download/v$VERSION/boxlite-runtime-v$VERSION-linux-x64-gnu.tar.gz}"

# ---------------------------------------------------------------------------------------------
# Verification

# verify_dir DIR: prints what is wrong (one line each) and returns 1, or returns 0.
verify_dir() {
    local dir="$1" bad=0 f krun
    for f in "${REQUIRED_EXEC[@]}"; do
        if [ ! -f "$dir/$f" ]; then echo "missing $f"; bad=1
        elif [ ! -x "$dir/$f" ]; then echo "$f is not executable"; bad=1
        fi
    done
    krun=""
    for f in "$dir"/libkrunfw.so*; do
        [ -f "$f" ] && krun="$f"
    done
    if [ -z "$krun" ]; then echo "missing libkrunfw.so*"; bad=1; fi
    for f in boxlite-shim boxlite-guest; do
        if [ -f "$dir/$f" ] && [ "$(head -c 4 "$dir/$f" | od -An -tx1 | tr -d ' \n')" != "7f454c46" ]; then
            echo "$f is not an ELF binary"; bad=1
        fi
    done
    return "$bad"
}

# installed_ok DIR: a finished install of $VERSION, unchanged since it was made.
installed_ok() {
    local dir="$1"
    [ -f "$dir/VERSION" ] && [ "$(tr -d ' \n' <"$dir/VERSION")" = "$VERSION" ] || return 1
    [ -f "$dir/SOURCE" ] && [ -f "$dir/SHA256SUMS" ] || return 1
    verify_dir "$dir" >/dev/null || return 1
    (cd "$dir" && sha256sum --quiet --status -c SHA256SUMS) || return 1
}

how_to_use() {
    local default_dir=""
    if [ -n "${XDG_DATA_HOME:-}" ] || [ -n "${HOME:-}" ]; then
        default_dir="${XDG_DATA_HOME:-$HOME/.local/share}/boxedclaw/boxlite/v$VERSION"
    fi
    echo
    echo "BoxLite runtime $VERSION is in: $DEST"
    echo "  source: $(head -n 1 "$DEST/SOURCE")"
    echo
    echo "Point the gateway at it with either of:"
    echo "  export BOXLITE_RUNTIME_DIR=\"$DEST\""
    echo "  # or in boxedclaw.toml:"
    echo "  [boxlite]"
    echo "  runtime_dir = \"$DEST\""
    if [ "$DEST" = "$default_dir" ]; then
        echo "(This is the gateway's default runtime_dir for this user, so neither is needed.)"
    fi
    echo
    echo "\`boxedclaw doctor\` checks that this runtime is complete and of the gateway's version, and"
    echo "whether this host has the hardware virtualization a BoxLite VM needs."
}

if [ "$CHECK_ONLY" = 1 ]; then
    if installed_ok "$DEST"; then
        info "OK: complete BoxLite runtime $VERSION in $DEST"
        exit 0
    fi
    info "no complete BoxLite runtime $VERSION in $DEST:"
    if [ -d "$DEST" ]; then
        verify_dir "$DEST" | sed 's/^/  /' >&2 || true
        [ -f "$DEST/VERSION" ] || echo "  no VERSION file" >&2
        [ -f "$DEST/VERSION" ] && [ "$(tr -d ' \n' <"$DEST/VERSION")" != "$VERSION" ] \
            && echo "  VERSION says $(tr -d '\n' <"$DEST/VERSION")" >&2
        [ -f "$DEST/SHA256SUMS" ] && ! (cd "$DEST" && sha256sum --quiet --status -c SHA256SUMS) \
            && echo "  files differ from SHA256SUMS" >&2
    else
        echo "  directory does not exist" >&2
    fi
    exit 1
fi

if installed_ok "$DEST"; then
    info "BoxLite runtime $VERSION is already installed and complete; nothing to do."
    how_to_use
    exit 0
fi

# Do not clobber a directory that is not ours.
if [ -e "$DEST" ] && [ "$FORCE" != 1 ]; then
    [ -d "$DEST" ] || die "$DEST exists and is not a directory (use --force to replace it)"
    if [ -n "$(ls -A "$DEST")" ] && [ ! -f "$DEST/VERSION" ] && [ ! -f "$DEST/SOURCE" ]; then
        die "$DEST is not empty and is not a BoxLite runtime install from this script; choose another --dest or pass --force"
    fi
    info "$DEST holds an incomplete or different install; replacing it"
fi

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) die "the BoxLite $VERSION runtime is published for Linux x86_64 only (this is $(uname -s)/$(uname -m))" ;;
esac
command -v sha256sum >/dev/null || die "sha256sum not found (Debian: apt-get install coreutils)"

# ---------------------------------------------------------------------------------------------
# Staging

PARENT="$(dirname "$DEST")"
mkdir -p "$PARENT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/boxlite-runtime.XXXXXX")"
STAGE="$(mktemp -d "$PARENT/.boxlite-install.XXXXXX")"
cleanup() { rm -rf "$WORK" "$STAGE"; }
trap cleanup EXIT

SOURCE_DESC=""

from_github() {
    if ! command -v curl >/dev/null; then
        info "curl not found (Debian: apt-get install curl); skipping the GitHub release"
        return 1
    fi
    info "trying the release tarball: $TARBALL_URL"
    if ! curl -fsSL --connect-timeout 10 --max-time 900 -o "$WORK/runtime.tar.gz" "$TARBALL_URL"; then
        info "could not download the GitHub release"
        return 1
    fi
    local tops
    if ! tops="$(tar -tzf "$WORK/runtime.tar.gz" | awk -F/ '{print $1}' | sort -u)"; then
        info "the downloaded file is not a gzip tarball"
        return 1
    fi
    if [ "$(printf '%s\n' "$tops" | grep -c .)" != 1 ] || [ "$tops" = "." ] || [ "$tops" = ".." ]; then
        info "unexpected tarball layout (expected one top-level directory, got: $(printf '%s' "$tops" | tr '\n' ' '))"
        return 1
    fi
    if tar -tzf "$WORK/runtime.tar.gz" | grep -Eq '(^/|(^|/)\.\.(/|$))'; then
        info "tarball has absolute or '..' paths; refusing it"
        return 1
    fi
    mkdir -p "$WORK/gh"
    tar -xzf "$WORK/runtime.tar.gz" --no-same-owner --strip-components=1 -C "$WORK/gh" \
        || { info "could not unpack the tarball"; return 1; }
    # Only regular files and symlinks at the top are part of the runtime.
    find "$WORK/gh" -mindepth 1 -maxdepth 1 \( -type f -o -type l \) \
        ! -name .complete ! -name .boxlite-runtime-files -exec cp -P -p -t "$STAGE/" {} + \
        || { info "could not copy the runtime files"; return 1; }
    SOURCE_DESC="release tarball $TARBALL_URL sha256=$(sha256sum "$WORK/runtime.tar.gz" | cut -d' ' -f1)"
}

from_pypi() {
    local py wheel_dir wheel rtdir
    if ! command -v python3 >/dev/null; then
        info "python3 not found; install it with: apt-get install python3 python3-pip"
        return 1
    fi
    py="$(python3 -c 'import sys; print(sys.executable)')"
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        info "pip for python3 not found; install it with: apt-get install python3-pip"
        return 1
    fi
    info "trying the PyPI wheel boxlite==$VERSION (with $("$py" -c 'import sys; print("CPython %d.%d" % sys.version_info[:2])'))"
    wheel_dir="$WORK/wheel"
    mkdir -p "$wheel_dir"
    # pip picks the wheel for this interpreter and platform (manylinux x86_64). `download` installs
    # nothing, so it works under Debian's externally-managed Python too.
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip download --quiet --no-deps --only-binary=:all: \
            --dest "$wheel_dir" "boxlite==$VERSION" >&2; then
        info "pip could not get a boxlite==$VERSION wheel for this Python (wheels exist for CPython 3.10-3.14 on manylinux_2_28 x86_64, i.e. glibc >= 2.28)"
        return 1
    fi
    wheel="$(find "$wheel_dir" -maxdepth 1 -name "boxlite-$VERSION-*.whl" | head -n 1)"
    [ -n "$wheel" ] || { info "pip downloaded no boxlite wheel"; return 1; }
    info "unpacking $(basename "$wheel")"
    mkdir -p "$WORK/whl"
    "$py" -m zipfile -e "$wheel" "$WORK/whl" || { info "could not unpack $wheel"; return 1; }

    # A wheel that ships the runtime as plain files (a directory holding boxlite-shim): copy them.
    rtdir="$(find "$WORK/whl" -type f -name boxlite-shim -printf '%h\n' | head -n 1)"
    if [ -n "$rtdir" ]; then
        info "the wheel carries the runtime as files in ${rtdir#"$WORK/whl/"}/"
        find "$rtdir" -mindepth 1 -maxdepth 1 -type f ! -name .complete -exec cp -p -t "$STAGE/" {} + \
            || { info "could not copy the runtime files"; return 1; }
        for f in "${REQUIRED_EXEC[@]}" "$STAGE"/libkrunfw.so*; do
            f="$STAGE/$(basename "$f")"
            [ -f "$f" ] && chmod 0755 "$f"
        done
        SOURCE_DESC="pypi boxlite==$VERSION $(basename "$wheel") sha256=$(sha256sum "$wheel" | cut -d' ' -f1) (files in ${rtdir#"$WORK/whl/"}/)"
        return 0
    fi

    # boxlite 0.10.x: the files are compiled into the extension module and written out on first
    # use to $XDG_DATA_HOME/boxlite/runtimes/v<version>-<commit>-<hash>/. Load the module from the
    # unpacked wheel with a scratch HOME, so nothing lands in the real one.
    info "the runtime is embedded in the wheel's extension module; extracting it into a scratch HOME"
    mkdir -p "$WORK/home"
    if ! env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$WORK/home" XDG_DATA_HOME="$WORK/home/.local/share" \
            PYTHONPATH="$WORK/whl" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
            timeout 300 "$py" -c 'import boxlite; boxlite.Boxlite.default()' >"$WORK/extract.log" 2>&1; then
        info "loading the boxlite module failed:"
        tail -n 20 "$WORK/extract.log" >&2
        return 1
    fi
    local found=() d
    for d in "$WORK/home/.local/share/boxlite/runtimes/v$VERSION"*; do
        [ -f "$d/.complete" ] && found+=("$d")
    done
    if [ "${#found[@]}" != 1 ]; then
        info "expected one extracted runtime under the scratch HOME, found ${#found[@]}"
        return 1
    fi
    rtdir="${found[0]}"
    # BoxLite names the directory ...-<first 12 hex of sha256(name, mode, bytes of each file)>:
    # recompute it to prove the set is complete and intact.
    local check
    if ! check="$("$py" - "$rtdir" <<'PY'
import hashlib, os, re, sys
d = sys.argv[1]
m = re.search(r'-([0-9a-f]{12})$', os.path.basename(d))
h = hashlib.sha256()
for name in sorted(n for n in os.listdir(d) if n != '.complete'):
    p = os.path.join(d, name)
    h.update(name.encode())
    h.update((os.stat(p).st_mode & 0o777).to_bytes(4, 'little'))
    with open(p, 'rb') as f:
        h.update(f.read())
got = h.hexdigest()[:12]
if m is None:
    print('unchecked (directory name carries no hash)')
elif m.group(1) == got:
    print('content hash ' + got + ' verified')
else:
    sys.exit('content hash mismatch: directory says %s, files give %s' % (m.group(1), got))
PY
)"; then
        info "$check"
        return 1
    fi
    info "extracted $(basename "$rtdir"): $check"
    find "$rtdir" -mindepth 1 -maxdepth 1 -type f ! -name .complete -exec cp -p -t "$STAGE/" {} + \
        || { info "could not copy the runtime files"; return 1; }
    SOURCE_DESC="pypi boxlite==$VERSION $(basename "$wheel") sha256=$(sha256sum "$wheel" | cut -d' ' -f1) (runtime embedded in the extension module, extracted as $(basename "$rtdir"), $check)"
}

ok=0
case "$FROM" in
    github) from_github && ok=1 ;;
    pypi) from_pypi && ok=1 ;;
    auto)
        if from_github; then ok=1
        else
            info "falling back to PyPI"
            find "$STAGE" -mindepth 1 -delete
            from_pypi && ok=1
        fi
        ;;
esac
[ "$ok" = 1 ] || die "could not get the BoxLite $VERSION runtime (tried: $FROM). Check network access to GitHub or PyPI; see deploy/boxlite/README.md"

if ! problems="$(verify_dir "$STAGE")"; then
    die "the runtime from ($SOURCE_DESC) is not usable: $(echo "$problems" | paste -sd ';' -)"
fi

(cd "$STAGE" && find . -mindepth 1 -maxdepth 1 \( -type f -o -type l \) -printf '%P\n' | LC_ALL=C sort \
    | xargs -d '\n' sha256sum) >"$WORK/SHA256SUMS"
mv "$WORK/SHA256SUMS" "$STAGE/SHA256SUMS"
printf '%s\n' "$VERSION" >"$STAGE/VERSION"
{
    echo "$SOURCE_DESC"
    echo "installed $(date -u +%Y-%m-%dT%H:%M:%SZ) by deploy/boxlite/install-runtime.sh"
} >"$STAGE/SOURCE"
chmod 0755 "$STAGE"

# Swap into place: the old directory (if any) is moved aside first and removed after.
if [ -e "$DEST" ] || [ -L "$DEST" ]; then
    OLD="$PARENT/.boxlite-old.$$"
    mv "$DEST" "$OLD"
    mv "$STAGE" "$DEST"
    rm -rf "$OLD"
else
    mv "$STAGE" "$DEST"
fi

info "installed; verifying"
installed_ok "$DEST" || die "verification of $DEST failed after install"
echo "Installed files:"
(cd "$DEST" && find . -mindepth 1 -maxdepth 1 -printf '%M %10s %P\n' | LC_ALL=C sort -k3)
how_to_use
