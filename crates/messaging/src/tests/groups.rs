//! Group messaging through the router.

use super::*;

fn three() -> (Net, usize, usize, usize) {
    let mut net = Net::new(11);
    let a = net.add("111:1@s.whatsapp.net");
    let b = net.add("222:1@s.whatsapp.net");
    let c = net.add("333@s.whatsapp.net");
    net.groups.insert(
        "123-456@g.us".into(),
        vec![
            jid("111@s.whatsapp.net"),
            jid("222@s.whatsapp.net"),
            jid("333@s.whatsapp.net"),
        ],
    );
    (net, a, b, c)
}

#[test]
fn each_member_sends_and_the_others_decrypt() {
    let (mut net, a, b, c) = three();
    let id = net.send(a, "123-456@g.us", "from a").unwrap();
    for i in [b, c] {
        assert_eq!(net.devices[i].texts(), vec!["from a"]);
        let m = net.devices[i].messages()[0].clone();
        assert_eq!(m.chat, jid("123-456@g.us"));
        assert_eq!(m.sender, jid("111:1@s.whatsapp.net"));
        assert_eq!(m.id, id);
    }
    let stanza = &net.relayed.iter().find(|(i, _)| *i == a).unwrap().1;
    // Over every member device but the sending one, as the server computes it.
    let others = [jid("222:1@s.whatsapp.net"), jid("333@s.whatsapp.net")];
    assert_eq!(
        stanza.attr_str("phash"),
        Some(crate::wire::phash(&others).as_str())
    );
    assert_eq!(stanza.child_nodes()[0].attr_str("type"), Some("skmsg"));
    assert_eq!(
        stanza
            .child_by_tag("participants")
            .unwrap()
            .child_nodes()
            .len(),
        2
    );
    assert!(stanza.child_by_tag("device-identity").is_some());

    net.send(b, "123-456@g.us", "from b").unwrap();
    net.send(c, "123-456@g.us", "from c").unwrap();
    net.send(a, "123-456@g.us", "a again").unwrap();
    assert_eq!(net.devices[a].texts(), vec!["from b", "from c"]);
    assert_eq!(net.devices[b].texts(), vec!["from a", "from c", "a again"]);
    assert_eq!(net.devices[c].texts(), vec!["from a", "from b", "a again"]);
    // The second message from A carries no sender key distribution.
    let last = &net.relayed.iter().rev().find(|(i, _)| *i == a).unwrap().1;
    assert!(last.child_by_tag("participants").is_none());
    for d in &net.devices {
        assert!(d.undecryptable().is_empty(), "{:?}", d.undecryptable());
    }
}

#[test]
fn a_new_member_device_gets_the_sender_key() {
    let (mut net, a, b, c) = three();
    net.send(a, "123-456@g.us", "first").unwrap();
    let b2 = net.add("222:2@s.whatsapp.net");
    net.now += 6 * 60_000; // device lists expire: usync sees the new device
    net.send(a, "123-456@g.us", "second").unwrap();
    assert_eq!(net.devices[b2].texts(), vec!["second"]);
    let last = &net.relayed.iter().rev().find(|(i, _)| *i == a).unwrap().1;
    assert_eq!(
        last.child_by_tag("participants")
            .unwrap()
            .child_nodes()
            .len(),
        1
    );
    assert_eq!(net.devices[b].texts(), vec!["first", "second"]);
    assert_eq!(net.devices[c].texts(), vec!["first", "second"]);
}

#[test]
fn unknown_sender_key_asks_for_a_retry_and_the_resend_carries_the_key() {
    let (mut net, a, b, c) = three();
    net.spoil.push_back(Spoil::DropDirectParts);
    let id = net.send(a, "123-456@g.us", "keyless").unwrap();
    // The first delivery (to B) lost its SKDM: unknown sender key, retry receipt to A,
    // which re-sends with the sender key inside.
    let u = net.devices[b].undecryptable()[0].clone();
    assert_eq!(u.reason, UndecryptableReason::UnknownSenderKey);
    assert_eq!(u.chat, jid("123-456@g.us"));
    let retry = net.devices[b]
        .sent_tagged("receipt")
        .into_iter()
        .find(|r| r.attr_str("type") == Some("retry"))
        .unwrap()
        .clone();
    assert_eq!(retry.get_attr("to").unwrap().to_string(), "123-456@g.us");
    assert_eq!(net.devices[b].texts(), vec!["keyless"]);
    assert_eq!(net.devices[b].messages()[0].id, id);
    assert_eq!(net.devices[c].texts(), vec!["keyless"]);
    // Later group messages decrypt for B.
    net.send(a, "123-456@g.us", "more").unwrap();
    assert_eq!(net.devices[b].texts(), vec!["keyless", "more"]);
}

#[test]
fn not_a_member_fails_typed() {
    let (mut net, a, _, _) = three();
    let id = net.send(a, "999-1@g.us", "who?").unwrap();
    assert!(net.devices[a].events.iter().any(|e| matches!(e,
        MessengerEvent::SendFailed { id: fid, error: SendError::Server { code, .. } } if *fid == id && code == "404")));
}

#[test]
fn a_member_leaving_rotates_our_sender_key() {
    let (mut net, a, b, c) = three();
    let group = jid("123-456@g.us");
    net.send(a, "123-456@g.us", "before").unwrap();
    let a_jid = net.devices[a].jid.clone();
    let old = net.devices[a]
        .signal
        .sender_key(&group, &a_jid)
        .unwrap()
        .key_ids();
    net.groups
        .get_mut("123-456@g.us")
        .unwrap()
        .retain(|u| u.user != "333");
    net.inject(
        a,
        Node::new("notification")
            .attr("from", group.clone())
            .attr("type", "w:gp2")
            .attr("id", "n1")
            .children([Node::new("remove")
                .children([Node::new("participant").attr("jid", jid("333@s.whatsapp.net"))])]),
    );
    net.pump();
    assert_eq!(net.devices[a].unhandled.len(), 1);
    assert!(net.devices[a].signal.sender_key(&group, &a_jid).is_none());
    net.send(a, "123-456@g.us", "after").unwrap();
    let new = net.devices[a]
        .signal
        .sender_key(&group, &a_jid)
        .unwrap()
        .key_ids();
    assert_ne!(old, new);
    // The new key went to B (the remaining member), who reads the message; C got nothing.
    let last = &net.relayed.iter().rev().find(|(i, _)| *i == a).unwrap().1;
    assert_eq!(
        last.child_by_tag("participants")
            .unwrap()
            .child_nodes()
            .len(),
        1
    );
    assert_eq!(net.devices[b].texts(), vec!["before", "after"]);
    assert_eq!(net.devices[c].texts(), vec!["before"]);
}

#[test]
fn our_phone_in_the_group_is_from_me_and_gets_our_key() {
    let (mut net, a, b, _c) = three();
    let a0 = net.add("111@s.whatsapp.net");
    net.send(a, "123-456@g.us", "from companion").unwrap();
    let got = net.devices[a0].messages()[0].clone();
    assert!(got.from_me);
    assert_eq!(got.chat, jid("123-456@g.us"));
    net.send(a0, "123-456@g.us", "from phone").unwrap();
    let got = net.devices[a].messages()[0].clone();
    assert!(got.from_me);
    assert_eq!(got.sender, jid("111@s.whatsapp.net"));
    assert_eq!(got.chat, jid("123-456@g.us"));
    assert_eq!(net.devices[b].texts(), vec!["from companion", "from phone"]);
    // Our own device's delivery receipt in a group is a `sender` receipt.
    let r = net.devices[a]
        .sent_tagged("receipt")
        .into_iter()
        .find(|r| r.attr_str("id") == Some(got.id.as_str()))
        .unwrap()
        .clone();
    assert_eq!(r.attr_str("type"), Some("sender"));
}
