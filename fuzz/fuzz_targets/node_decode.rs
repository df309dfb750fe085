//! The binary node decoder on arbitrary bytes: it must never panic, and whatever it accepts
//! must survive a re-encode and decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wafleet_protocol::binary;

fuzz_target!(|data: &[u8]| {
    let Ok(node) = binary::decode(data) else {
        return;
    };
    let bytes = binary::encode(&node).expect("a decoded node re-encodes");
    let again = binary::decode(&bytes).expect("a re-encoded node decodes");
    assert_eq!(node, again, "decode(encode(decode(x))) != decode(x)");
});
