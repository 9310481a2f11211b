//! Token usage per conversation and per user per UTC day, and the daily budgets admins set.
//!
//! Usage is added with one upsert per subject (`tokens = tokens + added`), which the database
//! applies atomically, so concurrent turns and replicas never lose an addition.

use boxedclaw_protocol::ids::{ConversationKey, UserRef};

use super::{Store, StoreError, key_from_db, key_to_db, u64_from_db, u64_to_db};

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

/// One subject's tokens on a day and its budget, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    /// Whose.
    pub subject: BudgetSubject,
    /// Tokens used that day.
    pub tokens: u64,
    /// The daily budget an admin set, if any.
    pub budget: Option<u64>,
}

impl BudgetSubject {
    /// Reads a stored `(subject_kind, subject)` back, validating it.
    fn from_db(kind: &str, subject: &str) -> Result<Self, StoreError> {
        match kind {
            "conversation" => Ok(Self::Conversation(key_from_db("token_usage", subject)?)),
            "user" => subject
                .parse()
                .map(Self::User)
                .map_err(|e| StoreError::Invalid(format!("token_usage: user {subject:?}: {e}"))),
            other => Err(StoreError::Invalid(format!(
                "token_usage: unknown subject kind {other:?}"
            ))),
        }
    }
}

impl std::fmt::Display for BudgetSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conversation(key) => write!(f, "conversation {key}"),
            Self::User(user) => write!(f, "user {user}"),
        }
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

    /// Every subject that used tokens on `day` or has a budget, most tokens first, at most
    /// `limit` of them.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or a stored row that does not validate.
    pub async fn usage_report(&self, day: i64, limit: u32) -> Result<Vec<UsageLine>, StoreError> {
        const SQL: &str = "SELECT b.subject_kind, b.subject, COALESCE(u.tokens, 0), \
             CAST(b.tokens_per_day AS BIGINT) FROM budgets b LEFT JOIN token_usage u \
             ON u.subject_kind = b.subject_kind AND u.subject = b.subject AND u.day = $1 \
             UNION ALL \
             SELECT u.subject_kind, u.subject, u.tokens, CAST(NULL AS BIGINT) FROM token_usage u \
             WHERE u.day = $1 AND NOT EXISTS (SELECT 1 FROM budgets b \
             WHERE b.subject_kind = u.subject_kind AND b.subject = u.subject) \
             ORDER BY 3 DESC, 2 LIMIT $2";
        let rows: Vec<(String, String, i64, Option<i64>)> =
            with_pool!(self, |pool| sqlx::query_as(SQL)
                .bind(day)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?);
        rows.into_iter()
            .map(|(kind, subject, tokens, budget)| {
                Ok(UsageLine {
                    subject: BudgetSubject::from_db(&kind, &subject)?,
                    tokens: u64_from_db("token_usage", tokens)?,
                    budget: budget.map(|b| u64_from_db("budgets", b)).transpose()?,
                })
            })
            .collect()
    }
}
