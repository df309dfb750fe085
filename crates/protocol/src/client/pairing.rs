//! Pairing-code (phone-number) linking, companion side (protocol-notes §5).

use rand_core::CryptoRngCore;

use super::identity::DeviceIdentity;
use super::payload::ClientProfile;
use crate::binary::{Content, Node};
use crate::jid::{Jid, Server};
use crate::noise::KeyPair;
use crate::pairing_code::{
    adv_secret, unwrap_ephemeral, wrap_ephemeral, wrap_key_bundle, KeyBundle, PairingCode,
    PhoneNumber, WRAPPED_EPHEMERAL_LEN,
};

/// Why a pairing-code request or exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingCodeError {
    /// A code was already requested on this connection (one per QR socket).
    #[error("a pairing code was already requested on this connection")]
    AlreadyRequested,
    /// The session is not linking: wait for the first QR event, and only on an unpaired
    /// identity.
    #[error("not linking: request a pairing code after the first QR, on an unpaired device")]
    NotLinking,
    /// `primary_hello` lacks a field or a field has the wrong size.
    #[error("primary_hello: {0} is missing or malformed")]
    Field(&'static str),
    /// `primary_hello` names a different ref.
    #[error("primary_hello: ref does not match ours")]
    RefMismatch,
    /// A key agreement gave a low-order point.
    #[error("primary_hello: invalid key")]
    BadKey,
}

/// State of one pairing-code attempt.
pub struct LinkCode {
    /// The code shown to the user.
    pub code: PairingCode,
    /// Our ephemeral key for the exchange.
    pub ephemeral: KeyPair,
    /// The phone number's digits.
    pub phone: String,
    /// The server's `link_code_pairing_ref`, once the hello result arrived.
    pub reference: Option<Vec<u8>>,
    /// Whether `companion_finish` was sent.
    pub finished: bool,
}

fn phone_jid(phone: &str) -> Jid {
    Jid::new(phone.to_owned(), Server::WhatsApp)
}

fn bytes_of(node: Option<&Node>) -> Option<Vec<u8>> {
    match &node?.content {
        Content::Bytes(b) => Some(b.clone()),
        Content::Str(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Builds the state and the `companion_hello` iq (without `id`/`to`, which the session adds).
pub fn companion_hello(
    phone: &PhoneNumber,
    identity: &DeviceIdentity,
    profile: &ClientProfile,
    rng: &mut impl CryptoRngCore,
) -> (LinkCode, Node) {
    let code = PairingCode::generate(rng);
    let ephemeral = KeyPair::generate(rng);
    let mut salt = [0u8; 32];
    rng.fill_bytes(&mut salt);
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut iv);
    let wrapped = wrap_ephemeral(&code, &salt, &iv, &ephemeral.public);
    let node = Node::new("iq")
        .attr("type", "set")
        .attr("xmlns", "md")
        .children([Node::new("link_code_companion_reg")
            .attr("jid", phone_jid(phone.digits()))
            .attr("stage", "companion_hello")
            .attr("should_show_push_notification", "true")
            .children([
                Node::new("link_code_pairing_wrapped_companion_ephemeral_pub").bytes(wrapped),
                Node::new("companion_server_auth_key_pub").bytes(identity.noise_key.public),
                Node::new("companion_platform_id").text(profile.platform_id()),
                Node::new("companion_platform_display").text(profile.platform_display()),
                Node::new("link_code_pairing_nonce").text("0"),
            ])]);
    (
        LinkCode {
            code,
            ephemeral,
            phone: phone.digits().to_owned(),
            reference: None,
            finished: false,
        },
        node,
    )
}

/// Handles `<notification type=link_code_companion_reg>`: `Ok(None)` if it is not a
/// `primary_hello`; otherwise the derived ADV secret and the `companion_finish` iq.
pub fn primary_hello(
    link: &LinkCode,
    node: &Node,
    identity: &DeviceIdentity,
    rng: &mut impl CryptoRngCore,
) -> Result<Option<([u8; 32], Node)>, PairingCodeError> {
    let Some(reg) = node.child_by_tag("link_code_companion_reg") else {
        return Ok(None);
    };
    if reg.attr_str("stage") != Some("primary_hello") {
        return Ok(None);
    }
    let reference = bytes_of(reg.child_by_tag("link_code_pairing_ref"))
        .ok_or(PairingCodeError::Field("link_code_pairing_ref"))?;
    if link.reference.as_deref() != Some(reference.as_slice()) {
        return Err(PairingCodeError::RefMismatch);
    }
    let primary_identity: [u8; 32] = bytes_of(reg.child_by_tag("primary_identity_pub"))
        .and_then(|b| b.try_into().ok())
        .ok_or(PairingCodeError::Field("primary_identity_pub"))?;
    let wrapped = bytes_of(reg.child_by_tag("link_code_pairing_wrapped_primary_ephemeral_pub"))
        .filter(|b| b.len() == WRAPPED_EPHEMERAL_LEN)
        .ok_or(PairingCodeError::Field(
            "link_code_pairing_wrapped_primary_ephemeral_pub",
        ))?;
    let primary_ephemeral = unwrap_ephemeral(&link.code, &wrapped)
        .map_err(|_| PairingCodeError::Field("link_code_pairing_wrapped_primary_ephemeral_pub"))?;
    let ephemeral_shared = link
        .ephemeral
        .dh(&primary_ephemeral)
        .map_err(|_| PairingCodeError::BadKey)?;
    let identity_shared = identity
        .identity_key
        .dh(&primary_identity)
        .map_err(|_| PairingCodeError::BadKey)?;
    let mut salt = [0u8; 32];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let mut random = [0u8; 32];
    rng.fill_bytes(&mut random);
    let bundle = wrap_key_bundle(
        &ephemeral_shared,
        &salt,
        &nonce,
        &KeyBundle {
            companion_identity: identity.identity_key.public,
            primary_identity,
            random,
        },
    );
    let secret = adv_secret(&ephemeral_shared, &identity_shared, &random);
    let finish = Node::new("iq")
        .attr("type", "set")
        .attr("xmlns", "md")
        .children([Node::new("link_code_companion_reg")
            .attr("jid", phone_jid(&link.phone))
            .attr("stage", "companion_finish")
            .children([
                Node::new("link_code_pairing_wrapped_key_bundle").bytes(bundle),
                Node::new("companion_identity_public").bytes(identity.identity_key.public),
                Node::new("link_code_pairing_ref").bytes(reference),
            ])]);
    Ok(Some((secret, finish)))
}
