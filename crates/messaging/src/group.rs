//! Groups: the `w:g2` metadata query (who is in the group) and the sender-key part of a
//! group send (our sender key, the `skmsg`, the distribution for devices that lack it).

use rand_core::CryptoRngCore;
use wafleet_protocol::binary::Node;
use wafleet_protocol::jid::Jid;
use wafleet_signal::{
    create_sender_key_distribution, group_encrypt, padding, SenderKeyDistributionMessage,
    SenderKeyRecord,
};

use crate::error::SendError;
use crate::stanza::jid_attr;
use crate::state::{address, Keys};

/// `<iq xmlns=w:g2 type=get to=group><query request=interactive/></iq>`.
pub fn metadata_query(id: &str, group: &Jid) -> Node {
    Node::new("iq")
        .attr("id", id.to_owned())
        .attr("to", group.clone())
        .attr("type", "get")
        .attr("xmlns", "w:g2")
        .children([Node::new("query").attr("request", "interactive")])
}

/// The participants (user JIDs) of a metadata result `<group …><participant jid/>…</group>`.
pub fn parse_participants(result: &Node) -> Result<Vec<Jid>, SendError> {
    let group = result
        .child_by_tag("group")
        .ok_or_else(|| SendError::Malformed("group metadata without <group>".into()))?;
    let mut users: Vec<Jid> = group
        .children_by_tag("participant")
        .filter_map(|p| jid_attr(p, "jid").ok().flatten())
        .map(|j| j.to_non_ad())
        .collect();
    users.sort_by_key(|j| j.to_string());
    users.dedup();
    Ok(users)
}

/// Our sender key for `group`, created if we have none. Returns the distribution message
/// to give devices that lack it.
pub(crate) fn our_distribution(
    keys: &mut Keys<'_>,
    group: &Jid,
    own: &Jid,
    rng: &mut impl CryptoRngCore,
) -> SenderKeyDistributionMessage {
    let ours = address(own).to_string();
    let group = group.to_string();
    let current = keys.signal.sender_key_at(&group, &ours);
    let empty = SenderKeyRecord::new();
    let (record, skdm) = create_sender_key_distribution(current.unwrap_or(&empty), rng);
    if current != Some(&record) {
        // A new sender key: nobody has it yet.
        keys.signal.clear_sender_key_sent(&group);
        keys.signal.put_sender_key(group, ours, record);
    }
    skdm
}

/// Drops our sender key for `group` (a member left): the next send creates a new one and
/// distributes it to every remaining device. Returns whether there was one.
pub(crate) fn rotate_sender_key(keys: &mut Keys<'_>, group: &Jid, own: &Jid) -> bool {
    let ours = address(own).to_string();
    let group = group.to_string();
    let had = keys.signal.remove_sender_key(&group, &ours);
    keys.signal.clear_sender_key_sent(&group);
    had
}

/// Encrypts the (unpadded) message with our sender key: the `skmsg` bytes.
pub(crate) fn encrypt(
    keys: &mut Keys<'_>,
    group: &Jid,
    own: &Jid,
    message: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, SendError> {
    let ours = address(own).to_string();
    let group = group.to_string();
    let empty = SenderKeyRecord::new();
    let record = keys.signal.sender_key_at(&group, &ours).unwrap_or(&empty);
    let padded = padding::pad(message, rng);
    let (record, skmsg) =
        group_encrypt(record, &padded, rng).map_err(|e| SendError::Encrypt(e.to_string()))?;
    keys.signal.put_sender_key(group, ours, record);
    Ok(skmsg.serialize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participants_are_users_sorted_and_unique() {
        let result = Node::new("iq").children([Node::new("group").attr("id", "1-2").children([
            Node::new("participant").attr("jid", "3@s.whatsapp.net"),
            Node::new("participant")
                .attr("jid", "2@s.whatsapp.net")
                .attr("type", "admin"),
            Node::new("participant").attr("jid", "3@s.whatsapp.net"),
            Node::new("participant").attr("jid", "garbage"),
        ])]);
        let users = parse_participants(&result).unwrap();
        let users: Vec<String> = users.iter().map(ToString::to_string).collect();
        assert_eq!(users, vec!["2@s.whatsapp.net", "3@s.whatsapp.net"]);
        assert!(parse_participants(&Node::new("iq")).is_err());
    }
}
