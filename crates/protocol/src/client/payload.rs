//! The `ClientPayload` sent in the Noise client finish (protocol-notes §2.4): the registration
//! payload for an unpaired identity and the login payload for a paired one.

use md5::{Digest, Md5};
use prost::Message;

use super::identity::{DeviceIdentity, KEY_TYPE_DJB};
use crate::proto::client_payload::{
    user_agent, web_info, ConnectReason, ConnectType, DevicePairingRegistrationData, UserAgent,
    WebInfo,
};
use crate::proto::companion_reg::device_props;
use crate::proto::{ClientPayload, DeviceProps};
use crate::qr::ClientType;

/// A WhatsApp Web version `primary.secondary.tertiary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaVersion {
    /// `2`
    pub primary: u32,
    /// `3000`
    pub secondary: u32,
    /// The build.
    pub tertiary: u32,
}

impl WaVersion {
    /// The default: 2.3000.1043857760 (the Baileys release the interop suite pins). WhatsApp
    /// refuses stale builds with `<failure reason=405>`: keep it configurable.
    pub const DEFAULT: WaVersion = WaVersion {
        primary: 2,
        secondary: 3000,
        tertiary: 1043857760,
    };

    /// `md5("2.3000.x")`, the registration payload's `buildHash`.
    pub fn build_hash(&self) -> [u8; 16] {
        Md5::digest(self.to_string().as_bytes()).into()
    }
}

impl Default for WaVersion {
    fn default() -> WaVersion {
        WaVersion::DEFAULT
    }
}

impl std::fmt::Display for WaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.primary, self.secondary, self.tertiary)
    }
}

/// The browser the companion presents as (`DeviceProps.platformType`, and with the OS the QR
/// client type and the pairing-code platform id / display name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Browser {
    /// Chrome.
    Chrome,
    /// Firefox.
    Firefox,
    /// Safari.
    Safari,
    /// Edge.
    Edge,
    /// Opera.
    Opera,
    /// A desktop app.
    Desktop,
}

impl Browser {
    /// The display name, e.g. `Chrome`.
    pub fn name(self) -> &'static str {
        match self {
            Browser::Chrome => "Chrome",
            Browser::Firefox => "Firefox",
            Browser::Safari => "Safari",
            Browser::Edge => "Edge",
            Browser::Opera => "Opera",
            Browser::Desktop => "Desktop",
        }
    }

    /// `DeviceProps.PlatformType`.
    pub fn platform_type(self) -> device_props::PlatformType {
        use device_props::PlatformType as P;
        match self {
            Browser::Chrome => P::Chrome,
            Browser::Firefox => P::Firefox,
            Browser::Safari => P::Safari,
            Browser::Edge => P::Edge,
            Browser::Opera => P::Opera,
            Browser::Desktop => P::Desktop,
        }
    }
}

/// How the companion describes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientProfile {
    /// The WhatsApp Web version.
    pub version: WaVersion,
    /// The browser.
    pub browser: Browser,
    /// The OS name shown on the phone (`DeviceProps.os`), e.g. `Linux`.
    pub os: String,
}

impl Default for ClientProfile {
    fn default() -> ClientProfile {
        ClientProfile {
            version: WaVersion::DEFAULT,
            browser: Browser::Chrome,
            os: "Linux".to_owned(),
        }
    }
}

impl ClientProfile {
    /// `companion_platform_display`: `Browser (OS)`, e.g. `Chrome (Linux)`.
    pub fn platform_display(&self) -> String {
        format!("{} ({})", self.browser.name(), self.os)
    }

    /// The companion web client type: the QR's last field and `companion_platform_id`
    /// (Baileys `getCompanionWebClientType`; not `DeviceProps.PlatformType`, e.g. Edge is 2
    /// here and 6 there). A desktop app is UWP on Windows and Electron elsewhere.
    pub fn client_type(&self) -> ClientType {
        match self.browser {
            Browser::Chrome => ClientType::Chrome,
            Browser::Firefox => ClientType::Firefox,
            Browser::Safari => ClientType::Safari,
            Browser::Edge => ClientType::Edge,
            Browser::Opera => ClientType::Opera,
            Browser::Desktop if self.os == "Windows" => ClientType::Uwp,
            Browser::Desktop => ClientType::Electron,
        }
    }

    /// `companion_platform_id`: the client type's character, e.g. `1` for Chrome.
    pub fn platform_id(&self) -> String {
        self.client_type().code().to_string()
    }

    /// The encoded `DeviceProps`.
    pub fn device_props(&self) -> Vec<u8> {
        DeviceProps {
            os: Some(self.os.clone()),
            version: Some(device_props::AppVersion {
                primary: Some(10),
                secondary: Some(15),
                tertiary: Some(7),
                ..Default::default()
            }),
            platform_type: Some(self.browser.platform_type() as i32),
            require_full_sync: Some(false),
            history_sync_config: Some(device_props::HistorySyncConfig {
                storage_quota_mb: Some(10240),
                inline_initial_payload_in_e2_ee_msg: Some(true),
                support_call_log_history: Some(false),
                support_bot_user_agent_chat_history: Some(true),
                support_cag_reactions_and_polls: Some(true),
                support_biz_hosted_msg: Some(true),
                support_recent_sync_chunk_message_count_tuning: Some(true),
                support_hosted_group_msg: Some(true),
                support_fbid_bot_chat_history: Some(true),
                support_message_association: Some(true),
                ..Default::default()
            }),
        }
        .encode_to_vec()
    }

    fn base(&self) -> ClientPayload {
        ClientPayload {
            user_agent: Some(UserAgent {
                platform: Some(user_agent::Platform::Web as i32),
                app_version: Some(user_agent::AppVersion {
                    primary: Some(self.version.primary),
                    secondary: Some(self.version.secondary),
                    tertiary: Some(self.version.tertiary),
                    ..Default::default()
                }),
                mcc: Some("000".to_owned()),
                mnc: Some("000".to_owned()),
                os_version: Some("0.1".to_owned()),
                device: Some("Desktop".to_owned()),
                os_build_number: Some("0.1".to_owned()),
                release_channel: Some(user_agent::ReleaseChannel::Release as i32),
                locale_language_iso6391: Some("en".to_owned()),
                locale_country_iso31661_alpha2: Some("US".to_owned()),
                ..Default::default()
            }),
            web_info: Some(WebInfo {
                web_sub_platform: Some(web_info::WebSubPlatform::WebBrowser as i32),
                ..Default::default()
            }),
            connect_type: Some(ConnectType::WifiUnknown as i32),
            connect_reason: Some(ConnectReason::UserActivated as i32),
            ..Default::default()
        }
    }

    /// The registration payload (no stored JID): `passive=false, pull=false` and
    /// `devicePairingData`.
    pub fn registration_payload(&self, identity: &DeviceIdentity) -> ClientPayload {
        let spk = &identity.signed_pre_key;
        ClientPayload {
            passive: Some(false),
            pull: Some(false),
            device_pairing_data: Some(DevicePairingRegistrationData {
                e_regid: Some(identity.registration_id.to_be_bytes().to_vec()),
                e_keytype: Some(vec![KEY_TYPE_DJB]),
                e_ident: Some(identity.identity_key.public.to_vec()),
                e_skey_id: Some(spk.id.to_be_bytes()[1..].to_vec()),
                e_skey_val: Some(spk.key_pair.public.to_vec()),
                e_skey_sig: Some(spk.signature.clone()),
                build_hash: Some(self.version.build_hash().to_vec()),
                device_props: Some(self.device_props()),
            }),
            ..self.base()
        }
    }

    /// The login payload for a paired identity: `username` (the phone number), `device`,
    /// `passive=true, pull=true`.
    pub fn login_payload(&self, identity: &DeviceIdentity) -> Result<ClientPayload, PayloadError> {
        let jid = identity.jid().ok_or(PayloadError::NotPaired)?;
        let username = jid
            .user
            .parse::<u64>()
            .map_err(|_| PayloadError::BadJid(jid.to_string()))?;
        Ok(ClientPayload {
            username: Some(username),
            device: Some(u32::from(jid.device.unwrap_or(0))),
            passive: Some(true),
            pull: Some(true),
            lid_db_migrated: Some(false),
            ..self.base()
        })
    }

    /// The payload for this identity: login when paired, registration otherwise.
    pub fn payload(&self, identity: &DeviceIdentity) -> Result<ClientPayload, PayloadError> {
        if identity.is_paired() {
            self.login_payload(identity)
        } else {
            Ok(self.registration_payload(identity))
        }
    }
}

/// Why no login payload could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The identity has no JID: register (link) first.
    #[error("the device is not paired: use the registration payload")]
    NotPaired,
    /// The stored JID's user is not a phone number.
    #[error("stored JID {0:?} does not have a numeric user")]
    BadJid(String),
}
