//! The hash-chained audit log: who asked, what ran, who approved, denied, let expire or
//! cancelled, and when.
//!
//! # Hash
//! `hash = sha256(prev_hash || canonical)`, lowercase hex, where `prev_hash` is the previous
//! entry's hash as its 64 ASCII hex digits (64 `'0'`s for the first entry) and `canonical` is
//! - `seq`, then `at`: each 8 bytes, big-endian two's complement;
//! - `actor`, then `action`: each as its byte length (8 bytes, big-endian) and its UTF-8 bytes;
//! - `conversation`: one byte `0` when absent, or `1` and then length and bytes as above;
//! - `detail`: length and bytes.
//!
//! Every field is fixed-size or length-prefixed, so two different entries never encode to the
//! same bytes (moving text from `detail` into `action` changes the hash).
//!
//! # Appending
//! One transaction locks the one-row `audit_head` table (`FOR UPDATE` on PostgreSQL; SQLite's
//! `BEGIN IMMEDIATE` holds the database write lock), reads the last `seq` and `hash`, inserts
//! `seq + 1` chained to that hash, and moves the head. Appenders on every replica queue on that
//! lock, so `seq` is gap-free and each entry chains to the entry really before it.

use sha2::{Digest, Sha256};

use super::{Db, Store, StoreError};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per query while verifying.
const VERIFY_PAGE: i64 = 1000;

/// Something that happened, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When, unix seconds.
    pub at: i64,
    /// Who: a user reference (`slack:U123`), `gateway` or `agent`.
    pub actor: String,
    /// What, dotted: `approval.approved`, `tool.executed`, `admin.reset`, …
    pub action: String,
    /// The conversation it concerns, if one (its display form).
    pub conversation: Option<String>,
    /// Free-form detail (escaped by the caller if it came from outside).
    pub detail: String,
}

/// An audit entry as stored: the entry, its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// When, unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// The conversation it concerns, if one.
    pub conversation: Option<String>,
    /// Detail.
    pub detail: String,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Verification found the log altered (or could not read it). Names the first bad row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at seq {seq}: {reason}")]
#[non_exhaustive]
pub struct AuditBroken {
    /// The first row that does not verify (for a deletion: the row after the gap, or the seq
    /// the chain head expects when the newest rows are gone).
    pub seq: i64,
    /// What is wrong with it.
    pub reason: String,
}

fn put_text(h: &mut Sha256, s: &str) {
    // usize → u64 is lossless on every platform Rust supports.
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// The hash of an entry at `seq` chained to `prev_hash` (see the module docs for the bytes).
pub(crate) fn entry_hash(
    prev_hash: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    conversation: Option<&str>,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    put_text(&mut h, actor);
    put_text(&mut h, action);
    match conversation {
        None => h.update([0u8]),
        Some(c) => {
            h.update([1u8]);
            put_text(&mut h, c);
        }
    }
    put_text(&mut h, detail);
    hex::encode(h.finalize())
}

/// `seq, at, actor, action, conversation, detail, prev_hash, hash`.
type AuditTuple = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);

fn audit_from_db(t: AuditTuple) -> AuditRow {
    let (seq, at, actor, action, conversation, detail, prev_hash, hash) = t;
    AuditRow {
        seq,
        at,
        actor,
        action,
        conversation,
        detail,
        prev_hash,
        hash,
    }
}

impl Store {
    /// Appends `e` to the log, chained to the entry before it; returns its `seq`. Safe with
    /// any number of concurrent appenders, in one process or many.
    ///
    /// # Errors
    /// [`StoreError::Database`] on failure; nothing is appended then.
    pub async fn audit(&self, e: &AuditEntry) -> Result<i64, StoreError> {
        const HEAD_SQLITE: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
        const HEAD_POSTGRES: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
        const INSERT: &str = "INSERT INTO audit_log \
             (seq, at, actor, action, conversation, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        const MOVE_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";
        let head_sql = match self.db {
            Db::Sqlite(_) => HEAD_SQLITE,
            Db::Postgres(_) => HEAD_POSTGRES,
        };
        let seq = in_write_tx!(self, |tx| {
            let (last, prev_hash): (i64, String) =
                sqlx::query_as(head_sql).fetch_one(&mut *tx).await?;
            let seq = last
                .checked_add(1)
                .ok_or_else(|| StoreError::Invalid("audit entry: seq overflow".into()))?;
            let hash = entry_hash(
                &prev_hash,
                seq,
                e.at,
                &e.actor,
                &e.action,
                e.conversation.as_deref(),
                &e.detail,
            );
            sqlx::query(INSERT)
                .bind(seq)
                .bind(e.at)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(e.conversation.as_deref())
                .bind(&e.detail)
                .bind(&prev_hash)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            sqlx::query(MOVE_HEAD)
                .bind(seq)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            seq
        });
        Ok(seq)
    }

    /// The newest `limit` entries, of one conversation or of all, in log order (oldest of them
    /// first). Reading does not verify; see [`verify_audit`](Self::verify_audit).
    ///
    /// # Errors
    /// [`StoreError::Database`] on failure.
    pub async fn recent_audit(
        &self,
        conversation: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        const ALL: &str = "SELECT seq, at, actor, action, conversation, detail, prev_hash, hash \
             FROM audit_log ORDER BY seq DESC LIMIT $1";
        const ONE: &str = "SELECT seq, at, actor, action, conversation, detail, prev_hash, hash \
             FROM audit_log WHERE conversation = $2 ORDER BY seq DESC LIMIT $1";
        let limit = i64::from(limit);
        let mut rows: Vec<AuditTuple> = match conversation {
            None => with_pool!(self, |pool| sqlx::query_as(ALL)
                .bind(limit)
                .fetch_all(pool)
                .await?),
            Some(c) => with_pool!(self, |pool| sqlx::query_as(ONE)
                .bind(limit)
                .bind(c)
                .fetch_all(pool)
                .await?),
        };
        rows.reverse();
        Ok(rows.into_iter().map(audit_from_db).collect())
    }

    /// Re-checks the whole chain (see the module docs); returns how many entries verified.
    /// Entries appended while it runs are left for the next run.
    ///
    /// # Errors
    /// [`AuditBroken`] naming the first row that does not verify. A database failure is
    /// reported the same way (the log could not be shown intact), its reason saying so.
    pub async fn verify_audit(&self) -> Result<u64, AuditBroken> {
        const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
        const PAGE: &str = "SELECT seq, at, actor, action, conversation, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3";
        let unreadable = |seq: i64, e: sqlx::Error| AuditBroken {
            seq,
            reason: format!("could not be read, so the log is not verified: {e}"),
        };
        let head: Result<(i64, String), sqlx::Error> =
            with_pool!(self, |pool| sqlx::query_as(HEAD).fetch_one(pool).await);
        let (head_seq, head_hash) = head.map_err(|e| unreadable(0, e))?;

        let mut expected: i64 = 1;
        let mut prev_hash = GENESIS_HASH.to_owned();
        let mut after = i64::MIN;
        let mut verified: u64 = 0;
        loop {
            let page: Result<Vec<AuditTuple>, sqlx::Error> =
                with_pool!(self, |pool| sqlx::query_as(PAGE)
                    .bind(after)
                    .bind(head_seq)
                    .bind(VERIFY_PAGE)
                    .fetch_all(pool)
                    .await);
            let page = page.map_err(|e| unreadable(expected, e))?;
            let Some(last) = page.last() else { break };
            after = last.0;
            for row in page.into_iter().map(audit_from_db) {
                check_row(&row, expected, &prev_hash)?;
                prev_hash = row.hash;
                expected = row.seq.saturating_add(1);
                verified += 1;
            }
        }
        let last_seq = expected - 1;
        if last_seq != head_seq {
            return Err(AuditBroken {
                seq: expected,
                reason: format!(
                    "missing: the log ends at seq {last_seq} but its head records seq \
                     {head_seq} (the newest rows were deleted)"
                ),
            });
        }
        if prev_hash != head_hash {
            return Err(AuditBroken {
                seq: head_seq,
                reason: "its hash differs from the one the log's head records".into(),
            });
        }
        Ok(verified)
    }
}

/// Checks one row against its expected position and predecessor.
fn check_row(row: &AuditRow, expected: i64, prev_hash: &str) -> Result<(), AuditBroken> {
    let broken = |reason: String| AuditBroken {
        seq: row.seq,
        reason,
    };
    if row.seq != expected {
        return Err(broken(if row.seq > expected {
            format!(
                "seq {expected}..={} missing before it (rows deleted)",
                row.seq - 1
            )
        } else {
            format!("out of order: expected seq {expected}")
        }));
    }
    if row.prev_hash != prev_hash {
        return Err(broken(
            "prev_hash is not the previous row's hash (a row before it was rewritten)".into(),
        ));
    }
    let hash = entry_hash(
        &row.prev_hash,
        row.seq,
        row.at,
        &row.actor,
        &row.action,
        row.conversation.as_deref(),
        &row.detail,
    );
    if hash != row.hash {
        return Err(broken(
            "hash does not match the row's content (the row was edited)".into(),
        ));
    }
    Ok(())
}
