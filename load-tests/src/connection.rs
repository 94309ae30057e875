//! One subscriber: a WebSocket client that connects, subscribes to one
//! channel and records every publication it receives until told to stop.
//!
//! The task owns its socket and nothing else is shared with it except two
//! bounded queues (readiness, latency batches) and the stop token, so the
//! per-message path takes no lock. It answers every server ping with a pong,
//! as the protocol requires, and never reconnects: a dropped connection is a
//! result to report, not something to paper over.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use synchub::protocol::{Command, ConnectRequest, Encoding, FrameBuilder, Reply, SubscribeRequest};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::accounting::{Receipt, ReceivedSeqs, SeqSpace};
use crate::latency::{LatencyBatch, LatencyRecorder, unix_nanos};
use crate::publisher::LoadData;

const CONNECT_ID: u32 = 1;
const SUBSCRIBE_ID: u32 = 2;
/// Bytes read from the socket at a time; one publication frame is ~100 bytes.
const READ_BUFFER: usize = 4 * 1024;
/// The subprotocol the official Protobuf SDKs offer.
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// What one connection needs to know.
pub struct ConnParams {
    pub ws_url: String,
    pub encoding: Encoding,
    pub token: String,
    pub channel_name: String,
    pub channel: u64,
    pub space: SeqSpace,
    /// Time allowed from dialling to the subscribe reply.
    pub handshake_timeout: Duration,
}

/// Sent once per connection when its handshake ends.
#[derive(Debug)]
pub enum Ready {
    Subscribed,
    Failed(String),
}

/// How a connection ended before we closed it ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The close code, `None` when the socket died without a close frame.
    pub code: Option<u16>,
    pub reason: String,
}

/// What one connection saw, handed back when it ends.
pub struct ConnReport {
    pub subscribed: bool,
    pub failure: Option<String>,
    pub dropped: Option<Dropped>,
    /// `unsubscribe` pushes received (the server dropped our subscription).
    pub unsubscribed: Option<u32>,
    pub received: ReceivedSeqs,
    pub decode_errors: u64,
}

/// What the socket loop does after a frame.
enum Step {
    /// Keep reading, after answering this many server pings.
    Continue {
        pings: usize,
    },
    Stop,
}

/// What one reply asks for.
enum Action {
    Continue,
    Pong,
    Stop,
}

struct Session {
    encoding: Encoding,
    space: SeqSpace,
    report: ConnReport,
    latency: LatencyRecorder,
    ready: Option<mpsc::Sender<Ready>>,
}

/// Runs one connection until `stop` fires or the connection ends.
pub async fn run(
    params: ConnParams,
    ready: mpsc::Sender<Ready>,
    latency: mpsc::Sender<LatencyBatch>,
    stop: CancellationToken,
) -> ConnReport {
    let mut session = Session {
        encoding: params.encoding,
        space: params.space,
        report: ConnReport {
            subscribed: false,
            failure: None,
            dropped: None,
            unsubscribed: None,
            received: ReceivedSeqs::new(params.channel, params.space),
            decode_errors: 0,
        },
        latency: LatencyRecorder::new(latency),
        ready: Some(ready),
    };
    let handshake = tokio::time::sleep(params.handshake_timeout);
    tokio::pin!(handshake);

    let dial = tokio::select! {
        _ = stop.cancelled() => None,
        _ = &mut handshake => Some(Err("timed out dialling".to_owned())),
        dialled = dial(&params) => Some(dialled),
    };
    let mut ws = match dial {
        None => return session.finish().await,
        Some(Err(e)) => {
            session.fail(e);
            return session.finish().await;
        }
        Some(Ok(ws)) => ws,
    };

    loop {
        let subscribed = session.report.subscribed;
        let step = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                // Closing is a courtesy to the hub; do not let it hold up the report.
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                break;
            }
            _ = &mut handshake, if !subscribed => {
                session.fail("no subscribe reply before the handshake timeout".to_owned());
                break;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => session.on_frame(text.as_bytes()),
                Some(Ok(Message::Binary(bytes))) => session.on_frame(&bytes),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    });
                    session.ended(code, reason);
                    Step::Stop
                }
                // Transport-level ping/pong is answered by tungstenite itself.
                Some(Ok(_)) => Step::Continue { pings: 0 },
                Some(Err(e)) => {
                    session.ended(None, e.to_string());
                    Step::Stop
                }
                None => {
                    session.ended(None, "stream ended".to_owned());
                    Step::Stop
                }
            },
        };
        session.latency.maybe_flush();
        match step {
            Step::Stop => break,
            Step::Continue { pings } => {
                for _ in 0..pings {
                    if let Err(e) = pong(session.encoding, &mut ws).await {
                        session.ended(None, e);
                        break;
                    }
                }
                if session.report.dropped.is_some() || session.report.failure.is_some() {
                    break;
                }
            }
        }
    }
    session.finish().await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the socket and sends connect and subscribe in one frame, as
/// centrifuge-js does.
async fn dial(params: &ConnParams) -> Result<Ws, String> {
    let mut request = params
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad --ws-url: {e}"))?;
    if params.encoding == Encoding::Protobuf {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(PROTOBUF_SUBPROTOCOL),
        );
    }
    // tungstenite zero-fills `read_buffer_size` bytes before every socket
    // read; at the default 128 KiB that memset costs more than decoding the
    // small frames this scenario receives, times thousands of sockets.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| format!("dial: {e}"))?;

    let connect = Command {
        id: CONNECT_ID,
        connect: Some(ConnectRequest {
            token: params.token.clone(),
            name: "synchub-load".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let subscribe = Command {
        id: SUBSCRIBE_ID,
        subscribe: Some(SubscribeRequest {
            channel: params.channel_name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut frame = FrameBuilder::new(params.encoding);
    for command in [&connect, &subscribe] {
        let encoded = params
            .encoding
            .encode_command(command)
            .map_err(|e| format!("encode: {e}"))?;
        frame.push(&encoded);
    }
    ws.send(to_message(params.encoding, frame.take()))
        .await
        .map_err(|e| format!("send connect+subscribe: {e}"))?;
    Ok(ws)
}

fn to_message(encoding: Encoding, frame: Bytes) -> Message {
    match encoding {
        // Our own encoder produced it from serde_json, so it is UTF-8.
        Encoding::Json => Message::text(String::from_utf8_lossy(&frame).into_owned()),
        Encoding::Protobuf => Message::Binary(frame),
    }
}

/// Answers a server ping: the protocol wants an empty command back or it
/// closes the connection.
async fn pong(encoding: Encoding, ws: &mut Ws) -> Result<(), String> {
    let encoded = encoding
        .encode_command(&Command::default())
        .map_err(|e| format!("encode pong: {e}"))?;
    let mut frame = FrameBuilder::new(encoding);
    frame.push(&encoded);
    ws.send(to_message(encoding, frame.take()))
        .await
        .map_err(|e| format!("send pong: {e}"))
}

// The per-message path below is synchronous and borrows the decoded replies:
// a `Reply` is over a kilobyte, and moving it into async state per message
// showed up in profiles as memmove.
impl Session {
    fn on_frame(&mut self, frame: &[u8]) -> Step {
        let replies = match self.encoding.decode_replies(frame) {
            Ok(replies) => replies,
            Err(_) => {
                self.report.decode_errors += 1;
                return Step::Continue { pings: 0 };
            }
        };
        let mut pings = 0;
        for reply in &replies {
            match self.on_reply(reply) {
                Action::Continue => {}
                Action::Pong => pings += 1,
                Action::Stop => return Step::Stop,
            }
        }
        Step::Continue { pings }
    }

    fn on_reply(&mut self, reply: &Reply) -> Action {
        match reply.id {
            0 => {}
            CONNECT_ID => {
                if let Some(e) = &reply.error {
                    self.fail(format!("connect error {}: {}", e.code, e.message));
                    return Action::Stop;
                }
                return Action::Continue;
            }
            SUBSCRIBE_ID => {
                if let Some(e) = &reply.error {
                    self.fail(format!("subscribe error {}: {}", e.code, e.message));
                    return Action::Stop;
                }
                self.report.subscribed = true;
                if let Some(ready) = self.ready.take() {
                    // The queue holds one slot per connection: never full.
                    let _ = ready.try_send(Ready::Subscribed);
                }
                return Action::Continue;
            }
            _ => return Action::Continue,
        }
        let Some(push) = &reply.push else {
            // An empty reply is the server's ping.
            return Action::Pong;
        };
        if let Some(publication) = &push.r#pub {
            match serde_json::from_slice::<LoadData>(&publication.data) {
                Ok(data) => self.on_publication(data),
                Err(_) => self.report.decode_errors += 1,
            }
        } else if let Some(unsubscribe) = &push.unsubscribe {
            self.report.unsubscribed = Some(unsubscribe.code);
        }
        Action::Continue
    }

    fn on_publication(&mut self, data: LoadData) {
        let now = unix_nanos();
        if let Receipt::First = self.report.received.record(data.seq) {
            let latency = self
                .space
                .is_measured(data.seq)
                .then(|| now.saturating_sub(data.ts));
            self.latency.delivered(latency);
        }
    }

    /// The handshake failed: report it once.
    fn fail(&mut self, reason: String) {
        if let Some(ready) = self.ready.take() {
            // The queue holds one slot per connection: never full.
            let _ = ready.try_send(Ready::Failed(reason.clone()));
        }
        self.report.failure = Some(reason);
    }

    /// The connection ended without us asking: a failure during the
    /// handshake, a disconnect after it.
    fn ended(&mut self, code: Option<u16>, reason: String) {
        if self.report.subscribed {
            self.report.dropped = Some(Dropped { code, reason });
        } else {
            let code = code.map_or_else(|| "no close frame".to_owned(), |c| format!("close {c}"));
            self.fail(format!("{code} during handshake: {reason}"));
        }
    }

    async fn finish(mut self) -> ConnReport {
        if let Some(ready) = self.ready.take() {
            let _ = ready.try_send(Ready::Failed("stopped before subscribing".to_owned()));
        }
        self.latency.finish().await;
        self.report
    }
}
