//! `Jid`: every server and form round-trips through its string form; Signal addresses.

use wafleet_protocol::jid::{Jid, JidError, Server};

const CANONICAL: &[&str] = &[
    "15551234567@s.whatsapp.net",
    "15551234567:0@s.whatsapp.net",
    "15551234567:12@s.whatsapp.net",
    "15551234567_5:3@s.whatsapp.net",
    "@s.whatsapp.net",
    "123456789012345@lid",
    "123456789012345:12@lid",
    "120363000000000000@g.us",
    "15551234567-1600000000@g.us",
    "status@broadcast",
    "1234567890@broadcast",
    "120363000000000000@newsletter",
    "16505361212@c.us",
    "server@c.us",
    "15551234567@hosted",
    "15551234567:99@hosted",
    "123456789012345@hosted.lid",
    "123456789012345:99@hosted.lid",
    "100000000000001@msgr",
    "100000000000001:1@msgr",
    "7-123456:2@interop",
    "7-123456@interop",
    "13135550002@bot",
    "someone@example.org",
    "a_b@g.us",
    "a_1@g.us",
    "1_5@s.whatsapp.net",
    "1_5:2@lid",
    "call-id@call",
];

#[test]
fn canonical_strings_round_trip() {
    for s in CANONICAL {
        let jid: Jid = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(jid.to_string(), *s);
        assert_eq!(Jid::parse(&jid.to_string()).unwrap(), jid, "{s}");
    }
}

#[test]
fn every_known_server_maps_to_its_variant() {
    let servers = [
        ("s.whatsapp.net", Server::WhatsApp),
        ("lid", Server::Lid),
        ("g.us", Server::Group),
        ("broadcast", Server::Broadcast),
        ("newsletter", Server::Newsletter),
        ("c.us", Server::LegacyUser),
        ("hosted", Server::Hosted),
        ("hosted.lid", Server::HostedLid),
        ("msgr", Server::Messenger),
        ("interop", Server::Interop),
        ("bot", Server::Bot),
    ];
    for (name, server) in servers {
        assert_eq!(Server::parse(name), server);
        assert_eq!(server.as_str(), name);
        assert_eq!(Jid::parse(&format!("1@{name}")).unwrap().server, server);
    }
    assert_eq!(
        Server::parse("example.org"),
        Server::Other("example.org".into())
    );
}

#[test]
fn fields_of_each_form() {
    let j = Jid::parse("15551234567_5:3@s.whatsapp.net").unwrap();
    assert_eq!(
        (j.user.as_str(), j.agent, j.device, j.integrator),
        ("15551234567", Some(5), Some(3), None)
    );
    let j = Jid::parse("7-123456:2@interop").unwrap();
    assert_eq!(
        (j.user.as_str(), j.agent, j.device, j.integrator),
        ("123456", None, Some(2), Some(7))
    );
    let j = Jid::parse("100000000000001:1@msgr").unwrap();
    assert_eq!((j.device, j.server), (Some(1), Server::Messenger));
    let j = Jid::parse("@s.whatsapp.net").unwrap();
    assert_eq!(j, Jid::new("", Server::WhatsApp));
    let j = Jid::parse("1:0@s.whatsapp.net").unwrap();
    assert_eq!(j.device, Some(0));
    assert_ne!(j, Jid::parse("1@s.whatsapp.net").unwrap());
    // Non-numeric or oversized agents stay in the user.
    assert_eq!(Jid::parse("a_b@g.us").unwrap().user, "a_b");
    assert_eq!(Jid::parse("a_256@g.us").unwrap().user, "a_256");
    assert_eq!(Jid::parse("a_01@g.us").unwrap().user, "a_01");
    // Agents and integrators are only read on device JIDs of their server.
    assert_eq!(Jid::parse("a_1@g.us").unwrap().user, "a_1");
    assert_eq!(Jid::parse("1_5@s.whatsapp.net").unwrap().user, "1_5");
    assert_eq!(Jid::parse("1_5:2@lid").unwrap().user, "1_5");
    assert_eq!(Jid::parse("1-2@g.us").unwrap().integrator, None);
    let j = Jid::parse("7-123456@interop").unwrap();
    assert_eq!((j.user.as_str(), j.integrator), ("7-123456", None));
}

#[test]
fn builders_and_helpers() {
    let j = Jid::new("123", Server::Lid).with_device(5);
    assert_eq!(j.to_string(), "123:5@lid");
    assert_eq!(j.to_non_ad().to_string(), "123@lid");
    assert_eq!(j.domain_type(), Some(1));
    assert!(j.is_user());
    assert!(!j.is_group());
    assert!(Jid::parse("1@g.us").unwrap().is_group());
    assert!(Jid::parse("status@broadcast")
        .unwrap()
        .is_status_broadcast());
    assert!(!Jid::parse("1@broadcast").unwrap().is_status_broadcast());
    let pn = Jid::new("1", Server::WhatsApp).with_agent(7).with_device(2);
    assert_eq!(pn.to_string(), "1_7:2@s.whatsapp.net");
    assert_eq!(pn.to_non_ad().to_string(), "1@s.whatsapp.net");
    assert_eq!(pn.domain_type(), Some(7));
    assert_eq!(Jid::parse("1@g.us").unwrap().domain_type(), None);
    let interop = Jid::new("9", Server::Interop)
        .with_integrator(3)
        .with_device(1);
    assert_eq!(interop.to_string(), "3-9:1@interop");
    assert_eq!(interop.to_non_ad(), Jid::parse("3-9@interop").unwrap());
}

#[test]
fn parse_errors() {
    assert_eq!(
        Jid::parse("15551234567"),
        Err(JidError::MissingAt("15551234567".into()))
    );
    assert_eq!(Jid::parse("1@"), Err(JidError::EmptyServer("1@".into())));
    for bad in [
        "1:@s.whatsapp.net",
        "1:x@s.whatsapp.net",
        "1:01@s.whatsapp.net",
        "1:70000@s.whatsapp.net",
        "1:2:3@s.whatsapp.net",
        "1:-1@s.whatsapp.net",
    ] {
        assert_eq!(
            Jid::parse(bad),
            Err(JidError::InvalidDevice(bad.into())),
            "{bad}"
        );
    }
}

#[test]
fn signal_addresses() {
    let cases = [
        ("15551234567@s.whatsapp.net", "15551234567.0"),
        ("15551234567:3@s.whatsapp.net", "15551234567.3"),
        ("123:5@lid", "123_1.5"),
        ("123@lid", "123_1.0"),
        ("123:99@hosted", "123_128.99"),
        ("123:99@hosted.lid", "123_129.99"),
        ("123_7:2@s.whatsapp.net", "123_7.2"),
    ];
    for (jid, address) in cases {
        let j = Jid::parse(jid).unwrap();
        assert_eq!(j.signal_address(), address, "{jid}");
        let back = Jid::from_signal_address(address).unwrap();
        assert_eq!(back.signal_address(), address);
        // Device 0 comes back as "no device", as in Baileys.
        assert_eq!(back, {
            let mut j = j.clone();
            if j.device == Some(0) {
                j.device = None;
            }
            j
        });
    }
    for bad in [
        "123",
        "123.",
        ".5",
        "123_x.5",
        "123_300.5",
        "1@2.5",
        "123.05",
    ] {
        assert_eq!(
            Jid::from_signal_address(bad),
            Err(JidError::InvalidSignalAddress(bad.into())),
            "{bad}"
        );
    }
}
