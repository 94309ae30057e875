//! `/v1/offline/...` and `/v1/conflicts/...`: offline queues and the
//! conflict review queue over HTTP, for the same callers as `/v1/records`
//! (a user's bearer JWT; resolving needs `roles: ["admin"]` or an API key).
//! The handlers parse and call the same service functions as the
//! `offline.push` and `offline.pull` RPC methods.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::records::{ApiResult, body_object, caller, ok};
use crate::records::offline::PullRequest;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/offline/push", post(push))
        .route("/v1/offline/pull", get(pull))
        .route("/v1/conflicts", get(list))
        .route("/v1/conflicts/{id}/resolve", post(resolve))
}

/// `POST /v1/offline/push` with `{client_id, mutations}`.
async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let d = body_object(body)?;
    ok(state.records.offline_push(&c, &d).await?)
}

#[derive(Debug, Default, Deserialize)]
struct PullQuery {
    client_id: Option<String>,
    cursor: Option<i64>,
    /// Comma-separated entity names.
    entities: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/offline/pull?cursor=&entities=deals,contacts&limit=&client_id=`.
async fn pull(
    State(state): State<AppState>,
    Query(q): Query<PullQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let req = PullRequest {
        client_id: q.client_id,
        cursor: q.cursor.unwrap_or(0).max(0),
        entities: q
            .entities
            .map(|e| {
                e.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        limit: q.limit,
    };
    ok(state.records.offline_pull(&c, req).await?)
}

#[derive(Debug, Default, Deserialize)]
struct ConflictQuery {
    status: Option<String>,
    entity: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/conflicts?status=open&entity=deals&after=<id>&limit=`.
async fn list(
    State(state): State<AppState>,
    Query(q): Query<ConflictQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    ok(state
        .records
        .conflicts_list(
            &c,
            q.status.as_deref(),
            q.entity.as_deref(),
            q.after,
            q.limit,
        )
        .await?)
}

/// `POST /v1/conflicts/{id}/resolve` with `{resolution, fields?}`.
async fn resolve(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> ApiResult {
    let c = caller(&state, &headers)?;
    let d = body_object(body)?;
    ok(state.records.conflict_resolve(&c, id, &d).await?)
}
