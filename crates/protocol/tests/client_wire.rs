//! The linking state machine over real Noise connections: registration handshake, QR,
//! pair-success, 515, then a login handshake and `<success>` (the test is server and phone).

use prost::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;

use wafleet_protocol::adv::{self, DeviceGrant};
use wafleet_protocol::binary::{decode, encode, Node};
use wafleet_protocol::cert::{CertificateAuthority, ChainSpec};
use wafleet_protocol::client::{DeviceIdentity, Event, Session, SessionConfig};
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::noise::{
    ClientConfig, ClientConnection, ClientEvent, KeyPair, ServerConnection, ServerEvent,
};
use wafleet_protocol::proto::ClientPayload;
use wafleet_protocol::qr::PairingQr;

const NOW_S: u64 = 1_760_000_000;
const NOW_MS: u64 = NOW_S * 1000;

struct Link {
    client: ClientConnection,
    server: ServerConnection,
    session: Session,
}

impl Link {
    /// Handshakes with the session's payload; returns the link and the payload the server got.
    fn open(
        ca: &CertificateAuthority,
        server_key: &KeyPair,
        chain: &[u8],
        identity: DeviceIdentity,
        rng: &mut StdRng,
    ) -> (Link, ClientPayload) {
        let config = ClientConfig {
            root: ca.root_key(),
            noise_key: identity.noise_key.clone(),
            routing_info: None,
        };
        let mut client = ClientConnection::new(config, NOW_S, rng).unwrap();
        let mut server = ServerConnection::new(server_key.clone(), chain.to_vec(), rng);
        let session = Session::new(identity, SessionConfig::default(), rng);
        while let Some(b) = client.poll_transmit() {
            server.receive(&b).unwrap();
        }
        while let Some(b) = server.poll_transmit() {
            client.receive(&b).unwrap();
        }
        assert!(matches!(
            client.poll_event(),
            Some(ClientEvent::ServerHello(_))
        ));
        let payload = session.client_payload().unwrap().encode_to_vec();
        client.finish_handshake(&payload).unwrap();
        while let Some(b) = client.poll_transmit() {
            server.receive(&b).unwrap();
        }
        let Some(ServerEvent::HandshakeComplete { client: info, .. }) = server.poll_event() else {
            panic!("handshake did not complete");
        };
        assert_eq!(info.client_static, session.identity().noise_key.public);
        let got = ClientPayload::decode(info.client_payload.as_slice()).unwrap();
        (
            Link {
                client,
                server,
                session,
            },
            got,
        )
    }

    /// Server → client: one node, through Noise, decoded and handed to the session.
    fn deliver(&mut self, node: &Node, now: u64, rng: &mut StdRng) {
        let wire = self.server.send(&encode(node).unwrap()).unwrap();
        self.client.receive(&wire).unwrap();
        while let Some(ClientEvent::Frame(frame)) = self.client.poll_event() {
            self.session.handle_node(decode(&frame).unwrap(), now, rng);
        }
    }

    /// Client → server: everything the session queued, as the server decodes it.
    fn collect(&mut self) -> Vec<Node> {
        let mut out = Vec::new();
        while let Some(node) = self.session.poll_transmit() {
            let wire = self.client.send(&encode(&node).unwrap()).unwrap();
            self.server.receive(&wire).unwrap();
        }
        while let Some(ev) = self.server.poll_event() {
            if let ServerEvent::Frame(frame) = ev {
                out.push(decode(&frame).unwrap());
            }
        }
        out
    }
}

#[test]
fn qr_link_then_login_over_noise() {
    let mut rng = StdRng::seed_from_u64(99);
    let ca = CertificateAuthority::generate(&mut rng);
    let server_key = KeyPair::generate(&mut rng);
    let chain = ca
        .issue(
            &ChainSpec::new(7, NOW_S - 3600, NOW_S + 3600),
            &server_key.public,
            &mut rng,
        )
        .to_bytes();
    let identity = DeviceIdentity::generate(&mut rng);

    // Registration connection.
    let (mut link, payload) = Link::open(&ca, &server_key, &chain, identity, &mut rng);
    assert_eq!(payload.passive, Some(false));
    assert!(payload.device_pairing_data.is_some());
    let s = Jid::new("", Server::WhatsApp);
    link.deliver(
        &Node::new("iq")
            .attr("from", s.clone())
            .attr("type", "set")
            .attr("id", "pd")
            .children([Node::new("pair-device").children(
                (0..6).map(|i| Node::new("ref").bytes(format!("2@ref{i}").into_bytes())),
            )]),
        NOW_MS,
        &mut rng,
    );
    let acks = link.collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].attr_str("type"), Some("result"));
    let Some(Event::Qr { text, .. }) = link.session.poll_event() else {
        panic!("no QR");
    };
    // The phone scans the QR.
    let qr = PairingQr::parse(text.as_str()).unwrap();
    assert_eq!(qr.reference, "2@ref0");
    let account = KeyPair::generate(&mut rng);
    let grant = DeviceGrant {
        raw_id: 1,
        timestamp: NOW_S,
        key_index: 1,
        hosted: false,
    };
    let di = adv::issue(
        &grant,
        &account.private,
        &qr.adv_secret,
        &qr.identity_public,
        &mut rng,
    );
    link.deliver(
        &Node::new("iq")
            .attr("from", s.clone())
            .attr("type", "result")
            .attr("id", "ps")
            .children([Node::new("pair-success").children([
                Node::new("device-identity").bytes(di),
                Node::new("device")
                    .attr(
                        "jid",
                        Jid::parse("4915112345678:12@s.whatsapp.net").unwrap(),
                    )
                    .attr("lid", Jid::parse("111222333:12@lid").unwrap()),
                Node::new("platform").attr("name", "smbi"),
            ])]),
        NOW_MS + 10_000,
        &mut rng,
    );
    let reply = link.collect();
    let dev = reply[0]
        .child_by_tag("pair-device-sign")
        .and_then(|n| n.child_by_tag("device-identity"))
        .unwrap();
    adv::verify_device_signature(
        dev.content_bytes().unwrap(),
        &account.public,
        &qr.identity_public,
    )
    .unwrap();
    let Some(Event::Paired { identity, .. }) = link.session.poll_event() else {
        panic!("not paired");
    };
    link.deliver(
        &Node::new("stream:error").attr("code", "515"),
        NOW_MS + 11_000,
        &mut rng,
    );
    assert_eq!(link.session.poll_event(), Some(Event::Restart));

    // Login connection with the persisted identity.
    let (mut link, payload) = Link::open(&ca, &server_key, &chain, *identity, &mut rng);
    assert_eq!(payload.username, Some(4915112345678));
    assert_eq!(payload.device, Some(12));
    assert_eq!(payload.passive, Some(true));
    link.deliver(
        &Node::new("success").attr("t", "1760000000"),
        NOW_MS + 20_000,
        &mut rng,
    );
    assert!(matches!(
        link.session.poll_event(),
        Some(Event::Ready { jid, .. }) if jid.to_string() == "4915112345678:12@s.whatsapp.net"
    ));
    let sent = link.collect();
    let tags: Vec<_> = sent.iter().map(|n| n.attr_str("xmlns")).collect();
    assert_eq!(tags, [Some("passive"), Some("encrypt"), None]);
    assert_eq!(sent[2].tag, "ib");
}
