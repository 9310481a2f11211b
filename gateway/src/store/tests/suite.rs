//! The suite itself: every method of the store, engine-agnostic.

use std::collections::BTreeSet;
use std::path::Path;

use boxedclaw_protocol::ids::{ApprovalId, ConversationKey, Platform, UserRef};
use tokio::task::JoinSet;

use super::{approval, conv, entry, user};
use crate::store::{
    ApprovalState, BudgetSubject, GENESIS_HASH, MAX_EVENT_ID_LEN, OutboxClaim, OutboxRow, Store,
    StoreError,
};

/// Every method of the store, on whichever engine `store` runs.
pub(super) async fn suite(store: Store) {
    conversations(&store).await;
    inbound(&store).await;
    approvals(&store).await;
    outbox(&store).await;
    outbox_claims(&store).await;
    usage_and_budgets(&store).await;
    audit_chain(&store).await;
}

async fn conversations(store: &Store) {
    let (a, b) = (conv("CA"), conv("CB"));
    store
        .touch_conversation_at(&a, Path::new("/w/a"), "namespace", 100)
        .await
        .unwrap();
    store
        .touch_conversation_at(&b, Path::new("/w/b"), "namespace", 200)
        .await
        .unwrap();
    store
        .touch_conversation_at(&a, Path::new("/w/a2"), "boxlite", 300)
        .await
        .unwrap();
    // An older time (another replica's clock) never moves last_active back.
    store
        .touch_conversation_at(&a, Path::new("/w/a2"), "boxlite", 250)
        .await
        .unwrap();

    let all = store.conversations().await.unwrap();
    assert_eq!(all.iter().map(|c| &c.key).collect::<Vec<_>>(), [&a, &b]);
    let row_a = &all[0];
    assert_eq!((row_a.created_at, row_a.last_active), (100, 300));
    assert_eq!(row_a.workspace, Path::new("/w/a2"));
    assert_eq!(row_a.backend, "boxlite");

    let by_display = store.conversation_by_name(&a.to_string()).await.unwrap();
    assert_eq!(by_display.as_ref(), Some(row_a));
    let by_storage = store
        .conversation_by_name(&b.storage_name())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_storage.key, b);
    assert_eq!(
        store.conversation_by_name("slack:T1/nope").await.unwrap(),
        None
    );

    // Display forms can collide (tenant+channel vs channel+thread); storage names cannot.
    let x = ConversationKey::new(Platform::Slack, Some("T9"), "C9", None).unwrap();
    let y = ConversationKey::new(Platform::Slack, None, "T9", Some("C9")).unwrap();
    assert_eq!(x.to_string(), y.to_string());
    store
        .touch_conversation_at(&x, Path::new("/w/x"), "namespace", 400)
        .await
        .unwrap();
    store
        .touch_conversation_at(&y, Path::new("/w/y"), "namespace", 500)
        .await
        .unwrap();
    let named = |n: String| async move { store.conversation_by_name(&n).await.unwrap().unwrap() };
    assert_eq!(
        named(x.to_string()).await.key,
        y,
        "most recent display match wins"
    );
    assert_eq!(named(x.storage_name()).await.key, x);

    // Without a time, the database's clock.
    let c = conv("CC");
    store
        .touch_conversation(&c, Path::new("/w/c"), "namespace")
        .await
        .unwrap();
    let row_c = named(c.storage_name()).await;
    assert!(row_c.created_at > 1_600_000_000, "{}", row_c.created_at);
    assert_eq!(row_c.created_at, row_c.last_active);
    assert_eq!(store.conversations().await.unwrap()[0].key, c);
}

async fn inbound(store: &Store) {
    let results = [
        store
            .first_delivery_at(Platform::Slack, "Ev1", 1_000)
            .await
            .unwrap(),
        store
            .first_delivery_at(Platform::Slack, "Ev1", 1_001)
            .await
            .unwrap(),
        store
            .first_delivery_at(Platform::Slack, "Ev1", 1_002)
            .await
            .unwrap(),
    ];
    assert_eq!(results, [true, false, false]);
    // Ids are per platform.
    assert!(
        store
            .first_delivery_at(Platform::Discord, "Ev1", 1_000)
            .await
            .unwrap()
    );

    let mut tasks = JoinSet::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.spawn(async move { store.first_delivery_at(Platform::Slack, "Ev2", 1_000).await });
    }
    let firsts = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(firsts, 1, "exactly one concurrent delivery is the first");

    assert!(
        store
            .first_delivery(Platform::Telegram, "42")
            .await
            .unwrap()
    );
    assert!(
        !store
            .first_delivery(Platform::Telegram, "42")
            .await
            .unwrap()
    );

    assert!(
        store
            .first_delivery_at(Platform::Web, "old", 10)
            .await
            .unwrap()
    );
    assert_eq!(store.prune_inbound(50).await.unwrap(), 1);
    assert!(
        store
            .first_delivery_at(Platform::Web, "old", 60)
            .await
            .unwrap(),
        "pruned: new again"
    );
    assert!(
        !store
            .first_delivery_at(Platform::Slack, "Ev1", 2_000)
            .await
            .unwrap(),
        "kept"
    );

    for bad in [String::new(), "x".repeat(MAX_EVENT_ID_LEN + 1)] {
        let err = store
            .first_delivery(Platform::Slack, &bad)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
}

async fn approvals(store: &Store) {
    let c = conv("CA");
    let (a1, a2, a3, a4) = (
        approval("a1", &c, 1_000),
        approval("a2", &c, 1_000),
        approval("a3", &c, 150),
        approval("a4", &c, 1_000),
    );
    for a in [&a1, &a2, &a3, &a4] {
        store.insert_approval(a).await.unwrap();
    }
    let pending = store.pending_approvals().await.unwrap();
    assert_eq!(pending, [a1.clone(), a2.clone(), a3.clone(), a4.clone()]);
    assert_eq!(store.approval(&a1.id).await.unwrap().as_ref(), Some(&a1));
    let unknown = ApprovalId::new("nope").unwrap();
    assert_eq!(store.approval(&unknown).await.unwrap(), None);
    assert!(store.insert_approval(&a1).await.is_err(), "ids are unique");
    let mut forged = approval("a5", &c, 1_000);
    forged.operation = r#"{"argv":["rm","-rf","/workspace"],"tool":"shell"}"#.into();
    assert!(matches!(
        store.insert_approval(&forged).await,
        Err(StoreError::Invalid(_))
    ));

    // Ten concurrent decisions (double clicks, two replicas): exactly one counts.
    let mut tasks = JoinSet::new();
    for i in 0..10 {
        let (store, id) = (store.clone(), a1.id.clone());
        let to = if i % 2 == 0 {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        let by = user(&format!("U{i}"));
        tasks.spawn(async move { store.resolve_approval(&id, to, Some(&by), 200).await });
    }
    let wins = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(wins, 1);
    let decided = store.approval(&a1.id).await.unwrap().unwrap();
    assert!(matches!(
        decided.state,
        ApprovalState::Approved | ApprovalState::Denied
    ));
    assert!(decided.decided_by.is_some());
    assert_eq!(decided.decided_at, Some(200));
    let by = user("U1");
    let again = store.resolve_approval(&a1.id, ApprovalState::Denied, Some(&by), 201);
    assert!(!again.await.unwrap(), "decided once");
    let pending = store.resolve_approval(&a2.id, ApprovalState::Pending, None, 200);
    assert!(matches!(pending.await, Err(StoreError::Invalid(_))));

    // A click after expiry does not count; the approval is then resolved as expired.
    let late = store.resolve_approval(&a3.id, ApprovalState::Approved, Some(&by), 150);
    assert!(!late.await.unwrap());
    assert!(
        store
            .resolve_approval(&a3.id, ApprovalState::Expired, None, 150)
            .await
            .unwrap()
    );
    let expired = store.approval(&a3.id).await.unwrap().unwrap();
    assert_eq!(
        (expired.state, expired.decided_by, expired.decided_at),
        (ApprovalState::Expired, None, Some(150))
    );

    // Approved → executed exactly once, however many try.
    assert!(
        store
            .resolve_approval(&a2.id, ApprovalState::Approved, Some(&by), 300)
            .await
            .unwrap()
    );
    let mut tasks = JoinSet::new();
    for _ in 0..10 {
        let (store, id) = (store.clone(), a2.id.clone());
        tasks.spawn(async move { store.mark_executed(&id, 301).await });
    }
    let runs = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(runs, 1);
    assert_eq!(
        store.approval(&a2.id).await.unwrap().unwrap().state,
        ApprovalState::Executed
    );
    assert!(
        !store.mark_executed(&a3.id, 302).await.unwrap(),
        "expired never runs"
    );
    assert!(
        !store.mark_executed(&a4.id, 302).await.unwrap(),
        "pending never runs"
    );

    assert!(
        store
            .resolve_approval(&a4.id, ApprovalState::Cancelled, None, 400)
            .await
            .unwrap()
    );
    assert_eq!(
        store.approval(&a4.id).await.unwrap().unwrap().state,
        ApprovalState::Cancelled
    );
    assert_eq!(store.pending_approvals().await.unwrap(), []);

    // The bound call cannot be swapped in the database behind the store's back.
    store
        .raw("UPDATE approvals SET operation = '{\"argv\":[\"rm\"]}' WHERE id = 'a4'")
        .await;
    let err = store.approval(&a4.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

/// A claim that ran out long ago: the row is anyone's to deliver.
const FREE: OutboxClaim<'static> = OutboxClaim {
    owner: "gone",
    until: 0,
};

fn ids(rows: Vec<OutboxRow>) -> Vec<i64> {
    rows.into_iter().map(|r| r.id).collect()
}

async fn outbox(store: &Store) {
    let (a, b) = (conv("CA"), conv("CB"));
    let e1 = store
        .enqueue_outbox(&a, r#"{"kind":"post","n":1}"#, 1_000, FREE)
        .await
        .unwrap();
    let e2 = store
        .enqueue_outbox(&b, r#"{"kind":"post","n":2}"#, 500, FREE)
        .await
        .unwrap();
    let e3 = store
        .enqueue_outbox(&a, r#"{"kind":"post","n":3}"#, 2_000, FREE)
        .await
        .unwrap();
    assert!(e1 < e2 && e2 < e3);
    assert_eq!(ids(store.undelivered(400).await.unwrap()), [e1, e2, e3]);
    // Stale rows are never returned, expired or not.
    assert_eq!(ids(store.undelivered(600).await.unwrap()), [e1, e3]);

    store.record_attempt(e1).await.unwrap();
    store.record_attempt(e1).await.unwrap();
    let first = store.undelivered(600).await.unwrap().remove(0);
    assert_eq!(first.id, e1);
    assert_eq!(first.conversation, a);
    assert_eq!(first.payload, r#"{"kind":"post","n":1}"#);
    assert_eq!((first.attempts, first.not_after), (2, 1_000));

    store.mark_delivered(e1, 600).await.unwrap();
    store.mark_delivered(e1, 601).await.unwrap();
    assert_eq!(ids(store.undelivered(600).await.unwrap()), [e3]);

    assert_eq!(store.expire_outbox(600).await.unwrap(), 1, "e2 expires");
    assert_eq!(store.expire_outbox(600).await.unwrap(), 0);
    assert_eq!(
        ids(store.undelivered(0).await.unwrap()),
        [e3],
        "expired is final"
    );
    assert_eq!(store.expire_outbox(5_000).await.unwrap(), 1);
    assert_eq!(store.undelivered(0).await.unwrap(), []);

    for err in [
        store.mark_delivered(9_999, 1).await,
        store.record_attempt(9_999).await,
    ] {
        assert!(matches!(err, Err(StoreError::NotFound { .. })), "{err:?}");
    }
}

async fn outbox_claims(store: &Store) {
    let c = conv("CLAIM");
    let claim = |owner, until| OutboxClaim { owner, until };
    // Replica A stores a reply it is about to send.
    let sending = store
        .enqueue_outbox(&c, "{}", 20_000, claim("a", 10_100))
        .await
        .unwrap();
    // Replica B's sweep leaves it alone while A sends...
    let sweep = |now, owner, until| store.claim_undelivered(now, claim(owner, until));
    assert_eq!(ids(sweep(10_000, "b", 10_200).await.unwrap()), [0i64; 0]);
    // ...and takes it once A's claim ran out (A died mid-send); then it is B's alone.
    assert_eq!(ids(sweep(10_101, "b", 10_200).await.unwrap()), [sending]);
    assert_eq!(ids(sweep(10_150, "a", 10_300).await.unwrap()), [0i64; 0]);
    // A failed attempt gives the row up at once.
    store.record_attempt(sending).await.unwrap();
    let retried = sweep(10_150, "a", 10_300).await.unwrap();
    assert_eq!((retried[0].id, retried[0].attempts), (sending, 1));
    // Delivered rows are never claimed again, whatever the claims say.
    store.mark_delivered(sending, 10_160).await.unwrap();
    assert_eq!(ids(sweep(19_000, "b", 19_100).await.unwrap()), [0i64; 0]);

    // Many sweeps at once, each on its own connection: every row goes to exactly one.
    let mut made = BTreeSet::new();
    for _ in 0..100 {
        made.insert(store.enqueue_outbox(&c, "{}", 50_000, FREE).await.unwrap());
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let mut sweeps = JoinSet::new();
    for i in 0..8 {
        let (store, start) = (store.clone(), start.clone());
        sweeps.spawn(async move {
            let owner = format!("replica-{i}");
            start.wait().await;
            let mut got = Vec::new();
            for _ in 0..5 {
                let claim = OutboxClaim {
                    owner: &owner,
                    until: 40_100,
                };
                got.extend(ids(store.claim_undelivered(40_000, claim).await.unwrap()));
            }
            got
        });
    }
    let mut claimed = Vec::new();
    while let Some(got) = sweeps.join_next().await {
        claimed.extend(got.unwrap());
    }
    assert_eq!(
        claimed.len(),
        made.len(),
        "a row claimed twice or not at all"
    );
    assert_eq!(claimed.into_iter().collect::<BTreeSet<_>>(), made);
    for id in made {
        store.mark_delivered(id, 40_050).await.unwrap();
    }
}

async fn usage_and_budgets(store: &Store) {
    let (a, b) = (conv("CA"), conv("CB"));
    let (u1, u2) = (user("U1"), user("U2"));
    store.add_usage(&a, &u1, 10, 100).await.unwrap();
    store.add_usage(&a, &u2, 10, 50).await.unwrap();
    store.add_usage(&b, &u1, 10, 25).await.unwrap();
    store.add_usage(&a, &u1, 11, 7).await.unwrap();
    let conv_of = |k: &ConversationKey| BudgetSubject::Conversation(k.clone());
    let user_of = |u: &UserRef| BudgetSubject::User(u.clone());
    for (subject, day, tokens) in [
        (conv_of(&a), 10, 150),
        (conv_of(&b), 10, 25),
        (user_of(&u1), 10, 125),
        (user_of(&u2), 10, 50),
        (conv_of(&a), 11, 7),
        (user_of(&u1), 11, 7),
        (conv_of(&a), 12, 0),
        (user_of(&user("U9")), 10, 0),
    ] {
        assert_eq!(
            store.usage(&subject, day).await.unwrap(),
            tokens,
            "{subject:?} day {day}"
        );
    }

    let mut tasks = JoinSet::new();
    for _ in 0..10 {
        let (store, a, u) = (store.clone(), a.clone(), user("U3"));
        tasks.spawn(async move { store.add_usage(&a, &u, 20, 3).await });
    }
    for r in tasks.join_all().await {
        r.unwrap();
    }
    assert_eq!(store.usage(&conv_of(&a), 20).await.unwrap(), 30);
    assert_eq!(store.usage(&user_of(&user("U3")), 20).await.unwrap(), 30);
    let too_many = store.add_usage(&a, &u1, 10, u64::MAX).await;
    assert!(matches!(too_many, Err(StoreError::Invalid(_))));
    assert_eq!(
        store.usage(&conv_of(&a), 10).await.unwrap(),
        150,
        "nothing half-added"
    );

    assert_eq!(store.budget(&conv_of(&a)).await.unwrap(), None);
    store.set_budget(&conv_of(&a), 1_000).await.unwrap();
    store.set_budget(&conv_of(&a), 2_000).await.unwrap();
    store.set_budget(&user_of(&u1), 5).await.unwrap();
    assert_eq!(store.budget(&conv_of(&a)).await.unwrap(), Some(2_000));
    assert_eq!(store.budget(&user_of(&u1)).await.unwrap(), Some(5));
    assert_eq!(store.budget(&conv_of(&b)).await.unwrap(), None);
    assert_eq!(store.budget(&user_of(&u2)).await.unwrap(), None);

    // The dashboard's report: budgets with today's usage, then usage without a budget.
    let report = store.usage_report(10, 100).await.unwrap();
    let line = |s: &BudgetSubject| report.iter().find(|l| &l.subject == s).cloned();
    assert_eq!(
        line(&conv_of(&a)).map(|l| (l.tokens, l.budget)),
        Some((150, Some(2_000)))
    );
    assert_eq!(
        line(&user_of(&u1)).map(|l| (l.tokens, l.budget)),
        Some((125, Some(5)))
    );
    assert_eq!(
        line(&user_of(&u2)).map(|l| (l.tokens, l.budget)),
        Some((50, None))
    );
    assert!(
        report.windows(2).all(|w| w[0].tokens >= w[1].tokens),
        "{report:?}"
    );
    assert_eq!(store.usage_report(10, 1).await.unwrap().len(), 1);
    let other_day = store.usage_report(99, 100).await.unwrap();
    assert!(
        other_day
            .iter()
            .all(|l| l.tokens == 0 && l.budget.is_some()),
        "{other_day:?}"
    );
}

async fn audit_chain(store: &Store) {
    assert_eq!(store.verify_audit().await, Ok(0));
    let conversation = conv("CA").to_string();
    for i in 1..=10 {
        let c = (i % 3 == 0).then_some(conversation.as_str());
        assert_eq!(store.audit(&entry(i, c)).await.unwrap(), i);
    }
    let mut tasks = JoinSet::new();
    for i in 11..=20 {
        let store = store.clone();
        tasks.spawn(async move { store.audit(&entry(i, None)).await });
    }
    let seqs: BTreeSet<i64> = tasks
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seqs, (11..=20).collect(), "concurrent appends are gap-free");
    assert_eq!(store.verify_audit().await, Ok(20));

    let all = store.recent_audit(None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(all[0].prev_hash, GENESIS_HASH);
    assert!(all.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    let newest = store.recent_audit(None, 3).await.unwrap();
    assert_eq!(
        newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [18, 19, 20]
    );
    let mine = store.recent_audit(Some(&conversation), 2).await.unwrap();
    assert_eq!(mine.iter().map(|r| r.seq).collect::<Vec<_>>(), [6, 9]);
    assert_eq!(mine[1].detail, "entry 9");

    // An edited row is named.
    assert_eq!(
        store
            .raw("UPDATE audit_log SET detail = 'nothing ran' WHERE seq = 7")
            .await,
        1
    );
    let broken = store.verify_audit().await.unwrap_err();
    assert_eq!(broken.seq, 7, "{broken}");
    assert!(broken.to_string().contains("seq 7"), "{broken}");
    assert!(broken.reason.contains("edited"), "{broken}");
    store
        .raw("UPDATE audit_log SET detail = 'entry 7' WHERE seq = 7")
        .await;
    assert_eq!(store.verify_audit().await, Ok(20));

    // Deleting the newest row is caught by the head.
    store.raw("DELETE FROM audit_log WHERE seq = 20").await;
    let broken = store.verify_audit().await.unwrap_err();
    assert_eq!(broken.seq, 20, "{broken}");
    store.reinsert_audit(&all[19]).await;
    assert_eq!(store.verify_audit().await, Ok(20));

    // Deleting a middle row names the row after the gap.
    store.raw("DELETE FROM audit_log WHERE seq = 12").await;
    let broken = store.verify_audit().await.unwrap_err();
    assert_eq!(broken.seq, 13, "{broken}");
    assert!(broken.reason.contains("deleted"), "{broken}");
}
