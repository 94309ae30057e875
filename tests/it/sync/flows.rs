//! The main flows: full pull, delta push, no echo, incremental pull,
//! webhook, conflicts, dead letters, mapping and filters, connection and
//! analytics APIs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::zoho::rec;

#[tokio::test]
async fn a_full_sync_pulls_every_zoho_record_and_a_second_one_changes_nothing() {
    let env = Env::start().await;
    let rows: Vec<_> = (0..250)
        .map(|i| rec(deal(&format!("Imported {i}"), 100.0 + i as f64)))
        .collect();
    let ids = env.sim.insert_raw("Deals", rows);
    let total = env.sim.record_count("Deals") as u64;
    assert_eq!(total, 252, "two seeded deals and ours");

    let s = env.session("full", "Deals").await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["total"], total);
    assert_eq!(s["processed"], total);
    assert_eq!(s["created"], total);
    assert_eq!(s["errors"], 0);
    assert_eq!(s["percent"], 100.0);
    // A record first seen in Zoho takes the Zoho id as its local id.
    let r = env.record("deals", &ids[7]).await.expect("pulled");
    assert_eq!(r["fields"]["Deal_Name"], "Imported 7");
    assert_eq!(r["fields"]["Amount"], 107.0);
    assert_eq!(r["zoho_id"], ids[7]);
    assert!(
        r["fields"].get("Modified_Time").is_none(),
        "bookkeeping stays out: {r}"
    );
    let (_, st) = env.get(&format!("/v1/sync/records/deals/{}", ids[7])).await;
    assert_eq!(st["status"], "synced", "{st}");

    // Pulling is not a local change: nothing was queued for Zoho.
    env.settle().await;
    let (_, jobs) = env.get("/v1/sync/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "{jobs}");

    let again = env.session("full", "Deals").await;
    assert_eq!(again["unchanged"], total, "{again}");
    assert_eq!(again["created"], 0);
    assert_eq!(again["updated"], 0);
    let r2 = env.record("deals", &ids[7]).await.expect("still there");
    assert_eq!(r2["version"], r["version"], "a second pull writes nothing");
    env.finish().await;
}

#[tokio::test]
async fn a_local_change_is_pushed_as_a_delta_and_does_not_come_back() {
    let env = Env::start().await;
    env.create("deals", "d-1", deal("Local deal", 1200.0)).await;
    eventually(10, "the deal in Zoho", || async {
        env.in_zoho("Deals", "d-1").len() == 1
    })
    .await;
    env.settle().await;
    let z = env.in_zoho("Deals", "d-1").remove(0);
    assert_eq!(z["Deal_Name"], "Local deal");
    assert_eq!(z["Amount"], 1200.0);
    let zoho_id = z["id"].as_str().expect("id").to_owned();
    let r = env.record("deals", "d-1").await.expect("local");
    assert_eq!(r["zoho_id"], zoho_id, "the record learned its Zoho id");
    // The insert went out as an upsert on the external id, automation off.
    let upserts: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|q| q.method == "POST" && q.path.ends_with("/Deals/upsert"))
        .collect();
    assert_eq!(upserts.len(), 1);
    let body: Value = serde_json::from_str(&upserts[0].body).expect("json body");
    assert_eq!(body["trigger"], json!([]));
    assert_eq!(body["duplicate_check_fields"], json!(["Synchub_Id"]));

    env.update("deals", "d-1", json!({"Amount": 1500.0})).await;
    eventually(10, "the new amount in Zoho", || async {
        env.in_zoho("Deals", "d-1")[0]["Amount"] == 1500.0
    })
    .await;
    env.settle().await;
    let puts: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|q| q.method == "PUT" && q.path.ends_with("/Deals"))
        .collect();
    assert_eq!(puts.len(), 1, "one update call");
    let body: Value = serde_json::from_str(&puts[0].body).expect("json body");
    let sent = body["data"][0].as_object().expect("record");
    let mut names: Vec<&str> = sent.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["Amount", "id"], "only the changed field: {body}");
    assert!(
        puts[0]
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("if-unmodified-since")),
        "the update is guarded"
    );

    // Our own write coming back through an incremental pull is no change.
    let version = env.record("deals", "d-1").await.expect("local")["version"].clone();
    let s = env.session("incremental", "Deals").await;
    assert_eq!(s["status"], "completed", "{s}");
    // (Without a cursor yet it reads everything: the two seeded deals are new.)
    assert_eq!(s["updated"], 0, "{s}");
    assert_eq!(s["created"], 2, "{s}");
    assert_eq!(s["unchanged"], 1, "{s}");
    assert_eq!(
        env.record("deals", "d-1").await.expect("local")["version"],
        version
    );
    let (_, jobs) = env.get("/v1/sync/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing to push back: {jobs}");
    env.finish().await;
}

#[tokio::test]
async fn a_zoho_change_is_pulled_incrementally_and_announced() {
    let env = Env::start().await;
    let ids = env.sim.insert_raw("Deals", vec![rec(deal("Remote", 10.0))]);
    env.session("full", "Deals").await;
    let mut ws = env.app.connected("alice").await;
    ws.subscribe("changes:deals").await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let zoho = env.zoho_user();
    let mut change = rec(json!({"id": ids[0], "Amount": 99.5}));
    change.insert("Stage".into(), json!("Needs Analysis"));
    let res = zoho.update("Deals", &[change], None).await.expect("update");
    assert!(res[0].outcome.is_ok());

    let s = env.session("incremental", "Deals").await;
    assert_eq!(s["updated"], 1, "{s}");
    let r = env.record("deals", &ids[0]).await.expect("local");
    assert_eq!(r["fields"]["Amount"], 99.5);
    assert_eq!(r["fields"]["Stage"], "Needs Analysis");
    // The creation by the full sync may still be on its way; then the update.
    let data = loop {
        let (_, data, _) = ws.publication().await;
        if data["version"] == 2 {
            break data;
        }
    };
    assert_eq!(data["type"], "record.changed", "{data}");
    assert_eq!(data["source"], "zoho");
    let mut fields: Vec<String> = serde_json::from_value(data["fields"].clone()).expect("names");
    fields.sort();
    assert_eq!(fields, ["Amount", "Stage"]);
    // Pulled, not changed here: nothing goes back.
    env.settle().await;
    assert_eq!(
        env.sim.count("PUT", "/Deals"),
        1,
        "only the Zoho user's update"
    );

    // A deletion in Zoho reaches synchub on the next incremental.
    zoho.delete("Deals", &[ids[0].as_str()])
        .await
        .expect("delete");
    let s = env.session("incremental", "Deals").await;
    assert_eq!(s["deleted"], 1, "{s}");
    assert!(env.record("deals", &ids[0]).await.is_none());
    env.finish().await;
}

#[tokio::test]
async fn a_zoho_notification_leads_to_a_pull_and_an_event_within_a_second() {
    // The webhook URL must name the node, known once it listens: bind a
    // port first, then start the node on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let env = Env::start_with(crate::zoho::fast_sim_config(), false, move |c| {
        c.listen = addr.to_string();
        c.sync.webhook_url = Some(format!("http://{addr}/v1/webhooks/zoho"));
    })
    .await
    .expect("sqlite");
    let ids = env.sim.insert_raw("Deals", vec![rec(deal("Watched", 1.0))]);
    env.session("full", "Deals").await;
    eventually(15, "the notification channel", || async {
        let (_, v) = env.get("/v1/zoho/connection").await;
        v["connection"]["notifications"]["channel_id"].is_string()
    })
    .await;
    let mut ws = env.app.connected("alice").await;
    ws.subscribe(&format!("record:deals:{}", ids[0])).await;

    let zoho = env.zoho_user();
    let started = Instant::now();
    zoho.update("Deals", &[rec(json!({"id": ids[0], "Amount": 77.0}))], None)
        .await
        .expect("update");
    let (_, data, _) = tokio::time::timeout(Duration::from_secs(5), ws.publication())
        .await
        .expect("a record.changed event");
    let took = started.elapsed();
    assert_eq!(data["type"], "record.changed", "{data}");
    assert_eq!(data["source"], "zoho");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        env.record("deals", &ids[0]).await.expect("local")["fields"]["Amount"],
        77.0
    );
    let (_, list) = env.get("/v1/sync/sessions?limit=5").await;
    assert!(
        list["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|s| s["kind"] == "webhook"),
        "{list}"
    );

    // A callback without the channel's token is refused and changes nothing.
    let forged = env
        .app
        .http
        .post(env.app.url("/v1/webhooks/zoho?tenant=default"))
        .json(&json!({"module": "Deals", "ids": [ids[0]], "operation": "update", "channel_id": "1", "token": "guess"}))
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status().as_u16(), 401);
    let garbage = env
        .app
        .http
        .post(env.app.url("/v1/webhooks/zoho?tenant=default"))
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(garbage.status().as_u16(), 400);
    env.finish().await;
}

#[tokio::test]
async fn the_same_field_changed_on_both_sides_goes_to_the_conflict_engine() {
    let env = Env::start_with(crate::zoho::fast_sim_config(), false, |c| {
        c.sync.workers = true;
    })
    .await
    .expect("sqlite");
    env.create("deals", "c-1", deal("Contested", 100.0)).await;
    eventually(10, "pushed", || async {
        env.in_zoho("Deals", "c-1").len() == 1
    })
    .await;
    env.settle().await;
    let zoho_id = env.in_zoho("Deals", "c-1")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Zoho's clock has whole seconds: the remote edit must be later.
    env.sim.advance_clock(Duration::from_secs(5));
    env.zoho_user()
        .update(
            "Deals",
            &[rec(
                json!({"id": zoho_id, "Amount": 300.0, "Description": "from zoho"}),
            )],
            None,
        )
        .await
        .expect("remote edit");
    env.update("deals", "c-1", json!({"Amount": 200.0})).await;
    env.settle().await;
    // The push was refused (ALREADY_MODIFIED), the record pulled and merged:
    // Description (Zoho only) arrived; Amount (both) is a conflict.
    let r = env.record("deals", "c-1").await.expect("local");
    assert_eq!(r["fields"]["Description"], "from zoho", "{r}");
    let (_, conflicts) = env.get("/v1/conflicts?entity=deals").await;
    let list = conflicts["conflicts"]
        .as_array()
        .expect("conflicts")
        .clone();
    assert_eq!(list.len(), 1, "{conflicts}");
    let c = &list[0];
    assert_eq!(c["record_id"], "c-1");
    assert_eq!(c["source"], "zoho");
    let f = &c["fields"][0];
    assert_eq!(f["field"], "Amount");
    assert_eq!(f["local"], 200.0);
    assert_eq!(f["remote"], 300.0);
    assert_eq!(f["base"], 100.0);
    // Nothing was overwritten in Zoho.
    assert_eq!(env.in_zoho("Deals", "c-1")[0]["Amount"], 300.0);
    let (_, st) = env.get("/v1/sync/records/deals/c-1").await;
    assert_eq!(st["status"], "conflict", "{st}");
    env.finish().await;
}

#[tokio::test]
async fn data_zoho_refuses_is_dead_lettered_for_review_and_can_be_retried() {
    let env = Env::start().await;
    // Deal_Name is mandatory in Zoho.
    env.create(
        "deals",
        "bad-1",
        json!({"Stage": "Qualification", "Amount": 1.0}),
    )
    .await;
    eventually(10, "a dead job", || async {
        let (_, v) = env.get("/v1/sync/jobs?status=dead").await;
        v["jobs"].as_array().is_some_and(|j| j.len() == 1)
    })
    .await;
    let (_, v) = env.get("/v1/sync/jobs?status=dead").await;
    let job = &v["jobs"][0];
    assert_eq!(job["record_id"], "bad-1");
    assert_eq!(job["error_class"], "validation", "{v}");
    let (_, st) = env.get("/v1/sync/records/deals/bad-1").await;
    assert_eq!(st["status"], "error", "{st}");
    assert!(st["error"].as_str().expect("why").contains("validation"));
    assert!(env.in_zoho("Deals", "bad-1").is_empty());

    // Fixed here, the change coalesces with nothing dead: a new job pushes it.
    env.update("deals", "bad-1", json!({"Deal_Name": "Named now"}))
        .await;
    eventually(10, "the fixed deal in Zoho", || async {
        env.in_zoho("Deals", "bad-1").len() == 1
    })
    .await;
    // The dead job can be retried (it finds nothing left to send).
    let id = job["id"].as_i64().expect("id");
    let (status, _) = env
        .post(&format!("/v1/sync/jobs/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200);
    env.settle().await;
    let (status, _) = env.post("/v1/sync/jobs/999999/retry", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(env.in_zoho("Deals", "bad-1").len(), 1, "never twice");
    env.finish().await;
}

#[tokio::test]
async fn mapping_value_maps_and_filters_change_what_crosses() {
    let env = Env::start_with(crate::zoho::fast_sim_config(), false, |c| {
        let text = r#"
[entities.deals]
only_named_fields = true
[[entities.deals.fields]]
local = "name"
zoho = "Deal_Name"
[[entities.deals.fields]]
local = "status"
zoho = "Stage"
values = { open = "Qualification", won = "Closed Won", lost = "Closed Lost" }
values_from_zoho = { "Qualification" = "open", "Needs Analysis" = "open", "Closed Won" = "won", "Closed Lost" = "lost" }
[[entities.deals.fields]]
local = "amount_cents"
zoho = "Amount"
to_zoho_formula = "amount_cents / 100"
from_zoho_formula = "round(Amount * 100)"
[[entities.deals.filters]]
direction = "to_zoho"
conditions = [{ field = "amount_cents", op = "greater_than", value = 1000 }]
"#;
        c.sync = toml::from_str(text).expect("sync config");
        fast_sync(&mut c.sync);
    })
    .await
    .expect("sqlite");
    env.create(
        "deals",
        "m-1",
        json!({"name": "Mapped", "status": "won", "amount_cents": 250050, "internal": "never"}),
    )
    .await;
    env.create(
        "deals",
        "m-2",
        json!({"name": "Too small", "status": "open", "amount_cents": 500}),
    )
    .await;
    eventually(10, "the mapped deal", || async {
        env.in_zoho("Deals", "m-1").len() == 1
    })
    .await;
    env.settle().await;
    let z = env.in_zoho("Deals", "m-1").remove(0);
    assert_eq!(z["Deal_Name"], "Mapped");
    assert_eq!(z["Stage"], "Closed Won");
    assert_eq!(z["Amount"], 2500.5);
    assert!(z.get("internal").is_none());
    assert!(
        env.in_zoho("Deals", "m-2").is_empty(),
        "the filter kept it here"
    );
    let (_, st) = env.get("/v1/sync/records/deals/m-2").await;
    assert_eq!(st["status"], "filtered", "{st}");

    // And back: a Zoho stage maps to the local status.
    let zoho_id = z["id"].as_str().expect("id").to_owned();
    env.sim.advance_clock(Duration::from_secs(2));
    env.zoho_user()
        .update(
            "Deals",
            &[rec(
                json!({"id": zoho_id, "Stage": "Needs Analysis", "Amount": 10.0}),
            )],
            None,
        )
        .await
        .expect("remote edit");
    env.session("incremental", "Deals").await;
    let r = env.record("deals", "m-1").await.expect("local");
    assert_eq!(r["fields"]["status"], "open", "{r}");
    assert_eq!(r["fields"]["amount_cents"], 1000);
    assert!(
        r["fields"].get("Stage").is_none(),
        "only named fields cross: {r}"
    );
    env.finish().await;
}

#[tokio::test]
async fn the_connection_is_kept_encrypted_and_shown_without_secrets() {
    let env = Env::start().await;
    let (status, v) = env.get("/v1/zoho/connection").await;
    assert_eq!(status, 200);
    assert_eq!(v["connection"]["source"], "config");
    assert_eq!(v["connection"]["state"], "active");

    for bad in [
        json!({"client_id": "x", "client_secret": "y"}),
        json!({"client_id": "x", "client_secret": "y", "refresh_token": "z", "data_centre": "mars"}),
        json!({"client_id": "x", "client_secret": "y", "refresh_token": "z"}),
        json!({"client_id": "x", "client_secret": "y", "refresh_token": "z", "data_centre": "eu", "extra": 1}),
    ] {
        let (status, v) = env.post("/v1/zoho/connection", bad).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_input");
    }
    let (id, secret, refresh) = env.sim.credentials().expect("credentials");
    let (status, v) = env
        .post(
            "/v1/zoho/connection",
            json!({"client_id": id, "client_secret": secret, "refresh_token": refresh,
                   "accounts_url": env.sim.base_url, "api_url": env.sim.base_url}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&refresh),
        "{text}"
    );
    assert_eq!(v["connection"]["source"], "api");
    assert_eq!(v["connection"]["encrypted_at_rest"], true);
    // A user without the admin role cannot change it.
    let r = env
        .app
        .http
        .post(env.app.url("/v1/zoho/connection"))
        .bearer_auth(token("bob"))
        .json(&json!({"client_id": "x", "client_secret": "y", "refresh_token": "z", "data_centre": "eu"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    // The new connection works.
    env.create("deals", "conn-1", deal("Through the API connection", 5.0))
        .await;
    eventually(10, "pushed", || async {
        env.in_zoho("Deals", "conn-1").len() == 1
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn health_analytics_and_metrics_report_the_sync() {
    let env = Env::start().await;
    env.sim.insert_raw(
        "Deals",
        (0..20).map(|i| rec(deal(&format!("H {i}"), 1.0))).collect(),
    );
    env.session("full", "Deals").await;
    for i in 0..5 {
        env.create("deals", &format!("h-{i}"), deal(&format!("Local {i}"), 2.0))
            .await;
    }
    env.settle().await;
    let (status, v) = env.get("/v1/analytics/health?range=1h").await;
    assert_eq!(status, 200, "{v}");
    let deals = &v["modules"]["Deals"];
    assert_eq!(deals["synced"], 22 + 5, "{v}");
    assert_eq!(deals["failed"], 0);
    assert_eq!(deals["success_rate"], 1.0);
    assert!(deals["api_calls"].as_i64().expect("calls") >= 2, "{v}");
    assert_eq!(deals["queue"]["queued"], 0);
    assert_eq!(deals["records"]["synced"], 27, "{v}");
    assert!(v["api"].get("credits_remaining").is_some());
    let (status, _) = env.get("/v1/analytics/health?range=1y").await;
    assert_eq!(status, 400);
    let metrics = env
        .app
        .http
        .get(env.app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("synchub_sync_records_total"), "{metrics}");
    assert!(metrics.contains("synchub_sync_api_calls_total"));
    env.finish().await;
}

#[tokio::test]
async fn sessions_are_announced_on_sync_sessions() {
    let env = Env::start().await;
    env.sim.insert_raw(
        "Deals",
        (0..30).map(|i| rec(deal(&format!("S {i}"), 1.0))).collect(),
    );
    let mut ws = env.app.connected("dash").await;
    ws.subscribe("sync:sessions").await;
    let s = env.session("full", "Deals").await;
    let mut kinds = vec![];
    loop {
        let (_, data, _) = tokio::time::timeout(Duration::from_secs(5), ws.publication())
            .await
            .expect("event");
        assert_eq!(data["session"]["id"], s["id"]);
        kinds.push(data["type"].as_str().expect("type").to_owned());
        if data["type"] == "session.completed" {
            assert_eq!(data["session"]["processed"], 32);
            assert_eq!(data["session"]["percent"], 100.0);
            break;
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("session.started"));
    assert!(kinds.iter().any(|k| k == "session.progress"));
    env.finish().await;
}

#[tokio::test]
async fn a_to_zoho_entity_overwrites_a_zoho_edit_once_and_does_not_loop() {
    let env = Env::start_with(crate::zoho::fast_sim_config(), false, |c| {
        c.sync.entities = toml::from_str("[deals]\ndirection = \"to_zoho\"\n").expect("entities");
    })
    .await
    .expect("sqlite");
    env.create("deals", "tz-1", deal("One way", 1.0)).await;
    eventually(10, "pushed", || async {
        env.in_zoho("Deals", "tz-1").len() == 1
    })
    .await;
    env.settle().await;
    let zoho_id = env.in_zoho("Deals", "tz-1")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    env.sim.advance_clock(Duration::from_secs(2));
    env.zoho_user()
        .update("Deals", &[rec(json!({"id": zoho_id, "Amount": 9.0}))], None)
        .await
        .expect("remote edit");
    env.update("deals", "tz-1", json!({"Amount": 2.0})).await;
    env.settle().await;
    // Refused once (ALREADY_MODIFIED), read, not taken (to_zoho), pushed again.
    assert_eq!(env.in_zoho("Deals", "tz-1")[0]["Amount"], 2.0);
    assert_eq!(
        env.record("deals", "tz-1").await.expect("local")["fields"]["Amount"],
        2.0
    );
    let puts = env.sim.count("PUT", "/Deals");
    assert!(
        (2..=3).contains(&puts),
        "{puts} updates: the guard must not loop"
    );
    let (_, dead) = env.get("/v1/sync/jobs?status=dead").await;
    assert_eq!(dead["jobs"], json!([]), "{dead}");
    env.finish().await;
}
