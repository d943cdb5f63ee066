//! The learner's crash-safe bookkeeping (schema 3): which sample rows the last training saw, the
//! retrain a `forget` still owes, and the ids of executed commands.
//!
//! Why row ids rather than timestamps: boards without an RTC boot in 1970 and jump when NTP
//! syncs, so "samples newer than the head" by wall clock misfires; SQLite row ids only grow.
//! Why the pending retrain lives in the forget's own transaction: a crash between deleting a
//! label's samples and retraining used to leave the old head (which still knows the label)
//! active forever, and a second `forget` found nothing to delete.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{Store, StoreError};

/// Executed command ids remembered at most (the oldest are forgotten first).
const COMMANDS_KEPT: i64 = 10_000;

const TRAINED_THROUGH: &str = "trained_through";
const PENDING_RETRAIN: &str = "pending_retrain";

impl Store {
    /// The newest sample row id the last training saw (0 before any).
    pub fn trained_through(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [TRAINED_THROUGH],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(self.err("read trained_through"))
    }

    /// Records that a training saw every sample up to row `row`.
    pub fn set_trained_through(&mut self, row: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![TRAINED_THROUGH, row],
            )
            .map(|_| ())
            .map_err(self.err("write trained_through"))
    }

    /// Samples stored after row `row`: what counts toward `retrain_after`.
    pub fn samples_after_row(&self, row: i64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM samples WHERE rowid > ?1",
                [row],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.err("count new samples"))
    }

    /// Deletes every sample of `label` and, in the same transaction, records that a retrain is
    /// owed and (when given) the command's id. Returns how many samples were deleted (none: no
    /// retrain is recorded).
    pub fn forget_label(
        &mut self,
        label: &str,
        command: Option<(&str, &str)>,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            action: "forget a label",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let deleted = tx
            .execute("DELETE FROM samples WHERE label = ?1", [label])
            .map_err(err)?;
        if deleted > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![PENDING_RETRAIN, format!("forget {label}")],
            )
            .map_err(err)?;
            if let Some((id, name)) = command {
                insert_command(&tx, id, name).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(deleted as u64)
    }

    /// The retrain a crash interrupted (why it is owed), if any.
    pub fn pending_retrain(&self) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [PENDING_RETRAIN],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(self.err("read the pending retrain"))
    }

    /// The owed retrain is done.
    pub fn clear_pending_retrain(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM meta WHERE key = ?1", [PENDING_RETRAIN])
            .map(|_| ())
            .map_err(self.err("clear the pending retrain"))
    }

    /// Whether a command with this id was executed already.
    pub fn command_done(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row("SELECT 1 FROM commands WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(self.err("look up a command id"))
    }

    /// Remembers an executed command id (the oldest beyond the bound are dropped).
    pub fn record_command(&mut self, id: &str, name: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            action: "record a command id",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        insert_command(&tx, id, name).map_err(err)?;
        tx.commit().map_err(err)
    }
}

fn insert_command(tx: &rusqlite::Transaction, id: &str, name: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO commands (id, name) VALUES (?1, ?2)",
        [id, name],
    )?;
    tx.execute(
        "DELETE FROM commands WHERE seq <= (SELECT MAX(seq) FROM commands) - ?1",
        [COMMANDS_KEPT],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{NewHead, NewSample, DB_FILE, MIGRATIONS};
    use super::*;
    use rusqlite::Connection;

    fn sample<'a>(label: &'a str, hash: &'a str, e: &'a [f32]) -> NewSample<'a> {
        NewSample {
            id: hash,
            label,
            embedding: e,
            source: "image",
            content_hash: hash,
            thumbnail: None,
            fingerprint: "fp",
        }
    }

    #[test]
    fn counting_by_row_id_ignores_a_clock_that_jumps_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        let e = [0.5f32; 4];
        store.insert_sample(&sample("x", "h1", &e)).unwrap();
        store.insert_sample(&sample("x", "h2", &e)).unwrap();
        let rows: Vec<i64> = store.samples("fp").unwrap().iter().map(|s| s.row).collect();
        store.set_trained_through(rows[1]).unwrap();
        // The board rebooted without an RTC: later samples carry 1970 timestamps.
        store.insert_sample(&sample("y", "h3", &e)).unwrap();
        store.insert_sample(&sample("y", "h4", &e)).unwrap();
        store
            .conn
            .execute("UPDATE samples SET created_at_ms = 5 WHERE label = 'y'", [])
            .unwrap();
        assert_eq!(
            store
                .samples_after_row(store.trained_through().unwrap())
                .unwrap(),
            2
        );
        drop(store);
        let store = Store::open_in(dir.path()).unwrap();
        assert_eq!(store.trained_through().unwrap(), rows[1]);
        assert_eq!(store.samples_after_row(0).unwrap(), 4);
    }

    #[test]
    fn forget_records_its_retrain_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        let e = [0.5f32; 4];
        store.insert_sample(&sample("x", "h1", &e)).unwrap();
        store.insert_sample(&sample("y", "h2", &e)).unwrap();
        assert_eq!(store.forget_label("nothing", None).unwrap(), 0);
        assert_eq!(store.pending_retrain().unwrap(), None);
        assert_eq!(store.forget_label("x", Some(("c1", "forget"))).unwrap(), 1);
        // "Crash" here: reopen, the retrain is still owed and the command id is known.
        drop(store);
        let mut store = Store::open_in(dir.path()).unwrap();
        assert_eq!(
            store.pending_retrain().unwrap().as_deref(),
            Some("forget x")
        );
        assert!(store.command_done("c1").unwrap());
        store.clear_pending_retrain().unwrap();
        assert_eq!(store.pending_retrain().unwrap(), None);
        assert_eq!(store.label_counts().unwrap().len(), 1);
    }

    #[test]
    fn command_ids_are_remembered_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        assert!(!store.command_done("a").unwrap());
        store.record_command("a", "retrain").unwrap();
        store.record_command("a", "retrain").unwrap();
        assert!(store.command_done("a").unwrap());
        let n: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM commands", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        store
            .conn
            .execute(
                "UPDATE commands SET seq = seq + ?1 WHERE id = 'a'",
                [COMMANDS_KEPT + 5],
            )
            .unwrap();
        store.record_command("b", "labels").unwrap();
        assert!(store.command_done("b").unwrap());
    }

    #[test]
    fn a_schema_2_store_counts_samples_since_its_active_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.execute_batch("PRAGMA user_version = 2").unwrap();
            for (i, at) in [100, 200, 300].iter().enumerate() {
                conn.execute(
                    "INSERT INTO samples (id, label, embedding, source, created_at_ms,
                     content_hash, fingerprint) VALUES (?1, 'x', X'00000000', 'image', ?2, ?1, 'fp')",
                    params![format!("s{i}"), at],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO heads (created_at_ms, bytes, report, active) VALUES (250, X'', '{}', 1)",
                [],
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.trained_through().unwrap(), 2);
        assert_eq!(store.samples_after_row(2).unwrap(), 1);
        let head = NewHead {
            bytes: b"h",
            gate_bytes: None,
            report_json: "{}",
        };
        store.insert_head(&head, true).unwrap();
    }
}
