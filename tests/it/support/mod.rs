//! Test support: the real application on port 0, a protocol client over a
//! real WebSocket, and server API helpers.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use synchub::auth::{ConnectClaims, SubscribeClaims, mint, now_unix};
use synchub::config::{Config, Secret, TenantConfig};
use synchub::protocol::{
    Command, ConnectRequest, ConnectResult, Encoding, FrameBuilder, Reply, SubscribeRequest,
    SubscribeResult,
};
use synchub::startup::Application;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-hmac-secret-0123456789";
pub const API_KEY: &str = "test-api-key-0123456789";
pub const OTHER_TENANT_KEY: &str = "other-tenant-key-0123456789";

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a node on 127.0.0.1:0 with a fresh data dir; `tweak` adjusts the config.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.auth.token_hmac_secret = Some(Secret::new(SECRET));
        config.api.key = Some(Secret::new(API_KEY));
        config.tenants.insert(
            "other".into(),
            TenantConfig {
                api_key: Secret::new(OTHER_TENANT_KEY),
            },
        );
        config.shutdown_timeout = Duration::from_secs(5);
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let app = Application::build(config).await.expect("app builds");
        let addr = app.addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            http: reqwest::Client::new(),
            stop: Some(tx),
            handle: Some(handle),
            _dir: dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the node and waits for the drain to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await.expect("app task"),
            None => Ok(()),
        }
    }

    /// `POST /api/<method>` with the default tenant's key; returns the JSON body.
    pub async fn api(&self, method: &str, body: Value) -> Value {
        self.api_with_key(API_KEY, method, body).await
    }

    pub async fn api_with_key(&self, key: &str, method: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url(&format!("/api/{method}")))
            .header("X-API-Key", key)
            .json(&body)
            .send()
            .await
            .expect("api request");
        assert_eq!(resp.status(), 200, "api {method} status");
        resp.json().await.expect("api json")
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let r = self
            .api("publish", json!({"channel": channel, "data": data}))
            .await;
        assert!(r.get("error").is_none(), "publish failed: {r}");
        r["result"].clone()
    }

    pub async fn client(&self, encoding: Encoding) -> WsClient {
        WsClient::open(&self.ws_url(), encoding).await
    }

    /// A connected JSON client for `user`.
    pub async fn connected(&self, user: &str) -> WsClient {
        let mut c = self.client(Encoding::Json).await;
        c.connect(&token(user)).await;
        c
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Tests that start several processes (nodes, SDK runners, redis-server)
/// take this lock so that, on a small machine, they do not starve each other
/// into timeouts; light tests keep running in parallel.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

pub fn token(user: &str) -> String {
    token_with(ConnectClaims {
        sub: user.into(),
        exp: Some(now_unix() + 3600),
        ..Default::default()
    })
}

pub fn token_with(claims: ConnectClaims) -> String {
    mint(SECRET, &claims).expect("mint")
}

pub fn sub_token(user: &str, channel: &str) -> String {
    mint(
        SECRET,
        &SubscribeClaims {
            sub: user.into(),
            channel: channel.into(),
            exp: Some(now_unix() + 3600),
            ..Default::default()
        },
    )
    .expect("mint")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A protocol client over a real WebSocket that records everything it gets.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub encoding: Encoding,
    next_id: u32,
    /// Replies and pushes received but not yet asked for.
    pending: VecDeque<Reply>,
    /// Answer server pings automatically.
    pub auto_pong: bool,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

const WAIT: Duration = Duration::from_secs(10);

impl WsClient {
    pub async fn open(url: &str, encoding: Encoding) -> Self {
        let mut request = url.into_client_request().expect("request");
        if encoding == Encoding::Protobuf {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "centrifuge-protobuf".parse().expect("header"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("ws connect");
        Self {
            ws,
            encoding,
            next_id: 0,
            pending: VecDeque::new(),
            auto_pong: true,
        }
    }

    pub fn next_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends several commands in one frame.
    pub async fn send_many(&mut self, commands: &[Command]) {
        let mut frame = FrameBuilder::new(self.encoding);
        for c in commands {
            frame.push(&self.encoding.encode_command(c).expect("encode"));
        }
        self.send_raw(frame.take()).await;
    }

    pub async fn send(&mut self, command: Command) {
        self.send_many(&[command]).await;
    }

    /// Sends raw bytes as a frame of this client's type.
    pub async fn send_raw(&mut self, bytes: Bytes) {
        let msg = match self.encoding {
            Encoding::Json => {
                Message::Text(String::from_utf8(bytes.to_vec()).expect("utf8").into())
            }
            Encoding::Protobuf => Message::Binary(bytes),
        };
        self.ws.send(msg).await.expect("send");
    }

    pub async fn send_message(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Reads the next server message (reply, push or ping), waiting up to 5 s.
    /// Panics on close; use `closed` to expect one.
    pub async fn next(&mut self) -> Reply {
        if let Some(r) = self.pending.pop_front() {
            return r;
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a server message")
                .expect("connection ended")
                .expect("read");
            let bytes: Bytes = match msg {
                Message::Text(t) => Bytes::from(t.as_str().to_owned()),
                Message::Binary(b) => b,
                Message::Close(f) => panic!("connection closed: {f:?}"),
                _ => continue,
            };
            if self.encoding == Encoding::Json {
                assert!(!bytes.is_empty());
            }
            let replies = self.encoding.decode_replies(&bytes).expect("decode");
            for r in replies {
                if r.id == 0 && r.push.is_none() && r.error.is_none() && self.auto_pong {
                    self.send(Command::default()).await;
                    continue;
                }
                self.pending.push_back(r);
            }
            if let Some(r) = self.pending.pop_front() {
                return r;
            }
        }
    }

    /// The next message, or how the connection ended.
    pub async fn next_or_close(&mut self) -> Result<Reply, Closed> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Ok(r);
            }
            let msg = match self.ws.next().await {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => {
                    return Err(Closed {
                        code: 0,
                        reason: String::new(),
                    });
                }
            };
            let bytes: Bytes = match msg {
                Message::Text(t) => Bytes::from(t.as_str().to_owned()),
                Message::Binary(b) => b,
                Message::Close(f) => {
                    return Err(f
                        .map(|f| Closed {
                            code: f.code.into(),
                            reason: f.reason.to_string(),
                        })
                        .unwrap_or(Closed {
                            code: 0,
                            reason: String::new(),
                        }));
                }
                _ => continue,
            };
            for r in self.encoding.decode_replies(&bytes).expect("decode") {
                self.pending.push_back(r);
            }
        }
    }

    /// Waits for the reply to command `id`, keeping pushes for later.
    pub async fn reply_to(&mut self, id: u32) -> Reply {
        let mut skipped = VecDeque::new();
        let found = loop {
            let r = self.next().await;
            if r.id == id {
                break r;
            }
            skipped.push_back(r);
        };
        while let Some(r) = skipped.pop_back() {
            self.pending.push_front(r);
        }
        found
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&mut self, mut command: Command) -> Reply {
        command.id = self.next_id();
        let id = command.id;
        self.send(command).await;
        self.reply_to(id).await
    }

    pub async fn connect(&mut self, token: &str) -> ConnectResult {
        let r = self
            .call(Command {
                connect: Some(ConnectRequest {
                    token: token.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        assert!(r.error.is_none(), "connect failed: {:?}", r.error);
        r.connect.expect("connect result")
    }

    pub async fn subscribe_with(&mut self, req: SubscribeRequest) -> Reply {
        self.call(Command {
            subscribe: Some(req),
            ..Default::default()
        })
        .await
    }

    pub async fn subscribe(&mut self, channel: &str) -> SubscribeResult {
        let r = self
            .subscribe_with(SubscribeRequest {
                channel: channel.into(),
                ..Default::default()
            })
            .await;
        assert!(
            r.error.is_none(),
            "subscribe {channel} failed: {:?}",
            r.error
        );
        r.subscribe.expect("subscribe result")
    }

    /// The next push (skipping nothing else: replies here are a test error).
    pub async fn push(&mut self) -> synchub::protocol::Push {
        let r = self.next().await;
        match r.push {
            Some(p) => p,
            None => panic!("expected a push, got {r:?}"),
        }
    }

    /// The data of the next publication push on any channel.
    pub async fn publication(&mut self) -> (String, Value, u64) {
        let p = self.push().await;
        let publication = p
            .r#pub
            .unwrap_or_else(|| panic!("expected a publication push on {}", p.channel));
        (
            p.channel,
            serde_json::from_slice(&publication.data).expect("json data"),
            publication.offset,
        )
    }

    /// Waits for the server to close the connection; returns code and reason.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Closed {
                        code: 0,
                        reason: String::new(),
                    };
                }
                Some(Err(_)) => {
                    return Closed {
                        code: 0,
                        reason: "transport error".into(),
                    };
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Asserts nothing but pings arrives for `wait` (answering them when `auto_pong`).
    pub async fn nothing_for(&mut self, wait: Duration) {
        if let Some(r) = self.pending.pop_front() {
            panic!("unexpected message {r:?}");
        }
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            let bytes: Bytes = match msg {
                Some(Ok(Message::Text(t))) => Bytes::from(t.as_str().to_owned()),
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Close(f))) => panic!("connection closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("read error: {e}"),
                None => panic!("connection ended"),
            };
            for r in self.encoding.decode_replies(&bytes).expect("decode") {
                let is_ping = r.id == 0 && r.push.is_none() && r.error.is_none();
                assert!(is_ping, "unexpected message {r:?}");
                if self.auto_pong {
                    self.send(Command::default()).await;
                }
            }
        }
    }

    /// Drops the TCP connection without a close handshake.
    pub fn drop_transport(self) {
        drop(self.ws);
    }
}
