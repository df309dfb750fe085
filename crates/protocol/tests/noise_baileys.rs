//! Smoke test: Baileys' own Noise initiator (`makeNoiseHandler`, the pinned oracle) against our
//! `ServerConnection`, over piped bytes. Skipped (with a message) when `node` or the oracle
//! (`bash scripts/install-oracle.sh`) is not installed; the fuller interop suite lives in
//! `tests/interop`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rand::rngs::StdRng;
use rand::SeedableRng;
use wafleet_protocol::cert::{CertificateAuthority, ChainSpec};
use wafleet_protocol::noise::{KeyPair, ServerConnection, ServerEvent};

const SCRIPT: &str = r#"
import { createInterface } from 'node:readline';
const B = 'file://' + process.env.BAILEYS_DIR;
const { makeNoiseHandler } = await import(B + '/lib/Utils/noise-handler.js');
const { Curve } = await import(B + '/lib/Utils/crypto.js');
const { proto } = await import(B + '/WAProto/index.js');
const D = await import(B + '/lib/Defaults/index.js');
D.WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(process.env.ROOT_HEX, 'hex');
const logger = { child() { return this }, trace() {}, debug() {}, info() {}, warn() {}, error() {}, level: 'silent' };
const routingInfo = process.env.ROUTING_HEX ? Buffer.from(process.env.ROUTING_HEX, 'hex') : undefined;
const eph = Curve.generateKeyPair();
const noiseKey = Curve.generateKeyPair();
const noise = makeNoiseHandler({ keyPair: eph, NOISE_HEADER: D.NOISE_WA_HEADER, logger, routingInfo });
const out = (k, b) => console.log(k + ' ' + Buffer.from(b).toString('hex'));
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => Buffer.from((await lines.next()).value, 'hex');
out('noisepub', noiseKey.public);
out('send', noise.encodeFrame(proto.HandshakeMessage.encode({ clientHello: { ephemeral: eph.public } }).finish()));
const frames = [];
await noise.decodeFrame(await next(), f => frames.push(f));
const keyEnc = noise.processHandshake(proto.HandshakeMessage.decode(frames.shift()), noiseKey);
const payload = proto.ClientPayload.encode({ username: 15551234567, device: 2, passive: true, pull: true }).finish();
out('payload', payload);
const payloadEnc = noise.encrypt(payload);
out('send', noise.encodeFrame(proto.HandshakeMessage.encode({ clientFinish: { static: keyEnc, payload: payloadEnc } }).finish()));
await noise.finishInit();
out('send', noise.encodeFrame(Buffer.from('00f80119', 'hex')));
out('send', noise.encodeFrame(Buffer.from('00f80119', 'hex')));
await noise.decodeFrame(await next(), f => frames.push(f));
console.log('nodes ' + JSON.stringify(frames.map(f => ({ tag: f.tag, attrs: f.attrs }))));
process.exit(0);
"#;

fn baileys_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/oracle/node_modules/baileys")
        .canonicalize()
        .ok()?;
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    (node_ok && dir.join("lib/Utils/noise-handler.js").exists()).then_some(dir)
}

fn run(routing_info: Option<&[u8]>) {
    let Some(dir) = baileys_dir() else {
        eprintln!(
            "skipped: node or the Baileys oracle is not installed (scripts/install-oracle.sh)"
        );
        return;
    };
    let mut rng = StdRng::seed_from_u64(77);
    let ca = CertificateAuthority::generate(&mut rng);
    let static_key = KeyPair::generate(&mut rng);
    let chain = ca
        .issue(
            &ChainSpec::new(1, 0, u64::MAX),
            &static_key.public,
            &mut rng,
        )
        .to_bytes();
    let mut server = ServerConnection::new(static_key, chain, &mut rng);

    let mut cmd = Command::new("node");
    cmd.args(["--input-type=module", "-e", SCRIPT])
        .env("BAILEYS_DIR", &dir)
        .env("ROOT_HEX", hex::encode(ca.root_key().as_bytes()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(ri) = routing_info {
        cmd.env("ROUTING_HEX", hex::encode(ri));
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || {
        let line = lines.next().expect("node output ended").unwrap();
        let (k, v) = line.split_once(' ').unwrap();
        (k.to_string(), v.to_string())
    };

    let (k, noise_pub) = next();
    assert_eq!(k, "noisepub");
    let (k, hello) = next();
    assert_eq!(k, "send");
    server.receive(&hex::decode(hello).unwrap()).unwrap();
    let reply: Vec<u8> = std::iter::from_fn(|| server.poll_transmit())
        .flatten()
        .collect();
    writeln!(stdin, "{}", hex::encode(reply)).unwrap();

    let (k, payload) = next();
    assert_eq!(k, "payload");
    for _ in 0..3 {
        let (k, bytes) = next();
        assert_eq!(k, "send");
        server.receive(&hex::decode(bytes).unwrap()).unwrap();
    }
    match server.poll_event() {
        Some(ServerEvent::HandshakeComplete {
            client,
            routing_info: ri,
        }) => {
            assert_eq!(hex::encode(client.client_static), noise_pub);
            assert_eq!(hex::encode(client.client_payload), payload);
            assert_eq!(ri.as_deref(), routing_info);
        }
        other => panic!("{other:?}"),
    }
    for _ in 0..2 {
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Frame(vec![0x00, 0xf8, 0x01, 0x19]))
        );
    }
    // Two frames glued in one write: Baileys must decrypt and decode both.
    let ping = hex::decode("00f80a1908ff861234b5678a1f11fa000304291657f801f80156").unwrap();
    let mut wire = server.send(&ping).unwrap();
    wire.extend(server.send(&[0x00, 0xf8, 0x01, 0x19]).unwrap());
    writeln!(stdin, "{}", hex::encode(wire)).unwrap();
    let (k, nodes) = next();
    assert_eq!(k, "nodes");
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    assert_eq!(nodes[0]["tag"], "iq");
    assert_eq!(nodes[0]["attrs"]["id"], "1234.5678-1");
    assert_eq!(nodes[1]["tag"], "iq");
    assert!(child.wait().unwrap().success());
}

#[test]
fn baileys_initiator_against_our_responder() {
    run(None);
}

#[test]
fn baileys_initiator_with_edge_routing() {
    run(Some(&[0x08, 0x08, 0x08, 0x02]));
}
