//! The outbox: replies accepted for delivery but not yet delivered.
//!
//! Every row carries `not_after`, a deadline. A row past its deadline is never handed out for
//! delivery again: [`Store::claim_undelivered`] skips it and [`Store::expire_outbox`] marks it expired
//! for good, so a gateway that was down for a day does not flood a chat with day-old replies.
//! Rows are kept after delivery or expiry as a record; nothing here deletes them.
//!
//! A row being delivered is *claimed*: [`OutboxClaim`] names who sends it and until when the
//! row is theirs. Only a row with no claim, or whose claim has run out, can be claimed again
//! ([`Store::claim_undelivered`]), and the claim is taken by one conditional `UPDATE`, which
//! both engines apply to a row once: two gateway replicas sweeping the same outbox, or a
//! replica's sweep and its own send in progress, never send one reply twice. A failed attempt
//! gives the row up ([`Store::record_attempt`]) so the next sweep may try again.

use boxedclaw_protocol::ids::ConversationKey;

use super::{Store, StoreError, corrupt, key_from_db, key_to_db};

/// A reply waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its id, for [`Store::mark_delivered`] and [`Store::record_attempt`].
    pub id: i64,
    /// Where it goes.
    pub conversation: ConversationKey,
    /// The JSON of the `OutboundAction` to send.
    pub payload: String,
    /// Delivery attempts recorded so far.
    pub attempts: u32,
    /// Deliver no later than this, unix seconds.
    pub not_after: i64,
}

/// Who delivers an outbox row, and until when (unix seconds) no one else may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxClaim<'a> {
    /// The claiming gateway process (for the record; `until` is what excludes others).
    pub owner: &'a str,
    /// The claim's end: after it, the row is free again even if never given up.
    pub until: i64,
}

/// `id, conv_key, payload, attempts, not_after`.
type OutboxTuple = (i64, String, String, i64, i64);

fn outbox_from_db(
    (id, conv, payload, attempts, not_after): OutboxTuple,
) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id,
        conversation: key_from_db("outbox", &conv)?,
        payload,
        attempts: u32::try_from(attempts)
            .map_err(|_| corrupt("outbox", format!("row {id}: attempts {attempts}")))?,
        not_after,
    })
}

impl Store {
    /// Queues `payload` (the JSON of an `OutboundAction`) for `conversation`, to be delivered no
    /// later than `not_after` (unix seconds), already claimed by the caller, who is about to
    /// send it. Returns its id.
    ///
    /// # Errors
    /// [`StoreError::Database`] on failure.
    pub async fn enqueue_outbox(
        &self,
        conversation: &ConversationKey,
        payload: &str,
        not_after: i64,
        claim: OutboxClaim<'_>,
    ) -> Result<i64, StoreError> {
        const SQL: &str = "INSERT INTO outbox (conv_key, payload, not_after, claimed_by, claimed_until) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id";
        let conv = key_to_db(conversation)?;
        Ok(with_pool!(self, |pool| sqlx::query_scalar(SQL)
            .bind(&conv)
            .bind(payload)
            .bind(not_after)
            .bind(claim.owner)
            .bind(claim.until)
            .fetch_one(pool)
            .await?))
    }

    /// Claims every row still to deliver at `now` that no one else holds (no claim, or one
    /// that ran out before `now`) and returns them, oldest first. A row another caller claimed
    /// a moment earlier is not returned: each row goes to one claimant.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a row that does not read back.
    pub async fn claim_undelivered(
        &self,
        now: i64,
        claim: OutboxClaim<'_>,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        // One statement, the whole condition in its own WHERE: PostgreSQL re-checks it on a
        // row another transaction just claimed (and then skips the row); SQLite has one writer.
        const SQL: &str = "UPDATE outbox SET claimed_by = $2, claimed_until = $3 \
             WHERE state = 'pending' AND not_after >= $1 \
             AND (claimed_until IS NULL OR claimed_until < $1) \
             RETURNING id, conv_key, payload, attempts, not_after";
        let rows: Vec<OutboxTuple> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(now)
            .bind(claim.owner)
            .bind(claim.until)
            .fetch_all(pool)
            .await?);
        let mut rows = rows
            .into_iter()
            .map(outbox_from_db)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Records that row `id` was delivered at `at`. Idempotent: a second call keeps the first
    /// time. A row that had expired meanwhile is recorded as delivered, because it was.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown id; [`StoreError::Database`] on failure.
    pub async fn mark_delivered(&self, id: i64, at: i64) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE outbox SET state = 'delivered', delivered_at = $2 \
             WHERE id = $1 AND delivered_at IS NULL";
        let changed = with_pool!(self, |pool| sqlx::query(SQL)
            .bind(id)
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected());
        if changed == 0 {
            self.outbox_row_exists(id).await?;
        }
        Ok(())
    }

    /// Rows still to deliver at `now`, claimed or not: not delivered, not expired,
    /// `not_after >= now`; oldest first. Stale rows are never returned, whether or not
    /// [`expire_outbox`](Self::expire_outbox) has run. The tests' read-only view of what
    /// [`claim_undelivered`](Self::claim_undelivered) chooses from.
    #[cfg(test)]
    pub(crate) async fn undelivered(&self, now: i64) -> Result<Vec<OutboxRow>, StoreError> {
        const SQL: &str = "SELECT id, conv_key, payload, attempts, not_after FROM outbox \
             WHERE state = 'pending' AND not_after >= $1 ORDER BY id";
        let rows: Vec<OutboxTuple> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(now)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(outbox_from_db).collect()
    }

    /// Marks every undelivered row whose deadline passed (`not_after < now`) as expired, for
    /// good; returns how many. The caller may tell the conversation's owner what was dropped.
    ///
    /// # Errors
    /// [`StoreError::Database`] on failure.
    pub async fn expire_outbox(&self, now: i64) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE outbox SET state = 'expired', expired_at = $1 \
             WHERE state = 'pending' AND not_after < $1";
        Ok(with_pool!(self, |pool| sqlx::query(SQL)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Counts one more failed delivery attempt of row `id` and gives up its claim, so the next
    /// sweep (of any replica) may try again.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown id; [`StoreError::Database`] on failure.
    pub async fn record_attempt(&self, id: i64) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE outbox SET attempts = attempts + 1, \
             claimed_by = NULL, claimed_until = NULL WHERE id = $1";
        let changed = with_pool!(self, |pool| sqlx::query(SQL)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        if changed == 0 {
            self.outbox_row_exists(id).await?;
        }
        Ok(())
    }

    async fn outbox_row_exists(&self, id: i64) -> Result<(), StoreError> {
        const SQL: &str = "SELECT id FROM outbox WHERE id = $1";
        let found: Option<i64> = with_pool!(self, |pool| sqlx::query_scalar(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await?);
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                what: "outbox row",
                id: id.to_string(),
            }),
        }
    }
}
