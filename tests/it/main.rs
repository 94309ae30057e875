//! One integration-test binary: the real application on port 0, driven
//! through its front door (WebSocket protocol, HTTP API) and by the
//! official SDKs.

mod support;

mod cluster;
mod gateway;
mod interop;
mod offline;
mod offline_crash;
mod records;
mod server_api;
mod sync;
mod zoho;
