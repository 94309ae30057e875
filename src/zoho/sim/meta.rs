//! Metadata endpoints: org, users, modules, fields, and custom field
//! create/update (ZOHO-API.md §6).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::http::AuthUser;
use super::model::{FieldDef, Module, User, field_json};
use super::state::SimState;
use super::wire::{Query, SimError, empty_reply, format_time, header_str, json_reply, parse_time};

type Reply = Result<Response, SimError>;

pub async fn org(State(state): State<Arc<SimState>>) -> Reply {
    let world = state.world();
    let mut org = world.org.clone();
    org.entry("edition")
        .or_insert_with(|| json!(state.config.edition.name()));
    Ok(json_reply(StatusCode::OK, &json!({"org": [org]})))
}

fn user_json(user: &User, zone: &str) -> Value {
    json!({
        "id": user.id,
        "full_name": user.full_name,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "role": {"name": user.role, "id": format!("{}9", user.id)},
        "profile": {"name": user.profile, "id": "4876876000000026011"},
        "status": "active",
        "confirm": true,
        "time_zone": zone,
        "locale": "en_US",
    })
}

pub async fn users(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(me)): Extension<AuthUser>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let world = state.world();
    let zone = world
        .org
        .get("time_zone")
        .and_then(Value::as_str)
        .unwrap_or("UTC")
        .to_owned();
    let users: Vec<Value> = world
        .users
        .iter()
        .filter(|u| query.get("type").as_deref() != Some("CurrentUser") || u.id == me)
        .map(|u| user_json(u, &zone))
        .collect();
    let count = users.len();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"users": users, "info": {"per_page": 200, "count": count, "page": 1, "more_records": false}}),
    ))
}

fn module_json(module: &Module, zone: time::UtcOffset, users: &[User]) -> Value {
    let by = users
        .first()
        .map(|u| json!({"name": u.full_name, "id": u.id}));
    json!({
        "has_more_profiles": false,
        "access_type": "org_based",
        "private_profile": null,
        "deletable": module.custom,
        "description": null,
        "creatable": true,
        "recycle_bin_on_delete": true,
        "modified_time": format_time(module.modified, zone),
        "plural_label": module.plural_label,
        "presence_sub_menu": true,
        "actual_plural_label": module.plural_label,
        "id": module.id,
        "visibility": 1,
        "convertable": module.api_name == "Leads",
        "sub_menu_available": true,
        "editable": true,
        "actual_singular_label": module.singular_label,
        "profiles": [{"name": "Administrator", "id": "4876876000000026011"}],
        "show_as_tab": true,
        "web_link": null,
        "sequence_number": 1,
        "singular_label": module.singular_label,
        "viewable": true,
        "api_supported": true,
        "api_name": module.api_name,
        "quick_create": true,
        "modified_by": by,
        "generated_type": if module.custom { "custom" } else { "default" },
        "feeds_required": false,
        "arguments": [],
        "module_name": module.api_name,
        "profile_count": 1,
        "business_card_field_limit": 5,
        "parent_module": {},
        "status": "visible",
    })
}

pub async fn modules(State(state): State<Arc<SimState>>, headers: HeaderMap) -> Reply {
    let zone = state.config.time_zone;
    let world = state.world();
    if let Some(raw) = header_str(&headers, "if-modified-since") {
        let since = parse_time(raw, zone).ok_or_else(|| {
            SimError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid If-Modified-Since header",
            )
        })?;
        if world.modules.iter().all(|m| m.modified < since) {
            return Ok(empty_reply(StatusCode::NOT_MODIFIED));
        }
    }
    let list: Vec<Value> = world
        .modules
        .iter()
        .map(|m| module_json(m, zone, &world.users))
        .collect();
    Ok(json_reply(StatusCode::OK, &json!({"modules": list})))
}

pub async fn module(State(state): State<Arc<SimState>>, Path(name): Path<String>) -> Reply {
    let world = state.world();
    let module = world.module(&name).ok_or_else(SimError::invalid_module)?;
    let mut item = module_json(module, state.config.time_zone, &world.users);
    if let Some(obj) = item.as_object_mut() {
        let fields: Vec<Value> = module
            .fields
            .iter()
            .map(|f| json!({"api_name": f.api_name, "id": f.id}))
            .collect();
        obj.insert("fields".into(), Value::Array(fields));
    }
    Ok(json_reply(StatusCode::OK, &json!({"modules": [item]})))
}

fn module_param(query: &Query) -> Result<String, SimError> {
    query
        .get("module")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| SimError::required_param("module"))
}

pub async fn fields(State(state): State<Arc<SimState>>, RawQuery(raw): RawQuery) -> Reply {
    let query = Query::parse(raw.as_deref());
    let name = module_param(&query)?;
    let world = state.world();
    let module = world
        .module(&name)
        .ok_or_else(|| SimError::invalid_module().with_details(json!({"param_name": "module"})))?;
    let list: Vec<Value> = module
        .fields
        .iter()
        .map(|f| field_json(f, f.id.as_deref().unwrap_or_default()))
        .collect();
    Ok(json_reply(StatusCode::OK, &json!({"fields": list})))
}

pub async fn field(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let name = module_param(&query)?;
    let world = state.world();
    let module = world.module(&name).ok_or_else(SimError::invalid_module)?;
    let field = module
        .fields
        .iter()
        .find(|f| f.id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| {
            SimError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "the id given seems to be invalid",
            )
            .with_details(json!({"id": id}))
        })?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"fields": [field_json(field, &id)]}),
    ))
}

/// Data types a custom field may be created with.
const CUSTOM_TYPES: [&str; 13] = [
    "text",
    "textarea",
    "email",
    "phone",
    "website",
    "picklist",
    "multiselectpicklist",
    "integer",
    "bigint",
    "double",
    "currency",
    "boolean",
    "date",
];

fn body_items(body: &Bytes, key: &str) -> Result<Vec<Value>, SimError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| SimError::invalid_body())?;
    match value.get(key) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items.clone()),
        Some(_) => Err(
            SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
                .with_details(json!({"api_name": key})),
        ),
        None => Err(SimError::mandatory_missing(key)),
    }
}

fn picklist(item: &Map<String, Value>) -> Vec<String> {
    item.get("pick_list_values")
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(|v| {
                    v.get("display_value")
                        .or_else(|| v.get("actual_value"))
                        .and_then(Value::as_str)
                        .or_else(|| v.as_str())
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn create_fields(
    State(state): State<Arc<SimState>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let name = module_param(&query)?;
    let items = body_items(&body, "fields")?;
    let now = state.now();
    let mut world = state.world();
    world.module(&name).ok_or_else(SimError::invalid_module)?;
    let mut results = Vec::new();
    let mut failed = 0;
    for (index, item) in items.iter().enumerate() {
        let outcome = (|| {
            let item = item.as_object().ok_or_else(|| {
                entry_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"json_path": format!("$.fields[{index}]")}),
                )
            })?;
            let label = item
                .get("field_label")
                .and_then(Value::as_str)
                .filter(|l| !l.trim().is_empty())
                .ok_or_else(|| entry_error("MANDATORY_NOT_FOUND", "required field not found", json!({"api_name": "field_label", "json_path": format!("$.fields[{index}].field_label")})))?;
            let data_type = item
                .get("data_type")
                .and_then(Value::as_str)
                .ok_or_else(|| entry_error("MANDATORY_NOT_FOUND", "required field not found", json!({"api_name": "data_type", "json_path": format!("$.fields[{index}].data_type")})))?;
            if !CUSTOM_TYPES.contains(&data_type) {
                return Err(entry_error(
                    "INVALID_DATA",
                    "invalid data",
                    json!({"api_name": "data_type", "json_path": format!("$.fields[{index}].data_type")}),
                ));
            }
            let api_name: String = label
                .trim()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            Ok((
                label.trim().to_owned(),
                data_type.to_owned(),
                api_name,
                item.clone(),
            ))
        })();
        let (label, data_type, api_name, item) = match outcome {
            Ok(parts) => parts,
            Err(entry) => {
                failed += 1;
                results.push(entry);
                continue;
            }
        };
        let id = world.next_id().to_string();
        let Some(module) = world.module_mut(&name) else {
            return Err(SimError::invalid_module());
        };
        if module.fields.iter().any(|f| {
            f.api_name.eq_ignore_ascii_case(&api_name) || f.label().eq_ignore_ascii_case(&label)
        }) {
            failed += 1;
            results.push(entry_error(
                "DUPLICATE_DATA",
                "duplicate data",
                json!({"api_name": "field_label", "json_path": format!("$.fields[{index}].field_label")}),
            ));
            continue;
        }
        module.fields.push(FieldDef {
            api_name,
            field_label: Some(label),
            data_type,
            length: item.get("length").and_then(Value::as_u64).map(|l| l as u32),
            decimal_place: item
                .get("decimal_place")
                .and_then(Value::as_u64)
                .map(|l| l as u32),
            system_mandatory: false,
            unique: item
                .get("unique")
                .is_some_and(|u| u.is_object() || u == &json!(true)),
            custom_field: true,
            read_only: false,
            pick_list_values: picklist(&item),
            lookup_module: None,
            id: Some(id.clone()),
        });
        module.modified = now;
        results.push(json!({"code": "SUCCESS", "details": {"id": id}, "message": "field created", "status": "success"}));
    }
    Ok(json_reply(
        batch_status(failed, results.len(), StatusCode::CREATED),
        &json!({"fields": results}),
    ))
}

pub async fn update_field(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Reply {
    let query = Query::parse(raw.as_deref());
    let name = module_param(&query)?;
    let items = body_items(&body, "fields")?;
    let now = state.now();
    let mut world = state.world();
    let module = world
        .module_mut(&name)
        .ok_or_else(SimError::invalid_module)?;
    let field = module
        .fields
        .iter_mut()
        .find(|f| f.id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| {
            SimError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "the id given seems to be invalid",
            )
            .with_details(json!({"id": id}))
        })?;
    if !field.custom_field {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "NOT_ALLOWED",
            "system fields cannot be modified",
        )
        .with_details(json!({"id": id})));
    }
    let item = items
        .first()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(label) = item.get("field_label").and_then(Value::as_str) {
        field.field_label = Some(label.to_owned());
    }
    if let Some(length) = item.get("length").and_then(Value::as_u64) {
        field.length = Some(length as u32);
    }
    let values = picklist(&item);
    if !values.is_empty() {
        field.pick_list_values = values;
    }
    module.modified = now;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"fields": [{"code": "SUCCESS", "details": {"id": id}, "message": "field updated", "status": "success"}]}),
    ))
}

fn entry_error(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

/// 2xx when all succeeded, 207 when some did, 400 when none did.
pub fn batch_status(failed: usize, total: usize, all_ok: StatusCode) -> StatusCode {
    if failed == 0 {
        all_ok
    } else if failed < total {
        StatusCode::MULTI_STATUS
    } else {
        StatusCode::BAD_REQUEST
    }
}
