//! Record endpoints: list (fields, paging, the 2,000-record cap and
//! `page_token`), get, insert, update, upsert, delete, deleted records,
//! search, and the Locking Information API (ZOHO-API.md §3, §4, §10).
//!
//! Writes answer with Zoho's per-record envelopes (201/200/207/400/412) and
//! feed the Watch API. Every refusal is a Zoho body, never a panic.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, UtcOffset};

use super::criteria::Criteria;
use super::http::AuthUser;
use super::meta::batch_status;
use super::model::{Lock, Module, Rec, RecErr, Stamp, User, Written};
use super::state::{Cursor, SimState, World};
use super::watch::{self, Operation};
use super::wire::{Query, SimError, empty_reply, format_time, header_str, json_reply, parse_time};

type Reply = Result<Response, SimError>;

/// Records reachable with `page`/`per_page` alone.
const DISCRETE_CAP: u64 = 2_000;
/// Records reachable with `page_token`.
const TOKEN_CAP: usize = 100_000;
/// Records per write call.
const WRITE_CAP: usize = 100;
/// Fields per list call.
const FIELDS_CAP: usize = 50;

fn module_index(world: &World, name: &str) -> Result<usize, SimError> {
    world
        .module_index(name)
        .ok_or_else(SimError::invalid_module)
}

fn header_time(
    headers: &HeaderMap,
    name: &str,
    zone: UtcOffset,
) -> Result<Option<OffsetDateTime>, SimError> {
    match header_str(headers, name) {
        None => Ok(None),
        Some(raw) => parse_time(raw, zone).map(Some).ok_or_else(|| {
            SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
                .with_details(json!({"header_name": name}))
        }),
    }
}

fn render(
    world: &World,
    module: &Module,
    rec: &Rec,
    only: Option<&[String]>,
    zone: UtcOffset,
) -> Map<String, Value> {
    module.render(rec, only, &world.users, zone, &|m, id| {
        world.display_name(m, id)
    })
}

fn sort_key(rec: &Rec, sort_by: &str) -> (i64, u64) {
    match sort_by {
        "Modified_Time" => (rec.modified.unix_timestamp(), rec.id),
        "Created_Time" => (rec.created.unix_timestamp(), rec.id),
        _ => (0, rec.id),
    }
}

fn random_token() -> String {
    let bytes: [u8; 12] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn list(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let zone = state.config.time_zone;
    let now = state.now();
    let fields = query.list("fields");
    let ids = query.list("ids");
    let mut world = state.world();
    let index = module_index(&world, &name)?;
    if fields.is_empty() && ids.is_empty() {
        return Err(SimError::required_param("fields"));
    }
    if fields.len() > FIELDS_CAP {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "Fields limit exceeded",
        )
        .with_details(json!({"param_name": "fields", "limit": FIELDS_CAP})));
    }
    let per_page = query.number("per_page", 200, 200)?;
    let sort_by = query.get("sort_by").unwrap_or_else(|| "id".into());
    if !["id", "Created_Time", "Modified_Time"].contains(&sort_by.as_str()) {
        return Err(SimError::invalid_param(
            "sort_by",
            "the sort_by given seems to be invalid",
        ));
    }
    let sort_order = query.get("sort_order").unwrap_or_else(|| "desc".into());
    if sort_order != "asc" && sort_order != "desc" {
        return Err(SimError::invalid_param(
            "sort_order",
            "the sort_order given seems to be invalid",
        ));
    }
    let ambiguous = |a: &str, b: &str| {
        SimError::new(
            StatusCode::BAD_REQUEST,
            "AMBIGUITY_DURING_PROCESSING",
            format!("{a} and {b} cannot be given together"),
        )
        .with_details(json!({"ambiguity_due_to": [a, b]}))
    };
    if query.has("cvid") && query.has("sort_by") {
        return Err(ambiguous("cvid", "sort_by"));
    }
    if query.has("page_token") && query.has("page") {
        return Err(ambiguous("page_token", "page"));
    }
    let since = header_time(&headers, "if-modified-since", zone)?;
    let signature = format!(
        "{}|{}|{sort_by}|{sort_order}|{}|{}",
        world.modules[index].api_name,
        fields.join(","),
        since.map(|s| s.unix_timestamp()).unwrap_or(-1),
        ids.join(",")
    );
    let module = &world.modules[index];
    let mut selected: Vec<&Rec> = module
        .records
        .values()
        .filter(|r| ids.is_empty() || ids.contains(&r.id.to_string()))
        .filter(|r| since.is_none_or(|s| r.modified >= s))
        .collect();
    selected.sort_by_key(|r| sort_key(r, &sort_by));
    if sort_order == "desc" {
        selected.reverse();
    }
    let (start, page, served_before) = match query.get("page_token") {
        Some(token) => {
            let cursor = world.cursors.get(&token).ok_or_else(|| {
                SimError::invalid_param("page_token", "the page_token given seems to be invalid")
            })?;
            if cursor.user_id != user {
                return Err(SimError::invalid_param(
                    "page_token",
                    "the page_token given seems to be invalid",
                ));
            }
            if cursor.expires <= now {
                return Err(SimError::new(
                    StatusCode::BAD_REQUEST,
                    "EXPIRED_VALUE",
                    "the page_token has expired",
                )
                .with_details(json!({"param_name": "page_token"})));
            }
            if cursor.signature != signature {
                return Err(SimError::new(
                    StatusCode::BAD_REQUEST,
                    "TOKEN_BOUND_DATA_MISMATCH",
                    "the parameters differ from the ones the page_token was issued for",
                )
                .with_details(json!({"param_name": "page_token"})));
            }
            if cursor.served >= TOKEN_CAP {
                return Err(SimError::new(
                    StatusCode::BAD_REQUEST,
                    "PAGINATION_LIMIT_EXCEEDED",
                    "You can only get the first 100000 records",
                )
                .with_details(json!({"limit": TOKEN_CAP})));
            }
            let after = cursor.after;
            let start = selected
                .iter()
                .position(|r| {
                    let key = sort_key(r, &sort_by);
                    if sort_order == "asc" {
                        key > after
                    } else {
                        key < after
                    }
                })
                .unwrap_or(selected.len());
            (start, cursor.page, cursor.served)
        }
        None => {
            let page = query.number("page", 1, u64::MAX / 1024)?;
            if page * per_page > DISCRETE_CAP {
                return Err(SimError::new(
                    StatusCode::BAD_REQUEST,
                    "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
                    "You can only get the first 2000 records without using page_token param",
                )
                .with_details(json!({"limit": DISCRETE_CAP})));
            }
            let start = ((page - 1) * per_page) as usize;
            (start, page, start)
        }
    };
    if selected.is_empty() && since.is_some() {
        return Ok(empty_reply(StatusCode::NOT_MODIFIED));
    }
    let end = (start + per_page as usize).min(selected.len());
    if start >= end {
        return Ok(empty_reply(StatusCode::NO_CONTENT));
    }
    let page_records = &selected[start..end];
    let only = (!fields.is_empty()).then_some(fields.as_slice());
    let data: Vec<Value> = page_records
        .iter()
        .map(|r| Value::Object(render(&world, module, r, only, zone)))
        .collect();
    let more = end < selected.len();
    let served = served_before + page_records.len();
    let last_key = page_records
        .last()
        .map(|r| sort_key(r, &sort_by))
        .unwrap_or_default();
    let expires = now + state.config.page_token_ttl;
    let next_token = more.then(random_token);
    if let Some(token) = &next_token {
        world.cursors.insert(
            token.clone(),
            Cursor {
                user_id: user,
                signature,
                after: last_key,
                served,
                page: page + 1,
                expires,
            },
        );
    }
    world.cursors.retain(|_, c| c.expires > now);
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "data": data,
            "info": {
                "call": false,
                "per_page": per_page,
                "next_page_token": next_token,
                "count": data.len(),
                "sort_by": sort_by,
                "page": page,
                "previous_page_token": null,
                "page_token_expiry": next_token.as_ref().map(|_| format_time(expires, zone)),
                "sort_order": sort_order,
                "email": false,
                "more_records": more,
            }
        }),
    ))
}

fn parse_id(raw: &str) -> Option<u64> {
    raw.trim().parse().ok()
}

pub async fn get_one(
    State(state): State<Arc<SimState>>,
    Path((name, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let zone = state.config.time_zone;
    let world = state.world();
    let index = module_index(&world, &name)?;
    let module = &world.modules[index];
    let Some(rec) = parse_id(&id).and_then(|id| module.records.get(&id)) else {
        return Ok(empty_reply(StatusCode::NO_CONTENT));
    };
    let fields = query.list("fields");
    let only = (!fields.is_empty()).then_some(fields.as_slice());
    let data = render(&world, module, rec, only, zone);
    Ok(json_reply(StatusCode::OK, &json!({"data": [data]})))
}

/// The `data` array of a write body, with Zoho's limits.
fn write_items(body: &Bytes) -> Result<(Vec<Value>, Value), SimError> {
    let whole: Value = serde_json::from_slice(body).map_err(|_| SimError::invalid_body())?;
    let items = match whole.get("data") {
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        Some(Value::Array(_)) | None => {
            return Err(SimError::mandatory_missing("data")
                .with_details(json!({"api_name": "data", "json_path": "$.data"})));
        }
        Some(_) => {
            return Err(SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
                .with_details(json!({"api_name": "data", "json_path": "$.data", "expected_data_type": "jsonarray"})));
        }
    };
    if items.len() > WRITE_CAP {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds the limit",
        )
        .with_details(json!({"api_name": "data", "limit": WRITE_CAP})));
    }
    if let Some(trigger) = whole.get("trigger")
        && !trigger.is_array()
    {
        return Err(SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
            .with_details(json!({"api_name": "trigger", "json_path": "$.trigger", "expected_data_type": "jsonarray"})));
    }
    Ok((items, whole))
}

fn user_ref(users: &[User], id: &str) -> Value {
    users
        .iter()
        .find(|u| u.id == id)
        .map(|u| json!({"name": u.full_name, "id": u.id}))
        .unwrap_or_else(|| json!({"name": null, "id": id}))
}

pub(super) fn stamp_details(world: &World, rec: &Rec, zone: UtcOffset) -> Value {
    json!({
        "Modified_Time": format_time(rec.modified, zone),
        "Modified_By": user_ref(&world.users, &rec.modified_by),
        "Created_Time": format_time(rec.created, zone),
        "id": rec.id.to_string(),
        "Created_By": user_ref(&world.users, &rec.created_by),
        "$approval_state": "approved",
    })
}

fn success(world: &World, index: usize, written: &Written, zone: UtcOffset, upsert: bool) -> Value {
    let module = &world.modules[index];
    let details = module
        .records
        .get(&written.id)
        .map(|rec| stamp_details(world, rec, zone))
        .unwrap_or_else(|| json!({"id": written.id.to_string()}));
    let message = if written.inserted {
        "record added"
    } else {
        "record updated"
    };
    let mut entry =
        json!({"code": "SUCCESS", "details": details, "message": message, "status": "success"});
    if upsert && let Some(obj) = entry.as_object_mut() {
        obj.insert(
            "action".into(),
            json!(if written.inserted { "insert" } else { "update" }),
        );
        obj.insert("duplicate_field".into(), json!(written.duplicate_field));
    }
    entry
}

fn validate_in(
    world: &World,
    index: usize,
    obj: &Map<String, Value>,
    at: usize,
    existing: Option<&Rec>,
    zone: UtcOffset,
) -> Result<Map<String, Value>, RecErr> {
    world.modules[index].validate(obj, at, existing, &world.users, zone, &|m, id| {
        world.record_exists(m, id)
    })
}

fn append_list(obj: &Map<String, Value>) -> Vec<String> {
    obj.get("$append_values")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Applies one update to record `id`, with the lock and If-Unmodified-Since checks.
pub(super) fn update_record(
    world: &mut World,
    index: usize,
    id: u64,
    obj: &Map<String, Value>,
    at: usize,
    unmodified_since: Option<OffsetDateTime>,
    stamp: Stamp<'_>,
) -> Result<Written, RecErr> {
    let Some(existing) = world.modules[index].records.get(&id).cloned() else {
        return Err(RecErr::invalid_id(&id.to_string()));
    };
    if world.modules[index].locks.contains_key(&id) {
        return Err(RecErr::locked(false));
    }
    if let Some(since) = unmodified_since
        && existing.modified > since
    {
        return Err(RecErr::new(
            "ALREADY_MODIFIED",
            "Record updated time has already passed if-unmodified-since time",
            stamp_details(world, &existing, stamp.zone),
        ));
    }
    let clean = validate_in(world, index, obj, at, Some(&existing), stamp.zone)?;
    let append = append_list(obj);
    world.modules[index]
        .update(id, clean, &append, stamp)
        .ok_or_else(|| RecErr::invalid_id(&id.to_string()))
}

pub(super) fn insert_record(
    world: &mut World,
    index: usize,
    obj: &Map<String, Value>,
    at: usize,
    stamp: Stamp<'_>,
) -> Result<Written, RecErr> {
    let clean = validate_in(world, index, obj, at, None, stamp.zone)?;
    let id = world.next_id();
    Ok(world.modules[index].insert(id, clean, stamp))
}

fn not_an_object(at: usize) -> RecErr {
    RecErr::new(
        "INVALID_DATA",
        "invalid data",
        json!({"json_path": format!("$.data[{at}]"), "expected_data_type": "jsonobject"}),
    )
}

/// Collects per-record outcomes into Zoho's envelope and notifies watchers.
struct Batch {
    entries: Vec<Value>,
    failed: usize,
    stale: usize,
    inserted: Vec<(u64, Vec<String>)>,
    updated: Vec<(u64, Vec<String>)>,
}

impl Batch {
    fn new() -> Self {
        Self {
            entries: vec![],
            failed: 0,
            stale: 0,
            inserted: vec![],
            updated: vec![],
        }
    }

    fn fail(&mut self, err: RecErr) {
        if err.code == "ALREADY_MODIFIED" {
            self.stale += 1;
        }
        self.failed += 1;
        self.entries.push(err.entry());
    }

    fn ok(&mut self, world: &World, index: usize, written: Written, zone: UtcOffset, upsert: bool) {
        self.entries
            .push(success(world, index, &written, zone, upsert));
        if written.inserted {
            self.inserted.push((written.id, written.changed_fields));
        } else {
            self.updated.push((written.id, written.changed_fields));
        }
    }

    fn finish(self, state: &SimState, world: &World, index: usize, all_ok: StatusCode) -> Response {
        let module = world.modules[index].api_name.clone();
        watch::notify(state, world, &module, Operation::Insert, &self.inserted);
        watch::notify(state, world, &module, Operation::Update, &self.updated);
        let total = self.entries.len();
        let status = if self.failed == total && self.stale == total {
            StatusCode::PRECONDITION_FAILED
        } else {
            batch_status(self.failed, total, all_ok)
        };
        json_reply(status, &json!({"data": self.entries}))
    }
}

pub async fn insert(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let zone = state.config.time_zone;
    let now = state.now();
    let mut world = state.world();
    let index = module_index(&world, &name)?;
    let (items, _) = write_items(&body)?;
    let stamp = Stamp {
        user: &user,
        at: now,
        zone,
    };
    let mut batch = Batch::new();
    for (at, item) in items.iter().enumerate() {
        let outcome = match item.as_object() {
            Some(obj) => insert_record(&mut world, index, obj, at, stamp),
            None => Err(not_an_object(at)),
        };
        match outcome {
            Ok(written) => batch.ok(&world, index, written, zone, false),
            Err(err) => batch.fail(err),
        }
    }
    Ok(batch.finish(&state, &world, index, StatusCode::CREATED))
}

fn id_of(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn update_common(
    state: Arc<SimState>,
    user: String,
    name: String,
    path_id: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let zone = state.config.time_zone;
    let now = state.now();
    let unmodified_since = header_time(&headers, "if-unmodified-since", zone)?;
    let mut world = state.world();
    let index = module_index(&world, &name)?;
    let (mut items, _) = write_items(&body)?;
    if let Some(id) = &path_id {
        items.truncate(1);
        if let Some(obj) = items.first_mut().and_then(Value::as_object_mut) {
            obj.insert("id".into(), Value::String(id.clone()));
        }
    }
    let stamp = Stamp {
        user: &user,
        at: now,
        zone,
    };
    let mut batch = Batch::new();
    for (at, item) in items.iter().enumerate() {
        let outcome = match item.as_object() {
            None => Err(not_an_object(at)),
            Some(obj) => match id_of(obj) {
                None => Err(RecErr::new(
                    "MANDATORY_NOT_FOUND",
                    "required field not found",
                    json!({"api_name": "id", "json_path": format!("$.data[{at}].id")}),
                )),
                Some(raw) => match parse_id(&raw) {
                    None => Err(RecErr::invalid_id(&raw)),
                    Some(id) => {
                        update_record(&mut world, index, id, obj, at, unmodified_since, stamp)
                    }
                },
            },
        };
        match outcome {
            Ok(written) => batch.ok(&world, index, written, zone, false),
            Err(err) => batch.fail(err),
        }
    }
    Ok(batch.finish(&state, &world, index, StatusCode::OK))
}

pub async fn update_many(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    update_common(state, user, name, None, headers, body).await
}

pub async fn update_one(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    update_common(state, user, name, Some(id), headers, body).await
}

pub async fn upsert(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let zone = state.config.time_zone;
    let now = state.now();
    let unmodified_since = header_time(&headers, "if-unmodified-since", zone)?;
    let mut world = state.world();
    let index = module_index(&world, &name)?;
    let (items, whole) = write_items(&body)?;
    let check_fields: Vec<String> = match whole.get("duplicate_check_fields") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(names)) => {
            let mut out = vec![];
            for n in names {
                let name = n.as_str().filter(|n| world.modules[index].field(n).is_some()).ok_or_else(|| {
                    SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
                        .with_details(json!({"api_name": "duplicate_check_fields", "json_path": "$.duplicate_check_fields"}))
                })?;
                out.push(name.to_owned());
            }
            out
        }
        Some(_) => {
            return Err(SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
                .with_details(json!({"api_name": "duplicate_check_fields", "expected_data_type": "jsonarray"})));
        }
    };
    let stamp = Stamp {
        user: &user,
        at: now,
        zone,
    };
    let mut batch = Batch::new();
    let mut any_update = false;
    for (at, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            batch.fail(not_an_object(at));
            continue;
        };
        let target = world.modules[index].upsert_match(obj, &check_fields);
        let outcome = match target {
            Some((id, field)) => {
                any_update = true;
                update_record(&mut world, index, id, obj, at, unmodified_since, stamp).map(
                    |mut w| {
                        w.duplicate_field = Some(field);
                        w
                    },
                )
            }
            None => insert_record(&mut world, index, obj, at, stamp),
        };
        match outcome {
            Ok(written) => batch.ok(&world, index, written, zone, true),
            Err(err) => batch.fail(err),
        }
    }
    let all_ok = if any_update {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(batch.finish(&state, &world, index, all_ok))
}

fn delete_ids(state: &SimState, user: &str, name: &str, ids: Vec<String>) -> Reply {
    if ids.is_empty() {
        return Err(SimError::required_param("ids"));
    }
    if ids.len() > WRITE_CAP {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds the limit",
        )
        .with_details(json!({"param_name": "ids", "limit": WRITE_CAP})));
    }
    let zone = state.config.time_zone;
    let stamp = Stamp {
        user,
        at: state.now(),
        zone,
    };
    let mut world = state.world();
    let index = module_index(&world, name)?;
    let mut entries = vec![];
    let mut failed = 0;
    let mut deleted = vec![];
    for raw in ids {
        let module = &mut world.modules[index];
        let outcome =
            match parse_id(&raw) {
                Some(id) if module.locks.contains_key(&id) => Err(RecErr::new(
                    "RECORD_LOCKED",
                    RecErr::locked(true).message,
                    json!({"id": raw}),
                )),
                Some(id) => module.delete(id, stamp).map(|_| id).ok_or(()).map_err(|_| {
                    RecErr::new("INVALID_DATA", "record not deleted", json!({"id": raw}))
                }),
                None => Err(RecErr::new(
                    "INVALID_DATA",
                    "record not deleted",
                    json!({"id": raw}),
                )),
            };
        match outcome {
            Ok(id) => {
                deleted.push((id, vec![]));
                entries.push(json!({"code": "SUCCESS", "details": {"id": id.to_string()}, "message": "record deleted", "status": "success"}));
            }
            Err(err) => {
                failed += 1;
                entries.push(err.entry());
            }
        }
    }
    let module = world.modules[index].api_name.clone();
    watch::notify(state, &world, &module, Operation::Delete, &deleted);
    let status = batch_status(failed, entries.len(), StatusCode::OK);
    Ok(json_reply(status, &json!({"data": entries})))
}

pub async fn delete_many(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    delete_ids(&state, &user, &name, query.list("ids"))
}

pub async fn delete_one(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path((name, id)): Path<(String, String)>,
) -> Reply {
    delete_ids(&state, &user, &name, vec![id])
}

pub async fn deleted(
    State(state): State<Arc<SimState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let zone = state.config.time_zone;
    let kind = query.get("type").unwrap_or_else(|| "all".into());
    if !["all", "recycle", "permanent"].contains(&kind.as_str()) {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "PATTERN_NOT_MATCHED",
            "Please check whether the input values are correct",
        )
        .with_details(json!({"param_name": "type"})));
    }
    let per_page = query.number("per_page", 200, 200)?;
    let page = query.number("page", 1, u64::MAX / 1024)?;
    let since = header_time(&headers, "if-modified-since", zone)?;
    let world = state.world();
    let index = module_index(&world, &name)?;
    let module = &world.modules[index];
    // Every emulated deletion goes to the recycle bin; nothing is permanent.
    let mut list: Vec<_> = module
        .deleted
        .iter()
        .filter(|_| kind != "permanent")
        .filter(|d| since.is_none_or(|s| d.deleted >= s))
        .collect();
    list.sort_by_key(|d| std::cmp::Reverse((d.deleted, d.id)));
    if list.is_empty() && since.is_some() {
        return Ok(empty_reply(StatusCode::NOT_MODIFIED));
    }
    let start = ((page - 1) * per_page) as usize;
    let end = (start + per_page as usize).min(list.len());
    if start >= end {
        return Ok(empty_reply(StatusCode::NO_CONTENT));
    }
    let data: Vec<Value> = list[start..end]
        .iter()
        .map(|d| {
            json!({
                "deleted_by": user_ref(&world.users, &d.deleted_by),
                "id": d.id.to_string(),
                "display_name": d.display_name,
                "type": "recycle",
                "created_by": user_ref(&world.users, &d.created_by),
                "deleted_time": format_time(d.deleted, zone),
            })
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": data, "info": {"per_page": per_page, "count": end - start, "page": page, "more_records": end < list.len()}}),
    ))
}

pub async fn search(
    State(state): State<Arc<SimState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let zone = state.config.time_zone;
    let per_page = query.number("per_page", 200, 200)?;
    let page = query.number("page", 1, u64::MAX / 1024)?;
    if page * per_page > DISCRETE_CAP {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "LIMIT_REACHED",
            "maximum response iteration limit reached",
        )
        .with_details(json!({"limit": "2000"})));
    }
    let world = state.world();
    let index = module_index(&world, &name)?;
    let module = &world.modules[index];
    let invalid_query = |code: &'static str, details: Value| {
        SimError::new(StatusCode::BAD_REQUEST, code, "invalid query formed").with_details(details)
    };
    enum Search {
        Criteria(Criteria),
        Email(String),
        Phone(String),
        Word(String),
    }
    let search = if let Some(text) = query.get("criteria") {
        let criteria = Criteria::parse(&text).map_err(|e| invalid_query(e.code, e.details))?;
        criteria
            .check(module)
            .map_err(|e| invalid_query(e.code, e.details))?;
        Search::Criteria(criteria)
    } else if let Some(email) = query.get("email") {
        Search::Email(email.to_lowercase())
    } else if let Some(phone) = query.get("phone") {
        Search::Phone(phone)
    } else if let Some(word) = query.get("word") {
        if word.chars().count() < 2 || word.chars().any(|c| "()\\,".contains(c)) {
            return Err(SimError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "the word given seems to be invalid",
            )
            .with_details(json!({"param_name": "word"})));
        }
        Search::Word(word.to_lowercase())
    } else {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "EXPECTED_PARAM_MISSING",
            "mandatory param missing",
        )
        .with_details(json!({"param_name": ["criteria", "email", "phone", "word"]})));
    };
    let of_type = |types: &[&str], rec: &Map<String, Value>, pred: &dyn Fn(&str) -> bool| {
        module
            .fields
            .iter()
            .filter(|f| types.contains(&f.data_type.as_str()))
            .any(|f| {
                rec.get(&f.api_name)
                    .and_then(Value::as_str)
                    .is_some_and(pred)
            })
    };
    let mut hits: Vec<Map<String, Value>> = module
        .records
        .values()
        .map(|rec| render(&world, module, rec, None, zone))
        .filter(|rec| match &search {
            Search::Criteria(c) => c.matches(module, rec, zone),
            Search::Email(e) => of_type(&["email"], rec, &|v| v.to_lowercase() == *e),
            Search::Phone(p) => of_type(&["phone"], rec, &|v| v.contains(p.as_str())),
            Search::Word(w) => of_type(
                &["text", "textarea", "email", "phone", "website", "picklist"],
                rec,
                &|v| v.to_lowercase().contains(w.as_str()),
            ),
        })
        .collect();
    hits.reverse();
    let start = ((page - 1) * per_page) as usize;
    let end = (start + per_page as usize).min(hits.len());
    if start >= end {
        return Ok(empty_reply(StatusCode::NO_CONTENT));
    }
    let fields = query.list("fields");
    let data: Vec<Value> = hits[start..end]
        .iter()
        .map(|rec| {
            if fields.is_empty() {
                Value::Object(rec.clone())
            } else {
                Value::Object(
                    rec.iter()
                        .filter(|(k, _)| *k == "id" || fields.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            }
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": data, "info": {"per_page": per_page, "count": end - start, "sort_by": "id", "page": page, "sort_order": "desc", "more_records": end < hits.len() && (end as u64) < DISCRETE_CAP}}),
    ))
}

fn locked_record<'a>(
    world: &'a World,
    name: &str,
    id: &str,
) -> Result<(usize, u64, &'a Module), SimError> {
    let index = module_index(world, name)?;
    let module = &world.modules[index];
    let record_id = parse_id(id)
        .filter(|id| module.records.contains_key(id))
        .ok_or_else(|| {
            SimError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "the id given seems to be invalid",
            )
            .with_details(json!({"id": id}))
        })?;
    Ok((index, record_id, module))
}

pub async fn lock_info(
    State(state): State<Arc<SimState>>,
    Path((name, id)): Path<(String, String)>,
) -> Reply {
    let zone = state.config.time_zone;
    let world = state.world();
    let (_, record_id, module) = locked_record(&world, &name, &id)?;
    let Some(lock) = module.locks.get(&record_id) else {
        return Ok(empty_reply(StatusCode::NO_CONTENT));
    };
    let record_name = module
        .records
        .get(&record_id)
        .and_then(|r| module.display_name(r));
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": [{
            "Locked_By__s": user_ref(&world.users, &lock.by),
            "Locked_For__s": {"module": {"api_name": module.api_name, "id": module.id}, "name": record_name, "id": id},
            "Locked_Reason__s": lock.reason,
            "Lock_Source__s": "Manual",
            "Locked_Time__s": format_time(lock.at, zone),
            "Record_Locking_Configuration_Id__s": null,
            "Record_Locking_Rule_Id__s": null,
            "Feature_Type__s": "record_locking",
            "$editable": true,
            "id": lock.lock_id.to_string(),
        }], "info": {"per_page": 200, "count": 1, "page": 1, "more_records": false}}),
    ))
}

pub async fn lock(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path((name, id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let now = state.now();
    let zone = state.config.time_zone;
    let (items, _) = write_items(&body)?;
    let reason = items
        .first()
        .and_then(|i| i.get("Locked_Reason__s"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut world = state.world();
    let (index, record_id, module) = locked_record(&world, &name, &id)?;
    if module.locks.contains_key(&record_id) {
        return Err(SimError::new(
            StatusCode::FORBIDDEN,
            "NOT_ALLOWED",
            "Record is already locked",
        )
        .with_details(json!({"id": id})));
    }
    let lock_id = world.next_id();
    world.modules[index].locks.insert(
        record_id,
        Lock {
            lock_id,
            reason,
            by: user.clone(),
            at: now,
        },
    );
    Ok(json_reply(
        StatusCode::CREATED,
        &json!({"data": [{"code": "SUCCESS", "details": {"id": lock_id.to_string(), "Created_Time": format_time(now, zone), "Created_By": user_ref(&world.users, &user)}, "message": "record added", "status": "success"}]}),
    ))
}

pub async fn unlock(
    State(state): State<Arc<SimState>>,
    Path((name, id, lock_id)): Path<(String, String, String)>,
) -> Reply {
    let mut world = state.world();
    let (index, record_id, module) = locked_record(&world, &name, &id)?;
    match module.locks.get(&record_id) {
        Some(lock) if lock.lock_id.to_string() == lock_id => {
            world.modules[index].locks.remove(&record_id);
            Ok(json_reply(
                StatusCode::OK,
                &json!({"data": [{"code": "SUCCESS", "details": {"id": lock_id}, "message": "record deleted", "status": "success"}]}),
            ))
        }
        _ => Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "the id given seems to be invalid",
        )
        .with_details(json!({"id": lock_id}))),
    }
}

/// `GET /crm/v8/{module}/actions/count`: `{"count": n}` of live records.
pub async fn count(State(state): State<Arc<SimState>>, Path(name): Path<String>) -> Reply {
    let world = state.world();
    let index = module_index(&world, &name)?;
    let n = world.modules[index].records.len();
    Ok(json_reply(StatusCode::OK, &json!({"count": n})))
}
