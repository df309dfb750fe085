//! Acks and receipts: the ones we send for inbound messages (ack, delivery, retry) and
//! reading the receipts peers send for our messages.

use wafleet_protocol::binary::Node;
use wafleet_protocol::client::prekeys::id_bytes;
use wafleet_protocol::client::DeviceIdentity;
use wafleet_protocol::client::PreKey;
use wafleet_protocol::jid::Jid;

use crate::event::{Receipt, ReceiptKind};
use crate::stanza::{jid_attr, str_attr, StanzaError};

/// `<ack class id to [participant] [recipient] [type] [from]>` for an inbound stanza, as
/// the protocol session acks the stanzas it does not handle (Baileys' `buildAckStanza`).
pub fn ack_for(node: &Node, own: &Jid) -> Option<Node> {
    let id = node.attr_str("id")?;
    let from = node.get_attr("from")?;
    let mut ack = Node::new("ack")
        .attr("id", id.to_owned())
        .attr("to", from.clone())
        .attr("class", node.tag.clone());
    for key in ["participant", "recipient", "type"] {
        if let Some(v) = node.get_attr(key) {
            ack = ack.attr(key, v.clone());
        }
    }
    if node.tag == "message" {
        ack = ack.attr("from", own.clone());
    }
    Some(ack)
}

/// The delivery receipt for a decrypted message: `<receipt id to [participant]>`; for a
/// message from our own other device `<receipt id to=device recipient=chat type=sender>`.
pub fn delivery_receipt(
    id: &str,
    from: &Jid,
    participant: Option<&Jid>,
    recipient: Option<&Jid>,
    from_me: bool,
    peer: bool,
) -> Node {
    let mut r = Node::new("receipt")
        .attr("id", id.to_owned())
        .attr("to", from.clone());
    if let Some(p) = participant {
        r = r.attr("participant", p.clone());
    }
    if peer {
        r = r.attr("type", "peer_msg");
    } else if from_me {
        if let Some(rc) = recipient {
            r = r.attr("recipient", rc.clone());
        }
        r = r.attr("type", "sender");
    }
    r
}

/// What a retry receipt carries beside the message attributes.
pub struct RetryRequest<'a> {
    /// The message id.
    pub id: &'a str,
    /// The stanza's `from`.
    pub from: &'a Jid,
    /// The stanza's `participant`.
    pub participant: Option<&'a Jid>,
    /// The stanza's `recipient`.
    pub recipient: Option<&'a Jid>,
    /// The stanza's `t`.
    pub timestamp: u64,
    /// How many retries we asked for this message (1 the first time).
    pub count: u32,
    /// The `RetryReason` code.
    pub error: u8,
}

/// `<receipt id type=retry to [participant] [recipient]><retry count id t v=1 error/>
/// <registration>u32 BE</registration>[<keys>…</keys>]</receipt>`. The `<keys>` bundle
/// (type, identity, one-time prekey, signed prekey, device identity) is added from the
/// second retry on, as Baileys does, so the sender can start a fresh session.
pub fn retry_receipt(
    req: &RetryRequest<'_>,
    identity: &DeviceIdentity,
    pre_key: Option<&PreKey>,
) -> Node {
    let mut r = Node::new("receipt")
        .attr("id", req.id.to_owned())
        .attr("type", "retry")
        .attr("to", req.from.clone());
    if let Some(rc) = req.recipient {
        r = r.attr("recipient", rc.clone());
    }
    if let Some(p) = req.participant {
        r = r.attr("participant", p.clone());
    }
    let mut children = vec![
        Node::new("retry")
            .attr("count", req.count.to_string())
            .attr("id", req.id.to_owned())
            .attr("t", req.timestamp.to_string())
            .attr("v", "1")
            .attr("error", req.error.to_string()),
        Node::new("registration").bytes(identity.registration_id.to_be_bytes().to_vec()),
    ];
    if req.count >= 2 {
        let spk = &identity.signed_pre_key;
        let mut keys = vec![
            Node::new("type").bytes(vec![5]),
            Node::new("identity").bytes(identity.identity_key.public.to_vec()),
        ];
        if let Some(k) = pre_key {
            keys.push(Node::new("key").children([
                Node::new("id").bytes(id_bytes(k.id).to_vec()),
                Node::new("value").bytes(k.key_pair.public.to_vec()),
            ]));
        }
        keys.push(Node::new("skey").children([
            Node::new("id").bytes(id_bytes(spk.id).to_vec()),
            Node::new("value").bytes(spk.key_pair.public.to_vec()),
            Node::new("signature").bytes(spk.signature.clone()),
        ]));
        if let Some(account) = &identity.account {
            keys.push(Node::new("device-identity").bytes(account.clone()));
        }
        children.push(Node::new("keys").children(keys));
    }
    r.children(children)
}

/// An inbound `<receipt>`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptStanza {
    /// The event to report.
    pub receipt: Receipt,
    /// The stanza's `from`.
    pub from: Jid,
    /// The stanza's `participant`.
    pub participant: Option<Jid>,
    /// The stanza's `recipient`.
    pub recipient: Option<Jid>,
    /// For a retry receipt: `<retry count>`.
    pub retry_count: Option<u32>,
}

/// Reads `<receipt id from [participant] [recipient] [type] [t]><list><item id/>…</list>`.
pub fn parse_receipt(node: &Node) -> Result<ReceiptStanza, StanzaError> {
    let id = node
        .attr_str("id")
        .filter(|s| !s.is_empty())
        .ok_or(StanzaError::Missing("id"))?;
    let from = jid_attr(node, "from")?.ok_or(StanzaError::Missing("from"))?;
    let participant = jid_attr(node, "participant")?;
    let recipient = jid_attr(node, "recipient")?;
    let kind = ReceiptKind::from_type(node.attr_str("type"));
    let mut ids = vec![id.to_owned()];
    if let Some(list) = node.child_by_tag("list") {
        ids.extend(
            list.children_by_tag("item")
                .filter_map(|i| str_attr(i, "id"))
                .filter(|i| !i.is_empty()),
        );
    }
    let sender = participant.clone().unwrap_or_else(|| from.clone());
    let chat = if from.is_group() {
        from.clone()
    } else {
        recipient
            .clone()
            .unwrap_or_else(|| from.clone())
            .to_non_ad()
    };
    let retry_count = node
        .child_by_tag("retry")
        .and_then(|r| r.attr_str("count"))
        .and_then(|c| c.parse().ok());
    Ok(ReceiptStanza {
        receipt: Receipt {
            ids,
            chat,
            sender,
            kind,
            timestamp: node.attr_str("t").and_then(|t| t.parse().ok()),
        },
        from,
        participant,
        recipient,
        retry_count,
    })
}

impl crate::Messenger {
    /// A `<receipt>`: acked at once, reported, and a retry receipt for a message we sent
    /// re-sends it to the device that asked.
    pub(crate) fn handle_receipt(
        &mut self,
        node: &Node,
        keys: &mut crate::Keys<'_>,
        now_ms: u64,
        rng: &mut impl rand_core::CryptoRngCore,
    ) {
        if let Some(ack) = ack_for(node, &self.own.jid) {
            self.transmits.push_back(ack);
        }
        let parsed = match parse_receipt(node) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable receipt, acked and dropped");
                return;
            }
        };
        let retry = parsed.receipt.kind == ReceiptKind::Retry;
        self.events
            .push_back(crate::MessengerEvent::Receipt(parsed.receipt.clone()));
        if retry {
            self.handle_retry(node, &parsed, keys, now_ms, rng);
        }
    }

    fn handle_retry(
        &mut self,
        node: &Node,
        parsed: &ReceiptStanza,
        keys: &mut crate::Keys<'_>,
        now_ms: u64,
        rng: &mut impl rand_core::CryptoRngCore,
    ) {
        let device = parsed
            .participant
            .clone()
            .unwrap_or_else(|| parsed.from.clone());
        let Some(id) = parsed.receipt.ids.first() else {
            return;
        };
        let Some(recent) = keys.signal.find_outbound(id).cloned() else {
            tracing::info!(%id, %device, "retry receipt for a message we no longer have");
            return;
        };
        if self.resends.len() >= crate::RETRY_MEMORY {
            self.resends.clear();
        }
        let done = self
            .resends
            .entry((id.clone(), device.to_string()))
            .or_insert(0);
        *done += 1;
        if *done > self.config.max_resends {
            tracing::info!(%id, %device, "resend limit reached");
            return;
        }
        let fresh = match node.child_by_tag("keys") {
            Some(bundle_node) => match crate::usync::parse_bundle(bundle_node, node) {
                // A refused bundle leaves no session: the resend then fails, reported.
                Ok(bundle) => self.start_session(keys, &device, &bundle, rng).is_err(),
                Err(e) => {
                    tracing::info!(%id, %device, error = %e, "unreadable retry keys: fetching a bundle");
                    true
                }
            },
            None => true,
        };
        let count = parsed.retry_count.unwrap_or(1);
        let kind = crate::outbound::JobKind::Resend {
            device,
            count,
            fresh,
        };
        self.start_resend(recent, kind, keys, now_ms, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_with_list_and_type() {
        let node = Node::new("receipt")
            .attr("id", "A")
            .attr("from", "222:1@s.whatsapp.net")
            .attr("type", "read")
            .attr("t", "17")
            .children([Node::new("list").children([
                Node::new("item").attr("id", "B"),
                Node::new("item").attr("id", "C"),
            ])]);
        let r = parse_receipt(&node).unwrap();
        assert_eq!(r.receipt.ids, vec!["A", "B", "C"]);
        assert_eq!(r.receipt.kind, ReceiptKind::Read);
        assert_eq!(r.receipt.chat.to_string(), "222@s.whatsapp.net");
        assert_eq!(r.receipt.sender.to_string(), "222:1@s.whatsapp.net");
        assert_eq!(r.receipt.timestamp, Some(17));
        assert!(parse_receipt(&Node::new("receipt").attr("id", "A")).is_err());
    }

    #[test]
    fn ack_copies_routing_attributes() {
        let own: Jid = "111:3@s.whatsapp.net".parse().unwrap();
        let node = Node::new("receipt")
            .attr("id", "A")
            .attr("from", "1-2@g.us")
            .attr("participant", "222:1@s.whatsapp.net")
            .attr("type", "read");
        let ack = ack_for(&node, &own).unwrap();
        assert_eq!(ack.attr_str("class"), Some("receipt"));
        assert_eq!(ack.attr_str("type"), Some("read"));
        assert_eq!(ack.get_attr("to").unwrap().to_string(), "1-2@g.us");
        assert!(ack.get_attr("participant").is_some());
        assert!(ack.get_attr("from").is_none());
    }
}
