//! The samples archive on the device: every sample's thumbnail and label in
//! `<state_dir>/exports/samples-<ms>.tar`. One archive at a time: writing a new one removes the
//! previous ones first, a failed write removes its temp file, and the daemon deletes the archive
//! once it is published, so exports never fill the disk.
//!
//! Directory names come from [`Label::dir_name`] (portable, at most 200 bytes: a 64-emoji label
//! is 256 bytes, over the 255 most file systems allow). `index.tsv` holds the exact label and id
//! with backslash, tab, newline, carriage return and other ASCII control characters escaped as
//! `\\`, `\t`, `\n`, `\r` and `\xHH`, so no field can forge a row, even one stored before
//! the id rule (src/learn/identity.rs) existed.

use std::path::{Path, PathBuf};

use crate::learn::identity::{portable_dir_name, Label};
use crate::mqtt::messages::now_unix_ms;

/// The folder under the state directory.
pub const EXPORTS_DIR: &str = "exports";
const TMP: &str = ".export.tmp";

/// Appends one `(id, label, thumbnail)` row to the archive being written.
pub type RowSink<'a> = dyn FnMut(&str, &str, &[u8]) -> std::io::Result<()> + 'a;

/// Writes the rows `rows` feeds (it calls the sink once per row and returns how many) into a new
/// archive in `state_dir/exports`; returns its path and size. Any earlier archive there is
/// deleted first. Rows stream from the store one at a time: only `index.tsv` (about 100 bytes
/// per sample) is kept in memory.
pub fn write_archive(
    state_dir: &Path,
    rows: &mut dyn FnMut(&mut RowSink) -> Result<usize, String>,
) -> Result<(PathBuf, u64), String> {
    let dir = state_dir.join(EXPORTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    remove_archives(&dir);
    write_to(&dir, &format!("samples-{}.tar", now_unix_ms()), rows)
}

fn write_to(
    dir: &Path,
    name: &str,
    rows: &mut dyn FnMut(&mut RowSink) -> Result<usize, String>,
) -> Result<(PathBuf, u64), String> {
    let path = dir.join(name);
    let tmp = dir.join(TMP);
    let failed = |e: String| format!("cannot write {}: {e}", path.display());
    let mut write = || -> Result<usize, String> {
        let io = |e: std::io::Error| e.to_string();
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut tar = tar::Builder::new(file);
        let mut index = String::from("file\tlabel\tid\n");
        let mut i = 0usize;
        let count = rows(&mut |id, label, thumbnail| {
            let name = format!("{}/{i:06}.jpg", dir_name(label));
            append(&mut tar, &name, thumbnail)?;
            index.push_str(&format!(
                "{}\t{}\t{}\n",
                tsv_field(&name),
                tsv_field(label),
                tsv_field(id)
            ));
            i += 1;
            Ok(())
        })?;
        append(&mut tar, "index.tsv", index.as_bytes()).map_err(io)?;
        tar.into_inner().map_err(io)?.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(count)
    };
    let count = match write() {
        Ok(count) => count,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(failed(e));
        }
    };
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    log::info!(
        "exported {count} samples to {} ({bytes} bytes)",
        path.display()
    );
    Ok((path, bytes))
}

/// Deletes earlier archives and a temp file a crash may have left.
fn remove_archives(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == TMP || (name.starts_with("samples-") && name.ends_with(".tar")) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                log::warn!("cannot remove old export {}: {e}", entry.path().display());
            }
        }
    }
}

fn append(tar: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(now_unix_ms() / 1000);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
}

/// A label as one safe path component: [`Label::dir_name`], or for a label stored before the
/// label rule existed, the same treatment of its raw text.
fn dir_name(label: &str) -> String {
    match Label::new(label) {
        Ok(label) => label.dir_name(),
        Err(_) => portable_dir_name(label),
    }
}

/// One `index.tsv` field with the characters that would end it escaped.
fn tsv_field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows from memory, as the store would feed them.
    fn slice(
        rows: &[(String, String, Vec<u8>)],
    ) -> impl FnMut(&mut RowSink) -> Result<usize, String> + '_ {
        move |sink: &mut RowSink| {
            for (id, label, thumbnail) in rows {
                sink(id, label, thumbnail).map_err(|e| e.to_string())?;
            }
            Ok(rows.len())
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(EXPORTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn one_archive_at_a_time_and_no_temp_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![("id1".to_string(), "..".to_string(), b"jpg".to_vec())];
        let (first, _) = write_archive(dir.path(), &mut slice(&rows)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (second, bytes) = write_archive(dir.path(), &mut slice(&rows)).unwrap();
        assert_ne!(first, second);
        assert!(!first.exists() && second.exists() && bytes > 0);
        let mut archive = tar::Archive::new(std::fs::File::open(&second).unwrap());
        let entries: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(entries, ["_../000000.jpg", "index.tsv"]);
        // A write that fails at the last step (the archive's name is taken by a non-empty
        // directory, so the rename fails) leaves no temp file behind.
        std::fs::remove_file(&second).unwrap();
        let exports = dir.path().join(EXPORTS_DIR);
        std::fs::create_dir_all(exports.join("taken.tar/x")).unwrap();
        let err = write_to(&exports, "taken.tar", &mut slice(&rows)).unwrap_err();
        assert!(err.contains("taken.tar"), "{err}");
        assert_eq!(names(dir.path()), ["taken.tar"]);
    }

    /// The archive's entries: (path, contents).
    fn read(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (e.path().unwrap().display().to_string(), data)
            })
            .collect()
    }

    #[test]
    fn long_labels_and_hostile_ids_stay_inside_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let emoji = "🐈".repeat(64);
        let rows = vec![
            (emoji.clone(), emoji.clone(), b"a".to_vec()),
            // Rows stored before the id and label rules: they must not forge rows or paths.
            ("a\nb\tc".to_string(), "x/../y".to_string(), b"b".to_vec()),
            ("back\\slash\0".to_string(), "ok".to_string(), b"c".to_vec()),
        ];
        let (path, _) = write_archive(dir.path(), &mut slice(&rows)).unwrap();
        let entries = read(&path);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let cat_dir = "🐈".repeat(50);
        assert_eq!(
            names,
            [
                format!("{cat_dir}/000000.jpg").as_str(),
                "x_.._y/000001.jpg",
                "ok/000002.jpg",
                "index.tsv"
            ]
        );
        assert!(names.iter().all(|n| n.split('/').all(|c| c.len() <= 255)));
        let index = String::from_utf8(entries[3].1.clone()).unwrap();
        let lines: Vec<&str> = index.lines().collect();
        assert_eq!(lines.len(), 4, "{index}");
        assert_eq!(lines[1], format!("{cat_dir}/000000.jpg\t{emoji}\t{emoji}"));
        assert_eq!(lines[2], "x_.._y/000001.jpg\tx/../y\ta\\nb\\tc");
        assert_eq!(lines[3], "ok/000002.jpg\tok\tback\\\\slash\\x00");
        assert!(lines.iter().all(|l| l.split('\t').count() == 3));
    }
}
