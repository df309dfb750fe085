//! The framing of a session journal: what [`crate::FsSessionStore`] appends beside the
//! session file so that a message's state change costs one small write, not a rewrite of
//! the whole session.
//!
//! A journal is a sequence of records, each `length (u32 LE) | check (8 bytes) | payload`,
//! where `check` is the first 8 bytes of the payload's SHA-256. The first record is the
//! header: JSON `{"journal":1,"base":"<hex SHA-256 of the session file it extends>"}`; each
//! later record is one [`wafleet_messaging::StateChanges`] as JSON. A journal whose base is
//! not the session file on disk is stale (the session file was rewritten after it) and is
//! ignored. Records are appended and synced one at a time, so after a crash only the last
//! one can be incomplete: reading stops at the first record that is cut short or fails its
//! check, and that tail is cut off before the next append.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The journal format written by this code.
pub const JOURNAL_FORMAT: u32 = 1;

const FRAME: usize = 4 + 8;

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// One framed record.
pub fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME + payload.len());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&digest(payload)[..8]);
    out.extend_from_slice(payload);
    out
}

#[derive(Serialize, Deserialize)]
struct Header {
    journal: u32,
    base: String,
}

/// The header record of a journal extending the session file whose digest is `base`.
pub fn header(base: &[u8; 32]) -> Vec<u8> {
    let header = Header {
        journal: JOURNAL_FORMAT,
        base: hex::encode(base),
    };
    // A struct of a number and a string always serializes.
    record(&serde_json::to_vec(&header).unwrap_or_default())
}

/// What a journal holds for a given session file.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay<'a> {
    /// No journal, or one written for another session file (or in another format): there
    /// is nothing to apply, and the next append starts a new journal.
    Stale,
    /// The payloads of the change records, in order, and the length of the journal's
    /// intact part (header and those records). `torn` bytes after it are an incomplete
    /// or damaged record, to be cut off.
    Records {
        payloads: Vec<&'a [u8]>,
        len: u64,
        torn: u64,
    },
}

/// Reads `journal` as the journal of the session file whose digest is `base`.
pub fn replay<'a>(journal: &'a [u8], base: &[u8; 32]) -> Replay<'a> {
    let mut records = Frames { rest: journal };
    let Some(first) = records.next() else {
        return Replay::Stale;
    };
    let header: Option<Header> = serde_json::from_slice(first).ok();
    let ours = header.is_some_and(|h| h.journal == JOURNAL_FORMAT && h.base == hex::encode(base));
    if !ours {
        return Replay::Stale;
    }
    let payloads: Vec<&[u8]> = records.by_ref().collect();
    let torn = records.rest.len() as u64;
    Replay::Records {
        payloads,
        len: journal.len() as u64 - torn,
        torn,
    }
}

/// The intact records at the start of `rest`.
struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let frame = self.rest.get(..FRAME)?;
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let payload = self.rest.get(FRAME..FRAME.checked_add(len)?)?;
        if digest(payload)[..8] != frame[4..FRAME] {
            return None;
        }
        self.rest = &self.rest[FRAME + len..];
        Some(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(base: &[u8; 32], payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = header(base);
        for p in payloads {
            out.extend(record(p));
        }
        out
    }

    #[test]
    fn records_come_back_in_order_for_their_base_only() {
        let base = digest(b"session v1");
        let bytes = journal(&base, &[b"one", b"", b"three"]);
        assert_eq!(
            replay(&bytes, &base),
            Replay::Records {
                payloads: vec![&b"one"[..], b"", b"three"],
                len: bytes.len() as u64,
                torn: 0,
            }
        );
        assert_eq!(replay(&bytes, &digest(b"session v2")), Replay::Stale);
        assert_eq!(replay(b"", &base), Replay::Stale);
        assert_eq!(replay(&record(b"{\"journal\":1}"), &base), Replay::Stale);
    }

    #[test]
    fn a_torn_or_damaged_tail_stops_the_replay_and_is_measured() {
        let base = digest(b"session");
        let whole = journal(&base, &[b"first", b"second"]);
        let intact = journal(&base, &[b"first"]).len();
        // Every cut inside the last record keeps the first one only.
        for cut in intact..whole.len() {
            assert_eq!(
                replay(&whole[..cut], &base),
                Replay::Records {
                    payloads: vec![&b"first"[..]],
                    len: intact as u64,
                    torn: (cut - intact) as u64,
                },
                "cut at {cut}"
            );
        }
        // A flipped byte in the last payload fails its check.
        let mut damaged = whole.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(
            replay(&damaged, &base),
            Replay::Records {
                payloads: vec![&b"first"[..]],
                len: intact as u64,
                torn: (whole.len() - intact) as u64,
            }
        );
        // Zeros after the intact part (a crash after the file grew) are a torn tail too.
        let mut zeros = journal(&base, &[b"first"]);
        zeros.extend([0u8; 40]);
        assert!(matches!(
            replay(&zeros, &base),
            Replay::Records { torn: 40, .. }
        ));
    }
}
