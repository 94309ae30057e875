//! The official SDKs drive the hub: npm `centrifuge` (JSON and its Protobuf
//! build) under Node, and PyPI `centrifuge-python` (JSON and Protobuf). Each
//! runner in tests/interop/ plays every scenario and exits non-zero on a
//! failure; `scripts/test` installs the SDKs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the SDK is installed; in CI a missing SDK is a failure, locally a loud skip.
fn sdk_available(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let msg = format!("{what} is not installed: run ./scripts/test (it installs the SDKs)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!! SKIPPED: {msg}\n");
    false
}

fn js_installed() -> bool {
    repo()
        .join("tests/interop/js/node_modules/centrifuge")
        .exists()
}

fn python_installed() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import centrifuge"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn run_runner(program: &str, script: &Path, format: &str) {
    run_runner_on(TestApp::spawn().await, program, script, format).await;
}

async fn run_runner_on(app: TestApp, program: &str, script: &Path, format: &str) {
    let _heavy = heavy().await;
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(script)
        .current_dir(repo())
        .env("SYNCHUB_WS_URL", app.ws_url())
        .env("SYNCHUB_API_URL", app.url(""))
        .env("SYNCHUB_API_KEY", API_KEY)
        .env("SYNCHUB_HMAC_SECRET", SECRET)
        .env("SYNCHUB_FORMAT", format)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} {format} runner timed out", script.display()))
        .expect("runner starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{} ({format}) failed:\n{stdout}\n{stderr}",
        script.display()
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "no summary line:\n{stdout}"
    );
}

#[tokio::test]
async fn centrifuge_js_json_passes_every_scenario() {
    if sdk_available("npm centrifuge (tests/interop/js)", js_installed()) {
        run_runner("node", &repo().join("tests/interop/js/run.mjs"), "json").await;
    }
}

#[tokio::test]
async fn centrifuge_js_protobuf_passes_every_scenario() {
    if sdk_available("npm centrifuge (tests/interop/js)", js_installed()) {
        run_runner("node", &repo().join("tests/interop/js/run.mjs"), "protobuf").await;
    }
}

#[tokio::test]
async fn centrifuge_python_json_passes_every_scenario() {
    if sdk_available("PyPI centrifuge-python", python_installed()) {
        run_runner(
            "python3",
            &repo().join("tests/interop/python/run.py"),
            "json",
        )
        .await;
    }
}

#[tokio::test]
async fn centrifuge_python_protobuf_passes_every_scenario() {
    if sdk_available("PyPI centrifuge-python", python_installed()) {
        run_runner(
            "python3",
            &repo().join("tests/interop/python/run.py"),
            "protobuf",
        )
        .await;
    }
}

/// tests/interop/python/offline.py: a mobile app goes offline, queues 100
/// mutations while two other users edit, reconnects, pulls and pushes;
/// every outcome is the one `crate::offline::RULES` predicts.
#[tokio::test]
async fn centrifuge_python_plays_an_offline_mobile_app() {
    if sdk_available("PyPI centrifuge-python", python_installed()) {
        let app = TestApp::spawn_with(|c| c.conflicts = crate::offline::rules()).await;
        run_runner_on(
            app,
            "python3",
            &repo().join("tests/interop/python/offline.py"),
            "json",
        )
        .await;
    }
}
