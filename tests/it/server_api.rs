//! The Centrifugo-compatible server API.

use std::time::Duration;

use serde_json::json;
use synchub::protocol::{Encoding, SubscribeRequest};

use crate::support::*;

#[tokio::test]
async fn api_needs_a_known_key_and_post() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/info");
    let no_key = app.http.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    assert!(no_key.bytes().await.unwrap().is_empty());
    let wrong = app
        .http
        .post(&url)
        .header("X-API-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let apikey_header = app
        .http
        .post(&url)
        .header("Authorization", format!("apikey {API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(apikey_header.status(), 200);
    let get = app
        .http
        .get(&url)
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
}

#[tokio::test]
async fn api_errors_use_centrifugo_codes_and_transport_mode_maps_them_to_statuses() {
    let app = TestApp::spawn().await;
    let r = app
        .api("publish", json!({"channel": "nope:x", "data": {}}))
        .await;
    assert_eq!(r["error"]["code"], 102);
    let r = app.api("publish", json!({"channel": "x"})).await;
    assert_eq!(r["error"]["code"], 107);
    let r = app.api("no_such_method", json!({})).await;
    assert_eq!(r["error"]["code"], 104);
    let r = app
        .api("presence", json!({"channel": "changes:deals"}))
        .await;
    assert_eq!(r["error"]["code"], 108);
    let transport = app
        .http
        .post(app.url("/api/publish"))
        .header("X-API-Key", API_KEY)
        .header("X-Centrifugo-Error-Mode", "transport")
        .json(&json!({"channel": "nope:x", "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(transport.status(), 404);
    let bad_json = app
        .http
        .post(app.url("/api/publish"))
        .header("X-API-Key", API_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        bad_json.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        107
    );
}

#[tokio::test]
async fn broadcast_history_history_remove_and_legacy_form() {
    let app = TestApp::spawn().await;
    let a = unique("a");
    let b = unique("b");
    let r = app
        .api(
            "broadcast",
            json!({"channels": [a, b, "nope:x"], "data": {"v": 1}}),
        )
        .await;
    let responses = r["result"]["responses"].as_array().unwrap();
    assert_eq!(responses[0]["result"]["offset"], 1);
    assert_eq!(responses[1]["result"]["offset"], 1);
    assert_eq!(responses[2]["error"]["code"], 102);
    let h = app.api("history", json!({"channel": a, "limit": 10})).await;
    assert_eq!(h["result"]["publications"][0]["data"], json!({"v": 1}));
    assert_eq!(h["result"]["offset"], 1);
    app.api("history_remove", json!({"channel": a})).await;
    let h = app.api("history", json!({"channel": a, "limit": 10})).await;
    assert_eq!(h["result"]["publications"], json!([]));
    assert_eq!(h["result"]["offset"], 1, "position survives history_remove");
    let legacy = app
        .http
        .post(app.url("/api"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"method": "publish", "params": {"channel": a, "data": 2}}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(legacy["result"]["offset"], 2);
    let batch = app
        .api(
            "batch",
            json!({"commands": [{"publish": {"channel": a, "data": 3}}, {"info": {}}]}),
        )
        .await;
    assert_eq!(batch["result"]["replies"][0]["publish"]["offset"], 3);
}

#[tokio::test]
async fn idempotent_publish_is_delivered_once() {
    let app = TestApp::spawn().await;
    let channel = unique("idem");
    let mut c = app.connected("u").await;
    c.subscribe(&channel).await;
    let body = json!({"channel": channel, "data": "once", "idempotency_key": "k-1"});
    let first = app.api("publish", body.clone()).await;
    let second = app.api("publish", body).await;
    assert_eq!(first, second);
    assert_eq!(c.publication().await.1, json!("once"));
    c.nothing_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn api_disconnect_unsubscribe_and_subscribe_reach_the_users_connections() {
    let app = TestApp::spawn().await;
    let channel = unique("managed");
    let mut c = app.connected("alice").await;
    c.subscribe(&channel).await;
    app.api("unsubscribe", json!({"user": "alice", "channel": channel}))
        .await;
    let push = c.push().await;
    assert_eq!(push.channel, channel);
    assert_eq!(push.unsubscribe.expect("unsubscribe push").code, 2000);

    let server_side = unique("server_side");
    app.api(
        "subscribe",
        json!({"user": "alice", "channel": server_side}),
    )
    .await;
    let push = c.push().await;
    assert_eq!(push.channel, server_side);
    assert!(push.subscribe.expect("subscribe push").recoverable);
    app.publish(&server_side, json!("to server-side sub")).await;
    assert_eq!(c.publication().await.1, json!("to server-side sub"));

    let mut other = app.connected("bob").await;
    app.api("disconnect", json!({"user": "alice"})).await;
    assert_eq!(c.closed().await.code, 3503);
    // Bob is untouched.
    other.subscribe(&unique("still")).await;
}

#[tokio::test]
async fn info_and_channels_count_local_clients() {
    let app = TestApp::spawn().await;
    let channel = unique("counted");
    let mut a = app.connected("a").await;
    let mut b = app.client(Encoding::Protobuf).await;
    b.connect(&token("b")).await;
    a.subscribe(&channel).await;
    b.subscribe_with(SubscribeRequest {
        channel: channel.clone(),
        ..Default::default()
    })
    .await;
    let info = app.api("info", json!({})).await;
    let node = &info["result"]["nodes"][0];
    assert_eq!(node["num_clients"], 2);
    assert_eq!(node["num_users"], 2);
    assert!(node["num_subs"].as_u64().unwrap() >= 2);
    let channels = app.api("channels", json!({"pattern": "counted_*"})).await;
    assert_eq!(channels["result"]["channels"][&channel]["num_clients"], 2);
    let none = app.api("channels", json!({"pattern": "zzz*"})).await;
    assert_eq!(none["result"]["channels"], json!({}));
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let mut c = app.connected("u").await;
    c.subscribe(&unique("m")).await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "synchub_gateway_connections",
        "synchub_hub_subscriptions",
        "synchub_gateway_commands_total",
        "synchub_gateway_command_duration_seconds",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
}
