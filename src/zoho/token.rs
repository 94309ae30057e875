//! OAuth tokens: the [`TokenStore`] trait the rest of synchub implements
//! (so tokens can be kept encrypted), an in-memory store, and the
//! [`TokenManager`] that refreshes access tokens before they expire and after
//! an `INVALID_TOKEN`, with at most one refresh in flight.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use super::error::ZohoError;

/// What is kept between runs. The refresh token is the secret that matters;
/// the access token is cached so a restart does not always refresh.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredTokens {
    pub refresh_token: String,
    pub access_token: Option<String>,
    pub expires_at: Option<OffsetDateTime>,
}

impl fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs.
        f.debug_struct("StoredTokens")
            .field("refresh_token", &"<redacted>")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Where OAuth tokens live.
///
/// Contract: `save` returns only once the tokens would survive a restart
/// (for a persistent store), and `load` returns the last saved value. The
/// client calls `save` after every refresh and never concurrently with
/// itself. Implementations may encrypt at rest; the client only sees
/// plaintext through this trait.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn load(&self) -> Result<Option<StoredTokens>, ZohoError>;
    async fn save(&self, tokens: &StoredTokens) -> Result<(), ZohoError>;
}

/// Tokens in process memory, for tests, the emulator and one-off tools.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    tokens: Mutex<Option<StoredTokens>>,
}

impl MemoryTokenStore {
    pub fn new(refresh_token: impl Into<String>) -> Self {
        Self {
            tokens: Mutex::new(Some(StoredTokens {
                refresh_token: refresh_token.into(),
                access_token: None,
                expires_at: None,
            })),
        }
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self) -> Result<Option<StoredTokens>, ZohoError> {
        Ok(self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    async fn save(&self, tokens: &StoredTokens) -> Result<(), ZohoError> {
        *self.tokens.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokens.clone());
        Ok(())
    }
}

/// Access-token cache and refresher.
pub struct TokenManager {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: String,
    refresh_margin: Duration,
    timeout: Duration,
    store: std::sync::Arc<dyn TokenStore>,
    /// Held across the refresh call: this is what makes a refresh single-flight.
    state: tokio::sync::Mutex<Cache>,
}

/// The access token in use, and whether the store was consulted yet (only
/// once: after a rejection the stored copy is as stale as the cached one).
#[derive(Default)]
struct Cache {
    current: Option<(String, OffsetDateTime)>,
    store_checked: bool,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    pub fn new(
        http: reqwest::Client,
        token_url: String,
        client_id: String,
        client_secret: String,
        refresh_margin: Duration,
        timeout: Duration,
        store: std::sync::Arc<dyn TokenStore>,
    ) -> Self {
        Self {
            http,
            token_url,
            client_id,
            client_secret,
            refresh_margin,
            timeout,
            store,
            state: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    fn fresh(&self, expires: OffsetDateTime) -> bool {
        expires - self.refresh_margin > OffsetDateTime::now_utc()
    }

    /// A usable access token: the cached one, the stored one, or a new one
    /// if both are missing or within the refresh margin of expiry.
    pub async fn access_token(&self) -> Result<String, ZohoError> {
        let mut cache = self.state.lock().await;
        if let Some((token, expires)) = cache.current.as_ref()
            && self.fresh(*expires)
        {
            return Ok(token.clone());
        }
        if !cache.store_checked {
            cache.store_checked = true;
            if let Some(StoredTokens {
                access_token: Some(token),
                expires_at: Some(expires),
                ..
            }) = self.store.load().await?
                && self.fresh(expires)
            {
                cache.current = Some((token.clone(), expires));
                return Ok(token);
            }
        }
        self.refresh(&mut cache.current).await
    }

    /// Zoho refused `stale`: forget it, so the next [`Self::access_token`]
    /// refreshes. If another task already replaced it, nothing happens and
    /// that task's token is used: one refresh per rejection wave.
    pub async fn invalidate(&self, stale: &str) {
        let mut cache = self.state.lock().await;
        if cache
            .current
            .as_ref()
            .is_some_and(|(token, _)| token == stale)
        {
            cache.current = None;
        }
    }

    async fn refresh(
        &self,
        current: &mut Option<(String, OffsetDateTime)>,
    ) -> Result<String, ZohoError> {
        let stored = self
            .store
            .load()
            .await?
            .ok_or_else(|| ZohoError::AuthFailed {
                error: "no refresh token stored; connect Zoho first".into(),
            })?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", &self.client_secret)
            .append_pair("refresh_token", &stored.refresh_token)
            .finish();
        let response = self
            .http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e, self.timeout))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| transport_error(&e, self.timeout))?;
        if status >= 500 {
            return Err(ZohoError::Server {
                status,
                code: "TOKEN_ENDPOINT".into(),
                message: "the token endpoint failed".into(),
            });
        }
        let reply: Value = serde_json::from_str(&text).map_err(|_| ZohoError::Permanent {
            code: "INVALID_TOKEN_RESPONSE".into(),
            message: format!("the token endpoint answered HTTP {status} without JSON"),
        })?;
        // Zoho reports token errors in an `error` key, often with HTTP 200.
        if let Some(error) = reply.get("error").and_then(Value::as_str) {
            if error == "Access Denied" {
                return Err(ZohoError::RateLimited {
                    code: "ACCESS_DENIED".into(),
                    retry_after: None,
                    credits_remaining: None,
                });
            }
            return Err(ZohoError::AuthFailed {
                error: error.to_owned(),
            });
        }
        let token = reply
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ZohoError::AuthFailed {
                error: "no access_token in the token response".into(),
            })?
            .to_owned();
        let expires_in = reply
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        // Old responses carried `expires_in_sec`, and then `expires_in` was in ms.
        let seconds = match reply.get("expires_in_sec").and_then(Value::as_u64) {
            Some(sec) => sec,
            None => expires_in,
        };
        let expires = OffsetDateTime::now_utc() + Duration::from_secs(seconds);
        self.store
            .save(&StoredTokens {
                refresh_token: stored.refresh_token,
                access_token: Some(token.clone()),
                expires_at: Some(expires),
            })
            .await?;
        *current = Some((token.clone(), expires));
        Ok(token)
    }
}

/// Maps a reqwest failure to the client's error classes.
pub(crate) fn transport_error(err: &reqwest::Error, timeout: Duration) -> ZohoError {
    if err.is_timeout() {
        ZohoError::Timeout { after: timeout }
    } else {
        ZohoError::Network {
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_tokens_never_print_their_secrets() {
        let tokens = StoredTokens {
            refresh_token: "1000.secret".into(),
            access_token: Some("1000.access".into()),
            expires_at: None,
        };
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("secret") && !shown.contains("1000.access"));
    }

    #[tokio::test]
    async fn the_memory_store_returns_what_was_saved() {
        let store = MemoryTokenStore::new("r1");
        let mut tokens = store.load().await.unwrap().unwrap();
        tokens.access_token = Some("a1".into());
        store.save(&tokens).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(tokens));
    }
}
