//! The Centrifugo client protocol v2: wire types, codes and the two codecs.
//!
//! The types are generated from `proto/client.proto` (see `build.rs`) and
//! serve both encodings: the JSON variant through serde (bytes fields are raw
//! JSON, empty fields omitted), the Protobuf variant through prost. This
//! module owns the encoding rules and nothing else: it never decides what a
//! command means.

mod codec;
mod codes;
pub mod raw_json;

pub use codec::{DecodeError, EncodeError, Encoding, FrameBuilder};
pub use codes::{Disconnect, ErrorCode, UnsubscribeCode};

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/synchub.protocol.rs"));
}
pub use generated::*;

/// serde helper: omit a scalar field that holds its default value.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Error {
    /// The error reply body for a protocol error code.
    pub fn from_code(code: ErrorCode) -> Self {
        Self {
            code: code.code(),
            message: code.message().to_owned(),
            temporary: code.is_temporary(),
        }
    }

    /// A protocol error code with a message of our own.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
            temporary: code.is_temporary(),
        }
    }
}

impl Reply {
    /// A reply carrying an error for the command with `id`.
    pub fn error(id: u32, error: Error) -> Self {
        Self {
            id,
            error: Some(error),
            ..Self::default()
        }
    }

    /// A push (id 0) on `channel`.
    pub fn push(push: Push) -> Self {
        Self {
            push: Some(push),
            ..Self::default()
        }
    }

    /// The server ping: an empty reply (`{}` in JSON, one zero byte in Protobuf).
    pub fn ping() -> Self {
        Self::default()
    }
}

impl Command {
    /// The name of the method this command carries, for metrics and logs.
    pub fn method(&self) -> &'static str {
        if self.connect.is_some() {
            "connect"
        } else if self.subscribe.is_some() {
            "subscribe"
        } else if self.unsubscribe.is_some() {
            "unsubscribe"
        } else if self.publish.is_some() {
            "publish"
        } else if self.presence.is_some() {
            "presence"
        } else if self.presence_stats.is_some() {
            "presence_stats"
        } else if self.history.is_some() {
            "history"
        } else if self.ping.is_some() {
            "ping"
        } else if self.send.is_some() {
            "send"
        } else if self.rpc.is_some() {
            "rpc"
        } else if self.refresh.is_some() {
            "refresh"
        } else if self.sub_refresh.is_some() {
            "sub_refresh"
        } else {
            "unknown"
        }
    }

    /// A command with id 0 that is not `send` is a pong, whatever else it holds.
    pub fn is_pong(&self) -> bool {
        self.id == 0 && self.send.is_none()
    }
}
