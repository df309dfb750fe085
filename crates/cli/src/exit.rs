//! Typed exit codes of `wafleet listen` and `wafleet send` (the other commands exit 1 on
//! any error; clap exits 2 on a usage error).

use std::process::ExitCode;

/// An error with its exit code; `main` prints `error: <message>` on stderr.
#[derive(Debug)]
pub struct Failure {
    /// The one-line message.
    pub message: String,
    /// The process exit code.
    pub code: u8,
}

/// Any other failure.
pub const OTHER: u8 = 1;
/// The session is not linked (run `wafleet link` first).
pub const NOT_LINKED: u8 = 3;
/// `--to` is not E.164 digits, a user JID or a group JID.
pub const INVALID_RECIPIENT: u8 = 4;
/// The recipient has no WhatsApp account.
pub const NO_SUCH_USER: u8 = 5;
/// No login or no server ack within `--timeout`.
pub const TIMEOUT: u8 = 6;

impl Failure {
    /// A failure with this code.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code,
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(OTHER, message)
    }
}
