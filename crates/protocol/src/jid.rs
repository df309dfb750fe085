//! WhatsApp addresses (JIDs): parsing, formatting and the Signal address form.
//!
//! The string form follows Baileys: `user[_agent]:device@server`, with interop JIDs written
//! `integrator-user:device@interop`. Parsing then formatting gives back the exact input for
//! every canonical string, including two forms other libraries lose:
//!
//! - an explicit `:0` device (`123:0@s.whatsapp.net`) is kept as `device: Some(0)`, so it is
//!   written as `AD_JID` on the wire like Baileys does, not as a plain `JID_PAIR`;
//! - an empty user (`@s.whatsapp.net`) is valid; on the wire it is `JID_PAIR(LIST_EMPTY, server)`.
//!
//! Unknown servers are kept as [`Server::Other`] rather than rejected: the wire's `JID_PAIR`
//! carries any server string and a gateway must be able to relay what it does not know.
//!
//! Parsing rules, in order: the server is everything after the first `@` (non-empty); the
//! device is the decimal after the first `:` of the part before it (canonical `u16`, no
//! leading zeros). Only JIDs with a device have the two optional user prefixes/suffixes:
//! for `@interop`, a leading canonical decimal followed by `-` is the integrator; for
//! `@s.whatsapp.net`, a trailing `_N` with `N` a canonical decimal `u8` is the agent. In every
//! other case `-` and `_` are plain user characters (so `7-123@interop` has user `7-123` and
//! is written as `JID_PAIR`, as Baileys does, and `a_1@g.us` keeps its user `a_1`).

use std::fmt;
use std::str::FromStr;

/// Domain type of plain WhatsApp (phone-number) users, `s.whatsapp.net`.
pub const DOMAIN_WHATSAPP: u8 = 0;
/// Domain type of LID users, `lid`.
pub const DOMAIN_LID: u8 = 1;
/// Domain type of hosted (Cloud API) phone-number users, `hosted`.
pub const DOMAIN_HOSTED: u8 = 128;
/// Domain type of hosted LID users, `hosted.lid`.
pub const DOMAIN_HOSTED_LID: u8 = 129;

/// Why a string is not a JID (or not a Signal address).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// The string has no `@` separating user and server.
    #[error("JID {0:?} has no '@'")]
    MissingAt(String),
    /// Nothing follows the `@`.
    #[error("JID {0:?} has an empty server")]
    EmptyServer(String),
    /// The device after `:` is not a canonical decimal `u16`.
    #[error("JID {0:?} has an invalid device (want a decimal 0..=65535 without leading zeros)")]
    InvalidDevice(String),
    /// A Signal address is not `user[_domainType].device`.
    #[error("invalid Signal address {0:?} (want user[_domainType].device)")]
    InvalidSignalAddress(String),
}

/// The server part of a JID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Server {
    /// `s.whatsapp.net`: phone-number users (domain type 0).
    WhatsApp,
    /// `lid`: LID users (domain type 1).
    Lid,
    /// `g.us`: groups.
    Group,
    /// `broadcast`: broadcast lists and `status@broadcast`.
    Broadcast,
    /// `newsletter`: channels.
    Newsletter,
    /// `c.us`: the legacy user server.
    LegacyUser,
    /// `hosted`: hosted (Cloud API) phone-number users (domain type 128).
    Hosted,
    /// `hosted.lid`: hosted LID users (domain type 129).
    HostedLid,
    /// `msgr`: Messenger users (`FB_JID` on the wire).
    Messenger,
    /// `interop`: interoperability users (`INTEROP_JID` on the wire).
    Interop,
    /// `bot`: bots.
    Bot,
    /// Any other server, kept verbatim. [`Server::parse`] never puts a known name here.
    Other(String),
}

impl Server {
    /// Maps a server name to a variant; unknown names become [`Server::Other`].
    pub fn parse(name: &str) -> Server {
        match name {
            "s.whatsapp.net" => Server::WhatsApp,
            "lid" => Server::Lid,
            "g.us" => Server::Group,
            "broadcast" => Server::Broadcast,
            "newsletter" => Server::Newsletter,
            "c.us" => Server::LegacyUser,
            "hosted" => Server::Hosted,
            "hosted.lid" => Server::HostedLid,
            "msgr" => Server::Messenger,
            "interop" => Server::Interop,
            "bot" => Server::Bot,
            other => Server::Other(other.to_owned()),
        }
    }

    /// The server name as written after `@` and on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Server::WhatsApp => "s.whatsapp.net",
            Server::Lid => "lid",
            Server::Group => "g.us",
            Server::Broadcast => "broadcast",
            Server::Newsletter => "newsletter",
            Server::LegacyUser => "c.us",
            Server::Hosted => "hosted",
            Server::HostedLid => "hosted.lid",
            Server::Messenger => "msgr",
            Server::Interop => "interop",
            Server::Bot => "bot",
            Server::Other(name) => name,
        }
    }

    /// The `AD_JID` domain type of this server, for the four servers that have one.
    pub fn domain_type(&self) -> Option<u8> {
        match self {
            Server::WhatsApp => Some(DOMAIN_WHATSAPP),
            Server::Lid => Some(DOMAIN_LID),
            Server::Hosted => Some(DOMAIN_HOSTED),
            Server::HostedLid => Some(DOMAIN_HOSTED_LID),
            _ => None,
        }
    }

    /// The server with this domain type (0, 1, 128, 129), or `None` for any other value.
    pub fn from_domain_type(domain_type: u8) -> Option<Server> {
        match domain_type {
            DOMAIN_WHATSAPP => Some(Server::WhatsApp),
            DOMAIN_LID => Some(Server::Lid),
            DOMAIN_HOSTED => Some(Server::Hosted),
            DOMAIN_HOSTED_LID => Some(Server::HostedLid),
            _ => None,
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WhatsApp address.
///
/// Fields are public; the string form round-trips for values whose `user` contains neither
/// `@` nor `:` (nor a trailing `_<u8>` / leading `<u16>-` that the parser would read as agent
/// or integrator), and that set `agent` only on `s.whatsapp.net` and `integrator` only on
/// `interop`, each together with a device. Which wire tag a JID is written with is decided by the encoder
/// ([`crate::binary::encode`]), see its documentation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Jid {
    /// The user part (phone number, LID, group id, `status`, ...). May be empty.
    pub user: String,
    /// The `_agent` suffix of the user of an `s.whatsapp.net` device JID: the `AD_JID` domain
    /// type, when it is not one of the known servers' (Baileys' reading of the agent).
    pub agent: Option<u8>,
    /// The `:device` suffix. `Some(0)` is distinct from `None`.
    pub device: Option<u16>,
    /// The integrator of an interop device JID (`integrator-user:device@interop`).
    pub integrator: Option<u16>,
    /// The server.
    pub server: Server,
}

impl Jid {
    /// A JID without agent, device or integrator, e.g. `Jid::new("123", Server::Group)`.
    pub fn new(user: impl Into<String>, server: Server) -> Jid {
        Jid {
            user: user.into(),
            agent: None,
            device: None,
            integrator: None,
            server,
        }
    }

    /// Parses the string form; same as `s.parse::<Jid>()`.
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        s.parse()
    }

    /// This JID with `device` set.
    pub fn with_device(mut self, device: u16) -> Jid {
        self.device = Some(device);
        self
    }

    /// This JID with `agent` set.
    pub fn with_agent(mut self, agent: u8) -> Jid {
        self.agent = Some(agent);
        self
    }

    /// This JID with `integrator` set.
    pub fn with_integrator(mut self, integrator: u16) -> Jid {
        self.integrator = Some(integrator);
        self
    }

    /// The same user without agent and device (the "non-AD" JID). An interop integrator
    /// becomes part of the user, as in the string form: `7-123:4@interop` → `7-123@interop`.
    pub fn to_non_ad(&self) -> Jid {
        let user = match self.integrator {
            Some(integrator) => format!("{integrator}-{}", self.user),
            None => self.user.clone(),
        };
        Jid::new(user, self.server.clone())
    }

    /// The `AD_JID` domain type: the server's for `lid`, `hosted` and `hosted.lid`; the
    /// agent (default 0) for `s.whatsapp.net`; `None` for other servers.
    pub fn domain_type(&self) -> Option<u8> {
        match self.server {
            Server::WhatsApp => Some(self.agent.unwrap_or(DOMAIN_WHATSAPP)),
            ref server => server.domain_type(),
        }
    }

    /// Whether this is a group (`@g.us`).
    pub fn is_group(&self) -> bool {
        self.server == Server::Group
    }

    /// Whether this is a phone-number or LID user (`@s.whatsapp.net`, `@lid`, `@hosted`,
    /// `@hosted.lid`).
    pub fn is_user(&self) -> bool {
        self.server.domain_type().is_some()
    }

    /// Whether this is the status broadcast, `status@broadcast`.
    pub fn is_status_broadcast(&self) -> bool {
        self.server == Server::Broadcast && self.user == "status"
    }

    /// The Signal protocol address, `user[_domainType].device`: e.g. `123_1.5` for
    /// `123:5@lid`, `15551234567.0` for `15551234567@s.whatsapp.net`. The `_domainType`
    /// suffix is left out for domain type 0 (and for servers without a domain type).
    pub fn signal_address(&self) -> String {
        let domain_type = self.domain_type().unwrap_or(DOMAIN_WHATSAPP);
        let device = self.device.unwrap_or(0);
        if domain_type == DOMAIN_WHATSAPP {
            format!("{}.{}", self.user, device)
        } else {
            format!("{}_{}.{}", self.user, domain_type, device)
        }
    }

    /// Parses a Signal address `user[_domainType].device` back to a JID. Domain types
    /// 0, 1, 128, 129 select the server; any other value is kept as the agent of an
    /// `s.whatsapp.net` JID. Device 0 gives `device: None`, as in Baileys.
    pub fn from_signal_address(address: &str) -> Result<Jid, JidError> {
        let bad = || JidError::InvalidSignalAddress(address.to_owned());
        let (name, device) = address.rsplit_once('.').ok_or_else(bad)?;
        let device = parse_canonical_u16(device).ok_or_else(bad)?;
        let (user, domain_type) = match name.rsplit_once('_') {
            Some((user, domain)) => {
                let domain = parse_canonical_u16(domain)
                    .and_then(|d| u8::try_from(d).ok())
                    .ok_or_else(bad)?;
                (user, domain)
            }
            None => (name, DOMAIN_WHATSAPP),
        };
        if user.is_empty() || user.contains(['@', ':']) {
            return Err(bad());
        }
        let (server, agent) = match Server::from_domain_type(domain_type) {
            Some(server) => (server, None),
            None => (Server::WhatsApp, Some(domain_type)),
        };
        Ok(Jid {
            user: user.to_owned(),
            agent,
            device: (device != 0).then_some(device),
            integrator: None,
            server,
        })
    }
}

/// Parses a decimal without sign or leading zeros ("0" itself is fine).
fn parse_canonical_u16(s: &str) -> Option<u16> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

impl FromStr for Jid {
    type Err = JidError;

    fn from_str(s: &str) -> Result<Jid, JidError> {
        let (user_part, server) = s
            .split_once('@')
            .ok_or_else(|| JidError::MissingAt(s.to_owned()))?;
        if server.is_empty() {
            return Err(JidError::EmptyServer(s.to_owned()));
        }
        let server = Server::parse(server);
        let (user_agent, device) = match user_part.split_once(':') {
            Some((user_agent, device)) => {
                let device = parse_canonical_u16(device)
                    .ok_or_else(|| JidError::InvalidDevice(s.to_owned()))?;
                (user_agent, Some(device))
            }
            None => (user_part, None),
        };
        let mut jid = Jid::new(user_agent, server);
        jid.device = device;
        if device.is_some() {
            match jid.server {
                Server::Interop => {
                    let split = user_agent.split_once('-').and_then(|(integrator, user)| {
                        Some((parse_canonical_u16(integrator)?, user))
                    });
                    if let Some((integrator, user)) = split {
                        jid.integrator = Some(integrator);
                        jid.user = user.to_owned();
                    }
                }
                Server::WhatsApp => {
                    let split = user_agent.rsplit_once('_').and_then(|(user, agent)| {
                        let agent = u8::try_from(parse_canonical_u16(agent)?).ok()?;
                        Some((user, agent))
                    });
                    if let Some((user, agent)) = split {
                        jid.agent = Some(agent);
                        jid.user = user.to_owned();
                    }
                }
                _ => {}
            }
        }
        Ok(jid)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(integrator) = self.integrator {
            write!(f, "{integrator}-")?;
        }
        f.write_str(&self.user)?;
        if let Some(agent) = self.agent {
            write!(f, "_{agent}")?;
        }
        if let Some(device) = self.device {
            write!(f, ":{device}")?;
        }
        write!(f, "@{}", self.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_server() {
        let jid: Jid = "15551234567:3@s.whatsapp.net".parse().unwrap();
        assert_eq!(jid.user, "15551234567");
        assert_eq!(jid.device, Some(3));
        assert_eq!(jid.server, Server::WhatsApp);
        assert_eq!(jid.agent, None);
    }

    #[test]
    fn explicit_zero_device_is_kept() {
        let jid: Jid = "1:0@s.whatsapp.net".parse().unwrap();
        assert_eq!(jid.device, Some(0));
        assert_eq!(jid.to_string(), "1:0@s.whatsapp.net");
    }

    #[test]
    fn non_canonical_device_is_rejected() {
        for bad in ["1:@lid", "1:01@lid", "1:x@lid", "1:65536@lid", "1:+1@lid"] {
            assert!(
                matches!(Jid::parse(bad), Err(JidError::InvalidDevice(_))),
                "{bad}"
            );
        }
    }
}
