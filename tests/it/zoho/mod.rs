//! Integration tests of the Zoho client against the emulator, of the
//! emulator's own answers to bad requests, and of Zoho's official Node SDK
//! against the emulator.

mod client_ops;
mod emulator;
mod errors;
mod interop;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use synchub::zoho::sim::{Sim, SimConfig, SimHandle};
use synchub::zoho::{ClientConfig, MemoryTokenStore, ZohoClient};

/// An emulator tuned for fast tests: no token throttle, near-instant jobs,
/// short stalls.
pub fn fast_sim_config() -> SimConfig {
    let mut config = SimConfig {
        token_throttle: None,
        job_delay: Duration::from_millis(20),
        ..SimConfig::default()
    };
    config.faults.stall_for = Duration::from_millis(1500);
    config
}

pub async fn start_sim(config: SimConfig) -> SimHandle {
    Sim::start(config).await.expect("the emulator starts")
}

/// A client with short timeouts and backoff, pointed at the emulator.
pub fn client_config(sim: &SimHandle) -> ClientConfig {
    let (id, secret, _) = sim.credentials().expect("the seed has an OAuth client");
    let mut config = ClientConfig::new(&sim.base_url, &sim.base_url, id, secret);
    config.request_timeout = Duration::from_millis(400);
    config.max_attempts = 3;
    config.backoff_initial = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(40);
    config.throttle_budget = Duration::from_secs(2);
    config.requests_per_second = NonZeroU32::new(10_000).expect("non-zero");
    config.max_concurrency = 8;
    config
}

pub fn client_with(sim: &SimHandle, config: ClientConfig) -> ZohoClient {
    let (_, _, refresh) = sim.credentials().expect("the seed has an OAuth client");
    ZohoClient::new(config, Arc::new(MemoryTokenStore::new(refresh))).expect("the client builds")
}

pub async fn setup() -> (SimHandle, ZohoClient) {
    let sim = start_sim(fast_sim_config()).await;
    let client = client_with(&sim, client_config(&sim));
    (sim, client)
}

/// A record from a JSON object literal.
pub fn rec(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("a JSON object")
}
