//! The client protocol over a real WebSocket, both encodings.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use synchub::auth::{ConnectClaims, now_unix};
use synchub::protocol::{
    Command, ConnectRequest, Encoding, HistoryRequest, PresenceRequest, PresenceStatsRequest,
    PublishRequest, RefreshRequest, RpcRequest, SendRequest, StreamPosition, SubscribeRequest,
    UnsubscribeRequest,
};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn connect_cmd(token: &str) -> Command {
    Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: token.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn json_client_connects_subscribes_and_receives_an_api_publication() {
    let app = TestApp::spawn().await;
    let channel = unique("news");
    let mut c = app.client(Encoding::Json).await;
    let connected = c.connect(&token("42")).await;
    assert!(!connected.client.is_empty());
    assert!(connected.expires && connected.ttl > 3500);
    assert_eq!((connected.ping, connected.pong), (25, true));
    let sub = c.subscribe(&channel).await;
    assert!(sub.recoverable && sub.positioned && !sub.epoch.is_empty());
    let published = app.publish(&channel, json!({"text": "hello"})).await;
    assert_eq!(published["offset"], 1);
    let (ch, data, offset) = c.publication().await;
    assert_eq!(
        (ch.as_str(), data, offset),
        (channel.as_str(), json!({"text": "hello"}), 1)
    );
}

#[tokio::test]
async fn connect_and_subscribe_in_one_frame_are_answered_in_order() {
    let app = TestApp::spawn().await;
    let mut c = app.client(Encoding::Json).await;
    c.send_many(&[
        connect_cmd(&token("1")),
        Command {
            id: 2,
            subscribe: Some(SubscribeRequest {
                channel: unique("first"),
                ..Default::default()
            }),
            ..Default::default()
        },
    ])
    .await;
    let first = c.next().await;
    assert_eq!(first.id, 1);
    assert!(first.connect.is_some());
    let second = c.next().await;
    assert_eq!(second.id, 2);
    assert!(second.subscribe.is_some(), "{second:?}");
}

#[tokio::test]
async fn protobuf_and_json_clients_see_the_same_publications_and_presence() {
    let app = TestApp::spawn().await;
    let channel = unique("mixed");
    let mut json_client = app.connected("j").await;
    let mut pb = app.client(Encoding::Protobuf).await;
    pb.connect(&token("p")).await;
    json_client.subscribe(&channel).await;
    pb.subscribe(&channel).await;
    for i in 0..3 {
        app.publish(&channel, json!({"n": i})).await;
    }
    for i in 0..3u64 {
        let (_, a, ao) = json_client.publication().await;
        let (_, b, bo) = pb.publication().await;
        assert_eq!(a, json!({"n": i}));
        assert_eq!((a, ao), (b, bo));
    }
    let r = pb
        .call(Command {
            presence_stats: Some(PresenceStatsRequest {
                channel: channel.clone(),
            }),
            ..Default::default()
        })
        .await;
    let stats = r.presence_stats.expect("stats");
    assert_eq!((stats.num_clients, stats.num_users), (2, 2));
}

#[tokio::test]
async fn protobuf_ping_is_one_zero_byte_and_pong_keeps_the_connection() {
    let app = TestApp::spawn_with(|c| {
        c.client.ping_interval = Duration::from_secs(2);
        c.client.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let mut c = app.client(Encoding::Protobuf).await;
    c.connect(&token("u")).await;
    c.auto_pong = true;
    // Several ping periods pass; answering each ping keeps us connected.
    c.nothing_for(Duration::from_secs(5)).await;
    let r = c
        .call(Command {
            rpc: Some(RpcRequest {
                method: "session.info".into(),
                data: Bytes::from_static(b"{}"),
            }),
            ..Default::default()
        })
        .await;
    assert!(r.rpc.is_some(), "{r:?}");
}

#[tokio::test]
async fn missing_pong_closes_with_3012() {
    let app = TestApp::spawn_with(|c| {
        c.client.ping_interval = Duration::from_secs(2);
        c.client.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let mut c = app.client(Encoding::Json).await;
    c.auto_pong = false;
    c.connect(&token("u")).await;
    let ping = c.next().await;
    assert_eq!(ping, synchub::protocol::Reply::ping());
    assert_eq!(c.closed().await.code, 3012);
}

#[tokio::test]
async fn pong_without_ping_closes_with_3501() {
    let app = TestApp::spawn().await;
    let mut c = app.connected("u").await;
    c.send(Command::default()).await;
    assert_eq!(c.closed().await.code, 3501);
}

#[tokio::test]
async fn command_before_connect_closes_with_3501() {
    let app = TestApp::spawn().await;
    let mut c = app.client(Encoding::Json).await;
    c.send(Command {
        id: 1,
        subscribe: Some(SubscribeRequest {
            channel: "x".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(c.closed().await.code, 3501);
}

#[tokio::test]
async fn malformed_json_closes_with_3501_and_others_keep_working() {
    let app = TestApp::spawn().await;
    let channel = unique("bystander");
    let mut bystander = app.connected("b").await;
    bystander.subscribe(&channel).await;
    let mut bad = app.connected("a").await;
    bad.send_raw(Bytes::from_static(b"{\"id\":2,\"subscribe\":"))
        .await;
    assert_eq!(bad.closed().await.code, 3501);
    app.publish(&channel, json!(1)).await;
    assert_eq!(bystander.publication().await.1, json!(1));
}

#[tokio::test]
async fn malformed_protobuf_closes_with_3501_without_harming_others() {
    let app = TestApp::spawn().await;
    let channel = unique("bystander");
    let mut bystander = app.client(Encoding::Protobuf).await;
    bystander.connect(&token("b")).await;
    bystander.subscribe(&channel).await;
    for garbage in [
        &[0x80u8][..],                          // truncated varint
        &[0xff, 0xff, 0xff, 0xff, 0x0f, 1][..], // huge declared length
        &[2, 0x20, 0x01][..],                   // connect field sent as a varint
    ] {
        let mut bad = app.client(Encoding::Protobuf).await;
        bad.send_raw(Bytes::copy_from_slice(garbage)).await;
        assert_eq!(bad.closed().await.code, 3501, "input {garbage:?}");
    }
    app.publish(&channel, json!("still here")).await;
    assert_eq!(bystander.publication().await.1, json!("still here"));
}

#[tokio::test]
async fn binary_frame_to_a_json_connection_closes_with_3501() {
    let app = TestApp::spawn().await;
    let mut c = app.connected("u").await;
    c.send_message(Message::Binary(Bytes::from_static(&[1, 2, 3])))
        .await;
    assert_eq!(c.closed().await.code, 3501);
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let app = TestApp::spawn_with(|c| c.client.max_message_size = 4096).await;
    let mut c = app.connected("u").await;
    let big = format!(
        "{{\"id\":2,\"publish\":{{\"channel\":\"x\",\"data\":\"{}\"}}}}",
        "a".repeat(5000)
    );
    c.send_raw(Bytes::from(big)).await;
    assert_eq!(c.closed().await.code, 1009);
}

#[tokio::test]
async fn invalid_token_closes_with_3500_and_expired_gets_109() {
    let app = TestApp::spawn().await;
    let mut c = app.client(Encoding::Json).await;
    let forged = synchub::auth::mint(
        "another-secret-000000000",
        &ConnectClaims {
            sub: "u".into(),
            ..Default::default()
        },
    )
    .unwrap();
    c.send(connect_cmd(&forged)).await;
    assert_eq!(c.closed().await.code, 3500);

    let mut c = app.client(Encoding::Json).await;
    c.send(connect_cmd(&token_with(ConnectClaims {
        sub: "u".into(),
        exp: Some(now_unix() - 10),
        ..Default::default()
    })))
    .await;
    let r = c.next().await;
    let e = r.error.expect("error reply");
    assert_eq!((e.code, e.message.as_str()), (109, "token expired"));
    // After a failed connect any further command closes the connection.
    c.send(connect_cmd(&token("u"))).await;
    assert_eq!(c.closed().await.code, 3501);
}

#[tokio::test]
async fn no_token_without_anonymous_access_closes_with_3501() {
    let app = TestApp::spawn().await;
    let mut c = app.client(Encoding::Json).await;
    c.send(connect_cmd("")).await;
    assert_eq!(c.closed().await.code, 3501);
}

#[tokio::test]
async fn connection_without_connect_is_closed_as_stale() {
    let app =
        TestApp::spawn_with(|c| c.client.stale_close_delay = Duration::from_millis(300)).await;
    let mut c = app.client(Encoding::Json).await;
    assert_eq!(c.closed().await.code, 3502);
}

#[tokio::test]
async fn channel_errors_follow_the_protocol() {
    let app = TestApp::spawn_with(|c| c.client.max_channels = 2).await;
    let mut c = app.connected("42").await;
    let code = |r: synchub::protocol::Reply| r.error.expect("error").code;
    let sub = |ch: &str| SubscribeRequest {
        channel: ch.into(),
        ..Default::default()
    };
    assert_eq!(code(c.subscribe_with(sub("nope:x")).await), 102);
    assert_eq!(code(c.subscribe_with(sub(&"a".repeat(300))).await), 107);
    assert_eq!(code(c.subscribe_with(sub("$secret")).await), 103);
    assert_eq!(code(c.subscribe_with(sub("dialog#7,8")).await), 103);
    c.subscribe("dialog#42,43").await;
    assert_eq!(code(c.subscribe_with(sub("dialog#42,43")).await), 105);
    c.subscribe("second").await;
    assert_eq!(code(c.subscribe_with(sub("third")).await), 106);
}

#[tokio::test]
async fn private_channel_needs_a_subscription_token_for_this_user() {
    let app = TestApp::spawn().await;
    let mut c = app.connected("42").await;
    let ok = c
        .subscribe_with(SubscribeRequest {
            channel: "$board".into(),
            token: sub_token("42", "$board"),
            ..Default::default()
        })
        .await;
    let result = ok.subscribe.expect("subscribed");
    assert!(result.expires);
    // A token for another user is an invalid token: the connection ends.
    let mut other = app.connected("7").await;
    other
        .send(Command {
            id: 9,
            subscribe: Some(SubscribeRequest {
                channel: "$board".into(),
                token: sub_token("42", "$board"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(other.closed().await.code, 3500);
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let app = TestApp::spawn().await;
    let channel = unique("shared_name");
    let mut acme = app.client(Encoding::Json).await;
    acme.connect(&token_with(ConnectClaims {
        sub: "1".into(),
        tenant: Some("other".into()),
        ..Default::default()
    }))
    .await;
    acme.subscribe(&channel).await;
    let mut default_tenant = app.connected("1").await;
    default_tenant.subscribe(&channel).await;
    // Published with tenant `default`'s key: only the default tenant's client gets it.
    app.publish(&channel, json!("for default")).await;
    assert_eq!(default_tenant.publication().await.1, json!("for default"));
    acme.nothing_for(Duration::from_millis(300)).await;
    // Published with the `other` tenant's key.
    let r = app
        .api_with_key(
            OTHER_TENANT_KEY,
            "publish",
            json!({"channel": channel, "data": "for other"}),
        )
        .await;
    assert_eq!(r["result"]["offset"], 1, "separate stream per tenant");
    assert_eq!(acme.publication().await.1, json!("for other"));
    default_tenant.nothing_for(Duration::from_millis(300)).await;
    let presence = app.api("presence", json!({"channel": channel})).await;
    assert_eq!(presence["result"]["presence"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn client_publish_is_allowed_where_the_namespace_allows_it() {
    let app = TestApp::spawn().await;
    let channel = unique("chat");
    let mut a = app.connected("a").await;
    let mut b = app.connected("b").await;
    a.subscribe(&channel).await;
    b.subscribe(&channel).await;
    let r = a
        .call(Command {
            publish: Some(PublishRequest {
                channel: channel.clone(),
                data: Bytes::from_static(b"{\"msg\":\"hi\"}"),
            }),
            ..Default::default()
        })
        .await;
    assert!(r.publish.is_some(), "{r:?}");
    let push = b.push().await;
    let publication = push.r#pub.expect("pub");
    assert_eq!(publication.info.expect("publisher info").user, "a");
    // The record namespace is written by the server only.
    a.subscribe("record:deals:1").await;
    let denied = a
        .call(Command {
            publish: Some(PublishRequest {
                channel: "record:deals:1".into(),
                data: Bytes::from_static(b"{}"),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(denied.error.expect("error").code, 103);
}

#[tokio::test]
async fn presence_join_and_leave() {
    let app = TestApp::spawn().await;
    let channel = unique("room");
    let mut a = app.connected("a").await;
    let r = a
        .subscribe_with(SubscribeRequest {
            channel: channel.clone(),
            join_leave: true,
            ..Default::default()
        })
        .await;
    assert!(r.subscribe.is_some());
    let own_join = a.push().await;
    assert_eq!(own_join.join.expect("join").info.expect("info").user, "a");
    let mut b = app.client(Encoding::Json).await;
    b.connect(&token_with(ConnectClaims {
        sub: "b".into(),
        info: Some(serde_json::value::RawValue::from_string("{\"name\":\"Bea\"}".into()).unwrap()),
        ..Default::default()
    }))
    .await;
    b.subscribe(&channel).await;
    let join = a.push().await.join.expect("join").info.expect("info");
    assert_eq!(
        (join.user.as_str(), join.conn_info.as_ref()),
        ("b", &b"{\"name\":\"Bea\"}"[..])
    );
    let presence = a
        .call(Command {
            presence: Some(PresenceRequest {
                channel: channel.clone(),
            }),
            ..Default::default()
        })
        .await
        .presence
        .expect("presence")
        .presence;
    assert_eq!(presence.len(), 2);
    assert!(
        presence
            .values()
            .any(|i| i.user == "b" && i.conn_info.as_ref() == b"{\"name\":\"Bea\"}")
    );
    b.call(Command {
        unsubscribe: Some(UnsubscribeRequest {
            channel: channel.clone(),
        }),
        ..Default::default()
    })
    .await;
    let leave = a.push().await.leave.expect("leave").info.expect("info");
    assert_eq!(leave.user, "b");
    let stats = app.api("presence_stats", json!({"channel": channel})).await;
    assert_eq!(stats["result"], json!({"num_clients": 1, "num_users": 1}));
}

#[tokio::test]
async fn history_limit_since_reverse_and_epoch() {
    let app = TestApp::spawn().await;
    let channel = unique("hist");
    let mut c = app.connected("u").await;
    c.subscribe(&channel).await;
    for i in 1..=5 {
        app.publish(&channel, json!(i)).await;
    }
    let history = |limit: i32, since: Option<StreamPosition>, reverse: bool| Command {
        history: Some(HistoryRequest {
            channel: channel.clone(),
            limit,
            since,
            reverse,
        }),
        ..Default::default()
    };
    let all = c
        .call(history(-1, None, false))
        .await
        .history
        .expect("history");
    assert_eq!(
        all.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(all.offset, 5);
    let newest = c
        .call(history(2, None, true))
        .await
        .history
        .expect("history");
    assert_eq!(
        newest
            .publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![5, 4]
    );
    let since = c
        .call(history(
            10,
            Some(StreamPosition {
                offset: 3,
                epoch: all.epoch.clone(),
            }),
            false,
        ))
        .await
        .history
        .expect("history");
    assert_eq!(
        since
            .publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let top = c
        .call(history(0, None, false))
        .await
        .history
        .expect("history");
    assert!(top.publications.is_empty());
    assert_eq!(top.offset, 5);
    let wrong_epoch = c
        .call(history(
            10,
            Some(StreamPosition {
                offset: 1,
                epoch: "nope".into(),
            }),
            false,
        ))
        .await;
    assert_eq!(wrong_epoch.error.expect("error").code, 112);
    let not_subscribed = c
        .call(Command {
            history: Some(HistoryRequest {
                channel: unique("elsewhere"),
                limit: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(not_subscribed.error.expect("error").code, 103);
}

async fn subscribed_then_dropped(app: &TestApp, channel: &str) -> (u64, String) {
    let mut c = app.connected("mobile").await;
    let sub = c.subscribe(channel).await;
    app.publish(channel, json!("seen")).await;
    let (_, _, offset) = c.publication().await;
    c.drop_transport();
    (offset, sub.epoch)
}

#[tokio::test]
async fn recovery_after_a_dropped_transport_returns_exactly_the_missed_publications() {
    let app = TestApp::spawn().await;
    let channel = unique("recover");
    let (offset, epoch) = subscribed_then_dropped(&app, &channel).await;
    for i in 0..50 {
        app.publish(&channel, json!({"missed": i})).await;
    }
    let mut c = app.connected("mobile").await;
    let r = c
        .subscribe_with(SubscribeRequest {
            channel: channel.clone(),
            recover: true,
            offset,
            epoch: epoch.clone(),
            ..Default::default()
        })
        .await
        .subscribe
        .expect("subscribed");
    assert!(r.recovered && r.was_recovering);
    assert_eq!(r.offset, offset);
    let got: Vec<serde_json::Value> = r
        .publications
        .iter()
        .map(|p| serde_json::from_slice(&p.data).unwrap())
        .collect();
    assert_eq!(
        got,
        (0..50).map(|i| json!({"missed": i})).collect::<Vec<_>>()
    );
    // Live publications continue after the recovered ones.
    app.publish(&channel, json!("live")).await;
    let (_, data, live_offset) = c.publication().await;
    assert_eq!((data, live_offset), (json!("live"), offset + 51));
}

#[tokio::test]
async fn recovery_beyond_the_history_window_is_reported_unrecovered() {
    let app = TestApp::spawn().await;
    let channel = unique("too_far");
    let (offset, epoch) = subscribed_then_dropped(&app, &channel).await;
    for i in 0..150 {
        app.publish(&channel, json!(i)).await;
    }
    let mut c = app.connected("mobile").await;
    let r = c
        .subscribe_with(SubscribeRequest {
            channel: channel.clone(),
            recover: true,
            offset,
            epoch: epoch.clone(),
            ..Default::default()
        })
        .await
        .subscribe
        .expect("subscribed");
    assert!(!r.recovered && r.was_recovering);
    assert!(r.publications.is_empty());
    assert_eq!(r.offset, 151);
    // With flag bit 2 the client asks for error 112 instead.
    let mut c2 = app.connected("mobile").await;
    let rejected = c2
        .subscribe_with(SubscribeRequest {
            channel,
            recover: true,
            offset,
            epoch,
            flag: 2,
            ..Default::default()
        })
        .await;
    assert_eq!(rejected.error.expect("error").code, 112);
}

#[tokio::test]
async fn rpc_round_trip_and_unknown_method() {
    let app = TestApp::spawn().await;
    let mut c = app.connected("42").await;
    let r = c
        .call(Command {
            rpc: Some(RpcRequest {
                method: "session.info".into(),
                data: Bytes::from_static(b"{}"),
            }),
            ..Default::default()
        })
        .await;
    let data: serde_json::Value = serde_json::from_slice(&r.rpc.expect("rpc").data).unwrap();
    assert_eq!(data["user"], "42");
    assert_eq!(data["tenant"], "default");
    let unknown = c
        .call(Command {
            rpc: Some(RpcRequest {
                method: "no.such.method".into(),
                data: Bytes::new(),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(unknown.error.expect("error").code, 104);
}

#[tokio::test]
async fn refresh_extends_the_connection_and_a_wrong_user_is_refused() {
    let app = TestApp::spawn().await;
    let mut c = app.client(Encoding::Json).await;
    let r = c
        .connect(&token_with(ConnectClaims {
            sub: "u".into(),
            exp: Some(now_unix() + 5),
            ..Default::default()
        }))
        .await;
    assert!(r.expires && r.ttl <= 5);
    let refreshed = c
        .call(Command {
            refresh: Some(RefreshRequest { token: token("u") }),
            ..Default::default()
        })
        .await
        .refresh
        .expect("refresh");
    assert!(refreshed.expires && refreshed.ttl > 3500);
    c.send(Command {
        id: 50,
        refresh: Some(RefreshRequest {
            token: token("someone-else"),
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(c.closed().await.code, 3500);
}

#[tokio::test]
async fn unrefreshed_connection_is_closed_with_3005_after_the_grace() {
    let app =
        TestApp::spawn_with(|c| c.client.expired_close_delay = Duration::from_millis(100)).await;
    let mut c = app.client(Encoding::Json).await;
    c.connect(&token_with(ConnectClaims {
        sub: "u".into(),
        exp: Some(now_unix() + 1),
        ..Default::default()
    }))
    .await;
    assert_eq!(c.closed().await.code, 3005);
}

#[tokio::test]
async fn send_without_a_handler_closes_with_3508_and_ping_command_is_108() {
    let app = TestApp::spawn().await;
    let mut c = app.connected("u").await;
    let r = c
        .call(Command {
            ping: Some(Default::default()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.error.expect("error").code, 108);
    c.send(Command {
        send: Some(SendRequest {
            data: Bytes::from_static(b"{}"),
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(c.closed().await.code, 3508);
}

#[tokio::test]
async fn slow_consumer_is_closed_with_3008() {
    let app = TestApp::spawn_with(|c| {
        c.client.queue_max_bytes = 2048;
        c.client.max_message_size = 1024;
    })
    .await;
    let channel = unique("firehose");
    let mut c = app.connected("u").await;
    c.subscribe(&channel).await;
    app.publish(&channel, json!("x".repeat(4000))).await;
    assert_eq!(c.closed().await.code, 3008);
}

#[tokio::test]
async fn a_flooding_client_gets_111_then_3013_and_others_are_served() {
    let app = TestApp::spawn_with(|c| {
        c.client.command_rate = 5;
        c.client.command_burst = 5;
    })
    .await;
    let channel = unique("calm");
    let mut calm = app.connected("calm").await;
    calm.subscribe(&channel).await;
    let mut flood = app.connected("flood").await;
    let commands: Vec<Command> = (0..40)
        .map(|i| Command {
            id: 100 + i,
            presence_stats: Some(PresenceStatsRequest {
                channel: "x".into(),
            }),
            ..Default::default()
        })
        .collect();
    flood.send_many(&commands).await;
    let mut saw_111 = false;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), flood.next_or_close()).await {
            Ok(Ok(r)) => {
                if r.error.as_ref().is_some_and(|e| e.code == 111) {
                    saw_111 = true;
                }
            }
            Ok(Err(closed)) => break closed,
            Err(_) => panic!("flooder was not closed"),
        }
    };
    assert!(saw_111);
    assert_eq!(closed.code, 3013);
    app.publish(&channel, json!("ok")).await;
    assert_eq!(calm.publication().await.1, json!("ok"));
}

#[tokio::test]
async fn graceful_shutdown_closes_sessions_with_3001() {
    let app = TestApp::spawn().await;
    let mut c = app.connected("u").await;
    let stopping = tokio::spawn(app.stop());
    assert_eq!(c.closed().await.code, 3001);
    stopping.await.unwrap().expect("clean stop");
}
