//! Every error class, end to end: what the client retries, how often, and
//! what it gives up with.

use std::time::{Duration, Instant};

use serde_json::json;
use synchub::zoho::sim::{Fault, FaultRule};
use synchub::zoho::{ErrorClass, ZohoError};

use super::{client_config, client_with, fast_sim_config, rec, setup, start_sim};

const LEAD: &str = "4876876000000600001";

#[tokio::test]
async fn a_429_storm_is_waited_out_within_the_throttle_budget() {
    let (sim, client) = setup().await;
    sim.inject(FaultRule::new(Fault::Status(429), 5).on_path("/Leads/"));
    let started = Instant::now();
    let record = client
        .get_record("Leads", LEAD, None)
        .await
        .expect("succeeds after the storm");
    assert!(record.is_some());
    assert_eq!(
        sim.count("GET", "/crm/v8/Leads/"),
        6,
        "five 429s, then the answer"
    );
    assert!(started.elapsed() < client.config().throttle_budget);
}

#[tokio::test]
async fn a_429_storm_longer_than_the_budget_ends_in_a_rate_limit_error() {
    let sim = start_sim(fast_sim_config()).await;
    let mut config = client_config(&sim);
    config.throttle_budget = Duration::from_millis(100);
    config.backoff_initial = Duration::from_millis(40);
    let client = client_with(&sim, config);
    sim.inject(FaultRule::new(Fault::Status(429), 1_000).on_path("/Leads/"));
    let err = client.get_record("Leads", LEAD, None).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited, "{err}");
}

#[tokio::test]
async fn an_exhausted_credit_budget_is_a_rate_limit_with_credits_remaining() {
    let mut config = fast_sim_config();
    config.daily_credits = Some(4);
    let sim = start_sim(config).await;
    let mut client_cfg = client_config(&sim);
    client_cfg.throttle_budget = Duration::from_millis(50);
    let client = client_with(&sim, client_cfg);
    for _ in 0..4 {
        client
            .get_record("Leads", LEAD, None)
            .await
            .expect("within credits");
    }
    let err = client.get_record("Leads", LEAD, None).await.unwrap_err();
    assert!(matches!(err, ZohoError::RateLimited { .. }), "{err}");
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_call_succeeds() {
    let (sim, client) = setup().await;
    client
        .get_record("Leads", LEAD, None)
        .await
        .expect("first call");
    assert_eq!(sim.token_requests(), 1);
    sim.expire_access_tokens();
    let record = client
        .get_record("Leads", LEAD, None)
        .await
        .expect("refreshed");
    assert!(record.is_some());
    assert_eq!(sim.token_requests(), 2, "exactly one refresh");
}

#[tokio::test]
async fn concurrent_calls_share_one_refresh() {
    let (sim, client) = setup().await;
    client
        .get_record("Leads", LEAD, None)
        .await
        .expect("first call");
    sim.expire_access_tokens();
    let calls = (0..8).map(|_| {
        let client = client.clone();
        async move { client.get_record("Leads", LEAD, None).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("every call succeeds after the refresh");
    }
    assert_eq!(sim.token_requests(), 2, "one refresh in flight at a time");
}

#[tokio::test]
async fn a_token_refused_even_after_refresh_is_an_auth_error() {
    let (sim, client) = setup().await;
    sim.inject(FaultRule::new(Fault::InvalidToken, 10).on_path("/Leads/"));
    let err = client.get_record("Leads", LEAD, None).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::AuthExpired);
    assert_eq!(
        sim.count("GET", "/crm/v8/Leads/"),
        2,
        "one refresh, one retry"
    );
}

#[tokio::test]
async fn a_500_is_retried_then_given_up_with_a_server_error() {
    let (sim, client) = setup().await;
    sim.inject(FaultRule::new(Fault::Status(500), 100).on_path("/Leads/"));
    let err = client.get_record("Leads", LEAD, None).await.unwrap_err();
    assert!(
        matches!(err, ZohoError::Server { status: 500, .. }),
        "{err}"
    );
    assert_eq!(
        sim.count("GET", "/crm/v8/Leads/"),
        client.config().max_attempts as usize
    );
}

#[tokio::test]
async fn a_single_500_is_absorbed_by_a_retry() {
    let (sim, client) = setup().await;
    sim.inject(FaultRule::new(Fault::Status(503), 1).on_path("/Leads/"));
    assert!(
        client
            .get_record("Leads", LEAD, None)
            .await
            .expect("retried")
            .is_some()
    );
}

#[tokio::test]
async fn a_stall_times_out() {
    let (sim, client) = setup().await;
    sim.inject(FaultRule::new(Fault::Stall, 100).on_path("/Leads/"));
    let started = Instant::now();
    let err = client.get_record("Leads", LEAD, None).await.unwrap_err();
    assert!(matches!(err, ZohoError::Timeout { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_insert_is_not_repeated_after_a_timeout() {
    let (sim, client) = setup().await;
    sim.inject(
        FaultRule::new(Fault::Stall, 1)
            .on_path("/Leads")
            .on_method("POST"),
    );
    let err = client
        .insert("Leads", &[rec(json!({"Last_Name": "Once"}))])
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert_eq!(sim.count("POST", "/crm/v8/Leads"), 1);
}

#[tokio::test]
async fn a_validation_error_is_not_retried() {
    let (sim, client) = setup().await;
    let results = client
        .insert("Leads", &[rec(json!({"Email": "no-last-name@x.io"}))])
        .await
        .expect("the batch is answered");
    let err = results[0].outcome.as_ref().unwrap_err();
    assert_eq!(err.class(), ErrorClass::Validation);
    assert!(matches!(err, ZohoError::Validation { code, .. } if code == "MANDATORY_NOT_FOUND"));
    assert_eq!(sim.count("POST", "/crm/v8/Leads"), 1);
}

#[tokio::test]
async fn a_whole_request_refusal_is_not_retried() {
    let (sim, client) = setup().await;
    let err = client.fields("Nope").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert_eq!(sim.count("GET", "/settings/fields"), 1);
}

#[tokio::test]
async fn a_locked_record_is_not_retried() {
    let (sim, client) = setup().await;
    assert!(sim.lock_record("Leads", LEAD));
    let results = client
        .update(
            "Leads",
            &[rec(json!({"id": LEAD, "Company": "Changed"}))],
            None,
        )
        .await
        .expect("the batch is answered");
    let err = results[0].outcome.as_ref().unwrap_err();
    assert_eq!(err.class(), ErrorClass::RecordLocked);
    assert_eq!(sim.count("PUT", "/crm/v8/Leads"), 1);
    let deleted = client.delete("Leads", &[LEAD]).await.expect("answered");
    assert_eq!(
        deleted[0].outcome.as_ref().unwrap_err().class(),
        ErrorClass::RecordLocked
    );
}

#[tokio::test]
async fn an_upsert_retried_after_a_lost_reply_creates_no_duplicate() {
    let (sim, client) = setup().await;
    sim.inject(FaultRule::new(Fault::LoseReply, 1).on_path("/upsert"));
    let record = rec(json!({"Last_Name": "Lost", "Synchub_Id": "local-42", "Email": "lost@x.io"}));
    let results = client
        .upsert("Leads", &[record], &["Synchub_Id"])
        .await
        .expect("the retry is answered");
    let success = results[0].outcome.as_ref().expect("the retry succeeds");
    assert_eq!(sim.count("POST", "/upsert"), 2, "the first reply was lost");
    assert_eq!(
        success.duplicate_field.as_deref(),
        Some("Synchub_Id"),
        "the retry found the record"
    );
    assert_eq!(sim.find("Leads", "Synchub_Id", &json!("local-42")).len(), 1);
}

#[tokio::test]
async fn a_stale_update_fails_with_already_modified() {
    let (sim, client) = setup().await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let results = client
        .update(
            "Leads",
            &[rec(json!({"id": LEAD, "Company": "Stale"}))],
            Some(before),
        )
        .await
        .expect("answered");
    let err = results[0].outcome.as_ref().unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict);
    assert_eq!(sim.count("PUT", "/crm/v8/Leads"), 1);
}

#[tokio::test]
async fn the_client_stays_within_the_emulators_concurrency() {
    let mut config = fast_sim_config();
    config.concurrency = Some(2);
    config.faults.latency = Duration::from_millis(60);
    let sim = start_sim(config).await;
    let mut client_cfg = client_config(&sim);
    client_cfg.max_concurrency = 2;
    let client = client_with(&sim, client_cfg);
    let calls = (0..8).map(|_| {
        let client = client.clone();
        async move { client.get_record("Leads", LEAD, None).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("no call is refused");
    }
    assert!(
        sim.requests().iter().all(|r| r.status != 429),
        "no 429 was ever sent"
    );
}

#[tokio::test]
async fn too_much_concurrency_gets_429s_that_the_client_waits_out() {
    let mut config = fast_sim_config();
    config.concurrency = Some(2);
    config.faults.latency = Duration::from_millis(60);
    let sim = start_sim(config).await;
    let client = client_with(&sim, client_config(&sim));
    let calls = (0..8).map(|_| {
        let client = client.clone();
        async move { client.get_record("Leads", LEAD, None).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("every call eventually succeeds");
    }
    assert!(
        sim.requests().iter().any(|r| r.status == 429),
        "the emulator did push back"
    );
}

#[tokio::test]
async fn the_client_refreshes_before_the_token_expires() {
    let mut config = fast_sim_config();
    config.token_lifetime = Duration::from_secs(2);
    let sim = start_sim(config).await;
    let mut client_cfg = client_config(&sim);
    client_cfg.refresh_margin = Duration::from_millis(1_500);
    let client = client_with(&sim, client_cfg);
    client
        .get_record("Leads", LEAD, None)
        .await
        .expect("first call");
    // Inside the refresh margin: the next call refreshes first instead of
    // waiting for Zoho's 401.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .get_record("Leads", LEAD, None)
        .await
        .expect("second call");
    assert_eq!(sim.token_requests(), 2);
    assert!(
        sim.requests().iter().all(|r| r.status != 401),
        "no call was refused"
    );
}

#[tokio::test]
async fn large_writes_count_against_the_sub_concurrency() {
    let mut config = fast_sim_config();
    config.sub_concurrency = 1;
    config.faults.latency = Duration::from_millis(80);
    let sim = start_sim(config).await;
    let mut client_cfg = client_config(&sim);
    client_cfg.max_complex_concurrency = 2;
    let client = client_with(&sim, client_cfg);
    let batch = |tag: &str| -> Vec<_> {
        (0..11)
            .map(|i| rec(json!({"Last_Name": format!("{tag} {i}")})))
            .collect()
    };
    let (first, second) = (batch("a"), batch("b"));
    let (a, b) = tokio::join!(
        client.insert("Leads", &first),
        client.insert("Leads", &second)
    );
    assert!(a.expect("a").iter().all(|r| r.outcome.is_ok()));
    assert!(b.expect("b").iter().all(|r| r.outcome.is_ok()));
    assert!(
        sim.requests().iter().any(|r| r.status == 429),
        "the second large write was pushed back"
    );
    assert_eq!(
        sim.record_count("Leads"),
        24,
        "429s are retried even for inserts: nothing was applied"
    );
    assert!(
        client.credits_remaining().is_none(),
        "plenty of credits left"
    );
}

#[tokio::test]
async fn a_throttled_token_endpoint_is_waited_out() {
    let mut config = fast_sim_config();
    config.token_throttle = Some(1);
    let sim = std::sync::Arc::new(start_sim(config).await);
    let client = client_with(&sim, client_config(&sim));
    client
        .get_record("Leads", LEAD, None)
        .await
        .expect("first call");
    sim.expire_access_tokens();
    // The refresh is throttled until ten minutes have passed.
    let clock = sim.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        clock.advance_clock(Duration::from_secs(601));
    });
    client
        .get_record("Leads", LEAD, None)
        .await
        .expect("succeeds once the throttle lifts");
    later.await.expect("the clock task");
    assert!(
        sim.token_requests() >= 3,
        "at least one refresh was refused first"
    );
}

#[tokio::test]
async fn a_revoked_refresh_token_is_an_auth_failure_and_not_retried() {
    let sim = start_sim(fast_sim_config()).await;
    let config = client_config(&sim);
    let client = synchub::zoho::ZohoClient::new(
        config,
        std::sync::Arc::new(synchub::zoho::MemoryTokenStore::new("1000.revoked")),
    )
    .expect("client");
    let err = client.get_record("Leads", LEAD, None).await.unwrap_err();
    assert!(
        matches!(&err, ZohoError::AuthFailed { error } if error == "invalid_code"),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::AuthExpired);
    assert_eq!(sim.token_requests(), 1);
    assert_eq!(sim.count("GET", "/crm/v8/Leads/"), 0);
}

#[tokio::test]
async fn the_client_keeps_large_writes_within_the_sub_concurrency() {
    let mut config = fast_sim_config();
    config.sub_concurrency = 1;
    config.faults.latency = Duration::from_millis(60);
    let sim = start_sim(config).await;
    let mut client_cfg = client_config(&sim);
    client_cfg.max_complex_concurrency = 1;
    let client = client_with(&sim, client_cfg);
    let batch = |tag: &str| -> Vec<_> {
        (0..11)
            .map(|i| rec(json!({"Last_Name": format!("{tag} {i}")})))
            .collect()
    };
    let (first, second) = (batch("a"), batch("b"));
    let (a, b) = tokio::join!(
        client.insert("Leads", &first),
        client.insert("Leads", &second)
    );
    assert!(a.expect("a").iter().all(|r| r.outcome.is_ok()));
    assert!(b.expect("b").iter().all(|r| r.outcome.is_ok()));
    assert!(
        sim.requests().iter().all(|r| r.status != 429),
        "no 429 was needed: {:?}",
        sim.requests()
    );
}

#[tokio::test]
async fn a_success_that_is_not_json_is_an_error_never_an_empty_result() {
    let (sim, client) = setup().await;
    sim.inject(
        FaultRule::new(
            Fault::Raw {
                status: 200,
                body: "<html>proxy login</html>".into(),
            },
            1,
        )
        .on_path("/crm/v8/Leads"),
    );
    let err = client.fetch_all("Leads", &["Last_Name"]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert_eq!(
        client
            .fetch_all("Leads", &["Last_Name"])
            .await
            .expect("then fine")
            .len(),
        2
    );
}

#[tokio::test]
async fn a_gateway_error_page_is_a_server_error() {
    let (sim, client) = setup().await;
    sim.inject(
        FaultRule::new(
            Fault::Raw {
                status: 502,
                body: "<html>bad gateway</html>".into(),
            },
            1,
        )
        .on_path("/crm/v8/Leads"),
    );
    assert_eq!(
        client
            .fetch_all("Leads", &["Last_Name"])
            .await
            .expect("retried")
            .len(),
        2
    );
}
