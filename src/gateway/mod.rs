//! The WebSocket edge at `/connection/websocket`: protocol negotiation,
//! size limits, and one session per connection.
//!
//! A session is two tasks: the session task reads frames and handles
//! commands strictly in order (`session.rs`); the writer task owns the sink,
//! drains the session's bounded queue into frames and keeps the ping/pong
//! heartbeat (`writer.rs`). The gateway never touches the broker's backend or
//! the database: it calls the hub, the broker traits and the RPC table.

mod session;
mod writer;

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use crate::auth::TokenVerifier;
use crate::channel::ChannelRules;
use crate::config::ClientConfig;
use crate::hub::Hub;
use crate::protocol::Encoding;
use crate::rpc::RpcRegistry;
use crate::shutdown::Shutdown;

/// Everything a session needs, shared by all sessions of a node.
pub struct GatewayContext {
    pub hub: Arc<Hub>,
    pub verifier: TokenVerifier,
    pub rules: ChannelRules,
    pub rpc: Arc<RpcRegistry>,
    pub limits: ClientConfig,
    pub anonymous: bool,
    pub presence_ttl: std::time::Duration,
    pub shutdown: Shutdown,
    /// Told when a session connects and when it ends.
    pub observers: Vec<Arc<dyn SessionObserver>>,
}

/// A listener for connection lifecycles (the records service uses it to
/// keep holder liveness). Called on the session task after a successful
/// `connect` and when that connection ends: it must return at once (record
/// the fact, wake a task), never await I/O.
pub trait SessionObserver: Send + Sync {
    fn connected(&self, tenant: &str, user: &str, client: &str);
    fn disconnected(&self, tenant: &str, user: &str, client: &str);
}

pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    format: Option<String>,
    cf_protocol: Option<String>,
}

/// The subprotocol wins; otherwise `format=protobuf` or `cf_protocol=protobuf`; otherwise JSON.
pub fn negotiate(headers: &HeaderMap, query: &ConnectQuery) -> (Encoding, Option<&'static str>) {
    let offered: Vec<String> = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    if offered.iter().any(|p| p == "centrifuge-protobuf") {
        return (Encoding::Protobuf, Some("centrifuge-protobuf"));
    }
    let by_query = [&query.format, &query.cf_protocol]
        .iter()
        .any(|v| v.as_deref() == Some("protobuf"));
    let echo = offered
        .iter()
        .any(|p| p == "centrifuge-json")
        .then_some("centrifuge-json");
    if by_query {
        (Encoding::Protobuf, echo)
    } else {
        (Encoding::Json, echo)
    }
}

/// `GET /connection/websocket`.
pub async fn websocket(
    State(ctx): State<Arc<GatewayContext>>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (encoding, protocol) = negotiate(&headers, &query);
    let mut upgrade = upgrade
        .max_message_size(ctx.limits.max_message_size)
        .max_frame_size(ctx.limits.max_message_size);
    if let Some(p) = protocol {
        upgrade = upgrade.protocols([p]);
    }
    let tracker = ctx.shutdown.clone();
    upgrade.on_upgrade(move |socket| async move {
        if ctx.shutdown.is_shutting_down() {
            return;
        }
        tracker.track(session::run(ctx, socket, encoding)).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn protobuf_is_chosen_by_subprotocol_or_query() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("centrifuge-protobuf"),
        );
        assert_eq!(
            negotiate(&h, &ConnectQuery::default()).0,
            Encoding::Protobuf
        );
        let q = ConnectQuery {
            format: Some("protobuf".into()),
            cf_protocol: None,
        };
        assert_eq!(negotiate(&HeaderMap::new(), &q).0, Encoding::Protobuf);
        let q = ConnectQuery {
            format: None,
            cf_protocol: Some("protobuf".into()),
        };
        assert_eq!(negotiate(&HeaderMap::new(), &q).0, Encoding::Protobuf);
    }

    #[test]
    fn json_is_the_default_and_its_subprotocol_is_echoed() {
        assert_eq!(
            negotiate(&HeaderMap::new(), &ConnectQuery::default()),
            (Encoding::Json, None)
        );
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("centrifuge-json"),
        );
        assert_eq!(
            negotiate(&h, &ConnectQuery::default()),
            (Encoding::Json, Some("centrifuge-json"))
        );
    }
}
