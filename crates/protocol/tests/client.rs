//! The companion linking / login state machine, driven with hand-built server nodes and a
//! seeded rng (the test plays the server and the phone).

use prost::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;

use wafleet_protocol::adv::{self, AdvError, DeviceGrant};
use wafleet_protocol::binary::{AttrValue, Content, Node};
use wafleet_protocol::client::{
    prekeys, DeviceIdentity, DisconnectReason, Event, PairingCodeError, Session, SessionConfig,
    SessionError, WaVersion,
};
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::noise::KeyPair;
use wafleet_protocol::pairing_code::{self, PairingCode, PhoneNumber, PhoneNumberError};
use wafleet_protocol::proto::{AdvSignedDeviceIdentity, AdvSignedDeviceIdentityHmac, DeviceProps};
use wafleet_protocol::qr::PairingQr;

const T0: u64 = 1_700_000_000_000;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn server() -> Jid {
    Jid::new("", Server::WhatsApp)
}

fn drain_events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Everything the session wants sent; each node must encode and decode back.
fn drain_tx(s: &mut Session) -> Vec<Node> {
    let nodes: Vec<Node> = std::iter::from_fn(|| s.poll_transmit()).collect();
    for n in &nodes {
        let bytes = wafleet_protocol::binary::encode(n).expect("encodable");
        let back = wafleet_protocol::binary::decode(&bytes).expect("decodable");
        assert_eq!(back.tag, n.tag);
        assert_eq!(back.attrs, n.attrs);
    }
    nodes
}

fn pair_device(refs: usize) -> Node {
    Node::new("iq")
        .attr("from", server())
        .attr("type", "set")
        .attr("id", "pd-1")
        .children([Node::new("pair-device")
            .children((0..refs).map(|i| Node::new("ref").bytes(format!("ref{i}").into_bytes())))])
}

/// A session that received `pair-device` with 6 refs at T0; returns it and the first QR.
fn linking(seed: u64) -> (Session, StdRng, PairingQr) {
    let mut rng = rng(seed);
    let identity = DeviceIdentity::generate(&mut rng);
    let mut s = Session::new(identity, SessionConfig::default(), &mut rng);
    s.handle_node(pair_device(6), T0, &mut rng);
    let ev = drain_events(&mut s);
    let Some(Event::Qr { text, .. }) = ev.first() else {
        panic!("expected a QR, got {ev:?}");
    };
    let qr = PairingQr::parse(text.as_str()).unwrap();
    drain_tx(&mut s);
    (s, rng, qr)
}

fn pair_success(device_identity: Vec<u8>) -> Node {
    Node::new("iq")
        .attr("from", server())
        .attr("type", "result")
        .attr("id", "ps-1")
        .attr("t", "1700000000")
        .children([Node::new("pair-success").children([
            Node::new("device-identity").bytes(device_identity),
            Node::new("device")
                .attr("jid", Jid::parse("15551234567:7@s.whatsapp.net").unwrap())
                .attr("lid", Jid::parse("98765432101234:7@lid").unwrap()),
            Node::new("platform").attr("name", "android"),
            Node::new("biz").attr("name", "Acme"),
        ])])
}

fn grant() -> DeviceGrant {
    DeviceGrant {
        raw_id: 42,
        timestamp: 1_700_000_000,
        key_index: 3,
        hosted: false,
    }
}

/// A paired session (pair-success handled and 515 received), its identity and the phone's
/// account key.
fn paired(seed: u64) -> (DeviceIdentity, KeyPair) {
    let (mut s, mut rng, qr) = linking(seed);
    let account = KeyPair::generate(&mut rng);
    let di = issue(&account, &qr, &mut rng);
    s.handle_node(pair_success(di), T0 + 5_000, &mut rng);
    (s.identity().clone(), account)
}

fn ready(seed: u64) -> (Session, StdRng) {
    let (identity, _) = paired(seed);
    let mut rng = rng(seed + 1000);
    let mut s = Session::new(identity, SessionConfig::default(), &mut rng);
    s.handle_node(
        Node::new("success")
            .attr("t", "1700000000")
            .attr("lid", Jid::parse("98765432101234:7@lid").unwrap()),
        T0,
        &mut rng,
    );
    (s, rng)
}

fn attr<'a>(n: &'a Node, k: &str) -> &'a str {
    n.attr_str(k)
        .unwrap_or_else(|| panic!("no string attr {k} on {n:?}"))
}

#[test]
fn qr_rotation_timing_and_exhaustion() {
    let mut rng = rng(1);
    let identity = DeviceIdentity::generate(&mut rng);
    let mut s = Session::new(identity.clone(), SessionConfig::default(), &mut rng);
    assert_eq!(s.poll_timeout(), None);
    s.handle_node(pair_device(6), T0, &mut rng);

    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].tag, "iq");
    assert_eq!(attr(&tx[0], "type"), "result");
    assert_eq!(attr(&tx[0], "id"), "pd-1");
    assert_eq!(tx[0].attr_jid("to"), Some(&server()));
    assert_eq!(tx[0].content, Content::None);

    let mut seen = Vec::new();
    let mut now = T0;
    loop {
        for ev in drain_events(&mut s) {
            match ev {
                Event::Qr {
                    text,
                    expires_at,
                    seq,
                    remaining,
                } => {
                    let qr = PairingQr::parse(text.as_str()).unwrap();
                    assert_eq!(qr.reference, format!("ref{seq}"));
                    assert_eq!(qr.noise_public, identity.noise_key.public);
                    assert_eq!(qr.identity_public, identity.identity_key.public);
                    assert_eq!(qr.adv_secret, identity.adv_secret);
                    assert_eq!(remaining, 5 - seq);
                    let ttl = if seq == 0 { 60_000 } else { 20_000 };
                    assert_eq!(expires_at, now + ttl);
                    seen.push((seq, expires_at));
                }
                Event::Disconnected(reason) => {
                    assert_eq!(reason, DisconnectReason::QrExhausted);
                    assert!(!reason.should_reconnect());
                    assert_eq!(seen.len(), 6);
                    assert_eq!(now, T0 + 160_000);
                    assert!(s.is_closed());
                    assert_eq!(s.poll_timeout(), None);
                    return;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let next = s.poll_timeout().expect("a QR deadline");
        // Nothing happens just before the deadline.
        s.handle_timeout(next - 1, &mut rng);
        assert!(s.poll_event().is_none());
        now = next;
        s.handle_timeout(now, &mut rng);
        assert!(drain_tx(&mut s).is_empty());
    }
}

#[test]
fn configurable_qr_durations() {
    let mut rng = rng(2);
    let identity = DeviceIdentity::generate(&mut rng);
    let config = SessionConfig {
        first_qr_ttl_ms: 5_000,
        next_qr_ttl_ms: 1_000,
        ..SessionConfig::default()
    };
    let mut s = Session::new(identity, config, &mut rng);
    s.handle_node(pair_device(2), T0, &mut rng);
    assert!(
        matches!(s.poll_event(), Some(Event::Qr { expires_at, remaining: 1, .. }) if expires_at == T0 + 5_000)
    );
    s.handle_timeout(T0 + 5_000, &mut rng);
    assert!(
        matches!(s.poll_event(), Some(Event::Qr { expires_at, seq: 1, remaining: 0, .. }) if expires_at == T0 + 6_000)
    );
    s.handle_timeout(T0 + 6_000, &mut rng);
    assert_eq!(
        s.poll_event(),
        Some(Event::Disconnected(DisconnectReason::QrExhausted))
    );
}

/// The phone's device identity for the companion behind `qr`, signed by `account`.
fn issue(account: &KeyPair, qr: &PairingQr, rng: &mut StdRng) -> Vec<u8> {
    adv::issue(
        &grant(),
        &account.private,
        &qr.adv_secret,
        &qr.identity_public,
        rng,
    )
}

#[test]
fn pair_success_happy_path_then_restart_and_login_payload() {
    let (mut s, mut rng, qr) = linking(3);
    let account = KeyPair::generate(&mut rng);
    let di = issue(&account, &qr, &mut rng);
    s.handle_node(pair_success(di), T0 + 5_000, &mut rng);

    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 2);
    // t=1700000000 s, now = T0 + 5 s: the server is 5 s behind.
    assert_eq!(s.server_time_offset_ms(), -5_000);
    let unified = child(&tx[1], "unified_session");
    assert_eq!(tx[1].tag, "ib");
    let want = (T0 + 3 * 86_400_000) % (7 * 86_400_000);
    assert_eq!(attr(unified, "id"), want.to_string());
    let reply = &tx[0];
    assert_eq!(attr(reply, "type"), "result");
    assert_eq!(attr(reply, "id"), "ps-1");
    assert_eq!(reply.attr_jid("to"), Some(&server()));
    let sign = reply.child_by_tag("pair-device-sign").unwrap();
    let dev = sign.child_by_tag("device-identity").unwrap();
    assert_eq!(attr(dev, "key-index"), "3");
    let signed = adv::verify_device_signature(
        dev.content_bytes().unwrap(),
        &account.public,
        &qr.identity_public,
    )
    .expect("the phone accepts our device signature");
    assert_eq!(signed.account_signature_key, None, "key stripped in reply");

    let ev = drain_events(&mut s);
    assert_eq!(ev.len(), 1);
    let Event::Paired {
        jid,
        lid,
        platform,
        business_name,
        identity,
    } = &ev[0]
    else {
        panic!("expected Paired, got {ev:?}");
    };
    assert_eq!(jid.to_string(), "15551234567:7@s.whatsapp.net");
    assert_eq!(lid.as_ref().unwrap().to_string(), "98765432101234:7@lid");
    assert_eq!(platform.as_deref(), Some("android"));
    assert_eq!(business_name.as_deref(), Some("Acme"));
    assert!(identity.is_paired());
    assert_eq!(**identity, *s.identity());
    let account_stored = identity.account().unwrap();
    assert_eq!(
        account_stored.account_signature_key.as_deref(),
        Some(&account.public[..])
    );
    assert!(account_stored.device_signature.is_some());

    // QR rotation stopped.
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(T0 + 1_000_000, &mut rng);
    assert!(s.poll_event().is_none());

    // 515 → restart, terminal.
    s.handle_node(
        Node::new("stream:error").attr("code", "515"),
        T0 + 6_000,
        &mut rng,
    );
    assert_eq!(s.poll_event(), Some(Event::Restart));
    assert!(s.is_closed());

    // The persisted identity survives serde and logs in.
    let json = serde_json::to_string(identity).unwrap();
    let back: DeviceIdentity = serde_json::from_str(&json).unwrap();
    assert_eq!(back, **identity);
    let s2 = Session::new(back, SessionConfig::default(), &mut rng);
    let payload = s2.client_payload().unwrap();
    assert_eq!(payload.username, Some(15551234567));
    assert_eq!(payload.device, Some(7));
    assert_eq!(payload.passive, Some(true));
    assert_eq!(payload.pull, Some(true));
    assert!(payload.device_pairing_data.is_none());
}

#[test]
fn debug_output_has_no_key_material() {
    let (identity, _) = paired(4);
    let dbg = format!("{identity:?}");
    for secret in [
        hex::encode(identity.noise_key.private),
        hex::encode(identity.identity_key.private),
        hex::encode(identity.signed_pre_key.key_pair.private),
        hex::encode(identity.adv_secret),
    ] {
        assert!(!dbg.contains(&secret));
    }
    let mut rng = rng(4);
    let identity = DeviceIdentity::generate(&mut rng);
    let mut s = Session::new(identity, SessionConfig::default(), &mut rng);
    s.handle_node(pair_device(6), T0, &mut rng);
    let ev = s.poll_event().unwrap();
    let Event::Qr { text, .. } = &ev else {
        panic!("expected a QR");
    };
    let qr = PairingQr::parse(text.as_str()).unwrap();
    let dbg = format!("{ev:?} {s:?}");
    assert!(!dbg.contains(&qr.reference));
    assert!(!dbg.contains(&text.as_str()[40..]));
}

fn expect_auth_failure(s: &mut Session, want: AdvError, text: &str) {
    let tx = drain_tx(s);
    assert_eq!(tx.len(), 1);
    assert_eq!(attr(&tx[0], "type"), "error");
    assert_eq!(attr(&tx[0], "id"), "ps-1");
    let err = tx[0].child_by_tag("error").unwrap();
    assert_eq!(attr(err, "code"), "401");
    assert_eq!(attr(err, "text"), text);
    assert_eq!(drain_events(s), vec![Event::AuthFailure(want)]);
    assert!(!s.identity().is_paired());
}

#[test]
fn tampered_hmac_is_refused_with_401_hmac_mismatch() {
    let (mut s, mut rng, qr) = linking(5);
    let account = KeyPair::generate(&mut rng);
    let di = issue(&account, &qr, &mut rng);
    let mut wrapper = AdvSignedDeviceIdentityHmac::decode(di.as_slice()).unwrap();
    wrapper.hmac.as_mut().unwrap()[0] ^= 1;
    s.handle_node(pair_success(wrapper.encode_to_vec()), T0, &mut rng);
    expect_auth_failure(&mut s, AdvError::HmacMismatch, "hmac-mismatch");
}

#[test]
fn bad_account_signature_is_refused_with_401_signature_mismatch() {
    let (mut s, mut rng, qr) = linking(6);
    let account = KeyPair::generate(&mut rng);
    let someone_else = KeyPair::generate(&mut rng);
    // Signed for another identity key, HMAC still correct.
    let di = adv::issue(
        &grant(),
        &account.private,
        &qr.adv_secret,
        &someone_else.public,
        &mut rng,
    );
    s.handle_node(pair_success(di), T0, &mut rng);
    expect_auth_failure(&mut s, AdvError::SignatureMismatch, "signature-mismatch");
}

#[test]
fn pair_success_without_device_identity_does_not_panic() {
    let (mut s, mut rng, _) = linking(7);
    s.handle_node(
        Node::new("iq")
            .attr("id", "ps-1")
            .children([Node::new("pair-success")]),
        T0,
        &mut rng,
    );
    let tx = drain_tx(&mut s);
    assert_eq!(attr(tx[0].child_by_tag("error").unwrap(), "code"), "500");
    assert!(matches!(s.poll_event(), Some(Event::AuthFailure(_))));
}

fn disconnect_for(node: Node) -> DisconnectReason {
    let (mut s, mut rng) = ready(8);
    drain_events(&mut s);
    s.handle_node(node, T0 + 1, &mut rng);
    let ev = drain_events(&mut s);
    assert!(s.is_closed());
    match ev.as_slice() {
        [Event::Disconnected(r)] => r.clone(),
        other => panic!("expected one Disconnected, got {other:?}"),
    }
}

#[test]
fn stream_errors_map_to_reasons() {
    let replaced = disconnect_for(
        Node::new("stream:error").children([Node::new("conflict").attr("type", "replaced")]),
    );
    assert_eq!(replaced, DisconnectReason::Replaced);
    assert!(!replaced.should_reconnect());

    let removed = disconnect_for(
        Node::new("stream:error")
            .attr("code", "401")
            .children([Node::new("conflict").attr("type", "device_removed")]),
    );
    assert_eq!(removed, DisconnectReason::LoggedOut);
    assert!(!removed.should_reconnect() && removed.is_logged_out());

    let removed = disconnect_for(
        Node::new("stream:error").children([Node::new("conflict").attr("type", "device_removed")]),
    );
    assert_eq!(removed, DisconnectReason::LoggedOut);
    assert_eq!(
        disconnect_for(Node::new("stream:error").attr("code", "401")),
        DisconnectReason::LoggedOut
    );

    let outdated = disconnect_for(Node::new("failure").attr("reason", "405"));
    assert_eq!(outdated, DisconnectReason::ClientOutdated);
    assert!(!outdated.should_reconnect());

    let unavailable = disconnect_for(Node::new("stream:error").attr("code", "503"));
    assert_eq!(unavailable, DisconnectReason::ServiceUnavailable);
    assert!(unavailable.should_reconnect());

    let other = disconnect_for(
        Node::new("stream:error")
            .attr("code", "500")
            .children([Node::new("xml-not-well-formed")]),
    );
    assert_eq!(
        other,
        DisconnectReason::StreamError {
            code: Some(500),
            detail: Some("xml-not-well-formed".into())
        }
    );
    assert!(other.should_reconnect());
    assert!(!disconnect_for(Node::new("failure").attr("reason", "401")).should_reconnect());
}

#[test]
fn success_gives_ready_and_post_login_queries() {
    let (mut s, _) = ready(9);
    let ev = drain_events(&mut s);
    assert_eq!(
        ev,
        vec![Event::Ready {
            jid: Jid::parse("15551234567:7@s.whatsapp.net").unwrap(),
            lid: Some(Jid::parse("98765432101234:7@lid").unwrap()),
        }]
    );
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 3);
    assert_eq!(tx[2].tag, "ib");
    assert!(tx[2].child_by_tag("unified_session").is_some());
    assert_eq!(attr(&tx[0], "xmlns"), "passive");
    assert_eq!(attr(&tx[0], "type"), "set");
    assert!(tx[0].child_by_tag("active").is_some());
    assert_eq!(attr(&tx[1], "xmlns"), "encrypt");
    assert_eq!(attr(&tx[1], "type"), "get");
    assert!(tx[1].child_by_tag("count").is_some());
    assert_eq!(tx[1].attr_jid("to"), Some(&server()));
}

fn count_result(id: &str, value: u32) -> Node {
    Node::new("iq")
        .attr("from", server())
        .attr("type", "result")
        .attr("id", id.to_owned())
        .children([Node::new("count").attr("value", value.to_string())])
}

fn bytes(n: &Node, tag: &str) -> Vec<u8> {
    n.child_by_tag(tag)
        .and_then(Node::content_bytes)
        .unwrap_or_else(|| panic!("no bytes <{tag}>"))
        .to_vec()
}

#[test]
fn prekey_upload_shape_and_ordering() {
    let (mut s, mut rng) = ready(10);
    drain_events(&mut s);
    let tx = drain_tx(&mut s);
    let count_id = attr(&tx[1], "id").to_owned();
    s.handle_node(count_result(&count_id, 0), T0 + 10, &mut rng);

    let ev = drain_events(&mut s);
    let [Event::PreKeysGenerated { keys, identity }] = ev.as_slice() else {
        panic!("expected PreKeysGenerated, got {ev:?}");
    };
    assert_eq!(keys.len(), prekeys::FIRST_UPLOAD_COUNT);
    assert_eq!(keys.len(), 812);
    assert_eq!(identity.next_pre_key_id, 813);
    // Not transmitted before the caller confirms persistence.
    assert!(s.poll_transmit().is_none());
    s.confirm_pre_keys_persisted().unwrap();
    assert_eq!(
        s.confirm_pre_keys_persisted(),
        Err(SessionError::NoPendingUpload)
    );
    let up = s.poll_transmit().expect("upload released");
    assert_eq!(attr(&up, "xmlns"), "encrypt");
    assert_eq!(attr(&up, "type"), "set");
    assert_eq!(
        bytes(&up, "registration"),
        identity.registration_id.to_be_bytes()
    );
    assert_eq!(bytes(&up, "type"), [5]);
    assert_eq!(bytes(&up, "identity"), identity.identity_key.public);
    let list: Vec<&Node> = up
        .child_by_tag("list")
        .unwrap()
        .children_by_tag("key")
        .collect();
    assert_eq!(list.len(), 812);
    for (i, (k, key)) in list.iter().zip(keys).enumerate() {
        let id = bytes(k, "id");
        assert_eq!(id.len(), 3);
        assert_eq!(u32::from_be_bytes([0, id[0], id[1], id[2]]), i as u32 + 1);
        assert_eq!(bytes(k, "value"), key.key_pair.public);
    }
    let skey = up.child_by_tag("skey").unwrap();
    assert_eq!(bytes(skey, "id"), [0, 0, 1]);
    assert_eq!(
        bytes(skey, "value"),
        identity.signed_pre_key.key_pair.public
    );
    assert_eq!(bytes(skey, "signature").len(), 64);
    assert!(identity
        .signed_pre_key
        .verify(&identity.identity_key.public));
    // The upload encodes (ids are raw bytes, not strings).
    wafleet_protocol::binary::encode(&up).unwrap();

    // Server accepts; a later low count uploads 50 more, continuing the ids.
    s.handle_node(
        Node::new("iq")
            .attr("type", "result")
            .attr("id", attr(&up, "id").to_owned()),
        T0 + 20,
        &mut rng,
    );
    let identity = (**identity).clone();
    let mut s = Session::new(identity, SessionConfig::default(), &mut rng);
    s.handle_node(Node::new("success"), T0, &mut rng);
    let tx = drain_tx(&mut s);
    s.handle_node(count_result(attr(&tx[1], "id"), 4), T0 + 10, &mut rng);
    let ev = drain_events(&mut s);
    let Some(Event::PreKeysGenerated { keys, .. }) = ev.last() else {
        panic!("expected PreKeysGenerated, got {ev:?}");
    };
    assert_eq!(keys.len(), 50);
    assert_eq!(keys[0].id, 813);

    // Enough keys on the server: nothing.
    let (mut s, mut rng) = ready(11);
    let tx = drain_tx(&mut s);
    drain_events(&mut s);
    s.handle_node(count_result(attr(&tx[1], "id"), 5), T0 + 10, &mut rng);
    assert!(drain_events(&mut s).is_empty());
}

#[test]
fn keepalive_pings_and_times_out() {
    let (mut s, mut rng) = ready(12);
    drain_events(&mut s);
    drain_tx(&mut s);
    let first = s.poll_timeout().unwrap();
    assert!((T0 + 20_000..=T0 + 30_000).contains(&first), "{first}");
    s.handle_timeout(first, &mut rng);
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 1);
    assert_eq!(attr(&tx[0], "xmlns"), "w:p");
    assert_eq!(attr(&tx[0], "type"), "get");
    assert_eq!(tx[0].attr_jid("to"), Some(&server()));
    assert!(tx[0].child_by_tag("ping").is_some());
    assert_eq!(s.poll_timeout(), Some(first + 10_000));

    // Answered: the next ping is scheduled 20–30 s after the answer.
    let answered = first + 300;
    s.handle_node(
        Node::new("iq")
            .attr("type", "result")
            .attr("id", attr(&tx[0], "id").to_owned()),
        answered,
        &mut rng,
    );
    let second = s.poll_timeout().unwrap();
    assert!((answered + 20_000..=answered + 30_000).contains(&second));
    s.handle_timeout(second, &mut rng);
    assert_eq!(drain_tx(&mut s).len(), 1);
    // Unanswered: dead at the deadline, not before.
    s.handle_timeout(second + 9_999, &mut rng);
    assert!(s.poll_event().is_none());
    s.handle_timeout(second + 10_000, &mut rng);
    let ev = drain_events(&mut s);
    assert_eq!(
        ev,
        vec![Event::Disconnected(DisconnectReason::KeepaliveTimeout)]
    );
    assert!(DisconnectReason::KeepaliveTimeout.should_reconnect());
    assert!(s.is_closed());
}

#[test]
fn inbound_stanzas_are_acked() {
    let (mut s, mut rng) = ready(13);
    drain_tx(&mut s);
    drain_events(&mut s);
    let group = Jid::parse("123-456@g.us").unwrap();
    let sender = Jid::parse("15550001111:2@s.whatsapp.net").unwrap();
    s.handle_node(
        Node::new("message")
            .attr("from", group.clone())
            .attr("id", "M1")
            .attr("participant", sender.clone())
            .attr("type", "text")
            .children([Node::new("enc").bytes(vec![1, 2, 3])]),
        T0,
        &mut rng,
    );
    s.handle_node(
        Node::new("receipt")
            .attr("from", sender.clone())
            .attr("id", "R1")
            .attr("type", "read"),
        T0,
        &mut rng,
    );
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 2);
    assert_eq!(tx[0].tag, "ack");
    assert_eq!(attr(&tx[0], "class"), "message");
    assert_eq!(attr(&tx[0], "id"), "M1");
    assert_eq!(tx[0].attr_jid("to"), Some(&group));
    assert_eq!(tx[0].attr_jid("participant"), Some(&sender));
    assert_eq!(attr(&tx[0], "type"), "text");
    assert_eq!(
        tx[0].attr_jid("from"),
        Some(&Jid::parse("15551234567:7@s.whatsapp.net").unwrap())
    );
    assert!(tx[1].get_attr("from").is_none());
    assert_eq!(attr(&tx[1], "class"), "receipt");
    assert_eq!(attr(&tx[1], "type"), "read");
    assert!(drain_events(&mut s).is_empty());
}

#[test]
fn registration_payload_fields() {
    let mut rng = rng(14);
    let identity = DeviceIdentity::generate(&mut rng);
    let s = Session::new(identity.clone(), SessionConfig::default(), &mut rng);
    let p = s.client_payload().unwrap();
    assert_eq!(p.passive, Some(false));
    assert_eq!(p.pull, Some(false));
    assert_eq!(p.username, None);
    assert_eq!(p.connect_type, Some(1));
    assert_eq!(p.connect_reason, Some(1));
    let ua = p.user_agent.as_ref().unwrap();
    assert_eq!(ua.platform, Some(14));
    let v = ua.app_version.as_ref().unwrap();
    assert_eq!(
        (v.primary, v.secondary, v.tertiary),
        (Some(2), Some(3000), Some(1043857760))
    );
    let d = p.device_pairing_data.as_ref().unwrap();
    assert_eq!(
        d.e_regid.as_deref(),
        Some(&identity.registration_id.to_be_bytes()[..])
    );
    assert_eq!(d.e_keytype.as_deref(), Some(&[5u8][..]));
    assert_eq!(
        d.e_ident.as_deref(),
        Some(&identity.identity_key.public[..])
    );
    assert_eq!(d.e_skey_id.as_deref(), Some(&[0u8, 0, 1][..]));
    assert_eq!(d.e_skey_sig.as_ref().map(Vec::len), Some(64));
    // md5("2.3000.1043857760"), computed with Python's hashlib.
    assert_eq!(
        hex::encode(d.build_hash.as_ref().unwrap()),
        "f6f65c0607a1cdffd8752b051fc95edf"
    );
    assert_eq!(WaVersion::DEFAULT.to_string(), "2.3000.1043857760");
    let props = DeviceProps::decode(d.device_props.as_deref().unwrap()).unwrap();
    assert_eq!(props.os.as_deref(), Some("Linux"));
    assert_eq!(props.platform_type, Some(1));
    // Login payload is refused while unpaired.
    assert!(SessionConfig::default()
        .profile
        .login_payload(&identity)
        .is_err());
}

#[test]
fn client_type_and_platform_id_follow_baileys() {
    use wafleet_protocol::client::{Browser, ClientProfile};
    use wafleet_protocol::qr::ClientType;
    let edge = ClientProfile {
        browser: Browser::Edge,
        os: "Windows".into(),
        ..ClientProfile::default()
    };
    assert_eq!(edge.platform_id(), "2");
    assert_eq!(edge.platform_display(), "Edge (Windows)");
    assert_eq!(edge.browser.platform_type() as i32, 6);
    let desktop = |os: &str| ClientProfile {
        browser: Browser::Desktop,
        os: os.into(),
        ..ClientProfile::default()
    };
    assert_eq!(desktop("Windows").client_type(), ClientType::Uwp);
    assert_eq!(desktop("Mac OS").client_type(), ClientType::Electron);
    assert_eq!(desktop("Mac OS").platform_id(), "7");
}

#[test]
fn invalid_phone_numbers_are_rejected() {
    assert_eq!(
        PhoneNumber::parse("0151 1234567"),
        Err(PhoneNumberError::LeadingZero)
    );
    assert_eq!(
        PhoneNumber::parse("+1 555 CALL NOW"),
        Err(PhoneNumberError::NotDigits('C'))
    );
    assert_eq!(
        PhoneNumber::parse("12345"),
        Err(PhoneNumberError::Length(5))
    );
    assert!(PhoneNumber::parse("+1 (555) 123-4567").is_ok());
}

#[test]
fn pairing_code_requires_linking_state() {
    let mut rng = rng(15);
    let identity = DeviceIdentity::generate(&mut rng);
    let mut s = Session::new(identity, SessionConfig::default(), &mut rng);
    let phone = PhoneNumber::parse("15551234567").unwrap();
    assert_eq!(
        s.request_pairing_code(&phone, T0, &mut rng),
        Err(SessionError::PairingCode(PairingCodeError::NotLinking))
    );
}

fn child<'a>(n: &'a Node, tag: &str) -> &'a Node {
    n.child_by_tag(tag)
        .unwrap_or_else(|| panic!("no <{tag}> in {n:?}"))
}

fn text_of(n: &Node) -> String {
    match &n.content {
        Content::Str(s) => s.to_string(),
        Content::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("no text: {other:?}"),
    }
}

#[test]
fn pairing_code_end_to_end() {
    let (mut s, mut rng, _) = linking(16);
    let phone = PhoneNumber::parse("+1 555 123 4567").unwrap();
    s.request_pairing_code(&phone, T0 + 1_000, &mut rng)
        .unwrap();
    assert_eq!(
        s.request_pairing_code(&phone, T0 + 1_001, &mut rng),
        Err(SessionError::PairingCode(
            PairingCodeError::AlreadyRequested
        ))
    );
    let ev = drain_events(&mut s);
    let [Event::PairingCode { code, expires_at }] = ev.as_slice() else {
        panic!("expected PairingCode, got {ev:?}");
    };
    assert_eq!(*expires_at, T0 + 160_000);
    let shown = code.as_str();
    assert_eq!(shown.len(), 9);
    assert_eq!(&shown[4..5], "-");
    let code = PairingCode::parse(shown).unwrap();

    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 1);
    let hello = &tx[0];
    assert_eq!(attr(hello, "xmlns"), "md");
    assert_eq!(attr(hello, "type"), "set");
    assert_eq!(hello.attr_jid("to"), Some(&server()));
    let reg = child(hello, "link_code_companion_reg");
    assert_eq!(
        reg.attr_jid("jid"),
        Some(&Jid::new("15551234567", Server::WhatsApp))
    );
    assert_eq!(attr(reg, "stage"), "companion_hello");
    assert_eq!(attr(reg, "should_show_push_notification"), "true");
    let wrapped = bytes(reg, "link_code_pairing_wrapped_companion_ephemeral_pub");
    assert_eq!(wrapped.len(), 80);
    assert_eq!(
        bytes(reg, "companion_server_auth_key_pub"),
        s.identity().noise_key.public
    );
    assert_eq!(text_of(child(reg, "companion_platform_id")), "1");
    assert_eq!(
        text_of(child(reg, "companion_platform_display")),
        "Chrome (Linux)"
    );
    assert_eq!(text_of(child(reg, "link_code_pairing_nonce")), "0");
    wafleet_protocol::binary::encode(hello).unwrap();

    // The phone (the user typed the code) recovers the companion ephemeral.
    let companion_eph = pairing_code::unwrap_ephemeral(&code, &wrapped).unwrap();

    // Server result with the ref.
    s.handle_node(
        Node::new("iq")
            .attr("from", server())
            .attr("type", "result")
            .attr("id", attr(hello, "id").to_owned())
            .children([Node::new("link_code_companion_reg")
                .children([Node::new("link_code_pairing_ref").bytes(b"LINKREF".to_vec())])]),
        T0 + 1_200,
        &mut rng,
    );
    assert!(drain_events(&mut s).is_empty());

    // A QR rotation does not re-request a code.
    s.handle_timeout(T0 + 60_000, &mut rng);
    assert!(matches!(s.poll_event(), Some(Event::Qr { seq: 1, .. })));
    assert!(drain_tx(&mut s).is_empty());

    // primary_hello with a wrong ref is refused (acked, no finish).
    let primary_eph = KeyPair::generate(&mut rng);
    let primary_identity = KeyPair::generate(&mut rng);
    let wrapped_primary =
        pairing_code::wrap_ephemeral(&code, &[7; 32], &[9; 16], &primary_eph.public);
    let hello_node = |reference: &[u8]| {
        Node::new("notification")
            .attr("from", server())
            .attr("id", "N1")
            .attr("type", "link_code_companion_reg")
            .children([Node::new("link_code_companion_reg")
                .attr("stage", "primary_hello")
                .children([
                    Node::new("link_code_pairing_ref").bytes(reference.to_vec()),
                    Node::new("primary_identity_pub").bytes(primary_identity.public),
                    Node::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                        .bytes(wrapped_primary),
                ])])
    };
    s.handle_node(hello_node(b"OTHER"), T0 + 61_000, &mut rng);
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].tag, "ack");
    assert!(matches!(
        s.poll_event(),
        Some(Event::PairingCodeFailed { .. })
    ));

    s.handle_node(hello_node(b"LINKREF"), T0 + 62_000, &mut rng);
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 2);
    let ack = &tx[0];
    assert_eq!(ack.tag, "ack");
    assert_eq!(attr(ack, "class"), "notification");
    assert_eq!(attr(ack, "id"), "N1");
    assert_eq!(attr(ack, "type"), "link_code_companion_reg");
    let finish = &tx[1];
    assert_eq!(attr(finish, "xmlns"), "md");
    let reg = child(finish, "link_code_companion_reg");
    assert_eq!(attr(reg, "stage"), "companion_finish");
    assert_eq!(
        reg.attr_jid("jid"),
        Some(&Jid::new("15551234567", Server::WhatsApp))
    );
    assert_eq!(bytes(reg, "link_code_pairing_ref"), b"LINKREF");
    let companion_identity = s.identity().identity_key.public;
    assert_eq!(bytes(reg, "companion_identity_public"), companion_identity);
    let bundle_bytes = bytes(reg, "link_code_pairing_wrapped_key_bundle");
    assert_eq!(bundle_bytes.len(), 156);

    // The phone opens the bundle and derives the same ADV secret.
    let eph_shared = primary_eph.dh(&companion_eph).unwrap();
    let bundle = pairing_code::unwrap_key_bundle(&eph_shared, &bundle_bytes).unwrap();
    assert_eq!(bundle.companion_identity, companion_identity);
    assert_eq!(bundle.primary_identity, primary_identity.public);
    let identity_shared = primary_identity.dh(&companion_identity).unwrap();
    let adv_secret = pairing_code::adv_secret(&eph_shared, &identity_shared, &bundle.random);
    assert_eq!(s.identity().adv_secret, adv_secret);

    // The finish result, then pair-success keyed with the derived secret.
    s.handle_node(
        Node::new("iq")
            .attr("type", "result")
            .attr("id", attr(finish, "id").to_owned()),
        T0 + 62_100,
        &mut rng,
    );
    let account = KeyPair::generate(&mut rng);
    let di = adv::issue(
        &grant(),
        &account.private,
        &adv_secret,
        &companion_identity,
        &mut rng,
    );
    s.handle_node(pair_success(di), T0 + 63_000, &mut rng);
    let ev = drain_events(&mut s);
    assert!(
        matches!(ev.as_slice(), [Event::Paired { identity, .. }] if identity.adv_secret == adv_secret),
        "{ev:?}"
    );
}

#[test]
fn unpaired_identity_roundtrips_serde() {
    let mut rng = rng(17);
    let identity = DeviceIdentity::generate(&mut rng);
    let json = serde_json::to_value(&identity).unwrap();
    assert!(json["jid"].is_null());
    let back: DeviceIdentity = serde_json::from_value(json).unwrap();
    assert_eq!(back, identity);
    assert!(identity
        .signed_pre_key
        .verify(&identity.identity_key.public));
    let _ = AdvSignedDeviceIdentity::default();
    let _ = AttrValue::from("x");
}

#[test]
fn server_ping_is_answered_and_stray_results_ignored() {
    let (mut s, mut rng) = ready(18);
    drain_tx(&mut s);
    drain_events(&mut s);
    s.handle_node(
        Node::new("iq")
            .attr("from", server())
            .attr("id", "SP1")
            .attr("type", "get")
            .attr("xmlns", "urn:xmpp:ping"),
        T0,
        &mut rng,
    );
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 1);
    assert_eq!(attr(&tx[0], "id"), "SP1");
    assert_eq!(attr(&tx[0], "type"), "result");
    // A result for an id we never sent, and a pair-device on a paired device: no effect.
    s.handle_node(count_result("nope", 0), T0, &mut rng);
    s.handle_node(pair_device(6), T0, &mut rng);
    assert!(drain_events(&mut s).is_empty());
    assert!(!s.is_closed());
}

#[test]
fn hosted_account_pairs() {
    let (mut s, mut rng, qr) = linking(19);
    let account = KeyPair::generate(&mut rng);
    let hosted = DeviceGrant {
        hosted: true,
        ..grant()
    };
    let di = adv::issue(
        &hosted,
        &account.private,
        &qr.adv_secret,
        &qr.identity_public,
        &mut rng,
    );
    s.handle_node(pair_success(di), T0, &mut rng);
    assert!(matches!(s.poll_event(), Some(Event::Paired { .. })));
}

#[test]
fn info_broadcasts() {
    let (mut s, mut rng) = ready(20);
    drain_tx(&mut s);
    drain_events(&mut s);
    s.handle_node(
        Node::new("ib").children([Node::new("offline_preview").attr("count", "7")]),
        T0,
        &mut rng,
    );
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 1);
    assert_eq!(attr(child(&tx[0], "offline_batch"), "count"), "100");
    s.handle_node(
        Node::new("ib").children([
            Node::new("edge_routing").children([Node::new("routing_info").bytes(vec![8, 9, 10])]),
            Node::new("offline").attr("count", "7"),
        ]),
        T0,
        &mut rng,
    );
    assert_eq!(
        drain_events(&mut s),
        vec![
            Event::RoutingInfo(vec![8, 9, 10]),
            Event::OfflineDelivered { count: 7 }
        ]
    );
}

fn logout_answer(id: &str, ok: bool) -> Node {
    let node = Node::new("iq")
        .attr("from", server())
        .attr("type", if ok { "result" } else { "error" })
        .attr("id", id.to_owned());
    if ok {
        node
    } else {
        node.children([Node::new("error")
            .attr("code", "500")
            .attr("text", "internal-server-error")])
    }
}

/// A ready session with its post-login traffic drained.
fn ready_and_quiet(seed: u64) -> (Session, StdRng) {
    let (mut s, rng) = ready(seed);
    drain_tx(&mut s);
    drain_events(&mut s);
    (s, rng)
}

#[test]
fn logout_needs_a_logged_in_session() {
    let mut rng = rng(30);
    let identity = DeviceIdentity::generate(&mut rng);
    let mut fresh = Session::new(identity, SessionConfig::default(), &mut rng);
    assert_eq!(fresh.logout(), Err(SessionError::NotLoggedIn));
    let (mut linking, _, _) = linking(31);
    assert_eq!(linking.logout(), Err(SessionError::NotLoggedIn));
    // Paired but `success` not received yet (the socket after 515).
    let (identity, _) = paired(32);
    let mut waiting = Session::new(identity, SessionConfig::default(), &mut rng);
    assert_eq!(waiting.logout(), Err(SessionError::NotLoggedIn));
    for s in [&mut fresh, &mut linking, &mut waiting] {
        assert!(drain_tx(s).is_empty());
        assert!(drain_events(s).is_empty());
        assert!(!s.is_closed());
    }
}

#[test]
fn logout_sends_remove_companion_device_and_the_result_logs_out() {
    let (mut s, mut rng) = ready_and_quiet(33);
    s.logout().unwrap();
    let tx = drain_tx(&mut s);
    assert_eq!(tx.len(), 1, "{tx:?}");
    let iq = &tx[0];
    assert_eq!(iq.tag, "iq");
    assert_eq!(attr(iq, "xmlns"), "md");
    assert_eq!(attr(iq, "type"), "set");
    assert_eq!(iq.attr_jid("to"), Some(&server()));
    let remove = child(iq, "remove-companion-device");
    assert_eq!(
        remove.attr_jid("jid"),
        Some(&Jid::parse("15551234567:7@s.whatsapp.net").unwrap())
    );
    assert_eq!(attr(remove, "reason"), "user_initiated");
    // One logout per connection at a time.
    assert_eq!(s.logout(), Err(SessionError::LogoutPending));
    assert!(drain_tx(&mut s).is_empty());
    // A result for another id changes nothing.
    s.handle_node(logout_answer("other", true), T0, &mut rng);
    assert!(drain_events(&mut s).is_empty());
    let id = attr(iq, "id").to_owned();
    s.handle_node(logout_answer(&id, true), T0 + 100, &mut rng);
    assert_eq!(
        drain_events(&mut s),
        vec![
            Event::LoggedOut,
            Event::Disconnected(DisconnectReason::LoggedOut)
        ]
    );
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
    // The server's later device_removed is not reported twice.
    s.handle_node(
        Node::new("stream:error")
            .attr("code", "401")
            .children([Node::new("conflict").attr("type", "device_removed")]),
        T0 + 200,
        &mut rng,
    );
    assert!(drain_events(&mut s).is_empty());
}

#[test]
fn a_refused_logout_keeps_the_session_logged_in() {
    let (mut s, mut rng) = ready_and_quiet(34);
    s.logout().unwrap();
    let id = attr(&drain_tx(&mut s)[0], "id").to_owned();
    s.handle_node(logout_answer(&id, false), T0, &mut rng);
    assert_eq!(
        drain_events(&mut s),
        vec![Event::LogoutFailed {
            reason: "500 internal-server-error".into()
        }]
    );
    assert!(!s.is_closed());
    // It may be tried again.
    s.logout().unwrap();
    assert_eq!(drain_tx(&mut s).len(), 1);
}

#[test]
fn device_removed_while_a_logout_is_pending_counts_as_logged_out() {
    let (mut s, mut rng) = ready_and_quiet(35);
    s.logout().unwrap();
    drain_tx(&mut s);
    s.handle_node(
        Node::new("stream:error")
            .attr("code", "401")
            .children([Node::new("conflict").attr("type", "device_removed")]),
        T0,
        &mut rng,
    );
    assert_eq!(
        drain_events(&mut s),
        vec![
            Event::LoggedOut,
            Event::Disconnected(DisconnectReason::LoggedOut)
        ]
    );
    // Without a pending logout, an unlink is only a disconnect.
    let (mut other, mut rng) = ready_and_quiet(36);
    other.handle_node(
        Node::new("stream:error")
            .attr("code", "401")
            .children([Node::new("conflict").attr("type", "device_removed")]),
        T0,
        &mut rng,
    );
    assert_eq!(
        drain_events(&mut other),
        vec![Event::Disconnected(DisconnectReason::LoggedOut)]
    );
}
