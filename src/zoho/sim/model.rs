//! The emulator's in-memory CRM: modules, field definitions, records, the
//! recycle bin and record locks, and the rules Zoho applies to writes
//! (types, lengths, mandatory and unique fields, duplicate checks).
//!
//! Pure data and rules, no HTTP and no clock of its own: callers pass the
//! current time, so every rule here is unit-tested without a server.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};
use time::{Date, OffsetDateTime, UtcOffset};

use super::wire::{format_time, parse_time};

/// Fields every module has and no client may write.
pub const SYSTEM_FIELDS: [&str; 5] = [
    "Owner",
    "Created_By",
    "Modified_By",
    "Created_Time",
    "Modified_Time",
];

/// A CRM user (the token's user, record owners).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct User {
    pub id: String,
    pub full_name: String,
    pub email: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default = "default_profile")]
    pub profile: String,
}

fn default_role() -> String {
    "CEO".into()
}

fn default_profile() -> String {
    "Administrator".into()
}

impl User {
    pub fn reference(&self) -> Value {
        json!({"name": self.full_name, "id": self.id, "email": self.email})
    }
}

/// One field's definition, as the seed declares it; `field_json` expands it
/// into Zoho's full field metadata.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct FieldDef {
    pub api_name: String,
    #[serde(default)]
    pub field_label: Option<String>,
    pub data_type: String,
    #[serde(default)]
    pub length: Option<u32>,
    #[serde(default)]
    pub decimal_place: Option<u32>,
    #[serde(default)]
    pub system_mandatory: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub custom_field: bool,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub pick_list_values: Vec<String>,
    /// Target module of a `lookup` field.
    #[serde(default)]
    pub lookup_module: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

impl FieldDef {
    pub fn label(&self) -> String {
        self.field_label
            .clone()
            .unwrap_or_else(|| self.api_name.replace('_', " "))
    }

    /// Zoho's `json_type` for a `data_type`.
    pub fn json_type(&self) -> &'static str {
        match self.data_type.as_str() {
            "integer" => "integer",
            "double" | "currency" | "percent" | "decimal" => "double",
            "boolean" => "boolean",
            "lookup" | "ownerlookup" | "userlookup" => "jsonobject",
            "multiselectpicklist" | "multiselectlookup" | "subform" => "jsonarray",
            _ => "string",
        }
    }

    fn writable(&self) -> bool {
        !self.read_only && !SYSTEM_FIELDS.contains(&self.api_name.as_str())
            || self.api_name == "Owner"
    }

    fn max_length(&self) -> Option<usize> {
        let default = match self.data_type.as_str() {
            "text" | "email" | "website" | "picklist" => Some(255),
            "phone" => Some(30),
            "textarea" => Some(32000),
            "integer" => Some(9),
            "bigint" => Some(18),
            "currency" | "double" | "decimal" => Some(16),
            "percent" => Some(5),
            _ => None,
        };
        self.length.map(|l| l as usize).or(default)
    }
}

/// A module as the seed declares it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModuleSeed {
    pub api_name: String,
    #[serde(default)]
    pub singular_label: Option<String>,
    #[serde(default)]
    pub plural_label: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    /// The system duplicate-check field for upsert (Leads `Email`, ...).
    #[serde(default)]
    pub duplicate_check_field: Option<String>,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
    #[serde(default)]
    pub records: Vec<Map<String, Value>>,
}

/// A stored record: client fields plus the system stamps.
#[derive(Debug, Clone)]
pub struct Rec {
    pub id: u64,
    pub values: Map<String, Value>,
    pub owner: String,
    pub created_by: String,
    pub modified_by: String,
    pub created: OffsetDateTime,
    pub modified: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct Deleted {
    pub id: u64,
    pub display_name: Option<String>,
    pub deleted_by: String,
    pub created_by: String,
    pub deleted: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct Lock {
    pub lock_id: u64,
    pub reason: String,
    pub by: String,
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct Module {
    pub api_name: String,
    pub id: String,
    pub singular_label: String,
    pub plural_label: String,
    pub duplicate_check_field: Option<String>,
    pub fields: Vec<FieldDef>,
    pub records: BTreeMap<u64, Rec>,
    pub deleted: Vec<Deleted>,
    pub locks: HashMap<u64, Lock>,
    pub modified: OffsetDateTime,
    pub custom: bool,
}

/// A per-record failure inside `data[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecErr {
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl RecErr {
    pub fn new(code: &'static str, message: impl Into<String>, details: Value) -> Self {
        Self {
            code,
            message: message.into(),
            details,
        }
    }

    pub fn entry(&self) -> Value {
        json!({"code": self.code, "details": self.details, "message": self.message, "status": "error"})
    }

    fn invalid_field(api_name: &str, index: usize, extra: Value) -> Self {
        let mut details =
            json!({"api_name": api_name, "json_path": format!("$.data[{index}].{api_name}")});
        if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        Self::new("INVALID_DATA", "invalid data", details)
    }

    pub fn invalid_id(id: &str) -> Self {
        Self::new(
            "INVALID_DATA",
            "the id given seems to be invalid",
            json!({"id": id}),
        )
    }

    pub fn locked(delete: bool) -> Self {
        let message = if delete {
            "You cannot perform this operation as the record is locked."
        } else {
            "Sorry, you cannot perform this operation as the record is locked."
        };
        Self::new("RECORD_LOCKED", message, json!({}))
    }
}

/// Who is writing and when.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub user: &'a str,
    pub at: OffsetDateTime,
    pub zone: UtcOffset,
}

/// The result of one record write.
#[derive(Debug, Clone)]
pub struct Written {
    pub id: u64,
    pub inserted: bool,
    pub duplicate_field: Option<String>,
    pub changed_fields: Vec<String>,
}

impl Module {
    pub fn new(seed: &ModuleSeed, id: String, now: OffsetDateTime) -> Self {
        let mut fields = seed.fields.clone();
        for system in SYSTEM_FIELDS {
            if !fields.iter().any(|f| f.api_name == system) {
                let data_type = if system.ends_with("_Time") {
                    "datetime"
                } else {
                    "ownerlookup"
                };
                fields.push(FieldDef {
                    api_name: system.into(),
                    field_label: None,
                    data_type: data_type.into(),
                    length: None,
                    decimal_place: None,
                    system_mandatory: false,
                    unique: false,
                    custom_field: false,
                    read_only: system != "Owner",
                    pick_list_values: vec![],
                    lookup_module: None,
                    id: None,
                });
            }
        }
        let custom = seed.api_name.ends_with("__c") || seed.duplicate_check_field.is_none();
        Self {
            api_name: seed.api_name.clone(),
            id,
            singular_label: seed
                .singular_label
                .clone()
                .unwrap_or_else(|| seed.api_name.trim_end_matches('s').to_owned()),
            plural_label: seed
                .plural_label
                .clone()
                .unwrap_or_else(|| seed.api_name.clone()),
            duplicate_check_field: seed.duplicate_check_field.clone(),
            fields,
            records: BTreeMap::new(),
            deleted: Vec::new(),
            locks: HashMap::new(),
            modified: now,
            custom,
        }
    }

    pub fn field(&self, api_name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.api_name == api_name)
    }

    /// What Zoho shows as the record's name (lookups, deleted list).
    pub fn display_name(&self, rec: &Rec) -> Option<String> {
        let text = |k: &str| rec.values.get(k).and_then(Value::as_str).map(str::to_owned);
        for key in ["Deal_Name", "Account_Name", "Name", "Subject"] {
            if let Some(v) = text(key) {
                return Some(v);
            }
        }
        match (text("First_Name"), text("Last_Name")) {
            (Some(first), Some(last)) => Some(format!("{first} {last}")),
            (None, Some(last)) => Some(last),
            _ => None,
        }
    }

    /// Checks and normalises one incoming record. `existing` is the record an
    /// update or upsert applies to.
    pub fn validate(
        &self,
        input: &Map<String, Value>,
        index: usize,
        existing: Option<&Rec>,
        users: &[User],
        zone: UtcOffset,
        lookups: &dyn Fn(&str, &str) -> bool,
    ) -> Result<Map<String, Value>, RecErr> {
        let mut clean = Map::new();
        for (key, value) in input {
            if key == "id" || key.starts_with('$') {
                continue;
            }
            // Zoho ignores fields it does not know and system-maintained ones.
            let Some(field) = self.field(key) else {
                continue;
            };
            if !field.writable() {
                continue;
            }
            if value.is_null() {
                if field.system_mandatory {
                    return Err(mandatory(&field.api_name, index));
                }
                clean.insert(key.clone(), Value::Null);
                continue;
            }
            let normal = check_type(field, value, index, users, zone, lookups)?;
            clean.insert(key.clone(), normal);
        }
        if existing.is_none() {
            for field in self.fields.iter().filter(|f| f.system_mandatory) {
                let present = clean
                    .get(&field.api_name)
                    .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
                if !present {
                    return Err(mandatory(&field.api_name, index));
                }
            }
        }
        if let Some(owner) = clean.get("Owner")
            && owner.is_null()
        {
            clean.remove("Owner");
        }
        self.check_unique(&clean, index, existing.map(|r| r.id))?;
        Ok(clean)
    }

    fn check_unique(
        &self,
        clean: &Map<String, Value>,
        index: usize,
        own_id: Option<u64>,
    ) -> Result<(), RecErr> {
        for field in self.fields.iter().filter(|f| f.unique) {
            let Some(value) = clean.get(&field.api_name).filter(|v| !v.is_null()) else {
                continue;
            };
            if let Some(other) = self.find_by(&field.api_name, value)
                && Some(other.id) != own_id
            {
                return Err(RecErr::new(
                    "DUPLICATE_DATA",
                    "duplicate data",
                    json!({
                        "api_name": field.api_name,
                        "json_path": format!("$.data[{index}].{}", field.api_name),
                        "duplicate_record": {
                            "id": other.id.to_string(),
                            "module": {"api_name": self.api_name, "id": self.id},
                            "Owner": {"id": other.owner},
                        },
                    }),
                ));
            }
        }
        Ok(())
    }

    /// The first record whose field equals `value` (text compared without case).
    pub fn find_by(&self, api_name: &str, value: &Value) -> Option<&Rec> {
        self.records.values().find(|rec| {
            rec.values
                .get(api_name)
                .is_some_and(|v| same_value(v, value))
        })
    }

    pub fn insert(&mut self, id: u64, clean: Map<String, Value>, stamp: Stamp<'_>) -> Written {
        let owner = clean
            .get("Owner")
            .and_then(|o| o.get("id"))
            .and_then(Value::as_str)
            .unwrap_or(stamp.user)
            .to_owned();
        let mut values = clean;
        values.remove("Owner");
        let changed_fields = values.keys().cloned().collect();
        self.records.insert(
            id,
            Rec {
                id,
                values,
                owner,
                created_by: stamp.user.into(),
                modified_by: stamp.user.into(),
                created: stamp.at,
                modified: stamp.at,
            },
        );
        Written {
            id,
            inserted: true,
            duplicate_field: None,
            changed_fields,
        }
    }

    /// Applies validated changes; `append` lists multi-select fields whose
    /// values are appended rather than replaced (`$append_values`).
    pub fn update(
        &mut self,
        id: u64,
        mut clean: Map<String, Value>,
        append: &[String],
        stamp: Stamp<'_>,
    ) -> Option<Written> {
        let rec = self.records.get_mut(&id)?;
        if let Some(owner) = clean
            .remove("Owner")
            .and_then(|o| o.get("id").and_then(Value::as_str).map(str::to_owned))
        {
            rec.owner = owner;
        }
        let mut changed_fields = Vec::new();
        for (key, mut value) in clean {
            if append.contains(&key)
                && let (Some(Value::Array(old)), Value::Array(new)) = (rec.values.get(&key), &value)
            {
                let mut merged = old.clone();
                merged.extend(new.iter().filter(|v| !old.contains(v)).cloned());
                value = Value::Array(merged);
            }
            if rec.values.get(&key) != Some(&value) {
                changed_fields.push(key.clone());
            }
            rec.values.insert(key, value);
        }
        rec.modified_by = stamp.user.into();
        rec.modified = stamp.at;
        Some(Written {
            id,
            inserted: false,
            duplicate_field: None,
            changed_fields,
        })
    }

    pub fn delete(&mut self, id: u64, stamp: Stamp<'_>) -> Option<Rec> {
        let rec = self.records.remove(&id)?;
        self.locks.remove(&id);
        self.deleted.push(Deleted {
            id,
            display_name: self.display_name(&rec),
            deleted_by: stamp.user.into(),
            created_by: rec.created_by.clone(),
            deleted: stamp.at,
        });
        Some(rec)
    }

    /// The upsert target: listed fields first, then (when none are listed)
    /// the system duplicate-check field, then the remaining unique fields.
    pub fn upsert_match(
        &self,
        input: &Map<String, Value>,
        check_fields: &[String],
    ) -> Option<(u64, String)> {
        let mut order: Vec<String> = check_fields.to_vec();
        if check_fields.is_empty()
            && let Some(system) = &self.duplicate_check_field
        {
            order.push(system.clone());
        }
        for field in self.fields.iter().filter(|f| f.unique) {
            if !order.contains(&field.api_name) {
                order.push(field.api_name.clone());
            }
        }
        order.into_iter().find_map(|name| {
            let value = input
                .get(&name)
                .filter(|v| !v.is_null() && v.as_str() != Some(""))?;
            self.find_by(&name, value).map(|rec| (rec.id, name.clone()))
        })
    }

    /// The record as Zoho renders it; `only` limits it to the listed fields
    /// (plus `id`), as list calls with `fields` do.
    pub fn render(
        &self,
        rec: &Rec,
        only: Option<&[String]>,
        users: &[User],
        zone: UtcOffset,
        resolve: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Map<String, Value> {
        let user_ref = |id: &str| {
            users
                .iter()
                .find(|u| u.id == id)
                .map(User::reference)
                .unwrap_or_else(|| json!({"id": id, "name": null}))
        };
        let mut out = Map::new();
        out.insert("id".into(), Value::String(rec.id.to_string()));
        for field in &self.fields {
            let wanted = only.is_none_or(|names| names.iter().any(|n| n == &field.api_name));
            if !wanted {
                continue;
            }
            let value = match field.api_name.as_str() {
                "Owner" => user_ref(&rec.owner),
                "Created_By" => user_ref(&rec.created_by),
                "Modified_By" => user_ref(&rec.modified_by),
                "Created_Time" => Value::String(format_time(rec.created, zone)),
                "Modified_Time" => Value::String(format_time(rec.modified, zone)),
                name => match rec.values.get(name) {
                    Some(Value::Object(link)) if field.data_type == "lookup" => {
                        let id = link.get("id").and_then(Value::as_str).unwrap_or_default();
                        let target = field.lookup_module.as_deref().unwrap_or_default();
                        json!({"name": resolve(target, id), "id": id})
                    }
                    Some(Value::String(at)) if field.data_type == "datetime" => {
                        parse_time(at, zone)
                            .map(|t| Value::String(format_time(t, zone)))
                            .unwrap_or_else(|| Value::String(at.clone()))
                    }
                    Some(v) => v.clone(),
                    None if field.json_type() == "jsonarray" => json!([]),
                    None => Value::Null,
                },
            };
            out.insert(field.api_name.clone(), value);
        }
        if only.is_none() {
            let locked = self.locks.contains_key(&rec.id);
            out.insert("$editable".into(), Value::Bool(!locked));
            out.insert("$locked_for_me".into(), Value::Bool(locked));
            out.insert("Locked__s".into(), Value::Bool(locked));
            out.insert("$approval_state".into(), json!("approved"));
            out.insert("Record_Status__s".into(), json!("Available"));
            out.insert("$in_merge".into(), Value::Bool(false));
            out.insert(
                "$approval".into(),
                json!({"delegate": false, "approve": false, "reject": false, "resubmit": false}),
            );
        }
        out
    }
}

fn mandatory(api_name: &str, index: usize) -> RecErr {
    RecErr::new(
        "MANDATORY_NOT_FOUND",
        "required field not found",
        json!({"api_name": api_name, "json_path": format!("$.data[{index}].{api_name}")}),
    )
}

/// Equality as Zoho's duplicate check sees it: text ignores case.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.to_lowercase() == y.to_lowercase(),
        (Value::Object(x), Value::Object(y)) => x.get("id") == y.get("id"),
        _ => a == b,
    }
}

fn check_type(
    field: &FieldDef,
    value: &Value,
    index: usize,
    users: &[User],
    zone: UtcOffset,
    lookups: &dyn Fn(&str, &str) -> bool,
) -> Result<Value, RecErr> {
    let name = field.api_name.as_str();
    let expected = |t: &str| RecErr::invalid_field(name, index, json!({"expected_data_type": t}));
    let too_long = |max: usize| RecErr::invalid_field(name, index, json!({"maximum_length": max}));
    match field.data_type.as_str() {
        "text" | "textarea" | "email" | "phone" | "website" | "picklist" | "autonumber" => {
            let text = value.as_str().ok_or_else(|| expected("string"))?;
            if let Some(max) = field.max_length()
                && text.chars().count() > max
            {
                return Err(too_long(max));
            }
            if field.data_type == "email" && !text.is_empty() && !looks_like_email(text) {
                return Err(RecErr::invalid_field(name, index, json!({})));
            }
            Ok(value.clone())
        }
        "integer" => {
            let n = value.as_i64().ok_or_else(|| expected("integer"))?;
            if n.unsigned_abs().to_string().len() > field.max_length().unwrap_or(9) {
                return Err(too_long(field.max_length().unwrap_or(9)));
            }
            Ok(value.clone())
        }
        "bigint" => match value {
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(value.clone())
            }
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Value::String(n.to_string())),
            _ => Err(expected("bigint")),
        },
        "double" | "currency" | "percent" | "decimal" => {
            if value.is_number() {
                Ok(value.clone())
            } else {
                Err(expected("double"))
            }
        }
        "boolean" => {
            if value.is_boolean() {
                Ok(value.clone())
            } else {
                Err(expected("boolean"))
            }
        }
        "date" => {
            let text = value.as_str().ok_or_else(|| expected("date"))?;
            let fmt = time::macros::format_description!("[year]-[month]-[day]");
            Date::parse(text, &fmt).map_err(|_| expected("date"))?;
            Ok(value.clone())
        }
        "datetime" => {
            let text = value.as_str().ok_or_else(|| expected("datetime"))?;
            let at = parse_time(text, zone).ok_or_else(|| expected("datetime"))?;
            Ok(Value::String(format_time(at, zone)))
        }
        "multiselectpicklist" => match value {
            Value::Array(items) if items.iter().all(Value::is_string) => Ok(value.clone()),
            _ => Err(expected("jsonarray")),
        },
        "ownerlookup" | "userlookup" => {
            let id = reference_id(value).ok_or_else(|| expected("jsonobject"))?;
            if users.iter().any(|u| u.id == id) {
                Ok(json!({"id": id}))
            } else {
                Err(RecErr::invalid_field(name, index, json!({})))
            }
        }
        "lookup" => {
            let id = reference_id(value).ok_or_else(|| expected("jsonobject"))?;
            let target = field.lookup_module.as_deref().unwrap_or_default();
            if target.is_empty() || lookups(target, &id) {
                Ok(json!({"id": id}))
            } else {
                Err(RecErr::invalid_field(name, index, json!({})))
            }
        }
        _ => Ok(value.clone()),
    }
}

/// A lookup value: `{"id": "..."}` (string or number) or a bare id string.
fn reference_id(value: &Value) -> Option<String> {
    let id = match value {
        Value::Object(map) => map.get("id")?,
        other => other,
    };
    match id {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn looks_like_email(text: &str) -> bool {
    text.split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
}

/// Zoho's full field metadata for a definition (the keys in ZOHO-API.md §6.2
/// that the official SDKs and Airbyte read).
pub fn field_json(field: &FieldDef, id: &str) -> Value {
    let system = SYSTEM_FIELDS.contains(&field.api_name.as_str());
    let read_only = field.read_only || (system && field.api_name != "Owner");
    let pick_list: Vec<Value> = field
        .pick_list_values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"display_value": v, "sequence_number": i + 1, "reference_value": v,
                   "colour_code": null, "actual_value": v, "id": format!("{id}{i}"), "type": "used"})
        })
        .collect();
    let lookup = match &field.lookup_module {
        Some(module) => {
            json!({"module": {"api_name": module, "id": null}, "display_label": module, "api_name": module})
        }
        None => json!({}),
    };
    // Two halves: one `json!` this size exceeds the macro recursion limit.
    let mut first = json!({
        "associated_module": null,
        "webhook": true,
        "operation_type": {"web_update": !read_only, "api_create": !read_only, "web_create": !read_only, "api_update": !read_only},
        "colour_code_enabled_by_system": false,
        "field_label": field.label(),
        "tooltip": null,
        "type": "used",
        "field_read_only": read_only,
        "customizable_properties": null,
        "display_label": field.label(),
        "read_only": read_only,
        "association_details": null,
        "businesscard_supported": false,
        "multi_module_lookup": {},
        "id": id,
        "created_time": null,
        "filterable": true,
        "visible": true,
        "profiles": [{"permission_type": if read_only { "read_only" } else { "read_write" }, "name": "Administrator", "id": "4876876000000026011"}],
        "view_type": {"view": true, "edit": !read_only, "quick_create": !read_only, "create": !read_only},
        "separator": false,
        "searchable": true,
    });
    let second = json!({
        "external": null,
        "api_name": field.api_name,
        "unique": if field.unique { json!({"case_sensitive": false}) } else { json!({}) },
        "enable_colour_code": false,
        "pick_list_values": pick_list,
        "system_mandatory": field.system_mandatory,
        "virtual_field": false,
        "json_type": field.json_type(),
        "crypt": null,
        "created_source": if field.custom_field { "crm_ui" } else { "default" },
        "display_type": -1,
        "ui_type": 1,
        "modified_time": null,
        "quick_sequence_number": null,
        "email_parser": {"fields_update_supported": false, "record_operations_supported": true},
        "currency": {},
        "custom_field": field.custom_field,
        "lookup": lookup,
        "hipaa_compliance": null,
        "convert_mapping": {},
        "rollup_summary": {},
        // Never 0: the Node SDK reads an object whose `length` is 0 as empty.
        "length": field.max_length().unwrap_or(match field.data_type.as_str() {
            "date" | "datetime" => 20,
            "boolean" => 5,
            _ => 120,
        }),
        "display_field": false,
        "pick_list_values_sorted_lexically": false,
        "sortable": true,
        "layout_associations": [{"api_name": "Standard__s", "name": "Standard", "id": "4876876000000091055"}],
        "global_picklist": null,
        "history_tracking": null,
        "data_type": field.data_type,
        "formula": {},
        "hipaa_compliance_enabled": false,
        "decimal_place": field.decimal_place,
        "mass_update": !read_only,
        "multiselectlookup": {},
        "auto_number": {},
    });
    if let (Some(a), Value::Object(b)) = (first.as_object_mut(), second) {
        a.extend(b);
    }
    first
}

#[cfg(test)]
mod tests {
    use time::macros::{datetime, offset};

    use super::*;

    fn leads() -> Module {
        let seed: ModuleSeed = serde_json::from_value(json!({
            "api_name": "Leads",
            "duplicate_check_field": "Email",
            "fields": [
                {"api_name": "Last_Name", "data_type": "text", "length": 10, "system_mandatory": true},
                {"api_name": "Email", "data_type": "email"},
                {"api_name": "No_of_Employees", "data_type": "integer"},
                {"api_name": "Synchub_Id", "data_type": "text", "unique": true},
                {"api_name": "Tags", "data_type": "multiselectpicklist"}
            ]
        }))
        .unwrap();
        Module::new(&seed, "1".into(), datetime!(2024-01-01 0:00 UTC))
    }

    fn users() -> Vec<User> {
        vec![User {
            id: "9".into(),
            full_name: "Pat".into(),
            email: "p@x.io".into(),
            first_name: None,
            last_name: None,
            role: default_role(),
            profile: default_profile(),
        }]
    }

    fn no_lookups(_: &str, _: &str) -> bool {
        true
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn stamp() -> Stamp<'static> {
        Stamp {
            user: "9",
            at: datetime!(2024-01-02 0:00 UTC),
            zone: offset!(+5:30),
        }
    }

    #[test]
    fn a_missing_mandatory_field_is_reported_with_its_json_path() {
        let m = leads();
        let err = m
            .validate(
                &obj(json!({"Email": "a@b.io"})),
                3,
                None,
                &users(),
                offset!(UTC),
                &no_lookups,
            )
            .unwrap_err();
        assert_eq!(err.code, "MANDATORY_NOT_FOUND");
        assert_eq!(err.details["json_path"], "$.data[3].Last_Name");
    }

    #[test]
    fn wrong_types_and_long_text_are_invalid_data() {
        let m = leads();
        let bad_type = m
            .validate(
                &obj(json!({"Last_Name": "A", "No_of_Employees": "ten"})),
                0,
                None,
                &users(),
                offset!(UTC),
                &no_lookups,
            )
            .unwrap_err();
        assert_eq!(bad_type.details["expected_data_type"], "integer");
        let too_long = m
            .validate(
                &obj(json!({"Last_Name": "ABCDEFGHIJKL"})),
                0,
                None,
                &users(),
                offset!(UTC),
                &no_lookups,
            )
            .unwrap_err();
        assert_eq!(too_long.details["maximum_length"], 10);
    }

    #[test]
    fn system_and_unknown_fields_are_ignored_on_write() {
        let m = leads();
        let clean = m
            .validate(
                &obj(json!({"Last_Name": "A", "Modified_Time": "2020-01-01T00:00:00Z", "Nope": 1})),
                0,
                None,
                &users(),
                offset!(UTC),
                &no_lookups,
            )
            .unwrap();
        assert_eq!(clean.len(), 1);
    }

    #[test]
    fn a_unique_field_refuses_a_second_record_with_the_same_value() {
        let mut m = leads();
        let first = m
            .validate(
                &obj(json!({"Last_Name": "A", "Synchub_Id": "x1"})),
                0,
                None,
                &users(),
                offset!(UTC),
                &no_lookups,
            )
            .unwrap();
        m.insert(1, first, stamp());
        let err = m
            .validate(
                &obj(json!({"Last_Name": "B", "Synchub_Id": "X1"})),
                0,
                None,
                &users(),
                offset!(UTC),
                &no_lookups,
            )
            .unwrap_err();
        assert_eq!(err.code, "DUPLICATE_DATA");
        assert_eq!(err.details["duplicate_record"]["id"], "1");
    }

    #[test]
    fn upsert_matches_listed_fields_before_the_system_field() {
        let mut m = leads();
        m.insert(
            1,
            obj(json!({"Last_Name": "A", "Email": "a@b.io"})),
            stamp(),
        );
        m.insert(
            2,
            obj(json!({"Last_Name": "B", "Synchub_Id": "s2"})),
            stamp(),
        );
        let input = obj(json!({"Email": "A@B.io", "Synchub_Id": "s2"}));
        assert_eq!(
            m.upsert_match(&input, &["Synchub_Id".into()]),
            Some((2, "Synchub_Id".into()))
        );
        assert_eq!(m.upsert_match(&input, &[]), Some((1, "Email".into())));
    }

    #[test]
    fn append_values_extends_a_multi_select_instead_of_replacing_it() {
        let mut m = leads();
        m.insert(1, obj(json!({"Last_Name": "A", "Tags": ["a"]})), stamp());
        m.update(
            1,
            obj(json!({"Tags": ["b", "a"]})),
            &["Tags".into()],
            stamp(),
        );
        assert_eq!(m.records[&1].values["Tags"], json!(["a", "b"]));
    }

    #[test]
    fn deleting_moves_the_record_to_the_recycle_bin() {
        let mut m = leads();
        m.insert(1, obj(json!({"Last_Name": "A"})), stamp());
        assert!(m.delete(1, stamp()).is_some());
        assert!(m.delete(1, stamp()).is_none());
        assert_eq!(m.deleted[0].display_name.as_deref(), Some("A"));
    }

    #[test]
    fn rendering_formats_times_in_the_user_zone_and_limits_fields() {
        let mut m = leads();
        m.insert(1, obj(json!({"Last_Name": "A"})), stamp());
        let only = vec!["Last_Name".to_owned(), "Modified_Time".to_owned()];
        let out = m.render(
            &m.records[&1],
            Some(&only),
            &users(),
            offset!(+5:30),
            &|_, _| None,
        );
        assert_eq!(out["Modified_Time"], "2024-01-02T05:30:00+05:30");
        assert_eq!(out.len(), 3);
    }
}
