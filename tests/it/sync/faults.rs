//! Faults: a 429 storm, 500s, expired tokens, a stalled emulator, a lost
//! reply, and a worker process killed in the middle of a batch. Nothing is
//! lost and nothing reaches Zoho twice.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use synchub::zoho::sim::{Fault, FaultRule};

use super::*;

/// Every local id is in Zoho exactly once.
fn exactly_once(env: &Env, ids: &[String]) -> Result<(), String> {
    for id in ids {
        let n = env.in_zoho("Deals", id).len();
        if n != 1 {
            return Err(format!("{id} is in Zoho {n} times"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn throttling_server_errors_token_expiry_stalls_and_lost_replies_lose_nothing() {
    let mut sim_config = crate::zoho::fast_sim_config();
    // Longer than the client's 2 s timeout: a stall or a lost reply is a timeout.
    sim_config.faults.stall_for = Duration::from_secs(3);
    let env = Env::start_with(sim_config, false, |c| {
        c.sync.push_batch = 10;
    })
    .await
    .expect("sqlite");
    env.sim
        .inject(FaultRule::new(Fault::Status(429), 6).on_path("/upsert"));
    env.sim
        .inject(FaultRule::new(Fault::Status(500), 3).on_path("/upsert"));
    env.sim
        .inject(FaultRule::new(Fault::LoseReply, 1).on_path("/upsert"));
    env.sim
        .inject(FaultRule::new(Fault::Stall, 1).on_path("/upsert"));
    env.sim.inject(FaultRule::new(Fault::InvalidToken, 2));
    env.sim.expire_access_tokens();
    let mut ids = vec![];
    for i in 0..40 {
        let id = format!("f-{i}");
        env.create("deals", &id, deal(&format!("Faulty {i}"), i as f64))
            .await;
        ids.push(id);
    }
    let in_time = tokio::time::timeout(Duration::from_secs(60), async {
        while exactly_once(&env, &ids).is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (_, jobs) = env.get("/v1/sync/jobs").await;
    assert!(
        in_time.is_ok(),
        "{:?}; queue: {jobs}",
        exactly_once(&env, &ids)
    );
    env.settle().await;
    exactly_once(&env, &ids).expect("no duplicates after the queue drained");
    let (_, dead) = env.get("/v1/sync/jobs?status=dead").await;
    assert_eq!(dead["jobs"], json!([]), "{dead}");
    for id in &ids {
        let (_, st) = env.get(&format!("/v1/sync/records/deals/{id}")).await;
        assert_eq!(st["status"], "synced", "{st}");
    }
    // The faults really happened: more upsert calls than batches.
    assert!(env.sim.count("POST", "/Deals/upsert") > 4 + 6 + 3);
    assert!(env.sim.token_requests() >= 2, "the token was refreshed");
    let (_, h) = env.get("/v1/analytics/health?range=1h").await;
    let deals = &h["modules"]["Deals"];
    assert_eq!(deals["synced"], 40, "{h}");
    assert!(deals["failed"].as_i64().expect("failed") > 0, "{h}");
    assert!(
        !deals["top_errors"].as_array().expect("top").is_empty(),
        "{h}"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_push_to_a_record_deleted_in_zoho_goes_to_review() {
    let env = Env::start().await;
    env.create("deals", "gone-1", deal("Soon gone", 1.0)).await;
    eventually(10, "pushed", || async {
        env.in_zoho("Deals", "gone-1").len() == 1
    })
    .await;
    env.settle().await;
    let zoho_id = env.in_zoho("Deals", "gone-1")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    env.zoho_user()
        .delete("Deals", &[zoho_id.as_str()])
        .await
        .expect("delete in zoho");
    env.update("deals", "gone-1", json!({"Amount": 2.0})).await;
    eventually(10, "a dead job", || async {
        let (_, v) = env.get("/v1/sync/jobs?status=dead").await;
        v["jobs"].as_array().is_some_and(|j| !j.is_empty())
    })
    .await;
    let (_, st) = env.get("/v1/sync/records/deals/gone-1").await;
    assert_eq!(st["status"], "error", "{st}");
    // The local edit is kept for a person to decide.
    assert_eq!(
        env.record("deals", "gone-1").await.expect("kept")["fields"]["Amount"],
        2.0
    );
    env.finish().await;
}

fn worker_command(env: &Env, db: &str, data_dir: &std::path::Path) -> tokio::process::Command {
    let mut cmd = ZohoAccess::of(&env.sim).command(&["worker"], data_dir);
    cmd.env("SYNCHUB_DATABASE_URL", db)
        .env("SYNCHUB_SYNC_LEASE", "2s")
        .env("SYNCHUB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

#[tokio::test]
async fn a_worker_killed_in_the_middle_of_a_batch_is_finished_by_another() {
    let _heavy = heavy().await;
    // The node only writes (no workers); two `synchub worker` processes push.
    let Some(env) = Env::start_with(crate::zoho::fast_sim_config(), true, |c| {
        c.sync.workers = false;
    })
    .await
    else {
        return;
    };
    let schema = env.schema.clone().expect("postgres schema");
    let base = crate::records::pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let db = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let mut ids = vec![];
    for i in 0..30 {
        let id = format!("k-{i}");
        env.create("deals", &id, deal(&format!("Killed {i}"), i as f64))
            .await;
        ids.push(id);
    }
    // The first upsert hangs long enough to kill its worker mid-call.
    env.sim
        .inject(FaultRule::new(Fault::Delay(Duration::from_secs(4)), 1).on_path("/upsert"));
    let dir = tempfile::tempdir().expect("dir");
    let mut first = worker_command(&env, &db, dir.path())
        .spawn()
        .expect("worker starts");
    eventually(20, "the first worker's upsert", || async {
        env.sim.count("POST", "/Deals/upsert") >= 1
    })
    .await;
    first.start_kill().expect("kill");
    let _ = first.wait().await;
    let (_, jobs) = env.get("/v1/sync/jobs?status=running").await;
    assert_eq!(
        jobs["jobs"].as_array().map(Vec::len),
        Some(30),
        "the dead worker's claims are still leased: {jobs}"
    );
    let mut second = worker_command(&env, &db, dir.path())
        .spawn()
        .expect("worker starts");
    eventually(60, "every deal in Zoho", || async {
        exactly_once(&env, &ids).is_ok()
    })
    .await;
    env.settle().await;
    exactly_once(&env, &ids).expect("no duplicate after the takeover");
    let (_, st) = env.get("/v1/sync/records/deals/k-7").await;
    assert_eq!(st["status"], "synced", "{st}");
    second.start_kill().expect("kill");
    let _ = second.wait().await;
    env.finish().await;
}
