//! Approvals, persisted so a restart neither forgets nor repeats one.
//!
//! An approval is bound to one exact call: `operation` (canonical JSON) and `call_hash`, its
//! sha256. The store refuses a row whose hash does not match, and reports a stored row whose
//! operation was changed afterwards as corrupt, so what runs is what was approved.

use std::fmt;

use boxedclaw_protocol::channel::ApprovalOutcome;
use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, UserRef};
use sha2::{Digest, Sha256};

use super::{Store, StoreError, corrupt, key_from_db, key_to_db, user_from_db};

/// Where an approval is in its life. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApprovalState {
    /// Waiting for a human.
    Pending,
    /// An authorized human approved; the call may run (once).
    Approved,
    /// An authorized human denied; nothing runs.
    Denied,
    /// Nobody decided in time; nothing runs.
    Expired,
    /// The agent went away first; nothing runs.
    Cancelled,
    /// Approved, and the bound call has been started.
    Executed,
}

impl ApprovalState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Executed => "executed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "cancelled" => Self::Cancelled,
            "executed" => Self::Executed,
            _ => return None,
        })
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ApprovalOutcome> for ApprovalState {
    fn from(outcome: ApprovalOutcome) -> Self {
        match outcome {
            ApprovalOutcome::Approved => Self::Approved,
            ApprovalOutcome::Denied => Self::Denied,
            ApprovalOutcome::Expired => Self::Expired,
            ApprovalOutcome::Cancelled => Self::Cancelled,
        }
    }
}

/// One approval and the call it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    /// The id users type and buttons carry.
    pub id: ApprovalId,
    /// The conversation that owns it; decisions from elsewhere do not count.
    pub conversation: ConversationKey,
    /// The user whose message caused the call.
    pub requester: UserRef,
    /// The tool call id inside the conversation.
    pub call_id: String,
    /// The call exactly as it will run: canonical JSON.
    pub operation: String,
    /// Lowercase hex sha256 of `operation`.
    pub call_hash: String,
    /// What the prompt showed (escaped).
    pub summary: String,
    /// Opened, unix seconds.
    pub created_at: i64,
    /// Expires, unix seconds: decisions at or after this instant do not count.
    pub expires_at: i64,
    /// Where it is now.
    pub state: ApprovalState,
    /// Who decided, when a human did.
    pub decided_by: Option<UserRef>,
    /// When it stopped being pending.
    pub decided_at: Option<i64>,
}

/// The lowercase hex sha256 an approval's `call_hash` must be.
pub fn call_hash(operation: &str) -> String {
    hex::encode(Sha256::digest(operation.as_bytes()))
}

/// `id, conv_key, requester, call_id, operation, call_hash, summary, created_at, expires_at,
/// state, decided_by, decided_at`.
type ApprovalTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<i64>,
);

fn approval_from_db(t: ApprovalTuple) -> Result<ApprovalRow, StoreError> {
    const T: &str = "approvals";
    let (id, conv, requester, call_id, operation, hash, summary, created, expires, state, by, at) =
        t;
    if !hash.eq_ignore_ascii_case(&call_hash(&operation)) {
        return Err(corrupt(
            T,
            format!("approval {id}: the operation does not match its call hash"),
        ));
    }
    Ok(ApprovalRow {
        id: ApprovalId::new(id.as_str())
            .map_err(|e| corrupt(T, format!("approval id {id:?}: {e}")))?,
        conversation: key_from_db(T, &conv)?,
        requester: user_from_db(T, &requester)?,
        call_id,
        operation,
        call_hash: hash,
        summary,
        created_at: created,
        expires_at: expires,
        state: ApprovalState::parse(&state)
            .ok_or_else(|| corrupt(T, format!("approval {id}: unknown state {state:?}")))?,
        decided_by: by.as_deref().map(|u| user_from_db(T, u)).transpose()?,
        decided_at: at,
    })
}

impl Store {
    /// Persists a new approval.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when `call_hash` is not the sha256 of `operation`;
    /// [`StoreError::Database`] on failure, including an id that already exists.
    pub async fn insert_approval(&self, a: &ApprovalRow) -> Result<(), StoreError> {
        if !a.call_hash.eq_ignore_ascii_case(&call_hash(&a.operation)) {
            return Err(StoreError::Invalid(format!(
                "approval {}: call_hash is not the sha256 of operation",
                a.id
            )));
        }
        const SQL: &str = "INSERT INTO approvals (id, conv_key, requester, call_id, operation, \
             call_hash, summary, created_at, expires_at, state, decided_by, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
        let conv = key_to_db(&a.conversation)?;
        with_pool!(self, |pool| sqlx::query(SQL)
            .bind(a.id.as_str())
            .bind(&conv)
            .bind(a.requester.to_string())
            .bind(&a.call_id)
            .bind(&a.operation)
            .bind(&a.call_hash)
            .bind(&a.summary)
            .bind(a.created_at)
            .bind(a.expires_at)
            .bind(a.state.as_str())
            .bind(a.decided_by.as_ref().map(UserRef::to_string))
            .bind(a.decided_at)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Ends a pending approval as `to` (approved, denied, expired or cancelled) at `at`.
    /// Returns `true` iff this call changed it: of any number of concurrent calls, on any
    /// replica, at most one wins. A human decision (approved/denied) at or after `expires_at`
    /// changes nothing and returns `false`: resolve it as expired instead.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when `to` is pending or executed (use
    /// [`mark_executed`](Self::mark_executed)); [`StoreError::Database`] on failure.
    pub async fn resolve_approval(
        &self,
        id: &ApprovalId,
        to: ApprovalState,
        by: Option<&UserRef>,
        at: i64,
    ) -> Result<bool, StoreError> {
        const DECIDE: &str = "UPDATE approvals \
             SET state = $2, decided_by = $3, decided_at = $4 \
             WHERE id = $1 AND state = 'pending' AND expires_at > $4";
        const END: &str = "UPDATE approvals \
             SET state = $2, decided_by = $3, decided_at = $4 \
             WHERE id = $1 AND state = 'pending'";
        let sql = match to {
            ApprovalState::Approved | ApprovalState::Denied => DECIDE,
            ApprovalState::Expired | ApprovalState::Cancelled => END,
            ApprovalState::Pending | ApprovalState::Executed => {
                return Err(StoreError::Invalid(format!(
                    "approval {id}: cannot resolve to {to}"
                )));
            }
        };
        let changed = with_pool!(self, |pool| sqlx::query(sql)
            .bind(id.as_str())
            .bind(to.as_str())
            .bind(by.map(UserRef::to_string))
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(changed == 1)
    }

    /// Moves an approved approval to executed. Returns `true` iff this call did, so exactly one
    /// caller (across replicas and restarts) runs the bound call.
    ///
    /// # Errors
    /// [`StoreError::Database`] on failure.
    pub async fn mark_executed(&self, id: &ApprovalId, at: i64) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE approvals SET state = 'executed', executed_at = $2 \
             WHERE id = $1 AND state = 'approved'";
        let changed = with_pool!(self, |pool| sqlx::query(SQL)
            .bind(id.as_str())
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(changed == 1)
    }

    /// Every pending approval, oldest first (expired ones included: the caller resolves them
    /// as expired on start).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a row that does not read back (including one
    /// whose operation no longer matches its hash).
    pub async fn pending_approvals(&self) -> Result<Vec<ApprovalRow>, StoreError> {
        const SQL: &str = "SELECT id, conv_key, requester, call_id, operation, call_hash, \
             summary, created_at, expires_at, state, decided_by, decided_at FROM approvals \
             WHERE state = 'pending' ORDER BY created_at, id";
        let rows: Vec<ApprovalTuple> =
            with_pool!(self, |pool| sqlx::query_as(SQL).fetch_all(pool).await?);
        rows.into_iter().map(approval_from_db).collect()
    }

    /// One approval by id, in any state.
    ///
    /// # Errors
    /// As [`pending_approvals`](Self::pending_approvals).
    pub async fn approval(&self, id: &ApprovalId) -> Result<Option<ApprovalRow>, StoreError> {
        const SQL: &str = "SELECT id, conv_key, requester, call_id, operation, call_hash, \
             summary, created_at, expires_at, state, decided_by, decided_at FROM approvals \
             WHERE id = $1";
        let row: Option<ApprovalTuple> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?);
        row.map(approval_from_db).transpose()
    }
}
