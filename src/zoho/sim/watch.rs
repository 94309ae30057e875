//! The Watch API (`/crm/v8/actions/watch`) and its outbound callbacks: each
//! record change matching a live channel is POSTed to the channel's
//! `notify_url` with the channel token, as Zoho does (ZOHO-API.md §7).
//!
//! Deliveries go through a bounded queue to one sender task; when the queue
//! is full the callback is dropped and counted as failed, because Zoho makes
//! no delivery promise either and a write must never wait on a webhook.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::state::{Channel, SimState, World};
use super::wire::{Query, SimError, empty_reply, format_time, json_reply, parse_time};

/// Callbacks waiting to be sent.
pub const DELIVERY_QUEUE: usize = 1024;
/// Zoho's limits on a channel.
const MAX_TOKEN: usize = 50;
const MAX_EXPIRY: time::Duration = time::Duration::WEEK;
const DEFAULT_EXPIRY: time::Duration = time::Duration::HOUR;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    fn event(self) -> &'static str {
        match self {
            Self::Insert => "create",
            Self::Update => "edit",
            Self::Delete => "delete",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// One callback to send.
#[derive(Debug)]
pub struct Delivery {
    pub url: String,
    pub body: Value,
}

/// Queues callbacks for every live channel watching this module and operation.
pub fn notify(
    state: &SimState,
    world: &World,
    module: &str,
    op: Operation,
    changes: &[(u64, Vec<String>)],
) {
    if changes.is_empty() {
        return;
    }
    let now = state.now();
    let ids: Vec<String> = changes.iter().map(|(id, _)| id.to_string()).collect();
    for channel in world.channels.iter().filter(|c| c.expiry > now) {
        let watching = channel
            .events
            .iter()
            .any(|(m, e)| m.eq_ignore_ascii_case(module) && (e == "all" || e == op.event()));
        if !watching {
            continue;
        }
        let query_params: HashMap<String, String> = channel
            .notify_url
            .split_once('?')
            .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let mut affected: Vec<String> = changes.iter().flat_map(|(_, f)| f.clone()).collect();
        affected.sort();
        affected.dedup();
        let mut body = json!({
            "server_time": now.unix_timestamp() * 1000,
            "query_params": query_params,
            "module": module,
            "resource_uri": format!("{}/crm/v2/{module}", state.base_url),
            "ids": ids,
            "affected_fields": if op == Operation::Update { json!(affected) } else { json!([]) },
            "operation": op.name(),
            "channel_id": channel.channel_id,
            "token": channel.token,
        });
        if channel.return_affected_field_values
            && op != Operation::Delete
            && let (Some(obj), Some(m)) = (body.as_object_mut(), world.module(module))
        {
            let values: Vec<Value> = changes
                .iter()
                .filter_map(|(id, fields)| {
                    let rec = m.records.get(id)?;
                    let values: serde_json::Map<String, Value> = fields
                        .iter()
                        .filter_map(|f| rec.values.get(f).map(|v| (f.clone(), v.clone())))
                        .collect();
                    Some(json!({"record_id": id.to_string(), "values": values}))
                })
                .collect();
            obj.insert("affected_values".into(), Value::Array(values));
        }
        let delivery = Delivery {
            url: channel.notify_url.clone(),
            body,
        };
        if state.deliveries.try_send(delivery).is_err() {
            state.callbacks_failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Sends queued callbacks until the emulator shuts down.
pub async fn deliver(state: Arc<SimState>, mut queue: mpsc::Receiver<Delivery>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    loop {
        let delivery = tokio::select! {
            next = queue.recv() => match next {
                Some(d) => d,
                None => return,
            },
            _ = state.shutdown.cancelled() => return,
        };
        let send = client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .body(delivery.body.to_string())
            .send();
        // A slow receiver must not hold up the emulator's shutdown.
        let sent = tokio::select! {
            sent = send => sent,
            _ = state.shutdown.cancelled() => return,
        };
        match sent {
            Ok(response) if response.status().is_success() => {
                state.callbacks_sent.fetch_add(1, Ordering::SeqCst);
            }
            Ok(response) => {
                tracing::debug!(status = %response.status(), url = %delivery.url, "watch callback refused");
                state.callbacks_failed.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) => {
                tracing::debug!(%err, url = %delivery.url, "watch callback failed");
                state.callbacks_failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn item_error(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

/// Parses one `watch[]` item into a channel, or a per-item Zoho error.
fn parse_channel(
    item: &Value,
    at: usize,
    now: time::OffsetDateTime,
    zone: time::UtcOffset,
    world: &World,
) -> Result<Channel, Value> {
    let missing = |name: &str| {
        item_error(
            "MANDATORY_NOT_FOUND",
            "required field not found",
            json!({"api_name": name, "json_path": format!("$.watch[{at}].{name}")}),
        )
    };
    let invalid = |name: &str| {
        item_error(
            "INVALID_DATA",
            "invalid data",
            json!({"api_name": name, "json_path": format!("$.watch[{at}].{name}")}),
        )
    };
    let channel_id = match item.get("channel_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(invalid("channel_id")),
        None => return Err(missing("channel_id")),
    };
    let notify_url = match item.get("notify_url") {
        Some(Value::String(s))
            if (s.starts_with("http://") || s.starts_with("https://")) && s.len() <= 255 =>
        {
            s.clone()
        }
        Some(_) => return Err(invalid("notify_url")),
        None => return Err(missing("notify_url")),
    };
    let raw_events = match item.get("events") {
        Some(Value::Array(e)) if !e.is_empty() && e.len() <= 50 => e.clone(),
        Some(_) => return Err(invalid("events")),
        None => return Err(missing("events")),
    };
    let mut events = vec![];
    for event in &raw_events {
        let parsed = event
            .as_str()
            .and_then(|e| e.rsplit_once('.'))
            .filter(|(m, op)| {
                ["create", "edit", "delete", "all"].contains(op) && world.module(m).is_some()
            });
        match parsed {
            Some((m, op)) => {
                let canonical = world
                    .module(m)
                    .map(|m| m.api_name.clone())
                    .unwrap_or_default();
                events.push((canonical, op.to_owned()));
            }
            None => return Err(invalid("events")),
        }
    }
    let token = match item.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.len() <= MAX_TOKEN => Some(t.clone()),
        Some(_) => return Err(invalid("token")),
    };
    // A missing, unreadable or too distant expiry falls back to one hour.
    let expiry = item
        .get("channel_expiry")
        .and_then(Value::as_str)
        .and_then(|raw| parse_time(raw, zone))
        .filter(|at| *at > now && *at <= now + MAX_EXPIRY)
        .unwrap_or(now + DEFAULT_EXPIRY);
    Ok(Channel {
        channel_id,
        events,
        notify_url,
        token,
        expiry,
        return_affected_field_values: item
            .get("return_affected_field_values")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        notify_on_related_action: item
            .get("notify_on_related_action")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    })
}

fn success_entry(state: &SimState, channel: &Channel, message: &str) -> Value {
    let zone = state.config.time_zone;
    let events: Vec<Value> = channel
        .events
        .iter()
        .map(|(module, _)| module.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|module| {
            json!({
                "channel_expiry": format_time(channel.expiry, zone),
                "resource_uri": format!("{}/crm/v2/{module}", state.base_url),
                "resource_id": module,
                "resource_name": module,
                "channel_id": channel.channel_id,
            })
        })
        .collect();
    json!({"code": "SUCCESS", "details": {"events": events}, "message": message, "status": "success"})
}

fn watch_items(body: &Bytes) -> Result<Vec<Value>, SimError> {
    let whole: Value = serde_json::from_slice(body).map_err(|_| SimError::invalid_body())?;
    match whole.get("watch") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 50 => Ok(items.clone()),
        Some(_) => Err(
            SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
                .with_details(json!({"api_name": "watch"})),
        ),
        None => Err(SimError::mandatory_missing("watch")),
    }
}

/// Enable (POST) and replace (PUT) share their rules: the channel is
/// (re)written whole.
fn upsert_channels(
    state: &SimState,
    body: &Bytes,
    message: &str,
    created: StatusCode,
) -> Result<Response, SimError> {
    let items = watch_items(body)?;
    let now = state.now();
    let zone = state.config.time_zone;
    let mut world = state.world();
    let mut entries = vec![];
    let mut failed = 0;
    for (at, item) in items.iter().enumerate() {
        match parse_channel(item, at, now, zone, &world) {
            Ok(channel) => {
                entries.push(success_entry(state, &channel, message));
                world
                    .channels
                    .retain(|c| c.channel_id != channel.channel_id);
                world.channels.push(channel);
            }
            Err(entry) => {
                failed += 1;
                entries.push(entry);
            }
        }
    }
    let status = if failed == entries.len() {
        StatusCode::BAD_REQUEST
    } else if failed > 0 {
        StatusCode::ACCEPTED
    } else {
        created
    };
    Ok(json_reply(status, &json!({"watch": entries})))
}

pub async fn enable(State(state): State<Arc<SimState>>, body: Bytes) -> Result<Response, SimError> {
    upsert_channels(
        &state,
        &body,
        "Successfully subscribed for actions-watch of the given module",
        StatusCode::CREATED,
    )
}

pub async fn replace(
    State(state): State<Arc<SimState>>,
    body: Bytes,
) -> Result<Response, SimError> {
    upsert_channels(
        &state,
        &body,
        "Successfully subscribed for actions-watch of the given module",
        StatusCode::OK,
    )
}

/// PATCH changes only what is given; `_delete_events` removes listed events.
pub async fn patch(State(state): State<Arc<SimState>>, body: Bytes) -> Result<Response, SimError> {
    let items = watch_items(&body)?;
    let now = state.now();
    let zone = state.config.time_zone;
    let mut world = state.world();
    let mut entries = vec![];
    let mut failed = 0;
    for (at, item) in items.iter().enumerate() {
        let id = item.get("channel_id").map(|v| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        });
        let Some(existing) =
            id.and_then(|id| world.channels.iter().find(|c| c.channel_id == id).cloned())
        else {
            failed += 1;
            entries.push(item_error(
                "NOT_SUBSCRIBED",
                "the channel is not subscribed",
                json!({"json_path": format!("$.watch[{at}].channel_id")}),
            ));
            continue;
        };
        let mut merged = json!({
            "channel_id": existing.channel_id,
            "notify_url": existing.notify_url,
            "token": existing.token,
            "events": existing.events.iter().map(|(m, e)| format!("{m}.{e}")).collect::<Vec<_>>(),
            "channel_expiry": format_time(existing.expiry, zone),
            "return_affected_field_values": existing.return_affected_field_values,
            "notify_on_related_action": existing.notify_on_related_action,
        });
        let delete_events = item
            .get("_delete_events")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let (Some(target), Some(source)) = (merged.as_object_mut(), item.as_object()) {
            for (key, value) in source {
                if key == "_delete_events" {
                    continue;
                }
                if key == "events" && delete_events {
                    let remove: Vec<&str> = value
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let kept: Vec<Value> = target["events"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|e| !e.as_str().is_some_and(|e| remove.contains(&e)))
                        .collect();
                    target.insert("events".into(), Value::Array(kept));
                } else {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
        let message = if delete_events {
            "Successfully removed the subscribe details"
        } else {
            "Successfully updated the subscribe details"
        };
        if merged["events"].as_array().is_some_and(Vec::is_empty) {
            world
                .channels
                .retain(|c| c.channel_id != existing.channel_id);
            entries.push(success_entry(&state, &existing, message));
            continue;
        }
        match parse_channel(&merged, at, now, zone, &world) {
            Ok(channel) => {
                entries.push(success_entry(&state, &channel, message));
                world
                    .channels
                    .retain(|c| c.channel_id != channel.channel_id);
                world.channels.push(channel);
            }
            Err(entry) => {
                failed += 1;
                entries.push(entry);
            }
        }
    }
    let status = if failed == entries.len() {
        StatusCode::BAD_REQUEST
    } else if failed > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json_reply(status, &json!({"watch": entries})))
}

pub async fn list(
    State(state): State<Arc<SimState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, SimError> {
    let query = Query::parse(raw.as_deref());
    let zone = state.config.time_zone;
    let now = state.now();
    let world = state.world();
    let wanted_channel = query.get("channel_id");
    let wanted_module = query.get("module");
    let mut items = vec![];
    for channel in world.channels.iter().filter(|c| c.expiry > now) {
        if wanted_channel
            .as_ref()
            .is_some_and(|id| id != &channel.channel_id)
        {
            continue;
        }
        let modules: std::collections::BTreeSet<&String> =
            channel.events.iter().map(|(m, _)| m).collect();
        for module in modules {
            if wanted_module
                .as_ref()
                .is_some_and(|m| !m.eq_ignore_ascii_case(module))
            {
                continue;
            }
            let events: Vec<String> = channel
                .events
                .iter()
                .filter(|(m, _)| m == module)
                .map(|(m, e)| format!("{m}.{e}"))
                .collect();
            items.push(json!({
                "notify_on_related_action": channel.notify_on_related_action,
                "channel_expiry": format_time(channel.expiry, zone),
                "return_affected_field_values": channel.return_affected_field_values,
                "resource_uri": format!("{}/crm/v2/{module}", state.base_url),
                "resource_id": world.module(module).map(|m| m.id.clone()),
                "notify_url": channel.notify_url,
                "resource_name": module,
                "fields": null,
                "notification_condition": null,
                "channel_id": channel.channel_id,
                "events": events,
                "token": channel.token,
            }));
        }
    }
    if items.is_empty() {
        return Ok(empty_reply(StatusCode::NO_CONTENT));
    }
    let count = items.len();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"watch": items, "info": {"per_page": 200, "count": count, "page": 1, "more_records": false}}),
    ))
}

pub async fn disable(
    State(state): State<Arc<SimState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, SimError> {
    let query = Query::parse(raw.as_deref());
    let ids = query.list("channel_ids");
    if ids.is_empty() {
        return Err(SimError::required_param("channel_ids"));
    }
    let mut world = state.world();
    let mut entries = vec![];
    for id in ids {
        match world.channels.iter().position(|c| c.channel_id == id) {
            Some(pos) => {
                let channel = world.channels.remove(pos);
                let modules: std::collections::BTreeSet<String> =
                    channel.events.iter().map(|(m, _)| m.clone()).collect();
                for module in modules {
                    entries.push(json!({"code": "SUCCESS", "details": {"resource_uri": format!("{}/crm/v2/{module}", state.base_url), "resource_id": world.module(&module).map(|m| m.id.clone()), "resource_name": module, "channel_id": id}, "message": "Successfully un-subscribed from actions-watch", "status": "success"}));
                }
            }
            None => entries.push(item_error(
                "INVALID_DATA",
                "the channel id given seems to be invalid",
                json!({"channel_id": id}),
            )),
        }
    }
    Ok(json_reply(StatusCode::OK, &json!({"watch": entries})))
}
