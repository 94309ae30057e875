//! Error, unsubscribe and disconnect codes of the protocol, with the exact
//! messages and reconnect advice the SDKs act on.

/// Reply error codes (`error.code` in a reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Internal,
    Unauthorized,
    UnknownChannel,
    PermissionDenied,
    MethodNotFound,
    AlreadySubscribed,
    LimitExceeded,
    BadRequest,
    NotAvailable,
    TokenExpired,
    Expired,
    TooManyRequests,
    UnrecoverablePosition,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            Self::Internal => 100,
            Self::Unauthorized => 101,
            Self::UnknownChannel => 102,
            Self::PermissionDenied => 103,
            Self::MethodNotFound => 104,
            Self::AlreadySubscribed => 105,
            Self::LimitExceeded => 106,
            Self::BadRequest => 107,
            Self::NotAvailable => 108,
            Self::TokenExpired => 109,
            Self::Expired => 110,
            Self::TooManyRequests => 111,
            Self::UnrecoverablePosition => 112,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Internal => "internal server error",
            Self::Unauthorized => "unauthorized",
            Self::UnknownChannel => "unknown channel",
            Self::PermissionDenied => "permission denied",
            Self::MethodNotFound => "method not found",
            Self::AlreadySubscribed => "already subscribed",
            Self::LimitExceeded => "limit exceeded",
            Self::BadRequest => "bad request",
            Self::NotAvailable => "not available",
            Self::TokenExpired => "token expired",
            Self::Expired => "expired",
            Self::TooManyRequests => "too many requests",
            Self::UnrecoverablePosition => "unrecoverable position",
        }
    }

    /// Temporary errors make the SDKs retry the operation.
    pub fn is_temporary(self) -> bool {
        matches!(self, Self::Internal | Self::TooManyRequests)
    }
}

/// Codes of the `unsubscribe` push: below 2500 the SDK stays unsubscribed,
/// from 2500 it resubscribes (and recovers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeCode {
    Server,
    InsufficientState,
    Expired,
}

impl UnsubscribeCode {
    pub fn code(self) -> u32 {
        match self {
            Self::Server => 2000,
            Self::InsufficientState => 2500,
            Self::Expired => 2501,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Server => "server unsubscribe",
            Self::InsufficientState => "insufficient state",
            Self::Expired => "subscription expired",
        }
    }
}

/// A disconnect, sent to WebSocket clients as a close frame. Codes 3000-3499
/// and 4000-4499 advise a reconnect; 3500-3999 and 4500-4999 are terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: String,
}

impl Disconnect {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        // A close frame reason must stay under 123 bytes.
        if reason.len() > 120 {
            let mut cut = 120;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self { code, reason }
    }

    pub fn shutdown() -> Self {
        Self::new(3001, "shutdown")
    }
    pub fn internal() -> Self {
        Self::new(3004, "internal server error")
    }
    pub fn expired() -> Self {
        Self::new(3005, "connection expired")
    }
    pub fn slow() -> Self {
        Self::new(3008, "slow")
    }
    pub fn write_error() -> Self {
        Self::new(3009, "write error")
    }
    pub fn insufficient_state() -> Self {
        Self::new(3010, "insufficient state")
    }
    pub fn force_reconnect() -> Self {
        Self::new(3011, "force reconnect")
    }
    pub fn no_pong() -> Self {
        Self::new(3012, "no pong")
    }
    pub fn too_many_requests() -> Self {
        Self::new(3013, "too many requests")
    }
    pub fn invalid_token() -> Self {
        Self::new(3500, "invalid token")
    }
    pub fn bad_request() -> Self {
        Self::new(3501, "bad request")
    }
    pub fn stale() -> Self {
        Self::new(3502, "stale")
    }
    pub fn force_disconnect() -> Self {
        Self::new(3503, "force disconnect")
    }
    pub fn connection_limit() -> Self {
        Self::new(3504, "connection limit")
    }
    pub fn channel_limit() -> Self {
        Self::new(3505, "channel limit")
    }
    pub fn inappropriate_protocol() -> Self {
        Self::new(3506, "inappropriate protocol")
    }
    pub fn permission_denied() -> Self {
        Self::new(3507, "permission denied")
    }
    pub fn not_available() -> Self {
        Self::new(3508, "not available")
    }
    pub fn too_many_errors() -> Self {
        Self::new(3509, "too many errors")
    }
    /// WebSocket close 1009: an inbound message over the size limit.
    pub fn message_too_big() -> Self {
        Self::new(1009, "message size limit exceeded")
    }

    /// Whether the SDKs reconnect after this code.
    pub fn reconnect(&self) -> bool {
        !matches!(self.code, 3500..=3999 | 4500..=4999)
    }
}
