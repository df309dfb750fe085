//! The simulator as a key server: what a companion uploads in its prekey upload
//! (`<iq xmlns=encrypt type=set>`), the prekey bundles other devices fetch
//! (`<iq xmlns=encrypt type=get><key><user jid/>…</key>`, each one-time prekey handed out
//! once) and usync device lists (`<iq xmlns=usync>…<devices version=2/>`).
//!
//! Node shapes (protocol notes §6–7, Baileys' `parseAndInjectE2ESessions` and
//! `USyncDeviceProtocol`): keys are raw 32 bytes on the wire, key ids 3-byte big endian,
//! the registration id 4-byte big endian; a device without a bundle is answered with
//! `<user jid><error code=404 text=item-not-found/></user>` inside the `<list>`.

use rand_core::OsRng;
use tracing::{debug, info, warn};
use wafleet_protocol::binary::{AttrValue, Content, Node};
use wafleet_protocol::client::{
    prekeys, DeviceIdentity, PreKey, SignedPreKey as ClientSignedPreKey,
};
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::noise::KeyPair;

use crate::messages::{DeviceRef, LOW_PREKEYS};
use crate::state::{error_for, result_for, Device, Outbound, SocketId, State};

/// One-time prekeys a phone registers at a time (WhatsApp's first upload, 812).
pub const PHONE_PREKEYS: usize = 812;

/// A phone's Signal keys: its identity (the account key, as on WhatsApp, where the
/// primary's identity key is the ADV account signature key), a signed prekey and
/// [`PHONE_PREKEYS`] one-time prekeys; and its record in the key server.
pub(crate) fn phone_keys(
    phone: &str,
    lid_user: &str,
    account: &KeyPair,
) -> (DeviceIdentity, Vec<PreKey>, Device) {
    let mut identity = DeviceIdentity::generate(&mut OsRng);
    identity.identity_key = account.clone();
    identity.signed_pre_key = ClientSignedPreKey::generate(1, account, &mut OsRng);
    identity.jid = Some(Jid::new(phone, Server::WhatsApp).to_string());
    identity.lid = Some(Jid::new(lid_user, Server::Lid).to_string());
    let (keys, next) = prekeys::generate(1, PHONE_PREKEYS, &mut OsRng);
    identity.next_pre_key_id = next;
    identity.pre_keys_uploaded = true;
    let mut record = Device::new(Jid::new(lid_user, Server::Lid));
    record.prekeys = keys.iter().map(|k| (k.id, k.key_pair.public)).collect();
    record.bundle = Some(KeyBundle::of_identity(&identity));
    (identity, keys, record)
}

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
    /// The bundle of a device identity (what its upload carries).
    pub fn of_identity(identity: &DeviceIdentity) -> KeyBundle {
        let spk = &identity.signed_pre_key;
        let mut signature = [0u8; 64];
        if spk.signature.len() == 64 {
            signature.copy_from_slice(&spk.signature);
        }
        KeyBundle {
            registration_id: identity.registration_id,
            key_type: 5,
            identity: identity.identity_key.public,
            signed: SignedPreKey {
                id: spk.id,
                public: spk.key_pair.public,
                signature,
            },
        }
    }

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
        let mut low = Vec::new();
        for jid in jids {
            let Some(target) = self.resolve_device(&jid) else {
                debug!(socket = id, %jid, "bundle of an unknown device: 404");
                served.push(not_found(jid));
                continue;
            };
            let Some(device) = self.key_record(&target) else {
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
            let left = device.prekeys.len();
            if left < LOW_PREKEYS && !device.low_prekeys_notified {
                device.low_prekeys_notified = true;
                low.push((target, left));
            }
            info!(
                socket = id,
                %jid,
                prekey = ?prekey.map(|(k, _)| k),
                left,
                "prekey bundle served"
            );
            served.push(Node::new("user").attr("jid", jid).children(children));
        }
        for (target, left) in low {
            if target.device == 0 {
                self.phone_refill_prekeys(&target.phone);
            } else {
                self.prekeys_low(&target, left);
            }
        }
        vec![Outbound::Node(
            result_for(node).children([Node::new("list").children(served)]),
        )]
    }

    /// `<iq xmlns=usync type=get><usync …><query>…</query><list><user jid/>…</list></usync>`:
    /// per user, what the query asks for (Baileys' `USyncQuery` protocols):
    /// - `<devices version=2/>`: `<devices><device-list><device id [key-index]/>…` (the
    ///   phone 0 and the companions, each with a `key-index`);
    /// - `<lid/>`: `<lid val=<lid>@lid/>` for a phone-number user;
    /// - `<contact/>`: `<contact type=in|out/>` (a user given as `<contact>+digits</contact>`
    ///   is answered with its `@s.whatsapp.net` JID).
    ///
    /// Users without an account get an empty device list, no `lid` and `type=out`.
    pub(crate) fn usync(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(usync) = node.child_by_tag("usync") else {
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        };
        let asked = |tag: &str| {
            usync
                .child_by_tag("query")
                .is_some_and(|q| q.child_by_tag(tag).is_some())
        };
        let (devices, lid, contact) = (asked("devices"), asked("lid"), asked("contact"));
        if !(devices || lid || contact) {
            warn!(
                socket = id,
                "usync without a devices, lid or contact query: 400"
            );
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        }
        let jids = match usync_users(usync) {
            Ok(jids) => jids,
            Err(e) => {
                warn!(socket = id, error = %e, "bad usync request: 400");
                return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
            }
        };
        let users: Vec<Node> = jids
            .into_iter()
            .map(|jid| {
                let user = jid.to_non_ad();
                let account = self.account_of(&user);
                let mut children = Vec::new();
                if devices {
                    let listed = self.account_devices(&user);
                    debug!(socket = id, %user, devices = listed.len(), "usync device list");
                    let list = listed.into_iter().map(|d| {
                        let n = d.device.unwrap_or(0);
                        let device = Node::new("device").attr("id", n.to_string());
                        if n == 0 {
                            device
                        } else {
                            device.attr("key-index", n.to_string())
                        }
                    });
                    children.push(
                        Node::new("devices").children([Node::new("device-list").children(list)]),
                    );
                }
                if lid && user.server == Server::WhatsApp {
                    if let Some(account) = account.as_ref().and_then(|p| self.phones.get(p)) {
                        children.push(
                            Node::new("lid")
                                .attr("val", Jid::new(account.lid_user.clone(), Server::Lid)),
                        );
                    }
                }
                if contact {
                    let kind = if account.is_some() { "in" } else { "out" };
                    children.push(Node::new("contact").attr("type", kind));
                }
                Node::new("user").attr("jid", user).children(children)
            })
            .collect();
        let mut reply = Node::new("usync");
        reply.attrs = usync.attrs.clone();
        let reply = reply.children([Node::new("list").children(users)]);
        vec![Outbound::Node(result_for(node).children([reply]))]
    }

    /// The key-server record of a device: a companion's upload or the phone's own keys.
    pub(crate) fn key_record(&mut self, device: &DeviceRef) -> Option<&mut Device> {
        if device.device == 0 {
            self.phones.get_mut(&device.phone).map(|a| &mut a.primary)
        } else {
            self.devices.get_mut(&device.key())
        }
    }

    /// A phone whose one-time prekeys run low registers [`PHONE_PREKEYS`] more (it is
    /// always online, so it does what a companion does on the low-prekey notification).
    fn phone_refill_prekeys(&mut self, phone: &str) {
        let Some(account) = self.phones.get_mut(phone) else {
            return;
        };
        let (keys, next) =
            prekeys::generate(account.signal.next_pre_key_id, PHONE_PREKEYS, &mut OsRng);
        account.signal.next_pre_key_id = next;
        account
            .primary
            .prekeys
            .extend(keys.iter().map(|k| (k.id, k.key_pair.public)));
        account.primary.low_prekeys_notified = false;
        account.pre_keys.extend(keys);
        info!(
            phone,
            stored = account.primary.prekeys.len(),
            "phone registered more prekeys"
        );
    }
}

/// The users of a usync `<list>`: each `<user jid>`, or a `<user><contact>+digits</contact>`
/// as `<digits>@s.whatsapp.net`.
fn usync_users(usync: &Node) -> Result<Vec<Jid>, KeyError> {
    let list = usync
        .child_by_tag("list")
        .ok_or(KeyError::Missing("list"))?;
    let mut jids = Vec::new();
    for user in list.children_by_tag("user") {
        if user.get_attr("jid").is_some() {
            jids.push(user_jid(user)?);
            continue;
        }
        let phone = user
            .child_by_tag("contact")
            .and_then(|c| match &c.content {
                Content::Bytes(b) => String::from_utf8(b.clone()).ok(),
                Content::Str(s) => Some(s.to_string()),
                _ => None,
            })
            .map(|p| p.trim_start_matches('+').to_owned())
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(KeyError::BadJid)?;
        jids.push(Jid::new(phone, Server::WhatsApp));
    }
    if jids.is_empty() {
        return Err(KeyError::Missing("user"));
    }
    Ok(jids)
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
