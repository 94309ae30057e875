//! Parsing request data at the edge: every rule a record id, a field map, a
//! version or a token must meet, with a message that says which rule failed.

use serde_json::{Map, Value};

use super::ServiceError;

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidInput(message.into())
}

/// Ids appear in channel names (`record:<entity>:<id>`) and URLs: letters,
/// digits, `_`, `-`, `.`; at most `max` bytes.
pub fn check_id(id: &str, max: usize) -> Result<(), ServiceError> {
    if id.is_empty() {
        return Err(invalid("id must not be empty"));
    }
    if id.len() > max {
        return Err(invalid(format!("id is longer than {max} characters")));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(invalid(
            "id may only hold letters, digits, `_`, `-` and `.`",
        ));
    }
    Ok(())
}

/// Field names are non-empty and short; the whole map has a size limit.
pub fn check_fields(fields: &Map<String, Value>, max_bytes: usize) -> Result<(), ServiceError> {
    if let Some(name) = fields.keys().find(|k| k.is_empty() || k.len() > 128) {
        return Err(invalid(format!(
            "field name `{}` must be 1 to 128 characters",
            name.chars().take(32).collect::<String>()
        )));
    }
    let size = serde_json::to_vec(fields).map_or(usize::MAX, |v| v.len());
    if size > max_bytes {
        return Err(invalid(format!("fields are larger than {max_bytes} bytes")));
    }
    Ok(())
}

/// The request data as an object.
pub fn object(data: &Value) -> Result<&Map<String, Value>, ServiceError> {
    data.as_object()
        .ok_or_else(|| invalid("data must be a JSON object"))
}

pub fn string<'a>(data: &'a Map<String, Value>, name: &str) -> Result<&'a str, ServiceError> {
    match data.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
        None => Err(invalid(format!("`{name}` is required"))),
    }
}

pub fn opt_string<'a>(
    data: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ServiceError> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(data, name).map(Some),
    }
}

/// A non-negative integer (a version, a token, a TTL); a string is refused.
pub fn opt_number(data: &Map<String, Value>, name: &str) -> Result<Option<i64>, ServiceError> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 0 => Ok(Some(v)),
            _ => Err(invalid(format!("`{name}` must be a non-negative integer"))),
        },
        Some(_) => Err(invalid(format!("`{name}` must be a number"))),
    }
}

pub fn number(data: &Map<String, Value>, name: &str) -> Result<i64, ServiceError> {
    opt_number(data, name)?.ok_or_else(|| invalid(format!("`{name}` is required")))
}

/// A JSON object (record fields).
pub fn fields(data: &Map<String, Value>, name: &str) -> Result<Map<String, Value>, ServiceError> {
    match data.get(name) {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(invalid(format!("`{name}` must be a JSON object"))),
        None => Err(invalid(format!("`{name}` is required"))),
    }
}

pub fn flag(data: &Map<String, Value>, name: &str) -> Result<bool, ServiceError> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("`{name}` must be true or false"))),
    }
}

/// An HTTP `If-Match` value: `5`, `"5"` or `W/"5"`.
pub fn if_match(value: &str) -> Result<i64, ServiceError> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = v.trim_matches('"');
    v.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| invalid("If-Match must be a record version (a non-negative integer)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn ids_are_limited_in_length_and_charset() {
        assert!(check_id("deal-42_a.b", 128).is_ok());
        assert!(check_id("", 128).is_err());
        assert!(check_id(&"x".repeat(129), 128).is_err());
        assert!(check_id("a:b", 128).is_err());
        assert!(check_id("a b", 128).is_err());
        assert!(check_id("é", 128).is_err());
    }

    #[test]
    fn a_version_given_as_a_string_is_refused() {
        let d = map(json!({"v": "3", "w": -1, "x": 1.5, "y": 7}));
        assert!(opt_number(&d, "v").is_err());
        assert!(opt_number(&d, "w").is_err());
        assert!(opt_number(&d, "x").is_err());
        assert_eq!(opt_number(&d, "y").unwrap(), Some(7));
        assert_eq!(opt_number(&d, "z").unwrap(), None);
        assert!(number(&d, "z").is_err());
    }

    #[test]
    fn fields_must_be_an_object_of_limited_size() {
        let d = map(json!({"a": [1], "b": {"k": 1}, "c": {"": 1}}));
        assert!(fields(&d, "a").is_err());
        assert!(fields(&d, "b").is_ok());
        assert!(check_fields(&fields(&d, "c").unwrap(), 1024).is_err());
        let big = map(json!({"k": "x".repeat(2000)}));
        assert!(check_fields(&big, 1024).is_err());
    }

    #[test]
    fn if_match_accepts_plain_quoted_and_weak_versions() {
        assert_eq!(if_match("5").unwrap(), 5);
        assert_eq!(if_match("\"5\"").unwrap(), 5);
        assert_eq!(if_match("W/\"5\"").unwrap(), 5);
        assert!(if_match("*").is_err());
        assert!(if_match("abc").is_err());
    }
}
