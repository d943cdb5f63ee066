//! Opening the store at start without trusting it: `PRAGMA quick_check` on the database, a
//! checksum walk of its WAL, and on damage a rebuild from what is still readable.
//!
//! A damaged store must neither crash-loop the daemon (systemd would give up after five starts)
//! nor be served as if it were sound (samples accepted into a file that fails at the next
//! retrain or export). So on damage: one line in the log saying what was found, the damaged
//! files kept aside as `glimpse.db.corrupt-<unix ms>` (+ `-wal`), and a fresh database filled
//! with every row that can still be read, table by table, keeping row ids (sample order, head
//! version numbers). Rows are read forwards until the first unreadable page, backwards from the
//! end likewise, and the gap between by row id, so one bad page costs only the rows on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags};

use super::wal::{self, WalState};
use super::{Store, StoreError, DB_FILE};

/// Row ids probed one by one between the readable ends of a damaged table, at most.
const MAX_PROBES: i64 = 2_000_000;

/// What `open_checked` found wrong and what it did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// What was wrong, in one line.
    pub problem: String,
    /// The damaged files, kept for inspection.
    pub kept_aside: Vec<PathBuf>,
    /// Rows copied into the rebuilt database, per table (empty when only the WAL was damaged and
    /// the database itself was sound).
    pub salvaged: BTreeMap<String, u64>,
}

impl Recovery {
    /// The one line the daemon logs.
    pub fn summary(&self) -> String {
        let aside: Vec<String> = self
            .kept_aside
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut line = format!(
            "{}; damaged files kept as {}",
            self.problem,
            aside.join(", ")
        );
        if !self.salvaged.is_empty() {
            let rows: Vec<String> = self
                .salvaged
                .iter()
                .map(|(table, n)| format!("{n} {table}"))
                .collect();
            line.push_str(&format!(
                "; rebuilt from what was readable: {}",
                rows.join(", ")
            ));
        }
        line
    }
}

/// Opens `<state_dir>/glimpse.db` after checking it; rebuilds it from its readable rows when it
/// is damaged. Errors are only what no rebuild can help (permissions, a full or read-only disk,
/// a schema newer than this build).
pub fn open_checked(state_dir: &Path) -> Result<(Store, Option<Recovery>), StoreError> {
    std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
        path: state_dir.to_path_buf(),
        source,
    })?;
    let db = state_dir.join(DB_FILE);
    if !db.exists() {
        return Ok((Store::open(&db)?, None));
    }
    let stamp = crate::mqtt::messages::now_unix_ms();
    let aside = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(format!(".corrupt-{stamp}{suffix}"));
        PathBuf::from(name)
    };
    let wal_path = sidecar(&db, "-wal");
    let mut problems = Vec::new();
    let mut kept_aside = Vec::new();
    // The WAL first: opening the database replays (and then drops) it.
    if let Ok(bytes) = std::fs::read(&wal_path) {
        let damage = match wal::check(&bytes) {
            WalState::Sound { .. } => None,
            WalState::Damaged {
                first_bad,
                commits_lost,
            } => Some(format!(
                "write-ahead log damaged at frame {first_bad}: {commits_lost} committed \
                 transaction(s) after it cannot be replayed"
            )),
            WalState::BadHeader => Some("write-ahead log header damaged".to_string()),
        };
        if let Some(damage) = damage {
            for (from, to) in [(&db, aside("")), (&wal_path, aside("-wal"))] {
                std::fs::copy(from, &to).map_err(|source| StoreError::Dir {
                    path: to.clone(),
                    source,
                })?;
                kept_aside.push(to);
            }
            problems.push(damage);
        }
    }
    match quick_check(&db) {
        Ok(None) => {
            let store = Store::open(&db)?;
            let recovery = (!problems.is_empty()).then(|| Recovery {
                problem: format!("sample store {}: {}", db.display(), problems.join("; ")),
                kept_aside,
                salvaged: BTreeMap::new(),
            });
            Ok((store, recovery))
        }
        Ok(Some(damage)) => {
            problems.push(damage);
            // Move the damaged files aside (replacing copies made for a damaged WAL).
            let moved = aside("");
            for suffix in ["", "-wal", "-shm"] {
                let from = sidecar(&db, suffix);
                if from.exists() {
                    let to = aside(suffix);
                    std::fs::rename(&from, &to).map_err(|source| StoreError::Dir {
                        path: to.clone(),
                        source,
                    })?;
                    if suffix != "-shm" && !kept_aside.contains(&to) {
                        kept_aside.push(to);
                    }
                }
            }
            let mut store = Store::open(&db)?;
            let salvaged = salvage(&moved, &mut store)?;
            Ok((
                store,
                Some(Recovery {
                    problem: format!("sample store {}: {}", db.display(), problems.join("; ")),
                    kept_aside,
                    salvaged,
                }),
            ))
        }
        Err(err) => Err(err),
    }
}

/// `path` + `suffix` (`glimpse.db-wal`).
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `Ok(None)`: sound. `Ok(Some(what))`: damaged. `Err`: the file cannot be examined at all
/// (permissions, I/O), which is not damage and must not trigger a rebuild.
fn quick_check(db: &Path) -> Result<Option<String>, StoreError> {
    let sqlite = |action| {
        let path = db.to_path_buf();
        move |source| StoreError::Sqlite {
            path,
            action,
            source,
        }
    };
    let conn = Connection::open(db).map_err(sqlite("open"))?;
    let rows: Result<Vec<String>, rusqlite::Error> =
        conn.prepare("PRAGMA quick_check(3)").and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        });
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(None),
        Ok(rows) => Ok(Some(format!(
            "quick_check: {}",
            rows.join("; ").replace('\n', " ")
        ))),
        Err(err) if is_damage(&err) => Ok(Some(format!("quick_check: {err}"))),
        Err(err) => Err(sqlite("check")(err)),
    }
}

fn is_damage(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Copies every readable row of every table the fresh store has from the damaged file, in the
/// columns both have. Returns rows copied per table.
fn salvage(damaged: &Path, store: &mut Store) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut copied = BTreeMap::new();
    let Ok(old) = Connection::open_with_flags(damaged, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Ok(copied);
    };
    let store_path = store.path.clone();
    let err = |action| {
        let path = store_path.clone();
        move |source| StoreError::Sqlite {
            path,
            action,
            source,
        }
    };
    let tables: Vec<String> = {
        let mut stmt = store
            .conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .map_err(err("list tables"))?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .map_err(err("list tables"))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(err("list tables"));
        names?
    };
    for table in tables {
        let new_columns = columns(&store.conn, &table).unwrap_or_default();
        let Ok(old_columns) = columns(&old, &table) else {
            continue;
        };
        let common: Vec<String> = new_columns
            .into_iter()
            .filter(|c| old_columns.contains(c))
            .collect();
        if common.is_empty() {
            continue;
        }
        let rows = readable_rows(&old, &table, &common);
        let list = common
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let marks = vec!["?"; common.len() + 1].join(", ");
        let sql = format!("INSERT OR IGNORE INTO \"{table}\" (rowid, {list}) VALUES ({marks})");
        let tx = store.conn.transaction().map_err(err("rebuild"))?;
        let mut n = 0u64;
        {
            let mut insert = tx.prepare(&sql).map_err(err("rebuild"))?;
            for (rowid, values) in rows {
                let all = std::iter::once(Value::Integer(rowid)).chain(values);
                n += insert
                    .execute(params_from_iter(all))
                    .map_err(err("rebuild"))? as u64;
            }
        }
        tx.commit().map_err(err("rebuild"))?;
        copied.insert(table, n);
    }
    // The active head's row may be among the lost ones: then the newest readable version is the
    // last good state.
    let _ = store.conn.execute(
        "UPDATE heads SET active = 1 WHERE version = (SELECT MAX(version) FROM heads)
         AND NOT EXISTS (SELECT 1 FROM heads WHERE active = 1)",
        [],
    );
    Ok(copied)
}

fn columns(conn: &Connection, table: &str) -> Result<Vec<String>, rusqlite::Error> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<Vec<_>, _>>()?;
    if names.is_empty() {
        // table_info answers nothing (not an error) for a table the schema lost.
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    Ok(names)
}

/// Every row of `table` that can be read: forwards until the first error, backwards likewise,
/// then row by row in between.
fn readable_rows(conn: &Connection, table: &str, columns: &[String]) -> Vec<(i64, Vec<Value>)> {
    let list = columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut rows: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    let read_row = |r: &rusqlite::Row| -> rusqlite::Result<(i64, Vec<Value>)> {
        let rowid = r.get::<_, i64>(0)?;
        let values = (1..=columns.len())
            .map(|i| r.get::<_, Value>(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rowid, values))
    };
    let mut scan = |order: &str| -> Option<i64> {
        let sql = format!("SELECT rowid, {list} FROM \"{table}\" ORDER BY rowid {order}");
        let mut last = None;
        let Ok(mut stmt) = conn.prepare(&sql) else {
            return None;
        };
        let Ok(mut cursor) = stmt.query([]) else {
            return None;
        };
        while let Ok(Some(row)) = cursor.next() {
            match read_row(row) {
                Ok((rowid, values)) => {
                    last = Some(rowid);
                    rows.insert(rowid, values);
                }
                Err(_) => break,
            }
        }
        last
    };
    let forward_end = scan("ASC").unwrap_or(0);
    let backward_end = scan("DESC");
    if let Some(backward_end) = backward_end {
        let sql = format!("SELECT rowid, {list} FROM \"{table}\" WHERE rowid = ?1");
        if let Ok(mut stmt) = conn.prepare(&sql) {
            let gap = (forward_end + 1)..backward_end;
            for rowid in gap.take(MAX_PROBES as usize) {
                if rows.contains_key(&rowid) {
                    continue;
                }
                if let Ok(Some((id, values))) = stmt
                    .query_row([rowid], |r| read_row(r))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })
                {
                    rows.insert(id, values);
                }
            }
        }
    }
    rows.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewHead, NewSample};

    /// A store with `n` samples (label `a` or `b`) and one active head; returns the state dir.
    fn populated(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut store = Store::open_in(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        fill(&mut store, 0..n);
        store
            .insert_head(
                &NewHead {
                    bytes: b"head bytes",
                    gate_bytes: None,
                    report_json: "{}",
                },
                true,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn fill(store: &mut Store, range: std::ops::Range<usize>) {
        for i in range {
            let id = format!("s{i}");
            let embedding = [i as f32; 8];
            store
                .insert_sample(&NewSample {
                    id: &id,
                    label: if i % 2 == 0 { "a" } else { "b" },
                    embedding: &embedding,
                    source: "json",
                    content_hash: &id,
                    thumbnail: None,
                    fingerprint: "fp",
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Page number of a leaf page in the middle of the samples table (table root is interior).
    fn middle_leaf(db: &Path) -> (usize, usize) {
        let conn = Connection::open(db).unwrap_or_else(|e| panic!("{e}"));
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        let root: i64 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'samples'",
                [],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        drop(conn);
        let bytes = std::fs::read(db).unwrap_or_else(|e| panic!("{e}"));
        let page_size = page_size as usize;
        let page = &bytes[(root as usize - 1) * page_size..root as usize * page_size];
        assert_eq!(
            page[0], 0x05,
            "the samples root must be an interior table page"
        );
        let cells = u16::from_be_bytes([page[3], page[4]]) as usize;
        assert!(
            cells >= 4,
            "too few leaves ({cells}) to damage one in the middle"
        );
        // Cell pointer array after the 12-byte interior header; each cell starts with the
        // child's page number.
        let at = 12 + 2 * (cells / 2);
        let cell = u16::from_be_bytes([page[at], page[at + 1]]) as usize;
        let child =
            u32::from_be_bytes([page[cell], page[cell + 1], page[cell + 2], page[cell + 3]]);
        (child as usize, page_size)
    }

    fn sample_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .samples("fp")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|s| {
                let i: usize = s.id[1..].parse().unwrap_or_else(|e| panic!("{e}"));
                // Every salvaged sample is intact: its embedding is what was stored.
                assert_eq!(s.embedding, vec![i as f32; 8], "{}", s.id);
                s.id
            })
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_sound_store_opens_without_a_recovery() {
        let dir = populated(50);
        let (store, recovery) = open_checked(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(recovery, None);
        assert_eq!(sample_ids(&store).len(), 50);
    }

    #[test]
    fn a_damaged_page_is_set_aside_and_the_rest_rebuilt() {
        let dir = populated(600);
        let db = dir.path().join(DB_FILE);
        let (leaf, page_size) = middle_leaf(&db);
        let mut bytes = std::fs::read(&db).unwrap_or_else(|e| panic!("{e}"));
        let start = (leaf - 1) * page_size;
        for b in &mut bytes[start..start + 64] {
            *b ^= 0xA5;
        }
        std::fs::write(&db, &bytes).unwrap_or_else(|e| panic!("{e}"));

        let (store, recovery) = open_checked(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let Some(recovery) = recovery else {
            panic!("a damaged page went unnoticed");
        };
        let line = recovery.summary();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("quick_check"), "{line}");
        assert_eq!(recovery.kept_aside.len(), 1, "{line}");
        assert_eq!(
            std::fs::read(&recovery.kept_aside[0]).unwrap_or_default(),
            bytes,
            "the damaged file is kept as it was"
        );
        let ids = sample_ids(&store);
        // One leaf holds a few dozen of these small rows: the rest, on both sides, is back.
        assert!(
            ids.len() < 600 && ids.len() > 500,
            "{} samples: {line}",
            ids.len()
        );
        assert!(ids.contains(&"s0".to_string()) && ids.contains(&"s599".to_string()));
        assert_eq!(recovery.salvaged.get("samples"), Some(&(ids.len() as u64)));
        assert_eq!(
            store.active_version().unwrap_or_else(|e| panic!("{e}")),
            Some(1)
        );
        assert_eq!(quick_check(&db).unwrap_or_else(|e| panic!("{e}")), None);
        drop(store);
        // The next start finds a sound store.
        let (_, again) = open_checked(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, None);
    }

    #[test]
    fn a_file_that_is_no_database_starts_empty() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(DB_FILE), vec![0x5Au8; 8192])
            .unwrap_or_else(|e| panic!("{e}"));
        let (store, recovery) = open_checked(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(recovery.is_some());
        assert!(sample_ids(&store).is_empty());
    }

    /// Copies the database and its WAL while `store` is still open (as `kill -9` leaves them).
    fn crash_copy(store_dir: &Path) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for name in [DB_FILE.to_string(), format!("{DB_FILE}-wal")] {
            std::fs::copy(store_dir.join(&name), copy.path().join(&name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        copy
    }

    #[test]
    fn a_clean_wal_left_by_a_crash_is_replayed_in_full() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut store = Store::open_in(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        fill(&mut store, 0..40);
        let copy = crash_copy(dir.path());
        let (recovered, recovery) = open_checked(copy.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(recovery, None);
        assert_eq!(sample_ids(&recovered).len(), 40);
    }

    #[test]
    fn a_damaged_wal_is_reported_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut store = Store::open_in(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        fill(&mut store, 0..40);
        let copy = crash_copy(dir.path());
        let wal = copy.path().join(format!("{DB_FILE}-wal"));
        let mut bytes = std::fs::read(&wal).unwrap_or_else(|e| panic!("{e}"));
        let frame = 24 + 4096;
        assert!(
            bytes.len() > 32 + 20 * frame,
            "{} bytes of WAL",
            bytes.len()
        );
        bytes[32 + 10 * frame + 24 + 2000] ^= 0x40; // page data of frame 10
        std::fs::write(&wal, &bytes).unwrap_or_else(|e| panic!("{e}"));

        let (recovered, recovery) = open_checked(copy.path()).unwrap_or_else(|e| panic!("{e}"));
        let Some(recovery) = recovery else {
            panic!("a damaged WAL went unnoticed");
        };
        let line = recovery.summary();
        assert!(
            line.contains("write-ahead log damaged at frame 10"),
            "{line}"
        );
        assert_eq!(recovery.kept_aside.len(), 2, "{line}");
        assert_eq!(
            std::fs::read(&recovery.kept_aside[1]).unwrap_or_default(),
            bytes,
            "the damaged WAL is kept as it was"
        );
        // SQLite replays what precedes the damage; the store is usable.
        let n = sample_ids(&recovered).len();
        assert!(n < 40, "{n} samples");
    }
}
