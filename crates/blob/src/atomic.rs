//! Atomic file replacement, the one way wafleet writes state files.
//!
//! [`write_file`] writes a uniquely named temporary file beside the target (mode 0600),
//! fsyncs it, renames it over the target and fsyncs the directory: a reader (or a crash)
//! sees the old file or the new one, never a mix. A failed write removes its temporary file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A step of [`write_file`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {}: {source}", path.display())]
pub struct AtomicWriteError {
    /// What was being done (`create`, `write`, `fsync`, `rename`, `fsync directory`).
    pub operation: &'static str,
    /// The file or directory it was done to.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

fn failed(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AtomicWriteError {
    let path = path.to_path_buf();
    move |source| AtomicWriteError {
        operation,
        path,
        source,
    }
}

/// Replaces `dir/name` with `bytes` atomically and durably; the file gets mode 0600.
/// `dir` must exist.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    let target = dir.join(name);
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(failed("create", &temp))?;
        file.write_all(bytes).map_err(failed("write", &temp))?;
        file.sync_all().map_err(failed("fsync", &temp))?;
        drop(file);
        std::fs::rename(&temp, &target).map_err(failed("rename", &target))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_with_mode_0600_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_file(dir.path(), "state", b"one").expect("first write");
        write_file(dir.path(), "state", b"two").expect("second write");
        assert_eq!(
            std::fs::read(dir.path().join("state")).expect("read"),
            b"two"
        );
        let mode = std::fs::metadata(dir.path().join("state"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state"]);
    }

    #[test]
    fn a_failed_rename_is_an_error_and_removes_the_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The target is a non-empty directory: the rename fails.
        std::fs::create_dir(dir.path().join("state")).expect("mkdir");
        std::fs::write(dir.path().join("state/x"), b"x").expect("write");
        let error = write_file(dir.path(), "state", b"new").expect_err("rename must fail");
        assert_eq!(error.operation, "rename");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state"]);
    }
}
