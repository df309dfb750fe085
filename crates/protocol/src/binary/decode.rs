//! Bytes → node.
//!
//! The decoder trusts nothing: every length is checked against the remaining input before
//! anything is read or allocated, nesting depth and inflated size are capped, and every
//! malformed input gives a [`DecodeError`] (offsets are into the unpacked body, i.e. after
//! the flag byte and after inflating). Strings in attribute positions must be UTF-8; raw
//! (`BINARY_*`) content is returned as [`Content::Bytes`], token and packed content as
//! [`Content::Str`], JID tags as [`Jid`]s.
//!
//! The decoder accepts a few non-canonical forms the encoder never writes (`LIST_EMPTY` as
//! an empty string, oversized length encodings, any pad nibble after an odd packed string,
//! `INTEROP_JID` with any server, `FB_JID` with any server but the four that take
//! `AD_JID`), so decode → encode is byte-exact only for
//! canonical input.

use std::io::Read;

use flate2::read::ZlibDecoder;

use super::node::{AttrValue, Content, Node, Text};
use super::{tag, token, FLAG_COMPRESSED};
use crate::jid::{Jid, Server};

/// Default nesting limit (the root node is depth 1). Real stanzas are under 10 deep.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Default cap on the size of an inflated (zlib) payload: 16 MiB.
pub const DEFAULT_MAX_INFLATED_LEN: usize = 16 << 20;

/// Resource limits for [`decode_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Deepest nesting accepted; deeper input is [`DecodeError::TooDeep`].
    pub max_depth: usize,
    /// Largest inflated payload accepted; larger is [`DecodeError::InflatedTooLarge`].
    pub max_inflated_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> DecodeLimits {
        DecodeLimits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_inflated_len: DEFAULT_MAX_INFLATED_LEN,
        }
    }
}

/// Why bytes are not a valid node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload has no flag byte.
    #[error("empty payload: no flag byte")]
    Empty,
    /// The compressed payload is not a valid zlib stream.
    #[error("invalid zlib payload: {0}")]
    Inflate(String),
    /// The compressed payload inflates to more than the limit.
    #[error("inflated payload is larger than {limit} bytes")]
    InflatedTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The input ends inside an item.
    #[error("unexpected end of input at offset {offset}: {needed} more bytes needed")]
    UnexpectedEnd {
        /// Where the missing bytes would start.
        offset: usize,
        /// How many bytes were needed from there.
        needed: usize,
    },
    /// A tag byte that is not valid in its position (includes unused bytes 240..=244).
    #[error("invalid tag {tag:#04x} at offset {offset}, expected {expected}")]
    InvalidTag {
        /// Where the tag is.
        offset: usize,
        /// The tag byte.
        tag: u8,
        /// What the position allows.
        expected: &'static str,
    },
    /// A nibble that means nothing in a packed string.
    #[error("invalid nibble {nibble:#x} in packed string at offset {offset}")]
    InvalidNibble {
        /// The byte holding the nibble.
        offset: usize,
        /// The nibble value.
        nibble: u8,
    },
    /// A packed string whose length byte says "odd" but has no bytes.
    #[error("packed string at offset {offset} is odd-length with no bytes")]
    InvalidPackedLength {
        /// Where the length byte is.
        offset: usize,
    },
    /// A raw string in a string position is not UTF-8.
    #[error("string at offset {offset} is not UTF-8")]
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: usize,
    },
    /// A node whose list size is 0.
    #[error("node at offset {offset} has list size 0")]
    EmptyNode {
        /// Where the node starts.
        offset: usize,
    },
    /// A node whose tag is the empty string.
    #[error("node at offset {offset} has an empty tag")]
    EmptyTag {
        /// Where the tag is.
        offset: usize,
    },
    /// A JID in a position that needs a plain string (tag, attribute key, JID part).
    #[error("JID at offset {offset} where a plain string is expected")]
    UnexpectedJid {
        /// Where the JID tag is.
        offset: usize,
    },
    /// A JID with an empty server.
    #[error("JID at offset {offset} has an empty server")]
    EmptyJidServer {
        /// Where the JID tag is.
        offset: usize,
    },
    /// An `FB_JID` on a server that has an `AD_JID` domain type (`s.whatsapp.net`, `lid`,
    /// `hosted`, `hosted.lid`): such devices are `AD_JID`s, and a 16-bit device there has no
    /// canonical form.
    #[error("FB_JID at offset {offset} names server {server}, which takes AD_JID")]
    FbJidOnAdServer {
        /// Where the JID tag is.
        offset: usize,
        /// The server it named.
        server: String,
    },
    /// Bytes left after the root node.
    #[error("{count} trailing bytes after the root node at offset {offset}")]
    TrailingBytes {
        /// Where the root node ends.
        offset: usize,
        /// How many bytes follow it.
        count: usize,
    },
    /// Nodes nested deeper than the limit.
    #[error("nodes nested deeper than {max} levels")]
    TooDeep {
        /// The limit in force.
        max: usize,
    },
}

/// Decodes a frame payload (flag byte, then the node, inflated first if flagged) with the
/// default [`DecodeLimits`].
pub fn decode(payload: &[u8]) -> Result<Node, DecodeError> {
    decode_with(payload, &DecodeLimits::default())
}

/// [`decode`] with explicit limits. Flag bits other than [`FLAG_COMPRESSED`] are ignored, as
/// in Baileys.
pub fn decode_with(payload: &[u8], limits: &DecodeLimits) -> Result<Node, DecodeError> {
    let (&flag, body) = payload.split_first().ok_or(DecodeError::Empty)?;
    if flag & FLAG_COMPRESSED != 0 {
        let body = inflate(body, limits.max_inflated_len)?;
        decode_unpacked_with(&body, limits)
    } else {
        decode_unpacked_with(body, limits)
    }
}

/// Decodes a node body (no flag byte, not compressed) with the default limits.
pub fn decode_unpacked(body: &[u8]) -> Result<Node, DecodeError> {
    decode_unpacked_with(body, &DecodeLimits::default())
}

/// [`decode_unpacked`] with explicit limits (only `max_depth` applies).
pub fn decode_unpacked_with(body: &[u8], limits: &DecodeLimits) -> Result<Node, DecodeError> {
    let mut reader = Reader {
        buf: body,
        pos: 0,
        max_depth: limits.max_depth,
    };
    let node = reader.node(1)?;
    if reader.pos != body.len() {
        return Err(DecodeError::TrailingBytes {
            offset: reader.pos,
            count: body.len() - reader.pos,
        });
    }
    Ok(node)
}

fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    ZlibDecoder::new(data)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Inflate(e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::InflatedTooLarge { limit });
    }
    Ok(out)
}

/// Whether `tag` introduces a JID rather than a string.
fn is_jid_tag(tag: u8) -> bool {
    matches!(
        tag,
        tag::JID_PAIR | tag::AD_JID | tag::FB_JID | tag::INTEROP_JID
    )
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::UnexpectedEnd {
                offset: self.pos,
                needed: n,
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.take_array()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take_array()?))
    }

    fn node(&mut self, depth: usize) -> Result<Node, DecodeError> {
        if depth > self.max_depth {
            return Err(DecodeError::TooDeep {
                max: self.max_depth,
            });
        }
        let start = self.pos;
        let list_tag = self.byte()?;
        let size = self.list_size(list_tag, start)?;
        if size == 0 {
            return Err(DecodeError::EmptyNode { offset: start });
        }
        let tag_offset = self.pos;
        let tag = self.string()?;
        if tag.is_empty() {
            return Err(DecodeError::EmptyTag { offset: tag_offset });
        }
        let attr_count = (size - 1) / 2;
        // Each attribute takes at least two bytes: never reserve beyond what the input holds.
        let mut attrs = Vec::with_capacity(attr_count.min(self.remaining() / 2));
        for _ in 0..attr_count {
            let key = self.string()?;
            let offset = self.pos;
            let tag = self.byte()?;
            let value = if is_jid_tag(tag) {
                AttrValue::Jid(self.jid(tag, offset)?)
            } else {
                AttrValue::Str(self.text(tag, offset)?)
            };
            attrs.push((key, value));
        }
        let content = if size % 2 == 0 {
            self.content(depth)?
        } else {
            Content::None
        };
        Ok(Node {
            tag,
            attrs,
            content,
        })
    }

    fn list_size(&mut self, tag: u8, offset: usize) -> Result<usize, DecodeError> {
        match tag {
            tag::LIST_EMPTY => Ok(0),
            tag::LIST_8 => Ok(usize::from(self.byte()?)),
            tag::LIST_16 => Ok(usize::from(self.u16()?)),
            _ => Err(DecodeError::InvalidTag {
                offset,
                tag,
                expected: "a list",
            }),
        }
    }

    fn content(&mut self, depth: usize) -> Result<Content, DecodeError> {
        let offset = self.pos;
        let tag = self.byte()?;
        match tag {
            tag::LIST_EMPTY | tag::LIST_8 | tag::LIST_16 => {
                let count = self.list_size(tag, offset)?;
                // Each node takes at least two bytes.
                let mut children = Vec::with_capacity(count.min(self.remaining() / 2));
                for _ in 0..count {
                    children.push(self.node(depth + 1)?);
                }
                Ok(Content::Nodes(children))
            }
            tag::BINARY_8 | tag::BINARY_20 | tag::BINARY_32 => {
                let len = self.binary_len(tag)?;
                Ok(Content::Bytes(self.take(len)?.to_vec()))
            }
            _ if is_jid_tag(tag) => Ok(Content::Jid(self.jid(tag, offset)?)),
            _ => Ok(Content::Str(self.text(tag, offset)?)),
        }
    }

    /// Length of a `BINARY_*` item whose tag was just read.
    fn binary_len(&mut self, tag: u8) -> Result<usize, DecodeError> {
        Ok(match tag {
            tag::BINARY_8 => usize::from(self.byte()?),
            tag::BINARY_20 => {
                let [b1, b2, b3] = self.take_array()?;
                (usize::from(b1 & 0x0f) << 16) | (usize::from(b2) << 8) | usize::from(b3)
            }
            _ => u32::from_be_bytes(self.take_array()?) as usize,
        })
    }

    /// A plain string (tag, attribute key, JID part): a JID here is an error.
    fn string(&mut self) -> Result<Text, DecodeError> {
        let offset = self.pos;
        let tag = self.byte()?;
        if is_jid_tag(tag) {
            return Err(DecodeError::UnexpectedJid { offset });
        }
        self.text(tag, offset)
    }

    /// Reads the string introduced by `tag` (read at `offset`); JID tags are handled by
    /// the callers.
    fn text(&mut self, tag: u8, offset: usize) -> Result<Text, DecodeError> {
        let s = match tag {
            tag::LIST_EMPTY => Text::Borrowed(""),
            tag::DICTIONARY_0..=tag::DICTIONARY_3 => {
                let index = self.byte()?;
                let token = token::double(tag - tag::DICTIONARY_0, index);
                // All four dictionaries are full, so this always succeeds.
                token
                    .ok_or(DecodeError::InvalidTag {
                        offset,
                        tag,
                        expected: "a string",
                    })?
                    .into()
            }
            tag::BINARY_8 | tag::BINARY_20 | tag::BINARY_32 => {
                let len = self.binary_len(tag)?;
                let start = self.pos;
                let bytes = self.take(len)?;
                std::str::from_utf8(bytes)
                    .map_err(|_| DecodeError::InvalidUtf8 { offset: start })?
                    .to_owned()
                    .into()
            }
            tag::NIBBLE_8 | tag::HEX_8 => self.packed(tag)?.into(),
            _ => match token::single(tag) {
                Some(token) => token.into(),
                None => {
                    return Err(DecodeError::InvalidTag {
                        offset,
                        tag,
                        expected: "a string",
                    })
                }
            },
        };
        Ok(s)
    }

    fn packed(&mut self, tag: u8) -> Result<String, DecodeError> {
        let len_offset = self.pos;
        let len_byte = self.byte()?;
        let count = usize::from(len_byte & 0x7f);
        let odd = len_byte & 0x80 != 0;
        if odd && count == 0 {
            return Err(DecodeError::InvalidPackedLength { offset: len_offset });
        }
        let start = self.pos;
        let bytes = self.take(count)?;
        // One table per packing: the ASCII byte of each nibble, 0 where the nibble is invalid.
        const NIBBLES: [u8; 16] = *b"0123456789-.\0\0\0\0";
        const HEX: [u8; 16] = *b"0123456789ABCDEF";
        let table = if tag == tag::NIBBLE_8 { &NIBBLES } else { &HEX };
        let unpack = |nibble: u8, i: usize| -> Result<u8, DecodeError> {
            match table[usize::from(nibble)] {
                0 => Err(DecodeError::InvalidNibble {
                    offset: start + i,
                    nibble,
                }),
                c => Ok(c),
            }
        };
        let mut out = Vec::with_capacity(count * 2);
        for (i, &b) in bytes.iter().enumerate() {
            out.push(unpack(b >> 4, i)?);
            // The low nibble of the last byte of an odd string is padding.
            if !(odd && i + 1 == count) {
                out.push(unpack(b & 0x0f, i)?);
            }
        }
        // Every byte comes from the ASCII tables above.
        String::from_utf8(out).map_err(|_| DecodeError::InvalidNibble {
            offset: start,
            nibble: 0,
        })
    }

    fn jid(&mut self, tag: u8, offset: usize) -> Result<Jid, DecodeError> {
        let server_string = |reader: &mut Reader<'a>| -> Result<Server, DecodeError> {
            let server = reader.string()?;
            if server.is_empty() {
                return Err(DecodeError::EmptyJidServer { offset });
            }
            Ok(Server::parse(&server))
        };
        match tag {
            tag::JID_PAIR => {
                let user = self.string()?.into_owned();
                let server = server_string(self)?;
                Ok(Jid::new(user, server))
            }
            tag::AD_JID => {
                let [domain, device] = self.take_array()?;
                let user = self.string()?.into_owned();
                let (server, agent) = match Server::from_domain_type(domain) {
                    Some(server) => (server, None),
                    None => (Server::WhatsApp, Some(domain)),
                };
                let mut jid = Jid::new(user, server).with_device(u16::from(device));
                jid.agent = agent;
                Ok(jid)
            }
            tag::FB_JID => {
                let user = self.string()?.into_owned();
                let device = self.u16()?;
                let server = server_string(self)?;
                if server.domain_type().is_some() {
                    return Err(DecodeError::FbJidOnAdServer {
                        offset,
                        server: server.as_str().to_owned(),
                    });
                }
                Ok(Jid::new(user, server).with_device(device))
            }
            _ => {
                let user = self.string()?.into_owned();
                let device = self.u16()?;
                let integrator = self.u16()?;
                let server = server_string(self)?;
                Ok(Jid::new(user, server)
                    .with_device(device)
                    .with_integrator(integrator))
            }
        }
    }
}
