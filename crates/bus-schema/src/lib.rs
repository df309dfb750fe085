//! The wafleet bus contract: what backends, the auth-coordinator and session workers send
//! each other over NATS. `docs/BUS.md` describes every subject and payload with examples.
//!
//! - [`v1`]: the public messages (package `wafleet.bus.v1`): commands, replies, events.
//! - [`internal::v1`]: coordinator <-> worker messages (package `wafleet.bus.internal.v1`).
//! - [`subject`]: subject builders and parsers, permission and consumer filters.
//! - [`decode_command`], [`decode_event`], [`decode_sys`], [`decode_reply`], [`encode`]:
//!   protobuf or proto3 JSON payloads, chosen by the `Content-Type` header.
//! - [`stream`]: the event stream's config and the `Nats-Msg-Id` dedup rule.
//!
//! The messages are prost types compiled from `proto/` with protox; their serde impls
//! follow the proto3 JSON mapping (lowerCamelCase names out, both spellings in).
//! With the `nats` feature, [`nats`] adds async-nats conversions.

pub mod codec;
pub mod command;
pub mod name;
#[cfg(feature = "nats")]
pub mod nats;
pub mod stream;
pub mod subject;
pub mod time;

/// Version 1 of the public contract (package `wafleet.bus.v1`), generated from
/// `proto/wafleet/bus/v1/*.proto`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/wafleet.bus.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/wafleet.bus.v1.serde.rs"));
}

/// Coordinator <-> worker messages.
pub mod internal {
    /// Package `wafleet.bus.internal.v1`, generated from
    /// `proto/wafleet/bus/internal/v1/coordination.proto`.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/wafleet.bus.internal.v1.rs"));
        include!(concat!(
            env!("OUT_DIR"),
            "/wafleet.bus.internal.v1.serde.rs"
        ));
    }
}

/// The encoded `FileDescriptorSet` of every bus proto (for reflection and tooling).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wafleet_bus_descriptors.bin"));

pub use codec::{
    decode, decode_command, decode_event, decode_reply, decode_sys, encode, event_subject,
    BusMessage, ContentType, DecodeError, EncodeError, SysMessage, CONTENT_TYPE_HEADER,
    CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF,
};
pub use command::{Command, CommandBody, CommandError, PhoneError};
pub use name::{NameError, NameKind, SessionAddress, SessionId, TenantId, WorkerId};
pub use stream::{event_msg_id, EventStreamConfig, EVENT_STREAM, MSG_ID_HEADER};
pub use subject::{
    CommandSubject, CommandVerb, EventKind, EventSubject, Subject, SubjectError, SysKind,
    SysSubject,
};
