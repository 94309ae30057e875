//! The emulator's router and the gate every API request passes: scripted
//! faults and latency, then authentication, then concurrency and the rolling
//! 24-hour credit budget, in that order, each answered with Zoho's own body.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use time::OffsetDateTime;

use super::faults::Fault;
use super::state::{LoggedRequest, SimState};
use super::wire::{SimError, header_str};
use super::{coql, jobs, meta, oauth, records, watch};

/// The user a valid access token belongs to, for handlers.
#[derive(Debug, Clone)]
pub struct AuthUser(pub String);

/// Bulk-write files may be up to 25 MB zipped.
const BODY_LIMIT: usize = 30 * 1024 * 1024;

pub fn router(state: Arc<SimState>) -> Router {
    let api = Router::new()
        .route("/org", get(meta::org))
        .route("/users", get(meta::users))
        .route("/settings/modules", get(meta::modules))
        .route("/settings/modules/{module}", get(meta::module))
        .route(
            "/settings/fields",
            get(meta::fields).post(meta::create_fields),
        )
        .route(
            "/settings/fields/{id}",
            get(meta::field).patch(meta::update_field),
        )
        .route("/coql", post(coql::query))
        .route(
            "/actions/watch",
            get(watch::list)
                .post(watch::enable)
                .put(watch::replace)
                .patch(watch::patch)
                .delete(watch::disable),
        )
        .route("/upload", post(jobs::upload))
        .route(
            "/{module}",
            get(records::list)
                .post(records::insert)
                .put(records::update_many)
                .delete(records::delete_many),
        )
        .route("/{module}/upsert", post(records::upsert))
        .route("/{module}/search", get(records::search))
        .route("/{module}/deleted", get(records::deleted))
        .route("/{module}/actions/count", get(records::count))
        .route(
            "/{module}/actions/mass_update",
            post(jobs::mass_update).get(jobs::mass_update_status),
        )
        .route(
            "/{module}/{id}",
            get(records::get_one)
                .put(records::update_one)
                .delete(records::delete_one),
        )
        .route(
            "/{module}/{id}/Locking_Information__s",
            get(records::lock_info).post(records::lock),
        )
        .route(
            "/{module}/{id}/Locking_Information__s/{lock_id}",
            axum::routing::delete(records::unlock),
        );
    let bulk = Router::new()
        .route("/read", post(jobs::bulk_read_create))
        .route("/read/{job}", get(jobs::bulk_read_status))
        .route("/read/{job}/result", get(jobs::bulk_read_result))
        .route("/write", post(jobs::bulk_write_create))
        .route("/write/{job}", get(jobs::bulk_write_status))
        .route("/write/{job}/result", get(jobs::bulk_write_result));
    let gated = Router::new()
        .nest("/crm/v8", api.clone())
        // Airbyte 0.3.6 still calls v2 paths.
        .nest("/crm/v2", api)
        .nest("/crm/bulk/v8", bulk)
        .route_layer(middleware::from_fn_with_state(state.clone(), gate));
    let accounts = Router::new()
        .route("/oauth/v2/token", post(oauth::token).get(oauth::token))
        // Client credentials are documented on /auth.
        .route("/oauth/v2/auth", post(oauth::token).get(oauth::token))
        .route("/oauth/v2/token/revoke", post(oauth::revoke));
    Router::new()
        .merge(gated)
        .merge(accounts)
        .fallback(|| async { SimError::invalid_url() })
        .method_not_allowed_fallback(|| async { SimError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), log_requests))
        .with_state(state)
}

/// Request bodies up to this size are kept in the log (JSON writes).
const LOGGED_BODY: usize = 512 * 1024;

async fn log_requests(State(state): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let small = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= LOGGED_BODY);
    let (body, text) = if small {
        match axum::body::to_bytes(body, LOGGED_BODY).await {
            Ok(bytes) => (
                axum::body::Body::from(bytes.clone()),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
            Err(_) => (axum::body::Body::empty(), String::new()),
        }
    } else {
        (body, String::new())
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != axum::http::header::AUTHORIZATION)
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let req = Request::from_parts(parts, body);
    let seq = state.record_request(LoggedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        status: 0,
        body: text,
        headers,
    });
    let response = zoho_shaped(next.run(req).await);
    state.answered(seq, response.status().as_u16());
    response
}

/// Marks a scripted raw answer, which must reach the client unchanged.
#[derive(Debug, Clone, Copy)]
struct RawFault;

/// Axum's own rejections (a path that is not UTF-8, a body over the limit)
/// are plain text; Zoho always answers errors in its JSON shape.
fn zoho_shaped(response: Response) -> Response {
    let status = response.status();
    if response.extensions().get::<RawFault>().is_some() {
        return response;
    }
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let err = match status.as_u16() {
        404 => SimError::invalid_url(),
        405 => SimError::method_not_allowed(),
        413 => SimError::new(status, "FILE_TOO_LARGE", "the request body is too large"),
        415 => SimError::new(
            status,
            "MEDIA_TYPE_NOT_SUPPORTED",
            "the media type is not supported",
        ),
        400..=499 => SimError::new(status, "INVALID_DATA", "invalid data"),
        _ => SimError::internal(),
    };
    err.into_response()
}

/// Faults first (they model the network and Zoho's front end), then the API.
async fn gate(State(state): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let (fault, latency) = {
        let mut faults = state.faults.lock().unwrap_or_else(|e| e.into_inner());
        (faults.take(&method, &path), faults.config.latency)
    };
    match fault {
        Some(Fault::Status(code)) => status_fault(code),
        Some(Fault::InvalidToken) => SimError::invalid_token().into_response(),
        Some(Fault::Raw { status, body }) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                body,
            )
                .into_response();
            response.extensions_mut().insert(RawFault);
            response
        }
        Some(Fault::Stall) => {
            pause(&state, stall_time(&state)).await;
            SimError::internal().into_response()
        }
        Some(Fault::Delay(extra)) => {
            pause(&state, extra).await;
            admit(state, req, next, latency).await
        }
        Some(Fault::LoseReply) => {
            let response = admit(state.clone(), req, next, latency).await;
            pause(&state, stall_time(&state)).await;
            response
        }
        None => admit(state, req, next, latency).await,
    }
}

fn stall_time(state: &SimState) -> Duration {
    let faults = state.faults.lock().unwrap_or_else(|e| e.into_inner());
    faults.config.stall_for
}

/// Sleeps, but never past the emulator's shutdown.
async fn pause(state: &SimState, how_long: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(how_long) => {}
        _ = state.shutdown.cancelled() => {}
    }
}

fn status_fault(code: u16) -> Response {
    let err = match code {
        429 => SimError::too_many_requests(
            "The number of API requests for the 24 hour period or the concurrency limit is exceeded",
        ),
        401 => SimError::invalid_token(),
        code => {
            let mut err = SimError::internal();
            err.status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            err
        }
    };
    err.into_response()
}

/// Authentication, concurrency and credits, then the handler.
/// `latency` is spent while holding a concurrency slot, as a slow server would.
async fn admit(state: Arc<SimState>, mut req: Request, next: Next, latency: Duration) -> Response {
    let user = match authenticate(&state, req.headers()) {
        Ok(user) => user,
        Err(err) => return err.into_response(),
    };
    req.extensions_mut().insert(AuthUser(user));
    let (req, complex) = match classify(req).await {
        Ok(classified) => classified,
        Err(err) => return err.into_response(),
    };
    let _slot = match Slot::enter(&state, complex) {
        Ok(slot) => slot,
        Err(err) => return err.into_response(),
    };
    let remaining = match spend_credits(&state, 1) {
        Ok(remaining) => remaining,
        Err(err) => return err.into_response(),
    };
    if !latency.is_zero() {
        pause(&state, latency).await;
    }
    let mut response = next.run(req).await;
    if let Some(left) = remaining
        && let Ok(value) = HeaderValue::from_str(&left.to_string())
    {
        response
            .headers_mut()
            .insert("X-API-CREDITS-REMAINING", value);
    }
    response
}

/// `Zoho-oauthtoken` and `Bearer` are both accepted.
fn authenticate(state: &SimState, headers: &HeaderMap) -> Result<String, SimError> {
    let Some(raw) = header_str(headers, "authorization") else {
        return Err(SimError::authentication_failure());
    };
    let token = raw
        .strip_prefix("Zoho-oauthtoken ")
        .or_else(|| raw.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(SimError::authentication_failure)?;
    let now = state.now();
    let world = state.world();
    match world.access_tokens.get(token) {
        Some(grant) if grant.expires > now => Ok(grant.user_id.clone()),
        _ => Err(SimError::invalid_token()),
    }
}

/// Writes of more than this many records count as complex APIs.
const COMPLEX_WRITE: usize = 10;

/// Whether a request is one of the "complex APIs" that count against the
/// sub-concurrency: COQL, mass update, bulk, sorted lists, and JSON writes
/// of more than ten records (which needs a look at the body, so the body is
/// buffered and handed on unchanged).
async fn classify(req: Request) -> Result<(Request, bool), SimError> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default();
    let method = req.method().clone();
    if path.contains("/coql") || path.contains("/mass_update") || path.starts_with("/crm/bulk/") {
        return Ok((req, true));
    }
    if method == axum::http::Method::GET {
        let sorted = query.contains("sort_by=");
        return Ok((req, sorted));
    }
    let multipart = header_str(req.headers(), "content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("multipart/"));
    if multipart || !(method == axum::http::Method::POST || method == axum::http::Method::PUT) {
        return Ok((req, false));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        SimError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "FILE_TOO_LARGE",
            "the request body is too large",
        )
    })?;
    let records = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("data").and_then(|d| d.as_array().map(Vec::len)))
        .unwrap_or(0);
    Ok((
        Request::from_parts(parts, axum::body::Body::from(bytes)),
        records > COMPLEX_WRITE,
    ))
}

/// A concurrency slot, released on drop (also when the client goes away).
struct Slot<'a> {
    state: &'a SimState,
    complex: bool,
}

impl<'a> Slot<'a> {
    fn enter(state: &'a SimState, complex: bool) -> Result<Self, SimError> {
        // The slot exists before the counters move, so every early return
        // below gives its increments back through `Drop`.
        let mut slot = Self {
            state,
            complex: false,
        };
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        if now > state.config.concurrency_limit() {
            return Err(SimError::too_many_requests(
                "The concurrency limit of the user for the app is exceeded",
            ));
        }
        if complex {
            slot.complex = true;
            let sub = state.complex_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            if sub > state.config.sub_concurrency {
                return Err(SimError::too_many_requests(
                    "The sub-concurrency limit of the user for the app is exceeded",
                ));
            }
        }
        Ok(slot)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.complex {
            self.state.complex_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Spends credits in the rolling 24-hour window. Returns the credits left
/// when Zoho would show them (once half the budget is used).
fn spend_credits(state: &SimState, cost: u64) -> Result<Option<u64>, SimError> {
    let now = state.now();
    let limit = state.config.credit_limit();
    let mut window = state.credits.lock().unwrap_or_else(|e| e.into_inner());
    let day_ago = now - time::Duration::DAY;
    while window.front().is_some_and(|(at, _)| *at <= day_ago) {
        window.pop_front();
    }
    let used: u64 = window.iter().map(|(_, c)| c).sum();
    if used + cost > limit {
        return Err(SimError::too_many_requests(
            "The number of API requests for the 24 hour period is exceeded",
        ));
    }
    push_credit(&mut window, now, cost);
    let used = used + cost;
    Ok((used * 2 >= limit).then(|| limit - used))
}

fn push_credit(
    window: &mut std::collections::VecDeque<(OffsetDateTime, u64)>,
    now: OffsetDateTime,
    cost: u64,
) {
    // Calls within the same second share one entry, which keeps the window small.
    match window.back_mut() {
        Some((at, credits)) if *at == now => *credits += cost,
        _ => window.push_back((now, cost)),
    }
}
