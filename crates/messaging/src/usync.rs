//! Server queries a send needs: usync device lists and prekey bundles (build and read).

use wafleet_protocol::binary::Node;
use wafleet_protocol::client::session::server_jid;
use wafleet_protocol::jid::Jid;
use wafleet_signal::keys::PublicKey;
use wafleet_signal::PreKeyBundle;

use crate::error::SendError;
use crate::stanza::{content_bytes, jid_attr};

/// `<iq xmlns=usync type=get to=s.whatsapp.net><usync context=message mode=query sid
/// last=true index=0><query><devices version=2/></query><list><user jid/>…</list></usync>`.
pub fn devices_query(id: &str, users: &[Jid]) -> Node {
    Node::new("iq")
        .attr("id", id.to_owned())
        .attr("to", server_jid())
        .attr("type", "get")
        .attr("xmlns", "usync")
        .children([Node::new("usync")
            .attr("context", "message")
            .attr("mode", "query")
            .attr("sid", id.to_owned())
            .attr("last", "true")
            .attr("index", "0")
            .children([
                Node::new("query").children([Node::new("devices").attr("version", "2")]),
                Node::new("list").children(
                    users
                        .iter()
                        .map(|u| Node::new("user").attr("jid", u.to_non_ad())),
                ),
            ])])
}

/// The device ids per user of a usync result. As Baileys, a non-zero device counts only
/// with a `key-index`; a user with an `<error>` or no `<devices>` has no device.
pub fn parse_devices(result: &Node) -> Result<Vec<(Jid, Vec<u16>)>, SendError> {
    let list = result
        .child_by_tag("usync")
        .and_then(|u| u.child_by_tag("list"))
        .ok_or_else(|| SendError::Malformed("usync result without <usync><list>".into()))?;
    let mut out = Vec::new();
    for user in list.children_by_tag("user") {
        let Ok(Some(jid)) = jid_attr(user, "jid") else {
            continue;
        };
        let mut devices: Vec<u16> = user
            .child_by_tag("devices")
            .filter(|d| d.child_by_tag("error").is_none())
            .and_then(|d| d.child_by_tag("device-list"))
            .map(|l| {
                l.children_by_tag("device")
                    .filter_map(|d| {
                        let id: u16 = d.attr_str("id")?.parse().ok()?;
                        (id == 0 || d.get_attr("key-index").is_some()).then_some(id)
                    })
                    .collect()
            })
            .unwrap_or_default();
        devices.sort_unstable();
        devices.dedup();
        out.push((jid.to_non_ad(), devices));
    }
    Ok(out)
}

/// `<iq xmlns=encrypt type=get to=s.whatsapp.net><key><user jid/>…</key></iq>`; with
/// `reason=identity` on each user when `force` (a fresh session is wanted).
pub fn bundle_query(id: &str, devices: &[Jid], force: bool) -> Node {
    Node::new("iq")
        .attr("id", id.to_owned())
        .attr("to", server_jid())
        .attr("type", "get")
        .attr("xmlns", "encrypt")
        .children([Node::new("key").children(devices.iter().map(|d| {
            let user = Node::new("user").attr("jid", d.clone());
            if force {
                user.attr("reason", "identity")
            } else {
                user
            }
        }))])
}

fn fixed<const N: usize>(parent: &Node, tag: &str) -> Result<[u8; N], String> {
    let bytes = parent
        .child_by_tag(tag)
        .and_then(content_bytes)
        .ok_or_else(|| format!("missing <{tag}>"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("<{tag}> has {} bytes, want {N}", bytes.len()))
}

fn key_id(parent: &Node) -> Result<u32, String> {
    let [a, b, c] = fixed::<3>(parent, "id")?;
    Ok(u32::from_be_bytes([0, a, b, c]))
}

/// Reads a bundle from a node holding `<registration/>` (or `reg_node`'s), `<identity/>`,
/// `<skey><id/><value/><signature/></skey>` and an optional `<key><id/><value/></key>`:
/// a `<user>` of a bundle fetch, or a retry receipt's `<keys>`.
pub fn parse_bundle(keys: &Node, registration_from: &Node) -> Result<PreKeyBundle, String> {
    if let Some(err) = keys.child_by_tag("error") {
        return Err(format!("error {}", err.attr_str("code").unwrap_or("?")));
    }
    let registration_id = u32::from_be_bytes(fixed::<4>(registration_from, "registration")?);
    let identity = PublicKey(fixed::<32>(keys, "identity")?);
    let skey = keys.child_by_tag("skey").ok_or("missing <skey>")?;
    let signature = skey
        .child_by_tag("signature")
        .and_then(content_bytes)
        .filter(|s| s.len() == 64)
        .ok_or("missing or short <skey><signature>")?;
    let pre_key = match keys.child_by_tag("key") {
        Some(k) => Some((key_id(k)?, PublicKey(fixed::<32>(k, "value")?))),
        None => None,
    };
    Ok(PreKeyBundle {
        registration_id,
        identity_key: identity,
        signed_pre_key_id: key_id(skey)?,
        signed_pre_key: PublicKey(fixed::<32>(skey, "value")?),
        signed_pre_key_signature: signature,
        pre_key,
    })
}

/// A device and its bundle (or why it has none).
pub type DeviceBundle = (Jid, Result<PreKeyBundle, String>);

/// The bundles of a bundle-fetch result, per device `jid`.
pub fn parse_bundles(result: &Node) -> Result<Vec<DeviceBundle>, SendError> {
    let list = result
        .child_by_tag("list")
        .ok_or_else(|| SendError::Malformed("bundle result without <list>".into()))?;
    Ok(list
        .children_by_tag("user")
        .filter_map(|user| {
            let jid = jid_attr(user, "jid").ok().flatten()?;
            Some((jid, parse_bundle(user, user)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_keep_primary_and_indexed_companions() {
        let result = Node::new("iq").children([Node::new("usync").children([Node::new("list")
            .children([
                Node::new("user")
                    .attr("jid", "1@s.whatsapp.net".parse::<Jid>().unwrap())
                    .children([Node::new("devices").children([Node::new("device-list")
                        .children([
                            Node::new("device").attr("id", "0"),
                            Node::new("device").attr("id", "5").attr("key-index", "2"),
                            Node::new("device").attr("id", "7"),
                        ])])]),
                Node::new("user")
                    .attr("jid", "2@s.whatsapp.net")
                    .children([Node::new("devices").children([Node::new("device-list")])]),
            ])])]);
        let parsed = parse_devices(&result).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0.to_string(), "1@s.whatsapp.net");
        assert_eq!(parsed[0].1, vec![0, 5]);
        assert!(parsed[1].1.is_empty());
        assert!(parse_devices(&Node::new("iq")).is_err());
    }

    #[test]
    fn bundle_errors_are_per_device() {
        let result = Node::new("iq").children([Node::new("list").children([
            Node::new("user")
                .attr("jid", "1:2@s.whatsapp.net")
                .children([Node::new("error").attr("code", "404")]),
            Node::new("user")
                .attr("jid", "1:3@s.whatsapp.net")
                .children([
                    Node::new("registration").bytes(vec![0, 0, 0, 9]),
                    Node::new("identity").bytes(vec![1; 31]),
                ]),
        ])]);
        let parsed = parse_bundles(&result).unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(parsed[0].1.as_ref().unwrap_err().contains("404"));
        assert!(parsed[1].1.as_ref().unwrap_err().contains("identity"));
    }
}
