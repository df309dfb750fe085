//! NATS subjects: typed builders, parsers and the filters that permissions and consumers use.
//!
//! ```text
//! wafleet.v1.<tenant>.cmd.session.<session>.<verb>     commands (request/reply)
//! wafleet.v1.<tenant>.evt.session.<session>.<kind>     events (JetStream stream WAFLEET_EVENTS)
//! wafleet.v1._sys.worker.<worker>.<kind>               worker -> coordinator (heartbeat,
//!                                                      lease_renew, lease_release,
//!                                                      shutdown, blob_commit)
//! wafleet.v1._sys.coord.<worker>.<kind>                coordinator -> worker
//! ```
//!
//! The tenant is the third token so a NATS permission on `wafleet.v1.<tenant>.>` scopes a
//! whole tenant, and `…session.<session>.*` a single session. Tenant names cannot start with
//! `_`, so no tenant can reach `_sys`.

use std::fmt;

use crate::name::{NameError, SessionAddress, SessionId, TenantId, WorkerId};

/// The first two tokens of every wafleet subject.
pub const PREFIX: &str = "wafleet.v1";
/// The token after [`PREFIX`] of internal subjects.
pub const SYS_TOKEN: &str = "_sys";

/// Every command subject of every tenant (the coordinator's subscription).
pub const ALL_COMMANDS: &str = "wafleet.v1.*.cmd.session.*.*";
/// Every event subject of every tenant: the subjects of the event stream.
pub const ALL_EVENTS: &str = "wafleet.v1.*.evt.>";
/// Every worker -> coordinator subject (the coordinator's subscription).
pub const ALL_FROM_WORKERS: &str = "wafleet.v1._sys.worker.*.*";
/// The queue group coordinators subscribe with, so each command is handled once.
pub const COORDINATOR_QUEUE_GROUP: &str = "wafleet-coordinator";

/// Why a subject is not a wafleet subject of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// It does not start with `wafleet.v1.`.
    #[error("subject {subject:?} does not start with \"wafleet.v1.\"")]
    NotWafleet {
        /// The subject.
        subject: String,
    },
    /// Too few or too many tokens for its shape.
    #[error("subject {subject:?} has {found} tokens; a {shape} subject has {expected}")]
    TokenCount {
        /// The subject.
        subject: String,
        /// Which kind of subject was expected.
        shape: &'static str,
        /// Tokens a subject of that shape has.
        expected: usize,
        /// Tokens found.
        found: usize,
    },
    /// A fixed token (`cmd`, `evt`, `session`, `_sys`, `worker`, `coord`) is not there.
    #[error("subject {subject:?}: token {index} is {found:?}, expected {expected}")]
    UnexpectedToken {
        /// The subject.
        subject: String,
        /// Zero-based token index.
        index: usize,
        /// What was expected there.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// The last token of a command subject is not a known verb.
    #[error("unknown command verb {0:?}")]
    UnknownVerb(String),
    /// The last token of an event subject is not a known event kind.
    #[error("unknown event kind {0:?}")]
    UnknownEventKind(String),
    /// The last token of an internal subject is not a known kind for its direction.
    #[error("unknown internal subject kind {0:?}")]
    UnknownSysKind(String),
    /// A tenant, session or worker token breaks the name rules.
    #[error("invalid name in subject: {0}")]
    InvalidName(#[from] NameError),
}

/// The verb of a command: the last token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandVerb {
    /// Register a session.
    Create,
    /// Lease it to a worker and connect.
    Start,
    /// Disconnect and release the lease; stays linked.
    Stop,
    /// Unlink the device on the phone, then stop.
    Logout,
    /// Stop, purge the blob, remove from the registry.
    Delete,
    /// Get a code to link by phone number.
    RequestPairingCode,
    /// Send a message (answered by the session's holder, not the coordinator).
    Send,
}

impl CommandVerb {
    /// Every verb.
    pub const ALL: [CommandVerb; 7] = [
        CommandVerb::Create,
        CommandVerb::Start,
        CommandVerb::Stop,
        CommandVerb::Logout,
        CommandVerb::Delete,
        CommandVerb::RequestPairingCode,
        CommandVerb::Send,
    ];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandVerb::Create => "create",
            CommandVerb::Start => "start",
            CommandVerb::Stop => "stop",
            CommandVerb::Logout => "logout",
            CommandVerb::Delete => "delete",
            CommandVerb::RequestPairingCode => "request_pairing_code",
            CommandVerb::Send => "send",
        }
    }

    /// The verb for a subject token.
    pub fn from_token(token: &str) -> Result<CommandVerb, SubjectError> {
        CommandVerb::ALL
            .into_iter()
            .find(|v| v.as_str() == token)
            .ok_or_else(|| SubjectError::UnknownVerb(token.to_string()))
    }
}

impl fmt::Display for CommandVerb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of an event: the last token of its subject, and the name of the envelope's
/// payload field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `SessionStatusChanged`.
    Status,
    /// `QrCode`.
    Qr,
    /// `PairingCodeIssued`.
    PairingCode,
    /// `Ready`.
    Ready,
    /// `Disconnected`.
    Disconnected,
    /// `Message`.
    Message,
    /// `Receipt`.
    Receipt,
    /// `MessageUndecryptable`.
    MessageUndecryptable,
    /// `MessageSentEvent`.
    MessageSent,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 9] = [
        EventKind::Status,
        EventKind::Qr,
        EventKind::PairingCode,
        EventKind::Ready,
        EventKind::Disconnected,
        EventKind::Message,
        EventKind::Receipt,
        EventKind::MessageUndecryptable,
        EventKind::MessageSent,
    ];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Qr => "qr",
            EventKind::PairingCode => "pairing_code",
            EventKind::Ready => "ready",
            EventKind::Disconnected => "disconnected",
            EventKind::Message => "message",
            EventKind::Receipt => "receipt",
            EventKind::MessageUndecryptable => "message_undecryptable",
            EventKind::MessageSent => "message_sent",
        }
    }

    /// The kind for a subject token.
    pub fn from_token(token: &str) -> Result<EventKind, SubjectError> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == token)
            .ok_or_else(|| SubjectError::UnknownEventKind(token.to_string()))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `wafleet.v1.<tenant>.cmd.session.<session>.<verb>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandSubject {
    /// Tenant and session.
    pub address: SessionAddress,
    /// The verb.
    pub verb: CommandVerb,
}

impl CommandSubject {
    /// A command subject.
    pub fn new(address: SessionAddress, verb: CommandVerb) -> Self {
        CommandSubject { address, verb }
    }

    /// Parses a subject; errors say which token is wrong.
    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let (address, last) = parse_session_subject(subject, "cmd", "command")?;
        Ok(CommandSubject {
            address,
            verb: CommandVerb::from_token(last)?,
        })
    }
}

impl fmt::Display for CommandSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.cmd.session.{}.{}",
            self.address.tenant, self.address.session, self.verb
        )
    }
}

/// `wafleet.v1.<tenant>.evt.session.<session>.<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSubject {
    /// Tenant and session.
    pub address: SessionAddress,
    /// The event kind.
    pub kind: EventKind,
}

impl EventSubject {
    /// An event subject.
    pub fn new(address: SessionAddress, kind: EventKind) -> Self {
        EventSubject { address, kind }
    }

    /// Parses a subject; errors say which token is wrong.
    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let (address, last) = parse_session_subject(subject, "evt", "event")?;
        Ok(EventSubject {
            address,
            kind: EventKind::from_token(last)?,
        })
    }
}

impl fmt::Display for EventSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.evt.session.{}.{}",
            self.address.tenant, self.address.session, self.kind
        )
    }
}

/// Which way an internal message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysDirection {
    /// Worker -> coordinator: `wafleet.v1._sys.worker.<worker>.<kind>`.
    FromWorker,
    /// Coordinator -> worker: `wafleet.v1._sys.coord.<worker>.<kind>`.
    ToWorker,
}

impl SysDirection {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            SysDirection::FromWorker => "worker",
            SysDirection::ToWorker => "coord",
        }
    }
}

/// The kind of an internal message: the last token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysKind {
    /// `WorkerHeartbeat`, published by the worker.
    Heartbeat,
    /// `LeaseRenew`, a request from the worker; reply `LeaseReply`.
    LeaseRenew,
    /// `LeaseRelease`, a request from the worker; reply `LeaseReply`.
    LeaseRelease,
    /// `WorkerShutdown`, published by the worker.
    Shutdown,
    /// `BlobCommit`, a request from the worker (the fencing step of a blob write); reply
    /// `LeaseReply`.
    BlobCommit,
    /// `LeaseGrant`, a request from the coordinator; reply `LeaseReply`.
    LeaseGrant,
    /// `LeaseRevoke`, a request from the coordinator; reply `LeaseReply`.
    LeaseRevoke,
    /// `ForwardedCommand`, a request from the coordinator; reply `v1::CommandReply`.
    Command,
}

impl SysKind {
    /// Every kind.
    pub const ALL: [SysKind; 8] = [
        SysKind::Heartbeat,
        SysKind::LeaseRenew,
        SysKind::LeaseRelease,
        SysKind::Shutdown,
        SysKind::BlobCommit,
        SysKind::LeaseGrant,
        SysKind::LeaseRevoke,
        SysKind::Command,
    ];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            SysKind::Heartbeat => "heartbeat",
            SysKind::LeaseRenew => "lease_renew",
            SysKind::LeaseRelease => "lease_release",
            SysKind::Shutdown => "shutdown",
            SysKind::BlobCommit => "blob_commit",
            SysKind::LeaseGrant => "lease_grant",
            SysKind::LeaseRevoke => "lease_revoke",
            SysKind::Command => "command",
        }
    }

    /// Which way messages of this kind go.
    pub fn direction(self) -> SysDirection {
        match self {
            SysKind::Heartbeat
            | SysKind::LeaseRenew
            | SysKind::LeaseRelease
            | SysKind::Shutdown
            | SysKind::BlobCommit => SysDirection::FromWorker,
            SysKind::LeaseGrant | SysKind::LeaseRevoke | SysKind::Command => SysDirection::ToWorker,
        }
    }

    /// The kind for a subject token under `direction`.
    pub fn from_token(direction: SysDirection, token: &str) -> Result<SysKind, SubjectError> {
        SysKind::ALL
            .into_iter()
            .find(|k| k.direction() == direction && k.as_str() == token)
            .ok_or_else(|| SubjectError::UnknownSysKind(token.to_string()))
    }
}

impl fmt::Display for SysKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `wafleet.v1._sys.worker.<worker>.<kind>` or `wafleet.v1._sys.coord.<worker>.<kind>`
/// (the direction follows from the kind).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SysSubject {
    /// The worker the message is from or for.
    pub worker: WorkerId,
    /// The message kind.
    pub kind: SysKind,
}

impl SysSubject {
    /// An internal subject.
    pub fn new(worker: WorkerId, kind: SysKind) -> Self {
        SysSubject { worker, kind }
    }

    /// Parses a subject; errors say which token is wrong.
    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let tokens = split_prefixed(subject)?;
        expect_count(subject, &tokens, 6, "internal")?;
        expect_token(subject, &tokens, 2, SYS_TOKEN)?;
        let direction = match tokens[3] {
            "worker" => SysDirection::FromWorker,
            "coord" => SysDirection::ToWorker,
            other => {
                return Err(SubjectError::UnexpectedToken {
                    subject: subject.to_string(),
                    index: 3,
                    expected: "\"worker\" or \"coord\"",
                    found: other.to_string(),
                })
            }
        };
        let worker = WorkerId::new(tokens[4])?;
        let kind = SysKind::from_token(direction, tokens[5])?;
        Ok(SysSubject { worker, kind })
    }
}

impl fmt::Display for SysSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{SYS_TOKEN}.{}.{}.{}",
            self.kind.direction().as_str(),
            self.worker,
            self.kind
        )
    }
}

/// Any wafleet subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A command.
    Command(CommandSubject),
    /// An event.
    Event(EventSubject),
    /// An internal message.
    Sys(SysSubject),
}

impl Subject {
    /// Parses any wafleet subject.
    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let tokens = split_prefixed(subject)?;
        match (tokens.get(2), tokens.get(3)) {
            (Some(&SYS_TOKEN), _) => SysSubject::parse(subject).map(Subject::Sys),
            (_, Some(&"cmd")) => CommandSubject::parse(subject).map(Subject::Command),
            (_, Some(&"evt")) => EventSubject::parse(subject).map(Subject::Event),
            (_, found) => Err(SubjectError::UnexpectedToken {
                subject: subject.to_string(),
                index: 3,
                expected: "\"cmd\" or \"evt\"",
                found: found.copied().unwrap_or_default().to_string(),
            }),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Command(s) => s.fmt(f),
            Subject::Event(s) => s.fmt(f),
            Subject::Sys(s) => s.fmt(f),
        }
    }
}

/// Every command subject of one tenant: `wafleet.v1.<tenant>.cmd.>`.
pub fn tenant_commands(tenant: &TenantId) -> String {
    format!("{PREFIX}.{tenant}.cmd.>")
}

/// Every command subject of one session: `wafleet.v1.<tenant>.cmd.session.<session>.*`.
pub fn session_commands(address: &SessionAddress) -> String {
    format!(
        "{PREFIX}.{}.cmd.session.{}.*",
        address.tenant, address.session
    )
}

/// Every event subject of one tenant: `wafleet.v1.<tenant>.evt.>` (a consumer filter).
pub fn tenant_events(tenant: &TenantId) -> String {
    format!("{PREFIX}.{tenant}.evt.>")
}

/// Every event subject of one session: `wafleet.v1.<tenant>.evt.session.<session>.*`.
pub fn session_events(address: &SessionAddress) -> String {
    format!(
        "{PREFIX}.{}.evt.session.{}.*",
        address.tenant, address.session
    )
}

/// What a worker publishes to: `wafleet.v1._sys.worker.<worker>.*`.
pub fn from_worker(worker: &WorkerId) -> String {
    format!("{PREFIX}.{SYS_TOKEN}.worker.{worker}.*")
}

/// What a worker subscribes to: `wafleet.v1._sys.coord.<worker>.*`.
pub fn to_worker(worker: &WorkerId) -> String {
    format!("{PREFIX}.{SYS_TOKEN}.coord.{worker}.*")
}

/// The reply-inbox prefix a tenant's backends connect with (async-nats
/// `ConnectOptions::custom_inbox_prefix`), so their subscribe permission can be
/// `_INBOX.<tenant>.>` instead of every inbox.
pub fn tenant_inbox_prefix(tenant: &TenantId) -> String {
    format!("_INBOX.{tenant}")
}

impl SessionAddress {
    /// The subject of a command to this session.
    pub fn command_subject(&self, verb: CommandVerb) -> CommandSubject {
        CommandSubject::new(self.clone(), verb)
    }

    /// The subject of an event of this session.
    pub fn event_subject(&self, kind: EventKind) -> EventSubject {
        EventSubject::new(self.clone(), kind)
    }
}

/// Splits a subject that must start with `wafleet.v1.`.
fn split_prefixed(subject: &str) -> Result<Vec<&str>, SubjectError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.len() < 3 || tokens[0] != "wafleet" || tokens[1] != "v1" {
        return Err(SubjectError::NotWafleet {
            subject: subject.to_string(),
        });
    }
    Ok(tokens)
}

fn expect_count(
    subject: &str,
    tokens: &[&str],
    expected: usize,
    shape: &'static str,
) -> Result<(), SubjectError> {
    if tokens.len() != expected {
        return Err(SubjectError::TokenCount {
            subject: subject.to_string(),
            shape,
            expected,
            found: tokens.len(),
        });
    }
    Ok(())
}

fn expect_token(
    subject: &str,
    tokens: &[&str],
    index: usize,
    expected: &'static str,
) -> Result<(), SubjectError> {
    if tokens[index] != expected {
        return Err(SubjectError::UnexpectedToken {
            subject: subject.to_string(),
            index,
            expected,
            found: tokens[index].to_string(),
        });
    }
    Ok(())
}

/// `wafleet.v1.<tenant>.<class>.session.<session>.<last>` → (address, last).
fn parse_session_subject<'a>(
    subject: &'a str,
    class: &'static str,
    shape: &'static str,
) -> Result<(SessionAddress, &'a str), SubjectError> {
    let tokens = split_prefixed(subject)?;
    expect_count(subject, &tokens, 7, shape)?;
    expect_token(subject, &tokens, 3, class)?;
    expect_token(subject, &tokens, 4, "session")?;
    let address = SessionAddress {
        tenant: TenantId::new(tokens[2])?,
        session: SessionId::new(tokens[5])?,
    };
    Ok((address, tokens[6]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::NameKind;

    fn acme_default() -> SessionAddress {
        SessionAddress::new("acme", "default").unwrap()
    }

    #[test]
    fn command_subject_layout() {
        let s = acme_default().command_subject(CommandVerb::RequestPairingCode);
        assert_eq!(
            s.to_string(),
            "wafleet.v1.acme.cmd.session.default.request_pairing_code"
        );
        assert_eq!(CommandSubject::parse(&s.to_string()), Ok(s));
    }

    #[test]
    fn event_subject_layout() {
        let s = acme_default().event_subject(EventKind::PairingCode);
        assert_eq!(
            s.to_string(),
            "wafleet.v1.acme.evt.session.default.pairing_code"
        );
        assert_eq!(EventSubject::parse(&s.to_string()), Ok(s));
    }

    #[test]
    fn sys_subject_layout() {
        let w = WorkerId::new("worker-0").unwrap();
        let hb = SysSubject::new(w.clone(), SysKind::Heartbeat);
        assert_eq!(hb.to_string(), "wafleet.v1._sys.worker.worker-0.heartbeat");
        let grant = SysSubject::new(w, SysKind::LeaseGrant);
        assert_eq!(
            grant.to_string(),
            "wafleet.v1._sys.coord.worker-0.lease_grant"
        );
        assert_eq!(SysSubject::parse(&grant.to_string()), Ok(grant));
    }

    #[test]
    fn blob_commit_is_a_worker_subject() {
        let w = WorkerId::new("worker-0").unwrap();
        let commit = SysSubject::new(w, SysKind::BlobCommit);
        assert_eq!(
            commit.to_string(),
            "wafleet.v1._sys.worker.worker-0.blob_commit"
        );
        assert_eq!(SysSubject::parse(&commit.to_string()), Ok(commit));
        assert_eq!(
            SysSubject::parse("wafleet.v1._sys.coord.worker-0.blob_commit"),
            Err(SubjectError::UnknownSysKind("blob_commit".into()))
        );
    }

    #[test]
    fn a_kind_under_the_wrong_direction_is_unknown() {
        assert_eq!(
            SysSubject::parse("wafleet.v1._sys.worker.w1.lease_grant"),
            Err(SubjectError::UnknownSysKind("lease_grant".into()))
        );
        assert_eq!(
            SysSubject::parse("wafleet.v1._sys.coord.w1.heartbeat"),
            Err(SubjectError::UnknownSysKind("heartbeat".into()))
        );
    }

    #[test]
    fn rejections_are_typed() {
        assert!(matches!(
            CommandSubject::parse("other.v1.acme.cmd.session.s.start"),
            Err(SubjectError::NotWafleet { .. })
        ));
        assert!(matches!(
            CommandSubject::parse("wafleet.v2.acme.cmd.session.s.start"),
            Err(SubjectError::NotWafleet { .. })
        ));
        assert!(matches!(
            CommandSubject::parse("wafleet.v1.acme.cmd.session.s"),
            Err(SubjectError::TokenCount {
                expected: 7,
                found: 6,
                ..
            })
        ));
        assert!(matches!(
            CommandSubject::parse("wafleet.v1.acme.evt.session.s.start"),
            Err(SubjectError::UnexpectedToken { index: 3, .. })
        ));
        assert!(matches!(
            CommandSubject::parse("wafleet.v1.acme.cmd.sessions.s.start"),
            Err(SubjectError::UnexpectedToken { index: 4, .. })
        ));
        assert_eq!(
            CommandSubject::parse("wafleet.v1.acme.cmd.session.s.restart"),
            Err(SubjectError::UnknownVerb("restart".into()))
        );
        assert_eq!(
            EventSubject::parse("wafleet.v1.acme.evt.session.s.message_deleted"),
            Err(SubjectError::UnknownEventKind("message_deleted".into()))
        );
        assert_eq!(
            CommandSubject::parse("wafleet.v1.*.cmd.session.s.start"),
            Err(SubjectError::InvalidName(NameError::InvalidChar {
                kind: NameKind::Tenant,
                found: '*',
                position: 0
            }))
        );
        assert_eq!(
            CommandSubject::parse("wafleet.v1.acme.cmd.session.>.start"),
            Err(SubjectError::InvalidName(NameError::InvalidChar {
                kind: NameKind::Session,
                found: '>',
                position: 0
            }))
        );
        // `_sys` as a tenant would be an internal subject: never a command.
        assert!(matches!(
            CommandSubject::parse("wafleet.v1._sys.cmd.session.s.start"),
            Err(SubjectError::InvalidName(NameError::BadStart { .. }))
        ));
        assert!(matches!(
            CommandSubject::parse("wafleet.v1.acme.cmd.session..start"),
            Err(SubjectError::InvalidName(NameError::Empty { .. }))
        ));
    }

    #[test]
    fn any_subject_dispatches_on_shape() {
        for s in [
            "wafleet.v1.acme.cmd.session.s1.stop",
            "wafleet.v1.acme.evt.session.s1.ready",
            "wafleet.v1._sys.coord.w.command",
        ] {
            assert_eq!(Subject::parse(s).map(|p| p.to_string()), Ok(s.to_string()));
        }
        assert!(matches!(
            Subject::parse("wafleet.v1.acme"),
            Err(SubjectError::UnexpectedToken { index: 3, .. })
        ));
    }

    #[test]
    fn filters() {
        let a = acme_default();
        assert_eq!(tenant_commands(&a.tenant), "wafleet.v1.acme.cmd.>");
        assert_eq!(
            session_commands(&a),
            "wafleet.v1.acme.cmd.session.default.*"
        );
        assert_eq!(tenant_events(&a.tenant), "wafleet.v1.acme.evt.>");
        assert_eq!(session_events(&a), "wafleet.v1.acme.evt.session.default.*");
        let w = WorkerId::new("w7").unwrap();
        assert_eq!(from_worker(&w), "wafleet.v1._sys.worker.w7.*");
        assert_eq!(to_worker(&w), "wafleet.v1._sys.coord.w7.*");
        assert_eq!(tenant_inbox_prefix(&a.tenant), "_INBOX.acme");
    }
}
