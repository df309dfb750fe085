//! Framing: every frame is a 3-byte big-endian length followed by the payload.
//!
//! The client sends the intro header `57 41 06 03` (`"WA"`, magic 6, dictionary version 3)
//! once, glued in front of its first frame, optionally preceded by the edge-routing
//! pre-intro `"ED" 00 01 <len24 BE> <routing_info>`. The server sends no header.
//!
//! Several frames may share one WebSocket message and one frame may be split across several,
//! so [`FrameDecoder`] buffers: [`push`](FrameDecoder::push) arbitrary chunks in, take complete
//! frames out with [`next_frame`](FrameDecoder::next_frame).

use thiserror::Error;

/// The intro header a client sends before its first frame.
pub const INTRO_HEADER: [u8; 4] = [b'W', b'A', 6, 3];

/// The first four bytes of the optional edge-routing pre-intro.
pub const EDGE_ROUTING_MAGIC: [u8; 4] = [b'E', b'D', 0, 1];

/// Length of a frame's length prefix.
pub const LENGTH_PREFIX_LEN: usize = 3;

/// The largest payload a 3-byte length can describe (16 MiB − 1).
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

/// Framing errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A payload (or routing info) to encode does not fit in a 3-byte length.
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The payload length.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// An incoming frame announced a length above the decoder's cap.
    #[error("incoming frame of {len} bytes exceeds the cap of {max}")]
    IncomingTooLarge {
        /// The announced length.
        len: usize,
        /// The decoder's cap.
        max: usize,
    },
    /// The stream did not start with `WA 06 03` (or a well-formed edge-routing pre-intro).
    #[error("bad intro header: got {got:02x?}")]
    BadIntro {
        /// The offending bytes seen so far (at most the header length).
        got: Vec<u8>,
    },
}

/// Appends one frame (`len24 || payload`) to `out`.
pub fn encode_frame_into(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = payload.len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(LENGTH_PREFIX_LEN + len);
    out.extend_from_slice(&u24_be(len));
    out.extend_from_slice(payload);
    Ok(())
}

/// One frame (`len24 || payload`) as a new vector.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(payload, &mut out)?;
    Ok(out)
}

fn u24_be(len: usize) -> [u8; 3] {
    [(len >> 16) as u8, (len >> 8) as u8, len as u8]
}

/// The client's intro bytes: optional edge-routing pre-intro, then `WA 06 03`.
pub fn intro_bytes(routing_info: Option<&[u8]>) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    if let Some(ri) = routing_info {
        if ri.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len: ri.len(),
                max: MAX_FRAME_LEN,
            });
        }
        out.extend_from_slice(&EDGE_ROUTING_MAGIC);
        out.extend_from_slice(&u24_be(ri.len()));
        out.extend_from_slice(ri);
    }
    out.extend_from_slice(&INTRO_HEADER);
    Ok(out)
}

/// Encodes outgoing frames, gluing the intro header in front of the first one (client side).
#[derive(Debug, Clone)]
pub struct FrameEncoder {
    /// Intro bytes still to send; empty once sent (or for a server-side encoder).
    pending_intro: Vec<u8>,
}

impl FrameEncoder {
    /// A client encoder: `WA 06 03`, preceded by the edge-routing pre-intro when
    /// `routing_info` is given, goes out with the first frame.
    pub fn client(routing_info: Option<&[u8]>) -> Result<Self, FrameError> {
        Ok(Self {
            pending_intro: intro_bytes(routing_info)?,
        })
    }

    /// A server encoder: frames only, no intro header.
    pub fn server() -> Self {
        Self {
            pending_intro: Vec::new(),
        }
    }

    /// Whether the intro header has gone out (always true for a server encoder).
    pub fn intro_sent(&self) -> bool {
        self.pending_intro.is_empty()
    }

    /// The wire bytes for one frame, with the intro in front if this is the first frame.
    /// On error nothing is consumed: the intro stays pending.
    pub fn encode(&mut self, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out =
            Vec::with_capacity(self.pending_intro.len() + LENGTH_PREFIX_LEN + payload.len());
        self.encode_into(payload, &mut out)?;
        Ok(out)
    }

    /// Like [`encode`](Self::encode) but appends to `out`.
    pub fn encode_into(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if payload.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: MAX_FRAME_LEN,
            });
        }
        out.append(&mut self.pending_intro);
        encode_frame_into(payload, out)
    }
}

/// What the decoder expects at the start of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IntroState {
    /// Server mode, nothing validated yet.
    Expecting,
    /// Intro parsed (or client mode: none expected).
    Done,
}

/// Splits an incoming byte stream into frames.
///
/// In server mode the stream must start with the intro header (optionally preceded by an
/// edge-routing pre-intro, whose routing info is kept for [`routing_info`](Self::routing_info)).
/// A wrong intro is reported as soon as a byte mismatches. After an error the decoder is
/// poisoned and keeps returning that error.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unread data in `buf`.
    pos: usize,
    max_frame_len: usize,
    intro: IntroState,
    routing_info: Option<Vec<u8>>,
    error: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder for the client side: frames from the server, no intro.
    pub fn client() -> Self {
        Self::new(IntroState::Done)
    }

    /// A decoder for the server side: expects the intro header first.
    pub fn server() -> Self {
        Self::new(IntroState::Expecting)
    }

    fn new(intro: IntroState) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            max_frame_len: MAX_FRAME_LEN,
            intro,
            routing_info: None,
            error: None,
        }
    }

    /// Caps incoming frame (and routing info) lengths at `max` (itself capped at
    /// [`MAX_FRAME_LEN`]). Larger announced lengths fail with [`FrameError::IncomingTooLarge`]
    /// before any of the payload is buffered.
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max.min(MAX_FRAME_LEN);
        self
    }

    /// Appends bytes from the transport. Cheap: parsing happens in [`next_frame`](Self::next_frame).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        // Compact before growing so the buffer stays bounded by one frame plus one chunk.
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos >= 4096) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the server-side intro has been read (always true in client mode).
    pub fn intro_done(&self) -> bool {
        self.intro == IntroState::Done
    }

    /// The routing info of an edge-routing pre-intro, once read (server mode).
    pub fn routing_info(&self) -> Option<&[u8]> {
        self.routing_info.as_deref()
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame payload, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.next_frame_inner() {
            Ok(f) => Ok(f),
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn next_frame_inner(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.intro == IntroState::Expecting && !self.read_intro()? {
            return Ok(None);
        }
        let avail = &self.buf[self.pos..];
        let Some(len) = read_u24(avail) else {
            return Ok(None);
        };
        if len > self.max_frame_len {
            return Err(FrameError::IncomingTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let end = LENGTH_PREFIX_LEN + len;
        if avail.len() < end {
            return Ok(None);
        }
        let frame = avail[LENGTH_PREFIX_LEN..end].to_vec();
        self.pos += end;
        Ok(Some(frame))
    }

    /// Reads the intro (and optional pre-intro). `Ok(true)` once complete.
    fn read_intro(&mut self) -> Result<bool, FrameError> {
        let avail = &self.buf[self.pos..];
        let bad = |got: &[u8]| FrameError::BadIntro {
            got: got[..got.len().min(INTRO_HEADER.len())].to_vec(),
        };
        let mut off = 0;
        if avail.first() == Some(&EDGE_ROUTING_MAGIC[0]) {
            let n = avail.len().min(EDGE_ROUTING_MAGIC.len());
            if avail[..n] != EDGE_ROUTING_MAGIC[..n] {
                return Err(bad(avail));
            }
            let Some(len) = avail.get(4..).and_then(read_u24) else {
                return Ok(false);
            };
            if len > self.max_frame_len {
                return Err(FrameError::IncomingTooLarge {
                    len,
                    max: self.max_frame_len,
                });
            }
            off = 7 + len;
            if avail.len() < off {
                return Ok(false);
            }
        }
        let rest = &avail[off..];
        let n = rest.len().min(INTRO_HEADER.len());
        if rest[..n] != INTRO_HEADER[..n] {
            return Err(bad(rest));
        }
        if n < INTRO_HEADER.len() {
            return Ok(false);
        }
        if off > 0 {
            self.routing_info = Some(avail[7..off].to_vec());
        }
        self.pos += off + INTRO_HEADER.len();
        self.intro = IntroState::Done;
        Ok(true)
    }
}

fn read_u24(b: &[u8]) -> Option<usize> {
    match b {
        [a, b, c, ..] => Some(((*a as usize) << 16) | ((*b as usize) << 8) | *c as usize),
        _ => None,
    }
}
