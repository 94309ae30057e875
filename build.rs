//! Generates the protocol types from `proto/client.proto` in pure Rust
//! (protox parses the file, prost writes the code), so no `protoc` is needed.
//!
//! The same types carry the JSON variant of the protocol: every type derives
//! serde, `bytes` fields are embedded as raw JSON, and empty fields are
//! omitted except the few the protocol always sends.

use prost_types::field_descriptor_proto::{Label, Type};

/// Fields the JSON protocol sends even when empty (Centrifugo's non-omitempty tags).
const ALWAYS_PRESENT: &[&str] = &[
    "ClientInfo.user",
    "ClientInfo.client",
    "PresenceResult.presence",
    "PresenceStatsResult.num_clients",
    "PresenceStatsResult.num_users",
    "HistoryResult.publications",
    "HistoryResult.epoch",
    "HistoryResult.offset",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/client.proto");
    let fds = protox::compile(["proto/client.proto"], ["proto"])?;

    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.btree_map(["."]);
    config.type_attribute(
        ".",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
    );
    for file in &fds.file {
        let package = file.package();
        for message in &file.message_type {
            for field in &message.field {
                let short = format!("{}.{}", message.name(), field.name());
                let path = format!(".{package}.{short}");
                let is_map = field.type_name().ends_with("Entry")
                    && message
                        .nested_type
                        .iter()
                        .any(|n| field.type_name().ends_with(&format!(".{}", n.name())));
                let attr = if field.r#type() == Type::Bytes {
                    "#[serde(with = \"crate::protocol::raw_json\", skip_serializing_if = \"bytes::Bytes::is_empty\")]"
                } else if ALWAYS_PRESENT.contains(&short.as_str()) {
                    continue;
                } else if is_map {
                    "#[serde(skip_serializing_if = \"std::collections::BTreeMap::is_empty\")]"
                } else if field.label() == Label::Repeated {
                    "#[serde(skip_serializing_if = \"Vec::is_empty\")]"
                } else if field.r#type() == Type::Message {
                    "#[serde(skip_serializing_if = \"Option::is_none\")]"
                } else {
                    "#[serde(skip_serializing_if = \"crate::protocol::is_default\")]"
                };
                config.field_attribute(&path, attr);
            }
        }
    }
    config.compile_fds(fds)?;
    Ok(())
}
