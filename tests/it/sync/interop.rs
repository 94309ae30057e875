//! A dashboard built on the official centrifuge-js SDK follows a full sync
//! of 10,000 Zoho records on `sync:sessions` (tests/interop/js/sync.mjs).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::zoho::rec;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_follows_a_full_sync_of_ten_thousand_records_to_100_percent() {
    let installed = repo()
        .join("tests/interop/js/node_modules/centrifuge")
        .exists();
    if !installed {
        let msg = "npm centrifuge is not installed: run ./scripts/test (it installs the SDKs)";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("\n!!! SKIPPED: {msg}\n");
        return;
    }
    let _heavy = heavy().await;
    let env = Env::start().await;
    let rows: Vec<_> = (0..10_000)
        .map(|i| rec(deal(&format!("Bulk {i}"), i as f64)))
        .collect();
    env.sim.insert_raw("Deals", rows);
    let total = env.sim.record_count("Deals");
    assert_eq!(total, 10_002);

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("tests/interop/js/sync.mjs"))
        .current_dir(repo())
        .env("SYNCHUB_WS_URL", env.app.ws_url())
        .env("SYNCHUB_API_URL", env.app.url(""))
        .env("SYNCHUB_API_KEY", API_KEY)
        .env("SYNCHUB_HMAC_SECRET", SECRET)
        .env("SYNCHUB_FORMAT", "json")
        .env("SYNCHUB_SYNC_MODULE", "Deals")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .expect("the runner finishes")
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "sync.mjs failed:\n{stdout}\n{stderr}"
    );
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|l| serde_json::from_str(l).expect("result json"))
        .expect("a RESULT line");
    let s = &result["final"];
    // The counts are exact: every record read once, each one new here.
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["total"], total, "{s}");
    assert_eq!(s["processed"], total, "{s}");
    assert_eq!(s["created"], total, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["percent"], 100.0);
    // 10,002 records at 200 a page, the count, the field list and the
    // newest Modified_Time (the next incremental's cursor).
    assert_eq!(s["api_calls"], 51 + 3, "{s}");
    assert!(result["rising"].as_u64().expect("n") > 2, "{result}");
    // What the session says arrived is here.
    let (_, v) = env.get("/v1/offline/pull?entities=deals&limit=1").await;
    assert!(
        v["changes"].as_array().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    let (_, h) = env.get("/v1/analytics/health?range=1h").await;
    assert_eq!(h["modules"]["Deals"]["synced"], total, "{h}");
    assert_eq!(h["modules"]["Deals"]["records"]["synced"], total, "{h}");
    env.finish().await;
}
