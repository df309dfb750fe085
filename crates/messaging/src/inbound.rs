//! Inbound `<message>`: redelivery from the recent cache, decryption of each `<enc>`
//! (`pkmsg`/`msg` with the 1:1 session, `skmsg` with the sender's key), unpadding,
//! decoding, sender-key distributions, own-device sync; then the events, the retry
//! receipt on failure, and the ack and delivery receipt held until `delivered`.

use rand_core::CryptoRngCore;
use tracing::{debug, info, warn};
use wafleet_protocol::binary::Node;
use wafleet_protocol::jid::Jid;
use wafleet_protocol::message::{self, DecodedMessage};
use wafleet_signal::message::CiphertextMessage;
use wafleet_signal::{
    decrypt, group_decrypt, padding, process_sender_key_distribution, SenderKeyDistributionMessage,
    SenderKeyRecord,
};

use crate::error::UndecryptableReason;
use crate::event::{InboundMessage, MessengerEvent, Undecryptable};
use crate::receipt::{ack_for, delivery_receipt, retry_receipt, RetryRequest};
use crate::stanza::{addressing, not_for_us, Addressing, Enc, EncKind, MessageStanza, StanzaError};
use crate::state::{address, Identities, Keys, PreKeys, RecentInbound};
use crate::Messenger;

/// What decrypting the parts of one stanza gave.
struct Outcome {
    /// The first decoded message with content, and its unpadded plaintext.
    content: Option<(DecodedMessage, Vec<u8>)>,
    /// The first failure.
    failure: Option<UndecryptableReason>,
    /// Whether the state changed (a session advanced, a prekey consumed, a sender key).
    changed: bool,
}

impl Messenger {
    pub(crate) fn handle_message(
        &mut self,
        node: &Node,
        keys: &mut Keys<'_>,
        rng: &mut impl CryptoRngCore,
    ) {
        let stanza = match MessageStanza::parse(node) {
            Ok(s) => s,
            Err(e) => {
                // Without a usable id and sender there is nobody to report it for; ack it
                // (if it can be addressed at all) so it does not block the queue.
                warn!(error = %e, "unreadable message stanza, acked and dropped");
                if let Some(ack) = ack_for(node, &self.own.jid) {
                    self.transmits.push_back(ack);
                }
                return;
            }
        };
        let ack = ack_for(node, &self.own.jid);
        let addr = match addressing(&stanza, &self.own) {
            Ok(a) => a,
            Err(e) => {
                let fallback = Addressing {
                    chat: stanza.from.to_non_ad(),
                    sender: stanza.participant.clone().unwrap_or(stanza.from.clone()),
                    from_me: false,
                    group: false,
                };
                let reason = match e {
                    StanzaError::UnsupportedServer(_) => {
                        UndecryptableReason::Unsupported(e.to_string())
                    }
                    _ => UndecryptableReason::Malformed(e.to_string()),
                };
                return self.undecryptable(&stanza, &fallback, reason, false, ack, keys);
            }
        };
        if let Some(why) = not_for_us(&stanza, &self.own) {
            let reason = UndecryptableReason::NotForUs(why);
            return self.undecryptable(&stanza, &addr, reason, false, ack, keys);
        }

        let from = stanza.from.to_string();
        let participant = stanza.participant.as_ref().map(Jid::to_string);
        let cached = keys
            .signal
            .find_inbound(&from, participant.as_deref(), &stanza.id)
            .map(|r| r.plaintext.clone());
        if let Some(plaintext) = cached {
            if let Ok(decoded) = message::decode(&plaintext) {
                debug!(id = %stanza.id, "redelivered message served from the recent cache");
                return self.deliver(&stanza, &addr, decoded, true, ack);
            }
        }

        let outcome = self.decrypt_parts(&stanza, &addr, keys, rng);
        match outcome {
            Outcome {
                content: Some((decoded, plaintext)),
                failure,
                ..
            } => {
                if let Some(f) = failure {
                    info!(id = %stanza.id, reason = %f, "one part of a message failed, another decrypted");
                }
                keys.signal.remember_inbound(RecentInbound {
                    from,
                    participant,
                    id: stanza.id.clone(),
                    plaintext,
                });
                self.events.push_back(MessengerEvent::StateChanged);
                self.deliver(&stanza, &addr, decoded, false, ack);
            }
            Outcome {
                content: None,
                failure: Some(reason),
                changed,
            } => self.undecryptable(&stanza, &addr, reason, changed, ack, keys),
            Outcome {
                content: None,
                failure: None,
                changed,
            } => {
                // Only a sender-key distribution (or nothing we keep): no event for the
                // driver; the ack and receipt leave after the state is saved.
                if changed {
                    self.events.push_back(MessengerEvent::StateChanged);
                } else if stanza.encs.is_empty() {
                    let reason = UndecryptableReason::NoContent;
                    return self.undecryptable(&stanza, &addr, reason, false, ack, keys);
                }
                debug!(id = %stanza.id, "message without content (sender key only), acked");
                self.transmits.extend(ack);
                self.transmits.push_back(self.receipt_for(&stanza, &addr));
            }
        }
    }

    fn receipt_for(&self, stanza: &MessageStanza, addr: &Addressing) -> Node {
        delivery_receipt(
            &stanza.id,
            &stanza.from,
            stanza.participant.as_ref(),
            stanza.recipient.as_ref(),
            addr.from_me,
            stanza.category.as_deref() == Some("peer"),
        )
    }

    fn deliver(
        &mut self,
        stanza: &MessageStanza,
        addr: &Addressing,
        decoded: DecodedMessage,
        redelivered: bool,
        ack: Option<Node>,
    ) {
        let mut chat = addr.chat.clone();
        if let Some(ds) = &decoded.device_sent {
            if addr.from_me {
                match ds.destination_jid.parse::<Jid>() {
                    Ok(dest) => chat = dest.to_non_ad(),
                    Err(_) => warn!(id = %stanza.id, "device-sent message with a bad destination"),
                }
            }
        }
        let mut nodes: Vec<Node> = ack.into_iter().collect();
        nodes.push(self.receipt_for(stanza, addr));
        let key = stanza.key();
        let Some(content) = decoded.content else {
            // Cached entries always have content; a content-less decode is acked directly.
            self.transmits.extend(nodes);
            return;
        };
        self.awaiting_delivery.insert(key.clone(), nodes);
        self.events
            .push_back(MessengerEvent::Message(Box::new(InboundMessage {
                key,
                id: stanza.id.clone(),
                chat,
                sender: addr.sender.clone(),
                from_me: addr.from_me,
                timestamp: stanza.timestamp,
                push_name: stanza.push_name.clone(),
                content,
                redelivered,
            })));
    }

    fn undecryptable(
        &mut self,
        stanza: &MessageStanza,
        addr: &Addressing,
        reason: UndecryptableReason,
        changed: bool,
        ack: Option<Node>,
        keys: &mut Keys<'_>,
    ) {
        warn!(id = %stanza.id, sender = %addr.sender, reason = %reason, "undecryptable message");
        if changed {
            self.events.push_back(MessengerEvent::StateChanged);
        }
        let key = stanza.key();
        self.events
            .push_back(MessengerEvent::Undecryptable(Box::new(Undecryptable {
                key: key.clone(),
                id: stanza.id.clone(),
                chat: addr.chat.clone(),
                sender: addr.sender.clone(),
                from_me: addr.from_me,
                timestamp: stanza.timestamp,
                reason: reason.clone(),
            })));
        if let Some(code) = reason.retry_code() {
            if self.retries_sent.len() >= crate::RETRY_MEMORY {
                self.retries_sent.clear();
            }
            let counter = (stanza.id.clone(), addr.sender.to_string());
            let count = self.retries_sent.entry(counter).or_insert(0);
            *count += 1;
            let count = *count;
            if count <= self.config.max_retry_receipts {
                // The newest prekey is the least likely to have been handed out already.
                let pre_key = keys.pre_keys.iter().max_by_key(|k| k.id);
                let req = RetryRequest {
                    id: &stanza.id,
                    from: &stanza.from,
                    participant: stanza.participant.as_ref(),
                    recipient: stanza.recipient.as_ref(),
                    timestamp: stanza.timestamp,
                    count,
                    error: code,
                };
                self.transmits
                    .push_back(retry_receipt(&req, keys.identity, pre_key));
            } else {
                info!(id = %stanza.id, count, "retry limit reached, no retry receipt");
            }
        }
        self.awaiting_delivery
            .insert(key, ack.into_iter().collect());
    }

    fn decrypt_parts(
        &mut self,
        stanza: &MessageStanza,
        addr: &Addressing,
        keys: &mut Keys<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Outcome {
        let mut out = Outcome {
            content: None,
            failure: None,
            changed: false,
        };
        // 1:1 parts first: they may carry the sender key an `skmsg` part needs.
        let ordered = stanza
            .encs
            .iter()
            .filter(|e| e.kind != EncKind::SenderKey)
            .chain(stanza.encs.iter().filter(|e| e.kind == EncKind::SenderKey));
        let mut any = false;
        for enc in ordered {
            if let EncKind::Other(kind) = &enc.kind {
                debug!(id = %stanza.id, kind, "skipping enc of an unknown type");
                continue;
            }
            any = true;
            match self.decrypt_enc(enc, addr, keys, rng, &mut out.changed) {
                Ok(plaintext) => match message::decode(&plaintext) {
                    Ok(decoded) => {
                        if let Some(skdm) = &decoded.sender_key_distribution {
                            out.changed |=
                                store_sender_key(keys, addr, &skdm.group_id, &skdm.distribution);
                        }
                        if decoded.content.is_some() && out.content.is_none() {
                            out.content = Some((decoded, plaintext));
                        }
                    }
                    Err(e) => {
                        out.failure
                            .get_or_insert(UndecryptableReason::BadContent(e.to_string()));
                    }
                },
                Err(reason) => {
                    out.failure.get_or_insert(reason);
                }
            }
        }
        if !any && out.failure.is_none() {
            out.failure = Some(if stanza.encs.is_empty() {
                UndecryptableReason::NoContent
            } else {
                let kinds: Vec<&str> = stanza.encs.iter().map(|e| e.kind.as_str()).collect();
                UndecryptableReason::Unsupported(format!("enc type {}", kinds.join(",")))
            });
        }
        out
    }

    /// Decrypts and unpads one part, committing the state it changed.
    fn decrypt_enc(
        &mut self,
        enc: &Enc,
        addr: &Addressing,
        keys: &mut Keys<'_>,
        rng: &mut impl CryptoRngCore,
        changed: &mut bool,
    ) -> Result<Vec<u8>, UndecryptableReason> {
        let bytes = enc
            .ciphertext
            .as_deref()
            .ok_or_else(|| UndecryptableReason::Malformed("empty enc".into()))?;
        let sender = address(&addr.sender);
        let sender_key = sender.to_string();
        let padded = match enc.kind {
            EncKind::SenderKey => {
                if !addr.group {
                    return Err(UndecryptableReason::Malformed(
                        "skmsg outside a group".into(),
                    ));
                }
                let group = addr.chat.to_string();
                let record = keys
                    .signal
                    .sender_key_at(&group, &sender_key)
                    .filter(|r| !r.is_empty())
                    .ok_or(UndecryptableReason::UnknownSenderKey)?;
                let (record, plaintext) = group_decrypt(record, bytes)
                    .map_err(|e| UndecryptableReason::from_signal(&e))?;
                keys.signal.put_sender_key(group, sender_key, record);
                *changed = true;
                plaintext
            }
            _ => {
                let message = CiphertextMessage::from_wire(enc.kind.as_str(), bytes)
                    .map_err(|e| UndecryptableReason::from_signal(&e))?;
                let record = keys.signal.session_at(&sender_key);
                let usable = record
                    .is_some_and(|r| r.has_current_session() || r.previous().next().is_some());
                if matches!(message, CiphertextMessage::Whisper(_)) && !usable {
                    return Err(UndecryptableReason::NoSession);
                }
                let record = record.cloned().unwrap_or_default();
                let wanted = match &message {
                    CiphertextMessage::PreKey(m) => m.pre_key_id,
                    CiphertextMessage::Whisper(_) => None,
                };
                let pre_keys = PreKeys::new(keys.identity, keys.pre_keys, wanted);
                let identities = Identities::new(keys.identity, keys.signal.identities());
                let d = decrypt(&record, &sender, &identities, &pre_keys, &message, rng)
                    .map_err(|e| UndecryptableReason::from_signal(&e))?;
                if let Some(current) = d.record.current() {
                    keys.signal
                        .put_identity(sender_key.clone(), *current.remote_identity());
                }
                keys.signal.put_session(sender_key, d.record);
                if let Some(id) = d.consumed_pre_key {
                    keys.pre_keys.retain(|k| k.id != id);
                    keys.signal.note_pre_key_used(id);
                }
                *changed = true;
                d.plaintext
            }
        };
        padding::unpad_for_version(&enc.version, &padded)
            .map_err(|_| UndecryptableReason::BadPadding)
    }
}

/// Stores a sender's key from a SenderKeyDistributionMessage. Returns whether it did.
fn store_sender_key(
    keys: &mut Keys<'_>,
    addr: &Addressing,
    group_id: &str,
    distribution: &[u8],
) -> bool {
    let Ok(group) = group_id.parse::<Jid>() else {
        warn!("sender-key distribution for an invalid group id");
        return false;
    };
    let skdm = match SenderKeyDistributionMessage::parse(distribution) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "unreadable sender-key distribution");
            return false;
        }
    };
    let sender = address(&addr.sender).to_string();
    let group = group.to_string();
    let empty = SenderKeyRecord::new();
    let current = keys.signal.sender_key_at(&group, &sender).unwrap_or(&empty);
    let updated = process_sender_key_distribution(current, &skdm);
    if updated == *current {
        return false;
    }
    keys.signal.put_sender_key(group, sender, updated);
    true
}
