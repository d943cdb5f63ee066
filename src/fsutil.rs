//! Crash-safe file replacement, shared by head files (`glimpse train`, the store's head
//! versions) and sample exports.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Which step of an atomic write failed (used to word errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicStep {
    Write,
    Replace,
    SyncDir,
}

impl AtomicStep {
    /// A verb for error messages: "cannot write ...".
    pub fn action(self) -> &'static str {
        match self {
            AtomicStep::Write => "write",
            AtomicStep::Replace => "replace",
            AtomicStep::SyncDir => "sync the directory of",
        }
    }
}

/// The directory a path lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` with `bytes` so that a crash at any moment leaves either the old file or the
/// new one, never half of one: write a temporary file in the same directory, fsync it, rename it
/// over `path`, fsync the directory (which persists the rename itself).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), (AtomicStep, io::Error)> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err((AtomicStep::Write, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err((AtomicStep::Replace, e));
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (AtomicStep::SyncDir, e))
}

/// Bytes available to this (unprivileged) process on the filesystem holding `path`: what
/// `stats` reports for the state directory, so an operator sees a filling eMMC coming.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.bin")]);
    }

    #[test]
    fn a_missing_directory_fails_at_the_write_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("a.bin");
        let (step, _) = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(step, AtomicStep::Write);
        assert!(!path.exists());
    }
}
