//! `petrelctl template versions NAME`, `template version NAME N` and
//! `template add-version NAME (FILE | --from-vm VM) [--description TEXT]`: a template's
//! versions (`/v1/templates/{name}/versions`).

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use petrel_http::Method;

use super::super::output::{scalar, table};
use super::super::transport::Api;
use super::super::{CtlError, Outcome, Result};
use super::run::encode;
use super::{render, Command, Words};

/// A template-version command.
#[derive(Debug, PartialEq, Eq)]
pub enum VersionCommand {
    /// `template versions NAME`.
    List(String),
    /// `template version NAME N`.
    Show(String, u32),
    /// `template add-version NAME (FILE | --from-vm VM) [--description TEXT]`.
    Add {
        /// The template.
        name: String,
        /// A JSON VmConfig (`-`: standard input).
        file: Option<PathBuf>,
        /// `--from-vm`: an existing VM's config.
        from_vm: Option<String>,
        /// `--description`.
        description: Option<String>,
    },
}

/// Parses `template VERB …` for the version verbs.
pub fn parse(verb: &str, rest: &[OsString]) -> Result<Command> {
    let cmd = format!("template {verb}");
    let split = |valued: &[&'static str]| Words::split(cmd.clone(), rest, valued, &[]);
    let c = match verb {
        "versions" => VersionCommand::List(split(&[])?.one("NAME")?),
        "version" => {
            let (name, n) = split(&[])?.two("NAME VERSION")?;
            let n =
                n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    CtlError::usage(format!("{cmd}: {n:?} is not a version number"))
                })?;
            VersionCommand::Show(name, n)
        }
        _ => {
            let w = split(&["--from-vm", "--description"])?;
            let (name, file) = if w.positional.len() == 2 {
                let (n, f) = w.two("NAME FILE")?;
                (n, Some(PathBuf::from(f)))
            } else {
                (w.one("NAME")?, None)
            };
            let from_vm = w.get("--from-vm");
            if file.is_some() == from_vm.is_some() {
                return Err(CtlError::usage(format!(
                    "{cmd}: give FILE (a VmConfig) or --from-vm VM"
                )));
            }
            VersionCommand::Add {
                name,
                file,
                from_vm,
                description: w.get("--description"),
            }
        }
    };
    Ok(Command::TemplateVersions(c))
}

fn call(api: &Api, route: &str, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
    let body = body.map(Value::to_string);
    Ok(api
        .call(route, method, path, body.as_deref().map(str::as_bytes), &[])?
        .json(route)?
        .unwrap_or(Value::Null))
}

/// Runs a template-version command.
pub fn execute(api: &Api, c: &VersionCommand) -> Result<Outcome> {
    let (v, text) = match c {
        VersionCommand::List(name) => {
            let path = format!("/v1/templates/{}/versions", encode(name));
            let v = call(api, "template versions", Method::Get, &path, None)?;
            let rows: Vec<Vec<String>> = v
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| {
                    ["version", "created_at", "description"]
                        .iter()
                        .map(|k| t.get(*k).map_or_else(|| "-".to_string(), scalar))
                        .collect()
                })
                .collect();
            let text = table(&["VERSION", "CREATED", "DESCRIPTION"], &rows);
            (v, text)
        }
        VersionCommand::Show(name, n) => {
            let path = format!("/v1/templates/{}/versions/{n}", encode(name));
            let v = call(api, "template version", Method::Get, &path, None)?;
            let text = render::template(&v);
            (v, text)
        }
        VersionCommand::Add {
            name,
            file,
            from_vm,
            description,
        } => {
            let mut body = Map::new();
            if let Some(f) = file {
                body.insert("config".into(), super::run::read_json(f)?);
            }
            if let Some(vm) = from_vm {
                body.insert("from_vm".into(), json!(vm));
            }
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            let path = format!("/v1/templates/{}/versions", encode(name));
            let body = Value::Object(body);
            let v = call(
                api,
                "template add-version",
                Method::Post,
                &path,
                Some(&body),
            )?;
            let text = format!(
                "template {name} version {} added\n",
                v.get("version").map(scalar).unwrap_or_default()
            );
            (v, text)
        }
    };
    Ok(Outcome {
        json: Some(v),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn version_commands_parse() {
        assert_eq!(
            parse("version", &words(&["web", "2"])).unwrap(),
            Command::TemplateVersions(VersionCommand::Show("web".into(), 2))
        );
        assert!(parse("version", &words(&["web", "0"])).is_err());
        assert_eq!(
            parse("add-version", &words(&["web", "--from-vm", "a"])).unwrap(),
            Command::TemplateVersions(VersionCommand::Add {
                name: "web".into(),
                file: None,
                from_vm: Some("a".into()),
                description: None,
            })
        );
        assert_eq!(
            parse(
                "add-version",
                &words(&["web", "c.json", "--description", "d"])
            )
            .unwrap(),
            Command::TemplateVersions(VersionCommand::Add {
                name: "web".into(),
                file: Some("c.json".into()),
                from_vm: None,
                description: Some("d".into()),
            })
        );
        assert!(parse("add-version", &words(&["web"])).is_err());
        assert!(parse("add-version", &words(&["web", "c.json", "--from-vm", "a"])).is_err());
    }
}
