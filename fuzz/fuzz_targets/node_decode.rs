//! The binary node decoder on arbitrary bytes: it must never panic, whatever it accepts must
//! re-encode, and re-encoding must reach a fixed point after one round: the wire has
//! non-canonical spellings (an empty packed string, a token written raw) that the encoder
//! writes canonically, so the invariant is on bytes, not on the first decoded tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wafleet_protocol::binary;

fuzz_target!(|data: &[u8]| {
    let Ok(node) = binary::decode(data) else {
        return;
    };
    let once = binary::encode(&node).expect("a decoded node re-encodes");
    let tree = binary::decode(&once).expect("a re-encoded node decodes");
    let twice = binary::encode(&tree).expect("and re-encodes again");
    assert_eq!(once, twice, "encoding is not stable after one round");
});
