//! A minimal stand-in hub for testing the load generator end to end without
//! the real server: connect, subscribe, one server ping per connection
//! (whose pong it counts), and `POST /api/publish` fanned out to every
//! subscriber in either encoding. It can drop chosen seqs or duplicate
//! them, so loss and duplicate detection are tested through the front door.
//! Test-only; it implements just enough of the protocol for one scenario.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use synchub::protocol::{
    ConnectResult, Encoding, FrameBuilder, Publication, Push, Reply, SubscribeResult,
};
use tokio::sync::mpsc;

pub const API_KEY: &str = "test-key";

#[derive(Default)]
pub struct Faults {
    /// Seqs never delivered to anyone.
    pub drop_seqs: HashSet<u64>,
    /// Seqs delivered twice to everyone.
    pub duplicate_seqs: HashSet<u64>,
    /// Instead of delivering this seq, close its subscribers with code 3008.
    pub close_at_seq: Option<u64>,
}

/// Each channel's subscribers: their encoding and outgoing queue.
type Subscribers = HashMap<String, Vec<(Encoding, mpsc::UnboundedSender<Out>)>>;

#[derive(Default)]
pub struct Hub {
    subscribers: Mutex<Subscribers>,
    pub pongs: AtomicU64,
    pub faults: Faults,
}

/// Serves the mock hub on an ephemeral port, on a thread and runtime of its
/// own so its CPU time can be told apart from the generator's.
pub async fn start(faults: Faults) -> (SocketAddr, Arc<Hub>) {
    let hub = Arc::new(Hub {
        faults,
        ..Hub::default()
    });
    let app = Router::new()
        .route("/connection/websocket", any(upgrade))
        .route("/api/publish", post(publish))
        .with_state(hub.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::Builder::new()
        .name(MOCK_THREAD.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        })
        .unwrap();
    (addr, hub)
}

/// The name of the mock hub's thread.
pub const MOCK_THREAD: &str = "mock-hub";

/// What a session writes: encoded replies (batched into frames) or a close.
#[derive(Clone)]
enum Out {
    Encoded(Bytes),
    Close(u16),
}

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> impl IntoResponse {
    let ws = ws.protocols(["centrifuge-protobuf"]);
    let encoding = if ws.selected_protocol().is_some() {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    ws.on_upgrade(move |socket| session(hub, socket, encoding))
}

fn encoded(encoding: Encoding, reply: &Reply) -> Bytes {
    encoding.encode_reply(reply).unwrap()
}

fn frame(encoding: Encoding, bytes: Bytes) -> Message {
    match encoding {
        Encoding::Json => Message::Text(String::from_utf8(bytes.to_vec()).unwrap().into()),
        Encoding::Protobuf => Message::Binary(bytes),
    }
}

/// Most replies joined into one frame, as a real hub's writer does.
const MAX_BATCH: usize = 64;

async fn session(hub: Arc<Hub>, mut socket: WebSocket, encoding: Encoding) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut frames = FrameBuilder::new(encoding);
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(first) = out else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(out) => batch.push(out),
                        Err(_) => break,
                    }
                }
                let mut close = None;
                for out in batch {
                    match out {
                        Out::Encoded(bytes) => frames.push(&bytes),
                        Out::Close(code) => {
                            close = Some(code);
                            break;
                        }
                    }
                }
                if !frames.is_empty()
                    && socket.send(frame(encoding, frames.take())).await.is_err()
                {
                    break;
                }
                if let Some(code) = close {
                    let reason = "slow".into();
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason }))).await;
                    break;
                }
            }
            incoming = socket.recv() => {
                let data: Bytes = match incoming {
                    Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                for command in encoding.decode_commands(&data).unwrap() {
                    if command.is_pong() {
                        hub.pongs.fetch_add(1, Ordering::Relaxed);
                    } else if command.connect.is_some() {
                        let reply = Reply {
                            id: command.id,
                            connect: Some(ConnectResult {
                                client: "c".into(),
                                ping: 25,
                                pong: true,
                                ..Default::default()
                            }),
                            ..Default::default()
                        };
                        socket.send(frame(encoding, encoded(encoding, &reply))).await.unwrap();
                    } else if let Some(sub) = command.subscribe {
                        hub.subscribers
                            .lock()
                            .unwrap()
                            .entry(sub.channel)
                            .or_default()
                            .push((encoding, tx.clone()));
                        let reply = Reply {
                            id: command.id,
                            subscribe: Some(SubscribeResult::default()),
                            ..Default::default()
                        };
                        socket.send(frame(encoding, encoded(encoding, &reply))).await.unwrap();
                        socket.send(frame(encoding, encoded(encoding, &Reply::ping()))).await.unwrap();
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct Seq {
    seq: u64,
}

async fn publish(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    let request: PublishRequest = serde_json::from_slice(&body).unwrap();
    let seq = serde_json::from_str::<Seq>(request.data.get()).unwrap().seq;
    let copies = if hub.faults.drop_seqs.contains(&seq) {
        0
    } else if hub.faults.duplicate_seqs.contains(&seq) {
        2
    } else {
        1
    };
    let push = Reply::push(Push {
        channel: request.channel.clone(),
        r#pub: Some(Publication {
            data: Bytes::copy_from_slice(request.data.get().as_bytes()),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Encoded once per encoding, as a real hub would, so the mock stays cheap
    // when the generator is tested at scale.
    let frames = [
        Out::Encoded(encoded(Encoding::Json, &push)),
        Out::Encoded(encoded(Encoding::Protobuf, &push)),
    ];
    let subscribers = hub.subscribers.lock().unwrap();
    for (encoding, tx) in subscribers.get(&request.channel).into_iter().flatten() {
        if hub.faults.close_at_seq == Some(seq) {
            let _ = tx.send(Out::Close(3008));
            continue;
        }
        let frame = &frames[usize::from(*encoding == Encoding::Protobuf)];
        for _ in 0..copies {
            let _ = tx.send(frame.clone());
        }
    }
    (StatusCode::OK, r#"{"result":{}}"#.to_owned())
}
