//! Sample keys after an engine switch (`learn::engine_switch` decides, this does the SQL): how
//! many samples each fingerprint text holds, and moving some keys to the current fingerprint.

use rusqlite::{params, TransactionBehavior};

use super::{Store, StoreError};

impl Store {
    /// Each distinct sample fingerprint text with its sample count, ordered by text.
    pub fn sample_keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT fingerprint, COUNT(*) FROM samples GROUP BY fingerprint ORDER BY fingerprint",
            )
            .map_err(self.err("count sample keys"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(self.err("count sample keys"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("count sample keys"))
    }

    /// Re-keys every sample stored under one of `from` to `to`, in one transaction (a crash
    /// leaves all of them moved or none). Row ids are kept, so `trained_through` still counts
    /// right. Returns how many samples moved.
    pub fn rekey_samples(&mut self, from: &[&str], to: &str) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            action: "re-key samples",
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut moved = 0;
        for key in from {
            moved += tx
                .execute(
                    "UPDATE samples SET fingerprint = ?1 WHERE fingerprint = ?2",
                    params![to, key],
                )
                .map_err(err)? as u64;
        }
        tx.commit().map_err(err)?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{NewSample, Store};

    #[test]
    fn keys_are_counted_and_moved_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_in(dir.path()).unwrap();
        for (hash, fingerprint) in [("h1", "old"), ("h2", "old"), ("h3", "new"), ("h4", "x")] {
            store
                .insert_sample(&NewSample {
                    id: hash,
                    label: "cat",
                    embedding: &[1.0],
                    source: "image",
                    content_hash: hash,
                    thumbnail: None,
                    fingerprint,
                })
                .unwrap();
        }
        let keys = |s: &Store| s.sample_keys().unwrap();
        assert_eq!(
            keys(&store),
            [("new".into(), 1), ("old".into(), 2), ("x".into(), 1)]
        );
        assert_eq!(store.rekey_samples(&["old"], "new").unwrap(), 2);
        assert_eq!(keys(&store), [("new".into(), 3), ("x".into(), 1)]);
        let rows: Vec<i64> = store
            .samples("new")
            .unwrap()
            .iter()
            .map(|s| s.row)
            .collect();
        assert_eq!(
            rows,
            [1, 2, 3],
            "row ids (and so the insertion order) are kept"
        );
        assert_eq!(store.rekey_samples(&["gone"], "new").unwrap(), 0);
    }
}
