//! The binary XML-like node codec ("WABinary"): tokens, packed strings, JIDs, and a JSON form.
//!
//! A frame payload is a flag byte followed by one node. Flag bit `0x02` means the rest is
//! zlib-compressed. A node is `LIST(2*nAttrs + 1 + hasContent)`, the tag string, the attribute
//! key/value strings and optionally the content (child list, bytes, string or JID).
//!
//! - [`token`]: the dictionaries (generated from Baileys' `constants.js`) and lookup.
//! - [`Node`], [`AttrValue`], [`Content`]: the tree.
//! - [`encode()`] / [`encode_into`]: node → bytes, byte-for-byte what Baileys writes for the
//!   same tree.
//! - [`decode()`] / [`decode_unpacked`]: bytes → node, bounded and panic-free on any input.
//! - [`json`]: the `{"tag", "attrs", "content"}` JSON form used by tests and the CLI.
//!
//! # Wire form of JIDs
//! The encoder picks the tag from the [`Jid`](crate::jid::Jid) fields:
//! - `integrator` set: `INTEROP_JID(user, u16 device, u16 integrator, server)` (needs a device);
//! - `device` set on `s.whatsapp.net`, `lid`, `hosted`, `hosted.lid`:
//!   `AD_JID(domainType, u8 device, user)`, where the domain type of `s.whatsapp.net` is the
//!   agent (default 0) and must not be another server's domain type (1, 128, 129);
//! - `device` set on any other server: `FB_JID(user, u16 device, server)` (Messenger's form);
//! - otherwise: `JID_PAIR(user or LIST_EMPTY, server)` (agent not allowed).
//!
//! The decoder reads the same tags back to the same fields, so encode → decode is the
//! identity on every encodable tree whose strings are canonical (see [`Content::Str`]).

mod decode;
mod encode;
pub mod json;
mod node;
pub mod token;

pub use decode::{
    decode, decode_unpacked, decode_unpacked_with, decode_with, DecodeError, DecodeLimits,
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_INFLATED_LEN,
};
pub use encode::{encode, encode_into, EncodeError, MAX_ENCODE_DEPTH};
pub use node::{AttrValue, Content, Node, Text};

/// Wire tag values (dictionary version 3).
pub mod tag {
    /// Empty list; also an absent string (`""` when read as a string).
    pub const LIST_EMPTY: u8 = 0;
    /// First double-byte dictionary; `DICTIONARY_0 + d` selects dictionary `d`.
    pub const DICTIONARY_0: u8 = 236;
    /// Second double-byte dictionary.
    pub const DICTIONARY_1: u8 = 237;
    /// Third double-byte dictionary.
    pub const DICTIONARY_2: u8 = 238;
    /// Fourth double-byte dictionary.
    pub const DICTIONARY_3: u8 = 239;
    /// Interop JID: user, u16 device, u16 integrator, server.
    pub const INTEROP_JID: u8 = 245;
    /// Messenger JID: user, u16 device, server.
    pub const FB_JID: u8 = 246;
    /// Device JID: domain type byte, device byte, user.
    pub const AD_JID: u8 = 247;
    /// List with a one-byte size.
    pub const LIST_8: u8 = 248;
    /// List with a two-byte big-endian size.
    pub const LIST_16: u8 = 249;
    /// JID: user (or `LIST_EMPTY`), server.
    pub const JID_PAIR: u8 = 250;
    /// Packed uppercase hex `[0-9A-F]`.
    pub const HEX_8: u8 = 251;
    /// Bytes with a one-byte length.
    pub const BINARY_8: u8 = 252;
    /// Bytes with a 20-bit length in three bytes.
    pub const BINARY_20: u8 = 253;
    /// Bytes with a four-byte big-endian length.
    pub const BINARY_32: u8 = 254;
    /// Packed digits `[0-9.-]`.
    pub const NIBBLE_8: u8 = 255;
    /// Longest string (in characters) that is packed.
    pub const PACKED_MAX: usize = 127;
}

/// Flag-byte bit meaning "the rest of the payload is zlib-compressed".
pub const FLAG_COMPRESSED: u8 = 0x02;
