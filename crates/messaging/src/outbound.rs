//! Sends: the job state machine behind [`Messenger::send`] and retry resends. A job
//! resolves what it needs with server queries (group participants, usync device lists,
//! prekey bundles for devices without a session), then encrypts for every device in one
//! go, reports `StateChanged` and queues the `<message>`; the server's `<ack>` ends it.

use rand_core::CryptoRngCore;
use tracing::{debug, info, warn};
use wafleet_protocol::binary::Node;
use wafleet_protocol::jid::Jid;
use wafleet_protocol::message::message_id;
use wafleet_signal::message::CiphertextMessage;
use wafleet_signal::{encrypt, padding, process_prekey_bundle, SessionRecord, SignalError};

use crate::error::SendError;
use crate::event::{MessengerEvent, Outgoing, SkipReason, SkippedDevice};
use crate::group;
use crate::state::{address, DeviceList, Identities, Keys, RecentOutbound, SendReference};
use crate::usync;
use crate::wire;
use crate::Messenger;

/// What a job is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// A new message to every device of the chat.
    Send,
    /// A message re-encrypted for one device that sent a retry receipt.
    Resend {
        /// The device.
        device: Jid,
        /// The retry count it sent (`<enc count>`).
        count: u32,
        /// Whether to fetch a fresh bundle first (the receipt carried no keys).
        fresh: bool,
    },
}

/// A send or resend in flight.
#[derive(Debug)]
pub(crate) struct Job {
    pub id: String,
    /// The chat: a user (no device) or a group.
    pub chat: Jid,
    /// The unpadded `waE2E.Message`.
    pub message: Vec<u8>,
    pub stanza_type: String,
    pub deadline: u64,
    pub kind: JobKind,
    /// Group members (users), once the metadata query answered.
    pub participants: Option<Vec<Jid>>,
    /// Whether the usync query was made (at most once per job).
    pub devices_fetched: bool,
    /// Whether the bundle query was made (at most once per job).
    pub bundles_fetched: bool,
    /// Whether the `<message>` was queued: waiting for the server ack.
    pub sent: bool,
    /// Addressed devices the message could not be encrypted for (no bundle, a refused
    /// bundle, an encryption error): reported with the ack, never dropped silently.
    pub skipped: Vec<SkippedDevice>,
}

/// An iq the messenger issued.
#[derive(Debug)]
pub(crate) struct PendingIq {
    /// The job key it is for.
    pub job: String,
    pub what: IqWhat,
}

#[derive(Debug)]
pub(crate) enum IqWhat {
    GroupMeta,
    Devices(Vec<Jid>),
    Bundles,
}

fn device_jid(user: &Jid, device: u16) -> Jid {
    let mut jid = user.to_non_ad();
    jid.device = (device != 0).then_some(device);
    jid
}

fn to_node(device: &Jid, enc_type: &str, ciphertext: Vec<u8>) -> Node {
    Node::new("to")
        .attr("jid", device.clone())
        .children([Node::new("enc")
            .attr("v", "2")
            .attr("type", enc_type.to_owned())
            .bytes(ciphertext)])
}

/// Pads and encrypts `plaintext` for `device` with its session, committing the session.
fn encrypt_for(
    keys: &mut Keys<'_>,
    device: &Jid,
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<(&'static str, Vec<u8>), SignalError> {
    let addr = address(device);
    let key = addr.to_string();
    let record = keys.signal.session_at(&key).ok_or(SignalError::NoSession)?;
    let padded = padding::pad(plaintext, rng);
    let identities = Identities::new(keys.identity, keys.signal.identities());
    let (record, ct) = encrypt(record, &addr, &identities, &padded)?;
    keys.signal.put_session(key, record);
    let enc_type = match ct {
        CiphertextMessage::PreKey(_) => "pkmsg",
        CiphertextMessage::Whisper(_) => "msg",
    };
    Ok((enc_type, ct.serialize().to_vec()))
}

impl Messenger {
    pub(crate) fn start_send(
        &mut self,
        to: Jid,
        content: Outgoing,
        reference: Option<SendReference>,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<String, SendError> {
        if !(to.is_user() || to.is_group()) || to.user.is_empty() {
            return Err(SendError::InvalidRecipient(to.to_string()));
        }
        let chat = to.to_non_ad();
        let (message, stanza_type) = content.encode();
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let id = message_id(now_ms / 1000, Some(&self.own.jid), &random);
        keys.signal.remember_outbound(RecentOutbound {
            id: id.clone(),
            chat: chat.to_string(),
            message: message.clone(),
            stanza_type: stanza_type.clone(),
            reference,
        });
        self.start_job(id.clone(), chat, message, stanza_type, keys, now_ms, rng);
        Ok(id)
    }

    /// Sends a recent message again, with its id, to every device of its chat (a repeated
    /// request whose first try may not have reached the server).
    pub(crate) fn start_repeat(
        &mut self,
        recent: RecentOutbound,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<String, SendError> {
        let chat: Jid = recent
            .chat
            .parse()
            .map_err(|_| SendError::InvalidRecipient(recent.chat.clone()))?;
        let id = recent.id.clone();
        let (message, stanza_type) = (recent.message.clone(), recent.stanza_type.clone());
        // Kept as the newest entry again, so it stays answerable to retry receipts.
        keys.signal.remember_outbound(recent);
        self.start_job(id.clone(), chat, message, stanza_type, keys, now_ms, rng);
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_job(
        &mut self,
        id: String,
        chat: Jid,
        message: Vec<u8>,
        stanza_type: String,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let job = Job {
            id: id.clone(),
            chat,
            message,
            stanza_type,
            deadline: now_ms.saturating_add(self.config.send_timeout_ms),
            kind: JobKind::Send,
            participants: None,
            devices_fetched: false,
            bundles_fetched: false,
            sent: false,
            skipped: Vec::new(),
        };
        self.jobs.insert(id.clone(), job);
        self.advance(&id, keys, now_ms, rng);
    }

    /// Starts re-sending a message we sent to one device (a retry receipt).
    pub(crate) fn start_resend(
        &mut self,
        recent: RecentOutbound,
        kind: JobKind,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let Ok(chat) = recent.chat.parse::<Jid>() else {
            warn!(id = %recent.id, "recent message with an unreadable chat");
            return;
        };
        let JobKind::Resend { device, .. } = &kind else {
            return;
        };
        let key = format!("{}>{}", recent.id, device);
        let job = Job {
            id: recent.id,
            chat,
            message: recent.message,
            stanza_type: recent.stanza_type,
            deadline: now_ms.saturating_add(self.config.send_timeout_ms),
            kind,
            participants: None,
            devices_fetched: false,
            bundles_fetched: false,
            sent: false,
            skipped: Vec::new(),
        };
        self.jobs.insert(key.clone(), job);
        self.advance(&key, keys, now_ms, rng);
    }

    /// Runs a job as far as it can go without an answer from the server.
    fn advance(
        &mut self,
        key: &str,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let Some(mut job) = self.jobs.remove(key) else {
            return;
        };
        match self.step(key, &mut job, keys, now_ms, rng) {
            Ok(()) => {
                self.jobs.insert(key.to_owned(), job);
            }
            Err(e) => self.report_failure(&job, e),
        }
    }

    fn report_failure(&mut self, job: &Job, error: SendError) {
        match &job.kind {
            JobKind::Send => {
                warn!(id = %job.id, error = %error, "send failed");
                self.events.push_back(MessengerEvent::SendFailed {
                    id: job.id.clone(),
                    error,
                });
            }
            JobKind::Resend { device, .. } => {
                warn!(id = %job.id, %device, error = %error, "resend failed");
            }
        }
    }

    /// Removes a job (and its pending queries) and reports the failure.
    pub(crate) fn fail_job(&mut self, key: &str, error: SendError) {
        self.iqs.retain(|_, p| p.job != key);
        if let Some(job) = self.jobs.remove(key) {
            self.report_failure(&job, error);
        }
    }

    fn issue(&mut self, key: &str, what: IqWhat, node: impl FnOnce(&str) -> Node) {
        let id = self.next_iq_id();
        self.transmits.push_back(node(&id));
        self.iqs.insert(
            id,
            PendingIq {
                job: key.to_owned(),
                what,
            },
        );
    }

    fn step(
        &mut self,
        key: &str,
        job: &mut Job,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SendError> {
        if job.sent {
            return Ok(());
        }
        let group = job.chat.is_group();
        let targets = match &job.kind {
            JobKind::Resend { device, .. } => vec![device.clone()],
            JobKind::Send => {
                let users = if group {
                    match &job.participants {
                        Some(p) => p.clone(),
                        None => {
                            let chat = job.chat.clone();
                            self.issue(key, IqWhat::GroupMeta, |id| {
                                group::metadata_query(id, &chat)
                            });
                            return Ok(());
                        }
                    }
                } else {
                    let me = self.own.jid.to_non_ad();
                    if self.own.is_own_user(&job.chat) {
                        vec![me]
                    } else {
                        vec![job.chat.clone(), me]
                    }
                };
                let ttl = self.config.device_cache_ttl_ms;
                let stale: Vec<Jid> = users
                    .iter()
                    .filter(|u| {
                        keys.signal
                            .device_list(u)
                            .is_none_or(|l| l.fetched_ms.saturating_add(ttl) < now_ms)
                    })
                    .cloned()
                    .collect();
                if !stale.is_empty() && !job.devices_fetched {
                    job.devices_fetched = true;
                    let q = stale.clone();
                    self.issue(key, IqWhat::Devices(stale), |id| {
                        usync::devices_query(id, &q)
                    });
                    return Ok(());
                }
                if !group && !self.own.is_own_user(&job.chat) {
                    let none = keys
                        .signal
                        .device_list(&job.chat)
                        .is_none_or(|l| l.devices.is_empty());
                    if none {
                        return Err(SendError::NoSuchUser(job.chat.to_string()));
                    }
                }
                let mut targets = Vec::new();
                for user in &users {
                    let devices = keys
                        .signal
                        .device_list(user)
                        .map(|l| l.devices.clone())
                        .unwrap_or_default();
                    for d in devices {
                        let jid = device_jid(user, d);
                        if !self.own.is_this_device(&jid) {
                            targets.push(jid);
                        }
                    }
                }
                targets
            }
        };

        let fresh = matches!(job.kind, JobKind::Resend { fresh: true, .. });
        let sent_set = if group {
            keys.signal
                .sender_key_sent(&job.chat.to_string())
                .cloned()
                .unwrap_or_default()
        } else {
            Default::default()
        };
        let need_session: Vec<Jid> = targets
            .iter()
            .filter(|d| {
                matches!(job.kind, JobKind::Resend { .. })
                    || !group
                    || !sent_set.contains(&d.to_string())
            })
            .cloned()
            .collect();
        let missing: Vec<Jid> = need_session
            .iter()
            .filter(|d| fresh || !keys.signal.has_session(d))
            .cloned()
            .collect();
        if !missing.is_empty() && !job.bundles_fetched {
            job.bundles_fetched = true;
            self.issue(key, IqWhat::Bundles, |id| {
                usync::bundle_query(id, &missing, fresh)
            });
            return Ok(());
        }

        let stanza = match &job.kind {
            JobKind::Resend { device, count, .. } => {
                self.resend_stanza(job, device, *count, keys, rng)?
            }
            JobKind::Send if group => self.group_stanza(job, &targets, keys, rng)?,
            JobKind::Send => self.direct_stanza(job, &targets, keys, rng)?,
        };
        self.events.push_back(MessengerEvent::StateChanged);
        self.transmits.push_back(stanza);
        job.sent = true;
        Ok(())
    }

    fn device_identity(&self, keys: &Keys<'_>, pkmsg: bool, children: &mut Vec<Node>) {
        if pkmsg {
            if let Some(account) = &keys.identity.account {
                children.push(Node::new("device-identity").bytes(account.clone()));
            }
        }
    }

    /// `<message to=user id type><participants><to jid><enc/></to>…</participants>
    /// [<device-identity/>]</message>`.
    fn direct_stanza(
        &mut self,
        job: &mut Job,
        targets: &[Jid],
        keys: &mut Keys<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Node, SendError> {
        let dsm = wire::device_sent(&job.chat, &job.message);
        let mut tos = Vec::new();
        let mut pkmsg = false;
        let mut peer_devices = 0;
        let mut last_error = None;
        for device in targets {
            if !keys.signal.has_session(device) {
                note_skipped(job, device, || SkipReason::NoSession);
                continue;
            }
            let own = self.own.is_own_user(device);
            let plaintext = if own { &dsm } else { &job.message };
            match encrypt_for(keys, device, plaintext, rng) {
                Ok((enc_type, ct)) => {
                    pkmsg |= enc_type == "pkmsg";
                    if !own {
                        peer_devices += 1;
                    }
                    tos.push(to_node(device, enc_type, ct));
                }
                Err(e) => {
                    warn!(id = %job.id, %device, error = %e, "encryption failed: device skipped");
                    last_error = Some(e.to_string());
                    note_skipped(job, device, || SkipReason::Encrypt(e.to_string()));
                }
            }
        }
        if tos.is_empty() || (peer_devices == 0 && !self.own.is_own_user(&job.chat)) {
            return Err(match last_error {
                Some(e) => SendError::Encrypt(e),
                None => SendError::NoDevices,
            });
        }
        info!(id = %job.id, devices = tos.len(), "message encrypted");
        let mut children = vec![Node::new("participants").children(tos)];
        self.device_identity(keys, pkmsg, &mut children);
        Ok(Node::new("message")
            .attr("to", job.chat.clone())
            .attr("id", job.id.clone())
            .attr("type", job.stanza_type.clone())
            .children(children))
    }

    /// `<message to=group id type phash><enc v=2 type=skmsg/>[<participants>…SKDM…
    /// </participants>][<device-identity/>]</message>`. The `phash` covers every member
    /// device the message must reach, without the sending one (as the server computes it;
    /// whatsmeow's device lists leave out the local device too).
    fn group_stanza(
        &mut self,
        job: &mut Job,
        targets: &[Jid],
        keys: &mut Keys<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Node, SendError> {
        let own = self.own.jid.clone();
        let skdm = group::our_distribution(keys, &job.chat, &own, rng);
        // A new sender key clears the set: everyone needs it then.
        let sent_set = keys
            .signal
            .sender_key_sent(&job.chat.to_string())
            .map_or_else(Default::default, |s| s.clone());
        let skmsg = group::encrypt(keys, &job.chat, &own, &job.message, rng)?;
        let skdm_message = wire::sender_key_distribution(&job.chat, skdm.serialize());
        let mut tos = Vec::new();
        let mut pkmsg = false;
        for device in targets
            .iter()
            .filter(|d| !sent_set.contains(&d.to_string()))
        {
            if !keys.signal.has_session(device) {
                note_skipped(job, device, || SkipReason::NoSession);
                continue;
            }
            match encrypt_for(keys, device, &skdm_message, rng) {
                Ok((enc_type, ct)) => {
                    pkmsg |= enc_type == "pkmsg";
                    tos.push(to_node(device, enc_type, ct));
                    keys.signal
                        .mark_sender_key_sent(&job.chat.to_string(), device.to_string());
                }
                Err(e) => {
                    warn!(id = %job.id, %device, error = %e, "sender key not sent to device");
                    note_skipped(job, device, || SkipReason::Encrypt(e.to_string()));
                }
            }
        }
        let mut children = vec![Node::new("enc")
            .attr("v", "2")
            .attr("type", "skmsg")
            .bytes(skmsg)];
        if !tos.is_empty() {
            children.push(Node::new("participants").children(tos));
        }
        self.device_identity(keys, pkmsg, &mut children);
        info!(id = %job.id, devices = targets.len(), "group message encrypted");
        Ok(Node::new("message")
            .attr("to", job.chat.clone())
            .attr("id", job.id.clone())
            .attr("type", job.stanza_type.clone())
            .attr("phash", wire::phash(targets))
            .children(children))
    }

    /// The message again for one device: `<message to=device id type [recipient]>` (1:1)
    /// or `<message to=group participant=device id type>`, one `<enc count>`.
    fn resend_stanza(
        &mut self,
        job: &Job,
        device: &Jid,
        count: u32,
        keys: &mut Keys<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Node, SendError> {
        let group = job.chat.is_group();
        let mut message = job.message.clone();
        if group {
            let own = self.own.jid.clone();
            let skdm = group::our_distribution(keys, &job.chat, &own, rng);
            message = wire::with_sender_key_distribution(&message, &job.chat, skdm.serialize());
        }
        let own_device = self.own.is_own_user(device);
        if own_device {
            message = wire::device_sent(&job.chat, &message);
        }
        let (enc_type, ct) = encrypt_for(keys, device, &message, rng)
            .map_err(|e| SendError::Encrypt(e.to_string()))?;
        if group {
            keys.signal
                .mark_sender_key_sent(&job.chat.to_string(), device.to_string());
        }
        let mut node = Node::new("message");
        if group {
            node = node
                .attr("to", job.chat.clone())
                .attr("participant", device.clone());
        } else {
            node = node.attr("to", device.clone());
            if own_device {
                node = node.attr("recipient", job.chat.clone());
            }
        }
        let mut children = vec![Node::new("enc")
            .attr("v", "2")
            .attr("type", enc_type)
            .attr("count", count.to_string())
            .bytes(ct)];
        self.device_identity(keys, enc_type == "pkmsg", &mut children);
        info!(id = %job.id, %device, count, "message re-sent after a retry receipt");
        Ok(node
            .attr("id", job.id.clone())
            .attr("type", job.stanza_type.clone())
            .children(children))
    }

    /// A `<ack class=message>`: ends the job it is for. Others are handed back.
    pub(crate) fn handle_ack(&mut self, node: Node) -> Option<Node> {
        let id = node.attr_str("id").unwrap_or_default().to_owned();
        let key = if self.jobs.get(&id).is_some_and(|j| j.sent) {
            id.clone()
        } else {
            let prefix = format!("{id}>");
            match self
                .jobs
                .iter()
                .find(|(k, j)| k.starts_with(&prefix) && j.sent)
            {
                Some((k, _)) => k.clone(),
                None => return Some(node),
            }
        };
        let Some(job) = self.jobs.remove(&key) else {
            return Some(node);
        };
        let error = node.attr_str("error").map(str::to_owned);
        match (&job.kind, error) {
            (JobKind::Send, Some(code)) => self.report_failure(
                &job,
                SendError::Server {
                    code,
                    text: node.attr_str("text").map(str::to_owned),
                },
            ),
            (JobKind::Send, None) => {
                info!(id = %job.id, "message acked by the server");
                if !job.skipped.is_empty() {
                    warn!(id = %job.id, skipped = job.skipped.len(), "acked, but some addressed devices were skipped");
                }
                self.events.push_back(MessengerEvent::Sent {
                    id: job.id,
                    server_timestamp: node.attr_str("t").and_then(|t| t.parse().ok()),
                    skipped: job.skipped,
                });
            }
            (JobKind::Resend { device, .. }, error) => {
                debug!(id = %job.id, %device, ?error, "resend acked");
            }
        }
        None
    }

    /// The answer to a query a job issued.
    pub(crate) fn handle_iq_result(
        &mut self,
        node: &Node,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let id = node.attr_str("id").unwrap_or_default();
        let Some(pending) = self.iqs.remove(id) else {
            return;
        };
        let key = pending.job;
        if !self.jobs.contains_key(&key) {
            return;
        }
        if node.attr_str("type") == Some("error") {
            let err = node.child_by_tag("error");
            let error = SendError::Server {
                code: err
                    .and_then(|e| e.attr_str("code"))
                    .unwrap_or("?")
                    .to_owned(),
                text: err.and_then(|e| e.attr_str("text")).map(str::to_owned),
            };
            return self.fail_job(&key, error);
        }
        let result = match pending.what {
            IqWhat::GroupMeta => group::parse_participants(node).and_then(|p| {
                if p.is_empty() {
                    return Err(SendError::NoDevices);
                }
                if let Some(job) = self.jobs.get_mut(&key) {
                    job.participants = Some(p);
                }
                Ok(())
            }),
            IqWhat::Devices(users) => usync::parse_devices(node).map(|lists| {
                let mut missing: Vec<Jid> = users;
                for (user, devices) in lists {
                    missing.retain(|u| u.to_non_ad() != user);
                    keys.signal.put_device_list(
                        user.to_string(),
                        DeviceList {
                            devices,
                            fetched_ms: now_ms,
                        },
                    );
                }
                for user in missing {
                    keys.signal.put_device_list(
                        user.to_non_ad().to_string(),
                        DeviceList {
                            devices: Vec::new(),
                            fetched_ms: now_ms,
                        },
                    );
                }
            }),
            IqWhat::Bundles => usync::parse_bundles(node).map(|bundles| {
                for (device, bundle) in bundles {
                    let refused = match bundle {
                        Ok(bundle) => self.start_session(keys, &device, &bundle, rng).err(),
                        Err(e) => Some(SkipReason::NoBundle(e)),
                    };
                    if let Some(reason) = refused {
                        warn!(%device, %reason, "no session for an addressed device");
                        if let Some(job) = self.jobs.get_mut(&key) {
                            job.skipped.push(SkippedDevice { device, reason });
                        }
                    }
                }
            }),
        };
        match result {
            Ok(()) => self.advance(&key, keys, now_ms, rng),
            Err(e) => self.fail_job(&key, e),
        }
    }

    /// A new session with `device` from its bundle (the current one, if any, is archived);
    /// why not when the bundle is refused (a bad signature, an untrusted identity).
    pub(crate) fn start_session(
        &mut self,
        keys: &mut Keys<'_>,
        device: &Jid,
        bundle: &wafleet_signal::PreKeyBundle,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SkipReason> {
        let addr = address(device);
        let key = addr.to_string();
        let empty = SessionRecord::new();
        let identities = Identities::new(keys.identity, keys.signal.identities());
        let record = keys.signal.session_at(&key).unwrap_or(&empty);
        match process_prekey_bundle(record, &addr, &identities, bundle, rng) {
            Ok(setup) => {
                keys.signal.put_identity(key.clone(), bundle.identity_key);
                keys.signal.put_session(key, setup.record);
                debug!(%device, "session started from prekey bundle");
                Ok(())
            }
            Err(e) => {
                warn!(%device, error = %e, "prekey bundle refused");
                Err(SkipReason::BundleRefused(e.to_string()))
            }
        }
    }
}

/// Records that `device` is left out of `job`'s message (once: a bundle error already
/// recorded is the better reason).
fn note_skipped(job: &mut Job, device: &Jid, reason: impl FnOnce() -> SkipReason) {
    if job.skipped.iter().any(|s| &s.device == device) {
        return;
    }
    let reason = reason();
    warn!(id = %job.id, %device, %reason, "device skipped");
    job.skipped.push(SkippedDevice {
        device: device.clone(),
        reason,
    });
}
