//! `/v1/sync/...`, `/v1/analytics/health`, `/v1/zoho/connection` and the
//! Zoho notification callback `/v1/webhooks/zoho`. Starting sessions,
//! retrying dead jobs and setting the connection need an API key or the
//! admin role; reading needs any caller of the tenant. The callback is
//! authenticated by its channel and token, not by a key.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::records::{ApiResult, body_object, caller, ok};
use crate::records::{Caller, ServiceError};
use crate::store::RecordKey;
use crate::sync::connection::{ConnectionError, ConnectionInput};
use crate::sync::session::{Session, SessionKind};
use crate::sync::webhook::WebhookError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sync/sessions", post(start).get(list))
        .route("/v1/sync/sessions/{id}", get(one))
        .route("/v1/sync/jobs", get(jobs))
        .route("/v1/sync/jobs/{id}/retry", post(retry))
        .route("/v1/sync/records/{entity}/{id}", get(record_status))
        .route("/v1/analytics/health", get(health))
        .route("/v1/zoho/connection", post(connect).get(connection))
        .route("/v1/webhooks/zoho", post(webhook))
}

fn admin(c: &Caller) -> Result<(), ApiError> {
    if c.admin {
        Ok(())
    } else {
        Err(ServiceError::Forbidden.into())
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    ServiceError::InvalidInput(m.into()).into()
}

/// `POST /v1/sync/sessions` with `{kind: full|incremental|push, module}`.
async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    admin(&c)?;
    let d = body_object(body)?;
    let kind = d
        .get("kind")
        .and_then(Value::as_str)
        .and_then(SessionKind::parse)
        .filter(|k| *k != SessionKind::Webhook)
        .ok_or_else(|| invalid("kind must be full, incremental or push"))?;
    let module = d
        .get("module")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("module is required (a Zoho module or a synced entity)"))?;
    let mapping = state
        .sync
        .mapping(module)
        .ok_or_else(|| invalid(format!("`{module}` is not a synced module or entity")))?
        .clone();
    let session = match kind {
        SessionKind::Push => {
            crate::sync::push::start_push_session(&state.sync, &c.tenant, &mapping, &c.user)
                .await
                .map_err(ServiceError::from)?
        }
        _ => {
            let session = Session::new(kind, mapping.module(), mapping.name(), &c.user);
            state
                .sync
                .queue_session(&c.tenant, session)
                .await
                .map_err(ServiceError::from)?
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"session": session_view(&session)})),
    )
        .into_response())
}

fn session_view(s: &Session) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    v["percent"] = json!(s.percent());
    v
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/sync/sessions?status=&limit=`, newest first.
async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let rows = state
        .sync
        .store
        .list_sessions(&c.tenant, q.status.as_deref(), limit)
        .await
        .map_err(ServiceError::from)?;
    let sessions: Vec<Value> = rows
        .into_iter()
        .map(|v| match serde_json::from_value::<Session>(v.clone()) {
            Ok(s) => session_view(&s),
            Err(_) => v,
        })
        .collect();
    ok(json!({ "sessions": sessions }))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let v = state
        .sync
        .store
        .get_session(&c.tenant, &id)
        .await
        .map_err(ServiceError::from)?
        .ok_or(ServiceError::NotFound)?;
    let view = match serde_json::from_value::<Session>(v.clone()) {
        Ok(s) => session_view(&s),
        Err(_) => v,
    };
    ok(json!({ "session": view }))
}

/// `GET /v1/sync/jobs?status=dead&limit=`: the queue, newest first.
async fn jobs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let store = &state.sync.store;
    let jobs = store
        .list_jobs(&c.tenant, q.status.as_deref(), limit)
        .await
        .map_err(ServiceError::from)?;
    let depth = store
        .queue_depth(&c.tenant)
        .await
        .map_err(ServiceError::from)?;
    let jobs: Vec<Value> = jobs
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "kind": j.kind,
                "entity": j.entity,
                "record_id": j.record_id,
                "status": j.status,
                "attempts": j.attempts,
                "error_class": j.last_error_class,
                "error": j.last_error,
                "run_at": crate::store::rfc3339_ms(j.run_at),
                "created_at": crate::store::rfc3339_ms(j.created_at),
            })
        })
        .collect();
    let depth: Vec<Value> = depth
        .iter()
        .map(|d| json!({"entity": d.entity, "queued": d.queued, "running": d.running, "dead": d.dead}))
        .collect();
    ok(json!({ "jobs": jobs, "depth": depth }))
}

/// `POST /v1/sync/jobs/{id}/retry`: a dead job runs again.
async fn retry(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    admin(&c)?;
    let revived = state
        .sync
        .store
        .revive_job(&c.tenant, id)
        .await
        .map_err(ServiceError::from)?;
    if !revived {
        return Err(ServiceError::NotFound.into());
    }
    state.sync.wake.notify_waiters();
    ok(json!({ "retried": true }))
}

/// `GET /v1/sync/records/{entity}/{id}`: the record's sync status.
async fn record_status(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let key = RecordKey::new(&c.tenant, &entity, &id);
    let shadow = state
        .sync
        .store
        .shadow(&key)
        .await
        .map_err(ServiceError::from)?
        .ok_or(ServiceError::NotFound)?;
    ok(json!({
        "entity": entity,
        "id": id,
        "status": shadow.status,
        "error": shadow.error,
        "zoho_id": shadow.zoho_id,
        "zoho_modified_time": shadow.zoho_modified,
        "synced_version": shadow.version,
        "synced_at": shadow.synced_at.map(crate::store::rfc3339_ms),
    }))
}

#[derive(Debug, Default, Deserialize)]
struct HealthQuery {
    range: Option<String>,
}

/// `GET /v1/analytics/health?range=1h|24h|7d|30d`.
async fn health(
    State(state): State<AppState>,
    Query(q): Query<HealthQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let range = q.range.unwrap_or_else(|| "24h".into());
    if crate::sync::analytics::parse_range(&range).is_none() {
        return Err(invalid("range must be 1h, 24h, 7d or 30d"));
    }
    ok(
        crate::sync::analytics::health(&state.sync, &c.tenant, &range)
            .await
            .map_err(ServiceError::from)?,
    )
}

fn connection_error(e: ConnectionError) -> ApiError {
    match e {
        ConnectionError::Invalid(m) => invalid(m),
        ConnectionError::NoKey => invalid(e.to_string()),
        ConnectionError::Store(s) => ServiceError::from(*s).into(),
        other => {
            tracing::error!(error = %other, "Zoho connection");
            ServiceError::Internal.into()
        }
    }
}

/// `POST /v1/zoho/connection` with `{client_id, client_secret,
/// refresh_token, data_centre | accounts_url + api_url}`.
async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    admin(&c)?;
    let d = body_object(body)?;
    let input: ConnectionInput =
        serde_json::from_value(Value::Object(d)).map_err(|e| invalid(e.to_string()))?;
    let connection = input.into_connection().map_err(connection_error)?;
    state
        .sync
        .connections
        .set(&c.tenant, connection)
        .await
        .map_err(connection_error)?;
    state.sync.wake.notify_waiters();
    ok(
        json!({"connection": state.sync.connections.view(&c.tenant).await.map_err(connection_error)?}),
    )
}

/// `GET /v1/zoho/connection`: its state, never its secrets.
async fn connection(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let c = caller(&state, &headers)?;
    let mut view = state
        .sync
        .connections
        .view(&c.tenant)
        .await
        .map_err(connection_error)?;
    if let Ok(Some(ch)) = crate::sync::webhook::channel_state(&state.sync, &c.tenant).await {
        view["notifications"] = json!({
            "channel_id": ch.channel_id,
            "events": ch.events,
            "expires_at": crate::store::rfc3339_ms(ch.expiry * 1000),
        });
    }
    ok(json!({ "connection": view }))
}

#[derive(Debug, Default, Deserialize)]
struct WebhookQuery {
    tenant: Option<String>,
}

/// `POST /v1/webhooks/zoho`: a Watch API callback. Answered as soon as
/// the pull it asks for is queued.
async fn webhook(
    State(state): State<AppState>,
    Query(q): Query<WebhookQuery>,
    body: Bytes,
) -> ApiResult {
    match crate::sync::webhook::accept(&state.sync, q.tenant.as_deref(), &body).await {
        Ok(Some(session)) => ok(json!({"accepted": true, "session": session.id})),
        Ok(None) => ok(json!({"accepted": false, "reason": "module not synced from Zoho"})),
        Err(WebhookError::Unauthorized) => Err(ApiError::Unauthorized),
        Err(WebhookError::Malformed) => Err(invalid(WebhookError::Malformed.to_string())),
        Err(WebhookError::Store(e)) => Err(ServiceError::from(e).into()),
    }
}
