//! Records and edit locks through the front door: RPC over the protocol,
//! `/v1/records` over HTTP, events on `changes:<entity>` and
//! `record:<entity>:<id>`, expiry, the grace period after a holder's last
//! connection closes, reconnects, admin force release, and bad input.
//! (Leases are judged by the database clock, so these use short TTLs and
//! grace periods rather than paused time.)

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use synchub::auth::{ConnectClaims, now_unix};
use synchub::protocol::{Command, Encoding, RpcRequest};

use crate::support::*;

/// `SYNCHUB_TEST_DATABASE_URL`, else the local test database.
pub(crate) fn pg_url() -> String {
    std::env::var("SYNCHUB_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A node whose holders get a one-second grace period, on SQLite (its data
/// dir) or on PostgreSQL (a fresh schema, dropped by `finish`).
pub(crate) async fn app(postgres: bool) -> Option<(TestApp, Option<String>)> {
    app_with(postgres, |_| {}).await
}

/// [`app`] with a further configuration tweak.
pub(crate) async fn app_with(
    postgres: bool,
    tweak: impl FnOnce(&mut synchub::config::Config),
) -> Option<(TestApp, Option<String>)> {
    let mut url = None;
    let mut schema = None;
    if postgres {
        let admin =
            match tokio::time::timeout(Duration::from_secs(3), sqlx::PgPool::connect(&pg_url()))
                .await
            {
                Ok(Ok(p)) => p,
                other => {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timed out".into(),
                        Ok(Ok(_)) => unreachable!(),
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
        let name = unique("it");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin)
            .await
            .expect("create schema");
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        url = Some(format!("{base}{sep}options=-c%20search_path%3D{name}"));
        schema = Some(name);
    }
    let app = TestApp::spawn_with(move |c| {
        c.records.lock_grace_period = Duration::from_secs(1);
        c.records.node_heartbeat = Duration::from_millis(200);
        c.records.node_ttl = Duration::from_secs(2);
        c.database_url = url.map(synchub::config::Secret::new);
        tweak(c);
    })
    .await;
    Some((app, schema))
}

pub(crate) async fn finish(app: TestApp, schema: Option<String>) {
    let _ = app.stop().await;
    finish_schema(schema).await;
}

pub(crate) async fn finish_schema(schema: Option<String>) {
    if let Some(name) = schema
        && let Ok(admin) = sqlx::PgPool::connect(&pg_url()).await
    {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
            .execute(&admin)
            .await;
    }
}

/// Each scenario runs on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (app, schema) = super::app(false).await.expect("sqlite app");
                    super::$name(&app).await;
                    super::finish(app, schema).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((app, schema)) = super::app(true).await else { return };
                    super::$name(&app).await;
                    super::finish(app, schema).await;
                }
            )*
        }
    };
}

on_both!(
    a_save_is_announced_on_the_entity_and_record_channels_after_commit,
    a_stale_base_version_answers_a_conflict_with_the_current_record,
    a_second_editor_sees_the_lock_and_is_denied_with_the_holder,
    an_expired_lease_is_announced_within_a_second,
    a_lock_is_released_after_the_grace_period_when_its_holder_leaves,
    a_holder_who_reconnects_within_the_grace_period_keeps_the_lock,
    only_an_admin_may_force_release_or_take_over,
    drafts_are_kept_per_user_and_record,
    bad_input_gets_a_clear_error_and_writes_nothing,
    backends_and_users_use_the_same_service_over_http,
    twenty_clients_racing_for_one_lock_leave_one_holder,
);

pub(crate) fn admin_token(user: &str) -> String {
    token_with(ConnectClaims {
        sub: user.into(),
        exp: Some(now_unix() + 3600),
        roles: vec!["admin".into()],
        ..Default::default()
    })
}

/// An RPC call: the result data, or (code, message as JSON).
pub(crate) async fn rpc(
    c: &mut WsClient,
    method: &str,
    data: Value,
) -> Result<Value, (u32, Value)> {
    let r = c
        .call(Command {
            rpc: Some(RpcRequest {
                method: method.into(),
                data: Bytes::from(data.to_string()),
            }),
            ..Default::default()
        })
        .await;
    match (r.rpc, r.error) {
        (Some(ok), None) => Ok(serde_json::from_slice(&ok.data).expect("rpc json")),
        (_, Some(e)) => Err((
            e.code,
            serde_json::from_str(&e.message).unwrap_or(Value::String(e.message)),
        )),
        _ => panic!("rpc {method}: neither result nor error"),
    }
}

pub(crate) async fn ok(c: &mut WsClient, method: &str, data: Value) -> Value {
    rpc(c, method, data)
        .await
        .unwrap_or_else(|e| panic!("{method} failed: {e:?}"))
}

/// The next publication of `kind` on `channel`, skipping others.
pub(crate) async fn event(c: &mut WsClient, channel: &str, kind: &str) -> Value {
    loop {
        let p = c.push().await;
        if p.channel != channel {
            continue;
        }
        let Some(publication) = p.r#pub else { continue };
        let v: Value = serde_json::from_slice(&publication.data).expect("json event");
        if v["type"] == kind {
            return v;
        }
    }
}

fn id() -> String {
    unique("r")
}

async fn a_save_is_announced_on_the_entity_and_record_channels_after_commit(app: &TestApp) {
    let rid = id();
    let mut viewer = app.connected("viewer").await;
    viewer.subscribe("changes:deals").await;
    viewer.subscribe(&format!("record:deals:{rid}")).await;
    let mut editor = app.connected("ann").await;
    let r = ok(
        &mut editor,
        "record.update",
        json!({"entity": "deals", "id": rid, "base_version": 0, "fields": {"Amount": 5, "Stage": "new"}}),
    )
    .await;
    assert_eq!(r["record"]["version"], 1);
    assert_eq!(r["record"]["fields"]["Stage"], "new");
    for channel in ["changes:deals".to_owned(), format!("record:deals:{rid}")] {
        let e = event(&mut viewer, &channel, "record.changed").await;
        assert_eq!(e["entity"], "deals");
        assert_eq!(e["id"], rid.as_str());
        assert_eq!(e["version"], 1);
        assert_eq!(e["fields"], json!(["Amount", "Stage"]));
        assert_eq!(e["source"], "local");
        assert_eq!(e["by"], "ann");
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
    }
    let got = ok(
        &mut viewer,
        "record.get",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    assert_eq!(got["record"]["version"], 1);
    assert_eq!(got["record"]["updated_by"], "ann");
}

async fn a_stale_base_version_answers_a_conflict_with_the_current_record(app: &TestApp) {
    let rid = id();
    let mut c = app.connected("ann").await;
    let save = |base: i64, v: i64| json!({"entity": "deals", "id": rid, "base_version": base, "fields": {"Amount": v}});
    ok(&mut c, "record.update", save(0, 1)).await;
    ok(&mut c, "record.update", save(1, 2)).await;
    let (code, err) = rpc(&mut c, "record.update", save(1, 3)).await.unwrap_err();
    assert_eq!(code, 409);
    assert_eq!(err["code"], "version_conflict");
    assert_eq!(err["base_version"], 1);
    assert_eq!(err["current"]["version"], 2);
    assert_eq!(err["current"]["fields"]["Amount"], 2);
}

async fn a_second_editor_sees_the_lock_and_is_denied_with_the_holder(app: &TestApp) {
    let rid = id();
    let channel = format!("record:deals:{rid}");
    let mut a = app.connected("ann").await;
    let mut b = app.connected("bob").await;
    b.subscribe(&channel).await;
    let mine = ok(
        &mut a,
        "lock.acquire",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    assert_eq!(mine["acquired"], true);
    assert_eq!(mine["lock"]["holder"], "ann");
    let token = mine["lock"]["token"].as_i64().expect("numeric token");
    let e = event(&mut b, &channel, "lock.acquired").await;
    assert_eq!(e["lock"]["holder"], "ann");
    assert!(
        e["lock"].get("token").is_none(),
        "the token stays with its holder"
    );
    let theirs = ok(
        &mut b,
        "lock.acquire",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    assert_eq!(theirs["acquired"], false);
    assert_eq!(theirs["lock"]["holder"], "ann");
    let status = ok(&mut b, "lock.status", json!({"entity": "deals", "id": rid})).await;
    assert_eq!(status["lock"]["holder"], "ann");
    // Bob cannot save past Ann's lock; Ann saves with her token.
    let (code, err) = rpc(
        &mut b,
        "record.update",
        json!({"entity": "deals", "id": rid, "base_version": 0, "fields": {"x": 1}}),
    )
    .await
    .unwrap_err();
    assert_eq!((code, err["code"].as_str()), (423, Some("lock_held")));
    assert_eq!(err["lock"]["holder"], "ann");
    ok(
        &mut a,
        "record.update",
        json!({"entity": "deals", "id": rid, "base_version": 0, "fields": {"x": 1}, "lock_token": token}),
    )
    .await;
    let renewed = ok(
        &mut a,
        "lock.renew",
        json!({"entity": "deals", "id": rid, "token": token}),
    )
    .await;
    assert_eq!(renewed["lock"]["token"], token);
    event(&mut b, &channel, "lock.renewed").await;
    // Bob cannot use Ann's token (epochs are guessable integers).
    let (code, _) = rpc(
        &mut b,
        "lock.renew",
        json!({"entity": "deals", "id": rid, "token": token}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 410);
    let not_his = ok(
        &mut b,
        "lock.release",
        json!({"entity": "deals", "id": rid, "token": token}),
    )
    .await;
    assert_eq!(not_his["released"], false);
    let released = ok(
        &mut a,
        "lock.release",
        json!({"entity": "deals", "id": rid, "token": token}),
    )
    .await;
    assert_eq!(released["released"], true);
    let e = event(&mut b, &channel, "lock.released").await;
    assert_eq!(e["reason"], "released");
    let status = ok(&mut b, "lock.status", json!({"entity": "deals", "id": rid})).await;
    assert_eq!(status["lock"], Value::Null);
    let (code, _) = rpc(
        &mut a,
        "lock.renew",
        json!({"entity": "deals", "id": rid, "token": token}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 410);
}

async fn an_expired_lease_is_announced_within_a_second(app: &TestApp) {
    let rid = id();
    let channel = format!("record:deals:{rid}");
    let mut viewer = app.connected("viewer").await;
    viewer.subscribe(&channel).await;
    let mut a = app.connected("ann").await;
    let started = Instant::now();
    ok(
        &mut a,
        "lock.acquire",
        json!({"entity": "deals", "id": rid, "ttl_ms": 1000}),
    )
    .await;
    let e = event(&mut viewer, &channel, "lock.expired").await;
    let after = started.elapsed();
    assert_eq!(e["lock"]["holder"], "ann");
    assert!(
        after >= Duration::from_millis(900),
        "expired early: {after:?}"
    );
    assert!(
        after < Duration::from_millis(2000),
        "expiry late: {after:?}"
    );
}

async fn a_lock_is_released_after_the_grace_period_when_its_holder_leaves(app: &TestApp) {
    let rid = id();
    let channel = format!("record:deals:{rid}");
    let mut b = app.connected("bob").await;
    b.subscribe(&channel).await;
    let mut a = app.connected("ann").await;
    ok(
        &mut a,
        "lock.acquire",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    let left = Instant::now();
    a.drop_transport();
    let e = event(&mut b, &channel, "lock.released").await;
    assert_eq!(e["reason"], "disconnected");
    assert_eq!(e["lock"]["holder"], "ann");
    let after = left.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "released early: {after:?}"
    );
    let got = ok(
        &mut b,
        "lock.acquire",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    assert_eq!(got["acquired"], true);
}

async fn a_holder_who_reconnects_within_the_grace_period_keeps_the_lock(app: &TestApp) {
    let rid = id();
    let mut a = app.connected("ann").await;
    let lock = ok(
        &mut a,
        "lock.acquire",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    let token = lock["lock"]["token"].as_i64().unwrap();
    a.drop_transport();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut a = app.connected("ann").await;
    // Well past the one-second grace period.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let status = ok(&mut a, "lock.status", json!({"entity": "deals", "id": rid})).await;
    assert_eq!(status["lock"]["holder"], "ann");
    assert_eq!(
        status["lock"]["token"], token,
        "the holder learns its token back"
    );
    ok(
        &mut a,
        "lock.renew",
        json!({"entity": "deals", "id": rid, "token": token}),
    )
    .await;
}

async fn only_an_admin_may_force_release_or_take_over(app: &TestApp) {
    let rid = id();
    let channel = format!("record:deals:{rid}");
    let mut a = app.connected("ann").await;
    a.subscribe(&channel).await;
    let lock = ok(
        &mut a,
        "lock.acquire",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    let token = lock["lock"]["token"].as_i64().unwrap();
    let mut b = app.connected("bob").await;
    let (code, err) = rpc(
        &mut b,
        "lock.force_release",
        json!({"entity": "deals", "id": rid}),
    )
    .await
    .unwrap_err();
    assert_eq!((code, err["code"].as_str()), (403, Some("forbidden")));
    let (code, _) = rpc(
        &mut b,
        "lock.acquire",
        json!({"entity": "deals", "id": rid, "takeover": true}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 403);

    let mut root = app.client(Encoding::Json).await;
    root.connect(&admin_token("root")).await;
    let taken = ok(
        &mut root,
        "lock.acquire",
        json!({"entity": "deals", "id": rid, "takeover": true}),
    )
    .await;
    assert_eq!(taken["acquired"], true);
    assert!(taken["lock"]["token"].as_i64().unwrap() > token);
    let e = event(&mut a, &channel, "lock.taken_over").await;
    assert_eq!(e["previous_holder"], "ann");
    assert_eq!(e["lock"]["holder"], "root");
    // Ann's save after the takeover carries her old epoch: refused.
    let (code, err) = rpc(
        &mut a,
        "record.update",
        json!({"entity": "deals", "id": rid, "base_version": 0, "fields": {"x": 1}, "lock_token": token}),
    )
    .await
    .unwrap_err();
    assert_eq!((code, err["code"].as_str()), (410, Some("lock_lost")));
    assert_eq!(err["lock"]["holder"], "root");
    let r = ok(
        &mut root,
        "lock.force_release",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    assert_eq!(r["released"], true);
    let e = event(&mut a, &channel, "lock.released").await;
    assert_eq!(e["reason"], "forced");
    assert_eq!(e["by"], "root");
    let r = ok(
        &mut root,
        "lock.force_release",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    assert_eq!(r["released"], false);
}

async fn drafts_are_kept_per_user_and_record(app: &TestApp) {
    let rid = id();
    let mut a = app.connected("ann").await;
    let empty = ok(&mut a, "draft.get", json!({"entity": "deals", "id": rid})).await;
    assert_eq!(empty["draft"], Value::Null);
    ok(
        &mut a,
        "draft.save",
        json!({"entity": "deals", "id": rid, "fields": {"Stage": "won"}}),
    )
    .await;
    let d = ok(&mut a, "draft.get", json!({"entity": "deals", "id": rid})).await;
    assert_eq!(d["draft"]["fields"]["Stage"], "won");
    let mut b = app.connected("bob").await;
    let d = ok(&mut b, "draft.get", json!({"entity": "deals", "id": rid})).await;
    assert_eq!(d["draft"], Value::Null);
}

async fn bad_input_gets_a_clear_error_and_writes_nothing(app: &TestApp) {
    let rid = id();
    let mut c = app.connected("ann").await;
    let cases = [
        (
            json!({"entity": "widgets", "id": rid, "base_version": 0, "fields": {"a": 1}}),
            422,
            "unknown_entity",
        ),
        (
            json!({"entity": "deals", "id": "x".repeat(200), "base_version": 0, "fields": {"a": 1}}),
            400,
            "invalid_input",
        ),
        (
            json!({"entity": "deals", "id": "a:b", "base_version": 0, "fields": {"a": 1}}),
            400,
            "invalid_input",
        ),
        (
            json!({"entity": "deals", "id": rid, "base_version": 0, "fields": [1, 2]}),
            400,
            "invalid_input",
        ),
        (
            json!({"entity": "deals", "id": rid, "base_version": 0, "fields": "a=1"}),
            400,
            "invalid_input",
        ),
        (
            json!({"entity": "deals", "id": rid, "base_version": "0", "fields": {"a": 1}}),
            400,
            "invalid_input",
        ),
        (
            json!({"entity": "deals", "id": rid, "fields": {"a": 1}}),
            400,
            "invalid_input",
        ),
        (json!([1, 2, 3]), 400, "invalid_input"),
    ];
    for (data, want_code, want) in cases {
        let (code, err) = rpc(&mut c, "record.update", data.clone())
            .await
            .expect_err("refused");
        assert_eq!(code, want_code, "{data}");
        assert_eq!(err["code"], want, "{data}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    let (code, _) = rpc(
        &mut c,
        "lock.acquire",
        json!({"entity": "deals", "id": rid, "ttl_ms": 10}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 400);
    let (code, _) = rpc(&mut c, "record.get", json!({"entity": "deals", "id": rid}))
        .await
        .unwrap_err();
    assert_eq!(code, 404, "nothing was written");
    let status = ok(&mut c, "lock.status", json!({"entity": "deals", "id": rid})).await;
    assert_eq!(status["lock"], Value::Null);

    // The same rules over HTTP.
    let http = |path: &str| app.url(&format!("/v1/records/{path}"));
    let r = app
        .http
        .post(http("widgets"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"fields": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_entity"
    );
    let r = app
        .http
        .post(http("deals"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"id": rid, "fields": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_input"
    );
    let r = app
        .http
        .patch(http(&format!("deals/{rid}")))
        .header("X-API-Key", API_KEY)
        .header("If-Match", "seven")
        .json(&json!({"fields": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .get(http(&format!("deals/{rid}")))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing was written over HTTP either");
}

async fn backends_and_users_use_the_same_service_over_http(app: &TestApp) {
    let rid = id();
    let url = |path: &str| app.url(&format!("/v1/records/{path}"));
    let mut viewer = app.connected("viewer").await;
    viewer.subscribe("changes:contacts").await;

    let r = app
        .http
        .get(url(&format!("contacts/{rid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unauthorized"
    );

    let r = app
        .http
        .post(url("contacts"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"id": rid, "fields": {"Email": "a@example.com"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let e = event(&mut viewer, "changes:contacts", "record.changed").await;
    assert_eq!(e["by"], "api");
    let r = app
        .http
        .post(url("contacts"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"id": rid, "fields": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "already_exists"
    );

    // A user reads with a bearer token; the ETag is the version.
    let bearer = format!("Bearer {}", token("ann"));
    let r = app
        .http
        .get(url(&format!("contacts/{rid}")))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["record"]["fields"]["Email"], "a@example.com");

    // PATCH needs If-Match; a stale one is a conflict with the current record.
    let patch = |if_match: Option<&str>, fields: Value| {
        let mut req = app
            .http
            .patch(url(&format!("contacts/{rid}")))
            .header("Authorization", &bearer)
            .json(&json!({ "fields": fields }));
        if let Some(v) = if_match {
            req = req.header("If-Match", v);
        }
        req.send()
    };
    let r = patch(None, json!({"Phone": "1"})).await.unwrap();
    assert_eq!(r.status(), 428);
    let r = patch(Some("1"), json!({"Phone": "1"})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["record"]["version"], 2);
    let r = patch(Some("\"1\""), json!({"Phone": "2"})).await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "version_conflict");
    assert_eq!(body["error"]["current"]["version"], 2);
    assert_eq!(body["error"]["current"]["fields"]["Phone"], "1");

    // Lock routes: a user takes the lock; the backend sees it; the user releases.
    let lock_url = url(&format!("contacts/{rid}/lock"));
    let r: Value = app
        .http
        .post(&lock_url)
        .header("Authorization", &bearer)
        .json(&json!({"ttl_ms": 60000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["acquired"], true);
    let token = r["lock"]["token"].as_i64().unwrap();
    let r: Value = app
        .http
        .get(&lock_url)
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["lock"]["holder"], "ann");
    let r = app
        .http
        .put(&lock_url)
        .header("Authorization", &bearer)
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let other = format!("Bearer {}", crate::support::token("bob"));
    let r = app
        .http
        .delete(format!("{lock_url}?force=true"))
        .header("Authorization", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r: Value = app
        .http
        .delete(format!("{lock_url}?token={token}"))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["released"], true);

    // Another tenant's key does not see the record.
    let r = app
        .http
        .get(url(&format!("contacts/{rid}")))
        .header("X-API-Key", OTHER_TENANT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = app
        .http
        .delete(url(&format!("contacts/{rid}")))
        .header("X-API-Key", API_KEY)
        .header("If-Match", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = event(&mut viewer, "changes:contacts", "record.deleted").await;
    assert_eq!(e["id"], rid.as_str());
    let r = app
        .http
        .get(url(&format!("contacts/{rid}")))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

async fn twenty_clients_racing_for_one_lock_leave_one_holder(app: &TestApp) {
    let rid = id();
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(app.connected(&format!("user{i}")).await);
    }
    let racers = clients.into_iter().map(|mut c| {
        let rid = rid.clone();
        async move {
            ok(
                &mut c,
                "lock.acquire",
                json!({"entity": "deals", "id": rid}),
            )
            .await
        }
    });
    let results = futures::future::join_all(racers).await;
    let winners: Vec<&Value> = results.iter().filter(|r| r["acquired"] == true).collect();
    assert_eq!(winners.len(), 1);
    let holder = &winners[0]["lock"]["holder"];
    assert!(results.iter().all(|r| &r["lock"]["holder"] == holder));
}

/// The two-editor scenario with the official centrifuge-js SDK
/// (tests/interop/js/locks.mjs), with the env vars of tests/it/interop.rs.
async fn js_two_editors(format: &str, postgres: bool) {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !repo
        .join("tests/interop/js/node_modules/centrifuge")
        .exists()
    {
        let msg = "npm centrifuge is not installed in tests/interop/js: run ./scripts/test";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("\n!!! SKIPPED: {msg}\n");
        return;
    }
    let Some((app, schema)) = app(postgres).await else {
        return;
    };
    let output = tokio::process::Command::new("node")
        .arg(repo.join("tests/interop/js/locks.mjs"))
        .current_dir(&repo)
        .env("SYNCHUB_WS_URL", app.ws_url())
        .env("SYNCHUB_API_URL", app.url(""))
        .env("SYNCHUB_API_KEY", API_KEY)
        .env("SYNCHUB_HMAC_SECRET", SECRET)
        .env("SYNCHUB_FORMAT", format)
        .env("SYNCHUB_LOCK_GRACE_MS", "1000")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("locks.mjs timed out")
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("1 passed, 0 failed"),
        "locks.mjs ({format}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    finish(app, schema).await;
}

#[tokio::test]
async fn centrifuge_js_editors_hand_over_a_lock_json() {
    js_two_editors("json", false).await;
}

#[tokio::test]
async fn centrifuge_js_editors_hand_over_a_lock_protobuf() {
    js_two_editors("protobuf", false).await;
}

#[tokio::test]
async fn centrifuge_js_editors_hand_over_a_lock_json_on_postgres() {
    js_two_editors("json", true).await;
}

/// `redis://127.0.0.1:6379` when reachable; a loud skip (a failure under CI) otherwise.
async fn redis_url() -> Option<String> {
    let url = "redis://127.0.0.1:6379".to_owned();
    let reachable = match redis::Client::open(url.as_str()) {
        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if !reachable {
        assert!(
            std::env::var_os("CI").is_none(),
            "Redis not reachable at {url} and CI is set"
        );
        eprintln!("\n!!! SKIPPED: Redis not reachable at {url}\n");
        return None;
    }
    Some(url)
}

/// Two nodes on one Redis and one PostgreSQL schema: holder liveness lives
/// in the database, so a holder who moves to the other node keeps the lock,
/// and the lock goes only when the holder's last connection anywhere is gone.
#[tokio::test]
async fn a_holder_who_moves_to_another_node_keeps_the_lock() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let Some((first, schema)) = app(true).await else {
        return;
    };
    let db = first_database_url(schema.as_deref().expect("schema"));
    let prefix = unique("records");
    // The first node runs without Redis only for the schema set-up; the two
    // nodes of the test share Redis and the schema.
    let _ = first.stop().await;
    let node = |db: String, redis: String, prefix: String| {
        TestApp::spawn_with(move |c| {
            c.records.lock_grace_period = Duration::from_secs(1);
            c.records.node_heartbeat = Duration::from_millis(200);
            c.records.node_ttl = Duration::from_secs(2);
            c.database_url = Some(synchub::config::Secret::new(db));
            c.redis.url = Some(synchub::config::Secret::new(redis));
            c.redis.prefix = Some(prefix);
        })
    };
    let a = node(db.clone(), redis.clone(), prefix.clone()).await;
    let b = node(db, redis, prefix).await;
    let rid = id();
    let channel = format!("record:deals:{rid}");

    let mut bob = b.connected("bob").await;
    bob.subscribe(&channel).await;
    let mut carol = a.connected("carol").await;
    carol.subscribe("changes:deals").await;

    let mut ann = a.connected("ann").await;
    let lock = ok(
        &mut ann,
        "lock.acquire",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    let token = lock["lock"]["token"].as_i64().unwrap();
    // Published on node A, seen on node B through Redis.
    event(&mut bob, &channel, "lock.acquired").await;

    ann.drop_transport();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ann = b.connected("ann").await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let status = ok(
        &mut bob,
        "lock.status",
        json!({"entity": "deals", "id": rid}),
    )
    .await;
    assert_eq!(status["lock"]["holder"], "ann", "kept across nodes");

    // Ann saves on node B; carol on node A gets the change.
    ok(
        &mut ann,
        "record.update",
        json!({"entity": "deals", "id": rid, "base_version": 0, "fields": {"x": 1}, "lock_token": token}),
    )
    .await;
    let e = event(&mut carol, "changes:deals", "record.changed").await;
    assert_eq!(e["by"], "ann");

    // Her last connection goes: released after the grace period.
    ann.drop_transport();
    let e = event(&mut bob, &channel, "lock.released").await;
    assert_eq!(e["reason"], "disconnected");

    let _ = a.stop().await;
    let _ = b.stop().await;
    finish_schema(schema).await;
}

fn first_database_url(schema: &str) -> String {
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}
