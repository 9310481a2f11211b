//! The outbox: replies accepted for delivery but not yet delivered.
//!
//! Every row carries `not_after`, a deadline. A row past its deadline is never handed out for
//! delivery again: [`Store::undelivered`] skips it and [`Store::expire_outbox`] marks it expired
//! for good, so a gateway that was down for a day does not flood a chat with day-old replies.
//! Rows are kept after delivery or expiry as a record; nothing here deletes them.

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
    /// later than `not_after` (unix seconds). Returns its id.
    ///
    /// # Errors
    /// [`StoreError::Database`] on failure.
    pub async fn enqueue_outbox(
        &self,
        conversation: &ConversationKey,
        payload: &str,
        not_after: i64,
    ) -> Result<i64, StoreError> {
        const SQL: &str =
            "INSERT INTO outbox (conv_key, payload, not_after) VALUES ($1, $2, $3) RETURNING id";
        let conv = key_to_db(conversation)?;
        Ok(with_pool!(self, |pool| sqlx::query_scalar(SQL)
            .bind(&conv)
            .bind(payload)
            .bind(not_after)
            .fetch_one(pool)
            .await?))
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

    /// Rows still to deliver at `now`: not delivered, not expired, `not_after >= now`; oldest
    /// first. Stale rows are never returned, whether or not [`expire_outbox`](Self::expire_outbox)
    /// has run.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a row that does not read back.
    pub async fn undelivered(&self, now: i64) -> Result<Vec<OutboxRow>, StoreError> {
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

    /// Counts one more delivery attempt of row `id` (record it before sending, so a crash
    /// mid-send still counts).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown id; [`StoreError::Database`] on failure.
    pub async fn record_attempt(&self, id: i64) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE outbox SET attempts = attempts + 1 WHERE id = $1";
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
