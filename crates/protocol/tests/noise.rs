//! WhatsApp Noise XX: vectors, full handshakes, transport, tampering, connections.

use prost::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;
use wafleet_protocol::cert::{CertError, CertificateAuthority, ChainSpec, RootKey};
use wafleet_protocol::frame::{FrameEncoder, FrameError, MAX_FRAME_LEN};
use wafleet_protocol::noise::{
    prologue_hash, ClientConfig, ClientConnection, ClientEvent, ConnectionError, Initiator,
    KeyPair, NoiseError, Responder, ServerConnection, ServerEvent, Transport, NOISE_NAME,
};
use wafleet_protocol::proto::handshake_message::ClientHello;
use wafleet_protocol::proto::{client_payload, ClientPayload, HandshakeMessage};

const NOW: u64 = 1_760_000_000;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A simulator server: static key, CA, chain valid around NOW.
struct Sim {
    ca: CertificateAuthority,
    static_key: KeyPair,
    chain: Vec<u8>,
}

fn sim(seed: u64) -> Sim {
    let mut r = rng(seed);
    let ca = CertificateAuthority::generate(&mut r);
    let static_key = KeyPair::generate(&mut r);
    let chain = ca
        .issue(
            &ChainSpec::new(7, NOW - 3600, NOW + 3600),
            &static_key.public,
            &mut r,
        )
        .to_bytes();
    Sim {
        ca,
        static_key,
        chain,
    }
}

fn login_payload() -> Vec<u8> {
    use client_payload::user_agent::{AppVersion, Platform, ReleaseChannel};
    use client_payload::web_info::WebSubPlatform;
    use client_payload::{ConnectReason, ConnectType, UserAgent, WebInfo};
    ClientPayload {
        username: Some(15551234567),
        device: Some(3),
        passive: Some(true),
        pull: Some(true),
        user_agent: Some(UserAgent {
            platform: Some(Platform::Web as i32),
            release_channel: Some(ReleaseChannel::Release as i32),
            app_version: Some(AppVersion {
                primary: Some(2),
                secondary: Some(3000),
                tertiary: Some(1_045_649_367),
                ..Default::default()
            }),
            ..Default::default()
        }),
        web_info: Some(WebInfo {
            web_sub_platform: Some(WebSubPlatform::WebBrowser as i32),
            ..Default::default()
        }),
        connect_type: Some(ConnectType::WifiUnknown as i32),
        connect_reason: Some(ConnectReason::UserActivated as i32),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn prologue_hash_matches_baileys_vector() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("data/baileys-vectors.json")).unwrap();
    let h0 = hex::decode(v["noise"]["h0"].as_str().unwrap()).unwrap();
    let h1 = hex::decode(v["noise"]["h_after_prologue"].as_str().unwrap()).unwrap();
    assert_eq!(h0, NOISE_NAME.to_vec());
    assert_eq!(prologue_hash().to_vec(), h1);
}

struct Done {
    client_transport: Transport,
    server_transport: Transport,
}

/// Runs the three messages through an optional tamper hook: `tamper(msg_index, bytes)`.
fn handshake(
    s: &Sim,
    root: RootKey,
    seed: u64,
    tamper: impl Fn(usize, &mut Vec<u8>),
) -> Result<Done, NoiseError> {
    let mut r = rng(seed);
    let noise_key = KeyPair::generate(&mut r);
    let (init, mut m1) = Initiator::start(KeyPair::generate(&mut r));
    tamper(0, &mut m1);
    let resp = Responder::new(
        s.static_key.clone(),
        KeyPair::generate(&mut r),
        s.chain.clone(),
    );
    let (resp, mut m2) = resp.read_client_hello(&m1)?;
    tamper(1, &mut m2);
    let h_before = init.handshake_hash();
    let (init, info) = init.read_server_hello(&m2, &root, NOW)?;
    assert_ne!(h_before, init.handshake_hash());
    assert_eq!(info.server_static, s.static_key.public);
    assert_eq!(info.cert.intermediate.serial, Some(7));
    assert_eq!(
        info.cert.leaf.key.as_deref(),
        Some(&s.static_key.public[..])
    );
    let payload = login_payload();
    let fin = init.finish(&noise_key, &payload)?;
    let mut m3 = fin.message;
    tamper(2, &mut m3);
    let (client, server_transport) = resp.read_client_finish(&m3)?;
    assert_eq!(client.client_static, noise_key.public);
    assert_eq!(client.client_payload, payload);
    assert_eq!(client.handshake_hash, fin.handshake_hash);
    Ok(Done {
        client_transport: fin.transport,
        server_transport,
    })
}

#[test]
fn full_handshake_then_transport_both_ways() {
    let s = sim(1);
    let mut d = handshake(&s, s.ca.root_key(), 2, |_, _| {}).unwrap();
    for i in 0..50u32 {
        let up = format!("client message {i}").into_bytes();
        let ct = d.client_transport.encrypt(&up).unwrap();
        assert_eq!(ct.len(), up.len() + 16);
        assert_eq!(d.server_transport.decrypt(&ct).unwrap(), up);
        let down = vec![i as u8; i as usize];
        let ct = d.server_transport.encrypt(&down).unwrap();
        assert_eq!(d.client_transport.decrypt(&ct).unwrap(), down);
    }
    // Directions use different keys: a client ciphertext does not decrypt as server traffic.
    let ct = d.client_transport.encrypt(b"x").unwrap();
    assert_eq!(d.client_transport.decrypt(&ct), Err(NoiseError::Decrypt));
}

#[test]
fn client_hello_bytes_are_exact() {
    let e = KeyPair::from_private([0x11; 32]);
    let (_, m1) = Initiator::start(e.clone());
    let mut want = vec![0x12, 0x22, 0x0a, 0x20];
    want.extend_from_slice(&e.public);
    assert_eq!(m1, want);
}

#[test]
fn server_hello_shape() {
    let s = sim(3);
    let (_, m1) = Initiator::start(KeyPair::generate(&mut rng(4)));
    let resp = Responder::new(
        s.static_key.clone(),
        KeyPair::generate(&mut rng(5)),
        s.chain.clone(),
    );
    let (_, m2) = resp.read_client_hello(&m1).unwrap();
    let hello = HandshakeMessage::decode(&m2[..])
        .unwrap()
        .server_hello
        .unwrap();
    assert_eq!(hello.ephemeral.unwrap().len(), 32);
    assert_eq!(hello.r#static.unwrap().len(), 48);
    assert_eq!(hello.payload.unwrap().len(), s.chain.len() + 16);
}

#[test]
fn wrong_root_key_fails_the_handshake() {
    let s = sim(6);
    let err = handshake(&s, RootKey::WHATSAPP, 7, |_, _| {})
        .err()
        .unwrap();
    assert_eq!(err, NoiseError::Cert(CertError::IntermediateSignature));
    let other = CertificateAuthority::generate(&mut rng(99)).root_key();
    let err = handshake(&s, other, 7, |_, _| {}).err().unwrap();
    assert_eq!(err, NoiseError::Cert(CertError::IntermediateSignature));
}

#[test]
fn chain_for_another_key_fails_leaf_key_check() {
    let mut s = sim(8);
    let other = KeyPair::generate(&mut rng(9));
    s.chain =
        s.ca.issue(
            &ChainSpec::new(7, NOW - 1, NOW + 1),
            &other.public,
            &mut rng(10),
        )
        .to_bytes();
    let err = handshake(&s, s.ca.root_key(), 11, |_, _| {}).err().unwrap();
    assert_eq!(err, NoiseError::Cert(CertError::LeafKeyMismatch));
}

#[test]
fn a_flipped_byte_in_any_handshake_message_fails_with_a_typed_error() {
    let s = sim(12);
    let root = s.ca.root_key();
    let lens: Vec<usize> = {
        let mut lens = vec![0; 3];
        let cell = std::cell::RefCell::new(&mut lens);
        handshake(&s, root, 13, |i, m| cell.borrow_mut()[i] = m.len()).unwrap();
        lens
    };
    let mut failures = 0;
    for (msg, &len) in lens.iter().enumerate() {
        for pos in 0..len {
            for flip in [0x01u8, 0x80] {
                let r = handshake(&s, root, 13, |i, m| {
                    if i == msg {
                        m[pos] ^= flip;
                    }
                });
                let err = r.err().unwrap_or_else(|| {
                    panic!("message {msg} byte {pos} ^ {flip:#x} was not detected")
                });
                // Every failure is one of the typed handshake errors.
                assert!(
                    matches!(
                        err,
                        NoiseError::Decode(_)
                            | NoiseError::MissingField(_)
                            | NoiseError::BadLength { .. }
                            | NoiseError::Decrypt
                            | NoiseError::LowOrderPoint
                            | NoiseError::UnexpectedField(_)
                    ),
                    "message {msg} byte {pos}: {err:?}"
                );
                failures += 1;
            }
        }
    }
    assert!(failures > 2 * (36 + 100 + 100), "{failures}");
}

#[test]
fn responder_rejects_bad_client_hellos() {
    let s = sim(14);
    let resp = || {
        Responder::new(
            s.static_key.clone(),
            KeyPair::generate(&mut rng(15)),
            s.chain.clone(),
        )
    };
    let enc = |h: ClientHello| {
        HandshakeMessage {
            client_hello: Some(h),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let e = Some(vec![9u8; 32]);
    let cases: Vec<(Vec<u8>, NoiseError)> = vec![
        (vec![], NoiseError::MissingField("clientHello")),
        (
            enc(ClientHello::default()),
            NoiseError::MissingField("clientHello.ephemeral"),
        ),
        (
            enc(ClientHello {
                ephemeral: Some(vec![1; 31]),
                ..Default::default()
            }),
            NoiseError::BadLength {
                field: "clientHello.ephemeral",
                len: 31,
                expected: 32,
            },
        ),
        (
            enc(ClientHello {
                ephemeral: e.clone(),
                r#static: Some(vec![0; 48]),
                ..Default::default()
            }),
            NoiseError::UnexpectedField("clientHello.static"),
        ),
        (
            enc(ClientHello {
                ephemeral: e.clone(),
                payload: Some(vec![0; 20]),
                ..Default::default()
            }),
            NoiseError::UnexpectedField("clientHello.payload"),
        ),
        (
            enc(ClientHello {
                ephemeral: Some(vec![0; 32]),
                ..Default::default()
            }),
            NoiseError::LowOrderPoint,
        ),
    ];
    for (msg, want) in cases {
        assert_eq!(resp().read_client_hello(&msg).err(), Some(want));
    }
    assert!(matches!(
        resp().read_client_hello(&[0xff, 0xff]).err(),
        Some(NoiseError::Decode(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Connections

struct Pair {
    client: ClientConnection,
    server: ServerConnection,
}

fn connect(s: &Sim, routing_info: Option<Vec<u8>>, seed: u64) -> Pair {
    let mut r = rng(seed);
    let config = ClientConfig {
        root: s.ca.root_key(),
        noise_key: KeyPair::generate(&mut r),
        routing_info,
    };
    Pair {
        client: ClientConnection::new(config, NOW, &mut r).unwrap(),
        server: ServerConnection::new(s.static_key.clone(), s.chain.clone(), &mut r),
    }
}

/// Feeds `bytes` to `f` in chunks of `chunk` bytes.
fn feed(
    bytes: &[u8],
    chunk: usize,
    mut f: impl FnMut(&[u8]) -> Result<(), ConnectionError>,
) -> Result<(), ConnectionError> {
    for c in bytes.chunks(chunk.max(1)) {
        f(c)?;
    }
    Ok(())
}

fn drain_transmit(poll: impl FnMut() -> Option<Vec<u8>>) -> Vec<u8> {
    std::iter::from_fn(poll).flatten().collect()
}

/// Runs the handshake over the connections, delivering in `chunk`-byte pieces.
fn run_handshake(p: &mut Pair, chunk: usize) -> Vec<u8> {
    let payload = login_payload();
    let c2s = drain_transmit(|| p.client.poll_transmit());
    feed(&c2s, chunk, |b| p.server.receive(b)).unwrap();
    assert!(p.server.poll_event().is_none());
    let s2c = drain_transmit(|| p.server.poll_transmit());
    feed(&s2c, chunk, |b| p.client.receive(b)).unwrap();
    match p.client.poll_event() {
        Some(ClientEvent::ServerHello(info)) => assert_eq!(info.cert.leaf.issuer_serial, Some(7)),
        other => panic!("{other:?}"),
    }
    assert!(!p.client.is_handshake_complete());
    assert_eq!(
        p.client.send(b"early"),
        Err(ConnectionError::HandshakeIncomplete)
    );
    p.client.finish_handshake(&payload).unwrap();
    assert!(p.client.is_handshake_complete());
    let c2s = drain_transmit(|| p.client.poll_transmit());
    feed(&c2s, chunk, |b| p.server.receive(b)).unwrap();
    assert!(p.server.is_handshake_complete());
    payload
}

#[test]
fn connections_handshake_and_exchange_frames_split_and_packed() {
    let s = sim(20);
    for chunk in [1, 2, 3, 5, 64, 1000, usize::MAX] {
        let mut p = connect(&s, None, 21);
        let payload = run_handshake(&mut p, chunk);
        match p.server.poll_event() {
            Some(ServerEvent::HandshakeComplete {
                client,
                routing_info,
            }) => {
                assert_eq!(client.client_payload, payload);
                assert_eq!(routing_info, None);
            }
            other => panic!("{other:?}"),
        }
        // Several frames packed into one buffer, delivered in `chunk` pieces, both ways.
        let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![0, i, i.wrapping_mul(7)]).collect();
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(p.client.send(m).unwrap());
        }
        feed(&wire, chunk, |b| p.server.receive(b)).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| p.server.poll_event()).collect();
        assert_eq!(
            got,
            msgs.iter()
                .cloned()
                .map(ServerEvent::Frame)
                .collect::<Vec<_>>()
        );

        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(p.server.send(m).unwrap());
        }
        feed(&wire, chunk, |b| p.client.receive(b)).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| p.client.poll_event()).collect();
        assert_eq!(
            got,
            msgs.iter()
                .cloned()
                .map(ClientEvent::Frame)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn routing_info_reaches_the_server() {
    let s = sim(22);
    let mut p = connect(&s, Some(b"\x08\x01\x10\x02".to_vec()), 23);
    run_handshake(&mut p, 7);
    match p.server.poll_event() {
        Some(ServerEvent::HandshakeComplete { routing_info, .. }) => {
            assert_eq!(routing_info.as_deref(), Some(&b"\x08\x01\x10\x02"[..]))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_payload_sent_with_first_frame_keeps_order() {
    // The client calls send() without draining poll_transmit: clientFinish must come first.
    let s = sim(24);
    let mut p = connect(&s, None, 25);
    let c2s = drain_transmit(|| p.client.poll_transmit());
    p.server.receive(&c2s).unwrap();
    let s2c = drain_transmit(|| p.server.poll_transmit());
    // Server hello and client reaction in one go; the server also pushes nothing else yet.
    p.client.receive(&s2c).unwrap();
    assert!(matches!(
        p.client.poll_event(),
        Some(ClientEvent::ServerHello(_))
    ));
    p.client.finish_handshake(b"payload").unwrap();
    let wire = p.client.send(b"\x00first").unwrap();
    assert!(p.client.poll_transmit().is_none());
    p.server.receive(&wire).unwrap();
    assert!(matches!(
        p.server.poll_event(),
        Some(ServerEvent::HandshakeComplete { .. })
    ));
    assert_eq!(
        p.server.poll_event(),
        Some(ServerEvent::Frame(b"\x00first".to_vec()))
    );
}

#[test]
fn server_frames_arriving_before_finish_handshake_are_buffered() {
    // Two identical (same seeds) pairs: pair A runs normally and yields the server's first
    // transport frame; pair B's client gets the server hello and that frame in one chunk,
    // before it has sent its payload.
    let s = sim(26);
    let mut a = connect(&s, None, 27);
    let mut b = connect(&s, None, 27);
    let c2s = drain_transmit(|| a.client.poll_transmit());
    a.server.receive(&c2s).unwrap();
    let s2c = drain_transmit(|| a.server.poll_transmit());
    a.client.receive(&s2c).unwrap();
    a.client.finish_handshake(b"p").unwrap();
    a.server
        .receive(&drain_transmit(|| a.client.poll_transmit()))
        .unwrap();
    let reply = a.server.send(b"\x00success").unwrap();

    let mut glued = s2c.clone();
    glued.extend_from_slice(&reply[..4]);
    b.client.receive(&glued).unwrap();
    assert!(matches!(
        b.client.poll_event(),
        Some(ClientEvent::ServerHello(_))
    ));
    assert!(b.client.poll_event().is_none());
    b.client.receive(&reply[4..]).unwrap();
    assert!(
        b.client.poll_event().is_none(),
        "no transport before the payload is sent"
    );
    b.client.finish_handshake(b"p").unwrap();
    assert_eq!(
        b.client.poll_event(),
        Some(ClientEvent::Frame(b"\x00success".to_vec()))
    );
}

#[test]
fn connection_errors_are_typed_and_sticky() {
    let s = sim(28);
    // Bad intro.
    let mut server = ServerConnection::new(s.static_key.clone(), s.chain.clone(), &mut rng(29));
    let err = server.receive(b"GET / HTTP/1.1").unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::Frame(FrameError::BadIntro { .. })
    ));
    assert_eq!(server.receive(b"WA\x06\x03"), Err(err.clone()));
    assert_eq!(server.send(b"x"), Err(err));

    // A tampered transport frame.
    let mut p = connect(&s, None, 30);
    run_handshake(&mut p, 100);
    let mut wire = p.client.send(b"\x00hello").unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let err = p.server.receive(&wire).unwrap_err();
    assert_eq!(err, ConnectionError::Noise(NoiseError::Decrypt));
    assert_eq!(p.server.receive(&[]), Err(err));

    // Oversize plaintext: typed error, and the counter is not consumed.
    let mut p = connect(&s, None, 31);
    run_handshake(&mut p, 100);
    let too_big = vec![0u8; MAX_FRAME_LEN - 15];
    assert!(matches!(
        p.client.send(&too_big),
        Err(ConnectionError::Frame(FrameError::TooLarge { .. }))
    ));
    let ok = p.client.send(b"\x00ok").unwrap();
    p.server.receive(&ok).unwrap();
    let _ = p.server.poll_event();
    assert_eq!(
        p.server.poll_event(),
        Some(ServerEvent::Frame(b"\x00ok".to_vec()))
    );

    // finish_handshake at the wrong time.
    let mut p = connect(&s, None, 32);
    assert_eq!(
        p.client.finish_handshake(b"p"),
        Err(ConnectionError::NotAwaitingPayload)
    );
}

#[test]
fn client_rejects_server_with_unknown_root() {
    let s = sim(33);
    let mut r = rng(34);
    let config = ClientConfig::new(KeyPair::generate(&mut r)); // pins WhatsApp's root
    let mut client = ClientConnection::new(config, NOW, &mut r).unwrap();
    let mut server = ServerConnection::new(s.static_key.clone(), s.chain.clone(), &mut r);
    server
        .receive(&drain_transmit(|| client.poll_transmit()))
        .unwrap();
    let err = client
        .receive(&drain_transmit(|| server.poll_transmit()))
        .unwrap_err();
    assert_eq!(
        err,
        ConnectionError::Noise(NoiseError::Cert(CertError::IntermediateSignature))
    );
    assert!(client.poll_event().is_none());
}

#[test]
fn client_checks_certificate_validity_at_now() {
    let s = sim(35);
    let mut r = rng(36);
    let config = ClientConfig {
        root: s.ca.root_key(),
        noise_key: KeyPair::generate(&mut r),
        routing_info: None,
    };
    let mut client = ClientConnection::new(config, NOW + 3601, &mut r).unwrap();
    let mut server = ServerConnection::new(s.static_key.clone(), s.chain.clone(), &mut r);
    server
        .receive(&drain_transmit(|| client.poll_transmit()))
        .unwrap();
    let err = client
        .receive(&drain_transmit(|| server.poll_transmit()))
        .unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::Noise(NoiseError::Cert(CertError::NotValidAt { .. }))
    ));
}

#[test]
fn deterministic_given_the_rng() {
    let run = || {
        let s = sim(40);
        let mut p = connect(&s, None, 41);
        let a = drain_transmit(|| p.client.poll_transmit());
        p.server.receive(&a).unwrap();
        let b = drain_transmit(|| p.server.poll_transmit());
        (s.chain, a, b)
    };
    assert_eq!(run(), run());
}

#[test]
fn frame_encoder_stays_consistent_with_connection_intro() {
    // The connection's first bytes are the intro followed by the framed clientHello.
    let s = sim(42);
    let mut p = connect(&s, Some(vec![1, 2]), 43);
    let first = p.client.poll_transmit().unwrap();
    let mut enc = FrameEncoder::client(Some(&[1, 2])).unwrap();
    let hello_len = first.len() - (7 + 2 + 4 + 3);
    let expect_prefix = enc.encode(&vec![0; hello_len]).unwrap();
    assert_eq!(first[..7 + 2 + 4 + 3], expect_prefix[..7 + 2 + 4 + 3]);
    assert!(p.client.poll_transmit().is_none());
}

mod fuzzish {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// One simulator for all cases (issuing a chain per case is slow in debug builds).
    fn shared_sim() -> &'static Sim {
        static SIM: OnceLock<Sim> = OnceLock::new();
        SIM.get_or_init(|| sim(50))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Arbitrary bytes, arbitrarily chunked, into a fresh server never panic.
        #[test]
        fn random_bytes_into_server_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
            with_intro in any::<bool>(),
        ) {
            let s = shared_sim();
            let mut server = ServerConnection::new(s.static_key.clone(), s.chain.clone(), &mut rng(51));
            if with_intro {
                let _ = server.receive(b"WA\x06\x03");
            }
            for c in &chunks {
                let _ = server.receive(c);
                while server.poll_event().is_some() {}
                while server.poll_transmit().is_some() {}
            }
            let _ = server.send(b"x");
        }

        /// Random frames after a valid client hello (handshake state) never panic.
        #[test]
        fn random_frames_mid_handshake_never_panic(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..4),
        ) {
            let s = shared_sim();
            let mut p = connect(s, None, 53);
            let hello = drain_transmit(|| p.client.poll_transmit());
            p.server.receive(&hello).unwrap();
            let mut enc = FrameEncoder::server();
            for f in &frames {
                let _ = p.server.receive(&enc.encode(f).unwrap());
                let _ = p.client.receive(&enc.encode(f).unwrap());
            }
        }

    }

    proptest! {
        // Each case runs a full handshake: fewer cases.
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random frames after a completed handshake never panic and are rejected.
        #[test]
        fn random_frames_in_transport_are_rejected(
            frame in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let s = shared_sim();
            let mut p = connect(s, None, 55);
            run_handshake(&mut p, 1000);
            let wire = FrameEncoder::server().encode(&frame).unwrap();
            prop_assert!(p.server.receive(&wire).is_err());
        }
    }
}
