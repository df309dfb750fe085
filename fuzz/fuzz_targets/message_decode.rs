//! The message content decoder on arbitrary bytes (as they are, and unpadded): it must never panic,
//! and a text it reads must re-encode to bytes that decode to the same text (compared as
//! bytes after one round: the quoted message may hold a NaN, which is not equal to itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wafleet_protocol::message::{self, MessageContent};
use wafleet_signal::padding;

fuzz_target!(|data: &[u8]| {
    if let Ok(unpadded) = padding::unpad(data) {
        let _ = message::decode(unpadded);
    }
    let Ok(decoded) = message::decode(data) else {
        return;
    };
    let Some(MessageContent::Text { text, reply }) = decoded.content else {
        return;
    };
    let once = message::encode_text(&text, reply.as_ref());
    let again = message::decode(&once).expect("an encoded text decodes");
    let Some(MessageContent::Text { text, reply }) = again.content else {
        panic!("an encoded text decodes as text");
    };
    let twice = message::encode_text(&text, reply.as_ref());
    assert_eq!(once, twice, "text encoding is not stable after one round");
});
