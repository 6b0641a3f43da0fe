//! The `networks` table: one row per network, its [`Network`] as JSON.

use rusqlite::{params, OptionalExtension};

use super::Network;
use crate::store::{Result, Store, StoreError};

fn decode(text: &str) -> Result<Network> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("network: {e}")))
}

fn encode(net: &Network) -> Result<String> {
    serde_json::to_string(net).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Inserts a network; a taken name is [`StoreError::Duplicate`].
    pub fn insert_network(&mut self, net: &Network) -> Result<()> {
        let spec = encode(net)?;
        self.write_with(|conn| {
            let res = conn.execute(
                "INSERT INTO networks (name, spec, created_at) VALUES (?1, ?2, ?3)",
                params![net.name, spec, net.created_at],
            );
            match res {
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    Err(StoreError::Duplicate {
                        kind: "network",
                        name: net.name.clone(),
                    })
                }
                other => other.map(drop).map_err(Into::into),
            }
        })
    }

    /// Replaces the stored network of the same name.
    pub fn update_network(&mut self, net: &Network) -> Result<()> {
        let spec = encode(net)?;
        self.write_with(|conn| {
            let n = conn.execute(
                "UPDATE networks SET spec = ?2 WHERE name = ?1",
                params![net.name, spec],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "network",
                    key: net.name.clone(),
                });
            }
            Ok(())
        })
    }

    /// The network `name`.
    pub fn get_network(&self, name: &str) -> Result<Option<Network>> {
        let text: Option<String> = self
            .reader()
            .query_row("SELECT spec FROM networks WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        text.as_deref().map(decode).transpose()
    }

    /// Every network, by name.
    pub fn all_networks(&self) -> Result<Vec<Network>> {
        let mut stmt = self
            .reader()
            .prepare("SELECT spec FROM networks ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for text in rows {
            out.push(decode(&text?)?);
        }
        Ok(out)
    }

    /// Removes network `name`.
    pub fn delete_network(&mut self, name: &str) -> Result<()> {
        self.write_with(|conn| {
            conn.execute("DELETE FROM networks WHERE name = ?1", [name])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{plan, CreateNetwork, NetworkKind, NetworkState};
    use super::*;

    #[test]
    fn round_trip() {
        let mut store = Store::in_memory().unwrap();
        let req = CreateNetwork {
            name: "n1".into(),
            kind: NetworkKind::Nat,
            subnet: Some("10.5.0.0/24".into()),
            gateway: None,
            dhcp_range: None,
            bridge: None,
        };
        let mut net = plan(&req, "t".into()).unwrap();
        store.insert_network(&net).unwrap();
        assert!(matches!(
            store.insert_network(&net),
            Err(StoreError::Duplicate { .. })
        ));
        net.state = NetworkState::Deleting;
        store.update_network(&net).unwrap();
        assert_eq!(store.get_network("n1").unwrap(), Some(net.clone()));
        assert_eq!(store.all_networks().unwrap(), vec![net]);
        store.delete_network("n1").unwrap();
        assert_eq!(store.get_network("n1").unwrap(), None);
    }
}
