//! Zoho's wire conventions as the emulator speaks them: error bodies, JSON
//! replies, the lenient query-string reading Zoho's own SDKs rely on, and the
//! datetime formats.
//!
//! Everything a handler refuses goes out through [`SimError`], so a bad
//! request always gets a Zoho-shaped body and never a panic or an axum
//! default rejection.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Zoho's content type for every JSON reply.
pub const JSON_UTF8: &str = "application/json;charset=UTF-8";

/// A whole-request error, answered as `{"code","details","message","status":"error"}`.
#[derive(Debug, Clone)]
pub struct SimError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl SimError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn body(&self) -> Value {
        json!({
            "code": self.code,
            "details": self.details,
            "message": self.message,
            "status": "error",
        })
    }

    pub fn invalid_module() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_MODULE",
            "the module name given seems to be invalid",
        )
        .with_details(json!({"resource_path_index": 0}))
    }

    pub fn invalid_url() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "INVALID_URL_PATTERN",
            "Please check if the URL trying to access is a correct one",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_REQUEST_METHOD",
            "The http request method type is not a valid one",
        )
    }

    pub fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "invalid oauth token",
        )
    }

    pub fn authentication_failure() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_FAILURE",
            "Authentication failed",
        )
    }

    pub fn too_many_requests(message: &str) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Internal Server Error",
        )
    }

    pub fn invalid_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "body is not a valid JSON",
        )
    }

    pub fn required_param(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
        )
        .with_details(json!({"param_name": name}))
    }

    pub fn invalid_param(name: &str, message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_DATA", message)
            .with_details(json!({"param_name": name}))
    }

    pub fn mandatory_missing(api_name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MANDATORY_NOT_FOUND",
            "required field not found",
        )
        .with_details(json!({"api_name": api_name}))
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        json_reply(self.status, &self.body())
    }
}

/// A JSON reply with Zoho's content type.
pub fn json_reply(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    response
}

/// 204 and 304 carry no body at all.
pub fn empty_reply(status: StatusCode) -> Response {
    status.into_response()
}

/// Query parameters read the way Zoho must read the Node SDK's URLs:
/// `%XX` is decoded but `+` stays a literal plus (the SDK leaves `+05:30`
/// unescaped), and empty pairs from its trailing `&` are ignored.
#[derive(Debug, Default, Clone)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(key), decode(value))
            })
            .collect();
        Self(pairs)
    }

    /// The value of a parameter; repeated parameters are joined with commas
    /// as the SDKs themselves do.
    pub fn get(&self, key: &str) -> Option<String> {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// A positive integer parameter with a default and a maximum.
    pub fn number(&self, key: &str, default: u64, max: u64) -> Result<u64, SimError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(n) if n >= 1 && n <= max => Ok(n),
                _ => Err(SimError::invalid_param(
                    key,
                    &format!("the {key} given seems to be invalid"),
                )
                .with_details(json!({"param_name": key, "maximum_length": max}))),
            },
        }
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// Formats a timestamp as Zoho does: whole seconds, in the user's zone.
pub fn format_time(at: OffsetDateTime, zone: UtcOffset) -> String {
    let fmt = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
    );
    at.to_offset(zone)
        .format(&fmt)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Parses the datetime shapes clients send: `Z` or `±HH:mm` offsets, with or
/// without fractions, a `+` that form decoding turned into a space, and a
/// bare local time (taken in the user's zone).
pub fn parse_time(raw: &str, zone: UtcOffset) -> Option<OffsetDateTime> {
    let mut text = raw.trim().to_owned();
    // `2024-01-01T10:00:00 05:30`: a `+` lost to form decoding.
    if text.len() >= 25 && text.as_bytes().get(text.len() - 6) == Some(&b' ') {
        let at = text.len() - 6;
        text.replace_range(at..=at, "+");
    }
    if let Ok(at) = OffsetDateTime::parse(&text, &Rfc3339) {
        return Some(at.replace_nanosecond(0).unwrap_or(at));
    }
    let local = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    PrimitiveDateTime::parse(&text, &local)
        .ok()
        .map(|at| at.assume_offset(zone))
}

/// Parses a `±HH:mm` offset (or `Z`).
pub fn parse_offset(raw: &str) -> Option<UtcOffset> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("z") || raw.eq_ignore_ascii_case("utc") {
        return Some(UtcOffset::UTC);
    }
    let fmt = format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    UtcOffset::parse(raw, &fmt).ok()
}

/// The header value as text, if present and readable.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use time::macros::{datetime, offset};

    use super::*;

    #[test]
    fn query_keeps_a_raw_plus_and_ignores_the_trailing_ampersand() {
        let q = Query::parse(Some(
            "fields=Last_Name,Email&since=2024-01-01T10:00:00+05:30&",
        ));
        assert_eq!(q.get("fields").as_deref(), Some("Last_Name,Email"));
        assert_eq!(q.get("since").as_deref(), Some("2024-01-01T10:00:00+05:30"));
        assert_eq!(q.list("fields"), vec!["Last_Name", "Email"]);
    }

    #[test]
    fn times_are_formatted_to_the_second_in_the_user_zone() {
        let at = datetime!(2023-05-10 08:10:47.123 UTC);
        assert_eq!(format_time(at, offset!(-7)), "2023-05-10T01:10:47-07:00");
    }

    #[test]
    fn client_datetime_shapes_all_parse_to_the_same_instant() {
        let zone = offset!(+5:30);
        let want = datetime!(2024-12-31 18:30:00 UTC);
        for raw in [
            "2024-12-31T18:30:00Z",
            "2024-12-31T18:30:00.000Z",
            "2025-01-01T00:00:00+05:30",
            "2025-01-01T00:00:00 05:30",
            "2025-01-01T00:00:00",
        ] {
            assert_eq!(parse_time(raw, zone), Some(want), "{raw}");
        }
        assert_eq!(parse_time("yesterday", zone), None);
    }

    #[test]
    fn a_bad_number_parameter_gets_a_zoho_error() {
        let q = Query::parse(Some("per_page=500"));
        let err = q.number("per_page", 200, 200).unwrap_err();
        assert_eq!(err.code, "INVALID_DATA");
    }
}
