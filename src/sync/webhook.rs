//! Zoho notifications (the Watch API): the channel each tenant keeps open
//! (renewed well before it expires), and what `POST /v1/webhooks/zoho` does
//! with a callback: check its channel and token, queue a webhook session
//! for the records it names, answer at once.

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::SyncService;
use super::session::{Session, SessionKind};
use crate::domain::mapping::Flow;
use crate::zoho::client::{WatchChannel, ZohoClient};
use crate::zoho::error::ZohoError;

const CHANNEL_STATE: &str = "watch.channel";
/// A channel is asked for this long and renewed when less than `RENEW_BELOW` is left.
const CHANNEL_LIFETIME: time::Duration = time::Duration::DAY;
const RENEW_BELOW: time::Duration = time::Duration::hours(6);

/// The tenant's channel as kept in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelState {
    pub channel_id: String,
    pub token: String,
    /// Unix seconds.
    pub expiry: i64,
    pub events: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the notification is not valid JSON with module, ids and operation")]
    Malformed,
    #[error("the notification's channel or token is not this tenant's")]
    Unauthorized,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

pub async fn channel_state(
    sync: &SyncService,
    tenant: &str,
) -> Result<Option<ChannelState>, crate::store::StoreError> {
    Ok(sync
        .store
        .get_state(tenant, CHANNEL_STATE)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok()))
}

/// Opens the tenant's notification channel, or renews it when less than
/// six hours are left.
pub async fn ensure_channel(
    sync: &SyncService,
    tenant: &str,
    client: &ZohoClient,
) -> Result<(), anyhow::Error> {
    let Some(base) = &sync.settings.webhook_url else {
        return Ok(());
    };
    let now = OffsetDateTime::now_utc();
    let events: Vec<String> = sync
        .mappings
        .iter()
        .filter(|m| m.crosses(Flow::FromZoho))
        .map(|m| format!("{}.all", m.module()))
        .collect();
    let current = channel_state(sync, tenant).await?;
    let expiry = now + CHANNEL_LIFETIME;
    if let Some(c) = &current
        && c.events == events
    {
        if c.expiry - now.unix_timestamp() > RENEW_BELOW.whole_seconds() {
            return Ok(());
        }
        match client.watch_renew(&c.channel_id, expiry).await {
            Ok(_) => {
                let renewed = ChannelState {
                    expiry: expiry.unix_timestamp(),
                    ..c.clone()
                };
                save(sync, tenant, &renewed).await?;
                tracing::info!(tenant, channel = %c.channel_id, "Zoho notification channel renewed");
                return Ok(());
            }
            Err(ZohoError::NotFound { .. }) | Err(ZohoError::Validation { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (channel_id, token) = {
        let mut rng = rand::rng();
        let id = rng
            .random_range(1_000_000_000_000u64..9_000_000_000_000u64)
            .to_string();
        let token: String = (0..32)
            .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
            .collect();
        (id, token)
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    let notify_url = format!("{base}{separator}tenant={tenant}");
    client
        .watch_subscribe(&WatchChannel {
            channel_id: channel_id.clone(),
            events: events.clone(),
            notify_url,
            token: Some(token.clone()),
            expiry: Some(expiry),
            return_affected_field_values: false,
        })
        .await?;
    save(
        sync,
        tenant,
        &ChannelState {
            channel_id: channel_id.clone(),
            token,
            expiry: expiry.unix_timestamp(),
            events,
        },
    )
    .await?;
    tracing::info!(tenant, channel = %channel_id, "Zoho notification channel opened");
    Ok(())
}

async fn save(
    sync: &SyncService,
    tenant: &str,
    state: &ChannelState,
) -> Result<(), crate::store::StoreError> {
    let text = serde_json::to_string(state).unwrap_or_default();
    sync.store.put_state(tenant, CHANNEL_STATE, &text).await
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Checks a callback and queues the pull it asks for. `tenant` comes from
/// the notify URL's query (Zoho sends it back in `query_params` too).
/// Returns the queued session, or `None` when the module is not synced.
pub async fn accept(
    sync: &SyncService,
    tenant: Option<&str>,
    body: &[u8],
) -> Result<Option<Session>, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| WebhookError::Malformed)?;
    let tenant = tenant
        .map(str::to_owned)
        .or_else(|| {
            v.pointer("/query_params/tenant")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or(WebhookError::Unauthorized)?;
    let module = v
        .get("module")
        .and_then(Value::as_str)
        .ok_or(WebhookError::Malformed)?;
    let operation = v
        .get("operation")
        .and_then(Value::as_str)
        .ok_or(WebhookError::Malformed)?;
    let ids: Vec<String> = v
        .get("ids")
        .and_then(Value::as_array)
        .ok_or(WebhookError::Malformed)?
        .iter()
        .filter_map(|i| match i {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    let channel_id = match v.get("channel_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(WebhookError::Unauthorized),
    };
    let token = v.get("token").and_then(Value::as_str).unwrap_or("");
    let state = channel_state(sync, &tenant)
        .await?
        .ok_or(WebhookError::Unauthorized)?;
    if state.channel_id != channel_id || !same_secret(&state.token, token) {
        return Err(WebhookError::Unauthorized);
    }
    let Some(mapping) = sync.mapping(module) else {
        return Ok(None);
    };
    if ids.is_empty() || !mapping.crosses(Flow::FromZoho) {
        return Ok(None);
    }
    let mut session = Session::new(
        SessionKind::Webhook,
        mapping.module(),
        mapping.name(),
        "zoho",
    );
    session.deletions = operation == "delete";
    session.ids = ids;
    session.total = session.ids.len() as u64;
    Ok(Some(sync.queue_session(&tenant, session).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }
}

#[cfg(test)]
mod channel_tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, Secret};
    use crate::zoho::sim::{Sim, SimConfig};

    #[tokio::test]
    async fn the_channel_is_opened_once_and_renewed_before_it_expires() {
        let sim = Sim::start(SimConfig {
            token_throttle: None,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let (id, secret, refresh) = sim.credentials().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            encryption_key: Some(Secret::new("test-key")),
            ..Config::default()
        };
        config.zoho.accounts_url = Some(sim.base_url.clone());
        config.zoho.api_url = Some(sim.base_url.clone());
        config.zoho.client_id = Some(id);
        config.zoho.client_secret = Some(Secret::new(secret));
        config.zoho.refresh_token = Some(Secret::new(refresh));
        config.sync.webhook_url = Some("http://127.0.0.1:9/v1/webhooks/zoho".into());
        let shutdown = crate::shutdown::Shutdown::new();
        let hub = crate::startup::build_hub(&config, &shutdown).await.unwrap();
        let store = crate::store::open(&config).await.unwrap();
        let rules = crate::channel::ChannelRules::new(&config.channels, 255);
        let sync = crate::startup::build_sync(&config, store, hub, rules).unwrap();
        let client = sync.connections.client("default").await.unwrap();

        ensure_channel(&sync, "default", &client).await.unwrap();
        let opened = channel_state(&sync, "default").await.unwrap().unwrap();
        assert_eq!(sim.count("POST", "/actions/watch"), 1);
        assert!(opened.events.contains(&"Deals.all".to_owned()));
        assert_eq!(opened.token.len(), 32);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((opened.expiry - now - 86_400).abs() < 60);

        // Far from expiry: nothing to do.
        ensure_channel(&sync, "default", &client).await.unwrap();
        assert_eq!(sim.count("POST", "/actions/watch"), 1);
        assert_eq!(sim.count("PATCH", "/actions/watch"), 0);

        // An hour left: renewed for another day, same channel and token.
        save(
            &sync,
            "default",
            &ChannelState {
                expiry: now + 3600,
                ..opened.clone()
            },
        )
        .await
        .unwrap();
        ensure_channel(&sync, "default", &client).await.unwrap();
        assert_eq!(sim.count("PATCH", "/actions/watch"), 1);
        let renewed = channel_state(&sync, "default").await.unwrap().unwrap();
        assert_eq!(renewed.channel_id, opened.channel_id);
        assert_eq!(renewed.token, opened.token);
        assert!(renewed.expiry > now + 86_000);

        // A callback with the token is accepted and queues a webhook session.
        let body = serde_json::json!({
            "module": "Deals", "ids": ["1"], "operation": "update",
            "channel_id": opened.channel_id.parse::<u64>().unwrap(), "token": opened.token,
        });
        let session = accept(&sync, Some("default"), body.to_string().as_bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(session.kind, SessionKind::Webhook);
        assert_eq!(session.ids, ["1"]);
        // Wrong token, unknown tenant, not JSON.
        let forged = serde_json::json!({
            "module": "Deals", "ids": ["1"], "operation": "update",
            "channel_id": opened.channel_id, "token": "x".repeat(32),
        });
        assert!(matches!(
            accept(&sync, Some("default"), forged.to_string().as_bytes()).await,
            Err(WebhookError::Unauthorized)
        ));
        assert!(matches!(
            accept(&sync, Some("nobody"), body.to_string().as_bytes()).await,
            Err(WebhookError::Unauthorized)
        ));
        assert!(matches!(
            accept(&sync, Some("default"), b"{").await,
            Err(WebhookError::Malformed)
        ));
        shutdown.trigger();
        shutdown.wait(Duration::from_secs(2)).await;
        sim.stop().await;
    }
}
