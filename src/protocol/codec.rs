//! The two encodings of the protocol and how messages share a frame.
//!
//! JSON: text frames, one compact JSON object per message, messages joined
//! with `\n`. Protobuf: binary frames, each message prefixed with its varint
//! length. The command-handling path never sees the difference.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message as _;

use super::{Command, Reply};

/// The encoding negotiated for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    Protobuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON command: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed Protobuf command: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("declared message length {declared} exceeds the {remaining} bytes left in the frame")]
    LengthOverrun { declared: u64, remaining: usize },
    #[error("frame encoding does not match the negotiated protocol")]
    WrongFrameType,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("payload cannot be sent to a JSON client: {0}")]
    Json(#[from] serde_json::Error),
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Protobuf => "protobuf",
        }
    }

    /// Decodes every command of one frame, in order.
    pub fn decode_commands(self, frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
        match self {
            Self::Json => {
                let mut out = Vec::new();
                for line in frame.split(|b| *b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    out.push(serde_json::from_slice(line)?);
                }
                Ok(out)
            }
            Self::Protobuf => {
                let mut buf = frame;
                let mut out = Vec::new();
                while buf.has_remaining() {
                    let len = prost::encoding::decode_varint(&mut buf)?;
                    if len > buf.remaining() as u64 {
                        return Err(DecodeError::LengthOverrun {
                            declared: len,
                            remaining: buf.remaining(),
                        });
                    }
                    let (msg, rest) = buf.split_at(len as usize);
                    out.push(Command::decode(msg)?);
                    buf = rest;
                }
                Ok(out)
            }
        }
    }

    /// Encodes one message, ready to be placed in a frame.
    pub fn encode_reply(self, reply: &Reply) -> Result<Bytes, EncodeError> {
        match self {
            Self::Json => Ok(Bytes::from(serde_json::to_vec(reply)?)),
            Self::Protobuf => Ok(Bytes::from(reply.encode_length_delimited_to_vec())),
        }
    }

    /// Encodes one command (clients and tests use this).
    pub fn encode_command(self, command: &Command) -> Result<Bytes, EncodeError> {
        match self {
            Self::Json => Ok(Bytes::from(serde_json::to_vec(command)?)),
            Self::Protobuf => Ok(Bytes::from(command.encode_length_delimited_to_vec())),
        }
    }

    /// Decodes every reply of one frame (clients and tests use this).
    pub fn decode_replies(self, frame: &[u8]) -> Result<Vec<Reply>, DecodeError> {
        match self {
            Self::Json => frame
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .map(|l| serde_json::from_slice(l).map_err(DecodeError::from))
                .collect(),
            Self::Protobuf => {
                let mut buf = frame;
                let mut out = Vec::new();
                while buf.has_remaining() {
                    out.push(Reply::decode_length_delimited(&mut buf)?);
                }
                Ok(out)
            }
        }
    }
}

/// Joins encoded messages into one frame, up to a size budget.
pub struct FrameBuilder {
    encoding: Encoding,
    buf: BytesMut,
    count: usize,
}

impl FrameBuilder {
    pub fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            buf: BytesMut::new(),
            count: 0,
        }
    }

    pub fn push(&mut self, message: &[u8]) {
        if self.encoding == Encoding::Json && self.count > 0 {
            self.buf.extend_from_slice(b"\n");
        }
        self.buf.extend_from_slice(message);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn take(&mut self) -> Bytes {
        self.count = 0;
        self.buf.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        ClientInfo, ConnectResult, Error, HistoryResult, PresenceResult, PresenceStatsResult,
        Publication, Push, SubscribeRequest,
    };

    fn json(reply: &Reply) -> String {
        String::from_utf8(Encoding::Json.encode_reply(reply).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn js_sdk_first_frame_decodes_into_two_commands_in_order() {
        let frame = br#"{"connect":{"token":"t","name":"js"},"id":1}
{"subscribe":{"channel":"docs:42","recover":true,"offset":17,"epoch":"kYfTwrsm","flag":1},"id":2}"#;
        let cmds = Encoding::Json.decode_commands(frame).unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].connect.as_ref().unwrap().token, "t");
        let sub = cmds[1].subscribe.as_ref().unwrap();
        assert_eq!(
            (
                sub.channel.as_str(),
                sub.recover,
                sub.offset,
                sub.epoch.as_str(),
                sub.flag
            ),
            ("docs:42", true, 17, "kYfTwrsm", 1)
        );
    }

    #[test]
    fn unknown_json_fields_are_ignored() {
        let cmds = Encoding::Json
            .decode_commands(br#"{"id":3,"subscribe":{"channel":"a","tf":{"op":"x"},"future":[1,2]},"extra":true}"#)
            .unwrap();
        assert_eq!(cmds[0].subscribe.as_ref().unwrap().channel, "a");
    }

    #[test]
    fn empty_command_is_a_pong() {
        let cmds = Encoding::Json.decode_commands(b"{}").unwrap();
        assert!(cmds[0].is_pong());
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(Encoding::Json.decode_commands(b"{\"id\":1,").is_err());
        assert!(Encoding::Json.decode_commands(b"[1,2]").is_err());
    }

    #[test]
    fn ping_is_empty_object_and_single_zero_byte() {
        assert_eq!(json(&Reply::ping()), "{}");
        assert_eq!(
            Encoding::Protobuf
                .encode_reply(&Reply::ping())
                .unwrap()
                .as_ref(),
            &[0u8]
        );
    }

    #[test]
    fn connect_reply_snapshot() {
        let reply = Reply {
            id: 1,
            connect: Some(ConnectResult {
                client: "c1".into(),
                version: "0.1.0".into(),
                expires: true,
                ttl: 60,
                ping: 25,
                pong: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            json(&reply),
            r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","expires":true,"ttl":60,"ping":25,"pong":true}}"#
        );
    }

    #[test]
    fn publication_push_embeds_raw_json_without_newlines() {
        let reply = Reply::push(Push {
            channel: "chat".into(),
            r#pub: Some(Publication {
                data: Bytes::from_static(b"{\n  \"text\": \"a\\nb\"\n}"),
                offset: 7,
                info: Some(ClientInfo {
                    user: "42".into(),
                    client: "c".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let out = json(&reply);
        assert_eq!(
            out,
            r#"{"push":{"channel":"chat","pub":{"data":{  "text": "a\nb"},"info":{"user":"42","client":"c"},"offset":7}}}"#
        );
        assert!(!out.contains('\n'));
    }

    #[test]
    fn always_present_fields_are_sent_when_empty() {
        let presence = json(&Reply {
            id: 5,
            presence: Some(PresenceResult::default()),
            ..Default::default()
        });
        assert_eq!(presence, r#"{"id":5,"presence":{"presence":{}}}"#);
        let stats = json(&Reply {
            id: 6,
            presence_stats: Some(PresenceStatsResult::default()),
            ..Default::default()
        });
        assert_eq!(
            stats,
            r#"{"id":6,"presence_stats":{"num_clients":0,"num_users":0}}"#
        );
        let history = json(&Reply {
            id: 7,
            history: Some(HistoryResult::default()),
            ..Default::default()
        });
        assert_eq!(
            history,
            r#"{"id":7,"history":{"publications":[],"epoch":"","offset":0}}"#
        );
    }

    #[test]
    fn error_reply_always_has_a_message() {
        let out = json(&Reply::error(
            9,
            Error::from_code(crate::protocol::ErrorCode::Internal),
        ));
        assert_eq!(
            out,
            r#"{"id":9,"error":{"code":100,"message":"internal server error","temporary":true}}"#
        );
    }

    #[test]
    fn binary_payload_cannot_be_encoded_as_json() {
        let reply = Reply::push(Push {
            channel: "c".into(),
            r#pub: Some(Publication {
                data: Bytes::from_static(&[0xff, 0x00]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(Encoding::Json.encode_reply(&reply).is_err());
        assert!(Encoding::Protobuf.encode_reply(&reply).is_ok());
    }

    #[test]
    fn protobuf_frames_round_trip_several_commands() {
        let a = Command {
            id: 1,
            subscribe: Some(SubscribeRequest {
                channel: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let b = Command::default();
        let mut frame = FrameBuilder::new(Encoding::Protobuf);
        frame.push(&Encoding::Protobuf.encode_command(&a).unwrap());
        frame.push(&Encoding::Protobuf.encode_command(&b).unwrap());
        let cmds = Encoding::Protobuf.decode_commands(&frame.take()).unwrap();
        assert_eq!(cmds, vec![a, b]);
    }

    #[test]
    fn truncated_varint_and_overlong_length_are_errors() {
        assert!(Encoding::Protobuf.decode_commands(&[0x80]).is_err());
        assert!(matches!(
            Encoding::Protobuf.decode_commands(&[0xff, 0xff, 0xff, 0x7f, 1, 2]),
            Err(DecodeError::LengthOverrun { .. })
        ));
    }

    #[test]
    fn wrong_protobuf_field_type_is_an_error() {
        // Field 4 (connect) declared as varint instead of a length-delimited message.
        assert!(
            Encoding::Protobuf
                .decode_commands(&[2, 0x20, 0x01])
                .is_err()
        );
    }
}
