//! Small wire helpers: the `waE2E.Message` wrappers a send builds around the caller's
//! message (device-sent copy for our own devices, sender-key distribution), and the
//! participant hash (`phash`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use wafleet_protocol::jid::Jid;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited protobuf field.
fn field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(number) << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Message{deviceSentMessage{destinationJID, message}}`: what our own other devices get
/// for a 1:1 message we send, so they show it in the right chat.
pub fn device_sent(destination: &Jid, message: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(message.len() + 48);
    field(1, destination.to_string().as_bytes(), &mut inner);
    field(2, message, &mut inner);
    let mut out = Vec::with_capacity(inner.len() + 4);
    field(31, &inner, &mut out);
    out
}

/// `Message{senderKeyDistributionMessage{groupID, axolotlSenderKeyDistributionMessage}}`.
pub fn sender_key_distribution(group: &Jid, skdm: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(skdm.len() + 48);
    field(1, group.to_string().as_bytes(), &mut inner);
    field(2, skdm, &mut inner);
    let mut out = Vec::with_capacity(inner.len() + 4);
    field(2, &inner, &mut out);
    out
}

/// `message` with a sender-key distribution added (protobuf concatenation merges fields).
pub fn with_sender_key_distribution(message: &[u8], group: &Jid, skdm: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    out.extend_from_slice(&sender_key_distribution(group, skdm));
    out
}

/// The participant hash, as Baileys' `generateParticipantHashV2`: the device JIDs'
/// string forms sorted and concatenated, SHA-256, standard base64, `2:` + the first 6
/// characters.
pub fn phash(devices: &[Jid]) -> String {
    let mut jids: Vec<String> = devices.iter().map(ToString::to_string).collect();
    jids.sort();
    let digest = Sha256::digest(jids.concat().as_bytes());
    let b64 = STANDARD.encode(digest);
    format!("2:{}", &b64[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use wafleet_protocol::message::{decode, encode_text, MessageContent};

    #[test]
    fn device_sent_wrapper_decodes_with_destination() {
        let inner = encode_text("hi", None);
        let dest: Jid = "222@s.whatsapp.net".parse().unwrap();
        let decoded = decode(&device_sent(&dest, &inner)).unwrap();
        assert_eq!(
            decoded.device_sent.unwrap().destination_jid,
            "222@s.whatsapp.net"
        );
        assert!(matches!(decoded.content, Some(MessageContent::Text { text, .. }) if text == "hi"));
    }

    #[test]
    fn skdm_merges_into_the_message() {
        let group: Jid = "1-2@g.us".parse().unwrap();
        let merged = with_sender_key_distribution(&encode_text("x", None), &group, &[0x33, 1]);
        let decoded = decode(&merged).unwrap();
        let skdm = decoded.sender_key_distribution.unwrap();
        assert_eq!(skdm.group_id, "1-2@g.us");
        assert_eq!(skdm.distribution, vec![0x33, 1]);
        assert!(decoded.content.is_some());
    }

    #[test]
    fn phash_matches_baileys() {
        // Baileys' formula run in node: sort, join, sha256, base64, '2:' + 6 chars.
        let devices: Vec<Jid> = ["2@s.whatsapp.net", "1:3@s.whatsapp.net"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(phash(&devices), "2:KORmgB");
    }
}
