//! What a [`SessionDriver`](crate::SessionDriver) reports to its caller, with a JSON form
//! (`{"event":"qr",…}`, one object per event) and snake_case reason codes.

use serde::Serialize;
use wafleet_protocol::client::DisconnectReason;

/// A string that holds a secret (a QR text carries the ADV secret, a pairing code is a
/// password): serialized as the plain string on purpose, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    /// The text, shown on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Events of one driven session. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DriverEvent {
    /// Show this QR (text for [`QrImage`](crate::qr::QrImage)) until `expires_at`.
    Qr {
        /// The QR text.
        code: Secret,
        /// When it stops being valid.
        expires_at: u64,
        /// 0 for the first QR of a connection.
        seq: u32,
        /// How many more QRs this connection will show.
        remaining: u32,
    },
    /// Show this pairing code (`XXXX-XXXX`); the user types it on the phone.
    PairingCode {
        /// The code.
        code: Secret,
        /// When it stops being valid (the end of the QR socket).
        expires_at: u64,
    },
    /// The pairing-code request failed; QR linking goes on.
    PairingCodeFailed {
        /// What went wrong.
        reason: String,
    },
    /// The phone linked this device; the identity is saved.
    Paired {
        /// Our device JID.
        jid: String,
        /// Our LID, if given.
        lid: Option<String>,
    },
    /// Logged in.
    Ready {
        /// Our device JID.
        jid: String,
        /// Our LID, if known.
        lid: Option<String>,
    },
    /// New one-time prekeys were saved and their upload sent to the server.
    PreKeysUploaded {
        /// How many.
        count: usize,
    },
    /// The server's `pair-success` did not verify (nothing was saved).
    AuthFailure {
        /// `hmac_mismatch`, `signature_mismatch` or `invalid_device_identity`.
        reason: String,
        /// The verification error.
        detail: String,
    },
    /// The connection ended.
    Disconnected {
        /// A reason code ([`reason_code`] or a driver-side code such as `connection_lost`).
        reason: String,
        /// Whether the driver will connect again.
        will_reconnect: bool,
    },
    /// The driver stopped for good. Always the last event, unless the caller stopped it.
    Failed {
        /// A reason code: `logged_out`, `replaced`, `qr_exhausted`, `client_outdated`,
        /// `temporarily_banned`, `banned`, `main_device_gone`, `server_failure`,
        /// `storage_error`, `unreachable`, ….
        reason: String,
        /// A human-readable account.
        detail: String,
    },
}

/// The snake_case code of a disconnect reason.
pub fn reason_code(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::Replaced => "replaced",
        DisconnectReason::LoggedOut => "logged_out",
        DisconnectReason::ClientOutdated => "client_outdated",
        DisconnectReason::TemporarilyBanned { .. } => "temporarily_banned",
        DisconnectReason::Banned => "banned",
        DisconnectReason::MainDeviceGone => "main_device_gone",
        DisconnectReason::Failure { .. } => "server_failure",
        DisconnectReason::ServiceUnavailable => "service_unavailable",
        DisconnectReason::StreamError { .. } => "stream_error",
        DisconnectReason::StreamEnd => "stream_end",
        DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
        DisconnectReason::QrExhausted => "qr_exhausted",
    }
}

/// A human-readable account of a disconnect reason.
pub fn reason_detail(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::Replaced => "another connection of this device took over".into(),
        DisconnectReason::LoggedOut => "the device was unlinked (logged out)".into(),
        DisconnectReason::ClientOutdated => "the server refused this client version".into(),
        DisconnectReason::TemporarilyBanned { expire } => match expire {
            Some(s) => format!("the account is temporarily banned for {s} s"),
            None => "the account is temporarily banned".into(),
        },
        DisconnectReason::Banned => "the account is banned".into(),
        DisconnectReason::MainDeviceGone => "the primary device is gone or locked".into(),
        DisconnectReason::Failure { reason } => format!("server failure {reason}"),
        DisconnectReason::ServiceUnavailable => "service unavailable (503)".into(),
        DisconnectReason::StreamError { code, detail } => format!(
            "stream error {} {}",
            code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
            detail.as_deref().unwrap_or("")
        ),
        DisconnectReason::StreamEnd => "the server ended the stream".into(),
        DisconnectReason::KeepaliveTimeout => "keepalive ping unanswered".into(),
        DisconnectReason::QrExhausted => "no QR code was scanned in time".into(),
    }
}

impl DriverEvent {
    /// The event as one line of JSON.
    pub fn to_json_line(&self) -> String {
        // Every field is a string, number, bool or option of those: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"event":"error","reason":"serialize","detail":"{e}"}}"#)
        })
    }

    /// Whether this is the driver's last event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, DriverEvent::Failed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(e: &DriverEvent) -> Value {
        let line = e.to_json_line();
        assert!(!line.contains('\n'));
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn events_serialize_as_documented() {
        assert_eq!(
            parse(&DriverEvent::Qr {
                code: Secret::new("2@ref,a,b,c,1".into()),
                expires_at: 1_700_000_060_000,
                seq: 0,
                remaining: 5
            }),
            json!({"event":"qr","code":"2@ref,a,b,c,1","expires_at":1_700_000_060_000u64,"seq":0,"remaining":5})
        );
        assert_eq!(
            parse(&DriverEvent::PairingCode {
                code: Secret::new("ABCD-EFGH".into()),
                expires_at: 5
            }),
            json!({"event":"pairing_code","code":"ABCD-EFGH","expires_at":5})
        );
        assert_eq!(
            parse(&DriverEvent::Ready {
                jid: "15551234567:3@s.whatsapp.net".into(),
                lid: None
            }),
            json!({"event":"ready","jid":"15551234567:3@s.whatsapp.net","lid":null})
        );
        assert_eq!(
            parse(&DriverEvent::Disconnected {
                reason: "connection_lost".into(),
                will_reconnect: true
            }),
            json!({"event":"disconnected","reason":"connection_lost","will_reconnect":true})
        );
        assert_eq!(
            parse(&DriverEvent::AuthFailure {
                reason: "hmac_mismatch".into(),
                detail: "d".into()
            }),
            json!({"event":"auth_failure","reason":"hmac_mismatch","detail":"d"})
        );
        assert_eq!(
            parse(&DriverEvent::PreKeysUploaded { count: 812 }),
            json!({"event":"pre_keys_uploaded","count":812})
        );
        assert_eq!(
            parse(&DriverEvent::Failed {
                reason: "qr_exhausted".into(),
                detail: "x".into()
            })["event"],
            "failed"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let e = DriverEvent::PairingCode {
            code: Secret::new("ABCD-EFGH".into()),
            expires_at: 1,
        };
        assert!(!format!("{e:?}").contains("ABCD"));
    }

    #[test]
    fn reason_codes_are_snake_case_and_distinct() {
        let reasons = [
            DisconnectReason::Replaced,
            DisconnectReason::LoggedOut,
            DisconnectReason::ClientOutdated,
            DisconnectReason::TemporarilyBanned { expire: None },
            DisconnectReason::Banned,
            DisconnectReason::MainDeviceGone,
            DisconnectReason::Failure { reason: 500 },
            DisconnectReason::ServiceUnavailable,
            DisconnectReason::StreamError {
                code: None,
                detail: None,
            },
            DisconnectReason::StreamEnd,
            DisconnectReason::KeepaliveTimeout,
            DisconnectReason::QrExhausted,
        ];
        let codes: std::collections::HashSet<_> = reasons.iter().map(reason_code).collect();
        assert_eq!(codes.len(), reasons.len());
        for c in codes {
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
        }
    }
}
