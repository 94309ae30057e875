//! The server HTTP API, shaped like Centrifugo's so its API clients work
//! unchanged: `POST /api/<method>` with `X-API-Key` (or `Authorization:
//! apikey <key>`, or `?api_key=`), answers `{"result": ...}` or
//! `{"error": {"code", "message"}}` with HTTP 200 (or, in transport error
//! mode, an HTTP status). The key selects the tenant; every channel named in
//! a request is in that tenant.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes as BodyBytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::AppState;
use crate::broker::{ControlMessage, PublishOptions};
use crate::channel::{ChannelKey, ResolvedChannel};
use crate::protocol::ErrorCode;

/// An API error: Centrifugo's numeric codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub code: u32,
    pub message: String,
}

impl From<ErrorCode> for CallError {
    fn from(code: ErrorCode) -> Self {
        Self {
            code: code.code(),
            message: code.message().to_owned(),
        }
    }
}

impl CallError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 107,
            message: message.into(),
        }
    }

    fn from_broker(e: &crate::broker::BrokerError) -> Self {
        tracing::warn!(error = %e, "server API call failed in the broker");
        if e.is_retryable() {
            Self {
                code: 108,
                message: "broker unavailable, retry later".to_owned(),
            }
        } else {
            ErrorCode::Internal.into()
        }
    }

    /// HTTP status in transport error mode (Centrifugo's mapping).
    fn status(&self) -> StatusCode {
        match self.code {
            102 | 104 => StatusCode::NOT_FOUND,
            107 => StatusCode::BAD_REQUEST,
            108 => StatusCode::SERVICE_UNAVAILABLE,
            112 => StatusCode::RANGE_NOT_SATISFIABLE,
            113 => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

type CallResult = Result<Value, CallError>;

#[derive(Debug, Default, Deserialize)]
pub struct KeyQuery {
    api_key: Option<String>,
}

/// Finds the tenant of the request's API key.
fn tenant_of(state: &AppState, headers: &HeaderMap, query: &KeyQuery) -> Option<String> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey "))
                .map(|v| v.trim().to_owned())
        })
        .or_else(|| query.api_key.clone())?;
    state.tenant_for_key(&key)
}

fn transport_mode(state: &AppState, headers: &HeaderMap) -> bool {
    state.api_transport_errors
        || headers
            .get("x-centrifugo-error-mode")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("transport"))
}

fn respond(result: CallResult, transport: bool) -> Response {
    match result {
        Ok(v) => Json(json!({ "result": v })).into_response(),
        Err(e) => {
            let body = Json(json!({"error": {"code": e.code, "message": e.message}}));
            if transport {
                (e.status(), body).into_response()
            } else {
                body.into_response()
            }
        }
    }
}

/// `POST /api/{method}`.
pub async fn call(
    State(state): State<AppState>,
    Path(method): Path<String>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
    body: BodyBytes,
) -> Response {
    let Some(tenant) = tenant_of(&state, &headers, &query) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let transport = transport_mode(&state, &headers);
    let params: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return respond(Err(CallError::bad_request("body is not JSON")), transport),
        }
    };
    respond(dispatch(&state, &tenant, &method, params).await, transport)
}

#[derive(Deserialize)]
struct Legacy {
    method: String,
    #[serde(default)]
    params: Value,
}

/// `POST /api` with `{"method": ..., "params": ...}` (the older form).
pub async fn legacy(
    State(state): State<AppState>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
    body: BodyBytes,
) -> Response {
    let Some(tenant) = tenant_of(&state, &headers, &query) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let transport = transport_mode(&state, &headers);
    match serde_json::from_slice::<Legacy>(&body) {
        Ok(l) => respond(
            dispatch(&state, &tenant, &l.method, l.params).await,
            transport,
        ),
        Err(_) => respond(
            Err(CallError::bad_request("body must be {method, params}")),
            transport,
        ),
    }
}

async fn dispatch(state: &AppState, tenant: &str, method: &str, params: Value) -> CallResult {
    metrics::counter!(crate::metrics::API_REQUESTS, "method" => metric_method(method)).increment(1);
    if params.is_null() {
        return Box::pin(dispatch(state, tenant, method, json!({}))).await;
    }
    match method {
        "publish" => publish(state, tenant, parse(params)?).await,
        "broadcast" => broadcast(state, tenant, params).await,
        "subscribe" => subscribe(state, tenant, parse(params)?).await,
        "unsubscribe" => unsubscribe(state, tenant, parse(params)?).await,
        "disconnect" => disconnect(state, tenant, parse(params)?).await,
        "refresh" => refresh(state, tenant, parse(params)?).await,
        "presence" => presence(state, tenant, parse(params)?).await,
        "presence_stats" => presence_stats(state, tenant, parse(params)?).await,
        "history" => history(state, tenant, parse(params)?).await,
        "history_remove" => history_remove(state, tenant, parse(params)?).await,
        "channels" => channels(state, tenant, parse(params)?),
        "info" => info(state).await,
        "batch" => Box::pin(batch(state, tenant, parse(params)?)).await,
        _ => Err(CallError {
            code: 104,
            message: "method not found".to_owned(),
        }),
    }
}

fn metric_method(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "publish",
        "broadcast",
        "subscribe",
        "unsubscribe",
        "disconnect",
        "refresh",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
        "batch",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown")
}

fn parse<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, CallError> {
    serde_json::from_value(params).map_err(|e| CallError::bad_request(format!("bad request: {e}")))
}

fn resolve(
    state: &AppState,
    tenant: &str,
    channel: &str,
) -> Result<(ChannelKey, ResolvedChannel), CallError> {
    if channel.is_empty() {
        return Err(CallError::bad_request("channel required"));
    }
    let resolved = state
        .gateway
        .rules
        .resolve(channel)
        .map_err(CallError::from)?;
    Ok((ChannelKey::new(tenant, channel), resolved))
}

fn payload(data: Option<Box<RawValue>>, b64data: Option<String>) -> Result<Bytes, CallError> {
    if let Some(d) = data {
        return Ok(Bytes::from(d.get().as_bytes().to_vec()));
    }
    if let Some(b) = b64data {
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|_| CallError::bad_request("b64data is not base64"));
    }
    Err(CallError::bad_request("data required"))
}

#[derive(Deserialize)]
struct PublishParams {
    #[serde(default)]
    channel: String,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    idempotency_key: Option<String>,
}

async fn publish_one(
    state: &AppState,
    tenant: &str,
    channel: &str,
    data: Bytes,
    p: &PublishParams,
) -> CallResult {
    let (key, resolved) = resolve(state, tenant, channel)?;
    let options = PublishOptions {
        history: (resolved.options.history_enabled() && !p.skip_history)
            .then(|| resolved.retention()),
        idempotency_key: p.idempotency_key.clone().filter(|k| !k.is_empty()),
    };
    let position = state
        .hub
        .publish(&key, data, None, p.tags.clone(), &options, "api")
        .await
        .map_err(|e| CallError::from_broker(&e))?;
    Ok(match position {
        Some(pos) => json!({"offset": pos.offset, "epoch": pos.epoch}),
        None => json!({}),
    })
}

async fn publish(state: &AppState, tenant: &str, mut p: PublishParams) -> CallResult {
    let data = payload(p.data.take(), p.b64data.take())?;
    let channel = std::mem::take(&mut p.channel);
    publish_one(state, tenant, &channel, data, &p).await
}

/// `broadcast` takes the fields of `publish` with `channels` instead of `channel`.
fn broadcast_params(mut params: Value) -> Result<(Vec<String>, PublishParams), CallError> {
    let channels = params
        .as_object_mut()
        .and_then(|o| o.remove("channels"))
        .unwrap_or(Value::Null);
    let channels: Vec<String> = serde_json::from_value(channels)
        .map_err(|_| CallError::bad_request("channels must be a list of channel names"))?;
    Ok((channels, parse(params)?))
}

async fn broadcast(state: &AppState, tenant: &str, params: Value) -> CallResult {
    let (channels, mut p) = broadcast_params(params)?;
    if channels.is_empty() {
        return Err(CallError::bad_request("channels required"));
    }
    let data = payload(p.data.take(), p.b64data.take())?;
    let mut responses = Vec::with_capacity(channels.len());
    for channel in &channels {
        responses.push(
            match publish_one(state, tenant, channel, data.clone(), &p).await {
                Ok(v) => json!({ "result": v }),
                Err(e) => json!({"error": {"code": e.code, "message": e.message}}),
            },
        );
    }
    Ok(json!({ "responses": responses }))
}

#[derive(Deserialize)]
struct UserTarget {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeParams {
    #[serde(flatten)]
    target: UserTarget,
    #[serde(default)]
    channel: String,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
}

async fn subscribe(state: &AppState, tenant: &str, p: SubscribeParams) -> CallResult {
    resolve(state, tenant, &p.channel)?;
    let data = if p.data.is_none() && p.b64data.is_none() {
        None
    } else {
        Some(payload(p.data, p.b64data)?)
    };
    control(
        state,
        ControlMessage::Subscribe {
            tenant: tenant.to_owned(),
            user: p.target.user,
            channel: p.channel,
            client: p.target.client,
            data,
        },
    )
    .await
}

#[derive(Deserialize)]
struct UnsubscribeParams {
    #[serde(flatten)]
    target: UserTarget,
    #[serde(default)]
    channel: String,
}

async fn unsubscribe(state: &AppState, tenant: &str, p: UnsubscribeParams) -> CallResult {
    resolve(state, tenant, &p.channel)?;
    control(
        state,
        ControlMessage::Unsubscribe {
            tenant: tenant.to_owned(),
            user: p.target.user,
            channel: p.channel,
            client: p.target.client,
        },
    )
    .await
}

#[derive(Deserialize)]
struct DisconnectCode {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectParams {
    #[serde(flatten)]
    target: UserTarget,
    #[serde(default)]
    whitelist: Vec<String>,
    disconnect: Option<DisconnectCode>,
}

async fn disconnect(state: &AppState, tenant: &str, p: DisconnectParams) -> CallResult {
    let (code, reason) = match p.disconnect {
        Some(d) => {
            if !(3000..5000).contains(&d.code) {
                return Err(CallError::bad_request(
                    "disconnect code must be in 3000..4999",
                ));
            }
            (d.code, d.reason)
        }
        None => (3503, "force disconnect".to_owned()),
    };
    control(
        state,
        ControlMessage::Disconnect {
            tenant: tenant.to_owned(),
            user: p.target.user,
            client: p.target.client,
            whitelist: p.whitelist,
            code,
            reason,
        },
    )
    .await
}

#[derive(Deserialize)]
struct RefreshParams {
    #[serde(flatten)]
    target: UserTarget,
    #[serde(default)]
    expired: bool,
    expire_at: Option<i64>,
}

async fn refresh(state: &AppState, tenant: &str, p: RefreshParams) -> CallResult {
    control(
        state,
        ControlMessage::Refresh {
            tenant: tenant.to_owned(),
            user: p.target.user,
            client: p.target.client,
            expired: p.expired,
            expire_at: p.expire_at.filter(|at| *at > 0),
        },
    )
    .await
}

async fn control(state: &AppState, message: ControlMessage) -> CallResult {
    state
        .hub
        .broker()
        .publish_control(&message)
        .await
        .map_err(|e| CallError::from_broker(&e))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelParams {
    #[serde(default)]
    channel: String,
}

async fn presence(state: &AppState, tenant: &str, p: ChannelParams) -> CallResult {
    let (key, resolved) = resolve(state, tenant, &p.channel)?;
    if !resolved.options.presence {
        return Err(ErrorCode::NotAvailable.into());
    }
    let presence = state
        .hub
        .presence()
        .presence(&key)
        .await
        .map_err(|e| CallError::from_broker(&e))?;
    Ok(json!({ "presence": presence }))
}

async fn presence_stats(state: &AppState, tenant: &str, p: ChannelParams) -> CallResult {
    let (key, resolved) = resolve(state, tenant, &p.channel)?;
    if !resolved.options.presence {
        return Err(ErrorCode::NotAvailable.into());
    }
    let (num_clients, num_users) = state
        .hub
        .presence()
        .presence_stats(&key)
        .await
        .map_err(|e| CallError::from_broker(&e))?;
    Ok(json!({"num_clients": num_clients, "num_users": num_users}))
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Deserialize)]
struct HistoryParams {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i32,
    since: Option<Since>,
    #[serde(default)]
    reverse: bool,
}

async fn history(state: &AppState, tenant: &str, p: HistoryParams) -> CallResult {
    let (key, resolved) = resolve(state, tenant, &p.channel)?;
    if !resolved.options.history_enabled() {
        return Err(ErrorCode::NotAvailable.into());
    }
    let result = state
        .hub
        .read_history(
            &key,
            &resolved.retention(),
            p.limit,
            p.since.map(|s| (s.offset, s.epoch)),
            p.reverse,
            state.gateway.limits.history_max_publications,
        )
        .await
        .map_err(CallError::from)?;
    serde_json::to_value(&result).map_err(|_| CallError::from(ErrorCode::Internal))
}

async fn history_remove(state: &AppState, tenant: &str, p: ChannelParams) -> CallResult {
    let (key, resolved) = resolve(state, tenant, &p.channel)?;
    if !resolved.options.history_enabled() {
        return Err(ErrorCode::NotAvailable.into());
    }
    state
        .hub
        .broker()
        .remove_history(&key)
        .await
        .map_err(|e| CallError::from_broker(&e))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelsParams {
    #[serde(default)]
    pattern: Option<String>,
}

fn channels(state: &AppState, tenant: &str, p: ChannelsParams) -> CallResult {
    let channels: serde_json::Map<String, Value> = state
        .hub
        .channels(tenant, p.pattern.as_deref())
        .into_iter()
        .map(|(name, n)| (name, json!({ "num_clients": n })))
        .collect();
    Ok(json!({ "channels": channels }))
}

/// Every live node with its counts (this node's counts are always fresh).
async fn info(state: &AppState) -> CallResult {
    let mut nodes = state
        .hub
        .broker()
        .nodes()
        .await
        .map_err(|e| CallError::from_broker(&e))?;
    let me = state.hub.node_info();
    match nodes.iter_mut().find(|n| n.uid == me.uid) {
        Some(n) => *n = me,
        None => nodes.push(me),
    }
    Ok(json!({ "nodes": nodes }))
}

#[derive(Deserialize)]
struct BatchParams {
    #[serde(default)]
    commands: Vec<serde_json::Map<String, Value>>,
}

async fn batch(state: &AppState, tenant: &str, p: BatchParams) -> CallResult {
    let mut replies = Vec::with_capacity(p.commands.len());
    for command in p.commands {
        let Some((method, params)) = command.into_iter().next() else {
            replies.push(json!({"error": {"code": 107, "message": "empty command"}}));
            continue;
        };
        if method == "batch" {
            replies.push(json!({"error": {"code": 107, "message": "batch cannot nest"}}));
            continue;
        }
        replies.push(match dispatch(state, tenant, &method, params).await {
            Ok(v) => json!({ method: v }),
            Err(e) => json!({"error": {"code": e.code, "message": e.message}}),
        });
    }
    Ok(json!({ "replies": replies }))
}
