//! Metric names and the Prometheus exporter. Names follow
//! `synchub_<subsystem>_<name>_<unit|total>`; labels have bounded cardinality
//! (method names, close codes, node-level reasons; never channels or users).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "synchub_gateway_connections";
pub const SUBSCRIPTIONS: &str = "synchub_hub_subscriptions";
pub const COMMANDS: &str = "synchub_gateway_commands_total";
pub const COMMAND_DURATION: &str = "synchub_gateway_command_duration_seconds";
pub const PUBLICATIONS: &str = "synchub_broker_publications_total";
pub const DELIVERIES: &str = "synchub_hub_deliveries_total";
pub const DISCONNECTS: &str = "synchub_gateway_disconnects_total";
pub const QUEUE_OVERFLOWS: &str = "synchub_gateway_queue_overflows_total";
pub const COMMAND_ERRORS: &str = "synchub_gateway_command_errors_total";
pub const API_REQUESTS: &str = "synchub_api_requests_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (several nodes in one test
/// process share it) and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(COMMAND_DURATION.to_owned()),
                    &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    handle
                }
                // Another recorder is installed (an embedding program's): render an empty registry.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, "Open client connections on this node");
    describe_gauge!(SUBSCRIPTIONS, "Client subscriptions on this node");
    describe_counter!(COMMANDS, "Client commands handled, by method");
    describe_histogram!(
        COMMAND_DURATION,
        "Time to handle a client command, by method"
    );
    describe_counter!(
        PUBLICATIONS,
        "Publications accepted, by source (api, client)"
    );
    describe_counter!(DELIVERIES, "Messages queued to client connections");
    describe_counter!(DISCONNECTS, "Connections closed by the server, by code");
    describe_counter!(
        QUEUE_OVERFLOWS,
        "Connections closed because their outgoing queue overflowed"
    );
    describe_counter!(COMMAND_ERRORS, "Error replies sent, by protocol error code");
    describe_counter!(API_REQUESTS, "Server API requests, by method");
}
