//! Token usage per conversation and per user per UTC day, and the daily budgets admins set.
//!
//! Usage is added with one upsert per subject (`tokens = tokens + added`), which the database
//! applies atomically, so concurrent turns and replicas never lose an addition.

use boxedclaw_protocol::ids::{ConversationKey, UserRef};

use super::{Store, StoreError, key_to_db, u64_from_db, u64_to_db};

/// Whose tokens: a conversation's or a user's (across all their conversations).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BudgetSubject {
    /// One conversation.
    Conversation(ConversationKey),
    /// One verified platform user.
    User(UserRef),
}

impl BudgetSubject {
    /// `(subject_kind, subject)` as stored.
    fn to_db(&self) -> Result<(&'static str, String), StoreError> {
        Ok(match self {
            Self::Conversation(key) => ("conversation", key_to_db(key)?),
            Self::User(user) => ("user", user.to_string()),
        })
    }
}

const ADD_USAGE: &str = "INSERT INTO token_usage (subject_kind, subject, day, tokens) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (subject_kind, subject, day) \
     DO UPDATE SET tokens = token_usage.tokens + excluded.tokens";

impl Store {
    /// Adds `tokens` used on `day` (unix seconds / 86400) to both the conversation's and the
    /// user's count, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a count beyond `i64`; [`StoreError::Database`] on failure.
    pub async fn add_usage(
        &self,
        conversation: &ConversationKey,
        user: &UserRef,
        day: i64,
        tokens: u64,
    ) -> Result<(), StoreError> {
        let tokens = u64_to_db("token count", tokens)?;
        let conv = key_to_db(conversation)?;
        let user = user.to_string();
        in_write_tx!(self, |tx| {
            for (kind, subject) in [("conversation", &conv), ("user", &user)] {
                sqlx::query(ADD_USAGE)
                    .bind(kind)
                    .bind(subject)
                    .bind(day)
                    .bind(tokens)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    /// Tokens `subject` used on `day`; 0 when none were recorded.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a negative stored count.
    pub async fn usage(&self, subject: &BudgetSubject, day: i64) -> Result<u64, StoreError> {
        const SQL: &str = "SELECT tokens FROM token_usage \
             WHERE subject_kind = $1 AND subject = $2 AND day = $3";
        let (kind, subject) = subject.to_db()?;
        let tokens: Option<i64> = with_pool!(self, |pool| sqlx::query_scalar(SQL)
            .bind(kind)
            .bind(&subject)
            .bind(day)
            .fetch_optional(pool)
            .await?);
        tokens.map_or(Ok(0), |t| u64_from_db("token_usage", t))
    }

    /// Sets `subject`'s daily budget, replacing any earlier one.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a budget beyond `i64`; [`StoreError::Database`] on failure.
    pub async fn set_budget(
        &self,
        subject: &BudgetSubject,
        tokens_per_day: u64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO budgets (subject_kind, subject, tokens_per_day) \
             VALUES ($1, $2, $3) ON CONFLICT (subject_kind, subject) \
             DO UPDATE SET tokens_per_day = excluded.tokens_per_day";
        let budget = u64_to_db("budget", tokens_per_day)?;
        let (kind, subject) = subject.to_db()?;
        with_pool!(self, |pool| sqlx::query(SQL)
            .bind(kind)
            .bind(&subject)
            .bind(budget)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// `subject`'s daily budget, if an admin set one.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a negative stored budget.
    pub async fn budget(&self, subject: &BudgetSubject) -> Result<Option<u64>, StoreError> {
        const SQL: &str =
            "SELECT tokens_per_day FROM budgets WHERE subject_kind = $1 AND subject = $2";
        let (kind, subject) = subject.to_db()?;
        let budget: Option<i64> = with_pool!(self, |pool| sqlx::query_scalar(SQL)
            .bind(kind)
            .bind(&subject)
            .fetch_optional(pool)
            .await?);
        budget.map(|b| u64_from_db("budgets", b)).transpose()
    }
}
