//! Master keys, their ids, and the keyring that seals and opens blobs.
//!
//! A master key is 32 random bytes. Its [`KeyId`] is derived from the key itself
//! (HKDF-SHA256, info `wafleet-blob key-id v1`, 8 bytes), so operators never assign ids
//! by hand and two different keys cannot share an id by mistake. The id reveals nothing
//! useful about the key.
//!
//! Configuration (see [`Keyring::from_env`]):
//! - `WAFLEET_MASTER_KEY`: the current key as 64 hex digits or base64 (padded or not), or
//!   the path of a key file. A key file holds either exactly 32 raw bytes, or text with one
//!   key per line (hex or base64; blank lines and `#` comments ignored): the first line is
//!   the current key, the others are retired keys kept for decryption.
//! - `WAFLEET_MASTER_KEYS_RETIRED` (optional): more retired keys, comma-separated.
//!
//! Rotation: put the new key first (current) and keep the old one as retired; blobs
//! sealed under the old key still open, and [`crate::envelope::rekey`] re-seals them
//! under the current key. Drop the retired key once no blob uses it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of a master key and of a derived data key.
pub const KEY_LEN: usize = 32;
/// Length of a [`KeyId`].
pub const KEY_ID_LEN: usize = 8;

/// Environment variable holding the current master key (or a key file path).
pub const MASTER_KEY_ENV: &str = "WAFLEET_MASTER_KEY";
/// Environment variable holding retired master keys, comma-separated.
pub const RETIRED_KEYS_ENV: &str = "WAFLEET_MASTER_KEYS_RETIRED";

const KEY_ID_INFO: &[u8] = b"wafleet-blob key-id v1";
const DATA_KEY_INFO: &[u8] = b"wafleet-blob data-key v1";

/// The id of a master key, written in every envelope so the right key opens it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why master keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `WAFLEET_MASTER_KEY` is not set.
    #[error("{MASTER_KEY_ENV} is not set (a 32-byte key as hex or base64, or a key file path)")]
    Missing,
    /// A key text is neither 64 hex digits nor base64 of 32 bytes. The text is not echoed.
    #[error("{source_name}: not a 32-byte key in hex or base64")]
    Malformed {
        /// Where the text came from (variable name, or file and line).
        source_name: String,
    },
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file holds no key.
    #[error("key file {0} holds no key")]
    EmptyFile(PathBuf),
}

/// A 32-byte master key, zeroized on drop. Its `Debug` shows only its id.
#[derive(Clone)]
pub struct MasterKey {
    id: KeyId,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// Wraps raw key bytes and derives the key id.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let key = Zeroizing::new(bytes);
        bytes.zeroize();
        let mut id = [0u8; KEY_ID_LEN];
        Hkdf::<Sha256>::new(None, key.as_ref())
            .expand(KEY_ID_INFO, &mut id)
            .unwrap_or_else(|_| unreachable!("8 bytes is a valid HKDF-SHA256 output length"));
        Self {
            id: KeyId(id),
            bytes: key,
        }
    }

    /// Parses a key written as 64 hex digits or as base64 (standard alphabet, padded or
    /// not) of 32 bytes. `source_name` names the origin in the error; the text itself is
    /// never put in an error or a log.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let malformed = || KeyError::Malformed {
            source_name: source_name.to_string(),
        };
        let decoded = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| malformed())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .map_err(|_| malformed())?
        };
        let decoded = Zeroizing::new(decoded);
        let bytes: [u8; KEY_LEN] = decoded.as_slice().try_into().map_err(|_| malformed())?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Derives the AES-256-GCM data key of one session: HKDF-SHA256 with this master key
    /// as input key material, no salt, and info `wafleet-blob data-key v1 || 0x00 ||
    /// session id`.
    pub(crate) fn data_key(&self, session_id: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut info = Vec::with_capacity(DATA_KEY_INFO.len() + 1 + session_id.len());
        info.extend_from_slice(DATA_KEY_INFO);
        info.push(0);
        info.extend_from_slice(session_id);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        Hkdf::<Sha256>::new(None, self.bytes.as_ref())
            .expand(&info, key.as_mut())
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
        key
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

/// The master keys a process knows: one current key (seals new blobs) and any number of
/// retired keys (open old blobs only).
#[derive(Clone)]
pub struct Keyring {
    current: KeyId,
    keys: HashMap<KeyId, MasterKey>,
}

impl Keyring {
    /// A keyring with one key, current.
    pub fn new(current: MasterKey) -> Self {
        let id = current.id();
        Self {
            current: id,
            keys: HashMap::from([(id, current)]),
        }
    }

    /// Adds a retired key (decryption only). Adding the current key again changes nothing.
    pub fn with_retired(mut self, key: MasterKey) -> Self {
        self.keys.entry(key.id()).or_insert(key);
        self
    }

    /// Reads the keyring from the process environment (see the module doc).
    pub fn from_env() -> Result<Self, KeyError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the keyring through `lookup` (a stand-in for the environment; see the module
    /// doc for the variables).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, KeyError> {
        let value = Zeroizing::new(lookup(MASTER_KEY_ENV).ok_or(KeyError::Missing)?);
        let mut keyring = match MasterKey::parse(&value, MASTER_KEY_ENV) {
            Ok(key) => Self::new(key),
            Err(parse_error) => {
                let path = Path::new(value.trim());
                if !path.is_file() {
                    return Err(parse_error);
                }
                Self::from_file(path)?
            }
        };
        if let Some(retired) = lookup(RETIRED_KEYS_ENV).map(Zeroizing::new) {
            for text in retired.split(',').filter(|t| !t.trim().is_empty()) {
                keyring = keyring.with_retired(MasterKey::parse(text, RETIRED_KEYS_ENV)?);
            }
        }
        Ok(keyring)
    }

    /// Reads a key file: exactly 32 raw bytes, or one key per line in hex or base64 (first
    /// line current, the rest retired; blank lines and `#` comments ignored).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let contents = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::File {
            path: path.to_path_buf(),
            source,
        })?);
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(contents.as_slice()) {
            return Ok(Self::new(MasterKey::from_bytes(raw)));
        }
        let text = std::str::from_utf8(&contents).map_err(|_| KeyError::Malformed {
            source_name: path.display().to_string(),
        })?;
        let mut keyring: Option<Keyring> = None;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = MasterKey::parse(line, &format!("{} line {}", path.display(), number + 1))?;
            keyring = Some(match keyring {
                None => Self::new(key),
                Some(ring) => ring.with_retired(key),
            });
        }
        keyring.ok_or_else(|| KeyError::EmptyFile(path.to_path_buf()))
    }

    /// The current key (seals new blobs).
    pub fn current(&self) -> &MasterKey {
        self.keys
            .get(&self.current)
            .unwrap_or_else(|| unreachable!("the current key is always in the map"))
    }

    /// The key with this id, current or retired.
    pub fn get(&self, id: KeyId) -> Option<&MasterKey> {
        self.keys.get(&id)
    }

    /// The ids of every key held, current first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        let mut ids: Vec<KeyId> = self.keys.keys().copied().collect();
        ids.sort_by_key(|id| (*id != self.current, id.0));
        ids
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("keys", &self.key_ids())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn bytes() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn hex_and_base64_give_the_same_key() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes());
        let from_hex = MasterKey::parse(HEX, "t").map(|k| k.id());
        let from_b64 = MasterKey::parse(&b64, "t").map(|k| k.id());
        let from_b64_unpadded = MasterKey::parse(b64.trim_end_matches('='), "t").map(|k| k.id());
        let expected = MasterKey::from_bytes(bytes()).id();
        assert_eq!(from_hex.ok(), Some(expected));
        assert_eq!(from_b64.ok(), Some(expected));
        assert_eq!(from_b64_unpadded.ok(), Some(expected));
    }

    #[test]
    fn wrong_lengths_and_text_are_refused_without_echo() {
        for bad in ["", "00", &HEX[2..], "not a key at all!", &"a".repeat(66)] {
            match MasterKey::parse(bad, "WAFLEET_MASTER_KEY") {
                Err(KeyError::Malformed { source_name }) => {
                    assert_eq!(source_name, "WAFLEET_MASTER_KEY")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let message = MasterKey::parse("zz-secret-zz", "X")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn debug_shows_only_the_id() {
        let key = MasterKey::from_bytes(bytes());
        let shown = format!("{key:?} {:?}", Keyring::new(key.clone()));
        assert!(!shown.contains("0102030405"), "{shown}");
        assert!(shown.contains(&key.id().to_string()), "{shown}");
    }

    #[test]
    fn different_keys_have_different_ids_and_data_keys() {
        let a = MasterKey::from_bytes([1; 32]);
        let b = MasterKey::from_bytes([2; 32]);
        assert_ne!(a.id(), b.id());
        assert_ne!(*a.data_key(b"s1"), *b.data_key(b"s1"));
        assert_ne!(*a.data_key(b"s1"), *a.data_key(b"s2"));
    }

    #[test]
    fn env_with_retired_keys() {
        let old = MasterKey::from_bytes([9; 32]);
        let old_hex = hex::encode([9u8; 32]);
        let ring = Keyring::from_lookup(|name| match name {
            MASTER_KEY_ENV => Some(HEX.to_string()),
            RETIRED_KEYS_ENV => Some(format!("{old_hex}, ")),
            _ => None,
        });
        let ring = match ring {
            Ok(ring) => ring,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ring.current().id(), MasterKey::from_bytes(bytes()).id());
        assert!(ring.get(old.id()).is_some());
        assert_eq!(ring.key_ids().len(), 2);
        assert!(matches!(
            Keyring::from_lookup(|_| None),
            Err(KeyError::Missing)
        ));
    }

    #[test]
    fn key_file_text_and_raw() {
        let dir = std::env::temp_dir().join(format!("wafleet-blob-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let text = dir.join("keys.txt");
        let raw = dir.join("key.bin");
        let empty = dir.join("empty.txt");
        let write = |p: &Path, c: &[u8]| std::fs::write(p, c).unwrap_or_else(|e| panic!("{e}"));
        write(
            &text,
            format!("# current\n{HEX}\n\n{}\n", hex::encode([7u8; 32])).as_bytes(),
        );
        write(&raw, &[5u8; 32]);
        write(&empty, b"# nothing\n");

        let path_text = text.display().to_string();
        let ring = Keyring::from_lookup(|n| (n == MASTER_KEY_ENV).then(|| path_text.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ring.current().id(), MasterKey::from_bytes(bytes()).id());
        assert!(ring.get(MasterKey::from_bytes([7; 32]).id()).is_some());

        let ring = Keyring::from_file(&raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ring.current().id(), MasterKey::from_bytes([5; 32]).id());
        assert!(matches!(
            Keyring::from_file(&empty),
            Err(KeyError::EmptyFile(_))
        ));
        assert!(matches!(
            Keyring::from_file(&dir.join("absent")),
            Err(KeyError::File { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
