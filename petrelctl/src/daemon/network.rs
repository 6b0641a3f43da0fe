//! `petrelctl network create|list|show|delete`: petreld's networks (`/v1/networks`), parsed,
//! sent and shown for people.

use std::ffi::OsString;

use serde_json::{json, Map, Value};

use petrel_http::Method;

use super::super::output::{scalar, table, Fields};
use super::super::transport::Api;
use super::super::{CtlError, Outcome, Result};
use super::run::encode;
use super::{Command, Words};

/// A network command.
#[derive(Debug, PartialEq, Eq)]
pub enum NetworkCommand {
    /// `network create NAME --type T [--subnet CIDR] [--gateway IP] [--dhcp-range A-B]
    /// [--bridge BR]`.
    Create {
        /// Name.
        name: String,
        /// `nat`, `isolated` or `bridged`.
        kind: String,
        /// `--subnet`.
        subnet: Option<String>,
        /// `--gateway`.
        gateway: Option<String>,
        /// `--dhcp-range START-END`.
        range: Option<(String, String)>,
        /// `--bridge`.
        bridge: Option<String>,
    },
    /// `network list`.
    List,
    /// `network show NAME`.
    Show(String),
    /// `network delete NAME`.
    Delete(String),
}

/// Parses `network VERB …`.
pub fn parse(verb: &str, rest: &[OsString]) -> Result<Command> {
    let cmd = format!("network {verb}");
    let split = |valued: &[&'static str]| Words::split(cmd.clone(), rest, valued, &[]);
    let c = match verb {
        "create" => {
            let w = split(&[
                "--type",
                "--subnet",
                "--gateway",
                "--dhcp-range",
                "--bridge",
            ])?;
            let kind = w
                .get("--type")
                .ok_or_else(|| CtlError::usage(format!("{cmd}: --type is required")))?;
            let range = w
                .get("--dhcp-range")
                .map(|r| match r.split_once('-') {
                    Some((a, b)) if !a.is_empty() && !b.is_empty() => {
                        Ok((a.to_string(), b.to_string()))
                    }
                    _ => Err(CtlError::usage(format!(
                        "{cmd}: --dhcp-range {r:?}: expected START-END"
                    ))),
                })
                .transpose()?;
            NetworkCommand::Create {
                name: w.one("NAME")?,
                kind,
                subnet: w.get("--subnet"),
                gateway: w.get("--gateway"),
                range,
                bridge: w.get("--bridge"),
            }
        }
        "list" => {
            split(&[])?.none()?;
            NetworkCommand::List
        }
        "show" | "get" => NetworkCommand::Show(split(&[])?.one("NAME")?),
        "delete" => NetworkCommand::Delete(split(&[])?.one("NAME")?),
        _ => return Err(CtlError::usage(format!("unknown command '{cmd}'"))),
    };
    Ok(Command::Network(c))
}

/// `--net network=N[,ip=A,mac=M,vlan=V,id=I]` (or `bridge=B`) as a `net` entry of a create
/// request.
pub fn net_spec(text: &str) -> Result<Value> {
    let mut entry = Map::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CtlError::usage(format!(
                "vm create: --net {text:?}: {pair:?} is not key=value"
            )));
        };
        let value = match k {
            "network" | "bridge" | "ip" | "mac" | "id" => json!(v),
            "vlan" => json!(v.parse::<u16>().map_err(|_| {
                CtlError::usage(format!(
                    "vm create: --net {text:?}: vlan {v:?} is not a number"
                ))
            })?),
            _ => {
                return Err(CtlError::usage(format!(
                    "vm create: --net {text:?}: unknown key {k:?} (network, bridge, ip, mac, \
                     vlan, id)"
                )))
            }
        };
        entry.insert(k.to_string(), value);
    }
    if !entry.contains_key("network") && !entry.contains_key("bridge") {
        return Err(CtlError::usage(format!(
            "vm create: --net {text:?}: give network=NAME or bridge=NAME"
        )));
    }
    Ok(Value::Object(entry))
}

fn call(api: &Api, route: &str, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
    let body = body.map(Value::to_string);
    Ok(api
        .call(route, method, path, body.as_deref().map(str::as_bytes), &[])?
        .json(route)?
        .unwrap_or(Value::Null))
}

/// Runs a network command.
pub fn execute(api: &Api, c: &NetworkCommand) -> Result<Outcome> {
    let (json, text) = match c {
        NetworkCommand::Create {
            name,
            kind,
            subnet,
            gateway,
            range,
            bridge,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("type".into(), json!(kind));
            for (k, v) in [("subnet", subnet), ("gateway", gateway), ("bridge", bridge)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if let Some((start, end)) = range {
                body.insert("dhcp_range".into(), json!({"start": start, "end": end}));
            }
            let route = "network create";
            let v = call(
                api,
                route,
                Method::Post,
                "/v1/networks",
                Some(&Value::Object(body)),
            )?;
            let text = format!("network {name} created (bridge {})\n", field(&v, "/bridge"));
            (v, text)
        }
        NetworkCommand::List => {
            let v = call(api, "network list", Method::Get, "/v1/networks", None)?;
            let text = list_table(&v);
            (v, text)
        }
        NetworkCommand::Show(name) => {
            let path = format!("/v1/networks/{}", encode(name));
            let v = call(api, "network show", Method::Get, &path, None)?;
            let text = show(&v);
            (v, text)
        }
        NetworkCommand::Delete(name) => {
            let path = format!("/v1/networks/{}", encode(name));
            call(api, "network delete", Method::Delete, &path, None)?;
            return Ok(Outcome {
                json: None,
                text: format!("network {name} deleted\n"),
            });
        }
    };
    Ok(Outcome {
        json: Some(json),
        text,
    })
}

fn field(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => "-".to_string(),
        Some(x) => scalar(x),
    }
}

fn count(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_array)
        .map_or_else(|| "-".to_string(), |a| a.len().to_string())
}

/// `network list`.
pub fn list_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("items")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|n| {
            vec![
                field(n, "/name"),
                field(n, "/type"),
                field(n, "/bridge"),
                field(n, "/subnet"),
                count(n, "vms"),
                count(n, "leases"),
                field(n, "/state"),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no networks\n".to_string();
    }
    table(
        &["NAME", "TYPE", "BRIDGE", "SUBNET", "VMS", "LEASES", "STATE"],
        &rows,
    )
}

/// `network show`.
pub fn show(n: &Value) -> String {
    let mut f = Fields::new();
    for key in [
        "name",
        "type",
        "bridge",
        "subnet",
        "gateway",
        "state",
        "created_at",
    ] {
        if n.get(key).is_some() {
            f.push(key, field(n, &format!("/{key}")));
        }
    }
    if n.get("dhcp_range").is_some() {
        f.push(
            "dhcp range",
            format!(
                "{} - {}",
                field(n, "/dhcp_range/start"),
                field(n, "/dhcp_range/end")
            ),
        );
    }
    if n.get("dnsmasq").is_some() {
        f.push(
            "dnsmasq",
            format!(
                "pid {}, running {}, restarts {}",
                field(n, "/dnsmasq/pid"),
                field(n, "/dnsmasq/running"),
                field(n, "/dnsmasq/restarts")
            ),
        );
    }
    let vms: Vec<String> = n
        .get("vms")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(scalar).collect())
        .unwrap_or_default();
    f.push(
        "vms",
        if vms.is_empty() {
            "-".into()
        } else {
            vms.join(", ")
        },
    );
    let mut out = f.render();
    let leases: Vec<Vec<String>> = n
        .get("leases")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|l| {
            vec![
                field(l, "/ip"),
                field(l, "/mac"),
                field(l, "/hostname"),
                field(l, "/expires"),
            ]
        })
        .collect();
    if !leases.is_empty() {
        out.push('\n');
        out.push_str(&table(&["IP", "MAC", "HOSTNAME", "EXPIRES"], &leases));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses() {
        let c = parse(
            "create",
            &words(&[
                "n1",
                "--type",
                "nat",
                "--subnet=10.0.0.0/24",
                "--dhcp-range",
                "10.0.0.5-10.0.0.9",
            ]),
        )
        .unwrap();
        let Command::Network(NetworkCommand::Create { name, range, .. }) = c else {
            panic!()
        };
        assert_eq!(name, "n1");
        assert_eq!(range, Some(("10.0.0.5".into(), "10.0.0.9".into())));
        assert!(parse("create", &words(&["n1"])).is_err());
        assert!(parse(
            "create",
            &words(&["n1", "--type", "nat", "--dhcp-range", "x"])
        )
        .is_err());
        assert!(parse("show", &words(&[])).is_err());
        assert!(parse("frob", &words(&[])).is_err());
        assert_eq!(
            net_spec("network=n1,ip=10.0.0.5,vlan=7").unwrap(),
            json!({"network": "n1", "ip": "10.0.0.5", "vlan": 7})
        );
        for bad in [
            "ip=10.0.0.5",
            "network=n1,vlan=x",
            "network=n1,colour=red",
            "network",
        ] {
            assert!(net_spec(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("delete", &words(&["n1"])).unwrap(),
            Command::Network(NetworkCommand::Delete("n1".into()))
        );
    }

    #[test]
    fn renders() {
        let v = json!({"items": [{"name": "n1", "type": "nat", "bridge": "pb-n1",
            "subnet": "10.0.0.0/24", "vms": ["web"], "leases": [], "state": "active"}]});
        let t = list_table(&v);
        assert!(t.contains("pb-n1") && t.contains("10.0.0.0/24"), "{t}");
        assert_eq!(list_table(&json!({"items": []})), "no networks\n");
        let s = show(
            &json!({"name": "n1", "vms": [], "leases": [{"ip": "10.0.0.5",
            "mac": "02:00:00:00:00:01", "hostname": "*", "expires": 1}]}),
        );
        assert!(s.contains("10.0.0.5") && s.contains("vms"), "{s}");
    }
}
