//! Offline queues and conflicts through the front door: `offline.push` and
//! `offline.pull` over the protocol, `/v1/offline/*` and `/v1/conflicts`
//! over HTTP, on SQLite and PostgreSQL. The configured rules for `deals`
//! are [`RULES`]; every expected outcome below follows from them.

use serde_json::{Value, json};

use crate::records::{admin_token, event, ok, rpc};
use crate::support::*;

/// The rules every scenario runs with (the TOML shape of `[conflicts.deals]`).
pub(crate) const RULES: &str = r#"
[conflicts.deals]
strategy = "merge"
fallback = "manual"
critical_fields = ["Amount"]

[conflicts.deals.fields]
Stage = "remote_wins"
Owner = "local_wins"
"#;

pub(crate) fn rules() -> synchub::domain::conflict::ConflictRules {
    #[derive(serde::Deserialize)]
    struct File {
        conflicts: synchub::domain::conflict::ConflictRules,
    }
    toml::from_str::<File>(RULES)
        .expect("rules parse")
        .conflicts
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (app, schema) = crate::records::app_with(false, |c| c.conflicts = super::rules())
                        .await
                        .expect("sqlite app");
                    super::$name(&app).await;
                    crate::records::finish(app, schema).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((app, schema)) = crate::records::app_with(true, |c| c.conflicts = super::rules()).await
                    else { return };
                    super::$name(&app).await;
                    crate::records::finish(app, schema).await;
                }
            )*
        }
    };
}

on_both!(
    the_same_batch_pushed_twice_gives_identical_results_all_duplicate_the_second_time,
    a_gap_is_refused_and_a_permanently_bad_mutation_is_rejected_without_sticking_the_client,
    an_online_editor_with_a_stale_base_gets_the_same_merge,
    conflicts_are_listed_announced_and_resolved_by_an_admin_only,
    pull_returns_changes_after_the_cursor_with_the_clients_last_seq,
    push_and_pull_work_over_http_for_a_user,
);

/// Creates a deal as `user`; returns its version.
async fn seed(c: &mut WsClient, id: &str, fields: Value) -> i64 {
    let r = ok(
        c,
        "record.update",
        json!({"entity": "deals", "id": id, "base_version": 0, "fields": fields}),
    )
    .await;
    r["record"]["version"].as_i64().expect("version")
}

async fn edit(c: &mut WsClient, id: &str, base: i64, fields: Value) -> i64 {
    let r = ok(
        c,
        "record.update",
        json!({"entity": "deals", "id": id, "base_version": base, "fields": fields}),
    )
    .await;
    r["record"]["version"].as_i64().expect("version")
}

fn mutation(seq: i64, id: &str, base_version: i64, base: Value, fields: Value) -> Value {
    json!({"seq": seq, "op": "update", "entity": "deals", "id": id,
           "base_version": base_version, "base": base, "fields": fields,
           "at": "2026-01-01T00:00:00Z"})
}

async fn the_same_batch_pushed_twice_gives_identical_results_all_duplicate_the_second_time(
    app: &TestApp,
) {
    let (a, b) = (unique("a"), unique("b"));
    let mut bob = app.connected("bob").await;
    seed(
        &mut bob,
        &a,
        json!({"Amount": 100, "Stage": "new", "City": "Oslo"}),
    )
    .await;
    seed(&mut bob, &b, json!({"Amount": 100})).await;
    edit(&mut bob, &a, 1, json!({"Stage": "won", "Amount": 150})).await;
    let mut phone = app.connected("ann").await;
    let fresh = unique("n");
    let batch = json!({"client_id": "ann-phone", "mutations": [
        // A new record.
        mutation(1, &fresh, 0, json!({}), json!({"Amount": 1})),
        // Stale, other field: merged silently.
        mutation(2, &a, 1, json!({"City": "Oslo"}), json!({"City": "Bergen"})),
        // Stale, same field both sides: Stage is remote_wins -> merged.
        mutation(3, &a, 1, json!({"Stage": "new"}), json!({"Stage": "lost"})),
        // Amount changed on both sides: merge falls back to manual -> conflict.
        mutation(4, &a, 1, json!({"Amount": 100}), json!({"Amount": 90})),
        // An entity that does not exist can never apply.
        {"seq": 5, "entity": "widgets", "id": "w", "base_version": 0, "fields": {"x": 1}},
        // Not stale at all.
        mutation(6, &b, 1, json!({"Amount": 100}), json!({"Amount": 101})),
    ]});
    let first = ok(&mut phone, "offline.push", batch.clone()).await;
    let statuses: Vec<&str> = first["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        [
            "applied", "merged", "merged", "conflict", "rejected", "applied"
        ]
    );
    assert_eq!(first["last_seq"], 6);
    let r = &first["results"];
    assert_eq!(r[1]["record"]["fields"]["City"], "Bergen");
    assert_eq!(
        r[2]["record"]["fields"]["Stage"], "won",
        "remote_wins kept won"
    );
    assert_eq!(r[2]["conflict"]["status"], "resolved");
    assert_eq!(r[3]["conflict"]["status"], "open");
    assert_eq!(r[3]["conflict"]["severity"], "critical");
    assert_eq!(
        r[3]["record"]["fields"]["Amount"], 150,
        "manual overwrites nothing"
    );
    assert_eq!(r[4]["error"]["code"], "unknown_entity");
    let second = ok(&mut phone, "offline.push", batch).await;
    assert_eq!(second["last_seq"], 6);
    let again = second["results"].as_array().expect("results");
    assert_eq!(again.len(), 6);
    for (before, after) in first["results"]
        .as_array()
        .expect("results")
        .iter()
        .zip(again)
    {
        let mut expected = before.clone();
        expected["original_status"] = before["status"].clone();
        expected["status"] = json!("duplicate");
        assert_eq!(after, &expected);
    }
    // Nothing was applied twice.
    let got = ok(&mut bob, "record.get", json!({"entity": "deals", "id": a})).await;
    assert_eq!(
        got["record"]["version"], 3,
        "City merged; Stage and Amount wrote nothing"
    );
}

async fn a_gap_is_refused_and_a_permanently_bad_mutation_is_rejected_without_sticking_the_client(
    app: &TestApp,
) {
    let id = unique("g");
    let mut phone = app.connected("ann").await;
    let r = ok(
        &mut phone,
        "offline.push",
        json!({"client_id": "p", "mutations": [
            mutation(1, &id, 0, json!({}), json!({"n": 1})),
            mutation(3, &id, 1, json!({}), json!({"n": 3})),
        ]}),
    )
    .await;
    assert_eq!(r["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(r["gap"], json!({"expected": 2, "got": 3}));
    assert_eq!(r["last_seq"], 1);
    // Fields that are not an object can never apply: rejected, seq advances.
    let r = ok(
        &mut phone,
        "offline.push",
        json!({"client_id": "p", "mutations": [
            {"seq": 2, "entity": "deals", "id": id, "base_version": 1, "fields": "n=2"},
            mutation(3, &id, 1, json!({}), json!({"n": 3})),
        ]}),
    )
    .await;
    assert_eq!(r["results"][0]["status"], "rejected");
    assert_eq!(r["results"][0]["error"]["code"], "invalid_input");
    assert_eq!(r["results"][1]["status"], "applied");
    assert_eq!(r["last_seq"], 3);
    // A batch with an unnumbered mutation is refused whole.
    let (code, err) = rpc(
        &mut phone,
        "offline.push",
        json!({"client_id": "p", "mutations": [{"entity": "deals"}]}),
    )
    .await
    .expect_err("no seq");
    assert_eq!(code, 400);
    assert_eq!(err["code"], "invalid_input");
    // Another user cannot push into ann's queue.
    let mut eve = app.connected("eve").await;
    let (code, _) = rpc(
        &mut eve,
        "offline.push",
        json!({"client_id": "p", "mutations": [mutation(4, &id, 2, json!({}), json!({"n": 4}))]}),
    )
    .await
    .expect_err("foreign queue");
    assert_eq!(code, 400);
}

async fn an_online_editor_with_a_stale_base_gets_the_same_merge(app: &TestApp) {
    let id = unique("s");
    let mut bob = app.connected("bob").await;
    let mut ann = app.connected("ann").await;
    seed(
        &mut bob,
        &id,
        json!({"Amount": 10, "City": "Oslo", "Owner": "bob"}),
    )
    .await;
    edit(&mut bob, &id, 1, json!({"Amount": 11, "Owner": "carl"})).await;
    // Ann edits from version 1: City is hers alone, Owner is local_wins.
    let r = ok(
        &mut ann,
        "record.update",
        json!({"entity": "deals", "id": id, "base_version": 1, "fields": {"City": "Bergen", "Owner": "ann"}}),
    )
    .await;
    assert_eq!(r["status"], "merged");
    assert_eq!(
        r["record"]["fields"],
        json!({"Amount": 11, "City": "Bergen", "Owner": "ann"})
    );
    assert_eq!(r["conflict"]["fields"][0]["field"], "Owner");
    assert_eq!(r["conflict"]["fields"][0]["resolved_by"], "local_wins");
    // Amount on both sides: queued, and the error carries the conflict.
    let (code, err) = rpc(
        &mut ann,
        "record.update",
        json!({"entity": "deals", "id": id, "base_version": 1, "fields": {"Amount": 12}}),
    )
    .await
    .expect_err("conflict");
    assert_eq!(code, 409);
    assert_eq!(err["code"], "version_conflict");
    assert_eq!(err["current"]["fields"]["Amount"], 11);
    assert_eq!(err["conflict"]["status"], "open");
    assert_eq!(err["conflict"]["fields"][0]["base"], 10);
}

async fn conflicts_are_listed_announced_and_resolved_by_an_admin_only(app: &TestApp) {
    let id = unique("c");
    let mut watcher = app.connected("watcher").await;
    watcher.subscribe("conflicts").await;
    watcher.subscribe(&format!("record:deals:{id}")).await;
    let mut bob = app.connected("bob").await;
    seed(&mut bob, &id, json!({"Amount": 100})).await;
    edit(&mut bob, &id, 1, json!({"Amount": 200})).await;
    let mut phone = app.connected("ann").await;
    let r = ok(
        &mut phone,
        "offline.push",
        json!({"client_id": "c", "mutations": [mutation(1, &id, 1, json!({"Amount": 100}), json!({"Amount": 50}))]}),
    )
    .await;
    let cid = r["results"][0]["conflict"]["id"]
        .as_i64()
        .expect("conflict id");
    let detected = event(&mut watcher, "conflicts", "conflict.detected").await;
    assert_eq!(detected["conflict"]["id"], cid);
    event(
        &mut watcher,
        &format!("record:deals:{id}"),
        "conflict.detected",
    )
    .await;

    let bearer = format!("Bearer {}", token("ann"));
    let list: Value = app
        .http
        .get(app.url("/v1/conflicts?status=open&entity=deals&limit=500"))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let found = list["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .find(|c| c["id"] == cid)
        .cloned()
        .expect("listed");
    assert_eq!(found["local"]["Amount"], 50);
    assert_eq!(found["remote"]["Amount"], 200);
    assert_eq!(found["base"]["Amount"], 100);
    assert_eq!(found["client_id"], "c");
    assert_eq!(found["seq"], 1);

    let resolve = |auth: String, body: Value| {
        app.http
            .post(app.url(&format!("/v1/conflicts/{cid}/resolve")))
            .header("Authorization", auth)
            .json(&body)
            .send()
    };
    let r = resolve(bearer.clone(), json!({"resolution": "use_local"}))
        .await
        .expect("resolve");
    assert_eq!(r.status(), 403);
    let admin = format!("Bearer {}", admin_token("boss"));
    let r = resolve(
        admin.clone(),
        json!({"resolution": "merge", "fields": {"City": "x"}}),
    )
    .await
    .expect("resolve");
    assert_eq!(r.status(), 400, "only the conflict's open fields");
    let r = resolve(admin.clone(), json!({"resolution": "use_local"}))
        .await
        .expect("resolve");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["record"]["fields"]["Amount"], 50);
    assert_eq!(body["conflict"]["status"], "resolved");
    assert_eq!(body["conflict"]["history"][0]["by"], "boss");
    let r = resolve(admin, json!({"resolution": "use_remote"}))
        .await
        .expect("resolve");
    assert_eq!(r.status(), 409);
    let resolved = event(&mut watcher, "conflicts", "conflict.resolved").await;
    assert_eq!(resolved["conflict"]["id"], cid);
}

async fn pull_returns_changes_after_the_cursor_with_the_clients_last_seq(app: &TestApp) {
    let mut phone = app.connected("ann").await;
    let start = ok(&mut phone, "offline.pull", json!({"limit": 1000})).await;
    let mut cursor = start["cursor"].as_i64().expect("cursor");
    let mut bob = app.connected("bob").await;
    let ids: Vec<String> = (0..5).map(|_| unique("u")).collect();
    for id in &ids {
        seed(&mut bob, id, json!({"Amount": 1})).await;
    }
    ok(
        &mut phone,
        "offline.push",
        json!({"client_id": "pl", "mutations": [mutation(1, &ids[0], 1, json!({}), json!({"Amount": 2}))]}),
    )
    .await;
    let mut seen = Vec::new();
    loop {
        let page = ok(
            &mut phone,
            "offline.pull",
            json!({"client_id": "pl", "cursor": cursor, "entities": ["deals"], "limit": 2}),
        )
        .await;
        assert_eq!(page["last_seq"], 1);
        for c in page["changes"].as_array().expect("changes") {
            seen.push(c["record"]["id"].as_str().expect("id").to_owned());
        }
        cursor = page["cursor"].as_i64().expect("cursor");
        if page["more"] == false {
            break;
        }
    }
    let mut expected: Vec<String> = ids[1..].to_vec();
    expected.push(ids[0].clone());
    assert_eq!(seen, expected, "each record once, in change order");
    let (code, _) = rpc(&mut phone, "offline.pull", json!({"entities": ["widgets"]}))
        .await
        .expect_err("unknown entity");
    assert_eq!(code, 422);
}

async fn push_and_pull_work_over_http_for_a_user(app: &TestApp) {
    let id = unique("h");
    let bearer = format!("Bearer {}", token("ann"));
    let r: Value = app
        .http
        .post(app.url("/v1/offline/push"))
        .header("Authorization", &bearer)
        .json(&json!({"client_id": "web", "mutations": [mutation(1, &id, 0, json!({}), json!({"Amount": 1}))]}))
        .send()
        .await
        .expect("push")
        .json()
        .await
        .expect("json");
    assert_eq!(r["results"][0]["status"], "applied");
    let r: Value = app
        .http
        .get(app.url("/v1/offline/pull?client_id=web&entities=deals&limit=1000"))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("pull")
        .json()
        .await
        .expect("json");
    assert_eq!(r["last_seq"], 1);
    assert!(
        r["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .any(|c| c["record"]["id"] == id.as_str())
    );
    let r = app
        .http
        .post(app.url("/v1/offline/push"))
        .json(&json!({"client_id": "web", "mutations": []}))
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), 401);
}
