//! Where a session's identity, one-time prekeys and Signal state live between connections.
//!
//! [`SessionStore`] is what the driver needs; [`FsSessionStore`] keeps one directory per
//! session name under a data directory, with one JSON file (`session.json`) written
//! atomically: a temporary file in the same directory, fsync, rename, fsync of the
//! directory. Beside it, a journal (`session.journal`, framing in [`crate::journal`])
//! takes what a message changed ([`StateChanges`]) as one appended, synced record; once the
//! journal outgrows the session file (and 1 MiB) the driver writes the whole session
//! again, which starts a new journal. Files are created with mode 0600 and directories
//! with 0700. A file that does not parse is a [`StoreError::Corrupt`] and is left as it is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::warn;
use wafleet_messaging::{SignalState, StateChanges};
use wafleet_protocol::client::{DeviceIdentity, PreKey};

use crate::journal::{self, Replay};

/// The file format version written by this code.
pub const FORMAT_VERSION: u32 = 1;

/// The session file's name inside the session directory.
pub const SESSION_FILE: &str = "session.json";

/// Where a logged-out session's file is moved (kept for inspection, never loaded).
pub const LOGGED_OUT_FILE: &str = "session.logged-out.json";

/// The journal of changes since the session file was written.
pub const JOURNAL_FILE: &str = "session.journal";

/// A journal is not appended to past this size, nor past the session file's size: the
/// next save rewrites the session file instead (so replaying a journal never reads more
/// than about one more session file, and each byte of state changed is written at most
/// about twice).
pub const JOURNAL_MIN_LIMIT: u64 = 1 << 20;

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

    /// Applies changes taken from this session's Signal state (a replayed journal).
    pub fn apply(&mut self, changes: StateChanges) {
        let used = changes.pre_keys_used();
        if !used.is_empty() {
            self.pre_keys.retain(|k| !used.contains(&k.id));
        }
        self.signal.apply(changes);
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
    /// A journal record passed its check but does not parse (written by another build).
    #[error("corrupt session journal {path}: {source} (left untouched)")]
    CorruptJournal {
        /// The journal.
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
    /// Makes `changes` (everything changed since the last `save` or `append`) durable
    /// without rewriting the whole session, if this store keeps a journal and it has room:
    /// `Ok(true)`. `Ok(false)`: nothing was written, the caller saves the whole session
    /// (the default, for stores without a journal). Atomic like `save`.
    fn append(&self, changes: &StateChanges) -> Result<bool, StoreError> {
        let _ = changes;
        Ok(false)
    }
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

/// One session's directory under a data directory: `<data_dir>/<name>/session.json` and
/// its journal. Clones share the journal's state; one process at a time uses a session.
#[derive(Debug, Clone)]
pub struct FsSessionStore {
    dir: PathBuf,
    journal: Arc<Mutex<Journal>>,
}

/// What an [`FsSessionStore`] (and its clones) wrote since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records appended to the journal (each synced).
    pub appends: u64,
    /// Bytes appended to the journal (records and new journal headers).
    pub appended_bytes: u64,
    /// Whole session files written (each atomically).
    pub whole_saves: u64,
    /// Bytes of those files.
    pub whole_bytes: u64,
}

/// Where the journal stands, once this store has read or written the session file.
#[derive(Debug, Default)]
struct Journal {
    stats: StoreStats,
    /// The digest of the session file on disk; `None` before this store read or wrote it
    /// (then nothing is appended: the caller saves the whole session).
    base: Option<[u8; 32]>,
    /// The length of the journal's intact part for `base` (0: no journal for it yet).
    len: u64,
    /// The journal, open for writing at `len`.
    file: Option<File>,
    /// Appends stop at this length.
    limit: u64,
}

impl Journal {
    fn reset(&mut self, base: Option<[u8; 32]>, session_len: usize) {
        *self = Journal {
            stats: self.stats,
            base,
            len: 0,
            file: None,
            limit: JOURNAL_MIN_LIMIT.max(session_len as u64),
        };
    }
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
            journal: Arc::default(),
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

    /// What this store and its clones wrote so far.
    pub fn stats(&self) -> StoreStats {
        self.journal().stats
    }

    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies the journal of the session file `bytes` to `session` and records where it
    /// stands for the next append.
    fn replay(&self, bytes: &[u8], session: &mut StoredSession) -> Result<(), StoreError> {
        let base = journal::digest(bytes);
        let path = self.journal_path();
        let journal = match fs::read(&path) {
            Ok(journal) => journal,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let mut state = self.journal();
        state.reset(Some(base), bytes.len());
        if let Replay::Records {
            payloads,
            len,
            torn,
        } = journal::replay(&journal, &base)
        {
            for payload in payloads {
                let changes: StateChanges = serde_json::from_slice(payload).map_err(|source| {
                    StoreError::CorruptJournal {
                        path: path.clone(),
                        source,
                    }
                })?;
                session.apply(changes);
            }
            if torn > 0 {
                // An append cut short by a crash: it was never reported saved.
                warn!(path = %path.display(), torn, "session journal: an incomplete last record is dropped");
            }
            state.len = len;
        }
        Ok(())
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
        let mut session: StoredSession = serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::Corrupt { path, source })?;
        self.replay(&bytes, &mut session)?;
        Ok(Some(session))
    }

    fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(session).map_err(StoreError::Serialize)?;
        let mut journal = self.journal();
        // Whatever happens below, the journal on disk no longer extends the file.
        journal.reset(None, bytes.len());
        self.write_atomic(SESSION_FILE, &bytes)?;
        journal.reset(Some(journal::digest(&bytes)), bytes.len());
        journal.stats.whole_saves += 1;
        journal.stats.whole_bytes += bytes.len() as u64;
        Ok(())
    }

    fn append(&self, changes: &StateChanges) -> Result<bool, StoreError> {
        let mut journal = self.journal();
        let Some(base) = journal.base else {
            return Ok(false);
        };
        if journal.len >= journal.limit {
            return Ok(false);
        }
        let payload = serde_json::to_vec(changes).map_err(StoreError::Serialize)?;
        let record = journal::record(&payload);
        let path = self.journal_path();
        let written = (|| {
            if journal.len == 0 {
                // No journal for this session file yet: a new one, atomically.
                let header = journal::header(&base);
                self.write_atomic(JOURNAL_FILE, &header)?;
                journal.len = header.len() as u64;
                journal.stats.appended_bytes += journal.len;
                journal.file = None;
            }
            if journal.file.is_none() {
                let mut file = OpenOptions::new()
                    .write(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                // Cut off a torn tail found when it was read.
                file.set_len(journal.len)
                    .and_then(|()| file.seek(io::SeekFrom::Start(journal.len)))
                    .map_err(io_err("truncate", &path))?;
                journal.file = Some(file);
            }
            let file = journal.file.as_mut().ok_or_else(|| StoreError::Io {
                op: "open",
                path: path.clone(),
                source: io::Error::other("journal not open"),
            })?;
            file.write_all(&record)
                .and_then(|()| file.sync_data())
                .map_err(io_err("append to", &path))
        })();
        match written {
            Ok(()) => {
                journal.len += record.len() as u64;
                journal.stats.appends += 1;
                journal.stats.appended_bytes += record.len() as u64;
                Ok(true)
            }
            Err(e) => {
                // What is on disk is unknown now: no more appends until a whole save.
                journal.reset(None, 0);
                Err(e)
            }
        }
    }

    fn mark_logged_out(&self) -> Result<(), StoreError> {
        self.journal().reset(None, 0);
        let from = self.path();
        let to = self.dir.join(LOGGED_OUT_FILE);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("rename", &from)(e)),
        }
        // The journal extended the file moved away: it is never read again.
        let journal = self.journal_path();
        match fs::remove_file(&journal) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &journal)(e)),
        }
        self.sync_dir()
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

    /// Changes as a messenger takes them: a device list cached, a prekey consumed.
    fn changes(user: u32, used: &[u32]) -> StateChanges {
        serde_json::from_value(serde_json::json!({
            "devices": [[format!("{user}@s.whatsapp.net"), {"devices": [0, 1], "fetched_ms": user}]],
            "pre_keys_used": used,
        }))
        .unwrap()
    }

    /// Another store over the same directory, as another process opens it.
    fn reopened(dir: &Path) -> FsSessionStore {
        store(dir)
    }

    fn applied(mut s: StoredSession, all: &[StateChanges]) -> StoredSession {
        for c in all {
            s.apply(c.clone());
        }
        s
    }

    #[test]
    fn appended_changes_are_replayed_onto_the_file_they_extend() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let s = session(4);
        // Nothing read or written yet: the caller must save the whole session.
        assert!(!store.append(&changes(1, &[])).unwrap());
        store.save(&s).unwrap();
        let all = [changes(1, &[1]), changes(2, &[]), changes(3, &[2, 3])];
        for c in &all {
            assert!(store.append(c).unwrap());
        }
        let stats = store.stats();
        assert_eq!((stats.whole_saves, stats.appends), (1, 3));
        assert_eq!(
            stats.whole_bytes + stats.appended_bytes,
            fs::metadata(store.path()).unwrap().len()
                + fs::metadata(store.journal_path()).unwrap().len()
        );
        let expected = applied(s.clone(), &all);
        assert_eq!(expected.pre_keys.len(), 2);
        assert!(expected
            .signal
            .device_list(&"3@s.whatsapp.net".parse().unwrap())
            .is_some());
        // A fresh store (another process) reads file + journal, and appends after them.
        let again = reopened(tmp.path());
        assert_eq!(again.load().unwrap(), Some(expected.clone()));
        assert!(again.append(&changes(4, &[])).unwrap());
        let expected = applied(expected, &[changes(4, &[])]);
        assert_eq!(reopened(tmp.path()).load().unwrap(), Some(expected.clone()));
        let mode = fs::metadata(store.journal_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A whole save starts over: the old journal no longer applies (its base changed),
        // even before the first append replaces it.
        let mut s2 = expected.clone();
        s2.pre_keys.clear();
        again.save(&s2).unwrap();
        assert!(store.journal_path().exists());
        assert_eq!(reopened(tmp.path()).load().unwrap(), Some(s2.clone()));
        assert!(again.append(&changes(5, &[])).unwrap());
        assert_eq!(
            reopened(tmp.path()).load().unwrap(),
            Some(applied(s2, &[changes(5, &[])]))
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_cut_off_before_the_next_append() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let s = session(5);
        store.save(&s).unwrap();
        assert!(store.append(&changes(1, &[])).unwrap());
        let intact = fs::read(store.journal_path()).unwrap();
        assert!(store.append(&changes(2, &[1])).unwrap());
        let whole = fs::read(store.journal_path()).unwrap();
        // A crash in the middle of the second append.
        let cut = intact.len() + (whole.len() - intact.len()) / 2;
        fs::write(store.journal_path(), &whole[..cut]).unwrap();
        let reader = reopened(tmp.path());
        let first = applied(s, &[changes(1, &[])]);
        assert_eq!(reader.load().unwrap(), Some(first.clone()));
        assert!(reader.append(&changes(3, &[2])).unwrap());
        assert_eq!(
            reopened(tmp.path()).load().unwrap(),
            Some(applied(first, &[changes(3, &[2])]))
        );
    }

    #[test]
    fn a_record_that_does_not_parse_is_a_typed_error() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store.save(&session(6)).unwrap();
        assert!(store.append(&changes(1, &[])).unwrap());
        let mut bytes = fs::read(store.journal_path()).unwrap();
        bytes.extend(journal::record(b"{\"devices\": 7}"));
        fs::write(store.journal_path(), &bytes).unwrap();
        match reopened(tmp.path()).load() {
            Err(StoreError::CorruptJournal { path, .. }) => assert_eq!(path, store.journal_path()),
            other => panic!("expected CorruptJournal, got {other:?}"),
        }
        assert_eq!(fs::read(store.journal_path()).unwrap(), bytes);
    }

    #[test]
    fn a_full_journal_asks_for_a_whole_save() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let s = session(7);
        store.save(&s).unwrap();
        let big = changes(1, &(0..20_000).collect::<Vec<u32>>());
        let mut appended = 0;
        while store.append(&big).unwrap() {
            appended += 1;
            assert!(appended < 1000, "the journal never filled");
        }
        let len = fs::metadata(store.journal_path()).unwrap().len();
        assert!(len >= JOURNAL_MIN_LIMIT, "{len}");
        assert!(len < JOURNAL_MIN_LIMIT + 2 * serde_json::to_vec(&big).unwrap().len() as u64);
        // Refused changes are not written; a whole save makes room again.
        assert_eq!(fs::metadata(store.journal_path()).unwrap().len(), len);
        store.save(&s).unwrap();
        assert!(store.append(&big).unwrap());
    }

    #[test]
    fn logging_out_moves_the_file_and_drops_its_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store.save(&session(8)).unwrap();
        assert!(store.append(&changes(1, &[])).unwrap());
        store.mark_logged_out().unwrap();
        assert!(!store.journal_path().exists());
        assert!(store.load().unwrap().is_none());
        assert!(!store.append(&changes(2, &[])).unwrap());
        assert!(!store.journal_path().exists());
    }
}
