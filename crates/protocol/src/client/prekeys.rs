//! One-time prekey generation and the upload node (protocol-notes §6).

use rand_core::CryptoRngCore;

use super::identity::{DeviceIdentity, PreKey, KEY_TYPE_DJB};
use crate::binary::Node;
use crate::noise::KeyPair;

/// Keys uploaded the first time.
pub const FIRST_UPLOAD_COUNT: usize = 812;
/// Keys uploaded later.
pub const LATER_UPLOAD_COUNT: usize = 50;
/// Upload when the server holds fewer than this many keys (whatsmeow's threshold).
pub const MIN_SERVER_COUNT: u32 = 5;
/// Largest prekey id (ids are 24-bit on the wire); after it, ids wrap to 1.
pub const MAX_PRE_KEY_ID: u32 = 0x00FF_FFFF;

/// A 24-bit big-endian id.
pub fn id_bytes(id: u32) -> [u8; 3] {
    let b = id.to_be_bytes();
    [b[1], b[2], b[3]]
}

/// `count` fresh prekeys with ids from `first_id` (wrapping from [`MAX_PRE_KEY_ID`] to 1).
/// Returns the keys and the next id.
pub fn generate(first_id: u32, count: usize, rng: &mut impl CryptoRngCore) -> (Vec<PreKey>, u32) {
    let mut id = first_id.clamp(1, MAX_PRE_KEY_ID);
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(PreKey {
            id,
            key_pair: KeyPair::generate(rng),
        });
        id = if id >= MAX_PRE_KEY_ID { 1 } else { id + 1 };
    }
    (keys, id)
}

/// `<iq xmlns=encrypt type=set to=@s.whatsapp.net id=…><registration/><type/><identity/>
/// <list><key><id/><value/></key>…</list><skey><id/><value/><signature/></skey></iq>`.
pub fn upload_node(id: String, identity: &DeviceIdentity, keys: &[PreKey]) -> Node {
    let spk = &identity.signed_pre_key;
    let list = keys.iter().map(|k| {
        Node::new("key").children([
            Node::new("id").bytes(id_bytes(k.id)),
            Node::new("value").bytes(k.key_pair.public),
        ])
    });
    Node::new("iq")
        .attr("id", id)
        .attr("xmlns", "encrypt")
        .attr("type", "set")
        .attr("to", super::session::server_jid())
        .children([
            Node::new("registration").bytes(identity.registration_id.to_be_bytes()),
            Node::new("type").bytes([KEY_TYPE_DJB]),
            Node::new("identity").bytes(identity.identity_key.public),
            Node::new("list").children(list),
            Node::new("skey").children([
                Node::new("id").bytes(id_bytes(spk.id)),
                Node::new("value").bytes(spk.key_pair.public),
                Node::new("signature").bytes(spk.signature.clone()),
            ]),
        ])
}
