//! synchub: a real-time collaboration hub speaking the Centrifugo client protocol v2.
//!
//! Module map (what each module owns):
//! - `protocol`: wire types and the JSON/Protobuf codecs.
pub mod protocol;
