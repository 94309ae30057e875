//! The Zoho connection of each tenant: OAuth client, refresh token and
//! where Zoho lives (a data centre or custom URLs), kept encrypted at rest
//! (ChaCha20-Poly1305 under a key derived from `encryption_key`), and the
//! Zoho client built from it. `POST /v1/zoho/connection` sets it; the
//! `[zoho]` configuration is the fallback for its tenant. `GET` shows the
//! state without secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::store::SharedStore;
use crate::zoho::client::{ClientConfig, ZohoClient};
use crate::zoho::error::ZohoError;
use crate::zoho::token::{StoredTokens, TokenStore};

const CONNECTION_STATE: &str = "zoho.connection";
const TOKENS_STATE: &str = "zoho.tokens";

/// Zoho's data centres: (name, accounts server, API domain), ZOHO-API.md §1.
pub const DATA_CENTRES: &[(&str, &str, &str)] = &[
    (
        "us",
        "https://accounts.zoho.com",
        "https://www.zohoapis.com",
    ),
    ("eu", "https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    ("in", "https://accounts.zoho.in", "https://www.zohoapis.in"),
    (
        "au",
        "https://accounts.zoho.com.au",
        "https://www.zohoapis.com.au",
    ),
    ("jp", "https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    (
        "cn",
        "https://accounts.zoho.com.cn",
        "https://www.zohoapis.com.cn",
    ),
    (
        "ca",
        "https://accounts.zohocloud.ca",
        "https://www.zohoapis.ca",
    ),
    ("sa", "https://accounts.zoho.sa", "https://www.zohoapis.sa"),
];

/// What `POST /v1/zoho/connection` takes.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionInput {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// `us`, `eu`, `in`, `au`, `jp`, `cn`, `ca` or `sa`.
    #[serde(default)]
    pub data_centre: Option<String>,
    /// Custom URLs (a sandbox, the emulator); both or neither.
    #[serde(default)]
    pub accounts_url: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
}

/// A connection as kept (encrypted) in the store.
#[derive(Clone, Serialize, Deserialize)]
pub struct Connection {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub data_centre: Option<String>,
    pub accounts_url: String,
    pub api_url: String,
    /// `api` (set over HTTP) or `config` (the `[zoho]` section).
    pub source: String,
    pub updated_at: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("client_id", &self.client_id)
            .field("accounts_url", &self.accounts_url)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// Why a connection input was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{0}")]
    Invalid(String),
    #[error("no encryption key is configured (SYNCHUB_ENCRYPTION_KEY)")]
    NoKey,
    #[error("stored connection cannot be decrypted: {0}")]
    Decrypt(String),
    #[error(transparent)]
    Store(Box<crate::store::StoreError>),
    #[error(transparent)]
    Zoho(Box<ZohoError>),
}

impl From<crate::store::StoreError> for ConnectionError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(Box::new(e))
    }
}

impl From<ZohoError> for ConnectionError {
    fn from(e: ZohoError) -> Self {
        Self::Zoho(Box::new(e))
    }
}

impl ConnectionInput {
    /// Checks the input and resolves the URLs.
    pub fn into_connection(self) -> Result<Connection, ConnectionError> {
        let bad = |m: &str| Err(ConnectionError::Invalid(m.to_owned()));
        if self.client_id.trim().is_empty() {
            return bad("client_id is required");
        }
        if self.client_secret.is_empty() {
            return bad("client_secret is required");
        }
        if self.refresh_token.is_empty() {
            return bad("refresh_token is required");
        }
        let (accounts_url, api_url) = match (&self.data_centre, &self.accounts_url, &self.api_url) {
            (Some(dc), None, None) => {
                match DATA_CENTRES
                    .iter()
                    .find(|(n, _, _)| n.eq_ignore_ascii_case(dc))
                {
                    Some((_, a, b)) => ((*a).to_owned(), (*b).to_owned()),
                    None => {
                        return bad("data_centre must be one of us, eu, in, au, jp, cn, ca, sa");
                    }
                }
            }
            (None, Some(a), Some(b)) => {
                for url in [a, b] {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return bad("accounts_url and api_url must be http(s) URLs");
                    }
                }
                (
                    a.trim_end_matches('/').to_owned(),
                    b.trim_end_matches('/').to_owned(),
                )
            }
            (None, None, None) => {
                return bad("give data_centre, or accounts_url and api_url");
            }
            _ => return bad("give either data_centre or both accounts_url and api_url"),
        };
        Ok(Connection {
            client_id: self.client_id.trim().to_owned(),
            client_secret: self.client_secret,
            refresh_token: self.refresh_token,
            data_centre: self.data_centre.map(|d| d.to_ascii_lowercase()),
            accounts_url,
            api_url,
            source: "api".into(),
            updated_at: crate::store::now_rfc3339(),
        })
    }
}

/// Authenticated encryption of small secrets with a key derived from the
/// configured `encryption_key` (SHA-256 of it).
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    pub fn new(secret: &str) -> Self {
        let key = sha2::Sha256::digest(secret.as_bytes());
        Self {
            cipher: ChaCha20Poly1305::new(&key),
        }
    }

    /// `v1:` + base64(nonce || ciphertext).
    pub fn seal(&self, plain: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), plain)
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    pub fn open(&self, text: &str) -> Result<Vec<u8>, ConnectionError> {
        let body = text
            .strip_prefix("v1:")
            .ok_or_else(|| ConnectionError::Decrypt("unknown format".into()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| ConnectionError::Decrypt(e.to_string()))?;
        if raw.len() < 12 {
            return Err(ConnectionError::Decrypt("too short".into()));
        }
        let (nonce, sealed) = raw.split_at(12);
        let mut n = [0u8; 12];
        n.copy_from_slice(nonce);
        self.cipher
            .decrypt(&Nonce::from(n), sealed)
            .map_err(|_| ConnectionError::Decrypt("wrong encryption key or tampered data".into()))
    }
}

/// OAuth tokens kept encrypted in the store, per tenant.
struct SealedTokenStore {
    store: SharedStore,
    sealer: Sealer,
    tenant: String,
    /// The refresh token of the connection: used when nothing is saved yet
    /// or the saved tokens belong to an older connection.
    refresh_token: String,
}

#[derive(Serialize, Deserialize)]
struct TokenDoc {
    refresh_token: String,
    access_token: Option<String>,
    expires_at: Option<i64>,
}

#[async_trait]
impl TokenStore for SealedTokenStore {
    async fn load(&self) -> Result<Option<StoredTokens>, ZohoError> {
        let fresh = StoredTokens {
            refresh_token: self.refresh_token.clone(),
            access_token: None,
            expires_at: None,
        };
        let text = self
            .store
            .get_state(&self.tenant, TOKENS_STATE)
            .await
            .map_err(|e| ZohoError::TokenStore(e.to_string()))?;
        let Some(text) = text else {
            return Ok(Some(fresh));
        };
        let doc: Option<TokenDoc> = self
            .sealer
            .open(&text)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        let Some(doc) = doc else {
            // Sealed under another key (the key changed, or another node's):
            // the connection's refresh token still works.
            tracing::warn!(tenant = %self.tenant, "saved Zoho tokens cannot be read; refreshing");
            return Ok(Some(fresh));
        };
        if doc.refresh_token != self.refresh_token {
            return Ok(Some(fresh));
        }
        Ok(Some(StoredTokens {
            refresh_token: doc.refresh_token,
            access_token: doc.access_token,
            expires_at: doc
                .expires_at
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()),
        }))
    }

    async fn save(&self, tokens: &StoredTokens) -> Result<(), ZohoError> {
        let doc = TokenDoc {
            refresh_token: tokens.refresh_token.clone(),
            access_token: tokens.access_token.clone(),
            expires_at: tokens.expires_at.map(OffsetDateTime::unix_timestamp),
        };
        let plain = serde_json::to_vec(&doc).map_err(|e| ZohoError::TokenStore(e.to_string()))?;
        self.store
            .put_state(&self.tenant, TOKENS_STATE, &self.sealer.seal(&plain))
            .await
            .map_err(|e| ZohoError::TokenStore(e.to_string()))
    }
}

/// Tuning applied to every client built here.
#[derive(Debug, Clone)]
pub struct ClientTuning {
    pub requests_per_second: u32,
    pub max_concurrency: usize,
    pub daily_credits: Option<u32>,
    pub request_timeout: std::time::Duration,
    pub max_attempts: u32,
    pub backoff_initial: std::time::Duration,
    pub throttle_budget: std::time::Duration,
}

/// A tenant's live connection.
#[derive(Clone)]
struct Live {
    connection: Connection,
    client: ZohoClient,
    /// Set when a refresh failed: the sync waits until the connection is set again.
    paused: Option<String>,
    /// When the stored connection was last read (another node may replace it).
    checked: std::time::Instant,
}

/// How often a node looks for a connection another node stored.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Every tenant's connection and client.
pub struct Connections {
    store: SharedStore,
    sealer: Option<Sealer>,
    tuning: ClientTuning,
    /// From `[zoho]`: (tenant, connection).
    configured: Option<(String, Connection)>,
    live: Mutex<HashMap<String, Live>>,
}

impl Connections {
    pub fn new(
        store: SharedStore,
        encryption_key: Option<&str>,
        tuning: ClientTuning,
        configured: Option<(String, Connection)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            sealer: encryption_key.map(Sealer::new),
            tuning,
            configured,
            live: Mutex::new(HashMap::new()),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(&self, tenant: &str, connection: Connection) -> Result<Live, ConnectionError> {
        let sealer = self.sealer.clone().ok_or(ConnectionError::NoKey)?;
        let mut config = ClientConfig::new(
            &connection.api_url,
            &connection.accounts_url,
            &connection.client_id,
            &connection.client_secret,
        );
        let t = &self.tuning;
        config.requests_per_second =
            std::num::NonZeroU32::new(t.requests_per_second).unwrap_or(std::num::NonZeroU32::MIN);
        config.max_concurrency = t.max_concurrency.max(1);
        config.max_complex_concurrency = config.max_complex_concurrency.min(config.max_concurrency);
        config.daily_credits = t.daily_credits.and_then(std::num::NonZeroU32::new);
        config.request_timeout = t.request_timeout;
        config.max_attempts = t.max_attempts.max(1);
        config.backoff_initial = t.backoff_initial;
        config.backoff_max = config.backoff_max.max(t.backoff_initial);
        config.throttle_budget = t.throttle_budget;
        let tokens = Arc::new(SealedTokenStore {
            store: self.store.clone(),
            sealer,
            tenant: tenant.to_owned(),
            refresh_token: connection.refresh_token.clone(),
        });
        let client = ZohoClient::new(config, tokens)?;
        Ok(Live {
            connection,
            client,
            paused: None,
            checked: std::time::Instant::now(),
        })
    }

    /// The tenant's client: the stored connection, else the configured
    /// one; `None` when the tenant has no connection (or it is paused).
    pub async fn client(&self, tenant: &str) -> Option<ZohoClient> {
        let known = self.live().get(tenant).map(|live| {
            (
                live.checked.elapsed() < RECHECK,
                live.connection.updated_at.clone(),
                live.paused.is_none().then(|| live.client.clone()),
            )
        });
        if let Some((true, _, client)) = &known {
            return client.clone();
        }
        let connection = match self.load(tenant).await {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(tenant, error = %e, "the Zoho connection cannot be loaded");
                return known.and_then(|(_, _, client)| client);
            }
        };
        if let Some((_, updated_at, client)) = known
            && updated_at == connection.updated_at
        {
            if let Some(live) = self.live().get_mut(tenant) {
                live.checked = std::time::Instant::now();
            }
            return client;
        }
        match self.build(tenant, connection) {
            Ok(live) => {
                let client = live.client.clone();
                self.live().insert(tenant.to_owned(), live);
                Some(client)
            }
            Err(e) => {
                tracing::warn!(tenant, error = %e, "the Zoho client cannot be built");
                None
            }
        }
    }

    async fn load(&self, tenant: &str) -> Result<Option<Connection>, ConnectionError> {
        if let Some(text) = self.store.get_state(tenant, CONNECTION_STATE).await? {
            let sealer = self.sealer.as_ref().ok_or(ConnectionError::NoKey)?;
            let plain = sealer.open(&text)?;
            return serde_json::from_slice(&plain)
                .map(Some)
                .map_err(|e| ConnectionError::Decrypt(e.to_string()));
        }
        Ok(self
            .configured
            .as_ref()
            .filter(|(t, _)| t == tenant)
            .map(|(_, c)| c.clone()))
    }

    /// Stores a connection (encrypted) and starts using it.
    pub async fn set(&self, tenant: &str, connection: Connection) -> Result<(), ConnectionError> {
        let sealer = self.sealer.as_ref().ok_or(ConnectionError::NoKey)?;
        let live = self.build(tenant, connection.clone())?;
        let plain =
            serde_json::to_vec(&connection).map_err(|e| ConnectionError::Invalid(e.to_string()))?;
        self.store
            .put_state(tenant, CONNECTION_STATE, &sealer.seal(&plain))
            .await?;
        self.live().insert(tenant.to_owned(), live);
        // Changes that waited for a connection go now.
        self.store.unpark_jobs(tenant).await?;
        Ok(())
    }

    /// Stops syncing a tenant until its connection is set again (a refresh
    /// token Zoho refused).
    pub fn pause(&self, tenant: &str, reason: &str) {
        if let Some(live) = self.live().get_mut(tenant)
            && live.paused.is_none()
        {
            tracing::error!(tenant, reason, "Zoho connection paused");
            live.paused = Some(reason.to_owned());
        }
    }

    /// Tenants with a connection known to this node.
    pub fn tenants(&self) -> Vec<String> {
        let mut out: Vec<String> = self.live().keys().cloned().collect();
        if let Some((t, _)) = &self.configured
            && !out.contains(t)
        {
            out.push(t.clone());
        }
        out
    }

    /// The connection's state without secrets.
    pub async fn view(&self, tenant: &str) -> Result<Value, ConnectionError> {
        let client = self.client(tenant).await;
        let live = self.live().get(tenant).cloned();
        let Some(live) = live else {
            return Ok(json!({"configured": false, "state": "not_configured"}));
        };
        let c = &live.connection;
        let state = if live.paused.is_some() {
            "paused"
        } else if client.is_some() {
            "active"
        } else {
            "error"
        };
        let mut view = json!({
            "configured": true,
            "state": state,
            "source": c.source,
            "client_id": mask(&c.client_id),
            "data_centre": c.data_centre,
            "accounts_url": c.accounts_url,
            "api_url": c.api_url,
            "updated_at": c.updated_at,
            "encrypted_at_rest": c.source == "api",
        });
        if let Some(reason) = &live.paused {
            view["error"] = json!(reason);
        }
        if let Some(left) = live.client.credits_remaining() {
            view["credits_remaining"] = json!(left);
        }
        Ok(view)
    }
}

/// Shows the first four characters of an identifier.
fn mask(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_with_the_same_key_only() {
        let a = Sealer::new("key one");
        let sealed = a.seal(b"refresh-token-123");
        assert!(!sealed.contains("refresh-token-123"));
        assert_eq!(a.open(&sealed).unwrap(), b"refresh-token-123");
        assert!(matches!(
            Sealer::new("key two").open(&sealed),
            Err(ConnectionError::Decrypt(_))
        ));
        // Two seals of one text differ (a fresh nonce each).
        assert_ne!(a.seal(b"x"), a.seal(b"x"));
    }

    #[test]
    fn a_tampered_seal_is_refused() {
        let a = Sealer::new("k");
        let mut sealed = a.seal(b"secret").into_bytes();
        let last = sealed.len() - 2;
        sealed[last] = if sealed[last] == b'A' { b'B' } else { b'A' };
        assert!(a.open(std::str::from_utf8(&sealed).unwrap()).is_err());
        assert!(a.open("plain text").is_err());
    }

    fn input(dc: Option<&str>, urls: Option<(&str, &str)>) -> ConnectionInput {
        ConnectionInput {
            client_id: "1000.ABC".into(),
            client_secret: "s".into(),
            refresh_token: "r".into(),
            data_centre: dc.map(str::to_owned),
            accounts_url: urls.map(|u| u.0.to_owned()),
            api_url: urls.map(|u| u.1.to_owned()),
        }
    }

    #[tokio::test]
    async fn a_stored_connection_is_sealed_and_another_key_cannot_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::store::sqlite::SqliteStore::open(&dir.path().join("c.db"))
            .await
            .unwrap();
        sqlite.migrate().await.unwrap();
        let store: SharedStore = Arc::new(sqlite);
        let tuning = ClientTuning {
            requests_per_second: 10,
            max_concurrency: 2,
            daily_credits: None,
            request_timeout: std::time::Duration::from_secs(1),
            max_attempts: 1,
            backoff_initial: std::time::Duration::from_millis(10),
            throttle_budget: std::time::Duration::from_secs(1),
        };
        let connections = Connections::new(store.clone(), Some("key one"), tuning.clone(), None);
        let connection = ConnectionInput {
            client_id: "1000.CLIENT".into(),
            client_secret: "the-client-secret".into(),
            refresh_token: "the-refresh-token".into(),
            data_centre: Some("us".into()),
            accounts_url: None,
            api_url: None,
        }
        .into_connection()
        .unwrap();
        connections.set("t", connection).await.unwrap();
        let raw = store
            .get_state("t", CONNECTION_STATE)
            .await
            .unwrap()
            .unwrap();
        assert!(raw.starts_with("v1:"));
        assert!(!raw.contains("the-refresh-token") && !raw.contains("the-client-secret"));
        let view = connections.view("t").await.unwrap().to_string();
        assert!(!view.contains("the-refresh-token") && !view.contains("the-client-secret"));
        assert!(view.contains("\"state\":\"active\""), "{view}");
        // Another node with another key cannot use it (and says so).
        let other = Connections::new(store, Some("key two"), tuning, None);
        assert!(other.client("t").await.is_none());
        assert!(matches!(
            other.load("t").await,
            Err(ConnectionError::Decrypt(_))
        ));
    }

    #[test]
    fn a_data_centre_resolves_to_its_urls_and_custom_urls_need_both() {
        let c = input(Some("EU"), None).into_connection().unwrap();
        assert_eq!(c.accounts_url, "https://accounts.zoho.eu");
        assert_eq!(c.api_url, "https://www.zohoapis.eu");
        let c = input(None, Some(("http://127.0.0.1:9/", "http://127.0.0.1:9")))
            .into_connection()
            .unwrap();
        assert_eq!(c.accounts_url, "http://127.0.0.1:9");
        for bad in [
            input(Some("mars"), None),
            input(None, None),
            input(Some("us"), Some(("https://a", "https://b"))),
            input(None, Some(("ftp://a", "https://b"))),
        ] {
            assert!(matches!(
                bad.into_connection(),
                Err(ConnectionError::Invalid(_))
            ));
        }
    }
}
