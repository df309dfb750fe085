//! The phones' Signal stack: each simulated phone (device 0 of its account) runs a
//! [`Messenger`] of `wafleet-messaging` in memory, with the identity and one-time prekeys
//! the key server hands out for it (`keys::phone_keys`).
//!
//! - Inbound: what the server delivers to a phone (`State::deliver_to`) is kept raw in its
//!   inbox and queued for its messenger ([`State::run_phones`]). A decrypted message lands
//!   in the phone's decrypted inbox ([`PhoneMessage`]) and is acknowledged at once, so its
//!   `<ack>` and delivery `<receipt>` go back through the server; receipts for the phone's
//!   own messages are kept as [`PhoneReceipt`]s.
//! - Outbound: [`State::phone_send_text`] starts a send; the messenger's stanzas (usync,
//!   bundle fetches, `w:g2` group queries, the `<message>`, receipts) are handled by the
//!   same server code a connected companion's go through, as sent by `<phone>@s.whatsapp.net`
//!   (device 0), and the answers are fed back, until the phone has nothing more to say.
//!
//! Everything happens under the state's lock, without `.await`: a phone's work that another
//! delivery causes is queued and run after the stanza being handled, never re-entrantly.

use std::collections::{HashMap, HashSet, VecDeque};

use rand_core::OsRng;
use serde_json::{json, Value};
use tracing::{debug, warn};
use wafleet_messaging::{Keys, Messenger, MessengerEvent, Outgoing, SendError, SignalState};
use wafleet_protocol::binary::Node;
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::message::MessageContent;

use crate::messages::{DeviceRef, INBOX_LIMIT};
use crate::state::{result_for, Account, Outbound, SocketId, State};
use crate::SimError;

/// The socket id the phones' in-process stanzas are logged with (real sockets count from 1).
pub(crate) const PHONE_SOCKET: SocketId = 0;

/// A message a phone decrypted (or could not), oldest first in [`crate::Simulator::phone_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneMessage {
    /// The message id.
    pub id: String,
    /// The chat: the peer user for 1:1 (the destination for the account's own devices'
    /// messages), the group JID for a group.
    pub chat: Jid,
    /// The sending device.
    pub sender: Jid,
    /// Sent by the phone's own account (one of its companions).
    pub from_me: bool,
    /// The stanza's `t` (Unix seconds).
    pub timestamp: u64,
    /// The content type (`text`, `reaction`, `image`, …), or `undecryptable`.
    pub kind: String,
    /// The text of a text message (or of an edit).
    pub text: Option<String>,
    /// Why the message could not be read, for `undecryptable`.
    pub error: Option<String>,
}

impl PhoneMessage {
    /// The JSON form of the control API.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "chat": self.chat.to_string(),
            "sender": self.sender.to_string(),
            "from_me": self.from_me,
            "timestamp": self.timestamp,
            "type": self.kind,
            "text": self.text,
            "error": self.error,
        })
    }
}

/// A receipt a phone got for messages it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneReceipt {
    /// The message ids it covers.
    pub ids: Vec<String>,
    /// The chat (the peer user, or the group).
    pub chat: Jid,
    /// The device that sent it.
    pub sender: Jid,
    /// `delivered`, `read`, `played`, `sender`, `retry`, …
    pub kind: String,
    /// The receipt's `t` (Unix seconds), when given.
    pub timestamp: Option<u64>,
}

impl PhoneReceipt {
    /// The JSON form of the control API.
    pub fn to_json(&self) -> Value {
        json!({
            "ids": self.ids,
            "chat": self.chat.to_string(),
            "sender": self.sender.to_string(),
            "type": self.kind,
            "timestamp": self.timestamp,
        })
    }
}

/// A phone's messaging side: its messenger, Signal state and what it received.
pub(crate) struct PhoneChat {
    messenger: Messenger,
    signal: SignalState,
    pub messages: VecDeque<PhoneMessage>,
    pub receipts: VecDeque<PhoneReceipt>,
    /// Sends started by [`State::phone_send_text`] and not resolved yet.
    pending: HashSet<String>,
    /// How those sends ended.
    outcomes: HashMap<String, Result<(), SendError>>,
}

impl PhoneChat {
    /// The messaging side of the phone of `phone` (digits) with LID user `lid_user`.
    pub fn new(phone: &str, lid_user: &str) -> PhoneChat {
        PhoneChat {
            messenger: Messenger::new(
                Jid::new(phone, Server::WhatsApp),
                Some(Jid::new(lid_user, Server::Lid)),
            ),
            signal: SignalState::default(),
            messages: VecDeque::new(),
            receipts: VecDeque::new(),
            pending: HashSet::new(),
            outcomes: HashMap::new(),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= INBOX_LIMIT {
        list.pop_front();
    }
    list.push_back(item);
}

/// Runs `f` on the account's messenger with its keys lent.
fn with_messenger<R>(
    account: &mut Account,
    f: impl FnOnce(&mut Messenger, &mut Keys<'_>) -> R,
) -> R {
    let Account {
        signal,
        pre_keys,
        chat,
        ..
    } = account;
    let mut keys = Keys {
        identity: signal,
        pre_keys,
        signal: &mut chat.signal,
    };
    f(&mut chat.messenger, &mut keys)
}

/// Drains the messenger's events into the phone's inboxes (acknowledging each inbound
/// message at once: the phone keeps it in memory), then returns its transmits.
fn drain(account: &mut Account) -> Vec<Node> {
    let chat = &mut account.chat;
    while let Some(event) = chat.messenger.poll_event() {
        match event {
            MessengerEvent::StateChanged => {}
            MessengerEvent::Message(message) => {
                debug!(phone = %account.phone, id = %message.id, "phone decrypted a message");
                chat.messenger.delivered(&message.key);
                // A phone keeps one message per id, as WhatsApp clients do: a message sent
                // again with its id (a sender's retry whose first try arrived) is acked and
                // not shown twice.
                if message.redelivered {
                    continue;
                }
                push_bounded(
                    &mut chat.messages,
                    PhoneMessage {
                        id: message.id,
                        chat: message.chat,
                        sender: message.sender,
                        from_me: message.from_me,
                        timestamp: message.timestamp,
                        kind: message.content.type_name().to_owned(),
                        text: text_of(&message.content),
                        error: None,
                    },
                );
            }
            MessengerEvent::Undecryptable(failed) => {
                warn!(phone = %account.phone, id = %failed.id, reason = %failed.reason, "phone could not decrypt a message");
                chat.messenger.delivered(&failed.key);
                push_bounded(
                    &mut chat.messages,
                    PhoneMessage {
                        id: failed.id,
                        chat: failed.chat,
                        sender: failed.sender,
                        from_me: failed.from_me,
                        timestamp: failed.timestamp,
                        kind: "undecryptable".to_owned(),
                        text: None,
                        error: Some(failed.reason.to_string()),
                    },
                );
            }
            MessengerEvent::Receipt(receipt) => push_bounded(
                &mut chat.receipts,
                PhoneReceipt {
                    ids: receipt.ids,
                    chat: receipt.chat,
                    sender: receipt.sender,
                    kind: receipt.kind.name().to_owned(),
                    timestamp: receipt.timestamp,
                },
            ),
            MessengerEvent::Sent { id, .. } => {
                if chat.pending.remove(&id) {
                    chat.outcomes.insert(id, Ok(()));
                }
            }
            MessengerEvent::SendFailed { id, error } => {
                if chat.pending.remove(&id) {
                    chat.outcomes.insert(id, Err(error));
                }
            }
        }
    }
    std::iter::from_fn(|| chat.messenger.poll_transmit()).collect()
}

/// The text of a text message, or of an edit's new content.
fn text_of(content: &MessageContent) -> Option<String> {
    match content {
        MessageContent::Text { text, .. } => Some(text.clone()),
        MessageContent::Edit { content, .. } => text_of(content),
        _ => None,
    }
}

/// What `to` names: bare digits (a phone-number user), a user JID or a group JID.
fn recipient(to: &str) -> Result<Jid, SimError> {
    let invalid = || SimError::InvalidRecipient(to.to_owned());
    if !to.is_empty() && to.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Jid::new(to, Server::WhatsApp));
    }
    let jid: Jid = to.parse().map_err(|_| invalid())?;
    if jid.device.is_some() || !(jid.is_user() || jid.is_group()) {
        return Err(invalid());
    }
    Ok(jid)
}

impl State {
    /// Queues a stanza the server delivered to `phone`'s phone for its messenger.
    pub(crate) fn phone_received(&mut self, phone: &str, node: Node) {
        self.phone_work.push_back((phone.to_owned(), node));
    }

    /// `phone`'s account linked or lost a device: every phone's messenger is told with
    /// `<notification type=devices from=<user>>` (phone-number and LID forms), so its next
    /// send fetches that account's device list again instead of using a cached one.
    pub(crate) fn devices_changed(&mut self, phone: &str) {
        let Some(account) = self.phones.get(phone) else {
            return;
        };
        let users = [
            Jid::new(phone, Server::WhatsApp),
            Jid::new(account.lid_user.clone(), Server::Lid),
        ];
        let phones: Vec<String> = self.phones.keys().cloned().collect();
        for user in users {
            let id = self.next_iq_id();
            let notification = Node::new("notification")
                .attr("from", user)
                .attr("id", id)
                .attr("type", "devices")
                .attr("t", crate::state::unix_now().to_string());
            for to in &phones {
                self.phone_received(to, notification.clone());
            }
        }
    }

    /// Lets the phones handle what was delivered to them, and what that causes, until
    /// nothing is left. Not re-entrant: a call while the queue is being run returns at once
    /// (the running call picks the new work up).
    pub(crate) fn run_phones(&mut self) {
        if self.running_phones {
            return;
        }
        self.running_phones = true;
        while let Some((phone, node)) = self.phone_work.pop_front() {
            let Some(account) = self.phones.get_mut(&phone) else {
                continue;
            };
            let rest = with_messenger(account, |messenger, keys| {
                messenger.handle_node(node, keys, now_ms(), &mut OsRng)
            });
            if let Some(rest) = rest {
                debug!(%phone, tag = %rest.tag, "phone: stanza left to the protocol layer");
            }
            self.pump_phone(&phone);
        }
        self.running_phones = false;
    }

    /// Sends the phone's transmits through the server and feeds the answers back until the
    /// phone is quiet.
    fn pump_phone(&mut self, phone: &str) {
        loop {
            let Some(account) = self.phones.get_mut(phone) else {
                return;
            };
            let transmits = drain(account);
            if transmits.is_empty() {
                return;
            }
            for node in transmits {
                for answer in self.serve_phone(phone, node) {
                    let Some(account) = self.phones.get_mut(phone) else {
                        return;
                    };
                    with_messenger(account, |messenger, keys| {
                        messenger.handle_node(answer, keys, now_ms(), &mut OsRng)
                    });
                }
            }
        }
    }

    /// A stanza the phone sends, handled as a logged-in device's: what the server answers.
    fn serve_phone(&mut self, phone: &str, node: Node) -> Vec<Node> {
        let device = DeviceRef {
            phone: phone.to_owned(),
            device: 0,
        };
        let jid = device.pn();
        let answers: Vec<Outbound> = match &*node.tag {
            "message" if State::is_group_message(&node) => self
                .route_group_message(&jid, &node)
                .map(Outbound::Node)
                .into_iter()
                .collect(),
            "message" => self
                .route_message(&device, &node)
                .map(Outbound::Node)
                .into_iter()
                .collect(),
            "receipt" if State::is_group_receipt(&node) => self
                .route_group_receipt(&jid, &node)
                .map(Outbound::Node)
                .into_iter()
                .collect(),
            "receipt" => self
                .route_receipt(&device, &node)
                .map(Outbound::Node)
                .into_iter()
                .collect(),
            // What reaches a phone is acknowledged on arrival.
            "ack" => Vec::new(),
            "iq" => {
                let xmlns = node.attr_str("xmlns").unwrap_or_default();
                let ty = node.attr_str("type").unwrap_or_default();
                match (xmlns, ty) {
                    ("encrypt", "get") if node.child_by_tag("key").is_some() => {
                        self.bundle_fetch(PHONE_SOCKET, &node)
                    }
                    ("usync", "get") => self.usync(PHONE_SOCKET, &node),
                    ("w:g2", _) => vec![Outbound::Node(self.answer_group_iq(&jid, &node))],
                    _ => vec![Outbound::Node(result_for(&node))],
                }
            }
            other => {
                debug!(phone, tag = other, "phone stanza ignored");
                Vec::new()
            }
        };
        answers
            .into_iter()
            .filter_map(|out| match out {
                Outbound::Node(node) | Outbound::Close(Some(node)) => Some(node),
                _ => None,
            })
            .collect()
    }

    /// `phone`'s phone sends a text to `to` (bare digits, a user JID or a group JID);
    /// returns the message id once the server acked it.
    pub(crate) fn phone_send_text(
        &mut self,
        phone: &str,
        to: &str,
        text: &str,
    ) -> Result<String, SimError> {
        let to = recipient(to)?;
        if to.is_group() && !self.groups.exists(&to.user) {
            return Err(SimError::UnknownGroup(to.to_string()));
        }
        self.phone(phone)?;
        // What the phone got meanwhile (a device list change) comes first.
        self.run_phones();
        let account = self.phone(phone)?;
        let started = with_messenger(account, |messenger, keys| {
            messenger.send(to.clone(), Outgoing::text(text), keys, now_ms(), &mut OsRng)
        });
        let id = started.map_err(|error| send_failed(&to, error))?;
        account.chat.pending.insert(id.clone());
        self.pump_phone(phone);
        self.run_phones();
        let outcome = self.phones.get_mut(phone).and_then(|account| {
            if !account.chat.outcomes.contains_key(&id) {
                // Everything the server answers is answered by now: what still waits never
                // gets an answer, so the messenger gives it up (`SendFailed`, not kept).
                account.chat.messenger.handle_timeout(u64::MAX);
                let _ = drain(account);
            }
            account.chat.pending.remove(&id);
            account.chat.outcomes.remove(&id)
        });
        let outcome = outcome.unwrap_or(Err(SendError::Timeout));
        outcome
            .map(|()| id)
            .map_err(|error| send_failed(&to, error))
    }
}

impl State {
    /// `phone`'s phone reads the messages `ids` it decrypted: a `read` receipt for each goes
    /// to its sender, as when the user opens the chat. Returns how many were found.
    pub(crate) fn phone_read(&mut self, phone: &str, ids: &[String]) -> Result<usize, SimError> {
        let targets: Vec<(String, Jid, Jid)> = self
            .phone(phone)?
            .chat
            .messages
            .iter()
            .filter(|m| m.kind != "undecryptable" && ids.contains(&m.id))
            .map(|m| (m.id.clone(), m.chat.clone(), m.sender.clone()))
            .collect();
        let device = DeviceRef {
            phone: phone.to_owned(),
            device: 0,
        };
        for (id, chat, sender) in &targets {
            let mut receipt = Node::new("receipt")
                .attr("id", id.clone())
                .attr("type", "read")
                .attr("t", crate::state::unix_now().to_string());
            receipt = if chat.is_group() {
                receipt
                    .attr("to", chat.clone())
                    .attr("participant", sender.to_non_ad())
            } else {
                receipt.attr("to", sender.to_non_ad())
            };
            // The answer is the server's ack to the phone, which needs none.
            let _ = self.route_receipt(&device, &receipt);
        }
        Ok(targets.len())
    }
}

fn send_failed(to: &Jid, error: SendError) -> SimError {
    match error {
        SendError::InvalidRecipient(r) => SimError::InvalidRecipient(r),
        SendError::NoSuchUser(_) => SimError::NoSuchUser(to.to_string()),
        other => SimError::SendFailed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_digits_users_or_groups() {
        assert_eq!(
            recipient("15551234567").expect("digits").to_string(),
            "15551234567@s.whatsapp.net"
        );
        assert!(recipient("123@lid").is_ok());
        assert!(recipient("120363000000000001@g.us").is_ok());
        for bad in [
            "",
            "+1555",
            "15551234567:1@s.whatsapp.net",
            "status@broadcast",
            "x y",
        ] {
            assert!(
                matches!(recipient(bad), Err(SimError::InvalidRecipient(_))),
                "{bad}"
            );
        }
    }
}
