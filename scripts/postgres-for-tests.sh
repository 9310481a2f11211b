#!/usr/bin/env bash
# Starts a local PostgreSQL server for the store's tests and prints the URL to use.
#
#   eval "$(bash scripts/postgres-for-tests.sh)"
#   cargo test -p boxedclaw-gateway --lib store
#
# Installs Debian's `postgresql` package if missing, makes sure a cluster exists and runs,
# listening on 127.0.0.1 only, and creates the role and database `boxedclaw_test` (the role
# owns the database, so the tests can create and drop their own schemas in it). Idempotent:
# run it as often as you like; it changes only what is missing.
#
# stdout is exactly one line, `export BOXEDCLAW_TEST_DATABASE_URL=postgres://…`; all progress
# goes to stderr. Needs root, or sudo, for apt-get and to act as the `postgres` user.
#
# The role's password is random, generated once and kept in
# ${BOXEDCLAW_TEST_PG_STATE:-$HOME/.local/state/boxedclaw}/postgres-test-password (mode 0600).
# This server is for tests only: it holds nothing worth protecting, but it is reachable by
# every local user, so never reuse it for real data.
set -euo pipefail

# Keep the real stdout for the one result line; everything else goes to stderr. Commands run
# through `as_root` get fd 3 closed: a server started here must not hold the caller's
# `$(...)` pipe open, or the caller waits forever.
exec 3>&1 1>&2

ROLE=boxedclaw_test
DATABASE=boxedclaw_test
STATE_DIR=${BOXEDCLAW_TEST_PG_STATE:-${HOME:-/root}/.local/state/boxedclaw}
CONF_NAME=boxedclaw-tests.conf

log() { printf 'postgres-for-tests: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@" 3>&-; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo -n "$@" 3>&-; }
else
    die "run as root or install sudo (needed for apt-get and the postgres user)"
fi

as_postgres() {
    # cd / so the postgres user is not left in a directory it cannot read.
    (cd / && as_root runuser -u postgres -- "$@")
}

# 1. Install the server if missing.
if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing Debian's postgresql package"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# 2. Find the cluster (Debian's package creates `<version>/main`), creating one if none exists.
cluster_line() { pg_lsclusters --no-header 2>/dev/null | awk 'NF { print; exit }'; }
if [ -z "$(cluster_line)" ]; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    log "creating cluster $version/main"
    as_root pg_createcluster "$version" main >/dev/null
fi
read -r VERSION CLUSTER PORT STATUS _ < <(cluster_line)
[ -n "${PORT:-}" ] || die "could not read the cluster's port from pg_lsclusters"
log "cluster $VERSION/$CLUSTER on port $PORT is $STATUS"

# 3. Listen on 127.0.0.1 only. Debian's postgresql.conf reads conf.d/; restart only if this
# file is new or changed and the server is already running.
CONF_DIR=/etc/postgresql/$VERSION/$CLUSTER/conf.d
WANTED="# Written by boxedclaw scripts/postgres-for-tests.sh: tests connect over loopback only.
listen_addresses = '127.0.0.1'"
changed=no
if [ "$(as_root cat "$CONF_DIR/$CONF_NAME" 2>/dev/null || true)" != "$WANTED" ]; then
    log "writing $CONF_DIR/$CONF_NAME (listen_addresses = 127.0.0.1)"
    as_root mkdir -p "$CONF_DIR"
    printf '%s\n' "$WANTED" | as_root tee "$CONF_DIR/$CONF_NAME" >/dev/null
    changed=yes
fi

# 4. Start it (pg_ctlcluster runs pg_ctl as the postgres user; no systemd needed).
if [ "$STATUS" = online ]; then
    if [ "$changed" = yes ]; then
        log "restarting to apply the listen address"
        as_root pg_ctlcluster "$VERSION" "$CLUSTER" restart
    fi
else
    log "starting cluster $VERSION/$CLUSTER"
    as_root pg_ctlcluster "$VERSION" "$CLUSTER" start
fi
for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p "$PORT"; then break; fi
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "server not accepting connections on 127.0.0.1:$PORT"

# 5. The password: random once, then reused so URLs exported earlier keep working.
mkdir -p "$STATE_DIR"
chmod 700 "$STATE_DIR"
PASSWORD_FILE=$STATE_DIR/postgres-test-password
if [ ! -s "$PASSWORD_FILE" ]; then
    log "generating a password in $PASSWORD_FILE"
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$PASSWORD_FILE")
fi
chmod 600 "$PASSWORD_FILE"
PASSWORD=$(cat "$PASSWORD_FILE")
case "$PASSWORD" in
    *[!0-9a-f]* | "") die "$PASSWORD_FILE does not hold a hex password; delete it to regenerate" ;;
esac

# 6. Role and database (the password is hex, so quoting it in SQL is safe).
psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" "$@"; }
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    log "creating role $ROLE"
    psql_admin -c "CREATE ROLE $ROLE LOGIN"
fi
# Through stdin, not argv, so the password does not show in the process list.
printf "ALTER ROLE %s WITH LOGIN PASSWORD '%s';\n" "$ROLE" "$PASSWORD" | psql_admin >/dev/null
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
    log "creating database $DATABASE"
    psql_admin -c "CREATE DATABASE $DATABASE OWNER $ROLE"
fi

# 7. Prove the URL works before printing it.
URL="postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
PGPASSWORD=$PASSWORD psql -X -q -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DATABASE" -tAc 'SELECT 1' >/dev/null \
    || die "cannot log in as $ROLE over 127.0.0.1:$PORT (check pg_hba.conf allows scram-sha-256 from 127.0.0.1)"
log "ready: $ROLE@127.0.0.1:$PORT/$DATABASE"

printf 'export BOXEDCLAW_TEST_DATABASE_URL=%s\n' "$URL" >&3
