//! Every client operation against the emulator.

use std::io::Write;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use synchub::zoho::client::{
    FieldPatch, ListRequest, NewField, PageCursor, Search, WatchChannel, WriteAction,
    escape_criteria,
};
use tokio::sync::mpsc;

use super::{rec, setup};

#[tokio::test]
async fn module_and_field_metadata_are_read() {
    let (_sim, client) = setup().await;
    let modules = client.modules().await.expect("modules");
    for name in ["Leads", "Contacts", "Accounts", "Deals"] {
        assert!(
            modules
                .iter()
                .any(|m| m.api_name == name && m.api_supported),
            "{name}"
        );
    }
    let fields = client.fields("Deals").await.expect("fields");
    let stage = fields
        .iter()
        .find(|f| f.api_name == "Stage")
        .expect("Stage");
    assert!(stage.system_mandatory);
    assert_eq!(stage.data_type, "picklist");
    assert!(!stage.pick_list_values.is_empty());
    let modified = fields
        .iter()
        .find(|f| f.api_name == "Modified_Time")
        .expect("Modified_Time");
    assert!(modified.read_only);
    assert!(
        fields
            .iter()
            .find(|f| f.api_name == "Synchub_Id")
            .is_some_and(|f| f.is_unique())
    );
}

#[tokio::test]
async fn a_custom_field_is_created_updated_and_then_writable() {
    let (_sim, client) = setup().await;
    let id = client
        .create_field(
            "Contacts",
            &NewField {
                field_label: "Sync Source".into(),
                data_type: "text".into(),
                length: Some(40),
                pick_list_values: vec![],
                unique: None,
            },
        )
        .await
        .expect("created");
    client
        .update_field(
            "Contacts",
            &id,
            &FieldPatch {
                field_label: Some("Sync Origin".into()),
                length: Some(60),
                ..FieldPatch::default()
            },
        )
        .await
        .expect("updated");
    let fields = client.fields("Contacts").await.expect("fields");
    let field = fields
        .iter()
        .find(|f| f.id.as_deref() == Some(id.as_str()))
        .expect("listed");
    assert_eq!(field.api_name, "Sync_Source");
    assert_eq!(field.field_label.as_deref(), Some("Sync Origin"));
    assert_eq!(field.length, Some(60));
    assert!(field.custom_field);
    let results = client
        .insert(
            "Contacts",
            &[rec(
                json!({"Last_Name": "Custom", "Sync_Source": "synchub"}),
            )],
        )
        .await
        .expect("insert");
    let new_id = &results[0].outcome.as_ref().expect("inserted").id;
    let got = client
        .get_record("Contacts", new_id, None)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got["Sync_Source"], "synchub");
    let dup = client
        .create_field(
            "Contacts",
            &NewField {
                field_label: "Sync Source".into(),
                data_type: "text".into(),
                length: None,
                pick_list_values: vec![],
                unique: None,
            },
        )
        .await
        .unwrap_err();
    assert!(dup.to_string().contains("DUPLICATE_DATA"), "{dup}");
}

#[tokio::test]
async fn insert_get_update_upsert_and_delete_round_trip() {
    let (sim, client) = setup().await;
    let inserted = client
        .insert(
            "Deals",
            &[
                rec(json!({"Deal_Name": "Big one", "Stage": "Qualification", "Amount": 1000.5, "Account_Name": {"id": "4876876000000700001"}})),
                rec(json!({"Deal_Name": "No stage"})),
            ],
        )
        .await
        .expect("answered");
    let ok = inserted[0].outcome.as_ref().expect("first inserted");
    assert_eq!(ok.action, WriteAction::Inserted);
    assert!(
        ok.modified_time
            .as_deref()
            .is_some_and(|t| t.ends_with("+05:30"))
    );
    assert!(
        inserted[1].outcome.is_err(),
        "a partial failure is reported per record"
    );
    assert_eq!(inserted[1].index, 1);

    let got = client
        .get_record("Deals", &ok.id, None)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got["Deal_Name"], "Big one");
    assert_eq!(got["Account_Name"]["name"], "Zylker Systems");
    let only = client
        .get_record("Deals", &ok.id, Some(&["Amount"]))
        .await
        .expect("get")
        .expect("exists");
    assert!(only.get("Deal_Name").is_none());

    let updated = client
        .update(
            "Deals",
            &[rec(json!({"id": ok.id, "Stage": "Closed Won"}))],
            None,
        )
        .await
        .expect("update");
    assert_eq!(
        updated[0].outcome.as_ref().expect("updated").action,
        WriteAction::Updated
    );

    let upserted = client
        .upsert(
            "Deals",
            &[
                rec(json!({"Deal_Name": "Big one", "Amount": 2000})),
                rec(json!({"Deal_Name": "Fresh", "Stage": "Qualification"})),
            ],
            &[],
        )
        .await
        .expect("upsert");
    let first = upserted[0].outcome.as_ref().expect("matched");
    assert_eq!(
        (first.action.clone(), first.id.clone()),
        (WriteAction::Updated, ok.id.clone())
    );
    assert_eq!(first.duplicate_field.as_deref(), Some("Deal_Name"));
    assert_eq!(
        upserted[1].outcome.as_ref().expect("new").action,
        WriteAction::Inserted
    );
    let got = client
        .get_record("Deals", &ok.id, None)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got["Amount"], 2000);
    assert_eq!(got["Stage"], "Closed Won");

    let deleted = client
        .delete("Deals", &[ok.id.as_str(), "1"])
        .await
        .expect("delete");
    assert_eq!(
        deleted[0].outcome.as_ref().expect("deleted").action,
        WriteAction::Deleted
    );
    assert_eq!(
        deleted[1].outcome.as_ref().unwrap_err().class(),
        synchub::zoho::ErrorClass::NotFound
    );
    assert!(
        client
            .get_record("Deals", &ok.id, None)
            .await
            .expect("get")
            .is_none()
    );
    let gone = client
        .deleted_records("Deals", None)
        .await
        .expect("deleted list");
    assert!(
        gone.iter()
            .any(|d| d.id == ok.id && d.display_name.as_deref() == Some("Big one"))
    );
    assert_eq!(sim.record_count("Deals"), 3);
}

#[tokio::test]
async fn writes_are_sent_in_batches_of_one_hundred() {
    let (sim, client) = setup().await;
    let records: Vec<_> = (0..250)
        .map(|i| rec(json!({"Last_Name": format!("Batch {i}")})))
        .collect();
    let results = client.insert("Leads", &records).await.expect("inserted");
    assert_eq!(results.len(), 250);
    assert!(results.iter().all(|r| r.outcome.is_ok()));
    assert_eq!(results[249].index, 249);
    assert_eq!(sim.count("POST", "/crm/v8/Leads"), 3);
    let ids: Vec<String> = results
        .iter()
        .map(|r| r.outcome.as_ref().map(|s| s.id.clone()).unwrap_or_default())
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let deleted = client.delete("Leads", &refs).await.expect("deleted");
    assert!(deleted.iter().all(|r| r.outcome.is_ok()));
    assert_eq!(sim.count("DELETE", "/crm/v8/Leads"), 3);
}

#[tokio::test]
async fn ten_thousand_records_are_fetched_across_the_page_cap() {
    let (sim, client) = setup().await;
    let records = (0..10_000)
        .map(|i| rec(json!({"Last_Name": format!("Bulk {i}")})))
        .collect();
    sim.insert_raw("Leads", records);
    let all = client
        .fetch_all("Leads", &["Last_Name"])
        .await
        .expect("fetched");
    assert_eq!(
        all.len(),
        10_002,
        "the two seeded leads and ten thousand more"
    );
    let mut ids: Vec<&str> = all.iter().filter_map(|r| r["id"].as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 10_002, "no record twice, in id order");
    assert_eq!(sim.count("GET", "/crm/v8/Leads"), 51);
    let err = client
        .list_page(
            &ListRequest::new("Leads", &["Last_Name"]),
            &PageCursor::Page(11),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("DISCRETE_PAGINATION_LIMIT_EXCEEDED"),
        "{err}"
    );
}

#[tokio::test]
async fn incremental_fetch_returns_changes_since_inclusive_and_304_when_none() {
    let (sim, client) = setup().await;
    sim.advance_clock(Duration::from_secs(120));
    let since = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
    client
        .update(
            "Leads",
            &[rec(
                json!({"id": "4876876000000600002", "Company": "Changed"}),
            )],
            None,
        )
        .await
        .expect("updated");
    let changed = client
        .fetch_modified_since("Leads", &["Company"], since)
        .await
        .expect("fetched");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["Company"], "Changed");
    let stamp = changed[0]["Modified_Time"]
        .as_str()
        .expect("a Modified_Time");
    let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let again = client
        .fetch_modified_since("Leads", &["Company"], at)
        .await
        .expect("fetched");
    assert_eq!(again.len(), 1, "If-Modified-Since is inclusive");
    let later = at + time::Duration::seconds(1);
    let mut request = ListRequest::new("Leads", &["Company"]);
    request.modified_since = Some(later);
    let page = client
        .list_page(&request, &PageCursor::Page(1))
        .await
        .expect("answered");
    assert!(page.not_modified && page.records.is_empty());
}

#[tokio::test]
async fn search_by_criteria_email_and_word() {
    let (_sim, client) = setup().await;
    client
        .insert(
            "Contacts",
            &[rec(
                json!({"Last_Name": "Burns, (B)", "Email": "burns@x.io"}),
            )],
        )
        .await
        .expect("inserted");
    let criteria = format!(
        "((Last_Name:equals:{})and(Email:starts_with:burns))",
        escape_criteria("Burns, (B)")
    );
    let found = client
        .search("Contacts", &Search::Criteria(criteria), None)
        .await
        .expect("search");
    assert_eq!(found.len(), 1);
    let by_email = client
        .search(
            "Contacts",
            &Search::Email("BURNS@x.io".into()),
            Some(&["Email"]),
        )
        .await
        .expect("search");
    assert_eq!(by_email.len(), 1);
    let by_word = client
        .search("Contacts", &Search::Word("watson".into()), None)
        .await
        .expect("search");
    assert_eq!(by_word.len(), 1);
    let none = client
        .search(
            "Contacts",
            &Search::Criteria("Last_Name:equals:Nobody".into()),
            None,
        )
        .await
        .expect("204");
    assert!(none.is_empty());
    let bad = client
        .search(
            "Contacts",
            &Search::Criteria("(Nope:equals:x)".into()),
            None,
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("INVALID_QUERY"), "{bad}");
}

#[tokio::test]
async fn coql_selects_filters_orders_and_limits() {
    let (_sim, client) = setup().await;
    let (rows, more) = client
        .coql("select Deal_Name, Amount, Account_Name from Deals where Amount > 1000 and Stage != 'Closed Lost' order by Amount desc limit 0, 1")
        .await
        .expect("query");
    assert!(more, "two deals match, one was asked for");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["Deal_Name"], "Zylker platform renewal");
    assert_eq!(
        rows[0]["Account_Name"],
        json!({"id": "4876876000000700001"})
    );
    let (none, _) = client
        .coql("select Deal_Name from Deals where Deal_Name like '%nothing%'")
        .await
        .expect("204");
    assert!(none.is_empty());
    let err = client.coql("select from Deals").await.unwrap_err();
    assert!(err.to_string().contains("SYNTAX_ERROR"), "{err}");
}

#[tokio::test]
async fn mass_update_by_ids_and_by_view_with_status() {
    let (_sim, client) = setup().await;
    let changes = rec(json!({"Lead_Source": "Partner"}));
    let results = client
        .mass_update_ids("Leads", &["4876876000000600001", "42"], &changes)
        .await
        .expect("answered");
    assert!(results[0].outcome.is_ok());
    assert!(results[1].outcome.is_err());
    let job = client
        .mass_update_view(
            "Leads",
            "4876876000000087501",
            &rec(json!({"Lead_Status": "Qualified"})),
        )
        .await
        .expect("scheduled");
    let mut status = client
        .mass_update_status("Leads", &job)
        .await
        .expect("status");
    for _ in 0..50 {
        if status.status == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = client
            .mass_update_status("Leads", &job)
            .await
            .expect("status");
    }
    assert_eq!(status.status, "COMPLETED");
    assert_eq!(status.updated, 2);
    let lead = client
        .get_record("Leads", "4876876000000600002", None)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(lead["Lead_Status"], "Qualified");
}

fn zipped_csv(text: &str) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    zip.start_file("contacts.csv", zip::write::SimpleFileOptions::default())
        .expect("zip entry");
    zip.write_all(text.as_bytes()).expect("zip write");
    zip.finish().expect("zip finish");
    out.into_inner()
}

#[tokio::test]
async fn bulk_write_imports_a_zipped_csv_and_reports_its_status() {
    let (sim, client) = setup().await;
    let csv =
        "Last_Name,Email\nImported,imp@x.io\nWatson,ted.watson@zylker.example\n,missing@x.io\n";
    let file_id = client
        .bulk_upload("748291034", "contacts.zip", zipped_csv(csv))
        .await
        .expect("uploaded");
    let job = client
        .bulk_write(&json!({
            "operation": "upsert",
            "resource": [{"type": "data", "module": {"api_name": "Contacts"}, "file_id": file_id, "find_by": "Email",
                "field_mappings": [{"api_name": "Last_Name", "index": 0}, {"api_name": "Email", "index": 1}]}]
        }))
        .await
        .expect("job created");
    let mut status = client.bulk_write_status(&job).await.expect("status");
    for _ in 0..50 {
        if status.status == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = client.bulk_write_status(&job).await.expect("status");
    }
    assert_eq!(status.status, "COMPLETED");
    assert_eq!(
        (status.added, status.updated, status.skipped, status.total),
        (1, 1, 1, 3)
    );
    let zip = client
        .download(status.download_url.as_deref().expect("a result"))
        .await
        .expect("downloaded");
    assert!(zip.starts_with(b"PK"));
    assert_eq!(sim.find("Contacts", "Email", &json!("imp@x.io")).len(), 1);
    let bad = client
        .bulk_upload("748291034", "x.zip", b"not a zip".to_vec())
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("INVALID_FILE_FORMAT"), "{bad}");
}

async fn receive(State(tx): State<mpsc::Sender<Value>>, Json(body): Json<Value>) -> &'static str {
    let _ = tx.send(body).await;
    "ok"
}

#[tokio::test]
async fn watch_callbacks_carry_the_channel_token_and_channels_renew() {
    let (sim, client) = setup().await;
    let (tx, mut rx) = mpsc::channel(16);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!(
        "http://{}/hook?tenant=t1",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let grant = client
        .watch_subscribe(&WatchChannel {
            channel_id: "1000000068001".into(),
            events: vec!["Leads.all".into()],
            notify_url: hook,
            token: Some("synchub-secret-token".into()),
            expiry: None,
            return_affected_field_values: true,
        })
        .await
        .expect("subscribed");
    assert!(grant.channel_expiry.is_some());
    let inserted = client
        .insert("Leads", &[rec(json!({"Last_Name": "Watched"}))])
        .await
        .expect("insert");
    let id = inserted[0].outcome.as_ref().expect("inserted").id.clone();
    let callback = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("a callback")
        .expect("a body");
    assert_eq!(callback["token"], "synchub-secret-token");
    assert_eq!(callback["operation"], "insert");
    assert_eq!(callback["module"], "Leads");
    assert_eq!(callback["ids"], json!([id]));
    assert_eq!(callback["query_params"]["tenant"], "t1");

    let renewed = client
        .watch_renew(
            "1000000068001",
            time::OffsetDateTime::now_utc() + time::Duration::days(2),
        )
        .await
        .expect("renewed");
    assert_ne!(renewed.channel_expiry, grant.channel_expiry);
    client
        .watch_unsubscribe(&["1000000068001"])
        .await
        .expect("unsubscribed");
    client
        .insert("Leads", &[rec(json!({"Last_Name": "Unwatched"}))])
        .await
        .expect("insert");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err(),
        "no callback after unsubscribe"
    );
    assert_eq!(sim.callbacks().0, 1);
}
