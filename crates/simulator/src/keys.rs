//! The simulator as a key server: what a companion uploads in its prekey upload
//! (`<iq xmlns=encrypt type=set>`), the prekey bundles other devices fetch
//! (`<iq xmlns=encrypt type=get><key><user jid/>…</key>`, each one-time prekey handed out
//! once) and usync device lists (`<iq xmlns=usync>…<devices version=2/>`).
//!
//! Node shapes (protocol notes §6–7, Baileys' `parseAndInjectE2ESessions` and
//! `USyncDeviceProtocol`): keys are raw 32 bytes on the wire, key ids 3-byte big endian,
//! the registration id 4-byte big endian; a device without a bundle is answered with
//! `<user jid><error code=404 text=item-not-found/></user>` inside the `<list>`.

use tracing::{debug, info, warn};
use wafleet_protocol::binary::{AttrValue, Content, Node};
use wafleet_protocol::jid::{Jid, Server};

use crate::state::{error_for, result_for, Outbound, SocketId, State};

/// Why an upload or request node was refused (answered with a 400 iq error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// A required child is missing or has no bytes.
    #[error("missing <{0}>")]
    Missing(&'static str),
    /// A child has the wrong number of bytes.
    #[error("<{field}> has {len} bytes, expected {expected}")]
    BadLength {
        field: &'static str,
        len: usize,
        expected: usize,
    },
    /// A `<user>` has no parsable `jid` attribute.
    #[error("<user> without a valid jid")]
    BadJid,
}

/// A device's signed prekey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedPreKey {
    pub id: u32,
    pub public: [u8; 32],
    pub signature: [u8; 64],
}

/// The long-lived part of a device's key bundle (from its last upload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyBundle {
    pub registration_id: u32,
    /// The `<type>` byte (5, the Curve25519 key type).
    pub key_type: u8,
    pub identity: [u8; 32],
    pub signed: SignedPreKey,
}

fn bytes<'a>(parent: &'a Node, tag: &'static str) -> Result<&'a [u8], KeyError> {
    match parent.child_by_tag(tag).map(|n| &n.content) {
        Some(Content::Bytes(b)) => Ok(b),
        Some(Content::Str(s)) => Ok(s.as_bytes()),
        _ => Err(KeyError::Missing(tag)),
    }
}

fn fixed<const N: usize>(parent: &Node, tag: &'static str) -> Result<[u8; N], KeyError> {
    let b = bytes(parent, tag)?;
    <[u8; N]>::try_from(b).map_err(|_| KeyError::BadLength {
        field: tag,
        len: b.len(),
        expected: N,
    })
}

/// A 3-byte big-endian key id.
fn key_id(parent: &Node) -> Result<u32, KeyError> {
    let [a, b, c] = fixed::<3>(parent, "id")?;
    Ok(u32::from_be_bytes([0, a, b, c]))
}

fn id_bytes(id: u32) -> Vec<u8> {
    id.to_be_bytes()[1..].to_vec()
}

/// One `<key><id/><value/></key>`.
pub(crate) fn parse_prekey(key: &Node) -> Result<(u32, [u8; 32]), KeyError> {
    Ok((key_id(key)?, fixed::<32>(key, "value")?))
}

impl KeyBundle {
    /// The bundle of an upload iq, `None` if it carries none of its parts (a keys-only
    /// upload); an error if it carries some but not all, or malformed ones.
    pub fn parse(upload: &Node) -> Result<Option<KeyBundle>, KeyError> {
        let tags = ["registration", "type", "identity", "skey"];
        if tags.iter().all(|t| upload.child_by_tag(t).is_none()) {
            return Ok(None);
        }
        let [key_type] = fixed::<1>(upload, "type")?;
        let skey = upload
            .child_by_tag("skey")
            .ok_or(KeyError::Missing("skey"))?;
        Ok(Some(KeyBundle {
            registration_id: u32::from_be_bytes(fixed::<4>(upload, "registration")?),
            key_type,
            identity: fixed::<32>(upload, "identity")?,
            signed: SignedPreKey {
                id: key_id(skey)?,
                public: fixed::<32>(skey, "value")?,
                signature: fixed::<64>(skey, "signature")?,
            },
        }))
    }

    /// `<registration/><type/><identity/><skey>…</skey>`, as uploaded and as served.
    pub fn nodes(&self) -> Vec<Node> {
        vec![
            Node::new("registration").bytes(self.registration_id.to_be_bytes().to_vec()),
            Node::new("type").bytes(vec![self.key_type]),
            Node::new("identity").bytes(self.identity.to_vec()),
            Node::new("skey").children([
                Node::new("id").bytes(id_bytes(self.signed.id)),
                Node::new("value").bytes(self.signed.public.to_vec()),
                Node::new("signature").bytes(self.signed.signature.to_vec()),
            ]),
        ]
    }
}

/// The `jid` attribute of a `<user>`.
fn user_jid(user: &Node) -> Result<Jid, KeyError> {
    match user.get_attr("jid") {
        Some(AttrValue::Jid(j)) => Ok(j.clone()),
        Some(AttrValue::Str(s)) => s.parse::<Jid>().map_err(|_| KeyError::BadJid),
        None => Err(KeyError::BadJid),
    }
}

/// The `<user>` children of `parent`'s `<wrapper>` child, their jids parsed; an error if
/// the wrapper is missing, empty, or any user has no valid jid.
fn users(parent: &Node, wrapper: &'static str) -> Result<Vec<Jid>, KeyError> {
    let list = parent
        .child_by_tag(wrapper)
        .ok_or(KeyError::Missing(wrapper))?;
    let jids = list
        .children_by_tag("user")
        .map(user_jid)
        .collect::<Result<Vec<_>, _>>()?;
    if jids.is_empty() {
        return Err(KeyError::Missing("user"));
    }
    Ok(jids)
}

fn not_found(jid: Jid) -> Node {
    Node::new("user")
        .attr("jid", jid)
        .children([Node::new("error")
            .attr("code", "404")
            .attr("text", "item-not-found")])
}

impl State {
    /// `<iq xmlns=encrypt type=get><key><user jid/>…</key>`: one `<user>` per request with
    /// the device's bundle and one of its one-time prekeys (taken out of the store: each is
    /// handed out once; no `<key>` once none are left), or a 404 `<error>` for a device
    /// without a bundle.
    pub(crate) fn bundle_fetch(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let jids = match users(node, "key") {
            Ok(jids) => jids,
            Err(e) => {
                warn!(socket = id, error = %e, "bad prekey bundle request: 400");
                return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
            }
        };
        let mut served = Vec::with_capacity(jids.len());
        for jid in jids {
            let key = device_key(&jid);
            let Some(device) = key.as_ref().and_then(|k| self.devices.get_mut(k)) else {
                debug!(socket = id, %jid, "bundle of an unknown device: 404");
                served.push(not_found(jid));
                continue;
            };
            let Some(bundle) = device.bundle.as_ref() else {
                debug!(socket = id, %jid, "device has not uploaded a bundle: 404");
                served.push(not_found(jid));
                continue;
            };
            let mut children = bundle.nodes();
            let prekey = device.prekeys.pop_first();
            if let Some((key_id, public)) = prekey {
                children.push(Node::new("key").children([
                    Node::new("id").bytes(id_bytes(key_id)),
                    Node::new("value").bytes(public.to_vec()),
                ]));
            }
            info!(
                socket = id,
                %jid,
                prekey = ?prekey.map(|(k, _)| k),
                left = device.prekeys.len(),
                "prekey bundle served"
            );
            served.push(Node::new("user").attr("jid", jid).children(children));
        }
        vec![Outbound::Node(
            result_for(node).children([Node::new("list").children(served)]),
        )]
    }

    /// `<iq xmlns=usync type=get><usync …><query><devices version=2/></query><list><user
    /// jid/>…</list></usync>`: each user's device list, the primary (0) and its linked
    /// companions with a `key-index`. Users without an account get an empty list.
    pub(crate) fn usync(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(usync) = node.child_by_tag("usync") else {
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        };
        let wants_devices = usync
            .child_by_tag("query")
            .is_some_and(|q| q.child_by_tag("devices").is_some());
        let jids = match users(usync, "list") {
            Ok(jids) if wants_devices => jids,
            Ok(_) => {
                warn!(socket = id, "usync without a devices query: 400");
                return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
            }
            Err(e) => {
                warn!(socket = id, error = %e, "bad usync request: 400");
                return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
            }
        };
        let users: Vec<Node> = jids
            .into_iter()
            .map(|jid| {
                let user = jid.to_non_ad();
                let devices = self.device_ids(&user);
                debug!(socket = id, %user, ?devices, "usync device list");
                let list = devices.into_iter().map(|d| {
                    let device = Node::new("device").attr("id", d.to_string());
                    if d == 0 {
                        device
                    } else {
                        device.attr("key-index", d.to_string())
                    }
                });
                Node::new("user").attr("jid", user).children([
                    Node::new("devices").children([Node::new("device-list").children(list)])
                ])
            })
            .collect();
        let mut reply = Node::new("usync");
        reply.attrs = usync.attrs.clone();
        let reply = reply.children([Node::new("list").children(users)]);
        vec![Outbound::Node(result_for(node).children([reply]))]
    }

    /// The device ids of `user`'s account: 0 and its companions, sorted; empty when the
    /// user has no account here.
    fn device_ids(&self, user: &Jid) -> Vec<u16> {
        if user.server != Server::WhatsApp || !self.phones.contains_key(&user.user) {
            return Vec::new();
        }
        let mut ids = vec![0];
        ids.extend(
            self.devices_of(&user.user)
                .iter()
                .filter_map(|d| d.parse::<Jid>().ok()?.device),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The key of `jid`'s device in [`State::devices`] (`user:N@s.whatsapp.net`); `None` for
/// the primary (device 0: the simulated phone has no Signal keys yet) and other servers.
fn device_key(jid: &Jid) -> Option<String> {
    let device = jid.device.filter(|d| *d != 0)?;
    (jid.server == Server::WhatsApp).then(|| {
        Jid::new(jid.user.clone(), Server::WhatsApp)
            .with_device(device)
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload() -> Node {
        Node::new("iq").children([
            Node::new("registration").bytes(7u32.to_be_bytes().to_vec()),
            Node::new("type").bytes(vec![5]),
            Node::new("identity").bytes(vec![1; 32]),
            Node::new("skey").children([
                Node::new("id").bytes(vec![0, 0, 1]),
                Node::new("value").bytes(vec![2; 32]),
                Node::new("signature").bytes(vec![3; 64]),
            ]),
        ])
    }

    #[test]
    fn bundle_round_trips_through_its_nodes() {
        let bundle = KeyBundle::parse(&upload()).unwrap().unwrap();
        assert_eq!(bundle.registration_id, 7);
        assert_eq!(bundle.signed.id, 1);
        let again = KeyBundle::parse(&Node::new("iq").children(bundle.nodes()));
        assert_eq!(again, Ok(Some(bundle)));
    }

    #[test]
    fn partial_or_short_bundles_are_refused() {
        let keys_only = Node::new("iq").children([Node::new("list")]);
        assert_eq!(KeyBundle::parse(&keys_only), Ok(None));
        let partial = Node::new("iq").children([Node::new("type").bytes(vec![5])]);
        assert_eq!(KeyBundle::parse(&partial), Err(KeyError::Missing("skey")));
        let mut short = upload();
        if let Content::Nodes(children) = &mut short.content {
            children[2] = Node::new("identity").bytes(vec![1; 31]);
        }
        assert_eq!(
            KeyBundle::parse(&short),
            Err(KeyError::BadLength {
                field: "identity",
                len: 31,
                expected: 32
            })
        );
    }
}
