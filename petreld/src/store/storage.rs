//! Storage pools and volumes in the database.

use rusqlite::{params, OptionalExtension, Row};

use super::{is_unique_violation, Result, Store, StoreError};
use crate::storage::{Pool, VolumeRecord};

const VOLUME_COLUMNS: &str = "pool, name, format, capacity, backing, created_at";

fn pool_from_row(row: &Row<'_>) -> rusqlite::Result<Pool> {
    Ok(Pool {
        name: row.get(0)?,
        path: row.get::<_, String>(1)?.into(),
        created_at: row.get(2)?,
    })
}

fn volume_from_row(row: &Row<'_>) -> rusqlite::Result<VolumeRecord> {
    Ok(VolumeRecord {
        pool: row.get(0)?,
        name: row.get(1)?,
        format: super::parse(row, 2, "volume format")?,
        capacity: row.get::<_, i64>(3)? as u64,
        backing: row.get(4)?,
        created_at: row.get(5)?,
    })
}

impl Store {
    /// Inserts a pool; a taken name or path is [`StoreError::Duplicate`].
    pub fn insert_pool(&mut self, p: &Pool) -> Result<()> {
        self.before_write();
        let res = self.conn.execute(
            "INSERT INTO pools (name, path, created_at) VALUES (?1, ?2, ?3)",
            params![p.name, p.path.to_string_lossy(), p.created_at],
        );
        let result = match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                kind: "pool (or its path)",
                name: p.name.clone(),
            }),
            other => other.map(|_| ()).map_err(Into::into),
        };
        self.after_write(result)
    }

    /// The pool `name`.
    pub fn get_pool(&self, name: &str) -> Result<Option<Pool>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, path, created_at FROM pools WHERE name = ?1",
                [name],
                pool_from_row,
            )
            .optional()?)
    }

    /// Every pool, by name.
    pub fn list_pools(&self) -> Result<Vec<Pool>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, path, created_at FROM pools ORDER BY name")?;
        let rows = stmt.query_map([], pool_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes the pool `name` (the caller checked it has no volumes).
    pub fn delete_pool(&mut self, name: &str) -> Result<bool> {
        self.before_write();
        let result = self
            .conn
            .execute("DELETE FROM pools WHERE name = ?1", [name])
            .map(|n| n > 0)
            .map_err(Into::into);
        self.after_write(result)
    }

    /// Inserts a volume; a taken name in its pool is [`StoreError::Duplicate`].
    pub fn insert_volume(&mut self, v: &VolumeRecord) -> Result<()> {
        self.before_write();
        let res = self.conn.execute(
            &format!("INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6)"),
            params![
                v.pool,
                v.name,
                v.format.as_str(),
                v.capacity as i64,
                v.backing,
                v.created_at
            ],
        );
        let result = match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                kind: "volume",
                name: format!("{}/{}", v.pool, v.name),
            }),
            other => other.map(|_| ()).map_err(Into::into),
        };
        self.after_write(result)
    }

    /// Rewrites a volume's format, capacity and backing (resize, convert).
    pub fn update_volume(&mut self, v: &VolumeRecord) -> Result<()> {
        self.before_write();
        let result = self
            .conn
            .execute(
                "UPDATE volumes SET format = ?3, capacity = ?4, backing = ?5 \
                 WHERE pool = ?1 AND name = ?2",
                params![
                    v.pool,
                    v.name,
                    v.format.as_str(),
                    v.capacity as i64,
                    v.backing
                ],
            )
            .map(|_| ())
            .map_err(Into::into);
        self.after_write(result)
    }

    /// The volume `pool/name`.
    pub fn get_volume(&self, pool: &str, name: &str) -> Result<Option<VolumeRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE pool = ?1 AND name = ?2"),
                [pool, name],
                volume_from_row,
            )
            .optional()?)
    }

    /// The volumes of `pool` (every pool's when `None`), by pool and name.
    pub fn list_volumes(&self, pool: Option<&str>) -> Result<Vec<VolumeRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE ?1 IS NULL OR pool = ?1 \
             ORDER BY pool, name"
        ))?;
        let rows = stmt.query_map([pool], volume_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes the volume `pool/name`.
    pub fn delete_volume(&mut self, pool: &str, name: &str) -> Result<bool> {
        self.before_write();
        let result = self
            .conn
            .execute(
                "DELETE FROM volumes WHERE pool = ?1 AND name = ?2",
                [pool, name],
            )
            .map(|n| n > 0)
            .map_err(Into::into);
        self.after_write(result)
    }
}
