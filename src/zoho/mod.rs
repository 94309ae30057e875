//! Zoho CRM v8: the client synchub's workers use, and `sim`, the emulator
//! they are tested against.
//!
//! This module owns everything that speaks Zoho's HTTP API: OAuth token
//! refresh (tokens kept behind [`TokenStore`]), client-side rate limiting,
//! retries by error class, batching, pagination, and the typed results. It
//! never decides what a Zoho change means for local records: that is the
//! sync workers' and the conflict engine's job.

pub mod client;
pub mod error;
pub mod sim;
pub mod token;

pub use client::{ClientConfig, ZohoClient};
pub use error::{ErrorClass, RetryAdvice, ZohoError};
pub use token::{MemoryTokenStore, StoredTokens, TokenStore};
