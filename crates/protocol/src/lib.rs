//! Sans-IO implementation of the WhatsApp Web multi-device wire protocol.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock: callers push bytes
//! and events in and take bytes and events out. Randomness and the current time are passed
//! in by the caller, so every path is reproducible in tests. The runtime glue (WebSocket,
//! timers, storage) lives in the session worker.
//!
//! One module per protocol concern:
//! - [`frame`]: the 3-byte length framing and the `WA 06 03` intro header.
//! - [`noise`]: WhatsApp's Noise XX handshake (initiator and responder) and transport cipher.
//! - [`cert`]: the server's Noise certificate chain, verified against a pinned root key.
//! - [`binary`]: the binary XML-like node codec (tokens, packing, JIDs) and its JSON form.
//! - [`jid`]: WhatsApp addresses.
//! - [`proto`]: the protobuf messages the protocol uses.
//! - [`adv`]: the account-signed device identity of `pair-success` (both sides).
//! - [`pairing_code`]: pairing-code linking's key derivation and wrapping; phone numbers.
//! - [`qr`]: the linking QR code's text.
//! - [`message`]: end-to-end message content: `waE2E.Message` decode into typed content,
//!   text encoding, plaintext padding, message ids.
//! - [`xeddsa`]: XEdDSA signatures with libsignal's sign-bit convention.
//! - [`client`]: the companion's linking and login state machine (QR, pairing code,
//!   pair-success, stream errors, prekeys, keepalive).

pub mod adv;
pub mod binary;
pub mod cert;
pub mod client;
pub mod frame;
pub mod jid;
pub mod message;
pub mod noise;
pub mod pairing_code;
pub mod proto;
pub mod qr;
pub mod xeddsa;
