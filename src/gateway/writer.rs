//! The writer task of one session: drains the bounded queue into frames,
//! sends server pings on a timer (independent of traffic: centrifuge-python
//! re-arms its ping watchdog only on pings) and closes the connection when
//! no pong comes back in time or when the session is told to close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::SinkExt as _;
use futures::stream::SplitSink;
use rand::Rng as _;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::hub::session::Outbound;
use crate::protocol::{Disconnect, Encoding, FrameBuilder, Reply};

pub struct Writer {
    pub sink: SplitSink<WebSocket, Message>,
    pub outbound: Arc<Outbound>,
    pub encoding: Encoding,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Set when a ping is out; the session task clears it on a pong.
    pub pong_pending: Arc<AtomicBool>,
    /// Fires once the client is connected: pings start then.
    pub start_pings: oneshot::Receiver<()>,
    /// Cancelled by the writer when it stops, so the session task stops too.
    pub done: CancellationToken,
}

enum WriteError {
    Failed,
}

impl Writer {
    pub async fn run(mut self) {
        let disconnect = self.run_inner().await;
        if let Some(d) = disconnect {
            metrics::counter!(crate::metrics::DISCONNECTS, "code" => d.code.to_string())
                .increment(1);
            tracing::debug!(code = d.code, reason = %d.reason, "closing connection");
            let frame = CloseFrame {
                code: d.code,
                reason: Utf8Bytes::from(d.reason),
            };
            let _ = tokio::time::timeout(
                self.write_timeout,
                self.sink.send(Message::Close(Some(frame))),
            )
            .await;
        }
        let _ = tokio::time::timeout(self.write_timeout, self.sink.close()).await;
        self.done.cancel();
    }

    fn frame(&self, bytes: Bytes) -> Message {
        match self.encoding {
            Encoding::Protobuf => Message::Binary(bytes),
            // JSON output is produced by serde_json and is always UTF-8.
            Encoding::Json => match Utf8Bytes::try_from(bytes) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
            },
        }
    }

    async fn write(&mut self, messages: &[Bytes]) -> Result<(), WriteError> {
        let mut builder = FrameBuilder::new(self.encoding);
        for m in messages {
            if !builder.is_empty() && builder.len() + m.len() > self.max_frame_bytes {
                let frame = self.frame(builder.take());
                self.feed(frame).await?;
            }
            builder.push(m);
        }
        if !builder.is_empty() {
            let frame = self.frame(builder.take());
            self.feed(frame).await?;
        }
        match tokio::time::timeout(self.write_timeout, self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteError::Failed),
        }
    }

    async fn feed(&mut self, frame: Message) -> Result<(), WriteError> {
        match tokio::time::timeout(self.write_timeout, self.sink.feed(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteError::Failed),
        }
    }

    /// Returns the disconnect to send, or `None` when the transport is gone.
    async fn run_inner(&mut self) -> Option<Disconnect> {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut next_ping = far;
        let mut pong_deadline = far;
        let mut started = false;
        let ping = self
            .encoding
            .encode_reply(&Reply::ping())
            .unwrap_or_default();
        loop {
            tokio::select! {
                biased;
                () = self.done.cancelled() => return None,
                drained = self.outbound.next() => {
                    let slow = drained.close.as_ref().is_some_and(|d| d.code == Disconnect::slow().code);
                    if !slow && !drained.messages.is_empty() && self.write(&drained.messages).await.is_err() {
                        return None;
                    }
                    if let Some(d) = drained.close {
                        return Some(d);
                    }
                }
                r = &mut self.start_pings, if !started => {
                    started = true;
                    if r.is_ok() {
                        // The first ping comes at a random point in the second half of
                        // the interval, so mass reconnects do not ping in lockstep.
                        let half = self.ping_interval / 2;
                        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
                        next_ping = Instant::now() + half + Duration::from_millis(jitter);
                    }
                }
                () = sleep_until(next_ping) => {
                    self.pong_pending.store(true, Ordering::SeqCst);
                    if self.write(std::slice::from_ref(&ping)).await.is_err() {
                        return None;
                    }
                    pong_deadline = Instant::now() + self.pong_timeout;
                    next_ping = Instant::now() + self.ping_interval;
                }
                () = sleep_until(pong_deadline) => {
                    pong_deadline = far;
                    if self.pong_pending.load(Ordering::SeqCst) {
                        return Some(Disconnect::no_pong());
                    }
                }
            }
        }
    }
}
