//! synchub: a real-time collaboration hub speaking the Centrifugo client protocol v2.
//!
//! Module map (what each module owns):
//! - `protocol`: wire types and the JSON/Protobuf codecs.
//! - `zoho`: the Zoho CRM v8 client and `zoho::sim`, the Zoho emulator.
pub mod protocol;
pub mod zoho;
