//! Keeps the head versions on disk bounded: the active version plus the `keep` newest others
//! (`learning.keep_heads`), rows and files. Files are removed after the rows' transaction
//! commits, so a crash in between leaves only unreferenced files, which the next prune sweeps.

use std::collections::BTreeSet;

use rusqlite::TransactionBehavior;

use super::{Store, StoreError};

impl Store {
    /// Deletes every head version that is neither active nor among the `keep` newest inactive
    /// ones, then every file in the heads directory no row refers to. Returns the versions
    /// deleted, newest first.
    pub fn prune_heads(&mut self, keep: usize) -> Result<Vec<u64>, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            action: "prune head versions",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let doomed: Vec<u64> = {
            let mut stmt = tx
                .prepare("SELECT version FROM heads WHERE active = 0 ORDER BY version DESC")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, i64>(0))
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            rows.into_iter().skip(keep).map(|v| v as u64).collect()
        };
        for version in &doomed {
            tx.execute("DELETE FROM heads WHERE version = ?1", [*version as i64])
                .map_err(err)?;
        }
        let referenced: BTreeSet<String> = {
            let mut stmt = tx
                .prepare("SELECT file, gate_file FROM heads")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                    ))
                })
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            rows.into_iter()
                .flat_map(|(a, b)| a.into_iter().chain(b))
                .collect()
        };
        tx.commit().map_err(err)?;
        self.sweep_head_files(&referenced);
        Ok(doomed)
    }

    /// Removes head files (`v*.head`) that no row refers to. Failures are logged: a leftover
    /// file costs disk, not correctness.
    fn sweep_head_files(&self, referenced: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.heads_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Version files no row refers to, and temp files of a write a crash interrupted.
            let orphan = name.starts_with('v') && name.ends_with(".head");
            let temp = name.starts_with(".v") && name.contains(".head.tmp-");
            if (orphan || temp) && !referenced.contains(&name) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    log::warn!(
                        "cannot remove old head file {}: {e}",
                        entry.path().display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewHead, HEADS_DIR};
    use super::*;

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(HEADS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_the_active_version_and_the_newest_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        let head = NewHead {
            bytes: b"h",
            gate_bytes: Some(b"g"),
            report_json: "{}",
        };
        for _ in 0..6 {
            store.insert_head(&head, true).unwrap();
        }
        store.set_active(2).unwrap(); // a rollback: the active one is old
                                      // A file a crash left behind (its row never committed).
        std::fs::write(dir.path().join(HEADS_DIR).join("v000099.head"), b"x").unwrap();
        std::fs::write(dir.path().join(HEADS_DIR).join(".v000098.head.tmp-1"), b"x").unwrap();
        assert_eq!(store.prune_heads(2).unwrap(), vec![4, 3, 1]);
        assert_eq!(store.head_versions().unwrap(), vec![6, 5, 2]);
        assert_eq!(store.active_version().unwrap(), Some(2));
        assert_eq!(
            files(dir.path()),
            [
                "v000002.gate.head",
                "v000002.head",
                "v000005.gate.head",
                "v000005.head",
                "v000006.gate.head",
                "v000006.head"
            ]
        );
        assert_eq!(store.head(2).unwrap().unwrap().bytes, b"h");
        assert_eq!(store.prune_heads(0).unwrap(), vec![6, 5]);
        assert_eq!(store.head_versions().unwrap(), vec![2]);
        // Version numbers are never reused after a prune (AUTOINCREMENT).
        assert_eq!(store.insert_head(&head, true).unwrap(), 7);
    }
}
