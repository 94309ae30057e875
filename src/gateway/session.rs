//! One client session: reads frames, handles commands strictly in order,
//! keeps the session's subscriptions, and cleans up when the connection ends.
//!
//! Ordering contract: a connection's commands are handled one after the
//! other, each reply queued before the next command starts (centrifuge-js
//! sends `connect` and its subscriptions in one frame). A subscribe reply is
//! queued before any live publication of that channel (see `hub::Subscriber`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::StreamExt as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::GatewayContext;
use super::writer::Writer;
use crate::auth::{TokenError, now_unix};
use crate::broker::{HistoryQuery, HistoryRetention, PublishOptions, StreamPosition};
use crate::channel::{ChannelKey, ResolvedChannel};
use crate::hub::session::Outbound;
use crate::hub::{SessionEvent, SessionHandle, Subscriber};
use crate::protocol::{
    ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, Encoding, Error, ErrorCode,
    HistoryRequest, PresenceResult, PresenceStatsResult, PublishRequest, PublishResult, Push,
    RefreshRequest, RefreshResult, Reply, RpcRequest, RpcResult, SubRefreshRequest,
    SubRefreshResult, Subscribe, SubscribeRequest, SubscribeResult, Unsubscribe, UnsubscribeCode,
    UnsubscribeRequest, UnsubscribeResult,
};
use crate::rpc::RpcContext;

/// Subscribe `flag` bit asking for error 112 instead of `recovered: false`.
const FLAG_REJECT_UNRECOVERED: i64 = 2;

/// Why a command did not produce a normal reply.
enum Failure {
    /// An error reply; the connection stays.
    Error(Error),
    /// The connection ends with this close code.
    Disconnect(Disconnect),
}

impl From<ErrorCode> for Failure {
    fn from(code: ErrorCode) -> Self {
        Failure::Error(Error::from_code(code))
    }
}

type Handled = Result<Option<Reply>, Failure>;

struct Subscription {
    key: ChannelKey,
    resolved: ResolvedChannel,
    info: ClientInfo,
    /// Unix seconds when the subscription token expires.
    expires_at: Option<i64>,
}

struct Connected {
    handle: SessionHandle,
    user: Arc<str>,
    tenant: Arc<str>,
    roles: Arc<[String]>,
    info: Bytes,
    expires_at: Option<i64>,
    subs: HashMap<Arc<str>, Subscription>,
}

enum State {
    AwaitingConnect,
    /// `connect` was answered with an error: any further command closes.
    ConnectFailed,
    Connected(Box<Connected>),
}

struct Session {
    ctx: Arc<GatewayContext>,
    encoding: Encoding,
    client: Arc<str>,
    outbound: Arc<Outbound>,
    pong_pending: Arc<AtomicBool>,
    state: State,
    events: Option<mpsc::Receiver<SessionEvent>>,
    start_pings: Option<oneshot::Sender<()>>,
    limiter: DefaultDirectRateLimiter,
    /// Commands refused in a row by the rate limiter.
    refused: u32,
    opened: Instant,
}

/// Runs one connection until it ends.
pub async fn run(ctx: Arc<GatewayContext>, socket: WebSocket, encoding: Encoding) {
    let (sink, mut stream) = socket.split();
    let outbound = Arc::new(Outbound::new(ctx.limits.queue_max_bytes));
    let pong_pending = Arc::new(AtomicBool::new(false));
    let done = CancellationToken::new();
    let (start_tx, start_rx) = oneshot::channel();
    let writer = Writer {
        sink,
        outbound: outbound.clone(),
        encoding,
        ping_interval: ctx.limits.ping_interval,
        pong_timeout: ctx.limits.pong_timeout,
        write_timeout: ctx.limits.write_timeout,
        max_frame_bytes: ctx.limits.max_frame_bytes,
        pong_pending: pong_pending.clone(),
        start_pings: start_rx,
        done: done.clone(),
    };
    ctx.shutdown.spawn("session-writer", writer.run());

    let rate = NonZeroU32::new(ctx.limits.command_rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(ctx.limits.command_burst).unwrap_or(NonZeroU32::MIN);
    let mut session = Session {
        client: Arc::from(uuid::Uuid::new_v4().to_string()),
        ctx,
        encoding,
        outbound,
        pong_pending,
        state: State::AwaitingConnect,
        events: None,
        start_pings: Some(start_tx),
        limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        refused: 0,
        opened: Instant::now(),
    };
    tracing::debug!(client = %session.client, encoding = encoding.name(), "connection opened");

    loop {
        let deadline = session.next_deadline();
        tokio::select! {
            biased;
            () = done.cancelled() => break,
            event = recv_event(&mut session.events) => {
                if let Some(event) = event {
                    session.handle_event(event).await;
                }
            }
            () = sleep_until(deadline) => session.on_timer().await,
            message = stream.next() => {
                match message {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("Space limit exceeded") || text.contains("too long") {
                            session.outbound.close(Disconnect::message_too_big());
                        }
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        if encoding != Encoding::Json {
                            session.outbound.close(Disconnect::bad_request());
                            break;
                        }
                        session.handle_frame(text.as_bytes()).await;
                    }
                    Some(Ok(Message::Binary(data))) => {
                        if encoding != Encoding::Protobuf {
                            session.outbound.close(Disconnect::bad_request());
                            break;
                        }
                        session.handle_frame(&data).await;
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
        if session.outbound.is_closing() {
            break;
        }
    }
    session.close().await;
    // Make sure the writer ends even when the client simply went away.
    session
        .outbound
        .close(Disconnect::new(3000, "connection closed"));
}

async fn recv_event(events: &mut Option<mpsc::Receiver<SessionEvent>>) -> Option<SessionEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn retention(resolved: &ResolvedChannel) -> HistoryRetention {
    resolved.retention()
}

impl Session {
    fn connected(&mut self) -> Result<&mut Connected, Failure> {
        match &mut self.state {
            State::Connected(c) => Ok(c),
            _ => Err(Failure::Disconnect(Disconnect::bad_request())),
        }
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        match &self.state {
            State::AwaitingConnect | State::ConnectFailed => {
                self.opened + self.ctx.limits.stale_close_delay
            }
            State::Connected(c) => {
                let grace = self.ctx.limits.expired_close_delay;
                let mut at = Instant::now() + self.ctx.limits.presence_update_interval;
                let mut consider = |unix: Option<i64>| {
                    if let Some(unix) = unix {
                        let t = instant_at(unix) + grace;
                        if t < at {
                            at = t;
                        }
                    }
                };
                consider(c.expires_at);
                for s in c.subs.values() {
                    consider(s.expires_at);
                }
                at.min(far)
            }
        }
    }

    /// Stale connections, expired tokens, presence refresh.
    async fn on_timer(&mut self) {
        let now = now_unix();
        let grace = self.ctx.limits.expired_close_delay.as_secs() as i64;
        let presence_ttl = self.ctx.presence_ttl;
        let ctx = self.ctx.clone();
        match &mut self.state {
            State::AwaitingConnect | State::ConnectFailed => {
                if self.opened + self.ctx.limits.stale_close_delay <= Instant::now() {
                    self.outbound.close(Disconnect::stale());
                }
            }
            State::Connected(c) => {
                if c.expires_at.is_some_and(|at| at + grace <= now) {
                    self.outbound.close(Disconnect::expired());
                    return;
                }
                let expired: Vec<Arc<str>> = c
                    .subs
                    .iter()
                    .filter(|(_, s)| s.expires_at.is_some_and(|at| at + grace <= now))
                    .map(|(k, _)| k.clone())
                    .collect();
                for channel in expired {
                    self.server_unsubscribe(&channel, UnsubscribeCode::Expired)
                        .await;
                }
                let State::Connected(c) = &mut self.state else {
                    return;
                };
                for s in c.subs.values().filter(|s| s.resolved.options.presence) {
                    if let Err(e) = ctx
                        .hub
                        .presence()
                        .add_presence(&s.key, &s.info, presence_ttl)
                        .await
                    {
                        tracing::warn!(error = %e, "presence refresh failed");
                    }
                }
            }
        }
    }

    async fn handle_frame(&mut self, frame: &[u8]) {
        let commands = match self.encoding.decode_commands(frame) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(client = %self.client, error = %e, "malformed frame");
                self.outbound.close(Disconnect::bad_request());
                return;
            }
        };
        for command in commands {
            if self.outbound.is_closing() {
                return;
            }
            self.handle_command(command).await;
        }
    }

    async fn handle_command(&mut self, command: Command) {
        if command.is_pong() {
            if !self.pong_pending.swap(false, Ordering::SeqCst) {
                // A pong without a ping is a protocol violation.
                self.outbound.close(Disconnect::bad_request());
            }
            return;
        }
        let id = command.id;
        let method = command.method();
        if self.limiter.check().is_err() {
            self.refused += 1;
            if self.refused > self.ctx.limits.command_burst {
                self.outbound.close(Disconnect::too_many_requests());
            } else {
                self.reply(Reply::error(
                    id,
                    Error::from_code(ErrorCode::TooManyRequests),
                ));
            }
            metrics::counter!(crate::metrics::COMMAND_ERRORS, "code" => "111").increment(1);
            return;
        }
        self.refused = 0;
        let started = StdInstant::now();
        let result = self.dispatch(command).await;
        metrics::counter!(crate::metrics::COMMANDS, "method" => method).increment(1);
        metrics::histogram!(crate::metrics::COMMAND_DURATION, "method" => method)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Some(reply)) => self.reply(reply),
            Ok(None) => {}
            Err(Failure::Error(error)) => {
                metrics::counter!(crate::metrics::COMMAND_ERRORS, "code" => error.code.to_string())
                    .increment(1);
                self.reply(Reply::error(id, error));
            }
            Err(Failure::Disconnect(d)) => self.outbound.close(d),
        }
    }

    fn encode(&self, reply: &Reply) -> Option<Bytes> {
        match self.encoding.encode_reply(reply) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(client = %self.client, error = %e, "reply cannot be encoded");
                self.outbound.close(Disconnect::inappropriate_protocol());
                None
            }
        }
    }

    fn reply(&self, reply: Reply) {
        if let Some(bytes) = self.encode(&reply) {
            let _ = self.outbound.push(bytes);
        }
    }

    async fn dispatch(&mut self, command: Command) -> Handled {
        let id = command.id;
        if let Some(req) = command.connect {
            return self.connect(id, req).await;
        }
        if !matches!(self.state, State::Connected(_)) {
            // Anything before a successful connect ends the connection.
            return Err(Failure::Disconnect(Disconnect::bad_request()));
        }
        if let Some(req) = command.subscribe {
            return self.subscribe(id, req).await;
        }
        if let Some(req) = command.unsubscribe {
            return self.unsubscribe(id, req).await;
        }
        if let Some(req) = command.publish {
            return self.publish(id, req).await;
        }
        if let Some(req) = command.presence {
            return self.presence(id, &req.channel).await;
        }
        if let Some(req) = command.presence_stats {
            return self.presence_stats(id, &req.channel).await;
        }
        if let Some(req) = command.history {
            return self.history(id, req).await;
        }
        if let Some(req) = command.rpc {
            return self.rpc(id, req).await;
        }
        if let Some(req) = command.refresh {
            return self.refresh(id, req);
        }
        if let Some(req) = command.sub_refresh {
            return self.sub_refresh(id, req);
        }
        if command.ping.is_some() {
            return Err(Failure::Error(Error::with_message(
                ErrorCode::NotAvailable,
                "ping is server-initiated in protocol v2",
            )));
        }
        if command.send.is_some() {
            // No asynchronous message handler exists: as Centrifugo does, close.
            return Err(Failure::Disconnect(Disconnect::not_available()));
        }
        Err(Failure::Disconnect(Disconnect::bad_request()))
    }

    async fn connect(&mut self, id: u32, req: ConnectRequest) -> Handled {
        match self.state {
            State::AwaitingConnect => {}
            State::Connected(_) | State::ConnectFailed => {
                return Err(Failure::Disconnect(Disconnect::new(
                    3501,
                    "client already authenticated",
                )));
            }
        }
        let now = now_unix();
        let (user, tenant, roles, info, expires_at) = if req.token.is_empty() {
            if !self.ctx.anonymous {
                return Err(Failure::Disconnect(Disconnect::new(
                    3501,
                    "client credentials not found",
                )));
            }
            (
                String::new(),
                crate::config::DEFAULT_TENANT.to_owned(),
                Vec::new(),
                Bytes::new(),
                None,
            )
        } else {
            match self.ctx.verifier.verify_connect(&req.token, now) {
                Ok(t) => (t.user, t.tenant, t.roles, t.info, t.expires_at),
                Err(TokenError::Expired) => {
                    self.state = State::ConnectFailed;
                    return Err(ErrorCode::TokenExpired.into());
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(client = %self.client, %reason, "invalid connection token");
                    return Err(Failure::Disconnect(Disconnect::invalid_token()));
                }
            }
        };
        if expires_at.is_some_and(|at| at <= now) {
            self.state = State::ConnectFailed;
            return Err(ErrorCode::Expired.into());
        }
        let user: Arc<str> = Arc::from(user);
        let tenant: Arc<str> = Arc::from(tenant);
        let (handle, events) = SessionHandle::new(
            self.client.clone(),
            tenant.clone(),
            user.clone(),
            self.encoding,
            self.outbound.clone(),
        );
        self.ctx.hub.register_session(handle.clone());
        for observer in &self.ctx.observers {
            observer.connected(&tenant, &user, &self.client);
        }
        self.events = Some(events);
        self.state = State::Connected(Box::new(Connected {
            handle,
            user,
            tenant,
            roles: Arc::from(roles),
            info,
            expires_at,
            subs: HashMap::new(),
        }));
        if let Some(start) = self.start_pings.take() {
            let _ = start.send(());
        }
        let mut result = ConnectResult {
            client: self.client.to_string(),
            version: super::SERVER_VERSION.to_owned(),
            ping: self.ctx.limits.ping_interval.as_secs().max(1) as u32,
            pong: true,
            ..Default::default()
        };
        if let Some(at) = expires_at {
            result.expires = true;
            result.ttl = (at - now).max(1) as u32;
        }
        tracing::debug!(client = %self.client, "connected");
        Ok(Some(Reply {
            id,
            connect: Some(result),
            ..Default::default()
        }))
    }

    async fn subscribe(&mut self, id: u32, req: SubscribeRequest) -> Handled {
        if req.channel.is_empty() {
            return Err(Failure::Disconnect(Disconnect::bad_request()));
        }
        let resolved = self.ctx.rules.resolve(&req.channel)?;
        let max_channels = self.ctx.limits.max_channels;
        let client = self.client.clone();
        let verifier = self.ctx.verifier.clone();
        let c = self.connected()?;
        if c.subs.contains_key(req.channel.as_str()) {
            return Err(ErrorCode::AlreadySubscribed.into());
        }
        if c.subs.len() >= max_channels {
            return Err(ErrorCode::LimitExceeded.into());
        }
        let mut grant = Grant::default();
        if resolved.private || !req.token.is_empty() {
            if req.token.is_empty() {
                return Err(ErrorCode::PermissionDenied.into());
            }
            match verifier.verify_subscribe(&req.token, now_unix()) {
                Ok(t) => {
                    if t.channel != req.channel
                        || t.user != *c.user
                        || t.client.as_deref().is_some_and(|tc| tc != &*client)
                    {
                        return Err(Failure::Disconnect(Disconnect::invalid_token()));
                    }
                    grant = Grant {
                        chan_info: t.info,
                        data: t.data,
                        expires_at: t.expires_at,
                    };
                }
                Err(TokenError::Expired) => return Err(ErrorCode::TokenExpired.into()),
                Err(TokenError::Invalid(_)) => return Err(ErrorCode::PermissionDenied.into()),
            }
        }
        if let Some(users) = &resolved.allowed_users
            && !users.iter().any(|u| **u == *c.user)
        {
            return Err(ErrorCode::PermissionDenied.into());
        }
        self.start_subscription(Target::Reply(id), req, resolved, grant)
            .await
    }

    /// The subscribe sequence shared by client subscribes and server-side
    /// (API) subscribes: register (buffering), read the stream position or
    /// recover, announce presence, then send the reply before any live
    /// publication.
    async fn start_subscription(
        &mut self,
        target: Target,
        req: SubscribeRequest,
        resolved: ResolvedChannel,
        grant: Grant,
    ) -> Handled {
        let ctx = self.ctx.clone();
        let recovery_max = ctx.limits.recovery_max_publications;
        let presence_ttl = ctx.presence_ttl;
        let client = self.client.clone();
        let c = self.connected()?;
        let channel: Arc<str> = Arc::from(req.channel.as_str());
        let key = ChannelKey::new(c.tenant.clone(), channel.clone());
        let options = resolved.options.clone();
        let recoverable = options.recoverable();
        let join_leave = options.join_leave && (req.join_leave || options.force_push_join_leave);
        let subscriber =
            Subscriber::new(c.handle.clone(), channel.clone(), join_leave, recoverable);
        if let Err(e) = ctx.hub.add_subscriber(&key, subscriber.clone()).await {
            tracing::warn!(error = %e, "subscribe failed in the broker");
            return Err(ErrorCode::Internal.into());
        }
        let mut result = SubscribeResult::default();
        let mut position = StreamPosition::default();
        if recoverable {
            result.positioned = true;
            result.recoverable = true;
            let query = if req.recover {
                HistoryQuery {
                    since: Some(req.offset),
                    limit: Some(recovery_max + 1),
                    reverse: false,
                }
            } else {
                HistoryQuery {
                    since: None,
                    limit: Some(0),
                    reverse: false,
                }
            };
            let page = match ctx
                .hub
                .broker()
                .history(&key, &query, &retention(&resolved))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "history read failed while subscribing");
                    ctx.hub.remove_subscriber(&key, &client).await;
                    return Err(ErrorCode::Internal.into());
                }
            };
            position = page.position.clone();
            result.epoch = page.position.epoch.clone();
            result.offset = page.position.offset;
            if req.recover {
                result.was_recovering = true;
                let pubs = page.publications;
                let epoch_ok = req.epoch.is_empty() || req.epoch == page.position.epoch;
                let complete = match (pubs.first(), pubs.last()) {
                    (None, _) | (_, None) => page.position.offset == req.offset,
                    (Some(first), Some(last)) => {
                        first.offset == req.offset + 1 && last.offset == page.position.offset
                    }
                };
                if epoch_ok && complete && pubs.len() <= recovery_max {
                    result.recovered = true;
                    result.offset = req.offset;
                    result.publications = pubs;
                } else if req.flag & FLAG_REJECT_UNRECOVERED != 0 {
                    ctx.hub.remove_subscriber(&key, &client).await;
                    return Err(ErrorCode::UnrecoverablePosition.into());
                }
            }
        }
        let now = now_unix();
        if let Some(at) = grant.expires_at {
            result.expires = true;
            result.ttl = (at - now).max(1) as u32;
        }
        result.data = grant.data.clone();
        let info = ClientInfo {
            user: c.user.to_string(),
            client: client.to_string(),
            conn_info: c.info.clone(),
            chan_info: grant.chan_info.clone(),
        };
        if options.presence
            && let Err(e) = ctx
                .hub
                .presence()
                .add_presence(&key, &info, presence_ttl)
                .await
        {
            tracing::warn!(error = %e, "presence add failed");
        }
        c.subs.insert(
            channel.clone(),
            Subscription {
                key: key.clone(),
                resolved,
                info: info.clone(),
                expires_at: grant.expires_at,
            },
        );
        let reply = match target {
            Target::Reply(id) => Reply {
                id,
                subscribe: Some(result),
                ..Default::default()
            },
            Target::Push => Reply::push(Push {
                channel: channel.to_string(),
                subscribe: Some(Subscribe {
                    recoverable: result.recoverable,
                    epoch: result.epoch,
                    offset: result.offset,
                    positioned: result.positioned,
                    data: result.data,
                }),
                ..Default::default()
            }),
        };
        match self.encoding.encode_reply(&reply) {
            Ok(bytes) => subscriber.go_live(bytes, &position),
            Err(_) => self.outbound.close(Disconnect::inappropriate_protocol()),
        }
        if options.join_leave
            && let Err(e) = ctx.hub.broker().publish_join(&key, info).await
        {
            tracing::warn!(error = %e, "join publish failed");
        }
        Ok(None)
    }

    async fn unsubscribe(&mut self, id: u32, req: UnsubscribeRequest) -> Handled {
        if req.channel.is_empty() {
            return Err(Failure::Disconnect(Disconnect::bad_request()));
        }
        let c = self.connected()?;
        if let Some(sub) = c.subs.remove(req.channel.as_str()) {
            self.drop_subscription(sub).await;
        }
        Ok(Some(Reply {
            id,
            unsubscribe: Some(UnsubscribeResult {}),
            ..Default::default()
        }))
    }

    async fn drop_subscription(&self, sub: Subscription) {
        let hub = &self.ctx.hub;
        hub.remove_subscriber(&sub.key, &self.client).await;
        if sub.resolved.options.presence
            && let Err(e) = hub.presence().remove_presence(&sub.key, &self.client).await
        {
            tracing::warn!(error = %e, "presence remove failed");
        }
        if sub.resolved.options.join_leave
            && let Err(e) = hub.broker().publish_leave(&sub.key, sub.info).await
        {
            tracing::warn!(error = %e, "leave publish failed");
        }
    }

    /// Ends a subscription from the server side and tells the client.
    async fn server_unsubscribe(&mut self, channel: &str, code: UnsubscribeCode) {
        let Ok(c) = self.connected() else { return };
        let Some(sub) = c.subs.remove(channel) else {
            return;
        };
        self.drop_subscription(sub).await;
        self.reply(Reply::push(Push {
            channel: channel.to_owned(),
            unsubscribe: Some(Unsubscribe {
                code: code.code(),
                reason: code.reason().to_owned(),
            }),
            ..Default::default()
        }));
    }

    async fn publish(&mut self, id: u32, req: PublishRequest) -> Handled {
        let resolved = self.ctx.rules.resolve(&req.channel)?;
        let hub = self.ctx.hub.clone();
        let client = self.client.clone();
        let c = self.connected()?;
        let Some(sub) = c.subs.get(req.channel.as_str()) else {
            return Err(ErrorCode::PermissionDenied.into());
        };
        if !resolved.options.allow_publish {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if req.data.is_empty() {
            return Err(ErrorCode::BadRequest.into());
        }
        let info = ClientInfo {
            user: c.user.to_string(),
            client: client.to_string(),
            conn_info: c.info.clone(),
            chan_info: sub.info.chan_info.clone(),
        };
        let options = PublishOptions {
            history: resolved
                .options
                .history_enabled()
                .then(|| retention(&resolved)),
            idempotency_key: None,
        };
        let key = sub.key.clone();
        hub.publish(
            &key,
            req.data,
            Some(info),
            Default::default(),
            &options,
            "client",
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "client publish failed");
            Failure::from(ErrorCode::Internal)
        })?;
        Ok(Some(Reply {
            id,
            publish: Some(PublishResult {}),
            ..Default::default()
        }))
    }

    /// The subscription a read command (presence, history) is about.
    fn readable(&mut self, channel: &str) -> Result<(ChannelKey, ResolvedChannel), Failure> {
        let resolved = self.ctx.rules.resolve(channel)?;
        let c = self.connected()?;
        let sub = c
            .subs
            .get(channel)
            .ok_or(Failure::from(ErrorCode::PermissionDenied))?;
        Ok((sub.key.clone(), resolved))
    }

    async fn presence(&mut self, id: u32, channel: &str) -> Handled {
        let (key, resolved) = self.readable(channel)?;
        if !resolved.options.presence {
            return Err(ErrorCode::NotAvailable.into());
        }
        if !resolved.options.allow_presence {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let presence = self.ctx.hub.presence().presence(&key).await.map_err(|e| {
            tracing::warn!(error = %e, "presence read failed");
            Failure::from(ErrorCode::Internal)
        })?;
        Ok(Some(Reply {
            id,
            presence: Some(PresenceResult { presence }),
            ..Default::default()
        }))
    }

    async fn presence_stats(&mut self, id: u32, channel: &str) -> Handled {
        let (key, resolved) = self.readable(channel)?;
        if !resolved.options.presence {
            return Err(ErrorCode::NotAvailable.into());
        }
        if !resolved.options.allow_presence {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let (num_clients, num_users) =
            self.ctx
                .hub
                .presence()
                .presence_stats(&key)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "presence stats failed");
                    Failure::from(ErrorCode::Internal)
                })?;
        Ok(Some(Reply {
            id,
            presence_stats: Some(PresenceStatsResult {
                num_clients,
                num_users,
            }),
            ..Default::default()
        }))
    }

    async fn history(&mut self, id: u32, req: HistoryRequest) -> Handled {
        let (key, resolved) = self.readable(&req.channel)?;
        if !resolved.options.history_enabled() {
            return Err(ErrorCode::NotAvailable.into());
        }
        if !resolved.options.allow_history {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let result = self
            .ctx
            .hub
            .read_history(
                &key,
                &retention(&resolved),
                req.limit,
                req.since.map(|s| (s.offset, s.epoch)),
                req.reverse,
                self.ctx.limits.history_max_publications,
            )
            .await?;
        Ok(Some(Reply {
            id,
            history: Some(result),
            ..Default::default()
        }))
    }

    async fn rpc(&mut self, id: u32, req: RpcRequest) -> Handled {
        let data = if req.data.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&req.data).map_err(|_| {
                Failure::Error(Error::with_message(
                    ErrorCode::BadRequest,
                    "rpc data must be JSON",
                ))
            })?
        };
        let rpc = self.ctx.rpc.clone();
        let node: Arc<str> = Arc::from(self.ctx.hub.node.name.as_str());
        let client = self.client.clone();
        let c = self.connected()?;
        let ctx = RpcContext {
            client,
            user: c.user.clone(),
            tenant: c.tenant.clone(),
            roles: c.roles.clone(),
            node,
        };
        match rpc.call(&req.method, ctx, data).await {
            Ok(value) => Ok(Some(Reply {
                id,
                rpc: Some(RpcResult {
                    data: Bytes::from(
                        serde_json::to_vec(&value).unwrap_or_else(|_| b"null".to_vec()),
                    ),
                }),
                ..Default::default()
            })),
            Err(e) => Err(Failure::Error(Error {
                code: e.code,
                message: e.message,
                temporary: e.temporary,
            })),
        }
    }

    fn refresh(&mut self, id: u32, req: RefreshRequest) -> Handled {
        if req.token.is_empty() {
            return Err(Failure::Disconnect(Disconnect::bad_request()));
        }
        let now = now_unix();
        let verifier = self.ctx.verifier.clone();
        let client = self.client.to_string();
        let c = self.connected()?;
        let token = match verifier.verify_connect(&req.token, now) {
            Ok(t) => t,
            Err(TokenError::Expired) => return Err(Failure::Disconnect(Disconnect::expired())),
            Err(TokenError::Invalid(_)) => {
                return Err(Failure::Disconnect(Disconnect::invalid_token()));
            }
        };
        if token.user != *c.user || token.tenant != *c.tenant {
            return Err(Failure::Disconnect(Disconnect::invalid_token()));
        }
        if token.expires_at.is_some_and(|at| at <= now) {
            return Err(Failure::Disconnect(Disconnect::expired()));
        }
        c.expires_at = token.expires_at;
        if !token.info.is_empty() {
            c.info = token.info;
        }
        let mut result = RefreshResult {
            client,
            version: super::SERVER_VERSION.to_owned(),
            ..Default::default()
        };
        if let Some(at) = c.expires_at {
            result.expires = true;
            result.ttl = (at - now).max(1) as u32;
        }
        Ok(Some(Reply {
            id,
            refresh: Some(result),
            ..Default::default()
        }))
    }

    fn sub_refresh(&mut self, id: u32, req: SubRefreshRequest) -> Handled {
        let now = now_unix();
        let verifier = self.ctx.verifier.clone();
        let client = self.client.clone();
        let c = self.connected()?;
        let user = c.user.clone();
        let Some(sub) = c.subs.get_mut(req.channel.as_str()) else {
            return Err(ErrorCode::PermissionDenied.into());
        };
        if req.token.is_empty() {
            return Err(ErrorCode::BadRequest.into());
        }
        let token = match verifier.verify_subscribe(&req.token, now) {
            Ok(t) => t,
            Err(TokenError::Expired) => return Err(ErrorCode::Expired.into()),
            Err(TokenError::Invalid(_)) => {
                return Err(Failure::Disconnect(Disconnect::invalid_token()));
            }
        };
        if token.channel != req.channel
            || token.user != *user
            || token.client.as_deref().is_some_and(|tc| tc != &*client)
        {
            return Err(Failure::Disconnect(Disconnect::invalid_token()));
        }
        sub.expires_at = token.expires_at;
        let mut result = SubRefreshResult::default();
        if let Some(at) = token.expires_at {
            result.expires = true;
            result.ttl = (at - now).max(1) as u32;
        }
        Ok(Some(Reply {
            id,
            sub_refresh: Some(result),
            ..Default::default()
        }))
    }

    async fn handle_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Unsubscribe { channel, code } => {
                self.server_unsubscribe(&channel, code).await;
            }
            SessionEvent::Subscribe { channel, data } => {
                let Ok(resolved) = self.ctx.rules.resolve(&channel) else {
                    return;
                };
                let already = self
                    .connected()
                    .map(|c| c.subs.contains_key(channel.as_str()))
                    .unwrap_or(true);
                if already {
                    return;
                }
                let grant = Grant {
                    data: data.unwrap_or_default(),
                    ..Grant::default()
                };
                let req = SubscribeRequest {
                    channel,
                    ..Default::default()
                };
                if let Err(Failure::Disconnect(d)) = self
                    .start_subscription(Target::Push, req, resolved, grant)
                    .await
                {
                    self.outbound.close(d);
                }
            }
            SessionEvent::Refresh { expired, expire_at } => {
                if expired {
                    self.outbound.close(Disconnect::expired());
                } else if let Ok(c) = self.connected() {
                    c.expires_at = expire_at;
                }
            }
        }
    }

    /// Leaves every channel and the hub.
    async fn close(&mut self) {
        let state = std::mem::replace(&mut self.state, State::ConnectFailed);
        if let State::Connected(mut c) = state {
            for (_, sub) in c.subs.drain() {
                self.drop_subscription(sub).await;
            }
            self.ctx.hub.unregister_session(&c.handle);
            for observer in &self.ctx.observers {
                observer.disconnected(&c.tenant, &c.user, &self.client);
            }
        }
        tracing::debug!(client = %self.client, "connection closed");
    }
}

/// What a subscription token (or an API subscribe) grants.
#[derive(Default)]
struct Grant {
    chan_info: Bytes,
    data: Bytes,
    expires_at: Option<i64>,
}

/// Where the subscribe result goes: a reply to a command, or a push for a
/// server-side subscription.
enum Target {
    Reply(u32),
    Push,
}

fn instant_at(unix: i64) -> Instant {
    let delta = unix - now_unix();
    if delta <= 0 {
        Instant::now()
    } else {
        Instant::now() + Duration::from_secs(delta as u64)
    }
}
