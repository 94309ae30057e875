//! The emulator over raw HTTP: bad requests get Zoho's own error bodies,
//! the token endpoint takes every parameter form, and limits show up as
//! Zoho shows them.

use reqwest::StatusCode;
use serde_json::{Value, json};
use synchub::zoho::sim::SimHandle;

use super::{fast_sim_config, start_sim};

async fn token(sim: &SimHandle) -> String {
    let (id, secret, refresh) = sim.credentials().expect("credentials");
    let reply: Value = reqwest::Client::new()
        .post(with_query(
            &sim.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("refresh_token", refresh.as_str()),
            ],
        ))
        .send()
        .await
        .expect("token call")
        .json()
        .await
        .expect("json");
    reply["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{url}?{encoded}")
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn new(sim: &SimHandle) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: sim.base_url.clone(),
            token: token(sim).await,
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("Zoho-oauthtoken {}", self.token))
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("sent");
        let status = response.status();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, body)
    }
}

fn assert_zoho_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert_eq!(body["status"], "error");
    assert!(
        body["message"].is_string() && body.get("details").is_some(),
        "{body}"
    );
}

#[tokio::test]
async fn bad_requests_get_zohos_error_bodies() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    use reqwest::Method as M;

    let (s, b) = api
        .call(
            api.http
                .get(format!("{}/crm/v8/Leads?fields=Last_Name", sim.base_url)),
        )
        .await;
    assert_zoho_error(s, &b, 401, "AUTHENTICATION_FAILURE");
    let (s, b) = api
        .call(
            api.http
                .get(format!("{}/crm/v8/Leads?fields=Last_Name", sim.base_url))
                .header("Authorization", "Zoho-oauthtoken 1000.bogus"),
        )
        .await;
    assert_zoho_error(s, &b, 401, "INVALID_TOKEN");
    assert_eq!(b["message"], "invalid oauth token");

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            api.req(M::GET, "/crm/v8/Nope?fields=Last_Name"),
            400,
            "INVALID_MODULE",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads"),
            400,
            "REQUIRED_PARAM_MISSING",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads?fields=Last_Name&per_page=500"),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads?fields=Last_Name&page=11"),
            400,
            "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads?fields=Last_Name&page=1&page_token=x"),
            400,
            "AMBIGUITY_DURING_PROCESSING",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads?fields=Last_Name&page_token=nope"),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads?fields=Last_Name&sort_by=Email"),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads?fields=Last_Name")
                .header("If-Modified-Since", "yesterday"),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::POST, "/crm/v8/Leads").body("{not json"),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::POST, "/crm/v8/Leads").body("{}"),
            400,
            "MANDATORY_NOT_FOUND",
        ),
        (
            api.req(M::POST, "/crm/v8/Leads")
                .body(json!({"data": vec![json!({"Last_Name": "x"}); 101]}).to_string()),
            400,
            "LIMIT_EXCEEDED",
        ),
        (
            api.req(M::POST, "/crm/v8/Leads")
                .body(json!({"data": [{"Last_Name": "x"}], "trigger": "none"}).to_string()),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::DELETE, "/crm/v8/Leads"),
            400,
            "REQUIRED_PARAM_MISSING",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads/search"),
            400,
            "EXPECTED_PARAM_MISSING",
        ),
        (
            api.req(
                M::GET,
                "/crm/v8/Leads/search?criteria=((Last_Name:equals:x)",
            ),
            400,
            "INVALID_QUERY",
        ),
        (
            api.req(
                M::GET,
                "/crm/v8/Leads/search?criteria=Last_Name:greater_than:x",
            ),
            400,
            "INVALID_QUERY",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads/search?word=a"),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads/search?word=maclead&page=11"),
            400,
            "LIMIT_REACHED",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads/deleted?type=soon"),
            400,
            "PATTERN_NOT_MATCHED",
        ),
        (
            api.req(M::POST, "/crm/v8/coql")
                .body(json!({"select_query": "select x from"}).to_string()),
            400,
            "SYNTAX_ERROR",
        ),
        (
            api.req(M::POST, "/crm/v8/coql")
                .body(json!({"select_query": "select Nope from Leads"}).to_string()),
            400,
            "INVALID_QUERY",
        ),
        (
            api.req(M::POST, "/crm/v8/coql").body("{}"),
            400,
            "MANDATORY_NOT_FOUND",
        ),
        (
            api.req(M::GET, "/crm/v8/settings/fields"),
            400,
            "REQUIRED_PARAM_MISSING",
        ),
        (
            api.req(M::POST, "/crm/v8/actions/watch")
                .body(json!({"watch": [{"channel_id": "1"}]}).to_string()),
            400,
            "MANDATORY_NOT_FOUND",
        ),
        (
            api.req(M::POST, "/crm/bulk/v8/read").body("{}"),
            415,
            "MEDIA_TYPE_NOT_SUPPORTED",
        ),
        (
            api.req(M::GET, "/crm/bulk/v8/read/123"),
            404,
            "RESOURCE_NOT_FOUND",
        ),
        (
            api.req(M::GET, "/crm/v8/Leads/actions/mass_update?job_id=1"),
            400,
            "INVALID_DATA",
        ),
        (
            api.req(M::GET, "/crm/v9/nothing/here"),
            404,
            "INVALID_URL_PATTERN",
        ),
        (
            api.req(M::PATCH, "/crm/v8/org"),
            405,
            "INVALID_REQUEST_METHOD",
        ),
    ];
    for (request, status, code) in cases {
        let (s, b) = api.call(request).await;
        if b.get("watch").is_some() {
            assert_eq!(s.as_u16(), status, "{b}");
            assert_eq!(b["watch"][0]["code"], code, "{b}");
        } else {
            assert_zoho_error(s, &b, status, code);
        }
    }
}

#[tokio::test]
async fn per_record_envelopes_use_201_207_400_and_412() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    use reqwest::Method as M;
    // The Node SDK sends JSON without a Content-Type; that must still work.
    let (s, b) = api
        .call(
            api.req(M::POST, "/crm/v8/Leads")
                .body(json!({"data": [{"Last_Name": "A"}]}).to_string()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["data"][0]["message"], "record added");
    let (s, b) = api
        .call(
            api.req(M::POST, "/crm/v8/Leads")
                .body(json!({"data": [{"Last_Name": "B"}, {"Email": "x@y.io"}]}).to_string()),
        )
        .await;
    assert_eq!(s, 207, "{b}");
    assert_eq!(b["data"][1]["code"], "MANDATORY_NOT_FOUND");
    assert_eq!(b["data"][1]["details"]["json_path"], "$.data[1].Last_Name");
    let (s, b) = api
        .call(
            api.req(M::POST, "/crm/v8/Leads")
                .body(json!({"data": [{"No_of_Employees": "many", "Last_Name": "C"}]}).to_string()),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["data"][0]["details"]["expected_data_type"], "integer");
    let (s, b) = api
        .call(
            api.req(M::PUT, "/crm/v8/Leads/4876876000000600001")
                .header("If-Unmodified-Since", "2000-01-01T00:00:00+00:00")
                .body(json!({"data": [{"Company": "x"}]}).to_string()),
        )
        .await;
    assert_eq!(s, 412, "{b}");
    assert_eq!(b["data"][0]["code"], "ALREADY_MODIFIED");
    let (s, b) = api.call(api.req(M::GET, "/crm/v8/Leads/999")).await;
    assert_eq!((s.as_u16(), b), (204, Value::Null));
}

#[tokio::test]
async fn the_token_endpoint_accepts_query_urlencoded_and_multipart_forms() {
    let sim = start_sim(fast_sim_config()).await;
    let (id, secret, refresh) = sim.credentials().expect("credentials");
    let http = reqwest::Client::new();
    let params = [
        ("grant_type", "refresh_token"),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
        ("refresh_token", refresh.as_str()),
    ];
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let by_query: Value = http
        .post(format!("{}?{encoded}", sim.token_url()))
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    let by_form: Value = http
        .post(sim.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encoded.clone())
        .send()
        .await
        .expect("form")
        .json()
        .await
        .expect("json");
    let mut multipart = reqwest::multipart::Form::new();
    for (k, v) in params {
        multipart = multipart.text(k, v.to_owned());
    }
    let by_multipart: Value = http
        .post(sim.token_url())
        .multipart(multipart)
        .send()
        .await
        .expect("multipart")
        .json()
        .await
        .expect("json");
    for reply in [&by_query, &by_form, &by_multipart] {
        assert!(reply["access_token"].is_string(), "{reply}");
        assert_eq!(reply["token_type"], "Bearer");
        assert_eq!(reply["expires_in"], 3600);
        assert_eq!(reply["api_domain"], sim.base_url.as_str());
        assert!(reply.get("refresh_token").is_none());
    }
    // Bearer works as well as Zoho-oauthtoken.
    let token = by_form["access_token"].as_str().expect("token");
    let response = http
        .get(format!("{}/crm/v8/org", sim.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("org");
    assert_eq!(response.status(), 200);
    let bad: Value = http
        .post(with_query(
            &sim.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("refresh_token", "1000.nope"),
            ],
        ))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(bad, json!({"error": "invalid_code"}));
    let code: Value = http
        .post(with_query(
            &sim.token_url(),
            &[
                ("grant_type", "authorization_code"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("code", "1000.synchub.dev.code"),
                ("redirect_uri", "http://localhost/cb"),
            ],
        ))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert!(code["refresh_token"].is_string(), "{code}");
}

#[tokio::test]
async fn the_token_endpoint_throttles_rapid_refreshes() {
    let mut config = fast_sim_config();
    config.token_throttle = Some(2);
    let sim = start_sim(config).await;
    token(&sim).await;
    token(&sim).await;
    let (id, secret, refresh) = sim.credentials().expect("credentials");
    let response = reqwest::Client::new()
        .post(with_query(
            &sim.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("refresh_token", refresh.as_str()),
            ],
        ))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "Access Denied");
}

#[tokio::test]
async fn tokens_expire_after_their_lifetime() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    let (s, _) = api.call(api.req(reqwest::Method::GET, "/crm/v8/org")).await;
    assert_eq!(s, 200);
    sim.advance_clock(std::time::Duration::from_secs(3601));
    let (s, b) = api.call(api.req(reqwest::Method::GET, "/crm/v8/org")).await;
    assert_zoho_error(s, &b, 401, "INVALID_TOKEN");
}

#[tokio::test]
async fn credits_remaining_are_shown_once_half_are_used() {
    let mut config = fast_sim_config();
    config.daily_credits = Some(6);
    let sim = start_sim(config).await;
    let api = Api::new(&sim).await;
    let mut seen = vec![];
    for _ in 0..7 {
        let response = api
            .req(reqwest::Method::GET, "/crm/v8/org")
            .send()
            .await
            .expect("sent");
        seen.push((
            response.status().as_u16(),
            response
                .headers()
                .get("X-API-CREDITS-REMAINING")
                .map(|v| v.to_str().unwrap_or_default().to_owned()),
        ));
    }
    assert_eq!(seen[1], (200, None));
    assert_eq!(seen[2], (200, Some("3".into())));
    assert_eq!(seen[5], (200, Some("0".into())));
    assert_eq!(seen[6].0, 429);
    sim.advance_clock(std::time::Duration::from_secs(86_400));
    // A day later the credits have come back (but so has the token expired).
    let (s, _) = api.call(api.req(reqwest::Method::GET, "/crm/v8/org")).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn modified_time_is_whole_seconds_in_the_configured_zone() {
    let mut config = fast_sim_config();
    config.time_zone = time::UtcOffset::from_hms(-7, 0, 0).expect("offset");
    let sim = start_sim(config).await;
    let api = Api::new(&sim).await;
    let (_, b) = api
        .call(api.req(
            reqwest::Method::GET,
            "/crm/v8/Leads?fields=Modified_Time,Last_Name",
        ))
        .await;
    let stamp = b["data"][0]["Modified_Time"].as_str().expect("a stamp");
    assert_eq!(stamp.len(), "2023-05-10T01:10:47-07:00".len(), "{stamp}");
    assert!(stamp.ends_with("-07:00"), "{stamp}");
    assert_eq!(b["info"]["more_records"], false);
    assert_eq!(b["info"]["count"], 2);
}

#[tokio::test]
async fn record_locks_are_set_read_and_released_through_the_api() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    use reqwest::Method as M;
    let path = "/crm/v8/Leads/4876876000000600001/Locking_Information__s";
    let (s, _) = api.call(api.req(M::GET, path)).await;
    assert_eq!(s, 204);
    let (s, b) = api
        .call(
            api.req(M::POST, path)
                .body(json!({"data": [{"Locked_Reason__s": "deal in progress"}]}).to_string()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let lock_id = b["data"][0]["details"]["id"]
        .as_str()
        .expect("lock id")
        .to_owned();
    let (s, b) = api
        .call(
            api.req(M::POST, path)
                .body(json!({"data": [{}]}).to_string()),
        )
        .await;
    assert_zoho_error(s, &b, 403, "NOT_ALLOWED");
    let (s, b) = api
        .call(
            api.req(M::PUT, "/crm/v8/Leads")
                .body(json!({"data": [{"id": "4876876000000600001", "Company": "x"}]}).to_string()),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["data"][0]["code"], "RECORD_LOCKED");
    let (s, b) = api.call(api.req(M::GET, path)).await;
    assert_eq!(
        (s.as_u16(), b["data"][0]["Locked_Reason__s"].clone()),
        (200, json!("deal in progress"))
    );
    let (s, _) = api
        .call(api.req(M::DELETE, &format!("{path}/{lock_id}")))
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            api.req(M::PUT, "/crm/v8/Leads")
                .body(json!({"data": [{"id": "4876876000000600001", "Company": "x"}]}).to_string()),
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn bulk_read_exports_a_zipped_csv() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    use reqwest::Method as M;
    let (s, b) = api
        .call(
            api.req(M::POST, "/crm/bulk/v8/read")
                .header("content-type", "application/json")
                .body(json!({"query": {"module": {"api_name": "Deals"}, "fields": ["Deal_Name", "Amount"], "criteria": {"field": {"api_name": "Amount"}, "comparator": "greater_than", "value": "10000"}}}).to_string()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let job = b["data"][0]["details"]["id"]
        .as_str()
        .expect("job")
        .to_owned();
    let mut state = String::new();
    for _ in 0..50 {
        let (_, b) = api
            .call(api.req(M::GET, &format!("/crm/bulk/v8/read/{job}")))
            .await;
        state = b["data"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if state == "COMPLETED" {
            assert_eq!(b["data"][0]["result"]["count"], 1);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state, "COMPLETED");
    let zip_bytes = api
        .req(M::GET, &format!("/crm/bulk/v8/read/{job}/result"))
        .send()
        .await
        .expect("sent")
        .bytes()
        .await
        .expect("bytes");
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(zip_bytes.to_vec())).expect("a zip");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut archive.by_index(0).expect("entry"), &mut text)
        .expect("csv");
    assert_eq!(text.lines().next(), Some("id,Deal_Name,Amount"));
    assert!(text.contains("Zylker platform renewal"));
    assert!(!text.contains("Chapman pilot"));
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    sim: synchub::zoho::sim::SimArgs,
}

#[tokio::test]
async fn the_zoho_sim_command_parses_its_flags_and_stops_on_cancel() {
    use clap::Parser;
    let cli = Cli::try_parse_from([
        "zoho-sim",
        "--listen",
        "127.0.0.1:0",
        "--time-zone",
        "-07:00",
        "--edition",
        "free",
        "--latency",
        "5ms",
        "--error-rate",
        "0.1",
        "--token-lifetime",
        "10m",
        "--job-delay",
        "0s",
    ])
    .expect("the flags parse");
    assert_eq!(cli.sim.edition, synchub::zoho::sim::Edition::Free);
    let config = cli.sim.clone().into_config().expect("a config");
    assert_eq!(config.concurrency_limit(), 5);
    assert_eq!(config.credit_limit(), 5_000);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(synchub::zoho::sim::run(cli.sim, shutdown.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(2), running)
        .await
        .expect("stops promptly")
        .expect("the task ends")
        .expect("run returns Ok");
    assert!(
        Cli::try_parse_from(["zoho-sim", "--error-rate", "2"])
            .map(|c| c.sim.into_config().is_err())
            .unwrap_or(true)
    );
    assert!(Cli::try_parse_from(["zoho-sim", "--time-zone", "India"]).is_err());
}

#[tokio::test]
async fn junk_in_every_endpoint_never_panics_and_always_gets_a_zoho_answer() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    use reqwest::Method as M;
    let paths = [
        "/crm/v8/Leads",
        "/crm/v8/Leads/4876876000000600001",
        "/crm/v8/Leads/upsert",
        "/crm/v8/Leads/search?criteria=(Email:in:a,b)",
        "/crm/v8/Leads/deleted",
        "/crm/v8/Leads/actions/mass_update",
        "/crm/v8/Leads/4876876000000600001/Locking_Information__s",
        "/crm/v8/settings/fields?module=Leads",
        "/crm/v8/settings/fields/1?module=Leads",
        "/crm/v8/settings/modules/Leads",
        "/crm/v8/coql",
        "/crm/v8/actions/watch",
        "/crm/v8/upload",
        "/crm/bulk/v8/read",
        "/crm/bulk/v8/write",
        "/crm/bulk/v8/write/1/result",
    ];
    let bodies = [
        "",
        "null",
        "[]",
        "\"x\"",
        "{\"data\": \"x\"}",
        "{\"data\": [1, null, \"x\", []]}",
        "{\"data\": [{\"id\": {}, \"Last_Name\": 5, \"Owner\": {\"id\": 1}, \"Email\": [\"x\"]}]}",
        "{\"data\": [{\"id\": \"99999999999999999999999\", \"No_of_Employees\": 1e300}]}",
        "{\"data\": [{\"Last_Name\": \"\\u0000\", \"Account_Name\": {\"id\": \"nope\"}}], \"duplicate_check_fields\": [1]}",
        "{\"watch\": [{\"channel_id\": [], \"events\": [\"Leads.eat\"], \"notify_url\": \"ftp://x\", \"token\": 5}]}",
        "{\"fields\": [{\"field_label\": \"\", \"data_type\": \"x\"}]}",
        "{\"select_query\": \"select Last_Name from Leads where Last_Name in ()\"}",
        "{\"operation\": \"upsert\", \"resource\": [{\"module\": {\"api_name\": \"Leads\"}, \"file_id\": \"x\"}]}",
        "{\"query\": {\"module\": {\"api_name\": \"Nope\"}}}",
    ];
    for path in paths {
        for method in [M::GET, M::POST, M::PUT, M::PATCH, M::DELETE] {
            for body in bodies {
                let response = api
                    .req(method.clone(), path)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("the emulator answers");
                let status = response.status().as_u16();
                let text = response.text().await.expect("a body");
                assert!(status < 500, "{method} {path} {body}: HTTP {status} {text}");
                if status >= 400 {
                    let parsed: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("{method} {path} {body}: not JSON: {text}"));
                    let has_shape = parsed.get("code").is_some()
                        || parsed.get("data").is_some()
                        || parsed.get("watch").is_some()
                        || parsed.get("fields").is_some();
                    assert!(has_shape, "{method} {path} {body}: {text}");
                }
            }
        }
    }
}

#[tokio::test]
async fn users_org_client_credentials_revoke_and_the_v2_alias() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    use reqwest::Method as M;
    let (s, b) = api
        .call(api.req(M::GET, "/crm/v8/users?type=CurrentUser"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["users"].as_array().map(Vec::len), Some(1));
    assert_eq!(b["users"][0]["email"], "p.boyle@zylker.example");
    let (_, b) = api.call(api.req(M::GET, "/crm/v8/org")).await;
    assert_eq!(b["org"][0]["zgid"], "748291034");
    assert_eq!(b["org"][0]["license_details"]["paid_type"], "enterprise");
    let (s, b) = api
        .call(api.req(M::GET, "/crm/v2/Leads?fields=Last_Name"))
        .await;
    assert_eq!((s.as_u16(), b["info"]["count"].clone()), (200, json!(2)));
    let (s, _) = api
        .call(
            api.req(M::GET, "/crm/v8/settings/modules")
                .header("If-Modified-Since", "2100-01-01T00:00:00+00:00"),
        )
        .await;
    assert_eq!(s, 304);
    let (s, _) = api
        .call(
            api.req(M::GET, "/crm/v8/Leads/deleted")
                .header("If-Modified-Since", "2000-01-01T00:00:00Z"),
        )
        .await;
    assert_eq!(s, 304, "nothing deleted yet");

    let (id, secret, refresh) = sim.credentials().expect("credentials");
    let http = reqwest::Client::new();
    let cc: Value = http
        .post(with_query(
            &format!("{}/oauth/v2/auth", sim.base_url),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", "ZohoCRM.modules.ALL,ZohoCRM.settings.ALL"),
            ],
        ))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(cc["scope"], "ZohoCRM.modules.ALL ZohoCRM.settings.ALL");
    assert!(cc.get("refresh_token").is_none());
    let revoke = http
        .post(with_query(
            &format!("{}/revoke", sim.token_url()),
            &[("token", refresh.as_str())],
        ))
        .send()
        .await
        .expect("sent");
    assert_eq!(revoke.status(), 200);
    let (s, b) = api.call(api.req(M::GET, "/crm/v8/org")).await;
    assert_zoho_error(s, &b, 401, "INVALID_TOKEN");
}

#[tokio::test]
async fn watch_channels_are_listed_patched_and_expire() {
    let sim = start_sim(fast_sim_config()).await;
    let api = Api::new(&sim).await;
    use reqwest::Method as M;
    let body = json!({"watch": [{"channel_id": "77", "events": ["Leads.create", "Deals.edit"], "notify_url": "http://127.0.0.1:9/hook?x=1", "token": "t"}]});
    let (s, b) = api
        .call(
            api.req(M::POST, "/crm/v8/actions/watch")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        b["watch"][0]["details"]["events"].as_array().map(Vec::len),
        Some(2)
    );
    let (_, b) = api
        .call(api.req(M::GET, "/crm/v8/actions/watch?channel_id=77"))
        .await;
    assert_eq!(
        b["watch"].as_array().map(Vec::len),
        Some(2),
        "one entry per module"
    );
    let patch =
        json!({"watch": [{"channel_id": "77", "events": ["Deals.edit"], "_delete_events": true}]});
    let (s, b) = api
        .call(
            api.req(M::PATCH, "/crm/v8/actions/watch")
                .body(patch.to_string()),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["watch"][0]["message"].clone()),
        (200, json!("Successfully removed the subscribe details"))
    );
    let (_, b) = api.call(api.req(M::GET, "/crm/v8/actions/watch")).await;
    assert_eq!(b["watch"][0]["events"], json!(["Leads.create"]));
    let too_long = json!({"watch": [{"channel_id": "78", "events": ["Leads.all"], "notify_url": "http://x.io", "token": "x".repeat(51)}]});
    let (s, b) = api
        .call(
            api.req(M::POST, "/crm/v8/actions/watch")
                .body(too_long.to_string()),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["watch"][0]["code"].clone()),
        (400, json!("INVALID_DATA"))
    );
    sim.advance_clock(std::time::Duration::from_secs(3601));
    let token = token(&sim).await;
    let (s, _) = api
        .call(
            api.http
                .get(format!("{}/crm/v8/actions/watch", sim.base_url))
                .header("Authorization", format!("Zoho-oauthtoken {token}")),
        )
        .await;
    assert_eq!(s, 204, "the channel expired after its default hour");
}

#[tokio::test]
async fn a_sixteenth_access_token_evicts_the_first_and_grant_codes_work_once() {
    let sim = start_sim(fast_sim_config()).await;
    let first = token(&sim).await;
    for _ in 0..15 {
        token(&sim).await;
    }
    let http = reqwest::Client::new();
    let org = |t: String| {
        http.get(format!("{}/crm/v8/org", sim.base_url))
            .header("Authorization", format!("Zoho-oauthtoken {t}"))
            .send()
    };
    assert_eq!(
        org(first).await.expect("sent").status(),
        401,
        "Zoho keeps 15 access tokens per refresh token"
    );
    let (id, secret, _) = sim.credentials().expect("credentials");
    let exchange = || {
        http.post(with_query(
            &sim.token_url(),
            &[
                ("grant_type", "authorization_code"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("code", "1000.synchub.dev.code"),
            ],
        ))
        .send()
    };
    let once: Value = exchange().await.expect("sent").json().await.expect("json");
    assert!(once["refresh_token"].is_string(), "{once}");
    let twice: Value = exchange().await.expect("sent").json().await.expect("json");
    assert_eq!(twice, json!({"error": "invalid_code"}));
    let wrong_client: Value = http
        .post(with_query(
            &sim.token_url(),
            &[
                ("grant_type", "refresh_token"),
                ("client_id", id.as_str()),
                ("client_secret", "nope"),
                ("refresh_token", "x"),
            ],
        ))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(wrong_client, json!({"error": "invalid_client"}));
}
