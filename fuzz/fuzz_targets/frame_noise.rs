//! The frame + Noise reader on arbitrary input, in four modes chosen by the first byte:
//! 0. raw bytes into the responder (intro header, framing, handshake protobufs);
//! 1. raw bytes into the initiator after its hello (server hello parsing);
//! 2. a real responder sending a fuzzer-chosen certificate chain, authenticated by Noise, so
//!    the initiator's chain parsing and seven checks see arbitrary bytes;
//! 3. a completed handshake, then a fuzzer-chosen mix of genuine encrypted frames and raw
//!    bytes, re-chunked, into the initiator, whose decrypted frames go to the node decoder.
//!
//! Nothing may panic; every error must be a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wafleet_protocol::binary;
use wafleet_protocol::cert::{CertificateAuthority, ChainSpec};
use wafleet_protocol::noise::{ClientConfig, ClientConnection, ClientEvent, KeyPair, ServerConnection};

fn chunks<'a>(data: &'a [u8], sizes: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = data;
    let mut i = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = (usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(7)) % 97 + 1).min(rest.len());
        i += 1;
        let (a, b) = rest.split_at(n);
        rest = b;
        Some(a)
    })
}

struct Pair {
    client: ClientConnection,
    server: ServerConnection,
}

fn pair(chain: Option<Vec<u8>>) -> Pair {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ca = CertificateAuthority::generate(&mut rng);
    let server_static = KeyPair::generate(&mut rng);
    let chain = chain.unwrap_or_else(|| {
        ca.issue(&ChainSpec::new(1, 0, u64::MAX), &server_static.public, &mut rng)
            .to_bytes()
    });
    let server = ServerConnection::new(server_static, chain, &mut rng);
    let mut config = ClientConfig::new(KeyPair::generate(&mut rng));
    config.root = ca.root_key();
    let client = ClientConnection::new(config, 1_000, &mut rng).expect("client starts");
    Pair { client, server }
}

/// Moves bytes both ways until both sides are quiet; finishes the handshake when asked.
fn pump(p: &mut Pair) -> Result<(), ()> {
    loop {
        let mut moved = false;
        while let Some(b) = p.client.poll_transmit() {
            p.server.receive(&b).map_err(|_| ())?;
            moved = true;
        }
        while let Some(b) = p.server.poll_transmit() {
            p.client.receive(&b).map_err(|_| ())?;
            moved = true;
        }
        while let Some(ev) = p.client.poll_event() {
            if let ClientEvent::ServerHello(_) = ev {
                p.client.finish_handshake(b"payload").map_err(|_| ())?;
                moved = true;
            }
        }
        while p.server.poll_event().is_some() {}
        if !moved {
            return Ok(());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (sizes, body) = rest.split_at(rest.len().min(8));
    match mode % 4 {
        0 => {
            let mut p = pair(None);
            for c in chunks(body, sizes) {
                if p.server.receive(c).is_err() {
                    break;
                }
            }
            while p.server.poll_event().is_some() {}
        }
        1 => {
            let mut p = pair(None);
            while p.client.poll_transmit().is_some() {}
            for c in chunks(body, sizes) {
                if p.client.receive(c).is_err() {
                    break;
                }
            }
            while p.client.poll_event().is_some() {}
        }
        2 => {
            let mut p = pair(Some(body.to_vec()));
            // A fuzzer-made chain must never complete the handshake.
            let _ = pump(&mut p);
            assert!(!p.client.is_handshake_complete(), "client accepted an unsigned chain");
        }
        _ => {
            let mut p = pair(None);
            if pump(&mut p).is_err() || !p.client.is_handshake_complete() {
                panic!("the genuine handshake failed");
            }
            // Body: records of [kind, len, bytes...]; even kinds are genuine frames.
            let mut wire = Vec::new();
            let mut r = body;
            while let [kind, len, tail @ ..] = r {
                let n = usize::from(*len).min(tail.len());
                let (payload, t) = tail.split_at(n);
                if kind % 2 == 0 {
                    if let Ok(b) = p.server.send(payload) {
                        wire.extend_from_slice(&b);
                    }
                } else {
                    wire.extend_from_slice(payload);
                }
                r = t;
            }
            for c in chunks(&wire, sizes) {
                if p.client.receive(c).is_err() {
                    break;
                }
            }
            while let Some(ev) = p.client.poll_event() {
                if let ClientEvent::Frame(plain) = ev {
                    let _ = binary::decode(&plain);
                }
            }
        }
    }
});
