//! 1:1 messaging through the router.

use super::*;

fn two() -> (Net, usize, usize) {
    let mut net = Net::new(7);
    let a = net.add("111:1@s.whatsapp.net");
    let b = net.add("222:1@s.whatsapp.net");
    (net, a, b)
}

#[test]
fn first_message_is_pkmsg_then_msg_and_replies_flow_both_ways() {
    let (mut net, a, b) = two();
    let id = net.send(a, "222@s.whatsapp.net", "hello").unwrap();
    assert!(id.starts_with("3EB0") && id.len() == 22, "{id}");
    assert_eq!(net.devices[b].texts(), vec!["hello"]);
    let m = net.devices[b].messages()[0].clone();
    assert_eq!(m.id, id);
    assert_eq!(m.chat, jid("111@s.whatsapp.net"));
    assert_eq!(m.sender, jid("111:1@s.whatsapp.net"));
    assert!(!m.from_me && !m.redelivered);
    assert_eq!(m.push_name.as_deref(), Some("Someone"));
    assert_eq!(net.enc_types_to(b), vec!["pkmsg"]);
    // A consumed one of B's one-time prekeys.
    assert_eq!(net.devices[b].pre_keys.len(), 19);
    // A got the server ack, then B's delivery receipt.
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::Sent { id: sid, server_timestamp: Some(_), .. } if *sid == id)));
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::Receipt(r) if r.ids == vec![id.clone()] && r.kind == ReceiptKind::Delivered)));

    net.send(b, "111@s.whatsapp.net", "hi back").unwrap();
    net.send(a, "222@s.whatsapp.net", "second").unwrap();
    net.send(b, "111@s.whatsapp.net", "third").unwrap();
    assert_eq!(net.devices[a].texts(), vec!["hi back", "third"]);
    assert_eq!(net.devices[b].texts(), vec!["hello", "second"]);
    assert_eq!(net.enc_types_to(b), vec!["pkmsg", "msg"]);
    assert_eq!(net.enc_types_to(a), vec!["msg", "msg"]);
    for d in &net.devices {
        assert!(d.undecryptable().is_empty());
        assert_eq!(d.messenger.awaiting_delivery(), 0);
    }
}

#[test]
fn device_lists_are_cached_and_bundles_fetched_once() {
    let (mut net, a, _b) = two();
    for i in 0..3 {
        net.send(a, "222@s.whatsapp.net", &format!("m{i}")).unwrap();
    }
    let iqs: Vec<&str> = net.devices[a]
        .sent_tagged("iq")
        .iter()
        .map(|n| n.attr_str("xmlns").unwrap())
        .collect();
    assert_eq!(iqs, vec!["usync", "encrypt"]);
    // After the cache lifetime the device list is fetched again, but no bundle.
    net.now += 6 * 60_000;
    net.send(a, "222@s.whatsapp.net", "later").unwrap();
    let iqs = net.devices[a].sent_tagged("iq").len();
    assert_eq!(iqs, 3);
}

#[test]
fn own_other_devices_get_a_device_sent_copy_shown_as_from_me() {
    let mut net = Net::new(8);
    let a1 = net.add("111:1@s.whatsapp.net");
    let a0 = net.add("111@s.whatsapp.net");
    let b = net.add("222:1@s.whatsapp.net");
    let id = net.send(a1, "222@s.whatsapp.net", "to bob").unwrap();
    assert_eq!(net.devices[b].texts(), vec!["to bob"]);
    let mine = net.devices[a0].messages();
    assert_eq!(mine.len(), 1);
    assert!(mine[0].from_me);
    assert_eq!(mine[0].id, id);
    assert_eq!(mine[0].chat, jid("222@s.whatsapp.net"));
    // The phone's delivery receipt to our device is a `sender` receipt.
    let receipt = net.devices[a0].sent_tagged("receipt")[0].clone();
    assert_eq!(receipt.attr_str("type"), Some("sender"));
    assert_eq!(
        receipt.get_attr("recipient").unwrap().to_string(),
        "222@s.whatsapp.net"
    );
    // The phone sends to Bob: our companion sees it as from_me in Bob's chat.
    net.send(a0, "222@s.whatsapp.net", "from phone").unwrap();
    let m = net.devices[a1].messages()[0].clone();
    assert!(m.from_me);
    assert_eq!(m.chat, jid("222@s.whatsapp.net"));
    assert_eq!(net.devices[b].texts(), vec!["to bob", "from phone"]);
}

#[test]
fn ack_and_receipt_leave_only_after_delivered() {
    let (mut net, a, b) = two();
    net.devices[b].auto_deliver = false;
    net.send(a, "222@s.whatsapp.net", "durable").unwrap();
    let m = net.devices[b].messages()[0].clone();
    assert!(net.devices[b].sent_tagged("ack").is_empty());
    assert!(net.devices[b].sent_tagged("receipt").is_empty());
    assert!(net.devices[b].state_changes >= 1);
    assert_eq!(net.devices[b].messenger.awaiting_delivery(), 1);
    net.devices[b].messenger.delivered(&m.key);
    net.pump();
    let ack = net.devices[b].sent_tagged("ack")[0].clone();
    assert_eq!(ack.attr_str("class"), Some("message"));
    assert_eq!(ack.attr_str("id"), Some(m.id.as_str()));
    assert_eq!(
        ack.get_attr("to").unwrap().to_string(),
        "111:1@s.whatsapp.net"
    );
    let receipt = net.devices[b].sent_tagged("receipt")[0].clone();
    assert_eq!(receipt.attr_str("type"), None);
    assert_eq!(receipt.attr_str("id"), Some(m.id.as_str()));
}

#[test]
fn state_is_reported_changed_before_any_ciphertext_leaves() {
    let (mut net, a, _b) = two();
    // Warm the device and bundle caches, then look at one send in isolation.
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    let now = net.now;
    let d = &mut net.devices[a];
    let mut keys = Keys {
        identity: &d.identity,
        pre_keys: &mut d.pre_keys,
        signal: &mut d.signal,
    };
    let before = serde_json::to_string(&*keys.signal).unwrap();
    d.messenger
        .send(
            jid("222@s.whatsapp.net"),
            Outgoing::text("two"),
            &mut keys,
            now,
            &mut net.rng,
        )
        .unwrap();
    assert_eq!(d.messenger.poll_event(), Some(MessengerEvent::StateChanged));
    assert_ne!(serde_json::to_string(&d.signal).unwrap(), before);
    assert_eq!(d.messenger.poll_transmit().unwrap().tag, "message");
}

#[test]
fn redelivery_after_a_crash_re_emits_the_same_message() {
    let (mut net, a, b) = two();
    net.devices[b].auto_deliver = false;
    net.send(a, "222@s.whatsapp.net", "survive").unwrap();
    let first = net.devices[b].messages()[0].clone();
    // Crash before delivery: restart from what was saved, with a fresh messenger.
    let (pre_keys, json) = net.devices[b].saved.clone();
    net.devices[b].pre_keys = pre_keys;
    net.devices[b].signal = serde_json::from_str(&json).unwrap();
    net.devices[b].messenger = Messenger::new(net.devices[b].jid.clone(), None);
    net.devices[b].events.clear();
    net.devices[b].auto_deliver = true;
    // The server did not get an ack: it delivers the same stanza again.
    let (_, stanza) = net
        .delivered
        .iter()
        .rev()
        .find(|(i, _)| *i == b)
        .unwrap()
        .clone();
    net.inject(b, stanza);
    net.pump();
    let again = net.devices[b].messages()[0].clone();
    assert_eq!(again.id, first.id);
    assert_eq!(again.content, first.content);
    assert!(again.redelivered);
    assert!(net.devices[b].undecryptable().is_empty());
    assert_eq!(net.devices[b].sent_tagged("ack").len(), 1);
    // And the conversation goes on.
    net.send(a, "222@s.whatsapp.net", "next").unwrap();
    net.send(b, "111@s.whatsapp.net", "reply").unwrap();
    assert_eq!(net.devices[b].texts(), vec!["survive", "next"]);
    assert_eq!(net.devices[a].texts(), vec!["reply"]);
}

#[test]
fn corrupted_ciphertext_is_bad_mac_with_a_retry_that_resends() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    net.send(b, "111@s.whatsapp.net", "ack-ish").unwrap();
    net.spoil.push_back(Spoil::FlipByte);
    let id = net.send(a, "222@s.whatsapp.net", "two").unwrap();
    let u = net.devices[b].undecryptable()[0].clone();
    assert_eq!(u.id, id);
    assert!(
        matches!(
            u.reason,
            UndecryptableReason::BadMac | UndecryptableReason::Malformed(_)
        ),
        "{:?}",
        u.reason
    );
    let retry = net.devices[b]
        .sent_tagged("receipt")
        .into_iter()
        .find(|r| r.attr_str("type") == Some("retry"))
        .unwrap()
        .clone();
    let r = retry.child_by_tag("retry").unwrap();
    assert_eq!(r.attr_str("count"), Some("1"));
    assert_eq!(r.attr_str("id"), Some(id.as_str()));
    assert_eq!(r.attr_str("v"), Some("1"));
    assert!(retry.child_by_tag("registration").is_some());
    assert!(retry.child_by_tag("keys").is_none());
    // A re-sent it with the same id; B now has it.
    assert_eq!(net.devices[b].texts(), vec!["one", "two"]);
    assert_eq!(net.devices[b].messages()[1].id, id);
    // Both keep talking.
    net.send(b, "111@s.whatsapp.net", "after").unwrap();
    net.send(a, "222@s.whatsapp.net", "after too").unwrap();
    assert_eq!(net.devices[a].texts(), vec!["ack-ish", "after"]);
    assert_eq!(net.devices[b].texts(), vec!["one", "two", "after too"]);
}

#[test]
fn lost_session_is_no_session_and_the_resend_uses_a_fresh_session() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    net.send(b, "111@s.whatsapp.net", "two").unwrap();
    // B loses its session with A; A's next `msg` cannot be read.
    let a_jid = net.devices[a].jid.clone();
    net.devices[b].signal.forget_session(&a_jid);
    let a_sends = net.devices[a].sent_tagged("message").len();
    let id = net.send(a, "222@s.whatsapp.net", "three").unwrap();
    let u = net.devices[b].undecryptable()[0].clone();
    assert_eq!(u.reason, UndecryptableReason::NoSession);
    assert_eq!(u.id, id);
    let retry = net.devices[b]
        .sent_tagged("receipt")
        .into_iter()
        .find(|r| r.attr_str("type") == Some("retry"))
        .unwrap()
        .clone();
    assert_eq!(
        retry.child_by_tag("retry").unwrap().attr_str("error"),
        Some("1")
    );
    // A answered with a fresh session (pkmsg) and the same id: B reads it.
    assert!(net.devices[a].sent_tagged("message").len() > a_sends + 1);
    assert_eq!(net.devices[b].texts(), vec!["one", "three"]);
    assert_eq!(net.devices[b].messages()[1].id, id);
}

#[test]
fn second_retry_receipt_carries_a_key_bundle() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    let stanza = net
        .delivered
        .iter()
        .rev()
        .find(|(i, _)| *i == b)
        .unwrap()
        .1
        .clone();
    // The same garbage stanza twice under a new id: two retry receipts, the second with keys.
    let mut bad = stanza;
    bad.attrs.retain(|(k, _)| k != "id");
    let mut bad = bad.attr("id", "BAD1");
    if let wafleet_protocol::binary::Content::Nodes(c) = &mut bad.content {
        c[0] = Node::new("enc")
            .attr("v", "2")
            .attr("type", "msg")
            .bytes(vec![0x33, 1, 2, 3, 4]);
    }
    net.inject(b, bad.clone());
    net.inject(b, bad);
    net.pump();
    let retries: Vec<Node> = net.devices[b]
        .sent_tagged("receipt")
        .into_iter()
        .filter(|r| r.attr_str("type") == Some("retry"))
        .cloned()
        .collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(
        retries[0].child_by_tag("retry").unwrap().attr_str("count"),
        Some("1")
    );
    assert_eq!(
        retries[1].child_by_tag("retry").unwrap().attr_str("count"),
        Some("2")
    );
    assert!(retries[0].child_by_tag("keys").is_none());
    let keys = retries[1].child_by_tag("keys").unwrap();
    let bundle = crate::usync::parse_bundle(keys, &retries[1]).unwrap();
    assert_eq!(
        bundle.identity_key.0,
        net.devices[b].identity.identity_key.public
    );
    assert!(bundle.pre_key.is_some());
    assert!(keys.child_by_tag("device-identity").is_some());
    for u in net.devices[b].undecryptable() {
        assert!(
            matches!(u.reason, UndecryptableReason::Malformed(_)),
            "{:?}",
            u.reason
        );
    }
}

#[test]
fn truncated_enc_is_typed_and_the_next_message_still_decrypts() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    net.spoil.push_back(Spoil::Truncate);
    net.send(a, "222@s.whatsapp.net", "two").unwrap();
    let u = net.devices[b].undecryptable();
    assert_eq!(u.len(), 1);
    assert!(
        matches!(u[0].reason, UndecryptableReason::Malformed(_)),
        "{:?}",
        u[0].reason
    );
    net.send(a, "222@s.whatsapp.net", "three").unwrap();
    // The retry receipt brought a resend of "two".
    assert_eq!(net.devices[b].texts(), vec!["one", "two", "three"]);
}

#[test]
fn message_for_another_device_is_not_for_us_without_retry() {
    let (mut net, a, b) = two();
    net.spoil
        .push_back(Spoil::AddressTo(jid("222:9@s.whatsapp.net")));
    net.send(a, "222@s.whatsapp.net", "elsewhere").unwrap();
    let u = net.devices[b].undecryptable()[0].clone();
    assert!(matches!(u.reason, UndecryptableReason::NotForUs(_)));
    assert!(net.devices[b]
        .sent_tagged("receipt")
        .iter()
        .all(|r| r.attr_str("type") != Some("retry")));
    assert_eq!(net.devices[b].sent_tagged("ack").len(), 1);
}

#[test]
fn unknown_user_fails_with_no_such_user() {
    let (mut net, a, _) = two();
    let id = net.send(a, "999@s.whatsapp.net", "anyone?").unwrap();
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::SendFailed { id: fid, error: SendError::NoSuchUser(u) } if *fid == id && u == "999@s.whatsapp.net")));
    assert_eq!(
        net.send(a, "status@broadcast", "x"),
        Err(SendError::InvalidRecipient("status@broadcast".into()))
    );
}

#[test]
fn missing_server_ack_times_out_and_error_ack_fails() {
    let (mut net, a, _) = two();
    net.drop_server_acks = true;
    let id = net.send(a, "222@s.whatsapp.net", "lost").unwrap();
    let deadline = net.devices[a].messenger.poll_timeout().unwrap();
    net.devices[a].messenger.handle_timeout(deadline - 1);
    net.pump();
    assert!(!net.devices[a]
        .events
        .iter()
        .any(|e| matches!(e, MessengerEvent::SendFailed { .. })));
    net.devices[a].messenger.handle_timeout(deadline);
    net.pump();
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::SendFailed { id: fid, error: SendError::Timeout } if *fid == id)));
    assert_eq!(net.devices[a].messenger.poll_timeout(), None);

    net.drop_server_acks = false;
    net.ack_error = Some("479".into());
    let id = net.send(a, "222@s.whatsapp.net", "refused").unwrap();
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::SendFailed { id: fid, error: SendError::Server { code, .. } } if *fid == id && code == "479")));
}

#[test]
fn state_survives_a_json_round_trip() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    net.send(b, "111@s.whatsapp.net", "two").unwrap();
    for i in [a, b] {
        let json = serde_json::to_string(&net.devices[i].signal).unwrap();
        net.devices[i].signal = serde_json::from_str(&json).unwrap();
        net.devices[i].messenger = Messenger::new(net.devices[i].jid.clone(), None);
    }
    net.send(a, "222@s.whatsapp.net", "three").unwrap();
    net.send(b, "111@s.whatsapp.net", "four").unwrap();
    assert_eq!(net.devices[b].texts(), vec!["one", "three"]);
    assert_eq!(net.devices[a].texts(), vec!["two", "four"]);
    // An older state file without the field reads as empty.
    let empty: SignalState = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, SignalState::default());
}

#[test]
fn unrelated_nodes_are_handed_back() {
    let (mut net, a, _) = two();
    net.inject(a, Node::new("iq").attr("id", "1234").attr("type", "result"));
    net.inject(
        a,
        Node::new("ack")
            .attr("class", "message")
            .attr("id", "NOTOURS"),
    );
    net.inject(a, Node::new("notification").attr("id", "n1"));
    assert_eq!(net.devices[a].unhandled.len(), 3);
}

#[test]
fn version_3_enc_is_read_without_unpadding() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    net.send(b, "111@s.whatsapp.net", "two").unwrap();
    // A encrypts by hand without padding and marks the enc `v=3`.
    let b_jid = net.devices[b].jid.clone();
    let addr = crate::state::address(&b_jid);
    let d = &mut net.devices[a];
    let record = d.signal.session(&b_jid).unwrap().clone();
    let body = wafleet_protocol::message::encode_text("unpadded", None);
    let identities = crate::state::Identities::new(&d.identity, d.signal.identities());
    let (record, ct) = wafleet_signal::encrypt(&record, &addr, &identities, &body).unwrap();
    d.signal.put_session(addr.to_string(), record);
    let node = Node::new("message")
        .attr("from", d.jid.clone())
        .attr("id", "V3")
        .attr("t", "1")
        .children([Node::new("enc")
            .attr("v", "3")
            .attr("type", ct.enc_type())
            .bytes(ct.serialize().to_vec())]);
    net.inject(b, node);
    net.pump();
    assert_eq!(net.devices[b].texts(), vec!["one", "unpadded"]);
}

#[test]
fn a_second_retry_with_keys_gets_a_session_from_those_keys() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    net.send(b, "111@s.whatsapp.net", "two").unwrap();
    // The message and its first resend arrive corrupted.
    net.spoil.push_back(Spoil::FlipByte);
    net.spoil.push_back(Spoil::FlipByte);
    let iqs_before = net.devices[a].sent_tagged("iq").len();
    let id = net.send(a, "222@s.whatsapp.net", "three").unwrap();
    assert_eq!(net.devices[b].undecryptable().len(), 2);
    let retries: Vec<Node> = net.devices[b]
        .sent_tagged("receipt")
        .into_iter()
        .filter(|r| r.attr_str("type") == Some("retry"))
        .cloned()
        .collect();
    assert_eq!(retries.len(), 2);
    assert!(retries[1].child_by_tag("keys").is_some());
    assert_eq!(net.devices[b].texts(), vec!["one", "three"]);
    assert_eq!(net.devices[b].messages()[1].id, id);
    // Only the first resend fetched a bundle; the second used the receipt's keys.
    assert_eq!(net.devices[a].sent_tagged("iq").len(), iqs_before + 1);
    let last = (*net.devices[a].sent_tagged("message").last().unwrap()).clone();
    let enc = last.child_by_tag("enc").unwrap();
    assert_eq!(enc.attr_str("count"), Some("2"));
    assert_eq!(enc.attr_str("type"), Some("pkmsg"));
    assert_eq!(
        last.get_attr("to").unwrap().to_string(),
        "222:1@s.whatsapp.net"
    );
    assert!(last.child_by_tag("device-identity").is_some());
}

#[test]
fn shutdown_fails_waiting_sends_as_disconnected() {
    let (mut net, a, _) = two();
    net.drop_server_acks = true;
    let id = net.send(a, "222@s.whatsapp.net", "in flight").unwrap();
    net.devices[a].messenger.shutdown();
    net.pump();
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::SendFailed { id: fid, error: SendError::Disconnected } if *fid == id)));
    assert_eq!(net.devices[a].messenger.poll_timeout(), None);
}

#[test]
fn a_devices_notification_drops_the_cached_device_list() {
    let (mut net, a, _) = two();
    net.send(a, "222@s.whatsapp.net", "one").unwrap();
    net.send(a, "222@s.whatsapp.net", "two").unwrap();
    let usyncs = |net: &Net| {
        net.devices[a]
            .sent_tagged("iq")
            .iter()
            .filter(|n| n.attr_str("xmlns") == Some("usync"))
            .count()
    };
    assert_eq!(usyncs(&net), 1);
    net.inject(
        a,
        Node::new("notification")
            .attr("from", jid("222@s.whatsapp.net"))
            .attr("type", "devices")
            .attr("id", "n1")
            .children([Node::new("add")
                .children([Node::new("device").attr("jid", jid("222:2@s.whatsapp.net"))])]),
    );
    net.pump();
    assert_eq!(
        net.devices[a].unhandled.len(),
        1,
        "handed back for the session to ack"
    );
    assert!(net.devices[a]
        .signal
        .device_list(&jid("222@s.whatsapp.net"))
        .is_none());
    net.send(a, "222@s.whatsapp.net", "three").unwrap();
    assert_eq!(usyncs(&net), 2);
}

#[test]
fn unknown_enc_types_and_missing_encs_are_typed_without_retry() {
    let (mut net, _a, b) = two();
    let msmsg = Node::new("message")
        .attr("from", jid("111:1@s.whatsapp.net"))
        .attr("id", "MS1")
        .attr("t", "1")
        .children([Node::new("enc")
            .attr("v", "2")
            .attr("type", "msmsg")
            .bytes(vec![1, 2, 3])]);
    let empty = Node::new("message")
        .attr("from", jid("111:1@s.whatsapp.net"))
        .attr("id", "E1")
        .attr("t", "1");
    net.inject(b, msmsg);
    net.inject(b, empty);
    net.pump();
    let reasons: Vec<UndecryptableReason> = net.devices[b]
        .undecryptable()
        .iter()
        .map(|u| u.reason.clone())
        .collect();
    assert_eq!(
        reasons,
        vec![
            UndecryptableReason::Unsupported("enc type msmsg".into()),
            UndecryptableReason::NoContent
        ]
    );
    assert!(net.devices[b].sent_tagged("receipt").is_empty());
    assert_eq!(net.devices[b].sent_tagged("ack").len(), 2);
}

#[test]
fn a_duplicate_stanza_in_the_same_connection_is_re_emitted_and_acked_once() {
    let (mut net, a, b) = two();
    net.devices[b].auto_deliver = false;
    net.send(a, "222@s.whatsapp.net", "twice").unwrap();
    let (_, stanza) = net
        .delivered
        .iter()
        .rev()
        .find(|(i, _)| *i == b)
        .unwrap()
        .clone();
    net.inject(b, stanza);
    net.pump();
    let msgs = net.devices[b].messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].id, msgs[1].id);
    assert!(!msgs[0].redelivered && msgs[1].redelivered);
    assert_eq!(msgs[0].key, msgs[1].key);
    let key = msgs[0].key.clone();
    assert!(net.devices[b].undecryptable().is_empty());
    net.devices[b].messenger.delivered(&key);
    net.devices[b].messenger.delivered(&key);
    net.pump();
    assert_eq!(net.devices[b].sent_tagged("ack").len(), 1);
    assert_eq!(net.devices[b].sent_tagged("receipt").len(), 1);
}

/// A rough number, not a benchmark: 1,000 texts A → B through the router (both sides'
/// Signal work, the router's fan-out and a JSON snapshot of the state at every
/// `StateChanged`). `cargo test -p wafleet-messaging --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_through_the_router() {
    let (mut net, a, b) = two();
    net.send(a, "222@s.whatsapp.net", "warm up").unwrap();
    let n = 1_000;
    let t = std::time::Instant::now();
    for i in 0..n {
        net.send(a, "222@s.whatsapp.net", &format!("message {i}"))
            .unwrap();
    }
    let elapsed = t.elapsed();
    assert_eq!(net.devices[b].texts().len(), n + 1);
    eprintln!(
        "{n} messages in {elapsed:?}: {:.0} msg/s",
        n as f64 / elapsed.as_secs_f64()
    );
    let t = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..100 {
        bytes = serde_json::to_string(&net.devices[b].signal).unwrap().len();
    }
    eprintln!(
        "state snapshot: {bytes} bytes of JSON, {:?} each",
        t.elapsed() / 100
    );
}

#[test]
fn a_lid_addressed_peer_gets_its_own_session_address() {
    let mut net = Net::new(21);
    let l = net.add("555:1@lid");
    let b = net.add("222:1@s.whatsapp.net");
    net.send(l, "222@s.whatsapp.net", "from a lid").unwrap();
    let m = net.devices[b].messages()[0].clone();
    assert_eq!(m.sender, jid("555:1@lid"));
    assert_eq!(m.chat, jid("555@lid"));
    assert!(net.devices[b].signal.session_at("555_1.1").is_some());
    net.send(b, "555@lid", "to a lid").unwrap();
    net.send(l, "222@s.whatsapp.net", "again").unwrap();
    assert_eq!(net.devices[l].texts(), vec!["to a lid"]);
    assert_eq!(net.devices[b].texts(), vec!["from a lid", "again"]);
}

/// A device listed for the user but without a bundle on the server (it has not uploaded
/// its prekeys yet) cannot get the message: the send still reaches the others, and the
/// ack names the left-out device and why, instead of dropping it quietly.
#[test]
fn a_device_without_a_bundle_is_reported_with_the_ack() {
    let mut net = Net::new(11);
    let a = net.add("111:1@s.whatsapp.net");
    let b0 = net.add("222@s.whatsapp.net");
    let b1 = net.add("222:1@s.whatsapp.net");
    net.no_bundle.push("222:1@s.whatsapp.net".into());
    let id = net.send(a, "222@s.whatsapp.net", "partly").unwrap();
    assert_eq!(net.devices[b0].texts(), vec!["partly"]);
    assert!(net.devices[b1].texts().is_empty());
    let skipped = net.devices[a]
        .events
        .iter()
        .find_map(|e| match e {
            MessengerEvent::Sent {
                id: sid, skipped, ..
            } if *sid == id => Some(skipped.clone()),
            _ => None,
        })
        .expect("the server ack");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].device, jid("222:1@s.whatsapp.net"));
    assert!(
        matches!(&skipped[0].reason, SkipReason::NoBundle(e) if e.contains("404")),
        "{skipped:?}"
    );
    // Once it has uploaded its keys, a later send reaches it (the next message fetches
    // the missing bundle again) and nothing is skipped.
    net.no_bundle.clear();
    let next = net.send(a, "222@s.whatsapp.net", "all").unwrap();
    assert_eq!(net.devices[b1].texts(), vec!["all"]);
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::Sent { id: sid, skipped, .. } if *sid == next && skipped.is_empty())));
}

/// No device of the recipient has a bundle: the send fails, typed; nothing is acked.
#[test]
fn no_device_with_a_bundle_fails_the_send() {
    let mut net = Net::new(12);
    let a = net.add("111:1@s.whatsapp.net");
    let _b = net.add("222:1@s.whatsapp.net");
    net.no_bundle.push("222:1@s.whatsapp.net".into());
    let id = net.send(a, "222@s.whatsapp.net", "nobody").unwrap();
    assert!(
        net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::SendFailed { id: sid, error: SendError::NoDevices } if *sid == id)),
        "{:?}",
        net.devices[a].events
    );
}

#[test]
fn a_referenced_send_repeated_is_the_same_message_also_after_a_restart() {
    let (mut net, a, b) = two();
    let first = net
        .send_ref(a, "222@s.whatsapp.net", "hello", "cmd-1", "d1")
        .unwrap();
    let SendStart::New(id) = first else {
        panic!("{first:?}")
    };
    assert_eq!(net.devices[b].texts(), vec!["hello"]);
    // The same reference and digest: the same id, sent again (its first try may not have
    // reached the server); the recipient sees a redelivery of that id, not a new message.
    let again = net
        .send_ref(a, "222@s.whatsapp.net", "hello", "cmd-1", "d1")
        .unwrap();
    assert_eq!(again, SendStart::Repeated(id.clone()));
    let got: Vec<(String, bool)> = net.devices[b]
        .messages()
        .iter()
        .map(|m| (m.id.clone(), m.redelivered))
        .collect();
    assert_eq!(got, vec![(id.clone(), false), (id.clone(), true)]);
    // The same reference for another request: refused, nothing sent.
    let relayed = net.relayed.len();
    assert!(matches!(
        net.send_ref(a, "222@s.whatsapp.net", "other", "cmd-1", "d2"),
        Err(SendError::ReferenceReused(k)) if k == "cmd-1"
    ));
    assert_eq!(net.relayed.len(), relayed);
    // While a referenced send waits for its ack, a repeat joins it.
    net.drop_server_acks = true;
    let pending = net
        .send_ref(a, "222@s.whatsapp.net", "second", "cmd-2", "d")
        .unwrap();
    let SendStart::New(id2) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(
        net.send_ref(a, "222@s.whatsapp.net", "second", "cmd-2", "d")
            .unwrap(),
        SendStart::InFlight(id2.clone())
    );
    // A restart (a new messenger on the persisted state): the reference is remembered.
    net.drop_server_acks = false;
    net.devices[a].messenger = Messenger::new(jid("111:1@s.whatsapp.net"), None);
    assert_eq!(
        net.send_ref(a, "222@s.whatsapp.net", "second", "cmd-2", "d")
            .unwrap(),
        SendStart::Repeated(id2.clone())
    );
    assert_eq!(
        net.devices[b].texts(),
        vec!["hello", "hello", "second", "second"]
    );
    assert!(net.devices[b].undecryptable().is_empty());
    // And the conversation goes on.
    net.send(b, "111@s.whatsapp.net", "reply").unwrap();
    net.send(a, "222@s.whatsapp.net", "after").unwrap();
    assert_eq!(net.devices[a].texts(), vec!["reply"]);
    assert!(net.devices[b].texts().ends_with(&["after".to_string()]));
}
