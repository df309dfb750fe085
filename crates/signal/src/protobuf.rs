//! The two protobuf primitives the hand-written WhisperMessage codec needs (base-128
//! varints). Everything else about protobuf is left to prost.

/// Appends `value` as a base-128 varint.
pub(crate) fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint of at most 5 bytes (enough for any 32-bit value, which is all the
/// WhisperMessage fields and lengths need) at `*pos`, advancing `*pos`. `None` if the input
/// ends inside the varint or it is longer: the caller then falls back to prost.
pub(crate) fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_match_prost() {
        for value in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            (1 << 35) - 1,
        ] {
            let mut ours = Vec::new();
            write_varint(&mut ours, value);
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(value, &mut theirs);
            assert_eq!(ours, theirs, "{value}");
            let mut pos = 0;
            assert_eq!(read_varint(&ours, &mut pos), Some(value));
            assert_eq!(pos, ours.len());
        }
        // Truncated, and longer than 5 bytes: left to prost.
        assert_eq!(read_varint(&[0x80], &mut 0), None);
        assert_eq!(
            read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut 0),
            None
        );
    }
}
