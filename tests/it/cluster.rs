//! Several synchub processes on one Redis behave as one hub: cross-node
//! delivery, presence, node registry, API control messages, recovery on
//! another node, a Redis restart with nothing lost, a crashed node's
//! presence expiring.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use synchub::protocol::{Command, Encoding, PresenceRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command as Process};

use crate::support::*;

/// One synchub process.
struct Node {
    child: Child,
    addr: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(redis_url: &str, prefix: &str, extra: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_synchub"));
        cmd.env("SYNCHUB_LISTEN", "127.0.0.1:0")
            .env("SYNCHUB_DATA_DIR", dir.path())
            .env("SYNCHUB_REDIS_URL", redis_url)
            .env("SYNCHUB_REDIS_PREFIX", prefix)
            .env("SYNCHUB_TOKEN_HMAC_SECRET", SECRET)
            .env("SYNCHUB_API_KEY", API_KEY)
            .env("SYNCHUB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("synchub starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.trim().to_owned();
                }
            }
            panic!("synchub exited before listening");
        })
        .await
        .expect("synchub prints its address");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let node = Node {
            child,
            addr,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self
                .http
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {} never became ready", self.addr);
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    async fn api(&self, method: &str, body: Value) -> Value {
        self.http
            .post(format!("http://{}/api/{method}", self.addr))
            .header("X-API-Key", API_KEY)
            .json(&body)
            .send()
            .await
            .expect("api")
            .json()
            .await
            .expect("json")
    }

    async fn client(&self, user: &str) -> WsClient {
        let mut c = WsClient::open(&self.ws_url(), Encoding::Json).await;
        c.connect(&token(user)).await;
        c
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn js_ready() -> bool {
    let present = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop/js/node_modules/centrifuge")
        .exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "npm centrifuge missing and CI is set"
        );
        eprintln!("\n!!! SKIPPED: npm centrifuge not installed (run ./scripts/test)\n");
    }
    present
}

async fn shared_redis() -> Option<String> {
    let url = "redis://127.0.0.1:6379".to_owned();
    let reachable = match redis::Client::open(url.as_str()) {
        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if reachable {
        return Some(url);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Redis not reachable at {url} and CI is set"
    );
    eprintln!("\n!!! SKIPPED: Redis not reachable at {url}\n");
    None
}

#[tokio::test]
async fn three_nodes_share_publications_presence_and_control() {
    let _heavy = heavy().await;
    let Some(redis) = shared_redis().await else {
        return;
    };
    let prefix = unique("cluster");
    let a = Node::start(&redis, &prefix, &[]).await;
    let b = Node::start(&redis, &prefix, &[]).await;
    let c = Node::start(&redis, &prefix, &[]).await;
    let channel = unique("everywhere");

    let mut on_a = a.client("alice").await;
    on_a.subscribe(&channel).await;
    let mut on_b = b.client("bob").await;
    on_b.subscribe(&channel).await;

    // Published through B's API, delivered on A (and B).
    let r = b
        .api(
            "publish",
            json!({"channel": channel, "data": {"from": "b"}}),
        )
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    assert_eq!(on_a.publication().await.1, json!({"from": "b"}));
    assert_eq!(on_b.publication().await.1, json!({"from": "b"}));

    // Presence asked of C lists the clients of A and B.
    let presence = c.api("presence", json!({"channel": channel})).await;
    let users: Vec<&str> = presence["result"]["presence"]
        .as_object()
        .expect("presence map")
        .values()
        .map(|i| i["user"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(users.len(), 2, "{presence}");
    assert!(users.contains(&"alice") && users.contains(&"bob"));

    // Every live node is listed with its counts (announced every 3 s).
    let clients = |nodes: &[Value]| {
        nodes
            .iter()
            .map(|n| n["num_clients"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let mut nodes = Vec::new();
    for _ in 0..50 {
        let info = c.api("info", json!({})).await;
        nodes = info["result"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if nodes.len() == 3 && clients(&nodes) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert_eq!(clients(&nodes), 2, "{nodes:?}");

    // Control messages through C reach users wherever they are connected.
    c.api("unsubscribe", json!({"user": "bob", "channel": channel}))
        .await;
    assert_eq!(
        on_b.push()
            .await
            .unsubscribe
            .expect("unsubscribe push")
            .code,
        2000
    );
    c.api("disconnect", json!({"user": "alice"})).await;
    assert_eq!(on_a.closed().await.code, 3503);
}

#[tokio::test]
async fn centrifuge_js_recovers_on_another_node() {
    let _heavy = heavy().await;
    let Some(redis) = shared_redis().await else {
        return;
    };
    if !js_ready() {
        return;
    }
    let prefix = unique("roam");
    let a = Node::start(&redis, &prefix, &[]).await;
    let b = Node::start(&redis, &prefix, &[]).await;
    let c = Node::start(&redis, &prefix, &[]).await;
    let output = Process::new("node")
        .arg("tests/interop/js/cluster.mjs")
        .arg("recover-elsewhere")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SYNCHUB_WS_URLS", format!("{},{}", a.ws_url(), b.ws_url()))
        .env("SYNCHUB_API_URL", format!("http://{}", c.addr))
        .env("SYNCHUB_API_KEY", API_KEY)
        .env("SYNCHUB_HMAC_SECRET", SECRET)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("PASS recover-elsewhere"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private redis-server on a free port, with an append-only file fsynced on
/// every write, so a restart keeps what was acknowledged.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    async fn start() -> Option<PrivateRedis> {
        let available = Process::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !available {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server binary missing and CI is set"
            );
            eprintln!("\n!!! SKIPPED: redis-server binary not found\n");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = PrivateRedis {
            child: None,
            port,
            dir: tempfile::tempdir().expect("dir"),
        };
        r.restart().await;
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = Process::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(c) = redis::Client::open(self.url())
                && c.get_multiplexed_async_connection().await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis did not start");
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }
}

#[tokio::test]
async fn redis_restart_loses_no_acknowledged_publication() {
    let _heavy = heavy().await;
    if !js_ready() {
        return;
    }
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    // History must cover the outage for clients to recover everything.
    let config = redis.dir.path().join("synchub.toml");
    std::fs::write(
        &config,
        "[channels.without_namespace]\npresence = true\njoin_leave = true\nhistory_size = 1000\nhistory_ttl = \"10m\"\nallow_publish = true\n",
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let a = Node::start(&redis.url(), "outage", &[("SYNCHUB_CONFIG", &config)]).await;
    let b = Node::start(&redis.url(), "outage", &[("SYNCHUB_CONFIG", &config)]).await;
    let channel = unique("outage");
    let mut collector = Process::new("node")
        .arg("tests/interop/js/cluster.mjs")
        .arg("collect")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SYNCHUB_WS_URLS", format!("{},{}", a.ws_url(), b.ws_url()))
        .env("SYNCHUB_HMAC_SECRET", SECRET)
        .env("SYNCHUB_CHANNEL", &channel)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = collector.stdin.take().expect("stdin");
    let mut lines = BufReader::new(collector.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("collector ready in time")
        .expect("read");
    assert_eq!(ready.as_deref(), Some("READY"));

    let nodes = [&a, &b];
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let mut refused_codes = Vec::new();
    for seq in 0..300u32 {
        if seq == 100 {
            redis.kill().await;
        }
        if seq == 160 {
            redis.restart().await;
        }
        let node = nodes[seq as usize % 2];
        let started = std::time::Instant::now();
        let r = node
            .api("publish", json!({"channel": channel, "data": {"seq": seq}}))
            .await;
        if r.get("result").is_some() {
            acked.push(seq);
        } else {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "a refused publish must answer at once"
            );
            refused.push(seq);
            refused_codes.push(r["error"]["code"].as_u64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!refused.is_empty(), "the outage refused nothing");
    assert!(
        refused_codes.iter().all(|c| *c == 108),
        "refused with {refused_codes:?}, want 108 (retryable)"
    );
    // Both nodes are ready again.
    a.wait_ready().await;
    b.wait_ready().await;

    stdin.write_all(b"report\n").await.expect("stdin");
    let report = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("report in time")
        .expect("read")
        .expect("a report line");
    let report: Value = serde_json::from_str(&report).expect("json report");
    let history = a
        .api("history", json!({"channel": channel, "limit": 3}))
        .await;
    eprintln!("report {}\nhistory {history}", report["recovered"]);
    for (i, list) in report["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .enumerate()
    {
        let got: Vec<u32> = list
            .as_array()
            .expect("list")
            .iter()
            .map(|v| v.as_u64().expect("seq") as u32)
            .collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, got, "client {i}: out of order or duplicated");
        for seq in &acked {
            assert!(
                got.contains(seq),
                "client {i} lost acknowledged publication {seq}"
            );
        }
        for seq in &got {
            assert!(
                acked.contains(seq) || refused.contains(seq),
                "client {i} got unknown {seq}"
            );
        }
    }
}

#[tokio::test]
async fn a_crashed_nodes_clients_leave_presence_within_the_ttl() {
    let _heavy = heavy().await;
    let Some(redis) = shared_redis().await else {
        return;
    };
    let prefix = unique("crash");
    let ttl = [("SYNCHUB_PRESENCE_TTL", "10s")];
    let mut doomed = Node::start(&redis, &prefix, &ttl).await;
    let survivor = Node::start(&redis, &prefix, &ttl).await;
    let channel = unique("crash");
    let mut c = doomed.client("ghost").await;
    c.subscribe(&channel).await;
    let mut watcher = survivor.client("watcher").await;
    watcher.subscribe(&channel).await;
    let count = |v: &Value| {
        v["result"]["presence"]
            .as_object()
            .map(|m| m.len())
            .unwrap_or(0)
    };
    assert_eq!(
        count(&survivor.api("presence", json!({"channel": channel})).await),
        2
    );
    doomed.kill().await;
    let killed_at = std::time::Instant::now();
    loop {
        // The watcher keeps answering pings and refreshing its own presence.
        watcher.nothing_for(Duration::from_millis(500)).await;
        let presence = survivor.api("presence", json!({"channel": channel})).await;
        if count(&presence) == 1 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(13),
            "the crashed node's client is still present: {presence}"
        );
    }
    let r = watcher
        .call(Command {
            presence: Some(PresenceRequest {
                channel: channel.clone(),
            }),
            ..Default::default()
        })
        .await;
    let presence = r.presence.expect("presence").presence;
    assert_eq!(
        presence
            .values()
            .map(|i| i.user.as_str())
            .collect::<Vec<_>>(),
        vec!["watcher"]
    );
}

#[tokio::test]
async fn after_a_redis_restart_subscribers_recover_and_live_delivery_resumes() {
    let _heavy = heavy().await;
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    let a = Node::start(&redis.url(), "restart", &[]).await;
    let channel = unique("resume");
    let mut c = a.client("u").await;
    let first = c.subscribe(&channel).await;
    a.api("publish", json!({"channel": channel, "data": 1}))
        .await;
    assert_eq!(c.publication().await.1, json!(1));
    redis.kill().await;
    redis.restart().await;
    // The node resubscribes and asks its positioned subscribers to recover.
    let push = c.push().await;
    assert_eq!(push.unsubscribe.expect("unsubscribe push").code, 2500);
    a.wait_ready().await;
    let r = a
        .api("publish", json!({"channel": channel, "data": 2}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let resubscribed = c
        .subscribe_with(synchub::protocol::SubscribeRequest {
            channel: channel.clone(),
            recover: true,
            offset: 1,
            epoch: first.epoch.clone(),
            ..Default::default()
        })
        .await
        .subscribe
        .expect("subscribed");
    assert!(resubscribed.recovered, "{resubscribed:?}");
    assert_eq!(resubscribed.publications.len(), 1);
    a.api("publish", json!({"channel": channel, "data": 3}))
        .await;
    assert_eq!(c.publication().await.1, json!(3));
}

#[tokio::test]
async fn an_unrecovered_subscriber_on_redis_still_gets_live_publications() {
    let _heavy = heavy().await;
    let Some(redis) = shared_redis().await else {
        return;
    };
    let a = Node::start(&redis, &unique("unrecovered"), &[]).await;
    let channel = unique("window");
    let mut c = a.client("u").await;
    let first = c.subscribe(&channel).await;
    a.api("publish", json!({"channel": channel, "data": 0}))
        .await;
    let (_, _, offset) = c.publication().await;
    c.drop_transport();
    for i in 1..=150 {
        a.api("publish", json!({"channel": channel, "data": i}))
            .await;
    }
    let mut c = a.client("u").await;
    let r = c
        .subscribe_with(synchub::protocol::SubscribeRequest {
            channel: channel.clone(),
            recover: true,
            offset,
            epoch: first.epoch.clone(),
            ..Default::default()
        })
        .await
        .subscribe
        .expect("subscribed");
    assert!(r.was_recovering && !r.recovered);
    assert_eq!(r.offset, 151);
    a.api("publish", json!({"channel": channel, "data": "live"}))
        .await;
    let (_, data, live_offset) = c.publication().await;
    assert_eq!((data, live_offset), (json!("live"), 152));
}

#[tokio::test]
async fn two_nodes_on_a_redis_cluster_act_as_one_hub() {
    let _heavy = heavy().await;
    let Some(cluster) = synchub::broker::redis::local_cluster::LocalCluster::start(
        std::env::var_os("CI").is_some(),
    )
    .await
    else {
        return;
    };
    for sharded in ["false", "true"] {
        let env = [
            ("SYNCHUB_REDIS_CLUSTER", "true"),
            ("SYNCHUB_REDIS_SHARDED", sharded),
        ];
        let prefix = format!("onecluster{sharded}");
        let a = Node::start(&cluster.seeds, &prefix, &env).await;
        let b = Node::start(&cluster.seeds, &prefix, &env).await;
        let channel = unique("cluster_world");
        let mut on_a = a.client("alice").await;
        on_a.subscribe(&channel).await;
        let mut on_b = b.client("bob").await;
        on_b.subscribe(&channel).await;
        for i in 0..20 {
            let r = b
                .api("publish", json!({"channel": channel, "data": i}))
                .await;
            assert_eq!(r["result"]["offset"], i + 1, "sharded {sharded}: {r}");
        }
        for i in 0..20 {
            assert_eq!(on_a.publication().await.1, json!(i), "sharded {sharded}");
            assert_eq!(on_b.publication().await.1, json!(i), "sharded {sharded}");
        }
        let presence = a.api("presence", json!({"channel": channel})).await;
        assert_eq!(
            presence["result"]["presence"].as_object().map(|m| m.len()),
            Some(2),
            "{presence}"
        );
        let history = a
            .api("history", json!({"channel": channel, "limit": -1}))
            .await;
        assert_eq!(
            history["result"]["publications"].as_array().map(Vec::len),
            Some(20)
        );
        // Control messages cross nodes in both modes.
        a.api("disconnect", json!({"user": "bob"})).await;
        assert_eq!(on_b.closed().await.code, 3503, "sharded {sharded}");
    }
}

/// One redis-server (or sentinel) process on a free port.
async fn redis_process(args: &[String], dir: &std::path::Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Process::new("redis-server")
        .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
        .current_dir(dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts");
    for _ in 0..100 {
        if let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            && c.get_multiplexed_async_connection().await.is_ok()
        {
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis process on {port} did not start");
}

async fn redis_query(port: u16, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c).await.expect("query")
}

fn value_text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(" "),
        redis::Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{} {}", value_text(k), value_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn sentinel_failover_keeps_publishing_and_delivering() {
    let _heavy = heavy().await;
    if Process::new("redis-server")
        .arg("--version")
        .output()
        .await
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server missing and CI is set"
        );
        eprintln!("\n!!! SKIPPED: redis-server not found\n");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let base = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "--port",
            "{port}",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let (_master, master_port) = redis_process(&base(&[]), dir.path()).await;
    let replica_dir = dir.path().join("replica");
    std::fs::create_dir_all(&replica_dir).expect("dir");
    let (_replica, replica_port) = redis_process(
        &base(&["--replicaof", "127.0.0.1", &master_port.to_string()]),
        &replica_dir,
    )
    .await;
    for _ in 0..100 {
        let info = value_text(&redis_query(replica_port, &["INFO", "replication"]).await);
        if info.contains("master_link_status:up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor main 127.0.0.1 {master_port} 1\nsentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 5000\n"
        ),
    )
    .expect("sentinel conf");
    let (_sentinel, sentinel_port) = redis_process(
        &[
            conf.to_string_lossy().into_owned(),
            "--sentinel".into(),
            "--port".into(),
            "{port}".into(),
            "--bind".into(),
            "127.0.0.1".into(),
        ],
        dir.path(),
    )
    .await;
    // The sentinel must know the replica before it can fail over to it.
    for _ in 0..150 {
        let replicas =
            value_text(&redis_query(sentinel_port, &["SENTINEL", "REPLICAS", "main"]).await);
        if replicas.contains(&replica_port.to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let node = Node::start(
        &format!("redis://127.0.0.1:{sentinel_port}"),
        "sentinel",
        &[("SYNCHUB_REDIS_SENTINEL_MASTER", "main")],
    )
    .await;
    let channel = unique("failover");
    let mut c = node.client("u").await;
    let sub = c.subscribe(&channel).await;
    let r = node
        .api("publish", json!({"channel": channel, "data": "before"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(c.publication().await.1, json!("before"));

    let failover = redis_query(sentinel_port, &["SENTINEL", "FAILOVER", "main"]).await;
    assert!(matches!(failover, redis::Value::Okay), "{failover:?}");
    let mut moved = false;
    for _ in 0..100 {
        let addr = value_text(
            &redis_query(
                sentinel_port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"],
            )
            .await,
        );
        if addr.contains(&replica_port.to_string()) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "sentinel did not fail over");

    // Publishing resumes on the new master (refusals are retryable 108s meanwhile).
    let mut acked = false;
    for _ in 0..100 {
        let r = node
            .api("publish", json!({"channel": channel, "data": "after"}))
            .await;
        if r.get("result").is_some() {
            acked = true;
            break;
        }
        assert_eq!(r["error"]["code"], 108, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(acked, "publishing never resumed after the failover");
    // The subscriber gets it: live, or by recovering after a 2500.
    let mut offset = 1;
    let mut epoch = sub.epoch.clone();
    loop {
        let push = c.push().await;
        if let Some(p) = push.r#pub {
            if p.data.as_ref() == b"\"after\"" {
                break;
            }
            offset = p.offset;
            continue;
        }
        if let Some(u) = push.unsubscribe {
            assert_eq!(u.code, 2500);
            let r = c
                .subscribe_with(synchub::protocol::SubscribeRequest {
                    channel: channel.clone(),
                    recover: true,
                    offset,
                    epoch: epoch.clone(),
                    ..Default::default()
                })
                .await
                .subscribe
                .expect("resubscribed");
            assert!(r.recovered, "{r:?}");
            if r.publications
                .iter()
                .any(|p| p.data.as_ref() == b"\"after\"")
            {
                break;
            }
            epoch = r.epoch;
        }
    }
}
