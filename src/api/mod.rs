//! HTTP routes: the WebSocket endpoint, the Centrifugo-compatible server
//! API, `/v1/records` (records and edit locks), health, readiness and
//! metrics. Handlers stay thin: parse, authorise, call one service function,
//! map the error.

pub mod error;
pub mod offline;
pub mod records;
pub mod server;
pub mod sync;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::gateway::GatewayContext;
use crate::hub::Hub;
use crate::shutdown::Shutdown;

/// Everything a request handler may need: cheap handles only.
pub struct App {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub gateway: Arc<GatewayContext>,
    /// API key → tenant.
    pub api_keys: HashMap<String, String>,
    /// Answer server API errors with HTTP statuses for every request.
    pub api_transport_errors: bool,
    pub metrics: PrometheusHandle,
    pub shutdown: Shutdown,
    /// Records and edit locks (`/v1/records/...`).
    pub records: Arc<crate::records::RecordService>,
    /// The Zoho sync (`/v1/sync/...`, `/v1/zoho/...`, `/v1/webhooks/zoho`).
    pub sync: Arc<crate::sync::SyncService>,
}

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl App {
    pub fn tenant_for_key(&self, key: &str) -> Option<String> {
        if key.is_empty() {
            return None;
        }
        self.api_keys.get(key).cloned()
    }
}

pub fn router(state: AppState) -> Router {
    let ws = Router::new()
        .route("/connection/websocket", get(crate::gateway::websocket))
        .with_state(state.gateway.clone());
    Router::new()
        .route("/api", post(server::legacy))
        .route("/api/{method}", post(server::call))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(records::routes())
        .merge(offline::routes())
        .merge(sync::routes())
        .with_state(state)
        .merge(ws)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready while the node is not shutting down and its broker is reachable.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !state.hub.broker().is_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
