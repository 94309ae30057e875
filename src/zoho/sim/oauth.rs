//! The accounts server: `/oauth/v2/token` (refresh, authorization code and
//! client credentials grants) and revocation.
//!
//! Parameters are accepted in every form Zoho's clients send them (query
//! string, urlencoded body, multipart body). Token errors follow Zoho: HTTP
//! 200 with `{"error": "..."}`, except the refresh throttle (400).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use rand::Rng;
use serde_json::{Value, json};

use super::state::{AccessGrant, RefreshGrant, SimState, World};
use super::wire::json_reply;

/// Zoho keeps at most this many live access tokens per refresh token.
const MAX_ACCESS_TOKENS: usize = 15;

pub async fn token(State(state): State<Arc<SimState>>, req: Request) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    // `api_domain` is the address the client reached us on, so an emulator
    // listening on 0.0.0.0 (in a container) still names a usable domain.
    let api_domain = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| format!("http://{host}"))
        .unwrap_or_else(|| state.base_url.clone());
    let params = match gather_params(req).await {
        Ok(params) => params,
        Err(()) => return oauth_error("invalid_request"),
    };
    let get = |key: &str| params.get(key).map(String::as_str).unwrap_or_default();
    let now = state.now();
    let lifetime = state.config.token_lifetime;
    let mut world = state.world();
    let Some(client) = world
        .clients
        .iter()
        .find(|c| c.client_id == get("client_id") && c.client_secret == get("client_secret"))
        .cloned()
    else {
        return oauth_error("invalid_client");
    };
    let expires_in = lifetime.as_secs().max(1);
    match get("grant_type") {
        "refresh_token" => {
            let refresh = get("refresh_token").to_owned();
            let throttle = state.config.token_throttle;
            let Some(grant) = world.refresh_tokens.get_mut(&refresh) else {
                return oauth_error("invalid_code");
            };
            if grant.client_id != client.client_id {
                return oauth_error("invalid_code");
            }
            let ten_minutes_ago = now - time::Duration::minutes(10);
            while grant
                .recent
                .front()
                .is_some_and(|at| *at <= ten_minutes_ago)
            {
                grant.recent.pop_front();
            }
            if let Some(limit) = throttle
                && grant.recent.len() >= limit as usize
            {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time."}),
                );
            }
            grant.recent.push_back(now);
            let user = grant.user_id.clone();
            let access = mint_access(&mut world, &refresh, &user, now, lifetime);
            json_reply(
                StatusCode::OK,
                &json!({"access_token": access, "api_domain": api_domain, "token_type": "Bearer", "expires_in": expires_in}),
            )
        }
        "authorization_code" => {
            let Some((client_id, user)) = world.grant_codes.remove(get("code")) else {
                return oauth_error("invalid_code");
            };
            if client_id != client.client_id {
                return oauth_error("invalid_code");
            }
            let refresh = format!("1000.{}.{}", random_hex(), random_hex());
            world.refresh_tokens.insert(
                refresh.clone(),
                RefreshGrant {
                    client_id,
                    user_id: user.clone(),
                    access: VecDeque::new(),
                    recent: VecDeque::new(),
                },
            );
            let access = mint_access(&mut world, &refresh, &user, now, lifetime);
            json_reply(
                StatusCode::OK,
                &json!({"access_token": access, "refresh_token": refresh, "api_domain": api_domain, "token_type": "Bearer", "expires_in": expires_in}),
            )
        }
        "client_credentials" => {
            let access = format!("1000.{}.{}", random_hex(), random_hex());
            world.access_tokens.insert(
                access.clone(),
                AccessGrant {
                    user_id: client.user_id.clone(),
                    expires: now + lifetime,
                },
            );
            let scope = match get("scope") {
                "" => "ZohoCRM.modules.ALL ZohoCRM.settings.ALL".to_owned(),
                s => s.replace(',', " "),
            };
            json_reply(
                StatusCode::OK,
                &json!({"access_token": access, "scope": scope, "api_domain": api_domain, "token_type": "Bearer", "expires_in": expires_in}),
            )
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

pub async fn revoke(State(state): State<Arc<SimState>>, req: Request) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let params = gather_params(req).await.unwrap_or_default();
    let Some(token) = params.get("token") else {
        return oauth_error("invalid_request");
    };
    let mut world = state.world();
    if let Some(grant) = world.refresh_tokens.remove(token) {
        for access in grant.access {
            world.access_tokens.remove(&access);
        }
    }
    json_reply(StatusCode::OK, &json!({"status": "success"}))
}

fn mint_access(
    world: &mut World,
    refresh: &str,
    user: &str,
    now: time::OffsetDateTime,
    lifetime: std::time::Duration,
) -> String {
    let access = format!("1000.{}.{}", random_hex(), random_hex());
    world.access_tokens.insert(
        access.clone(),
        AccessGrant {
            user_id: user.into(),
            expires: now + lifetime,
        },
    );
    let evicted = match world.refresh_tokens.get_mut(refresh) {
        Some(grant) => {
            grant.access.push_back(access.clone());
            if grant.access.len() > MAX_ACCESS_TOKENS {
                grant.access.pop_front()
            } else {
                None
            }
        }
        None => None,
    };
    if let Some(old) = evicted {
        world.access_tokens.remove(&old);
    }
    access
}

fn oauth_error(code: &str) -> Response {
    json_reply(StatusCode::OK, &json!({"error": code}))
}

fn random_hex() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Query string, then the body as multipart or urlencoded form.
async fn gather_params(req: Request) -> Result<HashMap<String, String>, ()> {
    let mut params: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, &()).await.map_err(|_| ())?;
        while let Some(field) = form.next_field().await.map_err(|_| ())? {
            let name = field.name().unwrap_or_default().to_owned();
            let value = field.text().await.map_err(|_| ())?;
            params.insert(name, value);
        }
    } else {
        let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
            .await
            .map_err(|_| ())?;
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) {
            for (k, v) in map {
                if let Some(s) = v.as_str() {
                    params.insert(k, s.to_owned());
                }
            }
        } else {
            params.extend(form_urlencoded::parse(&body).into_owned());
        }
    }
    Ok(params)
}
