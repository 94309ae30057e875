//! Random edits on both sides, the same fields included, while the sync
//! runs; once it settles every record is equal on both sides, except where
//! a recorded conflict says why.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::*;
use crate::zoho::rec;

const FIELDS: [&str; 3] = ["Amount", "Description", "Stage"];
const STAGES: [&str; 4] = [
    "Qualification",
    "Needs Analysis",
    "Negotiation/Review",
    "Closed Won",
];

fn value(rng: &mut StdRng, field: &str) -> Value {
    match field {
        "Amount" => json!(f64::from(rng.random_range(1..10_000u32))),
        "Stage" => json!(STAGES[rng.random_range(0..STAGES.len())]),
        _ => json!(format!("note {}", rng.random_range(0..1_000_000u32))),
    }
}

async fn converges(seed: u64) {
    let env = Env::start().await;
    let mut rng = StdRng::seed_from_u64(seed);
    env.sim.insert_raw(
        "Deals",
        (0..12)
            .map(|i| rec(deal(&format!("Remote {i}"), 10.0)))
            .collect(),
    );
    env.session("full", "Deals").await;
    for i in 0..12 {
        env.create(
            "deals",
            &format!("cv-{i}"),
            deal(&format!("Local {i}"), 20.0),
        )
        .await;
    }
    env.settle().await;
    // Every record with its Zoho id.
    let (_, pulled) = env.get("/v1/offline/pull?entities=deals&limit=1000").await;
    let records: Vec<(String, String)> = pulled["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| {
            let r = &c["record"];
            Some((
                r["id"].as_str()?.to_owned(),
                r["zoho_id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(records.len(), 26, "{pulled}");

    let zoho = env.zoho_user();
    for step in 0..80 {
        let (local_id, zoho_id) = records[rng.random_range(0..records.len())].clone();
        let field = FIELDS[rng.random_range(0..FIELDS.len())];
        let v = value(&mut rng, field);
        if rng.random_bool(0.5) {
            env.update("deals", &local_id, json!({ field: v })).await;
        } else {
            // Zoho stamps whole seconds: edits a second apart can be ordered.
            env.sim.advance_clock(Duration::from_secs(1));
            let mut change = rec(json!({ "id": zoho_id }));
            change.insert(field.to_owned(), v);
            let res = zoho
                .update("Deals", &[change], None)
                .await
                .expect("zoho edit");
            assert!(res[0].outcome.is_ok(), "{:?}", res[0].outcome);
        }
        if step % 20 == 19 {
            env.session("incremental", "Deals").await;
        }
    }
    // Settle: pull what Zoho has, push what is left, until nothing moves.
    for _ in 0..3 {
        env.session("incremental", "Deals").await;
        env.settle().await;
    }
    let (_, conflicts) = env.get("/v1/conflicts?status=open&limit=500").await;
    let mut explained: BTreeSet<(String, String)> = BTreeSet::new();
    for c in conflicts["conflicts"].as_array().expect("conflicts") {
        for f in c["fields"].as_array().expect("fields") {
            if f["status"] == "unresolved" {
                explained.insert((
                    c["record_id"].as_str().expect("id").to_owned(),
                    f["field"].as_str().expect("field").to_owned(),
                ));
            }
        }
    }
    let mut equal = 0;
    for (local_id, zoho_id) in &records {
        let local = env.record("deals", local_id).await.expect("local record");
        let remote = env.sim.record("Deals", zoho_id).expect("zoho record");
        for field in FIELDS {
            let l = local["fields"].get(field).cloned().unwrap_or(Value::Null);
            let r = remote.get(field).cloned().unwrap_or(Value::Null);
            if l == r {
                equal += 1;
            } else if !explained.contains(&(local_id.clone(), field.to_owned())) {
                let (_, st) = env.get(&format!("/v1/sync/records/deals/{local_id}")).await;
                let (_, jobs) = env.get("/v1/sync/jobs").await;
                let (_, all) = env.get("/v1/conflicts?limit=500").await;
                let history: Vec<String> = env
                    .sim
                    .requests()
                    .iter()
                    .filter(|q| {
                        q.body.contains(zoho_id.as_str()) || q.path.contains(zoho_id.as_str())
                    })
                    .map(|q| format!("{} {} {} {}", q.method, q.path, q.status, q.body))
                    .collect();
                panic!(
                    "{local_id}.{field}: local {l} vs Zoho {r} with no open conflict; requests: {history:#?}; open: {explained:?}; sync: {st}; jobs: {jobs}; zoho: {remote:?}; local: {local}; conflicts: {all}"
                );
            }
        }
    }
    assert!(equal > 0);
    // Nothing was created twice in Zoho.
    assert_eq!(env.sim.record_count("Deals"), 2 + 12 + 12);
    let (_, dead) = env.get("/v1/sync/jobs?status=dead").await;
    assert_eq!(dead["jobs"], json!([]), "{dead}");
    env.finish().await;
}

#[tokio::test]
async fn random_edits_on_both_sides_converge_or_are_explained_by_conflicts() {
    for seed in [7, 1234] {
        converges(seed).await;
    }
}
