//! The `snapshots` and `operations` tables: a VM's snapshots (its directory holds the files)
//! and the long operations in flight (revert to a snapshot, migration out), written before
//! petreld acts so that a restarted petreld can finish or undo them.

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};

/// One snapshot of a VM, as stored and as `GET /v1/vms/{id}/snapshots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The VM's id.
    pub vm_id: String,
    /// Unique per VM.
    pub name: String,
    /// `creating` (files being written; dropped by a restarted petreld) or `ready`.
    pub state: String,
    /// Space the files take on disk (memory files are sparse).
    pub size_bytes: u64,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

/// A long operation in flight on a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The VM's id.
    pub vm_id: String,
    /// `revert` (arg: snapshot name) or `migrate` (arg: the destination petreld's socket).
    pub kind: String,
    /// See `kind`.
    pub arg: String,
}

fn snapshot_from_row(row: &Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        vm_id: row.get(0)?,
        name: row.get(1)?,
        state: row.get(2)?,
        size_bytes: row.get::<_, i64>(3)? as u64,
        created_at: row.get(4)?,
    })
}

const COLUMNS: &str = "vm_id, name, state, size_bytes, created_at";

impl Store {
    /// Records a snapshot; a name the VM already has is [`StoreError::Duplicate`].
    pub fn insert_snapshot(&mut self, s: &SnapshotRecord) -> Result<()> {
        self.before_write();
        let res = self.conn.execute(
            &format!("INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
            params![s.vm_id, s.name, s.state, s.size_bytes as i64, s.created_at],
        );
        let res = match res {
            Err(e) if super::is_unique_violation(&e) => Err(StoreError::Duplicate {
                kind: "snapshot",
                name: s.name.clone(),
            }),
            other => other.map(drop).map_err(Into::into),
        };
        self.after_write(res)
    }

    /// Marks snapshot `name` of `vm_id` ready with its size.
    pub fn snapshot_ready(&mut self, vm_id: &str, name: &str, size: u64) -> Result<()> {
        self.before_write();
        let res = self.conn.execute(
            "UPDATE snapshots SET state = 'ready', size_bytes = ?3 WHERE vm_id = ?1 AND name = ?2",
            params![vm_id, name, size as i64],
        );
        self.after_write(res.map(drop).map_err(Into::into))
    }

    /// Snapshot `name` of `vm_id`.
    pub fn get_snapshot(&self, vm_id: &str, name: &str) -> Result<Option<SnapshotRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM snapshots WHERE vm_id = ?1 AND name = ?2"),
                [vm_id, name],
                snapshot_from_row,
            )
            .optional()?)
    }

    /// The snapshots of `vm_id` (every VM's with `None`), oldest first.
    pub fn list_snapshots(&self, vm_id: Option<&str>) -> Result<Vec<SnapshotRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM snapshots WHERE ?1 IS NULL OR vm_id = ?1 \
             ORDER BY created_at, name"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([vm_id], snapshot_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets snapshot `name` of `vm_id`; false when there was none.
    pub fn delete_snapshot(&mut self, vm_id: &str, name: &str) -> Result<bool> {
        self.before_write();
        let res = self.conn.execute(
            "DELETE FROM snapshots WHERE vm_id = ?1 AND name = ?2",
            [vm_id, name],
        );
        self.after_write(res.map(|n| n > 0).map_err(Into::into))
    }

    /// Records `op` as in flight (replacing one left over).
    pub fn begin_operation(&mut self, op: &Operation) -> Result<()> {
        self.before_write();
        let res = self.conn.execute(
            "INSERT OR REPLACE INTO operations (vm_id, kind, arg, started_at) \
             VALUES (?1, ?2, ?3, ?4)",
            params![op.vm_id, op.kind, op.arg, super::super::model::now()],
        );
        self.after_write(res.map(drop).map_err(Into::into))
    }

    /// The operation in flight on `vm_id`, if any.
    pub fn operation(&self, vm_id: &str) -> Result<Option<Operation>> {
        Ok(self
            .conn
            .query_row(
                "SELECT vm_id, kind, arg FROM operations WHERE vm_id = ?1",
                [vm_id],
                |r| {
                    Ok(Operation {
                        vm_id: r.get(0)?,
                        kind: r.get(1)?,
                        arg: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Ends the operation on `vm_id`.
    pub fn end_operation(&mut self, vm_id: &str) -> Result<()> {
        self.before_write();
        let res = self
            .conn
            .execute("DELETE FROM operations WHERE vm_id = ?1", [vm_id]);
        self.after_write(res.map(drop).map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_operations() {
        let mut s = Store::in_memory().unwrap();
        let snap = SnapshotRecord {
            vm_id: "v1".into(),
            name: "a".into(),
            state: "creating".into(),
            size_bytes: 0,
            created_at: "2024-01-01T00:00:00Z".into(),
        };
        s.insert_snapshot(&snap).unwrap();
        assert!(matches!(
            s.insert_snapshot(&snap),
            Err(StoreError::Duplicate { .. })
        ));
        s.snapshot_ready("v1", "a", 4096).unwrap();
        let got = s.get_snapshot("v1", "a").unwrap().unwrap();
        assert_eq!((got.state.as_str(), got.size_bytes), ("ready", 4096));
        assert_eq!(s.list_snapshots(Some("v1")).unwrap().len(), 1);
        assert_eq!(s.list_snapshots(None).unwrap().len(), 1);
        assert!(s.list_snapshots(Some("v2")).unwrap().is_empty());
        assert!(s.delete_snapshot("v1", "a").unwrap());
        assert!(!s.delete_snapshot("v1", "a").unwrap());
        let op = Operation {
            vm_id: "v1".into(),
            kind: "revert".into(),
            arg: "a".into(),
        };
        s.begin_operation(&op).unwrap();
        assert_eq!(s.operation("v1").unwrap(), Some(op));
        s.end_operation("v1").unwrap();
        assert_eq!(s.operation("v1").unwrap(), None);
    }
}
