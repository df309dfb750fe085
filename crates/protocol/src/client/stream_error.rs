//! Why a connection ended: `<stream:error>`, `<failure>`, keepalive and QR exhaustion
//! (protocol-notes §6).

use crate::binary::Node;

/// Why the server (or the session) ended the connection. [`DisconnectReason::should_reconnect`]
/// says whether the caller should open a new socket (with the same identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// `<stream:error><conflict type="replaced"/>`: another connection of this device took
    /// over. Never reconnect automatically (the two would keep kicking each other).
    Replaced,
    /// `<stream:error code="401">`, `<conflict type="device_removed">` or
    /// `<failure reason="401">`: the device was unlinked. Delete the identity.
    LoggedOut,
    /// `<failure reason="405">`: this client version is too old.
    ClientOutdated,
    /// `<failure reason="402">`: the account is temporarily banned (`expire` in seconds).
    TemporarilyBanned {
        /// The `expire` attribute, if present.
        expire: Option<u64>,
    },
    /// `<failure reason="406">`: the account is banned.
    Banned,
    /// `<failure reason="403">`: the primary device is gone or the account is locked.
    MainDeviceGone,
    /// Another `<failure reason=…>`.
    Failure {
        /// The reason code.
        reason: u16,
    },
    /// `<stream:error code="503">`: the service is unavailable; reconnect.
    ServiceUnavailable,
    /// Another `<stream:error>`.
    StreamError {
        /// The `code` attribute, if numeric.
        code: Option<u16>,
        /// The first child's tag, if any.
        detail: Option<String>,
    },
    /// `<xmlstreamend/>`: the server closed the stream.
    StreamEnd,
    /// A keepalive ping got no answer in time: the connection is dead.
    KeepaliveTimeout,
    /// All QR refs expired without the phone scanning one.
    QrExhausted,
}

impl DisconnectReason {
    /// Whether to reconnect automatically (with a backoff: `2 s × consecutive errors` is what
    /// whatsmeow uses).
    pub fn should_reconnect(&self) -> bool {
        match self {
            DisconnectReason::Replaced
            | DisconnectReason::LoggedOut
            | DisconnectReason::ClientOutdated
            | DisconnectReason::TemporarilyBanned { .. }
            | DisconnectReason::Banned
            | DisconnectReason::MainDeviceGone
            | DisconnectReason::QrExhausted => false,
            DisconnectReason::Failure { reason } => *reason >= 500,
            DisconnectReason::ServiceUnavailable
            | DisconnectReason::StreamError { .. }
            | DisconnectReason::StreamEnd
            | DisconnectReason::KeepaliveTimeout => true,
        }
    }

    /// Whether the stored identity is no longer valid and should be deleted.
    pub fn is_logged_out(&self) -> bool {
        matches!(self, DisconnectReason::LoggedOut)
    }
}

/// What a `<stream:error>` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamErrorKind {
    /// `code="515"`: restart required (normal right after pairing): reconnect now with the
    /// login payload.
    Restart,
    /// The connection is over.
    Disconnect(DisconnectReason),
}

fn code(node: &Node, key: &str) -> Option<u16> {
    node.attr_str(key).and_then(|c| c.parse().ok())
}

/// Classifies a `<stream:error>` node.
pub fn classify_stream_error(node: &Node) -> StreamErrorKind {
    let code = code(node, "code");
    if code == Some(515) {
        return StreamErrorKind::Restart;
    }
    if let Some(conflict) = node.child_by_tag("conflict") {
        match conflict.attr_str("type") {
            Some("replaced") => return StreamErrorKind::Disconnect(DisconnectReason::Replaced),
            Some("device_removed") => {
                return StreamErrorKind::Disconnect(DisconnectReason::LoggedOut)
            }
            _ => {}
        }
    }
    StreamErrorKind::Disconnect(match code {
        Some(401) => DisconnectReason::LoggedOut,
        Some(503) => DisconnectReason::ServiceUnavailable,
        _ => DisconnectReason::StreamError {
            code,
            detail: node.child_nodes().first().map(|c| c.tag.to_string()),
        },
    })
}

/// Classifies a `<failure reason=…>` node.
pub fn classify_failure(node: &Node) -> DisconnectReason {
    match code(node, "reason") {
        Some(401) => DisconnectReason::LoggedOut,
        Some(402) => DisconnectReason::TemporarilyBanned {
            expire: node.attr_str("expire").and_then(|e| e.parse().ok()),
        },
        Some(403) => DisconnectReason::MainDeviceGone,
        Some(405) => DisconnectReason::ClientOutdated,
        Some(406) => DisconnectReason::Banned,
        Some(reason) => DisconnectReason::Failure { reason },
        None => DisconnectReason::Failure { reason: 0 },
    }
}
