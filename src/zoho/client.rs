//! The Zoho CRM v8 client: every call the sync makes, with the plumbing that
//! keeps it alive against real Zoho behaviour.
//!
//! Each request passes the client-side rate limiters (governor: a per-second
//! quota and an optional daily credit budget) and a concurrency semaphore,
//! carries a fresh access token, and is retried by error class: 401 refreshes
//! the token once, 429 is waited out within a throttle budget, 5xx and
//! timeouts back off with jitter only when the call is idempotent, and
//! validation, not-found and RECORD_LOCKED are returned at once. Writes go in
//! batches of at most 100 with `trigger: []`, and report per-record results.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;

use super::error::{RetryAdvice, ZohoError};
use super::token::{TokenManager, TokenStore, transport_error};

/// A Zoho record: field API names to JSON values (`id` included).
pub type Record = Map<String, Value>;

/// Zoho's limits the client enforces before sending.
pub const MAX_WRITE_BATCH: usize = 100;
pub const MAX_PER_PAGE: u32 = 200;
pub const MAX_FIELDS: usize = 50;

/// How the client reaches Zoho and how patient it is.
#[derive(Clone)]
pub struct ClientConfig {
    /// API domain, e.g. `https://www.zohoapis.com` or the emulator's base URL.
    pub api_base: String,
    /// Accounts server, e.g. `https://accounts.zoho.com`; the token endpoint
    /// is `{accounts_url}/oauth/v2/token`.
    pub accounts_url: String,
    /// File upload host for bulk write (`https://content.zohoapis.com`);
    /// `api_base` when `None`, as with the emulator.
    pub upload_base: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    /// Per HTTP attempt.
    pub request_timeout: Duration,
    /// Attempts for transient failures (5xx, timeouts), the first included.
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Total time one call may spend waiting out 429s before giving up.
    pub throttle_budget: Duration,
    /// Client-side request rate.
    pub requests_per_second: NonZeroU32,
    /// Credits per rolling 24 hours the client may spend (`None`: unmetered).
    pub daily_credits: Option<NonZeroU32>,
    /// Requests in flight at once; keep it below the edition's concurrency.
    pub max_concurrency: usize,
    /// "Complex" requests in flight at once (COQL, mass update, bulk,
    /// sorted lists, writes of more than 10 records); Zoho allows 10.
    pub max_complex_concurrency: usize,
    /// Refresh the access token when less than this remains.
    pub refresh_margin: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("api_base", &self.api_base)
            .field("accounts_url", &self.accounts_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Production defaults: 30 s timeout, 5 attempts, backoff 1 s..60 s,
    /// 10 minutes of throttling, 10 requests/s, 10 in flight.
    pub fn new(
        api_base: impl Into<String>,
        accounts_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        Self {
            api_base: api_base.into().trim_end_matches('/').to_owned(),
            accounts_url: accounts_url.into().trim_end_matches('/').to_owned(),
            upload_base: None,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            request_timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            throttle_budget: Duration::from_secs(600),
            requests_per_second: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            daily_credits: None,
            max_concurrency: 10,
            max_complex_concurrency: 5,
            refresh_margin: Duration::from_secs(300),
        }
    }

    fn token_url(&self) -> String {
        format!("{}/oauth/v2/token", self.accounts_url)
    }
}

/// A successful HTTP exchange, before its body is interpreted.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    bytes: bytes::Bytes,
}

/// One request as the retry loop replays it.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    url: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    /// Safe to repeat when the outcome is unknown.
    idempotent: bool,
    /// A 4xx with a `data[]` of per-record entries is a result, not an error.
    per_record: bool,
    /// Counts against Zoho's sub-concurrency for complex APIs.
    complex: bool,
    /// The reply is a file, not JSON.
    raw: bool,
}

impl Call {
    fn new(method: Method, url: String, idempotent: bool) -> Self {
        let complex =
            url.contains("/coql") || url.contains("/mass_update") || url.contains("/crm/bulk/");
        Self {
            method,
            url,
            query: vec![],
            body: None,
            headers: vec![],
            idempotent,
            per_record: false,
            complex,
            raw: false,
        }
    }

    fn param(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_owned(), value.into()));
        self
    }

    fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn url_with_query(&self) -> String {
        if self.query.is_empty() {
            return self.url.clone();
        }
        // Percent-encode everything outside the unreserved set, so `+` in a
        // datetime offset and spaces in criteria survive any server decoding.
        let encoded: Vec<String> = self
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        format!("{}?{}", self.url, encoded.join("&"))
    }
}

const QUERY_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, QUERY_SET).to_string()
}

/// Zoho datetimes as the client sends them: RFC 3339, whole seconds.
pub fn zoho_time(at: OffsetDateTime) -> String {
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}

/// What happened to one record of a batch write.
#[derive(Debug)]
pub struct RecordResult {
    /// Position in the caller's input.
    pub index: usize,
    pub outcome: Result<RecordSuccess, ZohoError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAction {
    Inserted,
    Updated,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct RecordSuccess {
    pub id: String,
    pub action: WriteAction,
    /// The new `Modified_Time` as Zoho reported it: the new version stamp,
    /// usable without a re-read.
    pub modified_time: Option<String>,
    /// For upserts that updated: the field that matched.
    pub duplicate_field: Option<String>,
}

/// Module metadata the sync relies on.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModuleMeta {
    pub api_name: String,
    #[serde(default)]
    pub module_name: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub singular_label: Option<String>,
    #[serde(default)]
    pub plural_label: Option<String>,
    #[serde(default)]
    pub api_supported: bool,
    #[serde(default)]
    pub generated_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PickListValue {
    pub display_value: String,
    #[serde(default)]
    pub actual_value: Option<String>,
}

/// Field metadata the sync relies on.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FieldMeta {
    pub api_name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_label: Option<String>,
    #[serde(default)]
    pub field_label: Option<String>,
    pub data_type: String,
    #[serde(default)]
    pub json_type: Option<String>,
    #[serde(default)]
    pub system_mandatory: bool,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub custom_field: bool,
    #[serde(default)]
    pub length: Option<u64>,
    #[serde(default)]
    pub unique: Value,
    #[serde(default)]
    pub pick_list_values: Vec<PickListValue>,
}

impl FieldMeta {
    /// Whether Zoho refuses duplicates in this field.
    pub fn is_unique(&self) -> bool {
        self.unique.as_object().is_some_and(|u| !u.is_empty())
    }
}

/// A custom field to create.
#[derive(Debug, Clone, Serialize)]
pub struct NewField {
    pub field_label: String,
    pub data_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pick_list_values: Vec<Value>,
    /// `{"case_sensitive": false}` makes the field unique (an upsert key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique: Option<Value>,
}

/// A change to a custom field; absent parts stay as they are.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FieldPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pick_list_values: Vec<Value>,
}

/// How to order a full fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Id,
    ModifiedTime,
    CreatedTime,
}

impl SortBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::ModifiedTime => "Modified_Time",
            Self::CreatedTime => "Created_Time",
        }
    }
}

/// A record list request (`GET /crm/v8/{module}`).
#[derive(Debug, Clone)]
pub struct ListRequest {
    pub module: String,
    pub fields: Vec<String>,
    pub sort_by: SortBy,
    pub ascending: bool,
    pub per_page: u32,
    /// `If-Modified-Since`: records modified at or after this instant.
    pub modified_since: Option<OffsetDateTime>,
}

impl ListRequest {
    pub fn new(module: impl Into<String>, fields: &[&str]) -> Self {
        Self {
            module: module.into(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            sort_by: SortBy::Id,
            ascending: true,
            per_page: MAX_PER_PAGE,
            modified_since: None,
        }
    }
}

/// Where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCursor {
    Page(u32),
    Token(String),
}

/// One page of records.
#[derive(Debug, Clone)]
pub struct Page {
    pub records: Vec<Record>,
    pub next: Option<PageCursor>,
    /// True when Zoho answered 304: nothing changed since `modified_since`.
    pub not_modified: bool,
}

/// A search (`GET /crm/v8/{module}/search`); one kind per call.
#[derive(Debug, Clone)]
pub enum Search {
    /// `((Field:operator:value)and(...))`; escape values with [`escape_criteria`].
    Criteria(String),
    Email(String),
    Phone(String),
    Word(String),
}

/// Escapes a value for search criteria: `(`, `)`, `,` and `\`.
pub fn escape_criteria(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '(' | ')' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct DeletedRecord {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub deleted_time: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct MassUpdateStatus {
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "Total_Count", default)]
    pub total: u64,
    #[serde(rename = "Updated_Count", default)]
    pub updated: u64,
    #[serde(rename = "Not_Updated_Count", default)]
    pub not_updated: u64,
    #[serde(rename = "Failed_Count", default)]
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkWriteStatus {
    /// `ADDED`, `IN PROGRESS`, `COMPLETED` or `FAILED`.
    pub status: String,
    pub added: u64,
    pub updated: u64,
    pub skipped: u64,
    pub total: u64,
    pub download_url: Option<String>,
}

/// A Watch API channel to enable or renew.
#[derive(Debug, Clone)]
pub struct WatchChannel {
    pub channel_id: String,
    /// `"{Module}.{create|edit|delete|all}"`.
    pub events: Vec<String>,
    pub notify_url: String,
    /// Sent back in every callback; at most 50 characters.
    pub token: Option<String>,
    /// At most a week ahead; Zoho's default is one hour.
    pub expiry: Option<OffsetDateTime>,
    pub return_affected_field_values: bool,
}

/// A channel Zoho accepted, with the expiry it granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchGrant {
    pub channel_id: String,
    pub channel_expiry: Option<String>,
}

/// The Zoho client; cheap to clone, all clones share limits and tokens.
#[derive(Clone)]
pub struct ZohoClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    http: reqwest::Client,
    tokens: TokenManager,
    rate: DefaultDirectRateLimiter,
    credits: Option<DefaultDirectRateLimiter>,
    slots: Semaphore,
    complex_slots: Semaphore,
    /// Last `X-API-CREDITS-REMAINING` seen; `u64::MAX` until Zoho sends one.
    credits_seen: AtomicU64,
}

impl fmt::Debug for ZohoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZohoClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ZohoClient {
    /// Builds a client; tokens come from and go to `store`.
    pub fn new(config: ClientConfig, store: Arc<dyn TokenStore>) -> Result<Self, ZohoError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("synchub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ZohoError::Permanent {
                code: "CLIENT_SETUP".into(),
                message: e.to_string(),
            })?;
        let tokens = TokenManager::new(
            http.clone(),
            config.token_url(),
            config.client_id.clone(),
            config.client_secret.clone(),
            config.refresh_margin,
            config.request_timeout,
            store,
        );
        let rate = RateLimiter::direct(Quota::per_second(config.requests_per_second));
        // A daily budget as a bucket that holds the whole day and refills
        // evenly: never more than the budget in any 24 hours.
        let credits = config.daily_credits.and_then(|credits| {
            let period = Duration::from_secs(86_400) / credits.get();
            Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(credits)))
        });
        let slots = Semaphore::new(config.max_concurrency.max(1));
        let complex_slots = Semaphore::new(config.max_complex_concurrency.max(1));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                http,
                tokens,
                rate,
                credits,
                slots,
                complex_slots,
                credits_seen: AtomicU64::new(u64::MAX),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The credits Zoho last said remain in its 24-hour window. Zoho only
    /// sends this once half the day's credits are spent, so `None` means
    /// "plenty" (or no call made yet).
    pub fn credits_remaining(&self) -> Option<u64> {
        match self.inner.credits_seen.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/crm/v8{path}", self.inner.config.api_base)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let exp = c
            .backoff_initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(c.backoff_max);
        // Equal jitter: at least half the step, so retries still spread out.
        let half = exp / 2;
        let jitter = rand::rng().random_range(0.0..=1.0);
        half + half.mul_f64(jitter)
    }

    /// One attempt: limiters, a slot, a token, the HTTP exchange.
    async fn attempt(&self, call: &Call, token: &str) -> Result<Reply, ZohoError> {
        let inner = &*self.inner;
        inner.rate.until_ready().await;
        if let Some(credits) = &inner.credits {
            credits.until_ready().await;
        }
        let closed = |_| ZohoError::Permanent {
            code: "CLIENT_CLOSED".into(),
            message: "the client is shutting down".into(),
        };
        // The complex slot first, so a waiting complex call holds no plain slot.
        let _complex = match call.complex {
            true => Some(inner.complex_slots.acquire().await.map_err(closed)?),
            false => None,
        };
        let _slot = inner.slots.acquire().await.map_err(closed)?;
        let timeout = inner.config.request_timeout;
        let mut request = inner
            .http
            .request(call.method.clone(), call.url_with_query())
            .header("Authorization", format!("Zoho-oauthtoken {token}"))
            .timeout(timeout);
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = &call.body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&e, timeout))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(left) = headers
            .get("x-api-credits-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            inner.credits_seen.store(left, Ordering::Relaxed);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(&e, timeout))?;
        let parsed = if bytes.is_empty() || call.raw {
            Ok(Value::Null)
        } else {
            serde_json::from_slice(&bytes)
        };
        // A success that is not JSON (a proxy's HTML page) must never be
        // read as "no records".
        if (200..300).contains(&status) && parsed.is_err() {
            return Err(malformed(&format!(
                "HTTP {status} with a body that is not JSON"
            )));
        }
        let body = parsed.unwrap_or(Value::Null);
        let per_record = call.per_record && body.get("data").is_some_and(Value::is_array);
        if (200..400).contains(&status) || (per_record && (400..500).contains(&status)) {
            return Ok(Reply {
                status,
                body,
                bytes,
            });
        }
        let code = body.get("code").and_then(Value::as_str).unwrap_or_default();
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let details = body.get("details").cloned().unwrap_or(Value::Null);
        let mut err = if code.is_empty() {
            match status {
                401 => ZohoError::AuthExpired {
                    code: "HTTP_401".into(),
                    message: "unauthorised".into(),
                },
                429 => ZohoError::from_reply(429, "TOO_MANY_REQUESTS", "", Value::Null),
                500..=599 => ZohoError::Server {
                    status,
                    code: format!("HTTP_{status}"),
                    message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
                404 => ZohoError::NotFound {
                    code: "HTTP_404".into(),
                    message: "not found".into(),
                },
                _ => ZohoError::Permanent {
                    code: format!("HTTP_{status}"),
                    message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
            }
        } else {
            ZohoError::from_reply(status, code, message, details)
        };
        if let ZohoError::RateLimited {
            retry_after,
            credits_remaining,
            ..
        } = &mut err
        {
            *retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            *credits_remaining = headers
                .get("x-api-credits-remaining")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
        }
        Err(err)
    }

    /// The retry loop: what each error class allows, and nothing more.
    async fn send(&self, call: Call) -> Result<Reply, ZohoError> {
        let config = &self.inner.config;
        let mut attempts = 0u32;
        let mut refreshed = false;
        let mut throttled = Duration::ZERO;
        let mut throttle_round = 0u32;
        let mut token: Option<String> = None;
        loop {
            // Token errors go through the same advice as call errors: a
            // throttled token endpoint is waited out, refused credentials are not.
            let err = match &token {
                None => match self.inner.tokens.access_token().await {
                    Ok(fresh) => {
                        token = Some(fresh);
                        continue;
                    }
                    Err(err) => err,
                },
                Some(current) => match self.attempt(&call, current).await {
                    Ok(reply) => return Ok(reply),
                    Err(err) => err,
                },
            };
            match err.retry_advice() {
                RetryAdvice::RefreshToken if !refreshed => {
                    refreshed = true;
                    tracing::debug!(url = %call.url, "Zoho refused the access token; refreshing once");
                    if let Some(stale) = token.take() {
                        self.inner.tokens.invalidate(&stale).await;
                    }
                }
                RetryAdvice::Throttle { after } => {
                    throttle_round += 1;
                    let wait = after.unwrap_or_else(|| self.backoff(throttle_round));
                    if throttled + wait > config.throttle_budget {
                        return Err(err);
                    }
                    throttled += wait;
                    tracing::debug!(?wait, url = %call.url, "Zoho rate limit; waiting");
                    tokio::time::sleep(wait).await;
                }
                RetryAdvice::Backoff | RetryAdvice::IfIdempotent if call.idempotent => {
                    attempts += 1;
                    if attempts >= config.max_attempts {
                        return Err(err);
                    }
                    let wait = self.backoff(attempts);
                    tracing::debug!(?wait, attempt = attempts, error = %err, "retrying Zoho call");
                    tokio::time::sleep(wait).await;
                    // A refresh may be due after a long wait.
                    token = None;
                }
                _ => return Err(err),
            }
        }
    }

    // ---- metadata -------------------------------------------------------

    pub async fn modules(&self) -> Result<Vec<ModuleMeta>, ZohoError> {
        let reply = self
            .send(Call::new(Method::GET, self.api("/settings/modules"), true))
            .await?;
        decode_list(&reply.body, "modules")
    }

    pub async fn fields(&self, module: &str) -> Result<Vec<FieldMeta>, ZohoError> {
        let call =
            Call::new(Method::GET, self.api("/settings/fields"), true).param("module", module);
        let reply = self.send(call).await?;
        decode_list(&reply.body, "fields")
    }

    /// Creates a custom field and returns its id.
    pub async fn create_field(&self, module: &str, field: &NewField) -> Result<String, ZohoError> {
        let call = Call::new(Method::POST, self.api("/settings/fields"), false)
            .param("module", module)
            .json(json!({"fields": [field]}));
        let reply = self.send(call).await?;
        let entry = first_entry(&reply.body, "fields")?;
        entry_id(&entry)
    }

    pub async fn update_field(
        &self,
        module: &str,
        field_id: &str,
        patch: &FieldPatch,
    ) -> Result<(), ZohoError> {
        let call = Call::new(
            Method::PATCH,
            self.api(&format!("/settings/fields/{field_id}")),
            true,
        )
        .param("module", module)
        .json(json!({"fields": [patch]}));
        let reply = self.send(call).await?;
        first_entry(&reply.body, "fields").map(|_| ())
    }

    // ---- reading records --------------------------------------------------

    /// One page of a record list.
    pub async fn list_page(
        &self,
        request: &ListRequest,
        cursor: &PageCursor,
    ) -> Result<Page, ZohoError> {
        if request.fields.is_empty() || request.fields.len() > MAX_FIELDS {
            return Err(ZohoError::Validation {
                code: "CLIENT_FIELDS".into(),
                message: format!("a record list needs 1 to {MAX_FIELDS} fields"),
                details: Value::Null,
            });
        }
        let mut call = Call::new(Method::GET, self.api(&format!("/{}", request.module)), true)
            .param("fields", request.fields.join(","))
            .param(
                "per_page",
                request.per_page.clamp(1, MAX_PER_PAGE).to_string(),
            )
            .param("sort_by", request.sort_by.as_str())
            .param("sort_order", if request.ascending { "asc" } else { "desc" });
        call.complex = true;
        call = match cursor {
            PageCursor::Page(n) => call.param("page", n.to_string()),
            PageCursor::Token(t) => call.param("page_token", t.clone()),
        };
        if let Some(since) = request.modified_since {
            call = call.header("If-Modified-Since", zoho_time(since));
        }
        let reply = self.send(call).await?;
        if reply.status == 304 || reply.status == 204 {
            return Ok(Page {
                records: vec![],
                next: None,
                not_modified: reply.status == 304,
            });
        }
        let records = records_of(&reply.body)?;
        let info = reply.body.get("info").cloned().unwrap_or(Value::Null);
        let more = info
            .get("more_records")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let next = if !more {
            None
        } else if let Some(token) = info.get("next_page_token").and_then(Value::as_str) {
            Some(PageCursor::Token(token.to_owned()))
        } else {
            // Without a token only the first 2,000 records can be reached;
            // stopping there silently would pass for a complete fetch.
            match cursor {
                PageCursor::Page(n) if (n + 1) * request.per_page <= 2_000 => {
                    Some(PageCursor::Page(n + 1))
                }
                _ => {
                    return Err(malformed(
                        "more records exist but Zoho sent no next_page_token",
                    ));
                }
            }
        };
        Ok(Page {
            records,
            next,
            not_modified: false,
        })
    }

    /// Every record of a list request, following pages and page tokens.
    pub async fn fetch_all_pages(&self, request: &ListRequest) -> Result<Vec<Record>, ZohoError> {
        let mut out = Vec::new();
        let mut cursor = PageCursor::Page(1);
        loop {
            let page = self.list_page(request, &cursor).await?;
            out.extend(page.records);
            match page.next {
                Some(next) => cursor = next,
                None => return Ok(out),
            }
        }
    }

    /// A full fetch in id order.
    pub async fn fetch_all(&self, module: &str, fields: &[&str]) -> Result<Vec<Record>, ZohoError> {
        self.fetch_all_pages(&ListRequest::new(module, fields))
            .await
    }

    /// Records modified at or after `since` (inclusive, as Zoho filters),
    /// oldest change first, so the last record's `Modified_Time` is the next cursor.
    pub async fn fetch_modified_since(
        &self,
        module: &str,
        fields: &[&str],
        since: OffsetDateTime,
    ) -> Result<Vec<Record>, ZohoError> {
        let mut request = ListRequest::new(module, fields);
        if !request.fields.iter().any(|f| f == "Modified_Time") {
            request.fields.push("Modified_Time".into());
        }
        request.sort_by = SortBy::ModifiedTime;
        request.modified_since = Some(since);
        self.fetch_all_pages(&request).await
    }

    /// One record, or `None` if Zoho has no such record.
    pub async fn get_record(
        &self,
        module: &str,
        id: &str,
        fields: Option<&[&str]>,
    ) -> Result<Option<Record>, ZohoError> {
        let mut call = Call::new(Method::GET, self.api(&format!("/{module}/{id}")), true);
        if let Some(fields) = fields {
            call = call.param("fields", fields.join(","));
        }
        let reply = match self.send(call).await {
            Err(ZohoError::NotFound { .. }) => return Ok(None),
            other => other?,
        };
        if reply.status == 204 {
            return Ok(None);
        }
        Ok(records_of(&reply.body)?.into_iter().next())
    }

    /// How many records the module holds (`/actions/count`).
    pub async fn count(&self, module: &str) -> Result<u64, ZohoError> {
        let call = Call::new(
            Method::GET,
            self.api(&format!("/{module}/actions/count")),
            true,
        );
        let reply = self.send(call).await?;
        if reply.status == 204 {
            return Ok(0);
        }
        reply
            .body
            .get("count")
            .and_then(Value::as_u64)
            .ok_or_else(|| malformed("a count reply without a count"))
    }

    /// Deleted records (recycle bin and permanent), newest first.
    pub async fn deleted_records(
        &self,
        module: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<DeletedRecord>, ZohoError> {
        let mut out = vec![];
        let mut page = 1u32;
        loop {
            let mut call = Call::new(Method::GET, self.api(&format!("/{module}/deleted")), true)
                .param("type", "all")
                .param("per_page", "200")
                .param("page", page.to_string());
            if let Some(since) = since {
                call = call.header("If-Modified-Since", zoho_time(since));
            }
            let reply = self.send(call).await?;
            if reply.status == 204 || reply.status == 304 {
                return Ok(out);
            }
            out.extend(decode_list::<DeletedRecord>(&reply.body, "data")?);
            let more = reply
                .body
                .pointer("/info/more_records")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !more {
                return Ok(out);
            }
            page += 1;
        }
    }

    /// Search results, all pages (Zoho stops at 2,000 records).
    pub async fn search(
        &self,
        module: &str,
        search: &Search,
        fields: Option<&[&str]>,
    ) -> Result<Vec<Record>, ZohoError> {
        let mut out = vec![];
        let mut page = 1u32;
        loop {
            let mut call = Call::new(Method::GET, self.api(&format!("/{module}/search")), true)
                .param("per_page", "200")
                .param("page", page.to_string());
            call = match search {
                Search::Criteria(c) => call.param("criteria", c.clone()),
                Search::Email(e) => call.param("email", e.clone()),
                Search::Phone(p) => call.param("phone", p.clone()),
                Search::Word(w) => call.param("word", w.clone()),
            };
            if let Some(fields) = fields {
                call = call.param("fields", fields.join(","));
            }
            let reply = self.send(call).await?;
            if reply.status == 204 {
                return Ok(out);
            }
            out.extend(records_of(&reply.body)?);
            let more = reply
                .body
                .pointer("/info/more_records")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !more || page * 200 >= 2_000 {
                return Ok(out);
            }
            page += 1;
        }
    }

    /// A COQL query; returns the rows and whether more exist beyond the limit.
    pub async fn coql(&self, query: &str) -> Result<(Vec<Record>, bool), ZohoError> {
        let call =
            Call::new(Method::POST, self.api("/coql"), true).json(json!({"select_query": query}));
        let reply = self.send(call).await?;
        if reply.status == 204 {
            return Ok((vec![], false));
        }
        let more = reply
            .body
            .pointer("/info/more_records")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok((records_of(&reply.body)?, more))
    }

    // ---- writing records --------------------------------------------------

    async fn write_batches(
        &self,
        records: &[Record],
        build: impl Fn(&[Record]) -> Call,
        action: WriteAction,
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let mut results = Vec::with_capacity(records.len());
        for (chunk_no, chunk) in records.chunks(MAX_WRITE_BATCH).enumerate() {
            let mut call = build(chunk);
            call.per_record = true;
            call.complex = chunk.len() > 10;
            let reply = self.send(call).await?;
            let entries = entries_of(&reply.body, chunk.len())?;
            for (i, entry) in entries.iter().enumerate() {
                results.push(RecordResult {
                    index: chunk_no * MAX_WRITE_BATCH + i,
                    outcome: parse_entry(entry, &action, reply.status),
                });
            }
        }
        Ok(results)
    }

    /// Inserts records (automation off: `trigger: []`). Not retried after
    /// an unknown outcome: use [`Self::upsert`] for writes that must not duplicate.
    pub async fn insert(
        &self,
        module: &str,
        records: &[Record],
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let url = self.api(&format!("/{module}"));
        self.write_batches(
            records,
            |chunk| {
                Call::new(Method::POST, url.clone(), false)
                    .json(json!({"data": chunk, "trigger": []}))
            },
            WriteAction::Inserted,
        )
        .await
    }

    /// Updates records by `id`; with `if_unmodified_since`, a record changed
    /// after that instant fails with `AlreadyModified` instead of being overwritten.
    pub async fn update(
        &self,
        module: &str,
        records: &[Record],
        if_unmodified_since: Option<OffsetDateTime>,
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let url = self.api(&format!("/{module}"));
        self.write_batches(
            records,
            |chunk| {
                let mut call = Call::new(Method::PUT, url.clone(), true)
                    .json(json!({"data": chunk, "trigger": []}));
                if let Some(at) = if_unmodified_since {
                    call = call.header("If-Unmodified-Since", zoho_time(at));
                }
                call
            },
            WriteAction::Updated,
        )
        .await
    }

    /// Inserts or updates by `duplicate_check_fields` (e.g. a unique external
    /// id field). Safe to retry after a lost reply: the retry finds the record.
    pub async fn upsert(
        &self,
        module: &str,
        records: &[Record],
        duplicate_check_fields: &[&str],
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let url = self.api(&format!("/{module}/upsert"));
        self.write_batches(
            records,
            |chunk| {
                let mut body = json!({"data": chunk, "trigger": []});
                if !duplicate_check_fields.is_empty() {
                    body["duplicate_check_fields"] = json!(duplicate_check_fields);
                }
                Call::new(Method::POST, url.clone(), true).json(body)
            },
            WriteAction::Inserted,
        )
        .await
    }

    /// Deletes records by id, in batches of 100. A per-record `NotFound`
    /// means the record is already gone (for instance a retried delete whose
    /// first reply was lost): callers treat it as done.
    pub async fn delete(&self, module: &str, ids: &[&str]) -> Result<Vec<RecordResult>, ZohoError> {
        let mut results = vec![];
        for (chunk_no, chunk) in ids.chunks(MAX_WRITE_BATCH).enumerate() {
            let mut call = Call::new(Method::DELETE, self.api(&format!("/{module}")), true)
                .param("ids", chunk.join(","))
                .param("wf_trigger", "false");
            call.per_record = true;
            let reply = self.send(call).await?;
            let entries = entries_of(&reply.body, chunk.len())?;
            for (i, entry) in entries.iter().enumerate() {
                results.push(RecordResult {
                    index: chunk_no * MAX_WRITE_BATCH + i,
                    outcome: parse_entry(entry, &WriteAction::Deleted, reply.status),
                });
            }
        }
        Ok(results)
    }

    // ---- mass update and bulk write ---------------------------------------

    /// Mass update of up to 500 ids, applied at once.
    pub async fn mass_update_ids(
        &self,
        module: &str,
        ids: &[&str],
        changes: &Record,
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let mut call = Call::new(
            Method::POST,
            self.api(&format!("/{module}/actions/mass_update")),
            true,
        )
        .json(json!({"data": [changes], "over_write": true, "ids": ids}));
        call.per_record = true;
        let reply = self.send(call).await?;
        let entries = entries_of(&reply.body, ids.len())?;
        Ok(entries
            .iter()
            .enumerate()
            .map(|(index, e)| RecordResult {
                index,
                outcome: parse_entry(e, &WriteAction::Updated, reply.status),
            })
            .collect())
    }

    /// Schedules a mass update over a custom view; returns the job id.
    pub async fn mass_update_view(
        &self,
        module: &str,
        cvid: &str,
        changes: &Record,
    ) -> Result<String, ZohoError> {
        let call = Call::new(
            Method::POST,
            self.api(&format!("/{module}/actions/mass_update")),
            false,
        )
        .json(json!({"data": [changes], "over_write": true, "cvid": cvid}));
        let reply = self.send(call).await?;
        let entry = first_entry(&reply.body, "data")?;
        entry
            .pointer("/details/job_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed("mass update reply without job_id"))
    }

    pub async fn mass_update_status(
        &self,
        module: &str,
        job_id: &str,
    ) -> Result<MassUpdateStatus, ZohoError> {
        let call = Call::new(
            Method::GET,
            self.api(&format!("/{module}/actions/mass_update")),
            true,
        )
        .param("job_id", job_id);
        let reply = self.send(call).await?;
        decode_list::<MassUpdateStatus>(&reply.body, "data")?
            .into_iter()
            .next()
            .ok_or_else(|| malformed("mass update status without data"))
    }

    /// Uploads a zipped CSV for bulk write; returns the file id.
    pub async fn bulk_upload(
        &self,
        org_zgid: &str,
        file_name: &str,
        zip: Vec<u8>,
    ) -> Result<String, ZohoError> {
        let base = self
            .inner
            .config
            .upload_base
            .clone()
            .unwrap_or_else(|| self.inner.config.api_base.clone());
        let url = format!("{base}/crm/v8/upload");
        // Multipart bodies cannot be replayed by `send`, so the retry is one
        // refresh at most; uploads are cheap to redo by the caller.
        let mut refreshed = false;
        let mut token = self.inner.tokens.access_token().await?;
        loop {
            self.inner.rate.until_ready().await;
            let part = reqwest::multipart::Part::bytes(zip.clone())
                .file_name(file_name.to_owned())
                .mime_str("application/zip")
                .map_err(|e| malformed(&e.to_string()))?;
            let form = reqwest::multipart::Form::new().part("file", part);
            let timeout = self.inner.config.request_timeout;
            let response = self
                .inner
                .http
                .post(&url)
                .header("Authorization", format!("Zoho-oauthtoken {token}"))
                .header("feature", "bulk-write")
                .header("X-CRM-ORG", org_zgid)
                .timeout(timeout)
                .multipart(form)
                .send()
                .await
                .map_err(|e| transport_error(&e, timeout))?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status < 300 {
                return body
                    .pointer("/details/file_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| malformed("upload reply without file_id"));
            }
            let err = ZohoError::from_reply(
                status,
                body.get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("UPLOAD_FAILED"),
                body.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                body.get("details").cloned().unwrap_or(Value::Null),
            );
            if err.retry_advice() == RetryAdvice::RefreshToken && !refreshed {
                refreshed = true;
                self.inner.tokens.invalidate(&token).await;
                token = self.inner.tokens.access_token().await?;
                continue;
            }
            return Err(err);
        }
    }

    /// Creates a bulk write job (`operation` insert|update|upsert, `resource`
    /// as Zoho documents it); returns the job id.
    pub async fn bulk_write(&self, job: &Value) -> Result<String, ZohoError> {
        let url = format!("{}/crm/bulk/v8/write", self.inner.config.api_base);
        let reply = self
            .send(Call::new(Method::POST, url, false).json(job.clone()))
            .await?;
        reply
            .body
            .pointer("/details/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed("bulk write reply without an id"))
    }

    pub async fn bulk_write_status(&self, job_id: &str) -> Result<BulkWriteStatus, ZohoError> {
        let url = format!("{}/crm/bulk/v8/write/{job_id}", self.inner.config.api_base);
        let reply = self.send(Call::new(Method::GET, url, true)).await?;
        let body = &reply.body;
        let file = body
            .pointer("/resource/0/file")
            .cloned()
            .unwrap_or(Value::Null);
        let count = |k: &str| file.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(BulkWriteStatus {
            status: body
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            added: count("added_count"),
            updated: count("updated_count"),
            skipped: count("skipped_count"),
            total: count("total_count"),
            download_url: body
                .pointer("/result/download_url")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Downloads a finished job's result (a zip) from its relative URL.
    pub async fn download(&self, relative_url: &str) -> Result<bytes::Bytes, ZohoError> {
        let url = format!("{}{relative_url}", self.inner.config.api_base);
        let mut call = Call::new(Method::GET, url, true);
        call.raw = true;
        Ok(self.send(call).await?.bytes)
    }

    // ---- notifications ------------------------------------------------------

    fn watch_item(channel: &WatchChannel) -> Value {
        let mut item = json!({
            "channel_id": channel.channel_id,
            "events": channel.events,
            "notify_url": channel.notify_url,
            "return_affected_field_values": channel.return_affected_field_values,
            "notify_on_related_action": false,
        });
        if let Some(token) = &channel.token {
            item["token"] = json!(token);
        }
        if let Some(expiry) = channel.expiry {
            item["channel_expiry"] = json!(zoho_time(expiry));
        }
        item
    }

    /// Enables a channel (or rewrites it whole if it exists).
    pub async fn watch_subscribe(&self, channel: &WatchChannel) -> Result<WatchGrant, ZohoError> {
        let call = Call::new(Method::POST, self.api("/actions/watch"), true)
            .json(json!({"watch": [Self::watch_item(channel)]}));
        let reply = self.send(call).await?;
        watch_grant(&reply.body, &channel.channel_id)
    }

    /// Moves a channel's expiry forward; renew before it lapses.
    pub async fn watch_renew(
        &self,
        channel_id: &str,
        expiry: OffsetDateTime,
    ) -> Result<WatchGrant, ZohoError> {
        let call = Call::new(Method::PATCH, self.api("/actions/watch"), true).json(
            json!({"watch": [{"channel_id": channel_id, "channel_expiry": zoho_time(expiry)}]}),
        );
        let reply = self.send(call).await?;
        watch_grant(&reply.body, channel_id)
    }

    pub async fn watch_unsubscribe(&self, channel_ids: &[&str]) -> Result<(), ZohoError> {
        let call = Call::new(Method::DELETE, self.api("/actions/watch"), true)
            .param("channel_ids", channel_ids.join(","));
        self.send(call).await.map(|_| ())
    }
}

fn malformed(what: &str) -> ZohoError {
    ZohoError::Permanent {
        code: "MALFORMED_REPLY".into(),
        message: what.to_owned(),
    }
}

fn decode_list<T: serde::de::DeserializeOwned>(
    body: &Value,
    key: &str,
) -> Result<Vec<T>, ZohoError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(list) => {
            serde_json::from_value(list.clone()).map_err(|e| malformed(&format!("{key}: {e}")))
        }
    }
}

/// Per-record entries of a write reply: exactly one per record sent, or
/// the reply is malformed (a missing entry would be a silently lost write).
fn entries_of(body: &Value, expected: usize) -> Result<Vec<Value>, ZohoError> {
    let entries = body
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if entries.len() != expected {
        return Err(malformed(&format!(
            "{} results for {expected} records",
            entries.len()
        )));
    }
    Ok(entries)
}

fn records_of(body: &Value) -> Result<Vec<Record>, ZohoError> {
    decode_list(body, "data")
}

/// The first entry of a wrapped reply, as an error if Zoho refused it.
fn first_entry(body: &Value, key: &str) -> Result<Value, ZohoError> {
    let entry = body
        .get(key)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| malformed(&format!("reply without {key}")))?;
    if entry.get("status").and_then(Value::as_str) == Some("error") {
        return Err(entry_error(&entry, 400));
    }
    Ok(entry)
}

fn entry_id(entry: &Value) -> Result<String, ZohoError> {
    entry
        .pointer("/details/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| malformed("reply without an id"))
}

fn entry_error(entry: &Value, status: u16) -> ZohoError {
    ZohoError::from_reply(
        status,
        entry
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN"),
        entry
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        entry.get("details").cloned().unwrap_or(Value::Null),
    )
}

fn parse_entry(
    entry: &Value,
    action: &WriteAction,
    status: u16,
) -> Result<RecordSuccess, ZohoError> {
    if entry.get("status").and_then(Value::as_str) != Some("success") {
        // Inside a 207/200 the entry's own code decides; 400 is its nominal status.
        let status = if status == 412 { 412 } else { 400 };
        return Err(entry_error(entry, status));
    }
    let details = entry.get("details").cloned().unwrap_or(Value::Null);
    let action = match entry.get("action").and_then(Value::as_str) {
        Some("insert") => WriteAction::Inserted,
        Some("update") => WriteAction::Updated,
        _ => action.clone(),
    };
    Ok(RecordSuccess {
        id: details
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        action,
        modified_time: details
            .get("Modified_Time")
            .and_then(Value::as_str)
            .map(str::to_owned),
        duplicate_field: entry
            .get("duplicate_field")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn watch_grant(body: &Value, channel_id: &str) -> Result<WatchGrant, ZohoError> {
    let entry = first_entry(body, "watch")?;
    Ok(WatchGrant {
        channel_id: channel_id.to_owned(),
        channel_expiry: entry
            .pointer("/details/events/0/channel_expiry")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_fully_percent_encoded() {
        let call = Call::new(Method::GET, "http://x/crm/v8/Leads/search".into(), true)
            .param("criteria", "(Email:equals:a+b@x.io)")
            .param("fields", "Last_Name,Email");
        assert_eq!(
            call.url_with_query(),
            "http://x/crm/v8/Leads/search?criteria=%28Email%3Aequals%3Aa%2Bb%40x.io%29&fields=Last_Name%2CEmail"
        );
    }

    #[test]
    fn criteria_escaping_protects_parentheses_and_commas() {
        assert_eq!(escape_criteria("Burns, (B)\\"), "Burns\\, \\(B\\)\\\\");
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_the_cap() {
        let mut config = ClientConfig::new("http://x", "http://x", "id", "secret");
        config.backoff_initial = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(400);
        let client =
            ZohoClient::new(config, Arc::new(crate::zoho::MemoryTokenStore::new("r"))).unwrap();
        for attempt in 1..10 {
            let wait = client.backoff(attempt);
            let step =
                Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(Duration::from_millis(400));
            assert!(wait >= step / 2 && wait <= step, "{attempt}: {wait:?}");
        }
    }

    #[test]
    fn a_per_record_error_keeps_its_class() {
        let locked =
            json!({"code": "RECORD_LOCKED", "details": {}, "message": "locked", "status": "error"});
        let err = parse_entry(&locked, &WriteAction::Updated, 207).unwrap_err();
        assert_eq!(err.class(), crate::zoho::ErrorClass::RecordLocked);
        let ok = json!({"code": "SUCCESS", "action": "update", "duplicate_field": "Email", "details": {"id": "1", "Modified_Time": "2024-01-01T00:00:00+05:30"}, "message": "record updated", "status": "success"});
        let success = parse_entry(&ok, &WriteAction::Inserted, 200).unwrap();
        assert_eq!(success.action, WriteAction::Updated);
        assert_eq!(success.duplicate_field.as_deref(), Some("Email"));
    }

    #[test]
    fn a_reply_with_fewer_results_than_records_is_malformed() {
        let body =
            json!({"data": [{"code": "SUCCESS", "status": "success", "details": {"id": "1"}}]});
        assert!(entries_of(&body, 1).is_ok());
        let err = entries_of(&body, 2).unwrap_err();
        assert_eq!(err.class(), crate::zoho::ErrorClass::Permanent);
    }

    #[test]
    fn the_config_debug_output_hides_the_client_secret() {
        let config = ClientConfig::new("http://x", "http://x", "id", "very-secret");
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
