//! Frame codec: intro header, chunking, oversize, bad intro.

use wafleet_protocol::frame::{
    encode_frame, intro_bytes, FrameDecoder, FrameEncoder, FrameError, INTRO_HEADER, MAX_FRAME_LEN,
};

fn payloads() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![0xab],
        (0..=255u8).collect(),
        vec![7; 300],
        vec![1, 2, 3],
    ]
}

/// A payload whose length needs all three prefix bytes.
fn big_payload() -> Vec<u8> {
    (0..70_000u32).map(|i| i as u8).collect()
}

/// The wire bytes a client encoder produces for `payloads()`.
fn client_stream(routing_info: Option<&[u8]>) -> Vec<u8> {
    let mut enc = FrameEncoder::client(routing_info).unwrap();
    let mut out = Vec::new();
    for p in payloads() {
        out.extend(enc.encode(&p).unwrap());
    }
    out
}

fn drain(dec: &mut FrameDecoder) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some(f) = dec.next_frame().unwrap() {
        frames.push(f);
    }
    frames
}

#[test]
fn encoder_glues_intro_before_first_frame_only() {
    let mut enc = FrameEncoder::client(None).unwrap();
    assert!(!enc.intro_sent());
    assert_eq!(
        enc.encode(b"hi").unwrap(),
        [0x57, 0x41, 0x06, 0x03, 0x00, 0x00, 0x02, b'h', b'i']
    );
    assert!(enc.intro_sent());
    assert_eq!(enc.encode(b"").unwrap(), [0, 0, 0]);
    let big = vec![9u8; 0x012345];
    let f = enc.encode(&big).unwrap();
    assert_eq!(&f[..3], &[0x01, 0x23, 0x45]);
    assert_eq!(&f[3..], &big[..]);

    let mut server = FrameEncoder::server();
    assert!(server.intro_sent());
    assert_eq!(server.encode(b"x").unwrap(), [0, 0, 1, b'x']);
}

#[test]
fn encoder_edge_routing_pre_intro() {
    let ri = [0xde, 0xad, 0xbe, 0xef, 0x01];
    let mut enc = FrameEncoder::client(Some(&ri)).unwrap();
    let got = enc.encode(&[0x42]).unwrap();
    let want = [
        b'E', b'D', 0x00, 0x01, 0x00, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x57, 0x41, 0x06,
        0x03, 0x00, 0x00, 0x01, 0x42,
    ];
    assert_eq!(got, want);
    assert_eq!(enc.encode(&[0x42]).unwrap(), [0, 0, 1, 0x42]);
    assert_eq!(intro_bytes(None).unwrap(), INTRO_HEADER);
}

#[test]
fn oversize_encode_is_a_typed_error_and_keeps_the_intro_pending() {
    let too_big = vec![0u8; MAX_FRAME_LEN + 1];
    let err = FrameError::TooLarge {
        len: MAX_FRAME_LEN + 1,
        max: MAX_FRAME_LEN,
    };
    assert_eq!(encode_frame(&too_big), Err(err.clone()));
    let mut enc = FrameEncoder::client(None).unwrap();
    assert_eq!(enc.encode(&too_big), Err(err.clone()));
    assert!(
        !enc.intro_sent(),
        "a failed encode must not consume the intro"
    );
    assert_eq!(FrameEncoder::client(Some(&too_big)).map(|_| ()), Err(err));

    // The largest representable frame is fine and round-trips.
    let max = vec![0x5au8; MAX_FRAME_LEN];
    let f = encode_frame(&max).unwrap();
    assert_eq!(&f[..3], &[0xff, 0xff, 0xff]);
    let mut dec = FrameDecoder::client();
    dec.push(&f);
    assert_eq!(dec.next_frame().unwrap().unwrap().len(), MAX_FRAME_LEN);
}

#[test]
fn decoder_caps_incoming_length_before_buffering_payload() {
    let mut dec = FrameDecoder::client().with_max_frame_len(1000);
    dec.push(&[0x00, 0x03, 0xe8]); // exactly 1000: fine, waits for data
    assert_eq!(dec.next_frame(), Ok(None));
    let mut dec = FrameDecoder::client().with_max_frame_len(1000);
    dec.push(&[0x00, 0x03, 0xe9]);
    let err = FrameError::IncomingTooLarge {
        len: 1001,
        max: 1000,
    };
    assert_eq!(dec.next_frame(), Err(err.clone()));
    dec.push(&[0, 0, 0]);
    assert_eq!(dec.next_frame(), Err(err), "errors are sticky");

    // The cap also applies to routing info in the pre-intro.
    let mut dec = FrameDecoder::server().with_max_frame_len(4);
    dec.push(&[b'E', b'D', 0, 1, 0, 0, 5]);
    assert!(matches!(
        dec.next_frame(),
        Err(FrameError::IncomingTooLarge { len: 5, max: 4 })
    ));
}

#[test]
fn server_decoder_split_at_every_position() {
    for ri in [None, Some(&b"routing!"[..])] {
        let stream = client_stream(ri);
        let want = payloads();
        for cut in 0..=stream.len() {
            let mut dec = FrameDecoder::server();
            let mut got = Vec::new();
            dec.push(&stream[..cut]);
            got.extend(drain(&mut dec));
            dec.push(&stream[cut..]);
            got.extend(drain(&mut dec));
            assert_eq!(got, want, "cut at {cut}, routing {ri:?}");
            assert_eq!(dec.routing_info(), ri);
            assert_eq!(dec.buffered_len(), 0);
        }
    }
}

#[test]
fn server_decoder_split_big_frame() {
    let mut enc = FrameEncoder::client(None).unwrap();
    let mut stream = enc.encode(b"a").unwrap();
    stream.extend(enc.encode(&big_payload()).unwrap());
    stream.extend(enc.encode(b"z").unwrap());
    let want = vec![b"a".to_vec(), big_payload(), b"z".to_vec()];
    let n = stream.len();
    let cuts = (0..40).chain((40..n - 40).step_by(997)).chain(n - 40..=n);
    for cut in cuts {
        let mut dec = FrameDecoder::server();
        let mut got = Vec::new();
        dec.push(&stream[..cut]);
        got.extend(drain(&mut dec));
        dec.push(&stream[cut..]);
        got.extend(drain(&mut dec));
        assert_eq!(got, want, "cut at {cut}");
    }
}

#[test]
fn server_decoder_three_way_splits_of_the_header_region() {
    // All pairs of cuts within the first 40 bytes (pre-intro, intro and first frames).
    let ri = b"xyz";
    let stream = client_stream(Some(ri));
    for a in 0..40 {
        for b in a..40 {
            let mut dec = FrameDecoder::server();
            let mut got = Vec::new();
            for chunk in [&stream[..a], &stream[a..b], &stream[b..]] {
                dec.push(chunk);
                got.extend(drain(&mut dec));
            }
            assert_eq!(got, payloads(), "cuts {a},{b}");
            assert_eq!(dec.routing_info(), Some(&ri[..]));
        }
    }
}

#[test]
fn decoder_byte_by_byte_and_all_at_once() {
    let stream = client_stream(None);
    let mut dec = FrameDecoder::server();
    let mut got = Vec::new();
    for b in &stream {
        dec.push(std::slice::from_ref(b));
        got.extend(drain(&mut dec));
    }
    assert_eq!(got, payloads());

    let mut dec = FrameDecoder::server();
    dec.push(&stream);
    assert_eq!(drain(&mut dec), payloads());
}

#[test]
fn client_decoder_many_frames_in_one_chunk() {
    let mut enc = FrameEncoder::server();
    let mut chunk = Vec::new();
    let frames: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| i.to_be_bytes().repeat(i as usize % 7))
        .collect();
    for f in &frames {
        chunk.extend(enc.encode(f).unwrap());
    }
    let mut dec = FrameDecoder::client();
    assert!(dec.intro_done());
    dec.push(&chunk);
    assert_eq!(drain(&mut dec), frames);
    // A partial trailing frame stays buffered.
    dec.push(&[0, 0, 5, 1, 2]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(dec.buffered_len(), 5);
    dec.push(&[3, 4, 5]);
    assert_eq!(dec.next_frame(), Ok(Some(vec![1, 2, 3, 4, 5])));
}

#[test]
fn bad_intro_is_rejected_as_soon_as_a_byte_mismatches() {
    let good = client_stream(None);
    for i in 0..INTRO_HEADER.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            if i == 0 && bad[0] == b'E' {
                continue; // that is the pre-intro's first byte
            }
            // Only up to the bad byte: the error must not wait for more data.
            let mut dec = FrameDecoder::server();
            dec.push(&bad[..=i]);
            let err = dec.next_frame().unwrap_err();
            assert!(
                matches!(err, FrameError::BadIntro { .. }),
                "byte {i} ^ {flip:#x}: {err:?}"
            );
            // Sticky.
            dec.push(&good);
            assert_eq!(dec.next_frame(), Err(err));
        }
    }
    // A bad pre-intro magic.
    for bad in [&b"EX"[..], &b"ED\x00\x02"[..], &b"ED\x01"[..]] {
        let mut dec = FrameDecoder::server();
        dec.push(bad);
        assert!(
            matches!(dec.next_frame(), Err(FrameError::BadIntro { .. })),
            "{bad:?}"
        );
    }
    // A pre-intro not followed by WA 06 03.
    let mut dec = FrameDecoder::server();
    dec.push(&[b'E', b'D', 0, 1, 0, 0, 1, 0xaa, b'W', b'B']);
    assert!(matches!(dec.next_frame(), Err(FrameError::BadIntro { .. })));
    // A client-side decoder expects no intro: WA 06 03 is read as a (huge) length.
    let mut dec = FrameDecoder::client().with_max_frame_len(1 << 20);
    dec.push(&good);
    assert!(matches!(
        dec.next_frame(),
        Err(FrameError::IncomingTooLarge { .. })
    ));
}

#[test]
fn incomplete_intro_waits() {
    let mut dec = FrameDecoder::server();
    for b in [b'W', b'A', 6] {
        dec.push(&[b]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(!dec.intro_done());
    }
    dec.push(&[3]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert!(dec.intro_done());
    assert_eq!(dec.routing_info(), None);
}
