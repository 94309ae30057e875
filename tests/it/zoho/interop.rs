//! Zoho's official Node SDK (`@zohocrm/nodejs-sdk-8.0`, unmodified) against
//! the emulator: the strongest evidence the emulator speaks real Zoho.

use std::path::PathBuf;
use std::time::Duration;

use super::{fast_sim_config, start_sim};

#[tokio::test]
async fn zohos_official_node_sdk_works_against_the_emulator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/zoho-node");
    if !dir.join("node_modules").exists() {
        // Never a silent pass: CI must have the SDK installed.
        if std::env::var_os("CI").is_some() {
            panic!(
                "tests/interop/zoho-node/node_modules is missing: run `npm ci` in tests/interop/zoho-node"
            );
        }
        eprintln!(
            "\n*** SKIPPED: run npm ci in tests/interop/zoho-node (Zoho Node SDK interop test) ***\n"
        );
        return;
    }
    let sim = start_sim(fast_sim_config()).await;
    let (client_id, client_secret, refresh_token) = sim.credentials().expect("seeded credentials");
    let cache = tempfile_dir();
    let run = tokio::process::Command::new("node")
        .arg("interop.mjs")
        .current_dir(&dir)
        .env("ZOHO_SIM_URL", &sim.base_url)
        .env("ZOHO_CLIENT_ID", client_id)
        .env("ZOHO_CLIENT_SECRET", client_secret)
        .env("ZOHO_REFRESH_TOKEN", refresh_token)
        .env("ZOHO_CACHE_DIR", &cache)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the Node SDK run finishes within 90 s")
        .expect("node runs (is Node.js installed?)");
    let _ = std::fs::remove_dir_all(&cache);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Node SDK interop script failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("ALL CHECKS PASSED"), "{stdout}");
    assert!(
        sim.count("GET", "/crm/v8/settings/fields") >= 1,
        "the SDK read field metadata itself"
    );
}

/// A fresh directory for the SDK's token file and metadata cache.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("synchub-zoho-node-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}
