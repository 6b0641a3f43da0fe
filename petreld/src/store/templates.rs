//! Templates and their versions in the database. `templates` holds each template's latest
//! version (what `GET /v1/templates` lists); `template_versions` holds every version, from 1.
//! A new version is written to both in one transaction.

use rusqlite::{params, OptionalExtension, Row};

use super::{is_unique_violation, json, to_json, Result, Store, StoreError};
use crate::model::Template;

/// Columns of both tables, in [`from_row`]'s order.
const COLUMNS: &str = "name, description, config, created_at, version";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Template> {
    Ok(Template {
        name: row.get(0)?,
        description: row.get(1)?,
        config: json(row, 2)?,
        created_at: row.get(3)?,
        version: row.get(4)?,
    })
}

/// `SELECT` of the latest versions (the `templates` row joined with its version number).
const LATEST: &str = "SELECT t.name, t.description, t.config, t.created_at, \
     (SELECT max(version) FROM template_versions v WHERE v.name = t.name) FROM templates t";

impl Store {
    /// Inserts a template as its version 1; a taken name is [`StoreError::Duplicate`].
    pub fn insert_template(&mut self, t: &Template) -> Result<()> {
        self.before_write();
        let result = self.insert_template_now(t);
        self.after_write(result)
    }

    fn insert_template_now(&mut self, t: &Template) -> Result<()> {
        let tx = self.conn.transaction()?;
        let res = tx.execute(
            "INSERT INTO templates (name, description, config, created_at) VALUES (?1,?2,?3,?4)",
            params![t.name, t.description, to_json(&t.config)?, t.created_at],
        );
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    kind: "template",
                    name: t.name.clone(),
                })
            }
            other => other?,
        };
        tx.execute(
            &format!("INSERT INTO template_versions ({COLUMNS}) VALUES (?1,?2,?3,?4,1)"),
            params![t.name, t.description, to_json(&t.config)?, t.created_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Adds the next version of template `t.name` (`None` when there is no such template);
    /// returns it with its number.
    pub fn add_template_version(&mut self, t: &Template) -> Result<Option<Template>> {
        self.before_write();
        let result = self.add_template_version_now(t);
        self.after_write(result)
    }

    fn add_template_version_now(&mut self, t: &Template) -> Result<Option<Template>> {
        let tx = self.conn.transaction()?;
        let last: Option<u32> = tx
            .query_row(
                "SELECT max(version) FROM template_versions WHERE name = ?1",
                [&t.name],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(last) = last else {
            return Ok(None);
        };
        let version = last + 1;
        let config = to_json(&t.config)?;
        tx.execute(
            &format!("INSERT INTO template_versions ({COLUMNS}) VALUES (?1,?2,?3,?4,?5)"),
            params![t.name, t.description, config, t.created_at, version],
        )?;
        tx.execute(
            "UPDATE templates SET description = ?2, config = ?3 WHERE name = ?1",
            params![t.name, t.description, config],
        )?;
        tx.commit()?;
        Ok(Some(Template {
            version,
            ..t.clone()
        }))
    }

    /// The latest version of template `name`.
    pub fn get_template(&self, name: &str) -> Result<Option<Template>> {
        Ok(self
            .conn
            .query_row(&format!("{LATEST} WHERE t.name = ?1"), [name], from_row)
            .optional()?)
    }

    /// Version `version` of template `name`.
    pub fn get_template_version(&self, name: &str, version: u32) -> Result<Option<Template>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM template_versions WHERE name = ?1 AND version = ?2"
                ),
                params![name, version],
                from_row,
            )
            .optional()?)
    }

    /// Every version of template `name`, oldest first (empty when there is none).
    pub fn list_template_versions(&self, name: &str) -> Result<Vec<Template>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM template_versions WHERE name = ?1 ORDER BY version"
        ))?;
        let rows = stmt.query_map([name], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every template's latest version, by name.
    pub fn list_templates(&self) -> Result<Vec<Template>> {
        let mut stmt = self.conn.prepare(&format!("{LATEST} ORDER BY t.name"))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes the template `name` with every version; false when there was none.
    pub fn delete_template(&mut self, name: &str) -> Result<bool> {
        self.before_write();
        let result = self.delete_template_now(name);
        self.after_write(result)
    }

    fn delete_template_now(&mut self, name: &str) -> Result<bool> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM template_versions WHERE name = ?1", [name])?;
        let n = tx.execute("DELETE FROM templates WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, description: &str) -> Template {
        Template {
            name: name.into(),
            description: Some(description.into()),
            config: serde_json::from_value(serde_json::json!({
                "payload": {"kernel": "/k"}
            }))
            .unwrap(),
            created_at: "2026-12-08T00:00:00Z".into(),
            version: 0,
        }
    }

    #[test]
    fn versions_count_up_and_the_latest_is_the_template() {
        let mut s = Store::in_memory().unwrap();
        s.insert_template(&template("web", "first")).unwrap();
        assert!(matches!(
            s.insert_template(&template("web", "again")),
            Err(StoreError::Duplicate { .. })
        ));
        let v2 = s.add_template_version(&template("web", "second")).unwrap();
        assert_eq!(v2.map(|t| t.version), Some(2));
        assert!(s
            .add_template_version(&template("none", "x"))
            .unwrap()
            .is_none());
        let latest = s.get_template("web").unwrap().unwrap();
        assert_eq!(
            (latest.version, latest.description.as_deref()),
            (2, Some("second"))
        );
        let first = s.get_template_version("web", 1).unwrap().unwrap();
        assert_eq!(first.description.as_deref(), Some("first"));
        assert!(s.get_template_version("web", 3).unwrap().is_none());
        assert_eq!(s.list_template_versions("web").unwrap().len(), 2);
        assert_eq!(s.list_templates().unwrap().len(), 1);
        assert!(s.delete_template("web").unwrap());
        assert!(s.list_template_versions("web").unwrap().is_empty());
        assert!(!s.delete_template("web").unwrap());
    }
}
