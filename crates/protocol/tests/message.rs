//! The message content layer: every content kind decoded from bytes Baileys' own protobuf
//! code encoded (`tests/data/message_fixtures.txt`), round trips of what we encode (through
//! the Signal crate's plaintext padding, the inbound path's step before `decode`), message
//! ids, and bad input giving typed errors, never a panic.

use std::collections::HashMap;

use proptest::prelude::*;
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::message::{
    decode, encode_text, message_id, DecodedMessage, MediaKind, MessageContent, MessageError,
    MessageKey, ReplyContext,
};
use wafleet_protocol::proto::e2e;
use wafleet_protocol::proto::Message as _;
use wafleet_signal::padding::{pad_with, unpad, unpad_for_version};
use wafleet_signal::SignalError;

/// The inbound path after decryption: strip the `<enc v="2">` padding, then decode.
#[derive(Debug, Clone, PartialEq)]
enum InboundError {
    Padding(SignalError),
    Message(MessageError),
}

fn decode_padded(plaintext: &[u8]) -> Result<DecodedMessage, InboundError> {
    let bytes = unpad_for_version("2", plaintext).map_err(InboundError::Padding)?;
    decode(&bytes).map_err(InboundError::Message)
}

fn fixtures() -> HashMap<String, String> {
    include_str!("data/message_fixtures.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn fixture(name: &str) -> Vec<u8> {
    hex::decode(&fixtures()[name]).unwrap()
}

fn decoded(name: &str) -> DecodedMessage {
    decode(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn content(name: &str) -> MessageContent {
    decoded(name).content.expect("content")
}

fn baileys_key() -> MessageKey {
    MessageKey {
        remote_jid: Some("15550001111@s.whatsapp.net".into()),
        from_me: false,
        id: "3EB0AABBCCDDEEFF001122".into(),
        participant: Some("15550002222@s.whatsapp.net".into()),
    }
}

#[test]
fn text_and_extended_text_with_reply() {
    let d = decoded("conversation");
    assert_eq!(
        d.content,
        Some(MessageContent::Text {
            text: "hello 👋".into(),
            reply: None
        })
    );
    assert_eq!(d.sender_key_distribution, None);
    assert_eq!(d.device_sent, None);

    let MessageContent::Text { text, reply } = content("extended_reply") else {
        panic!("not text");
    };
    assert_eq!(text, "a reply");
    let reply = reply.expect("reply context");
    assert_eq!(reply.stanza_id, "ABC123");
    assert_eq!(
        reply.participant.as_deref(),
        Some("15550002222@s.whatsapp.net")
    );
    assert_eq!(
        reply.quoted_content(),
        Some(MessageContent::Text {
            text: "original".into(),
            reply: None
        })
    );

    // A wrapper (ephemeralMessage) is unwrapped.
    assert_eq!(
        content("ephemeral"),
        MessageContent::Text {
            text: "disappearing".into(),
            reply: None
        }
    );
}

#[test]
fn reaction_revoke_edit() {
    assert_eq!(
        content("reaction"),
        MessageContent::Reaction {
            target: baileys_key(),
            emoji: "👍".into()
        }
    );
    assert_eq!(
        content("revoke"),
        MessageContent::Revoke {
            target: baileys_key()
        }
    );
    let edit = MessageContent::Edit {
        target: baileys_key(),
        content: Box::new(MessageContent::Text {
            text: "fixed typo".into(),
            reply: None,
        }),
    };
    assert_eq!(content("edit"), edit);
    // WhatsApp clients also send the edit inside an `editedMessage` wrapper.
    assert_eq!(content("edit_wrapped"), edit);
}

#[test]
fn media_kinds() {
    let MessageContent::Media(m) = content("image") else {
        panic!("not media")
    };
    assert_eq!(m.kind, MediaKind::Image);
    assert_eq!(m.mimetype.as_deref(), Some("image/jpeg"));
    assert_eq!(m.size, Some(12345));
    assert_eq!(m.caption.as_deref(), Some("a cat"));
    assert_eq!(m.media_key, Some(vec![2; 32]));
    assert_eq!(m.file_sha256, Some(vec![1; 32]));
    assert_eq!(m.file_enc_sha256, Some(vec![3; 32]));
    assert_eq!(m.direct_path.as_deref(), Some("/v/t62/x"));
    assert_eq!(m.url.as_deref(), Some("https://mmg.whatsapp.net/x"));

    let MessageContent::Media(m) = content("video") else {
        panic!("not media")
    };
    assert_eq!(m.kind, MediaKind::Video);
    assert_eq!(
        (m.size, m.seconds, m.caption.as_deref()),
        (Some(99999), Some(7), Some("clip"))
    );
    assert_eq!(
        (m.media_key, m.file_enc_sha256),
        (Some(vec![5; 32]), Some(vec![6; 32]))
    );
    assert_eq!(m.direct_path.as_deref(), Some("/v/video"));

    let MessageContent::Media(m) = content("audio_ptt") else {
        panic!("not media")
    };
    assert_eq!(m.kind, MediaKind::VoiceNote);
    assert_eq!(m.mimetype.as_deref(), Some("audio/ogg; codecs=opus"));
    assert_eq!(
        (m.size, m.media_key, m.file_enc_sha256),
        (Some(4242), Some(vec![8; 32]), Some(vec![9; 32]))
    );

    let MessageContent::Media(m) = content("document") else {
        panic!("not media")
    };
    assert_eq!(m.kind, MediaKind::Document);
    assert_eq!(m.size, Some(5_000_000_000), "fileLength is a uint64");
    assert_eq!(m.file_name.as_deref(), Some("report.pdf"));
    assert_eq!(m.caption.as_deref(), Some("the report"));
    assert_eq!(
        (m.file_sha256, m.media_key, m.file_enc_sha256),
        (Some(vec![10; 32]), Some(vec![11; 32]), Some(vec![12; 32]))
    );
    assert_eq!(m.direct_path.as_deref(), Some("/v/doc"));

    let MessageContent::Media(m) = content("sticker") else {
        panic!("not media")
    };
    assert_eq!(m.kind, MediaKind::Sticker);
    assert_eq!(m.mimetype.as_deref(), Some("image/webp"));
    assert_eq!(
        (m.file_sha256, m.file_enc_sha256, m.media_key),
        (Some(vec![13; 32]), Some(vec![14; 32]), Some(vec![15; 32]))
    );
    assert_eq!(
        (m.size, m.direct_path.as_deref()),
        (Some(777), Some("/v/sticker"))
    );
}

#[test]
fn type_names() {
    for (fixture_name, want) in [
        ("conversation", "text"),
        ("extended_reply", "text"),
        ("reaction", "reaction"),
        ("revoke", "revoke"),
        ("edit", "edit"),
        ("image", "image"),
        ("video", "video"),
        ("audio_ptt", "voice_note"),
        ("document", "document"),
        ("sticker", "sticker"),
        ("location", "location"),
        ("contact", "contact"),
        ("poll", "unsupported"),
    ] {
        assert_eq!(content(fixture_name).type_name(), want, "{fixture_name}");
    }
}

#[test]
fn location_and_contact() {
    assert_eq!(
        content("location"),
        MessageContent::Location {
            latitude: Some(52.52),
            longitude: Some(-13.405),
            name: Some("Somewhere".into()),
            address: Some("1 Road".into()),
        }
    );
    assert_eq!(
        content("contact"),
        MessageContent::Contact {
            display_name: Some("Alice".into()),
            vcard: Some("BEGIN:VCARD\nVERSION:3.0\nFN:Alice\nEND:VCARD".into()),
        }
    );
}

#[test]
fn sender_key_distribution() {
    let d = decoded("skdm_with_text");
    let skdm = d.sender_key_distribution.expect("skdm");
    assert_eq!(skdm.group_id, "120363000000000000@g.us");
    assert_eq!(skdm.distribution, vec![0x33; 40]);
    assert_eq!(
        d.content,
        Some(MessageContent::Text {
            text: "group hi".into(),
            reply: None
        })
    );

    let d = decoded("skdm_only");
    assert_eq!(d.content, None);
    assert!(d.sender_key_distribution.is_some());
    assert_eq!(d.message_secret, Some(vec![0x44; 32]));
}

#[test]
fn device_sent_message_is_unwrapped() {
    let d = decoded("device_sent");
    let ds = d.device_sent.expect("device sent");
    assert_eq!(ds.destination_jid, "15550003333@s.whatsapp.net");
    assert_eq!(ds.phash.as_deref(), Some("2:abcdef"));
    assert_eq!(
        d.content,
        Some(MessageContent::Text {
            text: "sent from phone".into(),
            reply: None
        })
    );
    assert_eq!(d.message_secret, Some(vec![0x55; 32]));
}

#[test]
fn unsupported_content_is_named_not_an_error() {
    // A poll (pollCreationMessage = 49) next to messageContextInfo (35, not content).
    assert_eq!(
        content("poll"),
        MessageContent::Unsupported {
            fields: vec![49],
            protocol_type: None
        }
    );
    // A protocolMessage of another type: HISTORY_SYNC_NOTIFICATION = 5.
    assert_eq!(
        content("history_notification"),
        MessageContent::Unsupported {
            fields: vec![12],
            protocol_type: Some(5)
        }
    );
}

#[test]
fn empty_messages_are_typed_errors() {
    assert_eq!(decode(&[]), Err(MessageError::Empty));
    assert_eq!(decode(&fixture("metadata_only")), Err(MessageError::Empty));
    // A padded empty protobuf: the pad strips to nothing.
    assert_eq!(
        decode_padded(&[1]),
        Err(InboundError::Message(MessageError::Empty))
    );
}

#[test]
fn truncated_and_malformed_protobuf_are_typed_errors() {
    for name in ["conversation", "reaction", "image", "device_sent", "edit"] {
        let bytes = fixture(name);
        for cut in 1..bytes.len() {
            match decode(&bytes[..cut]) {
                Err(MessageError::Protobuf(_)) | Err(MessageError::Empty) => {}
                // A cut can land between two fields of the inner message and leave a
                // shorter valid one (or a key without its id): any typed result is fine.
                Ok(_) | Err(MessageError::MissingField(_)) => {}
                Err(e) => panic!("{name} cut at {cut}: {e}"),
            }
        }
        // Cutting into the first (outer) field's payload is always a protobuf error.
        assert!(
            matches!(decode(&bytes[..2]), Err(MessageError::Protobuf(_))),
            "{name}"
        );
    }
    // Invalid UTF-8 in `conversation`.
    assert!(matches!(
        decode(&[0x0a, 0x02, 0xff, 0xfe]),
        Err(MessageError::Protobuf(_))
    ));
    // A wire type that does not match the field (conversation as a varint).
    assert!(matches!(
        decode(&[0x08, 0x01]),
        Err(MessageError::Protobuf(_))
    ));
}

#[test]
fn missing_required_parts_are_typed_errors() {
    // A revoke without a key.
    let revoke = e2e::Message {
        protocol_message: Some(Box::new(e2e::message::ProtocolMessage {
            r#type: Some(0),
            ..Default::default()
        })),
        ..Default::default()
    };
    assert_eq!(
        decode(&revoke.encode_to_vec()),
        Err(MessageError::MissingField("protocolMessage.key.id"))
    );
    // A device-sent message without a destination.
    let ds = e2e::Message {
        device_sent_message: Some(Box::new(e2e::message::DeviceSentMessage {
            message: Some(Box::new(e2e::Message {
                conversation: Some("x".into()),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    assert_eq!(
        decode(&ds.encode_to_vec()),
        Err(MessageError::MissingField(
            "deviceSentMessage.destinationJid"
        ))
    );
    // Wrappers nested beyond the limit.
    let mut m = e2e::Message {
        conversation: Some("deep".into()),
        ..Default::default()
    };
    for _ in 0..20 {
        m = e2e::Message {
            ephemeral_message: Some(Box::new(e2e::message::FutureProofMessage {
                message: Some(Box::new(m)),
            })),
            ..Default::default()
        };
    }
    assert_eq!(decode(&m.encode_to_vec()), Err(MessageError::TooDeep));
}

#[test]
fn encode_text_round_trips_and_matches_baileys_bytes() {
    // Plain text is `conversation`, byte for byte what Baileys' encoder wrote.
    assert_eq!(encode_text("hello 👋", None), fixture("conversation"));

    let reply = ReplyContext {
        stanza_id: "ABC123".into(),
        participant: Some("15550002222@s.whatsapp.net".into()),
        remote_jid: None,
        quoted: Some(e2e::Message {
            conversation: Some("original".into()),
            ..Default::default()
        }),
    };
    let bytes = encode_text("a reply", Some(&reply));
    assert_eq!(bytes, fixture("extended_reply"));
    assert_eq!(
        decode(&bytes).unwrap().content,
        Some(MessageContent::Text {
            text: "a reply".into(),
            reply: Some(reply)
        })
    );
}

#[test]
fn padded_plaintexts() {
    // The Signal crate's padding, as Baileys writes it (1 to 16 bytes each equal to the count).
    let text = encode_text("padded", None);
    for n in 1..=16u8 {
        let d = decode_padded(&pad_with(&text, n)).unwrap();
        assert_eq!(
            d.content,
            Some(MessageContent::Text {
                text: "padded".into(),
                reply: None
            })
        );
    }
    // Bad pads: 0, longer than the plaintext, inconsistent bytes, nothing at all.
    let bad = InboundError::Padding(SignalError::InvalidPadding);
    assert_eq!(decode_padded(&[0x0a, 0x01, b'x', 0x00]), Err(bad.clone()));
    assert_eq!(decode_padded(&[0x0a, 0x01, b'x', 0x07]), Err(bad.clone()));
    assert_eq!(
        decode_padded(&[0x0a, 0x01, b'x', 0x01, 0x02]),
        Err(bad.clone())
    );
    assert_eq!(decode_padded(&[]), Err(bad));
    // An unpadded protobuf read as padded: conversation "x" ends in 'x' = 120 > length.
    assert!(matches!(
        decode_padded(&[0x0a, 0x01, b'x']),
        Err(InboundError::Padding(_))
    ));
    // `v="3"` carries no padding.
    assert_eq!(
        unpad_for_version("3", &text).map(|b| decode(&b).map(|d| d.content)),
        Ok(Ok(Some(MessageContent::Text {
            text: "padded".into(),
            reply: None
        })))
    );
}

#[test]
fn message_ids_match_the_reference_layout() {
    let f = fixtures();
    let me = Jid::new("15550001111", Server::WhatsApp).with_device(3);
    let id = message_id(1_700_000_000, Some(&me), &[0xab; 16]);
    assert_eq!(id, f["message_id"]);
    let mut counting = [0u8; 16];
    for (i, b) in counting.iter_mut().enumerate() {
        *b = i as u8;
    }
    assert_eq!(message_id(1, None, &counting), f["message_id_anon"]);
    assert_eq!(id.len(), 22);
    assert!(id.starts_with("3EB0"));
    assert!(id[4..]
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    // A user longer than the 20-byte field is cut, not a panic.
    let long = Jid::new("1".repeat(40), Server::WhatsApp);
    assert_eq!(message_id(0, Some(&long), &[0; 16]).len(), 22);
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        if let Ok(unpadded) = unpad(&bytes) {
            let _ = decode(unpadded);
        }
    }

    #[test]
    fn decode_never_panics_on_mutated_fixtures(
        which in 0usize..20,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut names: Vec<String> = fixtures().into_keys().filter(|k| !k.starts_with("message_id")).collect();
        names.sort();
        let mut bytes = fixture(&names[which % names.len()]);
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let _ = decode(&bytes);
    }

    #[test]
    fn text_round_trips(text in ".{0,200}", r in any::<u8>(), stanza in "[A-F0-9]{1,22}") {
        let plain = pad_with(&encode_text(&text, None), r % 16 + 1);
        prop_assert_eq!(
            decode_padded(&plain).map(|d| d.content),
            // An empty `conversation` is still a (present, empty) field.
            Ok(Some(MessageContent::Text { text: text.clone(), reply: None }))
        );
        let reply = ReplyContext { stanza_id: stanza, ..Default::default() };
        let bytes = encode_text(&text, Some(&reply));
        prop_assert_eq!(
            decode(&bytes).map(|d| d.content),
            Ok(Some(MessageContent::Text { text, reply: Some(reply) }))
        );
    }
}

#[test]
fn reaction_edit_and_revoke_encode_as_they_decode() {
    use wafleet_protocol::message::{encode_edit, encode_reaction, encode_revoke};
    let target = baileys_key();
    // A revoke is `protocolMessage {key, type: REVOKE}`, byte for byte what Baileys wrote.
    assert_eq!(encode_revoke(&target), fixture("revoke"));
    assert_eq!(
        decode(&encode_revoke(&target)).unwrap().content,
        Some(MessageContent::Revoke {
            target: target.clone()
        })
    );
    assert_eq!(
        decode(&encode_reaction(&target, "👍", 1_700_000_000_000))
            .unwrap()
            .content,
        Some(MessageContent::Reaction {
            target: target.clone(),
            emoji: "👍".into()
        })
    );
    assert_eq!(
        decode(&encode_edit(&target, "fixed typo", 1_700_000_000_000))
            .unwrap()
            .content,
        Some(MessageContent::Edit {
            target,
            content: Box::new(MessageContent::Text {
                text: "fixed typo".into(),
                reply: None,
            }),
        })
    );
}
