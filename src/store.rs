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

pub mod recovery; // quick_check at start, damaged files kept aside, rebuild from readable rows
pub mod wal; // a WAL checksum walk: a torn tail is fine, damage before committed frames is not

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
    // 1 -> 2: head versions are files in <state_dir>/heads/ (written atomically: temp, fsync,
    // rename), so a head can be copied off the device and used with `glimpse classify`. Rows
    // written by schema 1 keep their bytes in `bytes` (new rows leave it empty). `gate_file` is
    // the head trained without the validation samples, which the next gate compares against.
    "ALTER TABLE heads ADD COLUMN file TEXT;
    ALTER TABLE heads ADD COLUMN gate_file TEXT;",
    // 2 -> 3: bookkeeping that must survive a crash (src/store/bookkeeping.rs). `meta` holds
    // `trained_through` (the newest sample row id the last training saw: what counts toward
    // `retrain_after`, by row id because boards without an RTC boot in 1970) and
    // `pending_retrain` (set in the same transaction as a `forget`'s delete, cleared once the
    // retrain is done). `commands` remembers executed command ids, so a repeated one is acked
    // `duplicate` instead of running twice. Existing stores start counting from the samples
    // stored before the active head was made (the old wall-clock rule, applied one last time).
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value);
    CREATE TABLE commands (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL
    );
    INSERT INTO meta (key, value)
        SELECT 'trained_through', COALESCE(MAX(rowid), 0) FROM samples
        WHERE created_at_ms <= (SELECT created_at_ms FROM heads WHERE active = 1);",
    // 3 -> 4: an index on the sample key. The key is the last column, behind the embedding and
    // thumbnail blobs (overflow pages), so counting samples per key at every start
    // (src/store/rekey.rs) would otherwise read the whole file; the retrain's `WHERE fingerprint`
    // lookups use it too.
    "CREATE INDEX samples_fingerprint ON samples (fingerprint);",
];

mod bookkeeping; // trained-through row id, the pending retrain of a forget, executed command ids
mod prune; // head versions beyond `learning.keep_heads`: rows and files removed
mod rekey; // sample keys counted and moved to the current fingerprint after an engine switch

/// The directory of head version files, beside the database.
pub const HEADS_DIR: &str = "heads";

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
    #[error("cannot {action} head file {path}: {source}")]
    HeadFile {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// Takes one sample's id, label and thumbnail (see [`Store::each_thumbnail`]).
pub type ThumbnailSink<'a> = dyn FnMut(&str, &str, &[u8]) -> std::io::Result<()> + 'a;

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
    /// The SQLite row id: grows with every insert, whatever the wall clock says.
    pub row: i64,
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
    /// The head file's bytes (the deployed head).
    pub bytes: Vec<u8>,
    /// The same training without the validation samples, when one was made (what the gate
    /// compares a new head against). `None` also when its file is unreadable: it is optional.
    pub gate_bytes: Option<Vec<u8>>,
    pub report: String,
    pub active: bool,
}

/// A head version about to be stored.
#[derive(Debug, Clone, Copy)]
pub struct NewHead<'a> {
    /// The head to deploy (head file format, docs/head-format.md).
    pub bytes: &'a [u8],
    /// The holdout-trained twin used by the next gate, if different from `bytes`.
    pub gate_bytes: Option<&'a [u8]>,
    pub report_json: &'a str,
}

/// The open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    heads_dir: PathBuf,
}

fn now_ms() -> i64 {
    crate::mqtt::messages::now_unix_ms() as i64
}

fn embedding_to_blob(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn blob_to_embedding(blob: &[u8]) -> Option<Vec<f32>> {
    if !blob.len().is_multiple_of(4) {
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
        let heads_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(HEADS_DIR);
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            heads_dir,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where head version files live (`<state_dir>/heads`).
    pub fn heads_dir(&self) -> &Path {
        &self.heads_dir
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
                "SELECT id, label, content_hash, embedding, rowid FROM samples
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
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.err("read samples"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, label, content_hash, blob, row) = row.map_err(self.err("read samples"))?;
            let embedding = blob_to_embedding(&blob).ok_or_else(|| StoreError::BadEmbedding {
                path: self.path.clone(),
                id: id.clone(),
                len: blob.len(),
            })?;
            out.push(StoredSample {
                row,
                id,
                label,
                content_hash,
                embedding,
            });
        }
        Ok(out)
    }

    /// The embeddings of one label's samples made with `fingerprint`, oldest first.
    pub fn embeddings_of(
        &self,
        label: &str,
        fingerprint: &str,
    ) -> Result<Vec<Vec<f32>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, embedding FROM samples WHERE label = ?1 AND fingerprint = ?2
                 ORDER BY rowid",
            )
            .map_err(self.err("read samples"))?;
        let rows = stmt
            .query_map([label, fingerprint], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(self.err("read samples"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, blob) = row.map_err(self.err("read samples"))?;
            out.push(
                blob_to_embedding(&blob).ok_or_else(|| StoreError::BadEmbedding {
                    path: self.path.clone(),
                    id,
                    len: blob.len(),
                })?,
            );
        }
        Ok(out)
    }

    /// Calls `row` with each sample's id, label and thumbnail (samples without one are skipped),
    /// oldest first, reading one row at a time: an export of 50,000 samples never holds more
    /// than one thumbnail in memory. Stops at the first error `row` returns, as a `String`.
    pub fn each_thumbnail(&self, row: &mut ThumbnailSink) -> Result<usize, String> {
        let read = |e: rusqlite::Error| self.err("read thumbnails")(e).to_string();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, label, thumbnail FROM samples WHERE thumbnail IS NOT NULL ORDER BY rowid",
            )
            .map_err(read)?;
        let mut rows = stmt.query([]).map_err(read)?;
        let mut count = 0;
        while let Some(r) = rows.next().map_err(read)? {
            let id = r.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(read)?;
            let label = r.get_ref(1).and_then(|v| Ok(v.as_str()?)).map_err(read)?;
            let thumbnail = r.get_ref(2).and_then(|v| Ok(v.as_blob()?)).map_err(read)?;
            row(id, label, thumbnail).map_err(|e| e.to_string())?;
            count += 1;
        }
        Ok(count)
    }

    /// Deletes every sample of `label`; returns how many.
    pub fn delete_label(&mut self, label: &str) -> Result<u64, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM samples WHERE label = ?1", [label])
            .map_err(self.err("delete samples"))?;
        Ok(n as u64)
    }

    /// Stores a new head version; with `activate` it becomes the only active one. The files
    /// (`heads/v000042.head`, and `v000042.gate.head` for the gate twin) are written atomically
    /// inside the database transaction that records them: a crash before the commit leaves at
    /// most an unreferenced file (overwritten by the next version of that number) and the old
    /// version active, never a row without its file, none active or two.
    pub fn insert_head(&mut self, head: &NewHead, activate: bool) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            action: "store a head version",
            source,
        };
        std::fs::create_dir_all(&self.heads_dir).map_err(|source| StoreError::HeadFile {
            path: self.heads_dir.clone(),
            action: "create the directory of",
            source,
        })?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if activate {
            tx.execute("UPDATE heads SET active = 0 WHERE active = 1", [])
                .map_err(err)?;
        }
        tx.execute(
            "INSERT INTO heads (created_at_ms, bytes, report, active) VALUES (?1, X'', ?2, ?3)",
            params![now_ms(), head.report_json, activate as i64],
        )
        .map_err(err)?;
        let version = tx.last_insert_rowid() as u64;
        let write = |name: &str, bytes: &[u8]| {
            let file = self.heads_dir.join(name);
            crate::fsutil::write_atomic(&file, bytes).map_err(|(step, source)| {
                StoreError::HeadFile {
                    path: file,
                    action: step.action(),
                    source,
                }
            })
        };
        let file = format!("v{version:06}.head");
        write(&file, head.bytes)?;
        let gate_file = match head.gate_bytes {
            Some(bytes) => {
                let name = format!("v{version:06}.gate.head");
                write(&name, bytes)?;
                Some(name)
            }
            None => None,
        };
        if crate::fault::armed(crate::fault::Fault::HeadCommitAbort) {
            std::process::abort(); // test-only: a crash between the file and its commit
        }
        tx.execute(
            "UPDATE heads SET file = ?1, gate_file = ?2 WHERE version = ?3",
            params![file, gate_file, version as i64],
        )
        .map_err(err)?;
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

    /// When the active head version was stored (Unix ms), if there is one. Reads no file.
    pub fn active_created_at(&self) -> Result<Option<u64>, StoreError> {
        self.conn
            .query_row(
                "SELECT created_at_ms FROM heads WHERE active = 1",
                [],
                |r| r.get::<_, i64>(0),
            )
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

    /// One head version, with its file read. An unreadable file is a `HeadFile` error (the
    /// caller treats it like corrupt bytes); an unreadable gate twin is only logged.
    pub fn head(&self, version: u64) -> Result<Option<StoredHead>, StoreError> {
        type Row = (StoredHead, Option<String>, Option<String>);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT version, created_at_ms, bytes, report, active, file, gate_file
                 FROM heads WHERE version = ?1",
                [version as i64],
                |r| {
                    Ok((
                        StoredHead {
                            version: r.get::<_, i64>(0)? as u64,
                            created_at_ms: r.get::<_, i64>(1)? as u64,
                            bytes: r.get(2)?,
                            gate_bytes: None,
                            report: r.get(3)?,
                            active: r.get::<_, i64>(4)? != 0,
                        },
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()
            .map_err(self.err("read a head"))?;
        let Some((mut head, file, gate_file)) = row else {
            return Ok(None);
        };
        if let Some(name) = file {
            let path = self.heads_dir.join(name);
            head.bytes = std::fs::read(&path).map_err(|source| StoreError::HeadFile {
                path,
                action: "read",
                source,
            })?;
        }
        if let Some(name) = gate_file {
            let path = self.heads_dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => head.gate_bytes = Some(bytes),
                Err(e) => log::warn!("gate head {}: {e}", path.display()),
            }
        }
        Ok(Some(head))
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
        let mut seen = Vec::new();
        let count = store
            .each_thumbnail(&mut |id, label, jpeg| {
                seen.push((id.to_string(), label.to_string(), jpeg.len()));
                Ok(())
            })
            .unwrap();
        assert_eq!(count, 1);
        assert_eq!(seen.len(), 1);
        let err = store
            .each_thumbnail(&mut |_, _, _| Err(std::io::Error::other("disk full")))
            .unwrap_err();
        assert!(err.contains("disk full"), "{err}");
    }

    #[test]
    fn head_versions_activate_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        assert_eq!(store.active_version().unwrap(), None);
        let head = |bytes: &'static [u8]| NewHead {
            bytes,
            gate_bytes: None,
            report_json: "{}",
        };
        let v1 = store.insert_head(&head(b"one"), true).unwrap();
        let v2 = store.insert_head(&head(b"two"), true).unwrap();
        let v3 = store.insert_head(&head(b"three"), false).unwrap();
        assert_eq!(store.active_version().unwrap(), Some(v2));
        assert_eq!(store.previous_version(v2).unwrap(), Some(v1));
        assert_eq!(store.previous_version(v1).unwrap(), None);
        store.set_active(v1).unwrap();
        assert_eq!(store.active_version().unwrap(), Some(v1));
        let created = store.head(v1).unwrap().unwrap().created_at_ms;
        assert_eq!(store.active_created_at().unwrap(), Some(created));
        assert_eq!(store.head(v3).unwrap().unwrap().bytes, b"three");
        assert!(!store.head(v3).unwrap().unwrap().active);
        assert!(store.set_active(99).is_err());
        assert_eq!(store.active_version().unwrap(), Some(v1));
        assert_eq!(store.head_versions().unwrap(), vec![v3, v2, v1]);
    }

    #[test]
    fn head_versions_are_files_with_an_optional_gate_twin() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        let v = store
            .insert_head(
                &NewHead {
                    bytes: b"deployed",
                    gate_bytes: Some(b"holdout"),
                    report_json: "{}",
                },
                true,
            )
            .unwrap();
        let heads = dir.path().join(HEADS_DIR);
        assert_eq!(
            std::fs::read(heads.join("v000001.head")).unwrap(),
            b"deployed"
        );
        let stored = store.head(v).unwrap().unwrap();
        assert_eq!(stored.bytes, b"deployed");
        assert_eq!(stored.gate_bytes.as_deref(), Some(&b"holdout"[..]));
        // A missing gate twin is tolerated; a missing head file is an error naming it.
        std::fs::remove_file(heads.join("v000001.gate.head")).unwrap();
        assert_eq!(store.head(v).unwrap().unwrap().gate_bytes, None);
        std::fs::remove_file(heads.join("v000001.head")).unwrap();
        let err = store.head(v).unwrap_err();
        assert!(matches!(err, StoreError::HeadFile { .. }), "{err}");
        assert!(err.to_string().contains("v000001.head"), "{err}");
    }

    #[test]
    fn a_schema_1_database_migrates_and_keeps_its_head_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch("PRAGMA user_version = 1").unwrap();
            conn.execute(
                "INSERT INTO heads (created_at_ms, bytes, report, active) VALUES (1, ?1, '{}', 1)",
                [b"legacy".to_vec()],
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let legacy = store.head(1).unwrap().unwrap();
        assert_eq!(
            (legacy.bytes.as_slice(), legacy.active),
            (&b"legacy"[..], true)
        );
        let head = NewHead {
            bytes: b"new",
            gate_bytes: None,
            report_json: "{}",
        };
        let v2 = store.insert_head(&head, true).unwrap();
        assert_eq!(store.head(v2).unwrap().unwrap().bytes, b"new");
        assert_eq!(store.active_version().unwrap(), Some(v2));
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
