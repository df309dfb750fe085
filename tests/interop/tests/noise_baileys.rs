//! Baileys' own Noise initiator (`makeNoiseHandler`, driven the way its socket drives it,
//! with a real registration `ClientPayload`) completes the handshake with wafleet's
//! responder, and the two exchange transport frames both ways, each side decoding nodes the
//! other encoded. Bytes are split and packed differently from how they were written, as
//! WebSocket messages may do.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use wafleet_interop::{unhex, Peer};
use wafleet_protocol::binary::{self, json as node_json};
use wafleet_protocol::cert::{CertificateAuthority, ChainSpec};
use wafleet_protocol::noise::{KeyPair, ServerConnection, ServerEvent};

/// Feeds `bytes` to the server in random-sized chunks.
fn feed_chunked(server: &mut ServerConnection, bytes: &[u8], rng: &mut StdRng) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(64));
        let (chunk, tail) = rest.split_at(n);
        server.receive(chunk).expect("server accepts the bytes");
        rest = tail;
    }
}

fn drain_transmit(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(bytes) = server.poll_transmit() {
        out.extend_from_slice(&bytes);
    }
    out
}

fn sample_nodes(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "tag": "iq",
                "attrs": {"id": format!("{i}.{}-1", i * 7), "to": "@s.whatsapp.net", "type": "get", "xmlns": "w:p"},
                "content": [{"tag": "ping", "attrs": {}}, {"tag": "blob", "attrs": {"jid": "15551234567:3@s.whatsapp.net"}, "content": format!("hex:{}", "ab".repeat(i * 37))}]
            })
        })
        .collect()
}

#[test]
fn baileys_initiator_completes_handshake_with_wafleet_responder() {
    let mut rng = StdRng::seed_from_u64(2);
    let ca = CertificateAuthority::generate(&mut rng);
    let server_static = KeyPair::generate(&mut rng);
    let now = 1_790_000_000u64;
    let chain = ca.issue(
        &ChainSpec::new(7, now - 3600, now + 86_400),
        &server_static.public,
        &mut rng,
    );
    let mut server = ServerConnection::new(server_static, chain.to_bytes(), &mut rng);

    let mut peer = Peer::start();
    let start =
        peer.call(json!({"op": "noise_start", "root": hex::encode(ca.root_key().as_bytes())}));
    let id = start["id"].clone();

    // -> intro + clientHello, fed to us in odd chunks.
    feed_chunked(&mut server, &unhex(&start["out"]), &mut rng);
    assert!(
        server.poll_event().is_none(),
        "no event before clientFinish"
    );
    // <- serverHello, split in two WebSocket messages.
    let hello = drain_transmit(&mut server);
    assert!(!hello.is_empty(), "server sent no hello");
    let (a, b) = hello.split_at(hello.len() / 2);
    let r1 = peer.call(json!({"op": "noise_recv", "id": id, "bytes": hex::encode(a)}));
    assert_eq!(
        r1["out"].as_array().expect("out").len(),
        0,
        "Baileys answered half a frame"
    );
    let r2 = peer.call(json!({"op": "noise_recv", "id": id, "bytes": hex::encode(b)}));
    assert_eq!(r2["stage"], "transport", "Baileys did not finish: {r2}");
    let finish = unhex(&r2["out"][0]);

    // -> clientFinish: we learn Baileys' static key and its exact ClientPayload.
    feed_chunked(&mut server, &finish, &mut rng);
    match server.poll_event() {
        Some(ServerEvent::HandshakeComplete { client, .. }) => {
            assert_eq!(client.client_static.to_vec(), unhex(&start["noise_pub"]));
            assert_eq!(client.client_payload, unhex(&start["payload"]));
        }
        other => panic!("expected HandshakeComplete, got {other:?}"),
    }
    assert!(server.is_handshake_complete());

    // Transport, Baileys -> wafleet: several frames packed into one message.
    let nodes = sample_nodes(12);
    let mut packed = Vec::new();
    for n in &nodes {
        let r = peer.call(json!({"op": "noise_send", "id": id, "node": n}));
        packed.extend(unhex(&r["out"]));
    }
    server.receive(&packed).expect("transport frames decrypt");
    for (i, n) in nodes.iter().enumerate() {
        match server.poll_event() {
            Some(ServerEvent::Frame(plain)) => {
                let node = binary::decode(&plain).expect("Baileys' node decodes");
                assert_eq!(&node_json::to_value(&node), n, "frame {i}");
            }
            other => panic!("frame {i}: expected a frame, got {other:?}"),
        }
    }
    assert!(server.poll_event().is_none());

    // Transport, wafleet -> Baileys: frames packed together, then re-split at random.
    let mut wire = Vec::new();
    for n in &nodes {
        let node = node_json::from_value(n).expect("JSON form");
        let plain = binary::encode(&node).expect("encodes");
        wire.extend(server.send(&plain).expect("encrypts"));
    }
    let mut got = Vec::new();
    let mut rest = wire.as_slice();
    while !rest.is_empty() {
        let k = rng.gen_range(1..=rest.len().min(300));
        let (chunk, tail) = rest.split_at(k);
        let r = peer.call(json!({"op": "noise_recv", "id": id, "bytes": hex::encode(chunk)}));
        got.extend(r["nodes"].as_array().expect("nodes").iter().cloned());
        rest = tail;
    }
    assert_eq!(got, nodes, "Baileys decoded our frames differently");

    // A tampered frame is refused by Baileys (AES-GCM authentication).
    let plain = binary::encode(&node_json::from_value(&nodes[0]).expect("node")).expect("enc");
    let mut bad = server.send(&plain).expect("encrypts");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let r = peer.try_call(json!({"op": "noise_recv", "id": id, "bytes": hex::encode(&bad)}));
    assert!(r.is_err(), "Baileys accepted a tampered frame: {r:?}");
}

#[test]
fn baileys_does_not_check_chain_signatures() {
    // A tripwire for protocol-notes finding 3: pinned root A, chain signed by root B, and
    // Baileys still completes, because its signature checks always pass. This is why the
    // suite checks signatures with libsignal's curve.js and never with Baileys, and why
    // wafleet's own initiator does the seven checks (the protocol crate's cert tests).
    let mut rng = StdRng::seed_from_u64(3);
    let pinned = CertificateAuthority::generate(&mut rng);
    let other = CertificateAuthority::generate(&mut rng);
    let server_static = KeyPair::generate(&mut rng);
    let chain = other.issue(
        &ChainSpec::new(7, 0, u64::MAX),
        &server_static.public,
        &mut rng,
    );
    let mut server = ServerConnection::new(server_static, chain.to_bytes(), &mut rng);
    let mut peer = Peer::start();
    let start =
        peer.call(json!({"op": "noise_start", "root": hex::encode(pinned.root_key().as_bytes())}));
    server.receive(&unhex(&start["out"])).expect("hello");
    let hello = drain_transmit(&mut server);
    let r = peer.call(json!({"op": "noise_recv", "id": start["id"], "bytes": hex::encode(hello)}));
    assert_eq!(
        r["stage"], "transport",
        "Baileys started verifying signatures: update protocol-notes finding 3"
    );
}
