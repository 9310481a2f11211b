//! Conversations (key → workspace, sandbox backend, first and last activity) and inbound
//! de-duplication.

use std::path::{Path, PathBuf};

use boxedclaw_protocol::ids::{ConversationKey, Platform};

use super::{Db, Store, StoreError, key_from_db, key_to_db};

/// Longest inbound event id accepted. Platform ids are far shorter (Slack `Ev…`, Telegram
/// update numbers, uuids); the bound keeps hostile input from bloating the table.
pub const MAX_EVENT_ID_LEN: usize = 512;

/// A conversation the gateway has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// Which conversation.
    pub key: ConversationKey,
    /// Its workspace directory on the host.
    pub workspace: PathBuf,
    /// The sandbox backend its agent runs in (`namespace`, `boxlite`, …).
    pub backend: String,
    /// First seen, unix seconds.
    pub created_at: i64,
    /// Last touched, unix seconds.
    pub last_active: i64,
}

/// `conv_key, workspace, backend, created_at, last_active`.
type ConversationTuple = (String, String, String, i64, i64);

fn conversation_from_db(
    (key, workspace, backend, created_at, last_active): ConversationTuple,
) -> Result<ConversationRow, StoreError> {
    Ok(ConversationRow {
        key: key_from_db("conversations", &key)?,
        workspace: PathBuf::from(workspace),
        backend,
        created_at,
        last_active,
    })
}

// `$6` is the caller's time, or NULL for the database's clock. `last_active` never moves back,
// even when two replicas touch the same conversation with slightly different clocks.
const TOUCH_SQLITE: &str = "INSERT INTO conversations \
     (conv_key, display_name, storage_name, workspace, backend, created_at, last_active) \
     VALUES ($1, $2, $3, $4, $5, COALESCE($6, unixepoch()), COALESCE($6, unixepoch())) \
     ON CONFLICT (conv_key) DO UPDATE SET \
     workspace = excluded.workspace, backend = excluded.backend, \
     last_active = MAX(conversations.last_active, excluded.last_active)";
const TOUCH_POSTGRES: &str = "INSERT INTO conversations \
     (conv_key, display_name, storage_name, workspace, backend, created_at, last_active) \
     VALUES ($1, $2, $3, $4, $5, \
             COALESCE($6, CAST(FLOOR(EXTRACT(EPOCH FROM now())) AS BIGINT)), \
             COALESCE($6, CAST(FLOOR(EXTRACT(EPOCH FROM now())) AS BIGINT))) \
     ON CONFLICT (conv_key) DO UPDATE SET \
     workspace = excluded.workspace, backend = excluded.backend, \
     last_active = GREATEST(conversations.last_active, excluded.last_active)";

const FIRST_DELIVERY_SQLITE: &str = "INSERT INTO inbound_events (platform, event_id, seen_at) \
     VALUES ($1, $2, COALESCE($3, unixepoch())) ON CONFLICT DO NOTHING";
const FIRST_DELIVERY_POSTGRES: &str = "INSERT INTO inbound_events (platform, event_id, seen_at) \
     VALUES ($1, $2, COALESCE($3, CAST(FLOOR(EXTRACT(EPOCH FROM now())) AS BIGINT))) \
     ON CONFLICT DO NOTHING";

impl Store {
    /// Records that `key` was active now (the database's clock): inserts it with
    /// `created_at = last_active = now`, or updates workspace, backend and `last_active`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a non-UTF-8 workspace path.
    pub async fn touch_conversation(
        &self,
        key: &ConversationKey,
        workspace: &Path,
        backend: &str,
    ) -> Result<(), StoreError> {
        self.touch(key, workspace, backend, None).await
    }

    /// [`touch_conversation`](Self::touch_conversation) at `at` (unix seconds) instead of the
    /// database's clock.
    ///
    /// # Errors
    /// As [`touch_conversation`](Self::touch_conversation).
    pub async fn touch_conversation_at(
        &self,
        key: &ConversationKey,
        workspace: &Path,
        backend: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.touch(key, workspace, backend, Some(at)).await
    }

    async fn touch(
        &self,
        key: &ConversationKey,
        workspace: &Path,
        backend: &str,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        let stored = key_to_db(key)?;
        let workspace = workspace.to_str().ok_or_else(|| {
            StoreError::Invalid(format!("workspace path {}: not UTF-8", workspace.display()))
        })?;
        let sql = match self.db {
            Db::Sqlite(_) => TOUCH_SQLITE,
            Db::Postgres(_) => TOUCH_POSTGRES,
        };
        with_pool!(self, |pool| sqlx::query(sql)
            .bind(&stored)
            .bind(key.to_string())
            .bind(key.storage_name())
            .bind(workspace)
            .bind(backend)
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Every known conversation, most recently active first.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a row that does not read back.
    pub async fn conversations(&self) -> Result<Vec<ConversationRow>, StoreError> {
        const SQL: &str = "SELECT conv_key, workspace, backend, created_at, last_active \
             FROM conversations ORDER BY last_active DESC, conv_key";
        let rows: Vec<ConversationTuple> =
            with_pool!(self, |pool| sqlx::query_as(SQL).fetch_all(pool).await?);
        rows.into_iter().map(conversation_from_db).collect()
    }

    /// The conversation an admin means by `name`: its
    /// [`storage_name`](ConversationKey::storage_name) (exact, preferred) or its display form
    /// (`slack:T1/C1`). If several display forms match, the most recently active wins.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a row that does not read back.
    pub async fn conversation_by_name(
        &self,
        name: &str,
    ) -> Result<Option<ConversationRow>, StoreError> {
        const SQL: &str = "SELECT conv_key, workspace, backend, created_at, last_active \
             FROM conversations WHERE storage_name = $1 OR display_name = $1 \
             ORDER BY CASE WHEN storage_name = $1 THEN 0 ELSE 1 END, last_active DESC, conv_key \
             LIMIT 1";
        let row: Option<ConversationTuple> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(name)
            .fetch_optional(pool)
            .await?);
        row.map(conversation_from_db).transpose()
    }

    /// `true` exactly once per `(platform, event_id)`, however many times and on however many
    /// replicas the event arrives; records the first arrival at the database's clock.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure, or [`StoreError::Invalid`] for an empty id or one
    /// longer than [`MAX_EVENT_ID_LEN`].
    pub async fn first_delivery(
        &self,
        platform: Platform,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        self.first_delivery_inner(platform, event_id, None).await
    }

    /// [`first_delivery`](Self::first_delivery), recording the arrival at `at` (unix seconds).
    ///
    /// # Errors
    /// As [`first_delivery`](Self::first_delivery).
    pub async fn first_delivery_at(
        &self,
        platform: Platform,
        event_id: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        self.first_delivery_inner(platform, event_id, Some(at))
            .await
    }

    async fn first_delivery_inner(
        &self,
        platform: Platform,
        event_id: &str,
        at: Option<i64>,
    ) -> Result<bool, StoreError> {
        if event_id.is_empty() || event_id.len() > MAX_EVENT_ID_LEN {
            return Err(StoreError::Invalid(format!(
                "inbound event id of {} bytes (expected 1..={MAX_EVENT_ID_LEN})",
                event_id.len()
            )));
        }
        let sql = match self.db {
            Db::Sqlite(_) => FIRST_DELIVERY_SQLITE,
            Db::Postgres(_) => FIRST_DELIVERY_POSTGRES,
        };
        let done = with_pool!(self, |pool| sqlx::query(sql)
            .bind(platform.as_str())
            .bind(event_id)
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    /// Forgets inbound event ids first seen before `older_than` (unix seconds); returns how
    /// many. An event re-delivered after its id was pruned counts as new again, so keep ids
    /// longer than any platform retries (hours, not minutes).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub async fn prune_inbound(&self, older_than: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM inbound_events WHERE seen_at < $1";
        Ok(with_pool!(self, |pool| sqlx::query(SQL)
            .bind(older_than)
            .execute(pool)
            .await?
            .rows_affected()))
    }
}
