//! Durable state: conversations, inbound de-duplication, approvals, the outbox of undelivered
//! replies, token usage and budgets, and a hash-chained audit log. Nothing here lives only in
//! memory, so a restart (or `kill -9`) loses none of it.
//!
//! # Two engines
//! - **SQLite** is the embedded default: one file, `<data_dir>/boxedclaw.db`, nothing to run.
//!   WAL mode (readers never block the writer), `synchronous = FULL` (a committed approval
//!   survives power loss, not only a crash), a busy timeout so concurrent writers wait instead
//!   of failing, and the file created `0600` in a `0700` directory when we create them.
//! - **PostgreSQL** (`BOXEDCLAW_DATABASE_URL=postgres://…`) is for several gateway replicas
//!   sharing one database; every guarantee below holds across processes, not just tasks.
//!
//! # Why an enum over two pools, not `sqlx::Any`
//! [`Store`] holds either a `SqlitePool` or a `PgPool`. `Any` would save a `match` but costs
//! what this module needs most: it cannot start a SQLite transaction with `BEGIN IMMEDIATE` or
//! a PostgreSQL one with row locks chosen per engine, it maps types through a lowest common
//! denominator, and it needs runtime driver installation. With the enum, each query is written
//! once when the SQL is the same on both engines (both accept `$1` placeholders, `ON CONFLICT`,
//! `RETURNING`); the `with_pool!` macro compiles that one text against each concrete pool, and
//! the few statements that differ (the clock, the audit head lock) are spelled out per engine.
//! Rows are decoded into tuples of plain types (`i64`, `String`, `Option<_>`) that mean the
//! same on both engines, then converted and validated in shared code.
//!
//! # Exactly once, across replicas
//! No read-then-write in application code decides anything; the database does, atomically:
//! - [`Store::first_delivery`] is `INSERT … ON CONFLICT DO NOTHING` on the primary key
//!   `(platform, event_id)`: of any number of concurrent deliveries, on any replica, exactly one
//!   inserts a row, and only that caller sees `true`.
//! - [`Store::resolve_approval`] is `UPDATE … WHERE id = $1 AND state = 'pending'` and
//!   [`Store::mark_executed`] is `UPDATE … WHERE state = 'approved'`. PostgreSQL row-locks the
//!   row and re-checks the `WHERE` after a concurrent update commits; SQLite runs one writer at a
//!   time. Either way exactly one caller gets "1 row changed", so exactly one decision counts and
//!   the bound call is executed once.
//! - Audit appends take the chain head's lock (see below), so `seq` has no gaps or duplicates.
//!
//! # The audit chain
//! Each entry stores `hash = sha256(prev_hash || canonical bytes of (seq, at, actor, action,
//! conversation, detail))` (exact encoding in `audit.rs`), where `prev_hash` is the previous
//! entry's hash and the first entry's is 64 zeros. A one-row table, `audit_head`, holds the last
//! `seq` and `hash`. Appending runs in one transaction that first locks the head (`SELECT … FOR
//! UPDATE` on PostgreSQL; `BEGIN IMMEDIATE`, i.e. the database write lock, on SQLite), so
//! concurrent appenders on any replica queue up and each chains to the real previous entry.
//! [`Store::verify_audit`] recomputes every hash and checks that
//! - each row's hash matches its content (an **edited** row fails, named by its `seq`),
//! - `seq` counts 1, 2, 3… and each `prev_hash` is the previous row's hash (a **deleted** row
//!   leaves a gap; the row after it is named),
//! - the last row is the one the head records (deleting the **newest** rows is caught too).
//!
//! The chain makes tampering detectable, not impossible: someone who can write the database can
//! rewrite every later hash and the head. Shipping the head hash elsewhere (logs) anchors it.
//!
//! # Time
//! The store never reads the gateway's clock: callers pass unix seconds. The two calls whose
//! signatures carry no time ([`Store::touch_conversation`], [`Store::first_delivery`]) use the
//! database's clock, which is also the one clock all replicas share; the `_at` variants take
//! the time explicitly (tests use them to stay deterministic).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use boxedclaw_protocol::ids::{ConversationKey, UserRef};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Runs `$body` with `$pool` bound to the concrete pool (`&SqlitePool` or `&PgPool`). The body
/// is compiled once per engine, so it may only use SQL both engines accept.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` in a write transaction bound to `$tx`, then commits. SQLite starts it with
/// `BEGIN IMMEDIATE` (take the write lock before the first read, so a read-then-write cannot
/// fail on a stale snapshot); PostgreSQL with a plain `BEGIN`. A `?` inside the body drops
/// `$tx`, which rolls back.
macro_rules! in_write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::store::Db::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

mod approvals;
mod audit;
mod conversations;
mod outbox;
mod usage;

#[cfg(test)]
mod tests;

pub use approvals::{ApprovalRow, ApprovalState, call_hash};
pub use audit::{AuditBroken, AuditEntry, AuditRow, GENESIS_HASH};
pub use conversations::{ConversationRow, MAX_EVENT_ID_LEN};
pub use outbox::{OutboxClaim, OutboxRow};
pub use usage::{BudgetSubject, UsageLine};

/// The SQLite file's name inside the data directory.
pub const SQLITE_FILE_NAME: &str = "boxedclaw.db";

/// How long a SQLite writer waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite connections: one writer at a time anyway; a few more serve concurrent readers.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// PostgreSQL connections per replica.
const POSTGRES_MAX_CONNECTIONS: u32 = 16;
/// How long a query waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// One entry per file in `migrations/<engine>/`, in version order; a test checks that these
/// lists match the directories and each other. Listed by hand, with `include_str!`, rather
/// than `sqlx::migrate!`, because the macro needs sqlx's `macros` feature, which compiles both
/// database drivers a second time for the proc-macro and roughly doubles sqlx's build cost.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "outbox_claims",
        include_str!("../../migrations/sqlite/0002_outbox_claims.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "outbox_claims",
        include_str!("../../migrations/postgres/0002_outbox_claims.sql"),
    ),
];

fn migrator(list: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        list.iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed, refused a statement or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed (or the database was migrated by a newer gateway).
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite file or its directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The URL is neither `postgres://`/`postgresql://` nor `sqlite:`. (The URL itself is not
    /// repeated: it may hold a password.)
    #[error("unsupported database URL: expected postgres://, postgresql:// or sqlite:")]
    UnsupportedUrl,
    /// A value cannot be stored as given (a count beyond `i64`, a non-UTF-8 path, a call hash
    /// that does not match its operation, …).
    #[error("cannot store {0}")]
    Invalid(String),
    /// A stored row does not read back as its type: edited by hand, or written by a bug.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// No row with this id.
    #[error("no {what} with id {id}")]
    NotFound {
        /// What kind of row.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
}

/// The pool of one engine. `pub(crate)` only so the dispatch macros can name it.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The gateway's durable state. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl fmt::Debug for Store {
    // Hand-written: the pools' own Debug would print connect options, which may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (size, idle) = match &self.db {
            Db::Sqlite(p) => (p.size(), p.num_idle()),
            Db::Postgres(p) => (p.size(), p.num_idle()),
        };
        f.debug_struct("Store")
            .field("engine", &self.engine())
            .field("connections", &size)
            .field("idle", &idle)
            .finish()
    }
}

impl Store {
    /// Opens (creating it and its parent directory if missing) the SQLite database at `path`
    /// and applies any pending migrations.
    ///
    /// # Errors
    /// [`StoreError`] when the directory or file cannot be created, the database cannot be
    /// opened, or a migration fails.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Self::open_sqlite_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens `postgres://…` / `postgresql://…` (TLS per the URL's `sslmode`) or `sqlite:…` and
    /// applies any pending migrations. Replicas starting together are safe: PostgreSQL
    /// migrations run under an advisory lock.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`] for another scheme; otherwise as
    /// [`open_sqlite`](Self::open_sqlite).
    pub async fn open_url(url: &str) -> Result<Store, StoreError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(POSTGRES_MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                migrator(POSTGRES_MIGRATIONS).run(&pool).await?;
                Ok(Store {
                    db: Db::Postgres(pool),
                })
            }
            Some("sqlite") => Self::open_sqlite_with(SqliteConnectOptions::from_str(url)?).await,
            _ => Err(StoreError::UnsupportedUrl),
        }
    }

    async fn open_sqlite_with(options: SqliteConnectOptions) -> Result<Store, StoreError> {
        let path = options.get_filename().to_path_buf();
        // `sqlite::memory:` and `file:` URIs name no file we could prepare.
        let in_memory =
            path.to_str().is_some_and(|p| p.starts_with("file:")) || path.as_os_str() == ":memory:";
        if !in_memory {
            prepare_sqlite_file(&path).await?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        // An in-memory database lives as long as its connections and is shared through
        // SQLite's shared cache, where concurrent writers fail instead of waiting: one
        // connection, kept forever.
        let pool_options = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(SQLITE_MAX_CONNECTIONS)
        };
        let pool = pool_options
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        migrator(SQLITE_MIGRATIONS).run(&pool).await?;
        Ok(Store {
            db: Db::Sqlite(pool),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn engine(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes every pooled connection, waiting for queries in flight (for shutdown; SQLite
    /// checkpoints its WAL when the last connection closes).
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Creates the database's directory (`0700`) and file (`0600`) if missing, so neither is ever
/// readable by other users, not even for the moment before SQLite would create them. SQLite
/// gives its `-wal` and `-shm` files the main file's permissions.
async fn prepare_sqlite_file(path: &Path) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut dir = tokio::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        dir.mode(0o700);
        dir.create(parent).await.map_err(io(parent))?;
    }
    let mut file = tokio::fs::OpenOptions::new();
    file.write(true).create(true).truncate(false);
    #[cfg(unix)]
    file.mode(0o600);
    file.open(path).await.map_err(io(path))?;
    Ok(())
}

// ---- Conversions shared by the submodules -------------------------------------------------

/// A conversation key as stored: its JSON, which is injective and reads back exactly (unlike
/// the display form, where `T1/C1` can be tenant+channel or channel+thread).
fn key_to_db(key: &ConversationKey) -> Result<String, StoreError> {
    serde_json::to_string(key).map_err(|e| StoreError::Invalid(format!("conversation key: {e}")))
}

/// Reads a stored key back, re-validating every component as if it came from outside.
fn key_from_db(table: &'static str, stored: &str) -> Result<ConversationKey, StoreError> {
    let bad = |reason: String| corrupt(table, format!("conversation key {stored:?}: {reason}"));
    let k: ConversationKey = serde_json::from_str(stored).map_err(|e| bad(e.to_string()))?;
    ConversationKey::new(
        k.platform,
        k.tenant.as_deref(),
        &k.channel,
        k.thread.as_deref(),
    )
    .map_err(|e| bad(e.to_string()))
}

fn user_from_db(table: &'static str, stored: &str) -> Result<UserRef, StoreError> {
    stored
        .parse()
        .map_err(|e| corrupt(table, format!("user {stored:?}: {e}")))
}

fn u64_to_db(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value}: too large")))
}

fn u64_from_db(table: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(table, format!("negative count {value}")))
}

fn corrupt(table: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt { table, reason }
}
