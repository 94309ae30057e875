//! Conflict resolution time per record (issue 6, "Done when").
//!
//! A realistic CRM record: 20 fields, of which a mobile client changed 8;
//! Zoho changed 5, 4 of them the client's too (conflicts): a phone number
//! under last_write_wins, an amount under remote_wins, a status under the
//! default merge (left for review) and a 60-line description merged with
//! merge_text; a fifth, the title, both changed to the same value. Run with `cargo bench --bench conflict`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use synchub::domain::conflict::{EntityRules, Fields, Side, Strategy, resolve};
use time::macros::datetime;

fn description(edit_top: Option<&str>, edit_bottom: Option<&str>) -> Value {
    let mut lines: Vec<String> = (0..60)
        .map(|i| format!("Paragraph {i}: the customer asked about renewal terms, delivery windows and the support tier."))
        .collect();
    if let Some(t) = edit_top {
        lines[3] = t.to_owned();
    }
    if let Some(b) = edit_bottom {
        lines[52] = b.to_owned();
    }
    Value::String(lines.join("\n") + "\n")
}

fn obj(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("bench fixtures are objects"),
    }
}

struct Record {
    rules: EntityRules,
    base: Fields,
    local: Fields,
    remote: Fields,
}

fn record() -> Record {
    let mut rules = EntityRules::default();
    rules.fields.insert("Phone".into(), Strategy::LastWriteWins);
    rules.fields.insert("Amount".into(), Strategy::RemoteWins);
    rules
        .fields
        .insert("Description".into(), Strategy::MergeText);
    rules.critical_fields.insert("Email".into());

    let remote = obj(json!({
        "First_Name": "Ada", "Last_Name": "Lovelace", "Email": "ada@example.com",
        "Phone": "+44 20 7946 0001", "Mobile": "+44 7700 900001", "Title": "CTO",
        "Account_Name": "Analytical Engines Ltd", "Lead_Source": "Web", "Status": "Qualified",
        "Amount": 12500.0, "Probability": 50, "Stage": "Negotiation",
        "Mailing_Street": "12 St James's Square", "Mailing_City": "London",
        "Mailing_Zip": "SW1Y 4JH", "Mailing_Country": "UK", "Website": "https://example.com",
        "Do_Not_Call": false, "Tags": ["vip", "renewal"],
        "Description": description(None, Some("Zoho side: renewal moved to Q3.")),
    }));
    let base = obj(json!({
        "Phone": "+44 20 7946 0000", "Title": "Head of R&D", "Status": "Contacted",
        "Amount": 10000.0, "Probability": 50, "Mailing_City": "London",
        "Mailing_Zip": "SW1Y 4JH", "Do_Not_Call": false,
        "Description": description(None, None),
    }));
    let local = obj(json!({
        "Phone": "+44 20 7946 0002", "Title": "CTO", "Status": "Proposal",
        "Amount": 11000.0, "Probability": 70, "Mailing_Zip": "SW1Y 4JJ",
        "Do_Not_Call": true,
        "Description": description(Some("Client side: asked for a 3-year term."), None),
    }));
    Record {
        rules,
        base,
        local,
        remote,
    }
}

fn bench(c: &mut Criterion) {
    let r = record();
    let lt = Some(datetime!(2026-11-21 10:05:00 UTC));
    let rt = Some(datetime!(2026-11-21 10:00:00 UTC));

    // Sanity: the fixture exercises what the benchmark claims to measure.
    let out = resolve(
        &r.rules,
        &r.base,
        Side::new(&r.local, lt),
        Side::new(&r.remote, rt),
    );
    assert_eq!(out.conflicts.len(), 4, "{out:#?}");
    assert_eq!(out.unresolved().count(), 1);

    c.bench_function("resolve/20_fields_4_conflicts_1_text_merge", |b| {
        b.iter(|| {
            resolve(
                black_box(&r.rules),
                black_box(&r.base),
                Side::new(black_box(&r.local), lt),
                Side::new(black_box(&r.remote), rt),
            )
        })
    });

    // The common case: the client's changes do not touch Zoho's.
    let mut quiet = r.remote.clone();
    quiet.extend(r.base.clone());
    c.bench_function("resolve/20_fields_no_conflict", |b| {
        b.iter(|| {
            resolve(
                black_box(&r.rules),
                black_box(&r.base),
                Side::new(black_box(&r.local), lt),
                Side::new(black_box(&quiet), rt),
            )
        })
    });

    let wire = out.clone();
    c.bench_function("serialize_outcome/4_conflicts", |b| {
        b.iter(|| serde_json::to_vec(black_box(&wire)).map(|v| v.len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
