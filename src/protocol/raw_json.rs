//! serde adapter for `bytes` fields in the JSON protocol.
//!
//! The JSON protocol embeds payloads (`data`, `info`, `conn_info`,
//! `chan_info`) as raw JSON, not base64. On the way out the payload must be
//! valid JSON and must not hold a raw newline, because several messages share
//! one frame separated by `\n`. In valid JSON a raw newline can only be
//! insignificant whitespace, so it is dropped.

use bytes::Bytes;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::value::RawValue;

pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| S::Error::custom("payload is not UTF-8 JSON"))?;
    let text = if text.contains(['\n', '\r']) {
        text.replace(['\n', '\r'], "")
    } else {
        text.to_owned()
    };
    let raw = RawValue::from_string(text).map_err(|_| S::Error::custom("payload is not JSON"))?;
    serde::Serialize::serialize(&raw, serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer).map_err(D::Error::custom)?;
    Ok(Bytes::from(raw.get().as_bytes().to_vec()))
}

/// True when `bytes` can be sent to a JSON client as it is.
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}
