//! A reader for the plain subset of YAML the API documents are written in (petrel's and
//! Cloud Hypervisor's), so that tests can read them without a YAML library.

use serde_json::{json, Value};

/// Parses the subset of YAML the documents are written in: block mappings, `[a, b]` lists,
/// `{}`, one-line scalars (plain, "double" or 'single' quoted), `|` and `>` block scalars
/// and plain scalars continued on more-indented lines (kept as their lines joined with
/// spaces), full-line comments.
pub fn yaml(text: &str) -> Value {
    let mut lines: Vec<(usize, &str)> = Vec::new();
    for l in text.lines() {
        let (indent, l) = (l.len() - l.trim_start().len(), l.trim());
        match l.strip_prefix("- ") {
            // `- key: value` starts a mapping inside a list: split it in two lines.
            Some(rest) if rest.contains(": ") || rest.ends_with(':') => {
                lines.extend([(indent, "-"), (indent + 2, rest)]);
            }
            _ if !l.is_empty() && !l.starts_with('#') => lines.push((indent, l)),
            _ => {}
        }
    }
    let mut i = 0;
    let v = block(&lines, &mut i, 0);
    assert_eq!(i, lines.len(), "unparsed YAML from line {:?}", lines.get(i));
    v
}

fn block(lines: &[(usize, &str)], i: &mut usize, indent: usize) -> Value {
    let is_item = |l: &str| l == "-" || l.starts_with("- ");
    if is_item(lines[*i].1) {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].0 == indent && is_item(lines[*i].1) {
            let item = lines[*i].1;
            *i += 1;
            items.push(match item.strip_prefix("- ") {
                Some(scalar_item) => scalar(scalar_item),
                None => block(lines, i, indent + 2),
            });
        }
        return Value::Array(items);
    }
    let mut map = serde_json::Map::new();
    while *i < lines.len() && lines[*i].0 == indent {
        let line = lines[*i].1;
        let (key, rest) = match line.split_once(": ") {
            Some((k, r)) => (k, r.trim()),
            None => (
                line.strip_suffix(':')
                    .unwrap_or_else(|| panic!("bad line {line}")),
                "",
            ),
        };
        let key = unquote(key);
        *i += 1;
        let plain_text =
            |l: &str| !(l.contains(": ") || l.ends_with(':') || l.starts_with("- ") || l == "-");
        let continued =
            rest.is_empty() && *i < lines.len() && lines[*i].0 > indent && plain_text(lines[*i].1);
        let value = if matches!(rest, "|" | ">" | "|-" | ">-") || continued {
            let mut text = Vec::new();
            while *i < lines.len() && lines[*i].0 > indent {
                text.push(lines[*i].1);
                *i += 1;
            }
            Value::String(text.join(" "))
        } else if !rest.is_empty() {
            scalar(rest)
        } else if *i < lines.len() && lines[*i].0 > indent {
            block(lines, i, lines[*i].0)
        } else if *i < lines.len() && lines[*i].0 == indent && is_item(lines[*i].1) {
            block(lines, i, indent)
        } else {
            Value::Null
        };
        assert!(
            map.insert(key.clone(), value).is_none(),
            "duplicate key {key}"
        );
    }
    assert!(
        *i == lines.len() || lines[*i].0 < indent,
        "bad indent at {:?}",
        lines[*i]
    );
    Value::Object(map)
}

fn unquote(s: &str) -> String {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

fn scalar(s: &str) -> Value {
    if s == "{}" {
        return json!({});
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(scalar)
            .collect();
    }
    if s.starts_with('"') || s.starts_with('\'') {
        return Value::String(unquote(s));
    }
    match s {
        "true" => json!(true),
        "false" => json!(false),
        "null" | "~" => Value::Null,
        _ => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.to_string())),
    }
}
