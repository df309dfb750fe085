//! Where a session's identity, one-time prekeys and Signal state live between connections.
//!
//! [`SessionStore`] is what the driver needs; [`FsSessionStore`] keeps one directory per
//! session name under a data directory, with one JSON file (`session.json`) written
//! atomically: a temporary file in the same directory, fsync, rename, fsync of the
//! directory. Files are created with mode 0600 and directories with 0700. A file that does
//! not parse is a [`StoreError::Corrupt`] and is left as it is.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wafleet_messaging::SignalState;
use wafleet_protocol::client::{DeviceIdentity, PreKey};

/// The file format version written by this code.
pub const FORMAT_VERSION: u32 = 1;

/// The session file's name inside the session directory.
pub const SESSION_FILE: &str = "session.json";

/// Where a logged-out session's file is moved (kept for inspection, never loaded).
pub const LOGGED_OUT_FILE: &str = "session.logged-out.json";

/// Everything stored for one session.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The file format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// The device identity (keys, registration id, account once paired).
    pub identity: DeviceIdentity,
    /// The one-time prekeys generated and not yet known to be consumed.
    pub pre_keys: Vec<PreKey>,
    /// Signal sessions, remote identities, sender keys, device lists and the recent
    /// messages kept for redelivery and retries. Empty in files written before messaging
    /// (they load as they are).
    #[serde(default)]
    pub signal: SignalState,
}

impl std::fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("version", &self.version)
            .field("identity", &self.identity)
            .field("pre_keys", &self.pre_keys.len())
            .field("signal", &self.signal)
            .finish()
    }
}

impl StoredSession {
    /// A session with this identity and no prekeys.
    pub fn new(identity: DeviceIdentity) -> StoredSession {
        StoredSession {
            version: FORMAT_VERSION,
            identity,
            pre_keys: Vec::new(),
            signal: SignalState::default(),
        }
    }
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A session name that cannot be a directory name.
    #[error("invalid session name {0:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ - (not starting with a dot)")]
    InvalidName(String),
    /// Reading or writing failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The stored file does not parse. It is left untouched.
    #[error("corrupt session file {path}: {source} (left untouched; move it away to link again)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The stored file was written by a newer format.
    #[error("session file {path} has format version {found}, this build reads {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// A fleet store refused the write: the lease (or the blob) is not this worker's any
    /// more. Nothing was written.
    #[error("session blob write fenced off: {0}")]
    Fenced(String),
    /// A remote store (the coordinator's commit, S3) failed; nothing was written.
    #[error("session blob store: {0}")]
    Backend(String),
    /// Serializing failed (never expected for these types).
    #[error("cannot serialize the session: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// The storage of one session's state. Implementations must make each `save` atomic: after a
/// crash, `load` returns either the old or the new value, never a mix.
pub trait SessionStore: Send + Sync {
    /// The stored session, or `None` if there is none yet.
    fn load(&self) -> Result<Option<StoredSession>, StoreError>;
    /// Replaces the stored session.
    fn save(&self, session: &StoredSession) -> Result<(), StoreError>;
    /// Marks the stored session as logged out: it is never loaded again.
    fn mark_logged_out(&self) -> Result<(), StoreError>;
}

/// A validated session name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionName(String);

impl SessionName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<SessionName, StoreError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(SessionName(name.to_owned()))
        } else {
            Err(StoreError::InvalidName(name.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One session's directory under a data directory: `<data_dir>/<name>/session.json`.
#[derive(Debug, Clone)]
pub struct FsSessionStore {
    dir: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl FsSessionStore {
    /// The store of session `name` under `data_dir` (nothing is created until a save).
    pub fn new(data_dir: impl Into<PathBuf>, name: &SessionName) -> FsSessionStore {
        FsSessionStore {
            dir: data_dir.into().join(name.as_str()),
        }
    }

    /// The session directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The session file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(SESSION_FILE)
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("create directory", &self.dir))
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", &self.dir))
    }

    /// Writes `bytes` to `name` in the session directory atomically, mode 0600.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.ensure_dir()?;
        wafleet_blob::atomic::write_file(&self.dir, name, bytes).map_err(|e| StoreError::Io {
            op: e.operation,
            path: e.path,
            source: e.source,
        })
    }
}

impl SessionStore for FsSessionStore {
    fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        if version.version != FORMAT_VERSION {
            return Err(StoreError::UnsupportedVersion {
                path,
                found: version.version,
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { path, source })
    }

    fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(session).map_err(StoreError::Serialize)?;
        self.write_atomic(SESSION_FILE, &bytes)
    }

    fn mark_logged_out(&self) -> Result<(), StoreError> {
        let from = self.path();
        let to = self.dir.join(LOGGED_OUT_FILE);
        match fs::rename(&from, &to) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("rename", &from)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::os::unix::fs::PermissionsExt;
    use wafleet_protocol::client::prekeys;

    fn session(seed: u64) -> StoredSession {
        let mut rng = StdRng::seed_from_u64(seed);
        let identity = DeviceIdentity::generate(&mut rng);
        let (pre_keys, next) = prekeys::generate(1, 5, &mut rng);
        let mut s = StoredSession::new(identity);
        s.identity.next_pre_key_id = next;
        s.pre_keys = pre_keys;
        s
    }

    fn store(dir: &Path) -> FsSessionStore {
        FsSessionStore::new(dir, &SessionName::parse("alice").unwrap())
    }

    #[test]
    fn save_then_load_round_trips_with_private_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        assert!(store.load().unwrap().is_none());
        let s = session(1);
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s.clone()));
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // A second save replaces the first, and leaves no temporary file behind.
        let s2 = session(2);
        store.save(&s2).unwrap();
        assert_eq!(store.load().unwrap(), Some(s2));
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [SESSION_FILE]);
    }

    #[test]
    fn a_file_written_before_messaging_loads_with_an_empty_signal_state() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let s = session(3);
        store.save(&s).unwrap();
        // The same file without the `signal` field, as builds before messaging wrote it.
        let mut json: serde_json::Value =
            serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        assert!(json["signal"].is_object(), "{json}");
        json.as_object_mut().unwrap().remove("signal");
        fs::write(store.path(), serde_json::to_vec(&json).unwrap()).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.signal, SignalState::default());
        assert_eq!(loaded, s);
    }

    #[test]
    fn a_corrupt_file_is_a_typed_error_and_stays_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store.save(&session(1)).unwrap();
        let mut bytes = fs::read(store.path()).unwrap();
        bytes.truncate(bytes.len() / 2);
        fs::write(store.path(), &bytes).unwrap();
        for _ in 0..2 {
            match store.load() {
                Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, store.path()),
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(fs::read(store.path()).unwrap(), bytes);
        // Valid JSON of the wrong shape is corrupt too.
        fs::write(store.path(), br#"{"version":1,"identity":{}}"#).unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        fs::write(store.path(), br#"{"version":9}"#).unwrap();
        assert!(matches!(
            store.load(),
            Err(StoreError::UnsupportedVersion { found: 9, .. })
        ));
    }

    #[test]
    fn a_failed_save_is_an_error_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        // The target name is taken by a non-empty directory: the rename fails.
        fs::DirBuilder::new()
            .recursive(true)
            .create(store.path())
            .unwrap();
        fs::write(store.path().join("x"), b"x").unwrap();
        assert!(matches!(
            store.save(&session(2)),
            Err(StoreError::Io { op: "rename", .. })
        ));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [SESSION_FILE]);
    }

    #[test]
    fn logged_out_sessions_are_not_loaded_again() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store.save(&session(1)).unwrap();
        store.mark_logged_out().unwrap();
        assert!(store.load().unwrap().is_none());
        assert!(store.dir().join(LOGGED_OUT_FILE).exists());
        store.mark_logged_out().unwrap();
    }

    #[test]
    fn session_names_are_checked() {
        for good in ["alice", "shop-1", "a.b_c", "X"] {
            assert!(SessionName::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(65);
        for bad in ["", ".hidden", "..", "a/b", "a b", "é", long.as_str()] {
            assert!(
                matches!(SessionName::parse(bad), Err(StoreError::InvalidName(_))),
                "{bad}"
            );
        }
    }
}
