//! Crash-safe file replacement, shared by head files (`glimpse train`, the store's head
//! versions) and sample exports; and bounded reads of files that come from outside (replayed or
//! classified images), so a huge file costs nothing but a `stat`.

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
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

/// Reads a whole file of at most `max_bytes`, refusing a larger one before allocating for it: the
/// size is checked on the metadata, and the read itself stops one byte past the cap (the file may
/// grow between the two). A refusal is an `InvalidData` error that names the size and the cap.
pub fn read_capped(path: &Path, max_bytes: usize) -> io::Result<Vec<u8>> {
    let too_large = |size: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {size} bytes or more, over the {max_bytes}-byte limit"),
        )
    };
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > max_bytes as u64 {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_bytes as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
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
    fn capped_reads_refuse_a_large_file_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jpg");
        // Sparse: 200 MB on paper, no disk used; a whole read would allocate all of it.
        File::create(&path).unwrap().set_len(200_000_000).unwrap();
        let err = read_capped(&path, 32 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("200000000 bytes") && err.to_string().contains("33554432"),
            "{err}"
        );
        fs::write(&path, b"12345").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), b"12345");
        assert!(read_capped(&path, 4).is_err());
        assert_eq!(
            read_capped(&dir.path().join("missing"), 5)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

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
