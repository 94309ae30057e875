//! `/v1/records/...`: the record and lock service for backends and for
//! users over HTTP. `X-API-Key` acts as a backend of the key's tenant
//! (version-checked writes that edit locks do not block; admin rights);
//! `Authorization: Bearer <connection JWT>` acts as that user in that user's
//! tenant. The handlers parse, authorise and call the same service functions
//! as the RPC methods.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;
use crate::auth::now_unix;
use crate::records::Caller;
use crate::records::input::{self, fields, flag, number, opt_number, opt_string};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/records/{entity}", post(create))
        .route(
            "/v1/records/{entity}/{id}",
            get(read).patch(update).delete(remove),
        )
        .route(
            "/v1/records/{entity}/{id}/lock",
            get(lock_status)
                .post(lock_acquire)
                .put(lock_renew)
                .delete(lock_release),
        )
}

/// Finds who is calling: an API key (a backend of that tenant) or a bearer JWT (a user).
pub(super) fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return state
            .tenant_for_key(key)
            .map(|t| Caller::backend(&t))
            .ok_or(ApiError::Unauthorized);
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let now = now_unix();
    let t = state
        .gateway
        .verifier
        .verify_connect(token.trim(), now)
        .map_err(|_| ApiError::Unauthorized)?;
    if t.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::Unauthorized);
    }
    let admin = t.roles.iter().any(|r| r == "admin");
    Ok(Caller::user(&t.tenant, &t.user, "", admin))
}

pub(super) fn body_object(body: Option<Json<Value>>) -> Result<Map<String, Value>, ApiError> {
    match body {
        Some(Json(Value::Object(m))) => Ok(m),
        None => Ok(Map::new()),
        Some(_) => Err(ApiError::BadBody),
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

async fn read(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let v = state.records.get(&c, &entity, &id).await?;
    let etag = v["record"]["version"].to_string();
    Ok(([(axum::http::header::ETAG, format!("\"{etag}\""))], Json(v)).into_response())
}

/// `PATCH` with `If-Match: <version>` and `{fields, lock_token?}`.
async fn update(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let base = headers
        .get(axum::http::header::IF_MATCH)
        .ok_or(ApiError::PreconditionRequired)?
        .to_str()
        .map_err(|_| ApiError::PreconditionRequired)?;
    let base = input::if_match(base)?;
    let d = body_object(body)?;
    let v = state
        .records
        .update(
            &c,
            &entity,
            &id,
            base,
            fields(&d, "fields")?,
            opt_number(&d, "lock_token")?,
        )
        .await?;
    ok(v)
}

/// `POST /v1/records/{entity}` with `{id?, fields}`: 201.
async fn create(
    State(state): State<AppState>,
    Path(entity): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let d = body_object(body)?;
    let v = state
        .records
        .create(&c, &entity, opt_string(&d, "id")?, fields(&d, "fields")?)
        .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    lock_token: Option<i64>,
    token: Option<i64>,
    #[serde(default)]
    force: bool,
}

/// `DELETE` with optional `If-Match` and `?lock_token=`.
async fn remove(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let base = match headers.get(axum::http::header::IF_MATCH) {
        Some(v) => Some(input::if_match(v.to_str().unwrap_or(""))?),
        None => None,
    };
    ok(state
        .records
        .delete(&c, &entity, &id, base, q.lock_token)
        .await?)
}

async fn lock_status(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    ok(state.records.lock_status(&c, &entity, &id).await?)
}

/// `POST .../lock` with `{ttl_ms?, takeover?}`.
async fn lock_acquire(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let d = body_object(body)?;
    ok(state
        .records
        .lock_acquire(
            &c,
            &entity,
            &id,
            opt_number(&d, "ttl_ms")?,
            flag(&d, "takeover")?,
        )
        .await?)
}

/// `PUT .../lock` with `{token, ttl_ms?}`.
async fn lock_renew(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let d = body_object(body)?;
    ok(state
        .records
        .lock_renew(
            &c,
            &entity,
            &id,
            number(&d, "token")?,
            opt_number(&d, "ttl_ms")?,
        )
        .await?)
}

/// `DELETE .../lock?token=N`, or `?force=true` (admin).
async fn lock_release(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let v = match (q.token, q.force) {
        (_, true) => state.records.lock_force_release(&c, &entity, &id).await?,
        (Some(token), false) => state.records.lock_release(&c, &entity, &id, token).await?,
        (None, false) => {
            return Err(ApiError::Service(
                crate::records::ServiceError::InvalidInput(
                    "`token` (or `force=true`, admin) is required".into(),
                ),
            ));
        }
    };
    ok(v)
}
