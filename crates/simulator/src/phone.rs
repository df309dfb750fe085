//! The simulated phone: the primary device's side of linking, with the real cryptography.
//!
//! - QR: the phone reads the companion's keys and ADV secret from the QR text, signs a device
//!   identity with the account key ([`adv::issue`]) and sends `pair-success` on the socket
//!   showing that QR.
//! - Pairing code: the phone unwraps the companion's ephemeral key with the typed code, sends
//!   `primary_hello`, opens the companion's key bundle from `companion_finish` and derives the
//!   ADV secret; then `pair-success` as for QR.
//!
//! Either way the phone waits for `pair-device-sign`, verifies the companion's device
//! signature ([`adv::verify_device_signature`]), records the device and ends the socket with
//! `<stream:error code=515>` so the companion logs in.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use prost::Message;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use tokio::sync::oneshot;
use tracing::{info, warn};
use wafleet_protocol::adv::{self, DeviceGrant};
use wafleet_protocol::binary::{Content, Node};
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::noise::KeyPair;
use wafleet_protocol::pairing_code::{self, PairingCode};
use wafleet_protocol::proto::{AdvSignedDeviceIdentity, AdvSignedDeviceIdentityHmac};
use wafleet_protocol::qr::PairingQr;

use crate::state::{server_jid, unix_now, Device, Outbound, PendingReply, Shared, SocketId};
use crate::{SimError, Tamper};

/// How long a phone waits for the companion's answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The platform the phone reports in `pair-success`.
pub const PLATFORM: &str = "android";

fn bytes_of(node: Option<&Node>) -> Option<Vec<u8>> {
    match &node?.content {
        Content::Bytes(b) => Some(b.clone()),
        Content::Str(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// The device identity for `pair-success`, tampered if the phone is set to.
pub fn device_identity(
    grant: &DeviceGrant,
    account: &KeyPair,
    adv_secret: &[u8; 32],
    companion_identity: &[u8; 32],
    tamper: Tamper,
) -> Vec<u8> {
    let honest = adv::issue(
        grant,
        &account.private,
        adv_secret,
        companion_identity,
        &mut OsRng,
    );
    match tamper {
        Tamper::None => honest,
        Tamper::Hmac => {
            // The honest identity, with its HMAC keyed by a different secret.
            let mut outer =
                AdvSignedDeviceIdentityHmac::decode(honest.as_slice()).unwrap_or_default();
            let mut wrong = *adv_secret;
            wrong[0] ^= 0x01;
            outer.hmac = Some(hmac_over(
                &wrong,
                outer.details.as_deref().unwrap_or_default(),
            ));
            outer.encode_to_vec()
        }
        Tamper::AccountSignature => {
            // A valid HMAC over an identity whose account signature is broken.
            let outer = AdvSignedDeviceIdentityHmac::decode(honest.as_slice()).unwrap_or_default();
            let mut signed =
                AdvSignedDeviceIdentity::decode(outer.details.as_deref().unwrap_or_default())
                    .unwrap_or_default();
            if let Some(sig) = signed.account_signature.as_mut().and_then(|s| s.get_mut(0)) {
                *sig ^= 0x01;
            }
            let details = signed.encode_to_vec();
            AdvSignedDeviceIdentityHmac {
                hmac: Some(hmac_over(adv_secret, &details)),
                details: Some(details),
                account_type: outer.account_type,
            }
            .encode_to_vec()
        }
    }
}

fn hmac_over(key: &[u8], details: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(details);
    mac.finalize().into_bytes().to_vec()
}

/// `<iq type=set id=… t=…><pair-success>…</pair-success></iq>`.
pub fn pair_success(iq_id: &str, device_identity: Vec<u8>, device: &Jid, lid: &Jid) -> Node {
    Node::new("iq")
        .attr("from", server_jid())
        .attr("type", "set")
        .attr("id", iq_id.to_owned())
        .attr("t", unix_now().to_string())
        .children([Node::new("pair-success").children([
            Node::new("device-identity").bytes(device_identity),
            Node::new("device")
                .attr("jid", device.clone())
                .attr("lid", lid.clone()),
            Node::new("platform").attr("name", PLATFORM),
        ])])
}

/// What the phone needs to finish a link on one registration socket.
struct LinkJob {
    phone: String,
    socket: SocketId,
    adv_secret: [u8; 32],
    companion_identity: [u8; 32],
}

/// Scans a QR text with `phone`'s account: resolves with the new device's JID once its
/// `pair-device-sign` verified.
pub async fn scan_qr(shared: &Shared, phone: &str, qr_text: &str) -> Result<Jid, SimError> {
    let qr = PairingQr::parse(qr_text)?;
    let job = {
        let mut state = shared.lock();
        state.phone(phone)?;
        let socket = state
            .socket_showing(&qr.reference, Instant::now())
            .ok_or(SimError::NoSuchRef)?;
        let reg = state.registration(socket).ok_or(SimError::NoSuchRef)?;
        if reg.noise_public != qr.noise_public || reg.identity_public != qr.identity_public {
            return Err(SimError::QrMismatch);
        }
        LinkJob {
            phone: phone.to_owned(),
            socket,
            adv_secret: qr.adv_secret,
            companion_identity: qr.identity_public,
        }
    };
    info!(phone, socket = job.socket, "QR scanned");
    link(shared, job).await
}

/// Enters a pairing code on `phone`: finds the socket that requested a code for this number,
/// runs the key exchange, then links as for QR.
pub async fn enter_pairing_code(shared: &Shared, phone: &str, code: &str) -> Result<Jid, SimError> {
    let code = PairingCode::parse(code)?;
    let (socket, wrapped, reference, account_key, companion_identity, reply) = {
        let mut state = shared.lock();
        let account_key = state.phone(phone)?.key.clone();
        let socket = state
            .socket_linking(phone)
            .ok_or_else(|| SimError::NoPendingLink(phone.to_owned()))?;
        let reg = state
            .registration(socket)
            .ok_or_else(|| SimError::NoPendingLink(phone.to_owned()))?;
        let Some(link) = reg.link.as_ref() else {
            return Err(SimError::NoPendingLink(phone.to_owned()));
        };
        let wrapped = link.wrapped_companion_ephemeral.clone();
        let reference = link.reference.clone();
        let companion_identity = reg.identity_public;
        let (tx, rx) = oneshot::channel();
        reg.pending.push(PendingReply {
            iq_id: None,
            reply: tx,
        });
        (
            socket,
            wrapped,
            reference,
            account_key,
            companion_identity,
            rx,
        )
    };
    let companion_ephemeral = pairing_code::unwrap_ephemeral(&code, &wrapped)?;
    let ephemeral = KeyPair::generate(&mut OsRng);
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    let mut iv = [0u8; 16];
    OsRng.fill_bytes(&mut iv);
    let wrapped_primary = pairing_code::wrap_ephemeral(&code, &salt, &iv, &ephemeral.public);
    {
        let mut state = shared.lock();
        let id = state.next_iq_id();
        let hello = Node::new("notification")
            .attr("from", server_jid())
            .attr("id", id)
            .attr("type", "link_code_companion_reg")
            .attr("t", unix_now().to_string())
            .children([Node::new("link_code_companion_reg")
                .attr("stage", "primary_hello")
                .children([
                    Node::new("link_code_pairing_ref").bytes(reference.into_bytes()),
                    Node::new("primary_identity_pub").bytes(account_key.public),
                    Node::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                        .bytes(wrapped_primary),
                ])]);
        if !state.send(socket, hello) {
            return Err(SimError::SocketClosed);
        }
    }
    info!(phone, socket, "pairing code entered: primary_hello sent");
    let finish = await_reply(reply).await?;
    let reg = finish
        .child_by_tag("link_code_companion_reg")
        .ok_or(SimError::BadCompanionFinish("link_code_companion_reg"))?;
    let wrapped_bundle = bytes_of(reg.child_by_tag("link_code_pairing_wrapped_key_bundle")).ok_or(
        SimError::BadCompanionFinish("link_code_pairing_wrapped_key_bundle"),
    )?;
    // A wrong code gave a wrong companion key: the shared secret differs and the bundle
    // does not open.
    let ephemeral_shared = ephemeral
        .dh(&companion_ephemeral)
        .map_err(|_| SimError::KeyBundle)?;
    let bundle = pairing_code::unwrap_key_bundle(&ephemeral_shared, &wrapped_bundle)
        .map_err(|_| SimError::KeyBundle)?;
    if bundle.companion_identity != companion_identity
        || bundle.primary_identity != account_key.public
    {
        return Err(SimError::KeyBundle);
    }
    let identity_shared = account_key
        .dh(&bundle.companion_identity)
        .map_err(|_| SimError::KeyBundle)?;
    let adv_secret = pairing_code::adv_secret(&ephemeral_shared, &identity_shared, &bundle.random);
    link(
        shared,
        LinkJob {
            phone: phone.to_owned(),
            socket,
            adv_secret,
            companion_identity,
        },
    )
    .await
}

async fn await_reply(reply: oneshot::Receiver<Node>) -> Result<Node, SimError> {
    match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
        Ok(Ok(node)) => Ok(node),
        Ok(Err(_)) => Err(SimError::SocketClosed),
        Err(_) => Err(SimError::Timeout),
    }
}

/// `pair-success`, the companion's answer, the device-signature check, 515.
async fn link(shared: &Shared, job: LinkJob) -> Result<Jid, SimError> {
    let (iq_id, device_jid, lid, account_public, reply) = {
        let mut state = shared.lock();
        let iq_id = state.next_iq_id();
        let account = state.phone(&job.phone)?;
        let device_id = account.next_device_id;
        account.next_device_id = account.next_device_id.checked_add(1).unwrap_or(1);
        let device_jid = Jid::new(account.phone.clone(), Server::WhatsApp).with_device(device_id);
        let lid = Jid::new(account.lid_user.clone(), Server::Lid).with_device(device_id);
        let grant = DeviceGrant {
            raw_id: account.raw_id,
            timestamp: unix_now(),
            key_index: u32::from(device_id),
            hosted: false,
        };
        let identity = device_identity(
            &grant,
            &account.key,
            &job.adv_secret,
            &job.companion_identity,
            account.tamper,
        );
        let account_public = account.key.public;
        let node = pair_success(&iq_id, identity, &device_jid, &lid);
        let (tx, rx) = oneshot::channel();
        let reg = state
            .registration(job.socket)
            .ok_or(SimError::SocketClosed)?;
        reg.pending.push(PendingReply {
            iq_id: Some(iq_id.clone()),
            reply: tx,
        });
        if !state.send(job.socket, node) {
            return Err(SimError::SocketClosed);
        }
        (iq_id, device_jid, lid, account_public, rx)
    };
    info!(phone = %job.phone, device = %device_jid, iq = %iq_id, "pair-success sent");
    let answer = await_reply(reply).await?;
    let mut state = shared.lock();
    if answer.attr_str("type") == Some("error") {
        state.counters.pair_success_rejected += 1;
        let error = answer.child_by_tag("error");
        let code = error
            .and_then(|e| e.attr_str("code"))
            .unwrap_or("?")
            .to_owned();
        let text = error
            .and_then(|e| e.attr_str("text"))
            .unwrap_or("")
            .to_owned();
        info!(device = %device_jid, code, text, "companion refused pair-success");
        return Err(SimError::CompanionRejected { code, text });
    }
    let signed = answer
        .child_by_tag("pair-device-sign")
        .and_then(|s| s.child_by_tag("device-identity"))
        .and_then(|d| bytes_of(Some(d)));
    let verified = signed
        .ok_or(adv::AdvError::Field("pair-device-sign/device-identity"))
        .and_then(|bytes| {
            adv::verify_device_signature(&bytes, &account_public, &job.companion_identity)
        });
    if let Err(e) = verified {
        state.counters.device_signatures_bad += 1;
        warn!(device = %device_jid, error = %e, "companion device signature refused");
        state.end_socket(
            job.socket,
            Outbound::Close(Some(Node::new("stream:error").attr("code", "401"))),
        );
        return Err(SimError::DeviceSignature(e));
    }
    state.counters.device_signatures_ok += 1;
    state
        .devices
        .insert(device_jid.to_string(), Device::new(lid));
    state.devices_changed(&job.phone);
    state.end_socket(
        job.socket,
        Outbound::Close(Some(Node::new("stream:error").attr("code", "515"))),
    );
    info!(device = %device_jid, "device linked: 515 sent");
    Ok(device_jid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> DeviceGrant {
        DeviceGrant {
            raw_id: 7,
            timestamp: 1_700_000_000,
            key_index: 1,
            hosted: false,
        }
    }

    #[test]
    fn tampered_identities_fail_the_companion_check_the_honest_one_passes() {
        let account = KeyPair::generate(&mut OsRng);
        let companion = KeyPair::generate(&mut OsRng);
        let secret = [5u8; 32];
        let check = |tamper| {
            let bytes = device_identity(&grant(), &account, &secret, &companion.public, tamper);
            adv::countersign(&bytes, &secret, &companion.private, &mut OsRng).map(|_| ())
        };
        assert_eq!(check(Tamper::None), Ok(()));
        assert_eq!(check(Tamper::Hmac), Err(adv::AdvError::HmacMismatch));
        assert_eq!(
            check(Tamper::AccountSignature),
            Err(adv::AdvError::SignatureMismatch)
        );
    }
}
