//! The device's durable memory: labeled samples (embedding + thumbnail) and head versions, in one
//! SQLite file `<state_dir>/glimpse.db`.
//!
//! Why SQLite: a sample is acknowledged only after it is committed, and a power cut or `kill -9`
//! must never leave half a sample or half a head. WAL mode with `synchronous=FULL` makes each
//! commit durable before `COMMIT` returns, and a transaction is all-or-nothing, so "acked =>
//! stored" holds without any file juggling of our own. Head versions live in the same file (a
//! new version and the `active` flag move in one transaction).
//!
//! The schema is versioned with the `user_version` pragma and an ordered list of migrations:
//! migration `i` brings the file from version `i` to `i + 1`, each in its own transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// The database file name inside the state directory.
pub const DB_FILE: &str = "glimpse.db";

/// Ordered migrations; `MIGRATIONS[i]` upgrades schema version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: samples, heads.
    "CREATE TABLE samples (
        rowid INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        label TEXT NOT NULL,
        embedding BLOB NOT NULL,
        source TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        thumbnail BLOB,
        fingerprint TEXT NOT NULL,
        UNIQUE (content_hash, label)
    );
    CREATE INDEX samples_label ON samples (label);
    CREATE INDEX samples_id ON samples (id);
    CREATE TABLE heads (
        version INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at_ms INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        report TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0
    );",
];

/// Why a store operation failed; one line naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sample store {path}: cannot {action}: {source}")]
    Sqlite {
        path: PathBuf,
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error("sample store {path}: cannot create its directory: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sample store {path}: schema version {found} is newer than this build ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("sample store {path}: sample {id} has a {len}-byte embedding, not a multiple of 4")]
    BadEmbedding {
        path: PathBuf,
        id: String,
        len: usize,
    },
    #[error("sample store {path}: no head version {version}")]
    NoSuchHead { path: PathBuf, version: u64 },
}

/// A sample about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSample<'a> {
    /// What the ack reports: the content hash for raw images, the sender's id for JSON.
    pub id: &'a str,
    pub label: &'a str,
    pub embedding: &'a [f32],
    /// `image`, `json` or `frame` (how it was taught).
    pub source: &'a str,
    /// sha256 of the image bytes (or of the embedding, for a labeled frame).
    pub content_hash: &'a str,
    pub thumbnail: Option<&'a [u8]>,
    /// The backbone fingerprint (display form) the embedding was made with.
    pub fingerprint: &'a str,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Committed; `count` is the label's sample count afterwards.
    Accepted { count: u64 },
    /// The same content with the same label is already stored (nothing written).
    Duplicate { count: u64 },
}

/// One stored sample as the trainer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub id: String,
    pub label: String,
    pub content_hash: String,
    pub embedding: Vec<f32>,
}

/// A stored head version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHead {
    pub version: u64,
    pub created_at_ms: u64,
    pub bytes: Vec<u8>,
    pub report: String,
    pub active: bool,
}

/// The open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn now_ms() -> i64 {
    crate::mqtt::messages::now_unix_ms() as i64
}

fn embedding_to_blob(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn blob_to_embedding(blob: &[u8]) -> Option<Vec<f32>> {
    if blob.len() % 4 != 0 {
        return None;
    }
    Some(
        blob.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/glimpse.db` and migrates it.
    pub fn open_in(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        Store::open(&state_dir.join(DB_FILE))
    }

    /// Opens a database file, sets WAL + synchronous=FULL and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |action| {
            let path = path.to_path_buf();
            move |source| StoreError::Sqlite {
                path,
                action,
                source,
            }
        };
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set the busy timeout"))?;
        // journal_mode returns a row; query it rather than execute.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err("enable WAL"))?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(err("set synchronous=FULL"))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// The schema version (`user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("read user_version"))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let current = self.schema_version()?;
        if current < 0 || current as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: current,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let path = self.path.clone();
            let err = |source| StoreError::Sqlite {
                path: path.clone(),
                action: "migrate the schema",
                source,
            };
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    /// Stores a sample unless the same content already has that label. Durable when it returns.
    pub fn insert_sample(&mut self, sample: &NewSample) -> Result<Inserted, StoreError> {
        let path = self.path.clone();
        let err = |action| {
            let path = path.clone();
            move |source| StoreError::Sqlite {
                path,
                action,
                source,
            }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("begin a sample transaction"))?;
        let changed = tx
            .execute(
                "INSERT OR IGNORE INTO samples
                 (id, label, embedding, source, created_at_ms, content_hash, thumbnail, fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    sample.id,
                    sample.label,
                    embedding_to_blob(sample.embedding),
                    sample.source,
                    now_ms(),
                    sample.content_hash,
                    sample.thumbnail,
                    sample.fingerprint,
                ],
            )
            .map_err(err("insert a sample"))?;
        let count: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM samples WHERE label = ?1",
                [sample.label],
                |r| r.get(0),
            )
            .map_err(err("count samples"))?;
        tx.commit().map_err(err("commit a sample"))?;
        let count = count as u64;
        Ok(if changed == 1 {
            Inserted::Accepted { count }
        } else {
            Inserted::Duplicate { count }
        })
    }

    /// Whether this content is already stored under this label.
    pub fn contains(&self, content_hash: &str, label: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM samples WHERE content_hash = ?1 AND label = ?2",
                [content_hash, label],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(self.err("look up a sample"))
    }

    /// Sample count per label.
    pub fn label_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT label, COUNT(*) FROM samples GROUP BY label")
            .map_err(self.err("count labels"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.err("count labels"))?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let (label, n) = row.map_err(self.err("count labels"))?;
            counts.insert(label, n as u64);
        }
        Ok(counts)
    }

    /// Every sample made with `fingerprint`, ordered by insertion (so splits are reproducible).
    pub fn samples(&self, fingerprint: &str) -> Result<Vec<StoredSample>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, label, content_hash, embedding FROM samples
                 WHERE fingerprint = ?1 ORDER BY rowid",
            )
            .map_err(self.err("read samples"))?;
        let rows = stmt
            .query_map([fingerprint], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(self.err("read samples"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, label, content_hash, blob) = row.map_err(self.err("read samples"))?;
            let embedding = blob_to_embedding(&blob).ok_or_else(|| StoreError::BadEmbedding {
                path: self.path.clone(),
                id: id.clone(),
                len: blob.len(),
            })?;
            out.push(StoredSample {
                id,
                label,
                content_hash,
                embedding,
            });
        }
        Ok(out)
    }

    /// `(id, label, thumbnail)` of every sample that has a thumbnail, for export.
    pub fn thumbnails(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, label, thumbnail FROM samples WHERE thumbnail IS NOT NULL ORDER BY rowid",
            )
            .map_err(self.err("read thumbnails"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.err("read thumbnails"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("read thumbnails"))
    }

    /// Deletes every sample of `label`; returns how many.
    pub fn delete_label(&mut self, label: &str) -> Result<u64, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM samples WHERE label = ?1", [label])
            .map_err(self.err("delete samples"))?;
        Ok(n as u64)
    }

    /// Stores a new head version; with `activate` it becomes the only active one, in the same
    /// transaction (a crash leaves the old version active, never none or two).
    pub fn insert_head(
        &mut self,
        bytes: &[u8],
        report_json: &str,
        activate: bool,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            action: "store a head version",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if activate {
            tx.execute("UPDATE heads SET active = 0 WHERE active = 1", [])
                .map_err(err)?;
        }
        tx.execute(
            "INSERT INTO heads (created_at_ms, bytes, report, active) VALUES (?1, ?2, ?3, ?4)",
            params![now_ms(), bytes, report_json, activate as i64],
        )
        .map_err(err)?;
        let version = tx.last_insert_rowid() as u64;
        tx.commit().map_err(err)?;
        Ok(version)
    }

    /// Makes `version` the active head (and no other).
    pub fn set_active(&mut self, version: u64) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            action: "activate a head version",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute("UPDATE heads SET active = 0 WHERE active = 1", [])
            .map_err(err)?;
        let n = tx
            .execute(
                "UPDATE heads SET active = 1 WHERE version = ?1",
                [version as i64],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::NoSuchHead {
                path: self.path.clone(),
                version,
            });
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Leaves no head active (after `forget` left fewer than two labels).
    pub fn deactivate_heads(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE heads SET active = 0 WHERE active = 1", [])
            .map(|_| ())
            .map_err(self.err("deactivate heads"))
    }

    /// The active head version, if any.
    pub fn active_version(&self) -> Result<Option<u64>, StoreError> {
        self.conn
            .query_row("SELECT version FROM heads WHERE active = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.map(|v| v as u64))
            .map_err(self.err("read the active head"))
    }

    /// The newest version older than `version`.
    pub fn previous_version(&self, version: u64) -> Result<Option<u64>, StoreError> {
        self.conn
            .query_row(
                "SELECT MAX(version) FROM heads WHERE version < ?1",
                [version as i64],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(|v| v as u64))
            .map_err(self.err("find the previous head"))
    }

    /// One head version.
    pub fn head(&self, version: u64) -> Result<Option<StoredHead>, StoreError> {
        self.conn
            .query_row(
                "SELECT version, created_at_ms, bytes, report, active FROM heads WHERE version = ?1",
                [version as i64],
                |r| {
                    Ok(StoredHead {
                        version: r.get::<_, i64>(0)? as u64,
                        created_at_ms: r.get::<_, i64>(1)? as u64,
                        bytes: r.get(2)?,
                        report: r.get(3)?,
                        active: r.get::<_, i64>(4)? != 0,
                    })
                },
            )
            .optional()
            .map_err(self.err("read a head"))
    }

    /// Every head version, newest first.
    pub fn head_versions(&self) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT version FROM heads ORDER BY version DESC")
            .map_err(self.err("list heads"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(self.err("list heads"))?;
        rows.map(|r| r.map(|v| v as u64))
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list heads"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(id: &'a str, label: &'a str, hash: &'a str, e: &'a [f32]) -> NewSample<'a> {
        NewSample {
            id,
            label,
            embedding: e,
            source: "image",
            content_hash: hash,
            thumbnail: Some(b"jpg"),
            fingerprint: "fp",
        }
    }

    #[test]
    fn samples_round_trip_and_duplicates_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let e = [1.0f32, -2.5, 3.25];
        assert_eq!(
            store.insert_sample(&sample("a", "cat", "h1", &e)).unwrap(),
            Inserted::Accepted { count: 1 }
        );
        assert_eq!(
            store.insert_sample(&sample("a", "cat", "h1", &e)).unwrap(),
            Inserted::Duplicate { count: 1 }
        );
        // Same content, another label: a distinct sample (the operator relabels on purpose).
        assert_eq!(
            store.insert_sample(&sample("a", "dog", "h1", &e)).unwrap(),
            Inserted::Accepted { count: 1 }
        );
        drop(store);
        let mut store = Store::open_in(dir.path()).unwrap();
        let all = store.samples("fp").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].embedding, e);
        assert_eq!(store.label_counts().unwrap().get("cat"), Some(&1));
        assert_eq!(store.delete_label("cat").unwrap(), 1);
        assert_eq!(store.samples("fp").unwrap().len(), 1);
        assert!(store.samples("other").unwrap().is_empty());
        assert_eq!(store.thumbnails().unwrap().len(), 1);
    }

    #[test]
    fn head_versions_activate_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        assert_eq!(store.active_version().unwrap(), None);
        let v1 = store.insert_head(b"one", "{}", true).unwrap();
        let v2 = store.insert_head(b"two", "{}", true).unwrap();
        let v3 = store.insert_head(b"three", "{}", false).unwrap();
        assert_eq!(store.active_version().unwrap(), Some(v2));
        assert_eq!(store.previous_version(v2).unwrap(), Some(v1));
        assert_eq!(store.previous_version(v1).unwrap(), None);
        store.set_active(v1).unwrap();
        assert_eq!(store.active_version().unwrap(), Some(v1));
        assert_eq!(store.head(v3).unwrap().unwrap().bytes, b"three");
        assert!(!store.head(v3).unwrap().unwrap().active);
        assert!(store.set_active(99).is_err());
        assert_eq!(store.active_version().unwrap(), Some(v1));
        assert_eq!(store.head_versions().unwrap(), vec![v3, v2, v1]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA user_version = 99").unwrap();
        }
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
