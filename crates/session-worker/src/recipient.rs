//! Who a message goes to: the `--to` of `wafleet send` and of [`DriverControl::send_text`]
//! (crate::DriverControl::send_text), parsed into a typed JID before anything is sent.

use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::pairing_code::PhoneNumber;

/// Why a recipient was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid recipient {input:?}: {reason} (want E.164 digits such as 15551234567, a user JID such as 15551234567@s.whatsapp.net, or a group JID such as 1203630000@g.us)")]
pub struct InvalidRecipient {
    /// What was given.
    pub input: String,
    /// Why it is refused.
    pub reason: String,
}

/// A message's recipient: a user (phone-number or LID account, all its devices) or a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A user account, `user@s.whatsapp.net` or `user@lid` (no device).
    User(Jid),
    /// A group, `id@g.us`.
    Group(Jid),
}

impl Recipient {
    /// Parses E.164 digits (a leading `+` and the separators `wafleet link --phone` accepts
    /// are allowed) into `digits@s.whatsapp.net`, or a user or group JID as written.
    /// A device JID (`user:3@…`), another server, or anything else is refused.
    pub fn parse(input: &str) -> Result<Recipient, InvalidRecipient> {
        let refuse = |reason: String| InvalidRecipient {
            input: input.to_owned(),
            reason,
        };
        let trimmed = input.trim();
        if !trimmed.contains('@') {
            let phone = PhoneNumber::parse(trimmed).map_err(|e| refuse(e.to_string()))?;
            return Ok(Recipient::User(Jid::new(phone.digits(), Server::WhatsApp)));
        }
        let jid = Jid::parse(trimmed).map_err(|e| refuse(e.to_string()))?;
        if jid.device.is_some() || jid.agent.is_some() || jid.integrator.is_some() {
            return Err(refuse(
                "a device JID; address the account (without :device)".into(),
            ));
        }
        let user_ok =
            !jid.user.is_empty() && jid.user.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        match jid.server {
            Server::WhatsApp | Server::Lid if user_ok && !jid.user.contains('-') => {
                Ok(Recipient::User(jid))
            }
            Server::Group if user_ok => Ok(Recipient::Group(jid)),
            Server::WhatsApp | Server::Lid | Server::Group => Err(refuse(format!(
                "the user part {:?} is not numeric",
                jid.user
            ))),
            other => Err(refuse(format!(
                "server {other} is not s.whatsapp.net, lid or g.us"
            ))),
        }
    }

    /// The JID.
    pub fn jid(&self) -> &Jid {
        match self {
            Recipient::User(jid) | Recipient::Group(jid) => jid,
        }
    }

    /// The JID, owned.
    pub fn into_jid(self) -> Jid {
        match self {
            Recipient::User(jid) | Recipient::Group(jid) => jid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_become_phone_number_jids() {
        for input in ["15551234567", "+1 555-123-4567", " 4915112345678 "] {
            let r = Recipient::parse(input).unwrap();
            assert!(matches!(r, Recipient::User(_)), "{input}");
            assert_eq!(r.jid().server, Server::WhatsApp);
            assert!(r.jid().device.is_none());
        }
        assert_eq!(
            Recipient::parse("+15551234567").unwrap().jid().to_string(),
            "15551234567@s.whatsapp.net"
        );
    }

    #[test]
    fn user_and_group_jids_are_kept() {
        assert_eq!(
            Recipient::parse("15551234567@s.whatsapp.net").unwrap(),
            Recipient::User(Jid::parse("15551234567@s.whatsapp.net").unwrap())
        );
        assert_eq!(
            Recipient::parse("123456789012345@lid").unwrap(),
            Recipient::User(Jid::parse("123456789012345@lid").unwrap())
        );
        for group in ["120363025246125486@g.us", "15551234567-1600000000@g.us"] {
            assert_eq!(
                Recipient::parse(group).unwrap(),
                Recipient::Group(Jid::parse(group).unwrap()),
                "{group}"
            );
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            "hello",
            "0049151",
            "123",
            "15551234567:3@s.whatsapp.net",
            "status@broadcast",
            "abc@s.whatsapp.net",
            "@s.whatsapp.net",
            "15551234567@",
            "1555@example.com",
            "@g.us",
            "1-2@s.whatsapp.net",
            "12345@newsletter",
        ] {
            let e = Recipient::parse(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("invalid recipient"), "{e}");
        }
    }
}
