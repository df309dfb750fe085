//! Node → bytes.
//!
//! Strings are written in Baileys' order of preference: single-byte token, double-byte
//! token, `NIBBLE_8` (only `[0-9.-]`, at most 127 chars), `HEX_8` (only `[0-9A-F]`, uppercase,
//! at most 127 chars), then raw `BINARY_8/20/32`. The empty string is written raw (`fc 00`).
//! Unlike Baileys, a string is never turned into a JID here: JIDs are [`AttrValue::Jid`] /
//! [`Content::Jid`] values (the JSON form does Baileys' `@` guessing, see [`super::json`]).

use super::node::{AttrValue, Content, Node};
use super::tag;
use super::token::{self, Token};
use crate::jid::{Jid, Server};

/// Deepest nesting [`encode`] accepts (the root is depth 1): the decoder's default limit, so
/// whatever is encoded also decodes.
pub const MAX_ENCODE_DEPTH: usize = super::DEFAULT_MAX_DEPTH;

/// Largest list size (attributes × 2 + tag + content, or number of children): `LIST_16`.
const MAX_LIST: usize = u16::MAX as usize;

/// Why a node cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A node's tag is the empty string (decoders reject such nodes).
    #[error("node tag is empty")]
    EmptyTag,
    /// Too many attributes for a `LIST_16` size (2 × attributes + 1 + content ≤ 65535).
    #[error("node <{tag}> has {count} attributes, more than a list size can hold")]
    TooManyAttributes {
        /// The node's tag.
        tag: String,
        /// Its number of attributes.
        count: usize,
    },
    /// More than 65535 children.
    #[error("node <{tag}> has {count} children, more than 65535")]
    TooManyChildren {
        /// The node's tag.
        tag: String,
        /// Its number of children.
        count: usize,
    },
    /// A string or byte content of 2^32 bytes or more.
    #[error("{len} bytes is too long for BINARY_32")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A JID whose fields have no wire form (see the [module docs](super)).
    #[error("JID {jid} cannot be encoded: {reason}")]
    UnencodableJid {
        /// The JID's string form.
        jid: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nodes nested deeper than [`MAX_ENCODE_DEPTH`].
    #[error("nodes nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// Encodes `node` as a frame payload: the `0x00` flag byte (uncompressed) then the node.
pub fn encode(node: &Node) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    encode_into(node, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `node` (flag byte included) to `out`, for buffer reuse. On error
/// `out` is left as it was.
pub fn encode_into(node: &Node, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.push(0);
    let result = Writer { out }.node(node, 1);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn node(&mut self, node: &Node, depth: usize) -> Result<(), EncodeError> {
        if depth > MAX_ENCODE_DEPTH {
            return Err(EncodeError::TooDeep {
                max: MAX_ENCODE_DEPTH,
            });
        }
        if node.tag.is_empty() {
            return Err(EncodeError::EmptyTag);
        }
        let has_content = !matches!(node.content, Content::None);
        let size = node
            .attrs
            .len()
            .checked_mul(2)
            .map(|n| n + 1 + usize::from(has_content))
            .filter(|&n| n <= MAX_LIST)
            .ok_or_else(|| EncodeError::TooManyAttributes {
                tag: node.tag.to_string(),
                count: node.attrs.len(),
            })?;
        self.list_start(size);
        self.string(&node.tag)?;
        for (key, value) in &node.attrs {
            self.string(key)?;
            match value {
                AttrValue::Str(s) => self.string(s)?,
                AttrValue::Jid(jid) => self.jid(jid)?,
            }
        }
        match &node.content {
            Content::None => {}
            Content::Nodes(children) => {
                if children.len() > MAX_LIST {
                    return Err(EncodeError::TooManyChildren {
                        tag: node.tag.to_string(),
                        count: children.len(),
                    });
                }
                self.list_start(children.len());
                for child in children {
                    self.node(child, depth + 1)?;
                }
            }
            Content::Bytes(bytes) => self.raw(bytes)?,
            Content::Str(s) => self.string(s)?,
            Content::Jid(jid) => self.jid(jid)?,
        }
        Ok(())
    }

    /// `size` is at most [`MAX_LIST`] (checked by the callers).
    fn list_start(&mut self, size: usize) {
        match size {
            0 => self.out.push(tag::LIST_EMPTY),
            1..=255 => self.out.extend_from_slice(&[tag::LIST_8, size as u8]),
            _ => {
                self.out.push(tag::LIST_16);
                self.out.extend_from_slice(&(size as u16).to_be_bytes());
            }
        }
    }

    fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        if s.is_empty() {
            return self.raw(b"");
        }
        if let Some(token) = token::lookup(s) {
            match token {
                Token::Single(index) => self.out.push(index),
                Token::Double { dict, index } => self
                    .out
                    .extend_from_slice(&[tag::DICTIONARY_0 + dict, index]),
            }
            return Ok(());
        }
        if s.len() <= tag::PACKED_MAX {
            let bytes = s.as_bytes();
            if bytes.iter().all(|&b| nibble_code(b).is_some()) {
                self.packed(tag::NIBBLE_8, bytes, nibble_code);
                return Ok(());
            }
            if bytes.iter().all(|&b| hex_code(b).is_some()) {
                self.packed(tag::HEX_8, bytes, hex_code);
                return Ok(());
            }
        }
        self.raw(s.as_bytes())
    }

    /// Writes `bytes` (non-empty, ≤ 127, every byte accepted by `code`) two per byte.
    fn packed(&mut self, tag: u8, bytes: &[u8], code: impl Fn(u8) -> Option<u8>) {
        const PAD: u8 = 15;
        let half = bytes.len().div_ceil(2) as u8;
        let odd = bytes.len() % 2 == 1;
        self.out.push(tag);
        self.out.push(if odd { half | 0x80 } else { half });
        for pair in bytes.chunks(2) {
            let high = code(pair[0]).unwrap_or(PAD);
            let low = pair.get(1).and_then(|&b| code(b)).unwrap_or(PAD);
            self.out.push((high << 4) | low);
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let len = bytes.len();
        if len < 256 {
            self.out.extend_from_slice(&[tag::BINARY_8, len as u8]);
        } else if len < 1 << 20 {
            let [_, b1, b2, b3] = (len as u32).to_be_bytes();
            self.out.extend_from_slice(&[tag::BINARY_20, b1, b2, b3]);
        } else {
            let len = u32::try_from(len).map_err(|_| EncodeError::TooLong { len })?;
            self.out.push(tag::BINARY_32);
            self.out.extend_from_slice(&len.to_be_bytes());
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn jid(&mut self, jid: &Jid) -> Result<(), EncodeError> {
        let fail = |reason: &'static str| -> Result<(), EncodeError> {
            Err(EncodeError::UnencodableJid {
                jid: jid.to_string(),
                reason,
            })
        };
        if jid.server.as_str().is_empty() {
            return fail("empty server");
        }
        if let Some(integrator) = jid.integrator {
            let Some(device) = jid.device else {
                return fail("an interop JID needs a device");
            };
            if jid.agent.is_some() {
                return fail("an interop JID cannot have an agent");
            }
            self.out.push(tag::INTEROP_JID);
            self.string(&jid.user)?;
            self.out.extend_from_slice(&device.to_be_bytes());
            self.out.extend_from_slice(&integrator.to_be_bytes());
            return self.string(jid.server.as_str());
        }
        match (jid.device, jid.server.domain_type()) {
            (Some(device), Some(server_domain)) => {
                let domain = match (jid.agent, &jid.server) {
                    (None, _) => server_domain,
                    (Some(agent), Server::WhatsApp) => {
                        if Server::from_domain_type(agent).is_some() {
                            return fail("the agent is a known domain type; use its server");
                        }
                        agent
                    }
                    (Some(_), _) => return fail("only s.whatsapp.net JIDs can have an agent"),
                };
                let Ok(device) = u8::try_from(device) else {
                    return fail("AD_JID devices are at most 255");
                };
                self.out.extend_from_slice(&[tag::AD_JID, domain, device]);
                self.string(&jid.user)
            }
            (Some(device), None) => {
                if jid.agent.is_some() {
                    return fail("only s.whatsapp.net JIDs can have an agent");
                }
                self.out.push(tag::FB_JID);
                self.string(&jid.user)?;
                self.out.extend_from_slice(&device.to_be_bytes());
                self.string(jid.server.as_str())
            }
            (None, _) => {
                if jid.agent.is_some() {
                    return fail("an agent needs a device");
                }
                self.out.push(tag::JID_PAIR);
                if jid.user.is_empty() {
                    self.out.push(tag::LIST_EMPTY);
                } else {
                    self.string(&jid.user)?;
                }
                self.string(jid.server.as_str())
            }
        }
    }
}

/// Nibble code of `[0-9.-]`.
fn nibble_code(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'-' => Some(10),
        b'.' => Some(11),
        _ => None,
    }
}

/// Hex code of `[0-9A-F]` (lowercase is not packed).
fn hex_code(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
