//! synchub: a real-time collaboration hub speaking the Centrifugo client
//! protocol v2 (JSON and Protobuf), so the official centrifuge SDKs connect
//! unchanged.
//!
//! Module map (what each module owns):
//! - `config`: typed, layered configuration (defaults, TOML, `SYNCHUB_*`), validated at start.
//! - `startup`: the composition root; the only place that picks concrete backends.
//! - `shutdown`: cancellation and task tracking for every background task.
//! - `protocol`: wire types generated from `proto/client.proto`, the JSON and Protobuf codecs, codes.
//! - `auth`: connection and subscription JWTs (HS*, RS*, ES*): verification and minting.
//! - `channel`: channel names, namespaces, tenant-scoped channel keys.
//! - `gateway`: WebSocket sessions: reader, bounded writer queue, heartbeat, command dispatch.
//! - `hub`: node-local registry of sessions and subscriptions, fan-out, position tracking.
//! - `broker`: the broker and presence traits and the in-memory implementation.
//! - `rpc`: the RPC method table behind the protocol's `rpc` command.
//! - `records`: the record and lock service (RPC methods, `/v1/records`), offline push/pull and conflict review (`offline.*`, `/v1/offline`, `/v1/conflicts`), the outbox relay, lease and liveness tasks.
//! - `store`: records, field changes, edit locks, drafts, the event outbox, offline client queues and results, conflicts (SQLite | PostgreSQL).
//! - `api`: HTTP routes: the Centrifugo-compatible server API, health, readiness, metrics.
//! - `metrics`: metric names and the Prometheus exporter.
//! - `domain`: pure logic without I/O: the conflict engine (three-way field merge, strategies, severity).
//! - `zoho`: the Zoho CRM v8 client and `zoho::sim`, the Zoho emulator.
//! - `domain`: pure sync logic, no I/O: field mapping and selective sync filters.
pub mod api;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod records;
pub mod rpc;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod sync;
pub mod zoho;
