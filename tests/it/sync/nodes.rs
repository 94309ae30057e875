//! Processes: `synchub sync full` in the foreground, and the scheduled
//! incremental sync that two nodes share without running it twice.

use std::process::Stdio;
use std::time::Duration;

use super::*;
use crate::zoho::rec;

#[tokio::test]
async fn synchub_sync_full_runs_one_session_in_the_foreground() {
    let _heavy = heavy().await;
    let sim = crate::zoho::start_sim(crate::zoho::fast_sim_config()).await;
    sim.insert_raw(
        "Deals",
        (0..50)
            .map(|i| rec(deal(&format!("Cli {i}"), 1.0)))
            .collect(),
    );
    let dir = tempfile::tempdir().expect("dir");
    let zoho = ZohoAccess::of(&sim);
    let run = |module: &str| {
        let mut cmd = zoho.command(&["sync", "full", "--module", module], dir.path());
        cmd.stdin(Stdio::null());
        cmd
    };
    let out = run("Deals").output().await.expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("full sync of Deals: completed - 52 processed, 52 created"),
        "{stdout}"
    );
    // The same data again: nothing new.
    let out = run("deals").output().await.expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("52 processed, 0 created, 0 updated, 0 deleted, 52 unchanged"),
        "{stdout}"
    );
    // A module that does not sync is refused with a reason.
    let out = run("Widgets").output().await.expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a synced module"));
    sim.stop().await;
}

#[tokio::test]
async fn two_nodes_share_the_scheduled_incremental_and_run_it_once_per_interval() {
    let _heavy = heavy().await;
    let interval = Duration::from_secs(1);
    let Some(env) = Env::start_with(crate::zoho::fast_sim_config(), true, move |c| {
        c.sync.incremental_interval = interval;
    })
    .await
    else {
        return;
    };
    let schema = env.schema.clone().expect("schema");
    let base = crate::records::pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let db = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let zoho = ZohoAccess::of(&env.sim);
    let second = TestApp::spawn_with(move |c| {
        c.database_url = Some(synchub::config::Secret::new(db));
        zoho.configure(c);
        c.sync.incremental_interval = interval;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let (_, v) = env.get("/v1/sync/sessions?limit=200").await;
    let mut starts: Vec<(String, i64)> = v["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["requested_by"] == "schedule" && s["kind"] == "incremental")
        .map(|s| {
            let at = time::OffsetDateTime::parse(
                s["created_at"].as_str().expect("created_at"),
                &time::format_description::well_known::Rfc3339,
            )
            .expect("time");
            (
                s["module"].as_str().expect("module").to_owned(),
                (at.unix_timestamp_nanos() / 1_000_000) as i64,
            )
        })
        .collect();
    starts.sort();
    let deals: Vec<i64> = starts
        .iter()
        .filter(|(m, _)| m == "Deals")
        .map(|(_, t)| *t)
        .collect();
    // About one a second between the two nodes, never two in one interval.
    assert!((3..=6).contains(&deals.len()), "{deals:?}");
    for pair in deals.windows(2) {
        assert!(
            pair[1] - pair[0] >= 900,
            "two runs within one interval: {deals:?}"
        );
    }
    let _ = second.stop().await;
    env.finish().await;
}
