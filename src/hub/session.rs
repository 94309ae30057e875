//! What the rest of the node may hold of a client session: its identity, its
//! outgoing queue and its event inbox. The session task owns the socket; the
//! hub, the API and the fan-out reach it only through this handle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use crate::protocol::{Disconnect, Encoding, UnsubscribeCode};

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue was over its byte bound: the session is being closed as slow.
    Overflow,
    /// The session is already closing.
    Closed,
}

/// A session's outgoing queue, bounded in bytes.
///
/// Overflow policy: a push that would exceed the bound closes the session
/// with 3008 (slow) instead of waiting, so fan-out never blocks on a client.
pub struct Outbound {
    inner: Mutex<OutboundInner>,
    notify: Notify,
    max_bytes: usize,
}

#[derive(Default)]
struct OutboundInner {
    queue: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Disconnect>,
}

/// What the writer takes from the queue in one go.
pub struct Drained {
    pub messages: Vec<Bytes>,
    /// Set once the session must close: write the messages (unless the
    /// session is slow), then the close frame.
    pub close: Option<Disconnect>,
}

impl Outbound {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(OutboundInner::default()),
            notify: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboundInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues one encoded message without waiting.
    pub fn push(&self, message: Bytes) -> Result<(), QueueError> {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return Err(QueueError::Closed);
        }
        if inner.bytes + message.len() > self.max_bytes {
            inner.close = Some(Disconnect::slow());
            inner.queue.clear();
            inner.bytes = 0;
            drop(inner);
            metrics::counter!(crate::metrics::QUEUE_OVERFLOWS).increment(1);
            self.notify.notify_one();
            return Err(QueueError::Overflow);
        }
        inner.bytes += message.len();
        inner.queue.push_back(message);
        drop(inner);
        self.notify.notify_one();
        Ok(())
    }

    /// Asks the writer to close the session. The first reason wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut inner = self.lock();
        if inner.close.is_none() {
            inner.close = Some(disconnect);
        }
        drop(inner);
        self.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Takes everything queued, waiting until there is something (or a close).
    /// Cancel safe: nothing is taken unless this returns.
    pub async fn next(&self) -> Drained {
        loop {
            let notified = self.notify.notified();
            {
                let mut inner = self.lock();
                if !inner.queue.is_empty() || inner.close.is_some() {
                    inner.bytes = 0;
                    return Drained {
                        messages: inner.queue.drain(..).collect(),
                        close: inner.close.clone(),
                    };
                }
            }
            notified.await;
        }
    }
}

/// Server-side requests a session handles on its own task, in order.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// End a subscription and tell the client with this code.
    Unsubscribe {
        channel: Arc<str>,
        code: UnsubscribeCode,
    },
    /// Subscribe the client (server API `subscribe`).
    Subscribe {
        channel: String,
        data: Option<Bytes>,
    },
    /// Renew the connection's expiry (server API `refresh`); `expired` ends it.
    Refresh {
        expired: bool,
        expire_at: Option<i64>,
    },
}

/// The shared part of one session.
pub struct SessionShared {
    pub client: Arc<str>,
    pub tenant: Arc<str>,
    pub user: Arc<str>,
    pub encoding: Encoding,
    pub outbound: Arc<Outbound>,
    events: mpsc::Sender<SessionEvent>,
}

/// A cheap handle to a session.
#[derive(Clone)]
pub struct SessionHandle(Arc<SessionShared>);

impl std::ops::Deref for SessionHandle {
    type Target = SessionShared;
    fn deref(&self) -> &SessionShared {
        &self.0
    }
}

/// Events a session may have waiting before it is considered stuck.
pub const SESSION_EVENTS: usize = 64;

impl SessionHandle {
    pub fn new(
        client: Arc<str>,
        tenant: Arc<str>,
        user: Arc<str>,
        encoding: Encoding,
        outbound: Arc<Outbound>,
    ) -> (Self, mpsc::Receiver<SessionEvent>) {
        let (tx, rx) = mpsc::channel(SESSION_EVENTS);
        (
            Self(Arc::new(SessionShared {
                client,
                tenant,
                user,
                encoding,
                outbound,
                events: tx,
            })),
            rx,
        )
    }

    /// Queues an encoded message; an overflow closes the session as slow.
    pub fn send(&self, message: Bytes) -> Result<(), QueueError> {
        let r = self.outbound.push(message);
        if r.is_ok() {
            metrics::counter!(crate::metrics::DELIVERIES).increment(1);
        }
        r
    }

    /// Hands an event to the session task. A session that does not keep up
    /// with its events has lost track of its state: it is closed with 3010
    /// and its SDK reconnects and recovers.
    pub fn notify(&self, event: SessionEvent) {
        if self.events.try_send(event).is_err() {
            self.outbound.close(Disconnect::insufficient_state());
        }
    }

    pub fn disconnect(&self, disconnect: Disconnect) {
        self.outbound.close(disconnect);
    }

    pub fn same(&self, other: &SessionHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_the_session_as_slow_and_drops_the_backlog() {
        let q = Outbound::new(10);
        q.push(Bytes::from_static(b"12345")).unwrap();
        q.push(Bytes::from_static(b"12345")).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"1")), Err(QueueError::Overflow));
        assert_eq!(q.push(Bytes::from_static(b"1")), Err(QueueError::Closed));
        let drained = futures::executor::block_on(q.next());
        assert!(drained.messages.is_empty());
        assert_eq!(drained.close.unwrap().code, 3008);
    }

    #[test]
    fn first_close_reason_wins() {
        let q = Outbound::new(100);
        q.close(Disconnect::shutdown());
        q.close(Disconnect::bad_request());
        assert_eq!(
            futures::executor::block_on(q.next()).close.unwrap().code,
            3001
        );
    }

    #[tokio::test]
    async fn writer_wakes_for_a_message_pushed_while_it_waits() {
        let q = Arc::new(Outbound::new(100));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await.messages });
        tokio::task::yield_now().await;
        q.push(Bytes::from_static(b"x")).unwrap();
        assert_eq!(waiter.await.unwrap(), vec![Bytes::from_static(b"x")]);
        assert_eq!(q.queued_bytes(), 0);
    }
}
