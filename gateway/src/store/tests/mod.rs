//! One suite, run against SQLite always and against PostgreSQL when
//! `BOXEDCLAW_TEST_DATABASE_URL` is set (each run in a fresh schema it drops afterwards; see
//! `scripts/postgres-for-tests.sh` for a local server).

use std::io::Write;

use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};

use super::audit::entry_hash;
use super::*;

fn conv(channel: &str) -> ConversationKey {
    ConversationKey::new(Platform::Slack, Some("T1"), channel, None).unwrap()
}

fn user(id: &str) -> UserRef {
    UserRef::new(Platform::Slack, id).unwrap()
}

fn approval(id: &str, conversation: &ConversationKey, expires_at: i64) -> ApprovalRow {
    let operation = format!(r#"{{"argv":["ls","/workspace/{id}"],"tool":"shell"}}"#);
    ApprovalRow {
        id: ApprovalId::new(id).unwrap(),
        conversation: conversation.clone(),
        requester: user("U1"),
        call_id: format!("call-{id}"),
        call_hash: call_hash(&operation),
        operation,
        summary: format!("ls /workspace/{id}"),
        created_at: 100,
        expires_at,
        state: ApprovalState::Pending,
        decided_by: None,
        decided_at: None,
    }
}

fn entry(i: i64, conversation: Option<&str>) -> AuditEntry {
    AuditEntry {
        at: 1_000 + i,
        actor: if i % 2 == 0 {
            "gateway".into()
        } else {
            "slack:U1".into()
        },
        action: "tool.executed".into(),
        conversation: conversation.map(str::to_owned),
        detail: format!("entry {i}"),
    }
}

impl Store {
    /// Runs SQL directly: the tests' stand-in for someone with write access to the database.
    async fn raw(&self, sql: &'static str) -> u64 {
        with_pool!(self, |pool| sqlx::query(sql)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected())
    }

    /// Puts a deleted audit row back exactly as it was.
    async fn reinsert_audit(&self, r: &AuditRow) {
        const SQL: &str = "INSERT INTO audit_log \
             (seq, at, actor, action, conversation, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        with_pool!(self, |pool| sqlx::query(SQL)
            .bind(r.seq)
            .bind(r.at)
            .bind(&r.actor)
            .bind(&r.action)
            .bind(r.conversation.as_deref())
            .bind(&r.detail)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected());
    }
}

mod suite;

use suite::suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/nested").join(SQLITE_FILE_NAME);
    let store = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(store.engine(), "sqlite");
    assert!(format!("{store:?}").contains("sqlite"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }
    suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_memory_suite() {
    suite(Store::open_url("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SQLITE_FILE_NAME);
    let store = Store::open_sqlite(&path).await.unwrap();
    store
        .insert_approval(&approval("keep", &conv("CA"), 1_000))
        .await
        .unwrap();
    store.audit(&entry(1, None)).await.unwrap();
    store.close().await;
    // Reopening re-runs the (already applied) migrations: a no-op.
    let url = format!("sqlite://{}", path.display());
    let store = Store::open_url(&url).await.unwrap();
    assert_eq!(store.pending_approvals().await.unwrap().len(), 1);
    assert_eq!(store.verify_audit().await, Ok(1));
}

#[tokio::test]
async fn unsupported_urls_are_refused_without_echoing_them() {
    for url in ["mysql://user:hunter2@db/x", "hunter2", ""] {
        let err = Store::open_url(url).await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl));
        assert!(!err.to_string().contains("hunter2"));
    }
}

#[test]
fn migration_lists_match_the_directories_and_each_other() {
    for (engine, list) in [
        ("sqlite", SQLITE_MIGRATIONS),
        ("postgres", POSTGRES_MIGRATIONS),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(engine);
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let listed: Vec<String> = list
            .iter()
            .map(|(v, d, _)| format!("{v:04}_{d}.sql"))
            .collect();
        assert_eq!(
            files, listed,
            "{engine}: list every migration file in mod.rs"
        );
    }
    let versions =
        |l: &[(i64, &str, &str)]| l.iter().map(|m| (m.0, m.1.to_owned())).collect::<Vec<_>>();
    assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
}

#[test]
fn entry_hashes_are_unambiguous() {
    let h = |actor: &str, action: &str, c: Option<&str>, detail: &str| {
        entry_hash(GENESIS_HASH, 1, 5, actor, action, c, detail)
    };
    let base = h("gateway", "tool.executed", None, "ls");
    assert_eq!(base.len(), 64);
    assert_ne!(base, h("gateway", "tool.execute", None, "dls"));
    assert_ne!(base, h("gatewaytool.executed", "", None, "ls"));
    assert_ne!(base, h("gateway", "tool.executed", Some(""), "ls"));
    assert_ne!(
        base,
        entry_hash(GENESIS_HASH, 2, 5, "gateway", "tool.executed", None, "ls")
    );
    assert_ne!(
        base,
        entry_hash(
            &"1".repeat(64),
            1,
            5,
            "gateway",
            "tool.executed",
            None,
            "ls"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_suite() {
    #[allow(clippy::disallowed_methods)] // test setup: the one variable naming the test server
    let Ok(admin_url) = std::env::var("BOXEDCLAW_TEST_DATABASE_URL") else {
        // Written past the test harness's capture so the skip is visible in every run.
        let _ = writeln!(
            std::io::stderr(),
            "store::tests::postgres_suite SKIPPED: BOXEDCLAW_TEST_DATABASE_URL is not set \
             (eval \"$(bash scripts/postgres-for-tests.sh)\" starts a local server)"
        );
        return;
    };
    // A fresh schema per run, selected through the connection's search_path, so reruns and
    // concurrent runs never see each other's rows; dropped at the end.
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).unwrap();
    let schema = format!("boxedclaw_test_{}", hex::encode(random));
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");

    let store = Store::open_url(&url).await.unwrap();
    assert_eq!(store.engine(), "postgres");
    suite(store.clone()).await;
    store.close().await;
    // Reopening re-runs the (already applied) migrations: a no-op, state kept.
    let store = Store::open_url(&url).await.unwrap();
    assert_eq!(store.recent_audit(None, 1).await.unwrap()[0].seq, 20);
    store.close().await;

    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}
