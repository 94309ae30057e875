//! Asynchronous work: mass update (by ids at once, by custom view as a job),
//! file upload, bulk write (import a zipped CSV) and bulk read (export to a
//! zipped CSV), each with Zoho's status replies (ZOHO-API.md §8).
//!
//! Jobs wait `job_delay` before they run, so clients see the queued states;
//! they run on the emulator's task tracker and stop at shutdown.

use std::io::{Cursor, Read, Write};
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::http::AuthUser;
use super::model::{Rec, Stamp};
use super::records::{insert_record, update_record};
use super::state::{BulkJob, MassJob, SimState};
use super::watch::{self, Operation};
use super::wire::{Query, SimError, format_time, header_str, json_reply};

/// Records a mass update may touch; ids are applied at once up to 500.
const MASS_CAP: usize = 50_000;
const MASS_IDS_CAP: usize = 500;
/// Zipped upload size Zoho accepts.
const UPLOAD_CAP: usize = 25 * 1024 * 1024;

async fn after_delay(state: &SimState) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(state.config.job_delay) => true,
        _ = state.shutdown.cancelled() => false,
    }
}

pub async fn mass_update(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, SimError> {
    let whole: Value = serde_json::from_slice(&body).map_err(|_| SimError::invalid_body())?;
    let changes = whole
        .get("data")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| SimError::mandatory_missing("data"))?;
    let zone = state.config.time_zone;
    let now = state.now();
    let ids: Vec<String> = whole
        .get("ids")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut world = state.world();
    let index = world
        .module_index(&name)
        .ok_or_else(SimError::invalid_module)?;
    if !ids.is_empty() {
        if ids.len() > MASS_IDS_CAP {
            return Err(SimError::new(
                StatusCode::BAD_REQUEST,
                "LIMIT_EXCEEDED",
                "Record count exceeded",
            )
            .with_details(json!({"limit": MASS_IDS_CAP})));
        }
        let stamp = Stamp {
            user: &user,
            at: now,
            zone,
        };
        let mut entries = vec![];
        let mut updated = vec![];
        for raw in ids {
            let outcome = match raw.parse::<u64>() {
                Ok(id) => update_record(&mut world, index, id, &changes, 0, None, stamp),
                Err(_) => Err(super::model::RecErr::invalid_id(&raw)),
            };
            match outcome {
                Ok(written) => {
                    entries.push(json!({"code": "SUCCESS", "details": {"id": written.id.to_string()}, "message": "record updated", "status": "success"}));
                    updated.push((written.id, written.changed_fields));
                }
                Err(err) => entries.push(err.entry()),
            }
        }
        let module = world.modules[index].api_name.clone();
        watch::notify(&state, &world, &module, Operation::Update, &updated);
        return Ok(json_reply(StatusCode::OK, &json!({"data": entries})));
    }
    if whole.get("cvid").is_none() && whole.get("territory").is_none() {
        return Err(SimError::mandatory_missing("ids"));
    }
    let module = world.modules[index].api_name.clone();
    if world
        .mass_jobs
        .values()
        .any(|j| j.module == module && j.status != "COMPLETED")
    {
        return Ok(json_reply(
            StatusCode::ACCEPTED,
            &json!({"data": [{"code": "ALREADY_SCHEDULED", "details": {}, "message": "mass update already scheduled", "status": "error"}]}),
        ));
    }
    let total = world.modules[index].records.len();
    if total > MASS_CAP {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "Record count exceeded",
        )
        .with_details(json!({"limit": MASS_CAP})));
    }
    let job_id = world.next_id().to_string();
    world.mass_jobs.insert(
        job_id.clone(),
        MassJob {
            module: module.clone(),
            status: "SCHEDULED",
            total: total as u64,
            updated: 0,
            failed: 0,
        },
    );
    drop(world);
    let task_state = state.clone();
    let task_job = job_id.clone();
    state.tasks.spawn(async move {
        if !after_delay(&task_state).await {
            return;
        }
        let now = task_state.now();
        let mut world = task_state.world();
        let Some(index) = world.module_index(&module) else {
            return;
        };
        let ids: Vec<u64> = world.modules[index].records.keys().copied().collect();
        let stamp = Stamp {
            user: &user,
            at: now,
            zone,
        };
        let (mut ok, mut failed, mut updated) = (0, 0, vec![]);
        for id in ids {
            match update_record(&mut world, index, id, &changes, 0, None, stamp) {
                Ok(written) => {
                    ok += 1;
                    updated.push((written.id, written.changed_fields));
                }
                Err(_) => failed += 1,
            }
        }
        watch::notify(&task_state, &world, &module, Operation::Update, &updated);
        if let Some(job) = world.mass_jobs.get_mut(&task_job) {
            job.status = "COMPLETED";
            job.updated = ok;
            job.failed = failed;
        }
    });
    Ok(json_reply(
        StatusCode::ACCEPTED,
        &json!({"data": [{"code": "SUCCESS", "details": {"job_id": job_id}, "message": "mass update scheduled successfully", "status": "success"}]}),
    ))
}

pub async fn mass_update_status(
    State(state): State<Arc<SimState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, SimError> {
    let query = Query::parse(raw.as_deref());
    let job_id = query
        .get("job_id")
        .ok_or_else(|| SimError::required_param("job_id"))?;
    let world = state.world();
    world
        .module_index(&name)
        .ok_or_else(SimError::invalid_module)?;
    let job = world
        .mass_jobs
        .get(&job_id)
        .ok_or_else(|| SimError::invalid_param("job_id", "the job_id given seems to be invalid"))?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": [{"Status": job.status, "Failed_Count": job.failed, "Updated_Count": job.updated, "Not_Updated_Count": job.total - job.updated - job.failed, "Total_Count": job.total}]}),
    ))
}

pub async fn upload(
    State(state): State<Arc<SimState>>,
    req: Request,
) -> Result<Response, SimError> {
    let headers = req.headers().clone();
    if header_str(&headers, "feature") != Some("bulk-write") {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "the feature header is missing or invalid",
        )
        .with_details(json!({"header_name": "feature"})));
    }
    let zgid = state
        .world()
        .org
        .get("zgid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if header_str(&headers, "x-crm-org") != Some(zgid.as_str()) {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "the X-CRM-ORG header is missing or invalid",
        )
        .with_details(json!({"header_name": "X-CRM-ORG"})));
    }
    let mut form = Multipart::from_request(req, &()).await.map_err(|_| {
        SimError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_FILE_FORMAT",
            "the file is not a zip file",
        )
    })?;
    let mut file = None;
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("file") {
            file = field.bytes().await.ok();
        }
    }
    let file = file.ok_or_else(|| SimError::mandatory_missing("file"))?;
    if file.len() > UPLOAD_CAP {
        return Err(SimError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "FILE_TOO_LARGE",
            "the file is too large",
        ));
    }
    if !file.starts_with(b"PK\x03\x04") {
        return Err(SimError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_FILE_FORMAT",
            "the file is not a zip file",
        ));
    }
    let now = state.now();
    let mut world = state.world();
    let file_id = world.next_id().to_string();
    world.uploads.insert(file_id.clone(), file.to_vec());
    Ok(json_reply(
        StatusCode::OK,
        &json!({"status": "success", "code": "FILE_UPLOAD_SUCCESS", "message": "file uploaded.", "details": {"file_id": file_id, "created_time": format_time(now, state.config.time_zone)}}),
    ))
}

/// The single CSV inside an uploaded zip.
fn read_zipped_csv(bytes: &[u8]) -> Result<Vec<Vec<String>>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    if archive.is_empty() {
        return Err("empty zip".into());
    }
    let mut text = String::new();
    archive
        .by_index(0)
        .map_err(|e| e.to_string())?
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| {
            r.map(|r| r.iter().map(str::to_owned).collect())
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn zipped_csv(name: &str, rows: &[Vec<String>]) -> Vec<u8> {
    let mut csv_bytes = Vec::new();
    {
        let mut writer = csv::Writer::from_writer(&mut csv_bytes);
        for row in rows {
            // Writing to a Vec cannot fail.
            let _ = writer.write_record(row);
        }
        let _ = writer.flush();
    }
    let mut out = Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default();
        if zip.start_file(name, options).is_ok() {
            let _ = zip.write_all(&csv_bytes);
        }
        let _ = zip.finish();
    }
    out.into_inner()
}

fn zip_reply(bytes: Vec<u8>, name: &str) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.zip\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

fn bad(api_name: &str) -> SimError {
    SimError::new(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data")
        .with_details(json!({"api_name": api_name}))
}

/// A CSV cell as the JSON the field expects.
fn typed(data_type: &str, cell: &str) -> Value {
    match data_type {
        "integer" => cell
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(cell)),
        "double" | "currency" | "percent" | "decimal" => cell
            .trim()
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(cell)),
        "boolean" => cell
            .trim()
            .parse::<bool>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(cell)),
        "lookup" | "ownerlookup" => json!({"id": cell}),
        "multiselectpicklist" => json!(cell.split(';').map(str::trim).collect::<Vec<_>>()),
        _ => json!(cell),
    }
}

pub async fn bulk_write_create(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    body: Bytes,
) -> Result<Response, SimError> {
    let request: Value = serde_json::from_slice(&body).map_err(|_| SimError::invalid_body())?;
    let operation = request
        .get("operation")
        .and_then(Value::as_str)
        .ok_or_else(|| SimError::mandatory_missing("operation"))?
        .to_owned();
    if !["insert", "update", "upsert"].contains(&operation.as_str()) {
        return Err(bad("operation"));
    }
    let resource = request
        .get("resource")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .cloned()
        .ok_or_else(|| SimError::mandatory_missing("resource"))?;
    let module = resource
        .pointer("/module/api_name")
        .and_then(Value::as_str)
        .ok_or_else(|| SimError::mandatory_missing("module"))?
        .to_owned();
    let file_id = resource
        .get("file_id")
        .and_then(Value::as_str)
        .ok_or_else(|| SimError::mandatory_missing("file_id"))?
        .to_owned();
    let find_by = resource
        .get("find_by")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if operation != "insert" && find_by.is_none() {
        return Err(SimError::mandatory_missing("find_by"));
    }
    let now = state.now();
    let mut world = state.world();
    if world.module(&module).is_none() {
        return Err(bad("module"));
    }
    if !world.uploads.contains_key(&file_id) {
        return Err(bad("file_id"));
    }
    let job_id = world.next_id().to_string();
    world.bulk_writes.insert(
        job_id.clone(),
        BulkJob {
            id: job_id.clone(),
            operation: operation.clone(),
            state: "ADDED".into(),
            request: request.clone(),
            created_by: user.clone(),
            created: now,
            result: None,
            summary: Map::new(),
        },
    );
    let created_by = world
        .user(&user)
        .map(|u| json!({"id": u.id, "name": u.full_name}));
    drop(world);
    let task_state = state.clone();
    let task_job = job_id.clone();
    state.tasks.spawn(async move {
        if !after_delay(&task_state).await {
            return;
        }
        run_bulk_write(
            &task_state,
            &task_job,
            &user,
            &module,
            &file_id,
            find_by.as_deref(),
            &operation,
            &resource,
            &request,
        );
    });
    Ok(json_reply(
        StatusCode::CREATED,
        &json!({"status": "success", "code": "SUCCESS", "message": "success", "details": {"id": job_id, "created_by": created_by}}),
    ))
}

#[allow(clippy::too_many_arguments)]
fn run_bulk_write(
    state: &SimState,
    job_id: &str,
    user: &str,
    module: &str,
    file_id: &str,
    find_by: Option<&str>,
    operation: &str,
    resource: &Value,
    request: &Value,
) {
    let zone = state.config.time_zone;
    let now = state.now();
    let mut world = state.world();
    let Some(index) = world.module_index(module) else {
        return;
    };
    let rows = world.uploads.get(file_id).map(|b| read_zipped_csv(b));
    let ignore_empty = request
        .get("ignore_empty")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mappings: Vec<Value> = resource
        .get("field_mappings")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let stamp = Stamp {
        user,
        at: now,
        zone,
    };
    let (mut added, mut updated, mut skipped) = (0u64, 0u64, 0u64);
    let mut result_rows = vec![];
    let mut status = "COMPLETED";
    let mut changes = (vec![], vec![]);
    match rows {
        Some(Ok(rows)) if !rows.is_empty() => {
            let mut header_row = rows[0].clone();
            header_row.extend([
                "STATUS".to_owned(),
                "RECORD_ID".to_owned(),
                "ERRORS".to_owned(),
            ]);
            result_rows.push(header_row);
            for (n, row) in rows.iter().enumerate().skip(1) {
                let mut record = Map::new();
                for mapping in &mappings {
                    let Some(api_name) = mapping.get("api_name").and_then(Value::as_str) else {
                        continue;
                    };
                    let data_type = world.modules[index]
                        .field(api_name)
                        .map(|f| f.data_type.clone())
                        .unwrap_or_default();
                    let cell = mapping
                        .get("index")
                        .and_then(Value::as_u64)
                        .and_then(|i| row.get(i as usize))
                        .cloned();
                    match cell {
                        Some(cell) if cell.is_empty() && ignore_empty => {}
                        Some(cell) if cell.is_empty() => {
                            record.insert(api_name.into(), Value::Null);
                        }
                        Some(cell) => {
                            record.insert(api_name.into(), typed(&data_type, &cell));
                        }
                        None => {
                            if let Some(default) = mapping.pointer("/default_value/value") {
                                record.insert(api_name.into(), default.clone());
                            }
                        }
                    }
                }
                let target: Option<Rec> = find_by.and_then(|f| {
                    let value = record.get(f)?;
                    if f == "id" {
                        let id = value.as_str()?.parse::<u64>().ok()?;
                        return world.modules[index].records.get(&id).cloned();
                    }
                    world.modules[index].find_by(f, value).cloned()
                });
                let outcome = match (operation, target) {
                    ("insert", _) | ("upsert", None) => {
                        insert_record(&mut world, index, &record, n - 1, stamp)
                    }
                    (_, Some(rec)) => {
                        update_record(&mut world, index, rec.id, &record, n - 1, None, stamp)
                    }
                    ("update", None) => Err(super::model::RecErr::new(
                        "NOT_FOUND",
                        "record not found",
                        json!({}),
                    )),
                    _ => Err(super::model::RecErr::new(
                        "CANNOT_PROCESS",
                        "cannot process",
                        json!({}),
                    )),
                };
                let mut out = row.clone();
                match outcome {
                    Ok(written) if written.inserted => {
                        added += 1;
                        out.extend(["ADDED".to_owned(), written.id.to_string(), String::new()]);
                        changes.0.push((written.id, written.changed_fields));
                    }
                    Ok(written) => {
                        updated += 1;
                        out.extend(["UPDATED".to_owned(), written.id.to_string(), String::new()]);
                        changes.1.push((written.id, written.changed_fields));
                    }
                    Err(err) => {
                        skipped += 1;
                        let field = err
                            .details
                            .get("api_name")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        out.extend([
                            "SKIPPED".to_owned(),
                            String::new(),
                            format!("{}-{field}", err.code),
                        ]);
                    }
                }
                result_rows.push(out);
            }
        }
        _ => status = "FAILED",
    }
    watch::notify(state, &world, module, Operation::Insert, &changes.0);
    watch::notify(state, &world, module, Operation::Update, &changes.1);
    let total = added + updated + skipped;
    let zipped = zipped_csv(&format!("{job_id}.csv"), &result_rows);
    if let Some(job) = world.bulk_writes.get_mut(job_id) {
        job.state = status.into();
        job.result = Some(zipped);
        job.summary = json!({"added_count": added, "updated_count": updated, "skipped_count": skipped, "total_count": total})
            .as_object()
            .cloned()
            .unwrap_or_default();
    }
}

pub async fn bulk_write_status(
    State(state): State<Arc<SimState>>,
    Path(job): Path<String>,
) -> Result<Response, SimError> {
    let zone = state.config.time_zone;
    let (job, created_by) = {
        let world = state.world();
        let job = world.bulk_writes.get(&job).cloned().ok_or_else(not_found)?;
        let created_by = world
            .user(&job.created_by)
            .map(|u| json!({"id": u.id, "name": u.full_name}));
        (job, created_by)
    };
    let resource = job
        .request
        .get("resource")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .cloned()
        .unwrap_or_default();
    let mut file = job.summary.clone();
    file.insert("status".into(), json!(job.state));
    file.insert("name".into(), json!(format!("{}.csv", job.id)));
    let done = job.state == "COMPLETED";
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "status": job.state,
            "character_encoding": "UTF-8",
            "resource": [{"status": job.state, "type": "data", "module": resource.get("module"), "field_mappings": resource.get("field_mappings"), "file": file}],
            "id": job.id,
            "result": if done { json!({"download_url": format!("/crm/bulk/v8/write/{}/result", job.id)}) } else { Value::Null },
            "created_by": created_by,
            "operation": job.operation,
            "created_time": format_time(job.created, zone),
        }),
    ))
}

fn not_found() -> SimError {
    SimError::new(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        "the requested resource is not found",
    )
}

pub async fn bulk_write_result(
    State(state): State<Arc<SimState>>,
    Path(job): Path<String>,
) -> Result<Response, SimError> {
    let world = state.world();
    let bytes = world
        .bulk_writes
        .get(&job)
        .and_then(|j| j.result.clone())
        .ok_or_else(not_found)?;
    Ok(zip_reply(bytes, &job))
}

pub async fn bulk_read_create(
    State(state): State<Arc<SimState>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SimError> {
    let json_type = header_str(&headers, "content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
    if !json_type {
        return Err(SimError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "MEDIA_TYPE_NOT_SUPPORTED",
            "the media type is not supported",
        ));
    }
    let request: Value = serde_json::from_slice(&body).map_err(|_| SimError::invalid_body())?;
    let module = request
        .pointer("/query/module/api_name")
        .and_then(Value::as_str)
        .ok_or_else(|| SimError::mandatory_missing("module"))?
        .to_owned();
    let zone = state.config.time_zone;
    let now = state.now();
    let mut world = state.world();
    let fields: Vec<String> = request
        .pointer("/query/fields")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    {
        let m = world.module(&module).ok_or_else(|| {
            SimError::new(
                StatusCode::BAD_REQUEST,
                "MODULE_NOT_SUPPORTED",
                "the module is not supported",
            )
            .with_details(json!({"api_name": module}))
        })?;
        if let Some(bad_field) = fields.iter().find(|f| *f != "id" && m.field(f).is_none()) {
            return Err(SimError::new(
                StatusCode::BAD_REQUEST,
                "FIELD_NOT_AVAILABLE",
                "the field is not available",
            )
            .with_details(json!({"api_name": bad_field})));
        }
    }
    let job_id = world.next_id().to_string();
    world.bulk_reads.insert(
        job_id.clone(),
        BulkJob {
            id: job_id.clone(),
            operation: "read".into(),
            state: "ADDED".into(),
            request: request.clone(),
            created_by: user.clone(),
            created: now,
            result: None,
            summary: Map::new(),
        },
    );
    let created_by = world
        .user(&user)
        .map(|u| json!({"id": u.id, "name": u.full_name}));
    drop(world);
    let task_state = state.clone();
    let task_job = job_id.clone();
    state.tasks.spawn(async move {
        if !after_delay(&task_state).await {
            return;
        }
        run_bulk_read(&task_state, &task_job, &module, &fields, &request);
    });
    Ok(json_reply(
        StatusCode::CREATED,
        &json!({"data": [{"status": "success", "code": "ADDED_SUCCESSFULLY", "message": "Added successfully.", "details": {"id": job_id, "operation": "read", "state": "ADDED", "created_by": created_by, "created_time": format_time(now, zone)}}], "info": {}}),
    ))
}

/// Bulk read criteria: a `group` of conditions or a single condition.
fn bulk_match(
    criteria: &Value,
    module: &super::model::Module,
    rec: &Map<String, Value>,
    zone: time::UtcOffset,
) -> bool {
    use super::criteria::{compare, matches_exact};
    use std::cmp::Ordering;
    if let Some(group) = criteria.get("group").and_then(Value::as_array) {
        let or = criteria.get("group_operator").and_then(Value::as_str) == Some("or");
        let mut results = group.iter().map(|c| bulk_match(c, module, rec, zone));
        return if or {
            results.any(|r| r)
        } else {
            results.all(|r| r)
        };
    }
    let Some(field) = criteria.pointer("/field/api_name").and_then(Value::as_str) else {
        return true;
    };
    let ty = super::criteria::field_type(module, field).unwrap_or("text");
    let value = rec.get(field).cloned().unwrap_or(Value::Null);
    let lit = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let target = criteria.get("value").cloned().unwrap_or(Value::Null);
    let text = value.as_str().unwrap_or_default().to_lowercase();
    match criteria
        .get("comparator")
        .and_then(Value::as_str)
        .unwrap_or("equal")
    {
        "equal" => matches_exact(ty, &value, &lit(&target), zone),
        "not_equal" => !matches_exact(ty, &value, &lit(&target), zone),
        "in" => target
            .as_array()
            .is_some_and(|a| a.iter().any(|v| matches_exact(ty, &value, &lit(v), zone))),
        "not_in" => !target
            .as_array()
            .is_some_and(|a| a.iter().any(|v| matches_exact(ty, &value, &lit(v), zone))),
        "greater_than" => compare(ty, &value, &lit(&target), zone) == Some(Ordering::Greater),
        "greater_equal" => matches!(
            compare(ty, &value, &lit(&target), zone),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        "less_than" => compare(ty, &value, &lit(&target), zone) == Some(Ordering::Less),
        "less_equal" => matches!(
            compare(ty, &value, &lit(&target), zone),
            Some(Ordering::Less | Ordering::Equal)
        ),
        "contains" => text.contains(&lit(&target).to_lowercase()),
        "not_contains" => !text.contains(&lit(&target).to_lowercase()),
        "starts_with" => text.starts_with(&lit(&target).to_lowercase()),
        "ends_with" => text.ends_with(&lit(&target).to_lowercase()),
        "between" => target.as_array().is_some_and(|a| {
            a.len() == 2
                && matches!(
                    compare(ty, &value, &lit(&a[0]), zone),
                    Some(Ordering::Greater | Ordering::Equal)
                )
                && matches!(
                    compare(ty, &value, &lit(&a[1]), zone),
                    Some(Ordering::Less | Ordering::Equal)
                )
        }),
        _ => false,
    }
}

fn run_bulk_read(state: &SimState, job_id: &str, module: &str, fields: &[String], request: &Value) {
    let zone = state.config.time_zone;
    let mut world = state.world();
    let Some(m) = world.module(module) else {
        return;
    };
    let mut columns = vec!["id".to_owned()];
    if fields.is_empty() {
        columns.extend(m.fields.iter().map(|f| f.api_name.clone()));
    } else {
        columns.extend(fields.iter().filter(|f| *f != "id").cloned());
    }
    let criteria = request
        .pointer("/query/criteria")
        .cloned()
        .unwrap_or(Value::Null);
    let mut rows = vec![columns.clone()];
    for rec in m.records.values() {
        let rendered = m.render(rec, None, &world.users, zone, &|module, id| {
            world.display_name(module, id)
        });
        if !criteria.is_null() && !bulk_match(&criteria, m, &rendered, zone) {
            continue;
        }
        rows.push(
            columns
                .iter()
                .map(|c| match rendered.get(c) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Object(o)) => o
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    Some(Value::Null) | None => String::new(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(";"),
                    Some(other) => other.to_string(),
                })
                .collect(),
        );
    }
    let count = rows.len() - 1;
    let zipped = zipped_csv(&format!("{job_id}.csv"), &rows);
    if let Some(job) = world.bulk_reads.get_mut(job_id) {
        job.state = "COMPLETED".into();
        job.result = Some(zipped);
        job.summary = json!({"page": 1, "per_page": 200_000, "count": count, "download_url": format!("/crm/bulk/v8/read/{job_id}/result"), "more_records": false})
            .as_object()
            .cloned()
            .unwrap_or_default();
    }
}

pub async fn bulk_read_status(
    State(state): State<Arc<SimState>>,
    Path(job): Path<String>,
) -> Result<Response, SimError> {
    let zone = state.config.time_zone;
    let world = state.world();
    let job = world.bulk_reads.get(&job).ok_or_else(not_found)?;
    let created_by = world
        .user(&job.created_by)
        .map(|u| json!({"id": u.id, "name": u.full_name}));
    let result = if job.summary.is_empty() {
        Value::Null
    } else {
        Value::Object(job.summary.clone())
    };
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": [{"id": job.id, "operation": "read", "state": job.state, "result": result, "query": job.request.get("query"), "created_by": created_by, "created_time": format_time(job.created, zone), "file_type": "csv"}]}),
    ))
}

pub async fn bulk_read_result(
    State(state): State<Arc<SimState>>,
    Path(job): Path<String>,
) -> Result<Response, SimError> {
    let world = state.world();
    let bytes = world
        .bulk_reads
        .get(&job)
        .and_then(|j| j.result.clone())
        .ok_or_else(not_found)?;
    Ok(zip_reply(bytes, &job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zipped_csv_reads_back_row_for_row() {
        let rows = vec![
            vec!["Last_Name".to_owned(), "Email".to_owned()],
            vec!["Doe, J".to_owned(), "j@x.io".to_owned()],
        ];
        let zipped = zipped_csv("a.csv", &rows);
        assert_eq!(read_zipped_csv(&zipped).unwrap(), rows);
    }

    #[test]
    fn csv_cells_become_typed_json() {
        assert_eq!(typed("integer", "12"), json!(12));
        assert_eq!(typed("boolean", "true"), json!(true));
        assert_eq!(typed("text", "x"), json!("x"));
    }
}
