//! The linking QR code's text (protocol-notes §4):
//!
//! ```text
//! https://wa.me/settings/linked_devices#<ref>,<b64 noise pub>,<b64 identity pub>,<b64 adv secret>,<client type>
//! ```
//!
//! The companion renders it; the phone (or the simulated phone) parses it to learn the keys
//! it must sign for and the ADV secret that authenticates `pair-success`. The QR carries a
//! secret: never log it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Everything before the `#`.
pub const PREFIX: &str = "https://wa.me/settings/linked_devices#";

/// The companion's client type, the last field of the QR (not `DeviceProps.PlatformType`:
/// the numbers differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    /// `0`
    Unknown,
    /// `1`
    Chrome,
    /// `2`
    Edge,
    /// `3`
    Firefox,
    /// `4`
    Ie,
    /// `5`
    Opera,
    /// `6`
    Safari,
    /// `7`
    Electron,
    /// `8`
    Uwp,
    /// `9`
    OtherWeb,
    /// `c`
    MacOs,
    /// `e`
    Android,
}

impl ClientType {
    /// The single character written in the QR.
    pub fn code(self) -> char {
        match self {
            ClientType::Unknown => '0',
            ClientType::Chrome => '1',
            ClientType::Edge => '2',
            ClientType::Firefox => '3',
            ClientType::Ie => '4',
            ClientType::Opera => '5',
            ClientType::Safari => '6',
            ClientType::Electron => '7',
            ClientType::Uwp => '8',
            ClientType::OtherWeb => '9',
            ClientType::MacOs => 'c',
            ClientType::Android => 'e',
        }
    }

    /// The client type for a QR character.
    pub fn from_code(c: &str) -> Option<ClientType> {
        Some(match c {
            "0" => ClientType::Unknown,
            "1" => ClientType::Chrome,
            "2" => ClientType::Edge,
            "3" => ClientType::Firefox,
            "4" => ClientType::Ie,
            "5" => ClientType::Opera,
            "6" => ClientType::Safari,
            "7" => ClientType::Electron,
            "8" => ClientType::Uwp,
            "9" => ClientType::OtherWeb,
            "c" => ClientType::MacOs,
            "e" => ClientType::Android,
            _ => return None,
        })
    }
}

/// Why a QR text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    /// Not five comma-separated fields after the linked-devices prefix.
    #[error("not a WhatsApp linking QR code (expected {PREFIX}ref,noise,identity,adv,type)")]
    Shape,
    /// A key field is not base64 of 32 bytes.
    #[error("QR field {0} is not base64 of 32 bytes")]
    Key(&'static str),
    /// The client type is not one of the known characters.
    #[error("unknown client type {0:?} in QR code")]
    ClientType(String),
}

/// The content of a linking QR code.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingQr {
    /// The server's ref for this QR (rotates; each lives 60 s, then 20 s).
    pub reference: String,
    /// The companion's Noise static public key.
    pub noise_public: [u8; 32],
    /// The companion's identity public key.
    pub identity_public: [u8; 32],
    /// The ADV secret (shared with the phone through the QR only).
    pub adv_secret: [u8; 32],
    /// The companion's client type.
    pub client_type: ClientType,
}

impl std::fmt::Debug for PairingQr {
    // The ADV secret is key material: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingQr")
            .field("client_type", &self.client_type)
            .finish_non_exhaustive()
    }
}

impl PairingQr {
    /// The QR text.
    pub fn to_text(&self) -> String {
        format!(
            "{PREFIX}{},{},{},{},{}",
            self.reference,
            STANDARD.encode(self.noise_public),
            STANDARD.encode(self.identity_public),
            STANDARD.encode(self.adv_secret),
            self.client_type.code()
        )
    }

    /// Parses a QR text (what a phone does after scanning).
    pub fn parse(text: &str) -> Result<PairingQr, QrError> {
        let body = text.strip_prefix(PREFIX).ok_or(QrError::Shape)?;
        let fields: Vec<&str> = body.split(',').collect();
        let [reference, noise, identity, adv, client] = fields.as_slice() else {
            return Err(QrError::Shape);
        };
        if reference.is_empty() {
            return Err(QrError::Shape);
        }
        let key = |s: &str, name: &'static str| -> Result<[u8; 32], QrError> {
            STANDARD
                .decode(s)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
                .ok_or(QrError::Key(name))
        };
        Ok(PairingQr {
            reference: (*reference).to_owned(),
            noise_public: key(noise, "noise")?,
            identity_public: key(identity, "identity")?,
            adv_secret: key(adv, "adv")?,
            client_type: ClientType::from_code(client)
                .ok_or_else(|| QrError::ClientType((*client).to_owned()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PairingQr {
        PairingQr {
            reference: "2@abc/def+ghi==".to_owned(),
            noise_public: [1; 32],
            identity_public: [2; 32],
            adv_secret: [3; 32],
            client_type: ClientType::Chrome,
        }
    }

    #[test]
    fn text_round_trip_in_baileys_format() {
        let text = sample().to_text();
        // Baileys: prefix + [ref, noiseB64, identityB64, advB64, platformId].join(',')
        assert_eq!(
            text,
            format!(
                "https://wa.me/settings/linked_devices#2@abc/def+ghi==,{},{},{},1",
                "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
                "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
                "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
            )
        );
        assert!(PairingQr::parse(&text).expect("parses") == sample());
        assert_eq!(
            format!("{:?}", sample()),
            "PairingQr { client_type: Chrome, .. }"
        );
    }

    #[test]
    fn malformed_texts_are_typed_errors() {
        let good = sample().to_text();
        assert_eq!(PairingQr::parse("hello"), Err(QrError::Shape));
        assert_eq!(
            PairingQr::parse(&good.replace(",1", "")),
            Err(QrError::Shape)
        );
        assert_eq!(
            PairingQr::parse(&good.replace("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "AQE=")),
            Err(QrError::Key("noise"))
        );
        assert_eq!(
            PairingQr::parse(&good.replace(",1", ",z")),
            Err(QrError::ClientType("z".into()))
        );
        for c in "0123456789ce".chars() {
            let t = ClientType::from_code(&c.to_string()).expect("known");
            assert_eq!(t.code(), c);
        }
    }
}
