//! The hub process killed (SIGKILL) in the middle of an offline push and
//! restarted on the same database: the client pushes its whole queue again
//! and no mutation is applied twice, none is lost. A real `synchub` process
//! on SQLite (its data dir survives the restart) and on PostgreSQL (a fresh
//! schema). After the run the test reads the database itself: each
//! mutation writes one field once, so a field with two change-log rows
//! would be a mutation applied twice.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};

use crate::records::{finish_schema, pg_url};
use crate::support::*;

/// Mutations in the queue: one batch, so the kill lands inside it.
const N: i64 = 1000;
/// Records the mutations spread over.
const RECORDS: i64 = 20;

struct Hub {
    child: Child,
    addr: String,
    http: reqwest::Client,
}

impl Hub {
    async fn start(data_dir: &std::path::Path, database_url: Option<&str>) -> Hub {
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_synchub"));
        cmd.env("SYNCHUB_LISTEN", "127.0.0.1:0")
            .env("SYNCHUB_DATA_DIR", data_dir)
            .env("SYNCHUB_TOKEN_HMAC_SECRET", SECRET)
            .env("SYNCHUB_API_KEY", API_KEY)
            .env("SYNCHUB_LOG", "warn")
            .env_remove("SYNCHUB_REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = database_url {
            cmd.env("SYNCHUB_DATABASE_URL", url);
        }
        let mut child = cmd.spawn().expect("synchub starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.trim().to_owned();
                }
            }
            panic!("synchub exited before listening");
        })
        .await
        .expect("synchub prints its address");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Hub {
            child,
            addr,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn last_seq(&self) -> Option<i64> {
        let r = self
            .http
            .get(self.url("/v1/offline/pull?client_id=crash&limit=1"))
            .header("Authorization", format!("Bearer {}", token("ann")))
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()?["last_seq"].as_i64()
    }
}

/// Mutation `seq` sets field `f<seq>` of record `crash-<seq % RECORDS>`
/// from an empty base, so each applies (or merges) by writing one new field.
fn queue() -> Value {
    let mutations: Vec<Value> = (1..=N)
        .map(|seq| {
            json!({"seq": seq, "entity": "deals", "id": format!("crash-{}", seq % RECORDS),
                   "base_version": 0, "base": {}, "fields": {format!("f{seq}"): seq}})
        })
        .collect();
    json!({"client_id": "crash", "mutations": mutations})
}

async fn push(hub: &Hub, body: &Value) -> reqwest::Result<Value> {
    hub.http
        .post(hub.url("/v1/offline/push"))
        .header("Authorization", format!("Bearer {}", token("ann")))
        .json(body)
        .send()
        .await?
        .json()
        .await
}

/// Pushes, kills the hub mid-batch, restarts it, pushes again; returns how
/// many mutations had committed before the kill.
async fn kill_in_the_middle_of_a_push(data_dir: &std::path::Path, url: Option<&str>) -> i64 {
    let mut hub = Hub::start(data_dir, url).await;
    let body = queue();
    let pushing = {
        let http = hub.http.clone();
        let target = hub.url("/v1/offline/push");
        let body = body.clone();
        tokio::spawn(async move {
            http.post(target)
                .header("Authorization", format!("Bearer {}", token("ann")))
                .json(&body)
                .send()
                .await
        })
    };
    // Kill once a tenth of the batch has committed.
    let mut seen = 0;
    for _ in 0..2000 {
        seen = hub.last_seq().await.unwrap_or(0);
        if seen >= N / 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hub.child.start_kill().expect("kill");
    let _ = hub.child.wait().await;
    let _ = pushing.await;
    assert!(seen > 0, "the push never started committing");

    let hub = Hub::start(data_dir, url).await;
    let before = hub.last_seq().await.expect("last_seq after restart");
    assert!(
        before >= seen,
        "committed mutations survive the kill ({before} < {seen})"
    );
    assert!(
        before < N,
        "the kill landed after the whole batch; nothing was tested"
    );
    let again = push(&hub, &body).await.expect("push after restart");
    assert_eq!(again["last_seq"], N);
    let results = again["results"].as_array().expect("results");
    assert_eq!(results.len() as i64, N);
    for (i, r) in results.iter().enumerate() {
        let seq = i as i64 + 1;
        assert_eq!(r["seq"], seq);
        let expected = if seq <= before {
            "duplicate"
        } else {
            r["status"].as_str().unwrap_or("?")
        };
        assert_eq!(r["status"], expected, "seq {seq}");
        let status = r["status"].as_str().unwrap_or("?");
        assert!(
            matches!(status, "applied" | "merged" | "duplicate"),
            "seq {seq}: {r}"
        );
    }
    // Every field is there, through the front door.
    for rec in 0..RECORDS {
        let r: Value = hub
            .http
            .get(hub.url(&format!("/v1/records/deals/crash-{rec}")))
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        let fields = r["record"]["fields"].as_object().expect("fields");
        let expected = (1..=N).filter(|s| s % RECORDS == rec).count();
        assert_eq!(fields.len(), expected, "record crash-{rec} lost a mutation");
        // One version per mutation: none applied twice, none lost.
        assert_eq!(r["record"]["version"], expected as i64);
    }
    before
}

#[tokio::test]
async fn a_hub_killed_in_the_middle_of_a_push_applies_each_mutation_once_on_sqlite() {
    let _guard = heavy().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let before = kill_in_the_middle_of_a_push(dir.path(), None).await;
    // And in the database: one change-log row per field, one result per seq.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("synchub.db").display()
    ))
    .await
    .expect("open db");
    check_database_sqlite(&pool).await;
    eprintln!("sqlite: killed after {before} of {N} mutations");
}

async fn check_database_sqlite(pool: &sqlx::SqlitePool) {
    let twice: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT record_id, field FROM field_changes WHERE record_id LIKE 'crash-%' GROUP BY record_id, field HAVING COUNT(*) > 1)",
    )
    .fetch_one(pool)
    .await
    .expect("query");
    assert_eq!(twice, 0, "a mutation was applied twice");
    let results: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM client_mutations WHERE client_id = 'crash'")
            .fetch_one(pool)
            .await
            .expect("query");
    assert_eq!(results, N);
}

#[tokio::test]
async fn a_hub_killed_in_the_middle_of_a_push_applies_each_mutation_once_on_postgres() {
    let _guard = heavy().await;
    let admin = match tokio::time::timeout(Duration::from_secs(3), sqlx::PgPool::connect(&pg_url()))
        .await
    {
        Ok(Ok(p)) => p,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL not reachable at {} and CI is set",
                pg_url()
            );
            eprintln!("\n!!! SKIPPED: PostgreSQL not reachable at {}\n", pg_url());
            return;
        }
    };
    let name = unique("crash");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&admin)
        .await
        .expect("create schema");
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
    let dir = tempfile::tempdir().expect("temp dir");
    let before = kill_in_the_middle_of_a_push(dir.path(), Some(&url)).await;
    let twice: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM (SELECT record_id, field FROM {name}.field_changes WHERE record_id LIKE 'crash-%' GROUP BY record_id, field HAVING COUNT(*) > 1) t"
    )))
    .fetch_one(&admin)
    .await
    .expect("query");
    assert_eq!(twice, 0, "a mutation was applied twice");
    let results: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {name}.client_mutations WHERE client_id = 'crash'"
    )))
    .fetch_one(&admin)
    .await
    .expect("query");
    assert_eq!(results, N);
    eprintln!("postgres: killed after {before} of {N} mutations");
    finish_schema(Some(name)).await;
}
