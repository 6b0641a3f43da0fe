//! petreld's state in SQLite: VMs (here), templates and their versions ([`templates`]),
//! storage pools and volumes ([`storage`]), snapshots ([`snapshots`]), with a `schema_migrations` table. Every change is one transaction, written
//! before petreld acts on it.

mod storage;

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, ToSql, TransactionBehavior};

use super::events::VmEvent;
use super::model::{Cursor, ListQuery, SortKey, VmPage, VmRecord};
use super::reserve::{is_disk_full, Reserve};

mod snapshots;
mod templates;

pub use snapshots::{Operation, SnapshotRecord};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database")]
    Sqlite(#[from] rusqlite::Error),
    /// A unique name is taken.
    #[error("{kind} name {name:?} is already in use")]
    Duplicate {
        /// `VM` or `template`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// No such record.
    #[error("no {kind} {key:?}")]
    NotFound {
        /// `VM` or `template`.
        kind: &'static str,
        /// Id or name.
        key: String,
    },
    /// A stored value does not parse.
    #[error("stored {0} is corrupt")]
    Corrupt(String),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The migrations, in order; `schema_migrations` records which ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    desired_state TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    template TEXT,
    hypervisor_requested TEXT NOT NULL,
    hypervisor TEXT NOT NULL,
    restart TEXT NOT NULL,
    restart_count INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pid_start INTEGER,
    api_socket TEXT,
    exit_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX vms_created ON vms (created_at, id);
CREATE TABLE templates (
    name TEXT PRIMARY KEY,
    description TEXT,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE vms ADD COLUMN net TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
CREATE TABLE networks (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE volumes (
    pool TEXT NOT NULL REFERENCES pools (name),
    name TEXT NOT NULL,
    format TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    backing TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (pool, name)
);
"#,
    r#"
CREATE TABLE snapshots (
    vm_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    PRIMARY KEY (vm_id, name)
);
CREATE TABLE operations (
    vm_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    arg TEXT NOT NULL,
    started_at TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE vms ADD COLUMN meta TEXT NOT NULL DEFAULT '{}';
CREATE TABLE template_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
INSERT INTO template_versions (name, version, description, config, created_at)
    SELECT name, 1, description, config, created_at FROM templates;
"#,
];

/// Told of every state the store writes (see [`Store::set_observer`]).
type Observer = Box<dyn Fn(VmEvent) + Send>;

/// The database connection.
pub struct Store {
    conn: Connection,
    observer: Option<Observer>,
    /// Room kept on the state disk (none for an in-memory database).
    reserve: Option<Reserve>,
}

fn event(vm: &VmRecord, state: &str) -> VmEvent {
    VmEvent {
        id: vm.id.clone(),
        name: vm.name.clone(),
        state: state.to_string(),
        reason: vm.exit_reason.clone(),
    }
}

const VM_COLUMNS: &str = "id, name, labels, desired_state, state, config, template, \
    hypervisor_requested, hypervisor, restart, restart_count, pid, pid_start, api_socket, \
    exit_reason, created_at, updated_at, net, meta";

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn parse<T: std::str::FromStr>(row: &Row<'_>, idx: usize, what: &str) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    s.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("bad {what} {s:?}").into(),
        )
    })
}

fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn vm_from_row(row: &Row<'_>) -> rusqlite::Result<VmRecord> {
    Ok(VmRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        labels: json(row, 2)?,
        desired_state: parse(row, 3, "desired state")?,
        state: parse(row, 4, "state")?,
        config: json(row, 5)?,
        template: row.get(6)?,
        hypervisor_requested: parse(row, 7, "hypervisor")?,
        hypervisor: row.get(8)?,
        restart: parse(row, 9, "restart policy")?,
        restart_count: row.get(10)?,
        pid: row.get(11)?,
        pid_start: row.get::<_, Option<i64>>(12)?.map(|v| v as u64),
        api_socket: row.get(13)?,
        exit_reason: row.get(14)?,
        created_at: row.get(15)?,
        updated_at: row.get(16)?,
        net: json(row, 17)?,
        meta: json(row, 18)?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Opens (creating) `path` and runs pending migrations. On a full disk the reserve
    /// next to it ([`Reserve`]) is given up first, so that petreld can still start.
    pub fn open(path: &Path) -> Result<Store> {
        let reserve = Reserve::new(path.parent().unwrap_or(Path::new(".")));
        reserve.make_room();
        let mut store = match Connection::open(path)
            .map_err(StoreError::from)
            .and_then(Store::setup)
        {
            Err(StoreError::Sqlite(e)) if is_disk_full(&e) => {
                reserve.release();
                Store::setup(Connection::open(path)?)?
            }
            other => other?,
        };
        reserve.ensure();
        store.reserve = Some(reserve);
        Ok(store)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Store> {
        Store::setup(Connection::open_in_memory()?)
    }

    /// Whether the state disk is short of space (the reserve could not be kept): what would
    /// use more space should be refused. Puts the reserve back when there is room again.
    pub fn space_low(&self) -> bool {
        self.reserve.as_ref().is_some_and(|r| !r.ensure())
    }

    /// Before a write: gives up the reserve if the disk is nearly full.
    fn before_write(&self) {
        if let Some(r) = &self.reserve {
            r.make_room();
        }
    }

    /// After a failed write: a full disk releases the reserve, so that the next try has room.
    fn after_write<T>(&self, result: Result<T>) -> Result<T> {
        if let (Err(StoreError::Sqlite(e)), Some(r)) = (&result, &self.reserve) {
            if is_disk_full(e) {
                r.release();
            }
        }
        result
    }

    /// Runs `write` on the connection as one write (the disk reserve handled as for VMs).
    pub(crate) fn write_with<T>(
        &mut self,
        write: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        self.before_write();
        let result = write(&self.conn);
        self.after_write(result)
    }

    /// The connection, for reads.
    pub(crate) fn reader(&self) -> &Connection {
        &self.conn
    }

    fn setup(mut conn: Connection) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )?;
        let done: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![i as i64 + 1, super::model::now()],
            )?;
        }
        tx.commit()?;
        Ok(Store {
            conn,
            observer: None,
            reserve: None,
        })
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })?)
    }

    /// Inserts a new VM; a taken name is [`StoreError::Duplicate`].
    pub fn insert_vm(&mut self, vm: &VmRecord) -> Result<()> {
        self.before_write();
        let result = self.insert_vm_now(vm);
        self.after_write(result)
    }

    fn insert_vm_now(&mut self, vm: &VmRecord) -> Result<()> {
        let tx = self.conn.transaction()?;
        let sql = format!(
            "INSERT INTO vms ({VM_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
        );
        let res = tx.execute(&sql, vm_params(vm)?.as_slice().as_params().as_slice());
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    kind: "VM",
                    name: vm.name.clone(),
                })
            }
            other => other?,
        };
        tx.commit()?;
        self.notify(event(vm, vm.state.as_str()));
        Ok(())
    }

    /// Calls `f` with every state written from now on, in commit order: a new VM, a change
    /// of a VM's observed state, a deletion (`deleted`).
    pub fn set_observer(&mut self, f: impl Fn(VmEvent) + Send + 'static) {
        self.observer = Some(Box::new(f));
    }

    fn notify(&self, e: VmEvent) {
        if let Some(f) = &self.observer {
            f(e);
        }
    }

    /// The VM with this id, or else this name (an id always wins, so a name stored before
    /// names shaped like ids were refused cannot hide a VM).
    pub fn get_vm(&self, key: &str) -> Result<Option<VmRecord>> {
        let sql = format!(
            "SELECT {VM_COLUMNS} FROM vms WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
        );
        Ok(self.conn.query_row(&sql, [key], vm_from_row).optional()?)
    }

    /// Reads the VM `id`, applies `change` and writes it back, in one transaction; returns
    /// the new record. `updated_at` is set.
    pub fn modify_vm(&mut self, id: &str, change: impl FnOnce(&mut VmRecord)) -> Result<VmRecord> {
        self.before_write();
        let result = self.modify_vm_now(id, change);
        self.after_write(result)
    }

    fn modify_vm_now(&mut self, id: &str, change: impl FnOnce(&mut VmRecord)) -> Result<VmRecord> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1");
        let mut vm = tx
            .query_row(&sql, [id], vm_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "VM",
                key: id.to_string(),
            })?;
        let before = vm.state;
        change(&mut vm);
        vm.updated_at = super::model::now();
        let sql = "UPDATE vms SET name=?2, labels=?3, desired_state=?4, state=?5, config=?6, \
            template=?7, hypervisor_requested=?8, hypervisor=?9, restart=?10, restart_count=?11, \
            pid=?12, pid_start=?13, api_socket=?14, exit_reason=?15, created_at=?16, \
            updated_at=?17, net=?18, meta=?19 WHERE id=?1";
        tx.execute(sql, vm_params(&vm)?.as_slice().as_params().as_slice())?;
        tx.commit()?;
        if vm.state != before {
            self.notify(event(&vm, vm.state.as_str()));
        }
        Ok(vm)
    }

    /// Removes the VM `id`.
    pub fn delete_vm(&mut self, id: &str) -> Result<()> {
        self.before_write();
        let result = self.delete_vm_now(id);
        self.after_write(result)
    }

    fn delete_vm_now(&mut self, id: &str) -> Result<()> {
        let old = self.get_vm(id)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM snapshots WHERE vm_id = ?1", [id])?;
        tx.execute("DELETE FROM operations WHERE vm_id = ?1", [id])?;
        let n = tx.execute("DELETE FROM vms WHERE id = ?1", [id])?;
        tx.commit()?;
        if let (Some(vm), true) = (old, n > 0) {
            self.notify(event(&vm, "deleted"));
        }
        Ok(())
    }

    /// Every VM, by creation.
    pub fn all_vms(&self) -> Result<Vec<VmRecord>> {
        let sql = format!("SELECT {VM_COLUMNS} FROM vms ORDER BY created_at, id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], vm_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One page of VMs matching `q`.
    pub fn list_vms(&self, q: &ListQuery) -> Result<VmPage> {
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Box<dyn ToSql>> = Vec::new();
        let bind = |args: &mut Vec<Box<dyn ToSql>>, v: Box<dyn ToSql>| {
            args.push(v);
            format!("?{}", args.len())
        };
        if let Some(s) = q.state {
            let p = bind(&mut args, Box::new(s.as_str()));
            conds.push(format!("state = {p}"));
        }
        if let Some(n) = &q.name {
            let p = bind(&mut args, Box::new(n.clone()));
            conds.push(format!("name = {p}"));
        }
        if let Some(h) = &q.hypervisor {
            let p = bind(&mut args, Box::new(h.clone()));
            conds.push(format!("hypervisor = {p}"));
        }
        for (k, v) in &q.labels {
            let path = bind(&mut args, Box::new(format!("$.\"{k}\"")));
            let value = bind(&mut args, Box::new(v.clone()));
            conds.push(format!("json_extract(labels, {path}) = {value}"));
        }
        for t in &q.tags {
            let p = bind(&mut args, Box::new(t.clone()));
            conds.push(format!(
                "EXISTS (SELECT 1 FROM json_each(vms.meta, '$.tags') WHERE value = {p})"
            ));
        }
        if let Some(t) = &q.template {
            let p = bind(&mut args, Box::new(t.clone()));
            conds.push(format!("template = {p}"));
        }
        if let Some(d) = &q.description {
            let p = bind(&mut args, Box::new(d.clone()));
            conds.push(format!(
                "instr(coalesce(json_extract(meta, '$.description'), ''), {p}) > 0"
            ));
        }
        let column = match q.sort {
            SortKey::Name => "name",
            SortKey::Created => "created_at",
        };
        let (cmp, dir) = if q.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some(c) = &q.after {
            let key = bind(&mut args, Box::new(c.key.clone()));
            let id = bind(&mut args, Box::new(c.id.clone()));
            conds.push(format!(
                "({column} {cmp} {key} OR ({column} = {key} AND id {cmp} {id}))"
            ));
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let limit = bind(&mut args, Box::new(q.limit as i64 + 1));
        let sql = format!(
            "SELECT {VM_COLUMNS} FROM vms {filter} ORDER BY {column} {dir}, id {dir} LIMIT {limit}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let refs: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
        let mut items: Vec<VmRecord> = stmt
            .query_map(refs.as_slice(), vm_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        let next = if items.len() > q.limit {
            items.truncate(q.limit);
            items.last().map(|last| Cursor {
                sort: sort_name(q),
                key: match q.sort {
                    SortKey::Name => last.name.clone(),
                    SortKey::Created => last.created_at.clone(),
                },
                id: last.id.clone(),
            })
        } else {
            None
        };
        Ok(VmPage {
            items,
            next: next.map(|c| encode_cursor(&c)),
        })
    }
}

/// The bound values of a VM row, in `VM_COLUMNS` order.
fn vm_params(vm: &VmRecord) -> Result<Vec<Box<dyn ToSql>>> {
    Ok(vec![
        Box::new(vm.id.clone()),
        Box::new(vm.name.clone()),
        Box::new(to_json(&vm.labels)?),
        Box::new(vm.desired_state.as_str()),
        Box::new(vm.state.as_str()),
        Box::new(to_json(&vm.config)?),
        Box::new(vm.template.clone()),
        Box::new(vm.hypervisor_requested.as_str()),
        Box::new(vm.hypervisor.clone()),
        Box::new(vm.restart.as_str()),
        Box::new(vm.restart_count),
        Box::new(vm.pid),
        Box::new(vm.pid_start.map(|v| v as i64)),
        Box::new(vm.api_socket.clone()),
        Box::new(vm.exit_reason.clone()),
        Box::new(vm.created_at.clone()),
        Box::new(vm.updated_at.clone()),
        Box::new(to_json(&vm.net)?),
        Box::new(to_json(&vm.meta)?),
    ])
}

trait AsParams {
    fn as_params(&self) -> Vec<&dyn ToSql>;
}

impl AsParams for &[Box<dyn ToSql>] {
    fn as_params(&self) -> Vec<&dyn ToSql> {
        self.iter().map(|b| b.as_ref()).collect()
    }
}

/// `name`, `-name`, `created` or `-created`.
pub fn sort_name(q: &ListQuery) -> String {
    let field = match q.sort {
        SortKey::Name => "name",
        SortKey::Created => "created",
    };
    if q.descending {
        format!("-{field}")
    } else {
        field.to_string()
    }
}

/// A cursor as an opaque token (hex of its JSON).
pub fn encode_cursor(c: &Cursor) -> String {
    let json = serde_json::to_vec(c).unwrap_or_default();
    json.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cursor in a token, if it is one.
pub fn decode_cursor(token: &str) -> Option<Cursor> {
    if !token.len().is_multiple_of(2) || token.len() > 4096 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    serde_json::from_slice(&bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::super::model::*;
    use super::*;

    fn vm(id: &str, name: &str) -> VmRecord {
        VmRecord {
            id: id.into(),
            name: name.into(),
            labels: [("tier".to_string(), "web".to_string())].into(),
            desired_state: DesiredState::Stopped,
            state: ObservedState::Created,
            config: api::VmConfig::new("/k".into()),
            template: None,
            hypervisor_requested: HypervisorRequest::Auto,
            hypervisor: "kvm".into(),
            restart: RestartPolicy::Never,
            restart_count: 0,
            pid: None,
            pid_start: None,
            api_socket: None,
            exit_reason: None,
            net: Vec::new(),
            created_at: format!("2024-01-01T00:00:0{id}Z"),
            updated_at: now(),
            meta: VmMeta::default(),
        }
    }

    fn query() -> ListQuery {
        ListQuery {
            state: None,
            name: None,
            labels: vec![],
            hypervisor: None,
            tags: vec![],
            template: None,
            description: None,
            sort: SortKey::Name,
            descending: false,
            limit: 2,
            after: None,
        }
    }

    #[test]
    fn crud_and_pagination() {
        let mut s = Store::in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        for (i, n) in ["c", "a", "b", "d", "e"].iter().enumerate() {
            s.insert_vm(&vm(&i.to_string(), n)).unwrap();
        }
        assert!(matches!(
            s.insert_vm(&vm("9", "a")),
            Err(StoreError::Duplicate { .. })
        ));
        let mut q = query();
        let mut names = Vec::new();
        loop {
            let page = s.list_vms(&q).unwrap();
            names.extend(page.items.iter().map(|v| v.name.clone()));
            match page.next {
                Some(t) => q.after = Some(decode_cursor(&t).unwrap()),
                None => break,
            }
        }
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        let got = s
            .modify_vm("1", |v| v.state = ObservedState::Running)
            .unwrap();
        assert_eq!(got.state, ObservedState::Running);
        let mut q = query();
        q.state = Some(ObservedState::Running);
        q.labels = vec![("tier".into(), "web".into())];
        let page = s.list_vms(&q).unwrap();
        assert_eq!(page.items.len(), 1);
        q.labels = vec![("tier".into(), "db".into())];
        assert!(s.list_vms(&q).unwrap().items.is_empty());
        s.delete_vm("1").unwrap();
        assert!(s.get_vm("a").unwrap().is_none());
        assert_eq!(s.get_vm("c").unwrap().unwrap().id, "0");
    }

    #[test]
    fn vms_filter_by_tag_template_and_description() {
        let mut s = Store::in_memory().unwrap();
        let mut a = vm("1", "a");
        a.meta = VmMeta {
            description: Some("front end of the shop".into()),
            tags: vec!["prod".into(), "eu".into()],
            template_version: Some(2),
        };
        a.template = Some("web".into());
        let mut b = vm("2", "b");
        b.meta.tags = vec!["prod".into()];
        s.insert_vm(&a).unwrap();
        s.insert_vm(&b).unwrap();
        s.insert_vm(&vm("3", "c")).unwrap();
        let names = |q: &ListQuery| -> Vec<String> {
            s.list_vms(q)
                .unwrap()
                .items
                .into_iter()
                .map(|v| v.name)
                .collect()
        };
        let mut q = query();
        q.limit = 10;
        q.tags = vec!["prod".into()];
        assert_eq!(names(&q), ["a", "b"]);
        q.tags = vec!["prod".into(), "eu".into()];
        assert_eq!(names(&q), ["a"]);
        q.tags = vec![];
        q.template = Some("web".into());
        assert_eq!(names(&q), ["a"]);
        q.template = None;
        q.description = Some("shop".into());
        assert_eq!(names(&q), ["a"]);
        let back = s.get_vm("1").unwrap().unwrap();
        assert_eq!(back.meta, a.meta);
    }
}
