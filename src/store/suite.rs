//! The store behaviour suite: every test runs against SQLite (a fresh file)
//! and PostgreSQL (a fresh schema in the `test` database at 127.0.0.1:5432).
//! When PostgreSQL is unreachable its half fails under `CI` and otherwise
//! prints a loud SKIPPED line.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::postgres::PgConnectOptions;

use super::*;

/// `SYNCHUB_TEST_DATABASE_URL`, else the local test database.
fn pg_url() -> String {
    std::env::var("SYNCHUB_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

struct Fixture {
    store: SharedStore,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(sqlx::PgPool, String)>,
}

impl Fixture {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = sqlite::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .expect("open sqlite")
            .with_sync_entities(["deals".to_owned()]);
        store.migrate().await.expect("migrate sqlite");
        Self {
            store: Arc::new(store),
            _dir: Some(dir),
            pg_schema: None,
        }
    }

    /// A store in a schema of its own; `None` (after a loud skip) when
    /// PostgreSQL is unreachable outside CI.
    async fn postgres() -> Option<Self> {
        let admin = match tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&pg_url()),
        )
        .await
        {
            Ok(Ok(pool)) => pool,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                assert!(
                    std::env::var_os("CI").is_none(),
                    "PostgreSQL not reachable at {} ({why}) and CI is set",
                    pg_url()
                );
                eprintln!(
                    "\n!!! SKIPPED: PostgreSQL not reachable at {}: {why}\n",
                    pg_url()
                );
                return None;
            }
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("create schema");
        let options: PgConnectOptions = pg_url().parse().expect("url");
        let options = options.options([("search_path", schema.as_str())]);
        let store = postgres::PgStore::connect_with(options)
            .await
            .expect("connect")
            .with_sync_entities(["deals".to_owned()]);
        store.migrate().await.expect("migrate postgres");
        Some(Self {
            store: Arc::new(store),
            _dir: None,
            pg_schema: Some((admin, schema)),
        })
    }

    async fn finish(self) {
        if let Some((admin, schema)) = self.pg_schema {
            drop(self.store);
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await;
        }
    }
}

/// Declares one test per backend for an `async fn(SharedStore)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::Fixture::sqlite().await;
                    super::$name(f.store.clone()).await;
                    f.finish().await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(f) = super::Fixture::postgres().await else { return };
                    super::$name(f.store.clone()).await;
                    f.finish().await;
                }
            )*
        }
    };
}

on_both!(
    a_write_is_read_back_and_each_change_bumps_the_version,
    a_stale_base_version_is_refused_with_the_current_record,
    create_refuses_a_live_record_and_update_refuses_a_missing_one,
    a_write_that_changes_nothing_writes_nothing,
    change_versions_grow_per_tenant_and_tenants_are_isolated,
    every_commit_leaves_its_events_in_the_outbox_until_acknowledged,
    twenty_racers_for_one_lock_leave_exactly_one_holder,
    concurrent_saves_from_one_base_version_leave_one_winner,
    epochs_only_grow_across_expiry_and_takeover_and_stale_saves_are_refused,
    renew_and_release_need_the_live_token,
    a_lock_of_another_user_blocks_a_save_without_token,
    a_lock_whose_holder_left_is_released_after_the_grace_period,
    a_holder_who_reconnects_within_the_grace_period_keeps_the_lock,
    drafts_are_kept_per_user,
    a_stale_merge_write_takes_one_sided_changes_and_queues_true_conflicts,
    a_rule_that_decides_a_conflict_merges_and_records_it_as_resolved,
    a_pushed_mutation_applies_once_and_a_duplicate_returns_the_stored_result,
    a_gap_writes_nothing_and_a_rejected_mutation_still_advances_the_seq,
    a_client_id_belongs_to_the_user_who_first_pushed_with_it,
    concurrent_pushes_of_one_queue_apply_every_seq_exactly_once,
    pull_pages_through_changes_after_the_cursor_and_filters_entities,
    resolving_a_conflict_writes_the_choice_once_and_keeps_the_history,
    a_local_write_queues_one_push_per_record_and_a_zoho_write_none,
    a_lapsed_lease_passes_the_job_on_and_fences_the_old_claim,
    a_record_with_a_running_push_is_not_claimed_twice,
    failures_back_off_or_go_dead_and_a_dead_job_can_be_revived,
    concurrent_claimers_take_each_job_exactly_once,
    a_record_is_never_held_by_two_claimers_while_it_keeps_changing,
    shadows_merge_and_schedule_slots_open_once,
);

fn key(tenant: &str, id: &str) -> RecordKey {
    RecordKey::new(tenant, "deals", id)
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

fn update(k: &RecordKey, base: Option<i64>, fields: Value, by: &str) -> Write {
    Write {
        key: k.clone(),
        kind: WriteKind::Update,
        base_version: base,
        fields: obj(fields),
        lock_token: None,
        respect_locks: true,
        by: by.into(),
        source: Source::Local,
    }
}

async fn granted(store: &SharedStore, k: &RecordKey, user: &str, client: &str, ttl: i64) -> Lock {
    match store
        .acquire(k, user, client, ttl, false)
        .await
        .expect("acquire")
    {
        Acquired::Granted(l) => l,
        Acquired::Held(l) => panic!("lock held by {}", l.holder),
    }
}

async fn drain_outbox(store: &SharedStore) -> Vec<OutboxEvent> {
    let events = store.claim_outbox(1000, 10_000).await.expect("claim");
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    store.ack_outbox(&ids).await.expect("ack");
    events
}

async fn a_write_is_read_back_and_each_change_bumps_the_version(store: SharedStore) {
    let k = key("t1", "d1");
    let c = store
        .write(update(
            &k,
            Some(0),
            json!({"Amount": 10, "Stage": "new"}),
            "ann",
        ))
        .await
        .expect("create");
    assert_eq!(c.record.version, 1);
    assert_eq!(c.changed, vec!["Amount", "Stage"]);
    let c = store
        .write(update(&k, Some(1), json!({"Amount": 12}), "bob"))
        .await
        .expect("update");
    assert_eq!(c.record.version, 2);
    assert_eq!(c.changed, vec!["Amount"]);
    let r = store.get(&k).await.unwrap().expect("record");
    assert_eq!(r.version, 2);
    assert_eq!(
        Value::Object(r.fields),
        json!({"Amount": 12, "Stage": "new"})
    );
    assert_eq!(r.updated_by, "bob");
    assert!(r.updated_at > 1_600_000_000_000);
}

async fn a_stale_base_version_is_refused_with_the_current_record(store: SharedStore) {
    let k = key("t1", "d2");
    store
        .write(update(&k, Some(0), json!({"a": 1}), "ann"))
        .await
        .unwrap();
    store
        .write(update(&k, Some(1), json!({"a": 2}), "ann"))
        .await
        .unwrap();
    match store
        .write(update(&k, Some(1), json!({"a": 3}), "bob"))
        .await
    {
        Err(StoreError::Conflict { base, current }) => {
            assert_eq!(base, 1);
            assert_eq!(current.version, 2);
            assert_eq!(current.fields["a"], json!(2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get(&k).await.unwrap().unwrap().fields["a"], json!(2));
}

async fn create_refuses_a_live_record_and_update_refuses_a_missing_one(store: SharedStore) {
    let k = key("t1", "d3");
    assert!(matches!(
        store
            .write(update(&k, Some(4), json!({"a": 1}), "ann"))
            .await,
        Err(StoreError::NotFound)
    ));
    let mut w = update(&k, None, json!({"a": 1}), "ann");
    w.kind = WriteKind::Create;
    store.write(w.clone()).await.expect("create");
    assert!(matches!(
        store.write(w.clone()).await,
        Err(StoreError::AlreadyExists)
    ));
    let mut d = update(&k, Some(1), json!({}), "ann");
    d.kind = WriteKind::Delete;
    let gone = store.write(d).await.expect("delete");
    assert!(gone.record.deleted);
    assert!(store.get(&k).await.unwrap().is_none());
    // Re-creating continues the version line, so pulls never see it go back.
    assert_eq!(store.write(w).await.expect("recreate").record.version, 3);
}

async fn a_write_that_changes_nothing_writes_nothing(store: SharedStore) {
    let k = key("t1", "d4");
    store
        .write(update(&k, Some(0), json!({"a": 1}), "ann"))
        .await
        .unwrap();
    drain_outbox(&store).await;
    let before = store.change_version("t1").await.unwrap();
    let c = store
        .write(update(&k, Some(1), json!({"a": 1}), "ann"))
        .await
        .unwrap();
    assert!(c.changed.is_empty());
    assert_eq!(c.record.version, 1);
    assert_eq!(store.change_version("t1").await.unwrap(), before);
    assert!(drain_outbox(&store).await.is_empty());
}

async fn change_versions_grow_per_tenant_and_tenants_are_isolated(store: SharedStore) {
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(update(
                    &key("ta", &format!("r{i}")),
                    Some(0),
                    json!({"n": i}),
                    "u",
                ))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.change_version("ta").await.unwrap(), 10);
    assert_eq!(store.change_version("tb").await.unwrap(), 0);
    assert!(store.get(&key("tb", "r1")).await.unwrap().is_none());
    assert!(store.get(&key("ta", "r1")).await.unwrap().is_some());
}

async fn every_commit_leaves_its_events_in_the_outbox_until_acknowledged(store: SharedStore) {
    let k = key("t1", "d5");
    store
        .write(update(&k, Some(0), json!({"a": 1}), "ann"))
        .await
        .unwrap();
    let claimed = store.claim_outbox(100, 60_000).await.unwrap();
    let channels: Vec<&str> = claimed.iter().map(|e| e.channel.as_str()).collect();
    assert_eq!(channels, vec!["changes:deals", "record:deals:d5"]);
    let event: Value = serde_json::from_str(&claimed[0].payload).unwrap();
    assert_eq!(event["type"], "record.changed");
    assert_eq!(event["by"], "ann");
    // Claimed events are not handed out twice while the claim lasts...
    assert!(store.claim_outbox(100, 60_000).await.unwrap().is_empty());
    // ...a failed publish returns one to the queue...
    store.retry_outbox(claimed[1].id, 0).await.unwrap();
    let again = store.claim_outbox(100, 60_000).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, claimed[1].id);
    // ...and acknowledged ones are gone.
    store
        .ack_outbox(&[claimed[0].id, claimed[1].id])
        .await
        .unwrap();
    store.retry_outbox(claimed[1].id, 0).await.unwrap();
    assert!(store.claim_outbox(100, 0).await.unwrap().is_empty());
}

async fn twenty_racers_for_one_lock_leave_exactly_one_holder(store: SharedStore) {
    let k = key("t1", "race");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            store
                .acquire(
                    &k,
                    &format!("user{i}"),
                    &format!("client{i}"),
                    60_000,
                    false,
                )
                .await
                .expect("acquire")
        }));
    }
    let mut winners = Vec::new();
    let mut holders_seen = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Acquired::Granted(l) => winners.push(l),
            Acquired::Held(l) => holders_seen.push(l.holder),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer holds the lock");
    let winner = &winners[0];
    assert!(holders_seen.iter().all(|h| *h == winner.holder));
    assert_eq!(store.lock_status(&k).await.unwrap().as_ref(), Some(winner));
}

async fn concurrent_saves_from_one_base_version_leave_one_winner(store: SharedStore) {
    let k = key("t1", "contended");
    store
        .write(update(&k, Some(0), json!({"n": 0}), "ann"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = update(&k, Some(1), json!({"n": i + 1}), "bot");
            w.respect_locks = false;
            store.write(w).await
        }));
    }
    let (mut won, mut conflicts) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => {
                assert_eq!(c.record.version, 2);
                won += 1;
            }
            Err(StoreError::Conflict { current, .. }) => {
                assert_eq!(current.version, 2);
                conflicts += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((won, conflicts), (1, 19));
    assert_eq!(store.get(&k).await.unwrap().unwrap().version, 2);
}

async fn epochs_only_grow_across_expiry_and_takeover_and_stale_saves_are_refused(
    store: SharedStore,
) {
    let k = key("t1", "fence");
    store
        .write(update(&k, Some(0), json!({"a": 0}), "ann"))
        .await
        .unwrap();
    let first = granted(&store, &k, "ann", "c1", 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Expired by the database clock: bob gets it with a higher epoch.
    let second = granted(&store, &k, "bob", "c2", 60_000).await;
    assert!(second.epoch > first.epoch);
    // An admin takes over: higher again.
    let third = match store.acquire(&k, "root", "c3", 60_000, true).await.unwrap() {
        Acquired::Granted(l) => l,
        Acquired::Held(_) => panic!("takeover refused"),
    };
    assert!(third.epoch > second.epoch);
    // Bob's save arrives after the takeover, carrying his stale epoch: refused.
    let mut w = update(&k, Some(1), json!({"a": 1}), "bob");
    w.lock_token = Some(second.epoch);
    match store.write(w).await {
        Err(StoreError::LockLost { current }) => {
            assert_eq!(current.map(|l| l.holder).as_deref(), Some("root"))
        }
        other => panic!("expected lock lost, got {other:?}"),
    }
    // The expired first holder's epoch is refused too.
    let mut w = update(&k, Some(1), json!({"a": 1}), "ann");
    w.lock_token = Some(first.epoch);
    assert!(matches!(
        store.write(w).await,
        Err(StoreError::LockLost { .. })
    ));
    // The holder with the live epoch but a stale base version: conflict.
    let mut w = update(&k, Some(0), json!({"a": 2}), "root");
    w.lock_token = Some(third.epoch);
    assert!(matches!(
        store.write(w.clone()).await,
        Err(StoreError::Conflict { .. })
    ));
    w.base_version = Some(1);
    assert_eq!(store.write(w).await.unwrap().record.version, 2);
    let events: Vec<Value> = drain_outbox(&store)
        .await
        .iter()
        .filter(|e| e.channel == "record:deals:fence")
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec![
            "record.changed",
            "lock.acquired",
            "lock.expired",
            "lock.acquired",
            "lock.taken_over",
            "record.changed"
        ]
    );
    assert_eq!(events[4]["previous_holder"], "bob");
}

async fn renew_and_release_need_the_live_token(store: SharedStore) {
    let k = key("t1", "renew");
    let l = granted(&store, &k, "ann", "c1", 1_000).await;
    let renewed = store
        .renew(&k, l.epoch, 60_000)
        .await
        .unwrap()
        .expect("renewed");
    assert!(renewed.expires_at > l.expires_at);
    assert_eq!(renewed.epoch, l.epoch);
    assert!(
        store
            .renew(&k, l.epoch + 1, 60_000)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .release(&k, l.epoch + 1, "ann")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.release(&k, l.epoch, "ann").await.unwrap().is_some());
    assert!(store.lock_status(&k).await.unwrap().is_none());
    assert!(store.renew(&k, l.epoch, 60_000).await.unwrap().is_none());
    // The same client re-acquiring keeps its epoch; another tab gets a new one.
    let a = granted(&store, &k, "ann", "c1", 60_000).await;
    assert_eq!(
        granted(&store, &k, "ann", "c1", 60_000).await.epoch,
        a.epoch
    );
    assert!(granted(&store, &k, "ann", "c2", 60_000).await.epoch > a.epoch);
    assert!(store.force_release(&k, "root").await.unwrap().is_some());
    assert!(store.force_release(&k, "root").await.unwrap().is_none());
}

async fn a_lock_of_another_user_blocks_a_save_without_token(store: SharedStore) {
    let k = key("t1", "held");
    store
        .write(update(&k, Some(0), json!({"a": 0}), "ann"))
        .await
        .unwrap();
    granted(&store, &k, "ann", "c1", 60_000).await;
    assert!(matches!(
        store
            .write(update(&k, Some(1), json!({"a": 1}), "bob"))
            .await,
        Err(StoreError::LockHeld { .. })
    ));
    // The holder may save without the token; a backend ignoring locks too.
    store
        .write(update(&k, Some(1), json!({"a": 1}), "ann"))
        .await
        .unwrap();
    let mut w = update(&k, Some(2), json!({"a": 2}), "zoho");
    w.respect_locks = false;
    w.source = Source::Zoho;
    assert_eq!(store.write(w).await.unwrap().record.version, 3);
}

async fn a_lock_whose_holder_left_is_released_after_the_grace_period(store: SharedStore) {
    let k = key("t1", "left");
    let user = ("t1".to_owned(), "ann".to_owned());
    store
        .heartbeat("n1", "node", std::slice::from_ref(&user), &[], 10_000)
        .await
        .unwrap();
    granted(&store, &k, "ann", "c1", 60_000).await;
    assert!(
        store
            .release_abandoned(100, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .heartbeat("n1", "node", &[], std::slice::from_ref(&user), 10_000)
        .await
        .unwrap();
    // Marked offline now; not released before the grace period ends.
    assert!(
        store
            .release_abandoned(300, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let released = store.release_abandoned(300, 10_000).await.unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].0, "t1");
    assert!(store.lock_status(&k).await.unwrap().is_none());
    let events = drain_outbox(&store).await;
    let last: Value = serde_json::from_str(&events.last().unwrap().payload).unwrap();
    assert_eq!(last["type"], "lock.released");
    assert_eq!(last["reason"], "disconnected");
}

async fn a_holder_who_reconnects_within_the_grace_period_keeps_the_lock(store: SharedStore) {
    let k = key("t1", "back");
    let user = ("t1".to_owned(), "ann".to_owned());
    store
        .heartbeat("n1", "node", std::slice::from_ref(&user), &[], 10_000)
        .await
        .unwrap();
    let l = granted(&store, &k, "ann", "c1", 60_000).await;
    store.forget_node("n1").await.unwrap();
    assert!(
        store
            .release_abandoned(300, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    // Back on another node before the grace period ends.
    store
        .heartbeat("n2", "node", std::slice::from_ref(&user), &[], 10_000)
        .await
        .unwrap();
    assert!(
        store
            .release_abandoned(300, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store
            .release_abandoned(300, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.lock_status(&k).await.unwrap(), Some(l.clone()));
    assert!(store.renew(&k, l.epoch, 60_000).await.unwrap().is_some());
    // A node that stops heartbeating stops vouching for its users.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(store.release_abandoned(100, 100).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.release_abandoned(100, 100).await.unwrap().len(), 1);
}

async fn drafts_are_kept_per_user(store: SharedStore) {
    let k = key("t1", "draft");
    assert!(store.get_draft(&k, "ann").await.unwrap().is_none());
    store
        .save_draft(&k, "ann", &obj(json!({"Stage": "won"})))
        .await
        .unwrap();
    store
        .save_draft(&k, "ann", &obj(json!({"Stage": "lost"})))
        .await
        .unwrap();
    let (fields, at) = store.get_draft(&k, "ann").await.unwrap().expect("draft");
    assert_eq!(Value::Object(fields), json!({"Stage": "lost"}));
    assert!(at > 0);
    assert!(store.get_draft(&k, "bob").await.unwrap().is_none());
}

fn merge(k: &RecordKey, base_version: i64, base: Value, fields: Value, by: &str) -> MergeWrite {
    let mut w = update(k, Some(base_version), fields, by);
    w.respect_locks = false;
    w.source = Source::Offline;
    MergeWrite {
        write: w,
        base: obj(base),
        at: None,
        rules: crate::domain::conflict::EntityRules::default(),
        origin: None,
        writer_is_remote: false,
    }
}

fn apply_plan(m: MergeWrite) -> MutationPlan {
    MutationPlan::Apply(Box::new(m))
}

async fn a_stale_merge_write_takes_one_sided_changes_and_queues_true_conflicts(store: SharedStore) {
    let k = key("t1", "m1");
    store
        .write(update(&k, Some(0), json!({"A": 1, "B": "x"}), "ann"))
        .await
        .unwrap();
    store
        .write(update(&k, Some(1), json!({"A": 2}), "bob"))
        .await
        .unwrap();
    drain_outbox(&store).await;
    // Base values come from the change log at version 1 (no `base` given).
    let m = store
        .merge_write(merge(&k, 1, json!({}), json!({"A": 3, "B": "y"}), "cat"))
        .await
        .expect("merge");
    assert_eq!(m.status, MergeStatus::Conflict);
    assert_eq!(m.committed.record.version, 3);
    assert_eq!(
        Value::Object(m.committed.record.fields.clone()),
        json!({"A": 2, "B": "y"})
    );
    let c = m.conflict.expect("conflict stored");
    assert_eq!(c.status, "open");
    assert_eq!(c.fields.len(), 1);
    assert_eq!(c.fields[0].field, "A");
    assert_eq!(c.fields[0].base, json!(1));
    assert_eq!(c.fields[0].local, json!(3));
    assert_eq!(c.fields[0].remote, json!(2));
    let listed = store
        .list_conflicts(
            "t1",
            &ConflictFilter {
                status: Some("open".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed, vec![c.clone()]);
    assert!(
        store
            .list_conflicts(
                "t2",
                &ConflictFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .is_empty(),
        "tenants do not see each other's conflicts"
    );
    let events = drain_outbox(&store).await;
    assert!(
        events
            .iter()
            .any(|e| e.channel == "conflicts" && e.payload.contains("conflict.detected"))
    );
    assert!(
        events
            .iter()
            .any(|e| e.channel == "record:deals:m1" && e.payload.contains("conflict.detected"))
    );
}

async fn a_rule_that_decides_a_conflict_merges_and_records_it_as_resolved(store: SharedStore) {
    let k = key("t1", "m2");
    store
        .write(update(&k, Some(0), json!({"A": 1}), "ann"))
        .await
        .unwrap();
    store
        .write(update(&k, Some(1), json!({"A": 2}), "bob"))
        .await
        .unwrap();
    let mut m = merge(&k, 1, json!({"A": 1}), json!({"A": 3}), "cat");
    m.rules.strategy = crate::domain::conflict::Strategy::LocalWins;
    let m = store.merge_write(m).await.unwrap();
    assert_eq!(m.status, MergeStatus::Merged);
    assert_eq!(m.committed.record.fields["A"], json!(3));
    let c = m.conflict.expect("history of the decision");
    assert_eq!(c.status, "resolved");
    assert_eq!(c.history.len(), 1);
    assert_eq!(c.history[0]["by"], "rules");
}

async fn a_pushed_mutation_applies_once_and_a_duplicate_returns_the_stored_result(
    store: SharedStore,
) {
    let k = key("t1", "p1");
    let first = store
        .push_mutation(
            "t1",
            "phone",
            "ann",
            1,
            apply_plan(merge(&k, 0, json!({}), json!({"A": 1}), "ann")),
        )
        .await
        .unwrap();
    let PushStep::Done(result) = first else {
        panic!("not applied: {first:?}")
    };
    assert_eq!(result["status"], "applied");
    let again = store
        .push_mutation(
            "t1",
            "phone",
            "ann",
            1,
            apply_plan(merge(&k, 0, json!({}), json!({"A": 99}), "ann")),
        )
        .await
        .unwrap();
    assert_eq!(again, PushStep::Duplicate(result));
    assert_eq!(store.last_seq("t1", "phone").await.unwrap(), 1);
    let r = store.get(&k).await.unwrap().unwrap();
    assert_eq!((r.version, r.fields["A"].clone()), (1, json!(1)));
}

async fn a_gap_writes_nothing_and_a_rejected_mutation_still_advances_the_seq(store: SharedStore) {
    let k = key("t1", "p2");
    let gap = store
        .push_mutation(
            "t1",
            "phone",
            "ann",
            2,
            apply_plan(merge(&k, 0, json!({}), json!({"A": 1}), "ann")),
        )
        .await
        .unwrap();
    assert_eq!(gap, PushStep::Gap { last_seq: 0 });
    assert_eq!(store.get(&k).await.unwrap(), None);
    let bad = store
        .push_mutation(
            "t1",
            "phone",
            "ann",
            1,
            MutationPlan::Reject {
                code: "invalid_input".into(),
                message: "nope".into(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(&bad, PushStep::Done(v) if v["status"] == "rejected"));
    // An update of a record that never existed can never apply.
    let missing = store
        .push_mutation(
            "t1",
            "phone",
            "ann",
            2,
            apply_plan(merge(&k, 4, json!({}), json!({"A": 1}), "ann")),
        )
        .await
        .unwrap();
    let PushStep::Done(v) = missing else {
        panic!("{missing:?}")
    };
    assert_eq!(v["status"], "rejected");
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(store.last_seq("t1", "phone").await.unwrap(), 2);
    let next = store
        .push_mutation(
            "t1",
            "phone",
            "ann",
            3,
            apply_plan(merge(&k, 0, json!({}), json!({"A": 1}), "ann")),
        )
        .await
        .unwrap();
    assert!(matches!(&next, PushStep::Done(v) if v["status"] == "applied"));
}

async fn a_client_id_belongs_to_the_user_who_first_pushed_with_it(store: SharedStore) {
    let k = key("t1", "p3");
    store
        .push_mutation(
            "t1",
            "phone",
            "ann",
            1,
            apply_plan(merge(&k, 0, json!({}), json!({"A": 1}), "ann")),
        )
        .await
        .unwrap();
    let other = store
        .push_mutation(
            "t1",
            "phone",
            "bob",
            2,
            apply_plan(merge(&k, 1, json!({}), json!({"A": 2}), "bob")),
        )
        .await;
    assert!(matches!(other, Err(StoreError::ClientTaken)), "{other:?}");
    // Another tenant's client of the same name is another queue.
    let elsewhere = store
        .push_mutation(
            "t2",
            "phone",
            "bob",
            1,
            apply_plan(merge(
                &key("t2", "p3"),
                0,
                json!({}),
                json!({"A": 1}),
                "bob",
            )),
        )
        .await
        .unwrap();
    assert!(matches!(elsewhere, PushStep::Done(_)));
}

async fn concurrent_pushes_of_one_queue_apply_every_seq_exactly_once(store: SharedStore) {
    let k = key("t1", "p4");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for seq in 1..=5_i64 {
                let m = merge(&k, seq - 1, json!({}), json!({"n": seq}), "ann");
                let step = store
                    .push_mutation("t1", "phone", "ann", seq, apply_plan(m))
                    .await
                    .expect("push");
                seen.push(step);
            }
            seen
        }));
    }
    let mut applied = 0;
    for t in tasks {
        for step in t.await.unwrap() {
            match step {
                PushStep::Done(v) => {
                    assert_eq!(v["status"], "applied");
                    applied += 1;
                }
                PushStep::Duplicate(v) => assert_eq!(v["status"], "applied"),
                PushStep::Gap { .. } => panic!("a racer saw a gap"),
            }
        }
    }
    assert_eq!(applied, 5, "each seq applied by exactly one racer");
    let r = store.get(&k).await.unwrap().unwrap();
    assert_eq!((r.version, r.fields["n"].clone()), (5, json!(5)));
}

async fn pull_pages_through_changes_after_the_cursor_and_filters_entities(store: SharedStore) {
    for i in 0..5 {
        store
            .write(update(
                &key("t1", &format!("d{i}")),
                Some(0),
                json!({"i": i}),
                "ann",
            ))
            .await
            .unwrap();
    }
    for i in 0..2 {
        let k = RecordKey::new("t1", "contacts", format!("c{i}"));
        store
            .write(update(&k, Some(0), json!({"i": i}), "ann"))
            .await
            .unwrap();
    }
    // Changing d0 again moves it to the end of the change order.
    store
        .write(update(&key("t1", "d0"), Some(1), json!({"i": 10}), "ann"))
        .await
        .unwrap();
    let mut cursor = 0;
    let mut ids = Vec::new();
    loop {
        let page = store.pull("t1", cursor, &[], 3).await.unwrap();
        assert!(page.cursor > cursor || page.changes.is_empty());
        ids.extend(page.changes.iter().map(|(r, _)| r.id.clone()));
        cursor = page.cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(ids, ["d1", "d2", "d3", "d4", "c0", "c1", "d0"]);
    assert_eq!(cursor, store.change_version("t1").await.unwrap());
    let contacts = store
        .pull("t1", 0, &["contacts".to_owned()], 100)
        .await
        .unwrap();
    assert_eq!(contacts.changes.len(), 2);
    assert!(!contacts.more);
    assert_eq!(
        contacts.cursor, cursor,
        "a filtered pull still reaches the head"
    );
    let empty = store.pull("t1", cursor, &[], 100).await.unwrap();
    assert!(empty.changes.is_empty());
    assert_eq!(empty.cursor, cursor);
    assert!(
        store
            .pull("t2", 0, &[], 100)
            .await
            .unwrap()
            .changes
            .is_empty()
    );
}

async fn resolving_a_conflict_writes_the_choice_once_and_keeps_the_history(store: SharedStore) {
    let k = key("t1", "r1");
    store
        .write(update(&k, Some(0), json!({"A": 1}), "ann"))
        .await
        .unwrap();
    store
        .write(update(&k, Some(1), json!({"A": 2}), "bob"))
        .await
        .unwrap();
    let m = store
        .merge_write(merge(&k, 1, json!({"A": 1}), json!({"A": 3}), "cat"))
        .await
        .unwrap();
    let id = m.conflict.expect("open conflict").id;
    drain_outbox(&store).await;
    let (c, w) = store
        .resolve_conflict("t1", id, "admin", "merge", obj(json!({"A": 4})))
        .await
        .unwrap();
    assert_eq!(c.status, "resolved");
    assert_eq!(c.history.len(), 1);
    assert_eq!(c.history[0]["resolution"], "merge");
    assert_eq!(w.expect("written").record.fields["A"], json!(4));
    assert_eq!(store.get_conflict("t1", id).await.unwrap(), Some(c));
    let again = store
        .resolve_conflict("t1", id, "admin", "use_remote", Map::new())
        .await;
    assert!(matches!(again, Err(StoreError::ConflictClosed)));
    assert!(matches!(
        store
            .resolve_conflict("t2", id, "admin", "use_remote", Map::new())
            .await,
        Err(StoreError::NotFound)
    ));
    let events = drain_outbox(&store).await;
    assert!(
        events
            .iter()
            .any(|e| e.channel == "conflicts" && e.payload.contains("conflict.resolved"))
    );
    // Filters and paging: a second, open conflict on another entity.
    let other = RecordKey::new("t1", "contacts", "r2");
    store
        .write(update(&other, Some(0), json!({"A": 1}), "ann"))
        .await
        .unwrap();
    store
        .write(update(&other, Some(1), json!({"A": 2}), "bob"))
        .await
        .unwrap();
    let second = store
        .merge_write(merge(&other, 1, json!({"A": 1}), json!({"A": 3}), "cat"))
        .await
        .unwrap()
        .conflict
        .expect("open conflict")
        .id;
    let list = |status: Option<&str>, entity: Option<&str>, after: i64, limit: i64| {
        let store = store.clone();
        let filter = ConflictFilter {
            status: status.map(str::to_owned),
            entity: entity.map(str::to_owned),
            after,
            limit,
        };
        async move {
            store
                .list_conflicts("t1", &filter)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(None, None, 0, 10).await, vec![id, second]);
    assert_eq!(list(None, None, 0, 1).await, vec![id]);
    assert_eq!(list(None, None, id, 1).await, vec![second]);
    assert_eq!(list(Some("resolved"), None, 0, 10).await, vec![id]);
    assert_eq!(
        list(Some("open"), Some("contacts"), 0, 10).await,
        vec![second]
    );
    assert!(list(Some("open"), Some("deals"), 0, 10).await.is_empty());
}

// ---- the sync queue and state (store/sync.rs) ------------------------------

use super::sync::{JOB_PUSH, NewJob, Retry, ShadowPatch, SyncStat};

fn zoho_write(k: &RecordKey, fields: Value) -> Write {
    Write {
        source: Source::Zoho,
        respect_locks: false,
        ..update(k, Some(0), fields, "zoho")
    }
}

async fn a_local_write_queues_one_push_per_record_and_a_zoho_write_none(s: SharedStore) {
    let a = key("t", "q-1");
    s.write(update(&a, Some(0), json!({"x": 1}), "u"))
        .await
        .unwrap();
    s.write(update(&a, None, json!({"x": 2}), "u"))
        .await
        .unwrap();
    let jobs = s.list_jobs("t", Some("queued"), 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "two changes, one waiting push: {jobs:?}");
    assert_eq!(jobs[0].record_id, "q-1");
    assert_eq!(jobs[0].kind, JOB_PUSH);
    assert_eq!(s.shadow(&a).await.unwrap().unwrap().status, "pending");
    // A change that came from Zoho does not go back.
    let b = key("t", "q-2");
    s.write(zoho_write(&b, json!({"x": 1}))).await.unwrap();
    assert_eq!(s.list_jobs("t", None, 10).await.unwrap().len(), 1);
    // Entities that do not sync queue nothing.
    let other = RecordKey::new("t", "notes", "n-1");
    s.write(update(&other, Some(0), json!({"x": 1}), "u"))
        .await
        .unwrap();
    assert_eq!(s.list_jobs("t", None, 10).await.unwrap().len(), 1);
    assert_eq!(s.queue_depth("t").await.unwrap()[0].queued, 1);
}

async fn a_lapsed_lease_passes_the_job_on_and_fences_the_old_claim(s: SharedStore) {
    let a = key("t", "l-1");
    s.write(update(&a, Some(0), json!({"x": 1}), "u"))
        .await
        .unwrap();
    let first = s.claim_jobs("w1", JOB_PUSH, 10, 300).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        s.claim_jobs("w2", JOB_PUSH, 10, 300)
            .await
            .unwrap()
            .is_empty()
    );
    // w1 renews while it works...
    let held = [(first[0].id, first[0].claims)];
    assert_eq!(s.extend_leases("w1", &held, 300).await.unwrap(), 1);
    assert_eq!(s.extend_leases("w2", &held, 300).await.unwrap(), 0);
    assert_eq!(
        s.extend_leases("w1", &[(first[0].id, first[0].claims + 1)], 300)
            .await
            .unwrap(),
        0,
        "another claim's token"
    );
    // ...then stops renewing: the lease lapses and w2 takes the job.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = s.claim_jobs("w2", JOB_PUSH, 10, 5_000).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert!(second[0].claims > first[0].claims);
    assert_eq!(second[0].last_error_class.as_deref(), Some("lease_expired"));
    // w1's late answer changes nothing.
    assert!(!s.finish_job(&first[0]).await.unwrap());
    assert!(
        !s.fail_job(&first[0], Retry::Dead, "server_error", "late")
            .await
            .unwrap()
    );
    assert!(s.finish_job(&second[0]).await.unwrap());
    assert!(s.list_jobs("t", None, 10).await.unwrap().is_empty());
}

async fn a_record_with_a_running_push_is_not_claimed_twice(s: SharedStore) {
    let a = key("t", "r-1");
    s.write(update(&a, Some(0), json!({"x": 1}), "u"))
        .await
        .unwrap();
    let running = s.claim_jobs("w1", JOB_PUSH, 10, 5_000).await.unwrap();
    assert_eq!(running.len(), 1);
    // A change while it runs queues a second job for the same record...
    s.write(update(&a, None, json!({"x": 2}), "u"))
        .await
        .unwrap();
    assert_eq!(s.list_jobs("t", Some("queued"), 10).await.unwrap().len(), 1);
    // ...which no worker takes while the first runs.
    assert!(
        s.claim_jobs("w2", JOB_PUSH, 10, 5_000)
            .await
            .unwrap()
            .is_empty()
    );
    // A retry of the running job folds into the queued one.
    assert!(
        s.fail_job(
            &running[0],
            Retry::Later {
                delay_ms: 0,
                counted: true
            },
            "timeout",
            "slow"
        )
        .await
        .unwrap()
    );
    let jobs = s.list_jobs("t", None, 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].attempts, 1, "the attempt carries over");
    let next = s.claim_jobs("w2", JOB_PUSH, 10, 5_000).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(s.finish_job(&next[0]).await.unwrap());
}

async fn failures_back_off_or_go_dead_and_a_dead_job_can_be_revived(s: SharedStore) {
    let a = key("t", "f-1");
    s.write(update(&a, Some(0), json!({"x": 1}), "u"))
        .await
        .unwrap();
    let job = s
        .claim_jobs("w", JOB_PUSH, 1, 5_000)
        .await
        .unwrap()
        .remove(0);
    assert!(
        s.fail_job(
            &job,
            Retry::Later {
                delay_ms: 60_000,
                counted: true
            },
            "server_error",
            "500"
        )
        .await
        .unwrap()
    );
    // Not due yet.
    assert!(
        s.claim_jobs("w", JOB_PUSH, 1, 5_000)
            .await
            .unwrap()
            .is_empty()
    );
    let listed = s.list_jobs("t", None, 10).await.unwrap().remove(0);
    assert_eq!(listed.attempts, 1);
    assert_eq!(listed.last_error_class.as_deref(), Some("server_error"));
    // Throttling is not an attempt.
    let b = key("t", "f-2");
    s.write(update(&b, Some(0), json!({"x": 1}), "u"))
        .await
        .unwrap();
    let job_b = s
        .claim_jobs("w", JOB_PUSH, 1, 5_000)
        .await
        .unwrap()
        .remove(0);
    assert!(
        s.fail_job(
            &job_b,
            Retry::Later {
                delay_ms: 0,
                counted: false
            },
            "rate_limited",
            "429"
        )
        .await
        .unwrap()
    );
    let again = s
        .claim_jobs("w", JOB_PUSH, 1, 5_000)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.attempts, 0);
    assert!(
        s.fail_job(&again, Retry::Dead, "validation", "bad")
            .await
            .unwrap()
    );
    let dead = s.list_jobs("t", Some("dead"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record_id, "f-2");
    assert_eq!(
        s.queue_depth("t")
            .await
            .unwrap()
            .iter()
            .map(|d| d.dead)
            .sum::<i64>(),
        1
    );
    assert!(s.revive_job("t", dead[0].id).await.unwrap());
    assert!(
        !s.revive_job("t", dead[0].id).await.unwrap(),
        "no longer dead"
    );
    assert!(
        !s.revive_job("other", dead[0].id).await.unwrap(),
        "another tenant's"
    );
    let revived = s
        .claim_jobs("w", JOB_PUSH, 1, 5_000)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(revived.record_id, "f-2");
    assert_eq!(revived.attempts, 0);
}

async fn concurrent_claimers_take_each_job_exactly_once(s: SharedStore) {
    for i in 0..60 {
        s.enqueue_job(&NewJob::push(&key("t", &format!("c-{i}"))))
            .await
            .unwrap();
    }
    let mut claimers = vec![];
    for w in 0..8 {
        let s = s.clone();
        claimers.push(tokio::spawn(async move {
            let mut mine = vec![];
            loop {
                let jobs = s
                    .claim_jobs(&format!("w{w}"), JOB_PUSH, 7, 60_000)
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    return mine;
                }
                for j in jobs {
                    mine.push(j.id);
                    assert!(s.finish_job(&j).await.unwrap());
                }
            }
        }));
    }
    let mut all = vec![];
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(n, 60, "every job claimed");
    assert_eq!(all.len(), 60, "none claimed twice");
}

async fn a_record_is_never_held_by_two_claimers_while_it_keeps_changing(s: SharedStore) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let held: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let s = s.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            for round in 0..15 {
                for r in 0..6 {
                    let k = key("t", &format!("hot-{r}"));
                    let base = if round == 0 { Some(0) } else { None };
                    s.write(update(&k, base, json!({"n": round}), "u"))
                        .await
                        .unwrap();
                }
            }
            writing.store(false, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut claimers = vec![];
    for w in 0..4 {
        let s = s.clone();
        let held = held.clone();
        let writing = writing.clone();
        claimers.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let jobs = s
                    .claim_jobs(&format!("w{w}"), JOB_PUSH, 3, 60_000)
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    if !writing.load(std::sync::atomic::Ordering::SeqCst)
                        && s.list_jobs("t", Some("queued"), 1)
                            .await
                            .unwrap()
                            .is_empty()
                    {
                        return done;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                for j in &jobs {
                    assert!(
                        held.lock().unwrap().insert(j.record_id.clone()),
                        "{} claimed while another claimer held it",
                        j.record_id
                    );
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
                for j in &jobs {
                    held.lock().unwrap().remove(&j.record_id);
                    assert!(s.finish_job(j).await.unwrap());
                    done += 1;
                }
            }
        }));
    }
    writer.await.unwrap();
    let mut total = 0;
    for c in claimers {
        total += c.await.unwrap();
    }
    assert!(total >= 6, "every record pushed at least once ({total})");
    assert!(s.list_jobs("t", None, 10).await.unwrap().is_empty());
}

async fn shadows_merge_and_schedule_slots_open_once(s: SharedStore) {
    let a = key("t", "s-1");
    let first = s
        .patch_shadow(
            &a,
            &ShadowPatch {
                zoho_id: Some("z1".into()),
                local: obj(json!({"a": 1, "b": 2})),
                remote: obj(json!({"A": 1})),
                version: Some(3),
                status: Some("synced".into()),
                synced: true,
                ..ShadowPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(first.synced_at.is_some());
    let merged = s
        .patch_shadow(
            &a,
            &ShadowPatch {
                local: obj(json!({"b": 3})),
                status: Some("error".into()),
                error: Some(Some("why".into())),
                ..ShadowPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(merged.local, obj(json!({"a": 1, "b": 3})));
    assert_eq!(merged.remote, obj(json!({"A": 1})));
    assert_eq!(merged.zoho_id.as_deref(), Some("z1"));
    assert_eq!(merged.version, 3);
    assert_eq!(merged.synced_at, first.synced_at);
    assert_eq!(s.shadow(&a).await.unwrap(), Some(merged));
    assert_eq!(
        s.find_by_zoho_id("t", "deals", "z1")
            .await
            .unwrap()
            .as_deref(),
        Some("s-1")
    );
    assert_eq!(
        s.status_counts("t").await.unwrap(),
        vec![("deals".into(), "error".into(), 1)]
    );

    assert!(
        s.claim_slot("t", "every-minute", 60_000, true)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_slot("t", "every-minute", 60_000, true)
            .await
            .unwrap()
    );
    assert!(!s.claim_slot("t", "later", 60_000, false).await.unwrap());
    assert!(s.claim_slot("t", "fast", 1, true).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.claim_slot("t", "fast", 1, true).await.unwrap());

    s.put_state("t", "k", "v1").await.unwrap();
    s.put_state("t", "k", "v2").await.unwrap();
    assert_eq!(s.get_state("t", "k").await.unwrap().as_deref(), Some("v2"));
    assert_eq!(s.get_state("u", "k").await.unwrap(), None);

    s.save_session(
        "t",
        "s1",
        "full",
        "Deals",
        "running",
        &json!({"id": "s1", "n": 1}),
    )
    .await
    .unwrap();
    s.save_session(
        "t",
        "s1",
        "full",
        "Deals",
        "completed",
        &json!({"id": "s1", "n": 2}),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_session("t", "s1").await.unwrap(),
        Some(json!({"id": "s1", "n": 2}))
    );
    assert_eq!(
        s.list_sessions("t", Some("completed"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.list_sessions("t", Some("running"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let stat = SyncStat {
        module: "Deals".into(),
        direction: "push".into(),
        synced: 5,
        failed: 1,
        duration_ms: 40,
        api_calls: 2,
        error_code: Some("timeout".into()),
        at: 0,
    };
    s.add_stat("t", &stat).await.unwrap();
    let now = s.now_ms().await.unwrap();
    let got = s.stats_since("t", now - 60_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].synced, 5);
    assert!(got[0].at <= now && got[0].at > now - 60_000);
    assert_eq!(s.prune_stats(now + 1).await.unwrap(), 1);
}
