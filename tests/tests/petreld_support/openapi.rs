//! The OpenAPI document as JSON: a parser for the plain YAML subset the documents under
//! docs/api/ keep to (block mappings and sequences, flow `{…}` and `[…]`, double-quoted and
//! plain scalars, full-line comments), the documented statuses of an operation, and a
//! validator of a JSON value against a schema (`$ref`, type, nullable, enum, required,
//! properties, additionalProperties, items, minimum, maximum, maxItems).
#![allow(dead_code)]

use serde_json::{Map, Number, Value};

/// Parses the YAML subset into JSON.
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .map(|l| (l.len() - l.trim_start().len(), l.trim_end()))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| (i, &l[i..]))
        .collect();
    let mut at = 0;
    let v = block(&lines, &mut at, 0)?;
    if at != lines.len() {
        return Err(format!("trailing content at {:?}", lines[at].1));
    }
    Ok(v)
}

fn block(lines: &[(usize, &str)], at: &mut usize, indent: usize) -> Result<Value, String> {
    let Some(&(_, first)) = lines.get(*at) else {
        return Ok(Value::Null);
    };
    if first == "-" || first.starts_with("- ") {
        let mut seq = Vec::new();
        while let Some(&(i, l)) = lines.get(*at) {
            if i != indent || !(l == "-" || l.starts_with("- ")) {
                break;
            }
            let item = l[1..].trim_start();
            if item.starts_with('{') || item.starts_with('[') || split_key(item).is_none() {
                *at += 1;
                seq.push(flow_all(item)?);
            } else {
                // "- key: value" then more keys indented under it.
                let inner = indent + (l.len() - item.len());
                let mut sub: Vec<(usize, &str)> = vec![(inner, item)];
                *at += 1;
                while let Some(&(i2, l2)) = lines.get(*at) {
                    if i2 < inner {
                        break;
                    }
                    sub.push((i2, l2));
                    *at += 1;
                }
                let mut j = 0;
                seq.push(block(&sub, &mut j, inner)?);
            }
        }
        return Ok(Value::Array(seq));
    }
    let mut map = Map::new();
    while let Some(&(i, l)) = lines.get(*at) {
        if i < indent {
            break;
        }
        if i > indent {
            return Err(format!("unexpected indent at {l:?}"));
        }
        let (key, rest) = split_key(l).ok_or_else(|| format!("not a key: {l:?}"))?;
        *at += 1;
        let value = if rest.is_empty() {
            match lines.get(*at) {
                Some(&(i2, _)) if i2 > indent => block(lines, at, i2)?,
                _ => Value::Null,
            }
        } else {
            flow_all(rest)?
        };
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

/// `key: rest` (key plain or double-quoted); `None` when the line is not a mapping entry.
fn split_key(l: &str) -> Option<(String, &str)> {
    if l.starts_with('"') {
        let mut p = Parser { s: l, at: 0 };
        let Value::String(k) = p.quoted().ok()? else {
            return None;
        };
        let rest = p.s[p.at..].strip_prefix(':')?;
        return Some((k, rest.trim()));
    }
    let colon = l
        .find(": ")
        .or_else(|| l.strip_suffix(':').map(|k| k.len()))?;
    let key = &l[..colon];
    if key.starts_with(['{', '[']) {
        return None;
    }
    Some((key.trim().to_string(), l[colon + 1..].trim()))
}

fn flow_all(s: &str) -> Result<Value, String> {
    let mut p = Parser { s, at: 0 };
    let v = p.value(false)?;
    p.ws();
    if p.at != s.len() {
        return Err(format!("trailing {:?}", &s[p.at..]));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.at..].chars().next()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: char) -> Result<(), String> {
        self.ws();
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {c:?} at {:?}", &self.s[self.at..]))
        }
    }

    fn value(&mut self, in_flow: bool) -> Result<Value, String> {
        self.ws();
        match self.peek() {
            Some('{') => {
                self.at += 1;
                let mut map = Map::new();
                loop {
                    self.ws();
                    if self.peek() == Some('}') {
                        self.at += 1;
                        return Ok(Value::Object(map));
                    }
                    let key = match self.peek() {
                        Some('"') => match self.quoted()? {
                            Value::String(k) => k,
                            _ => unreachable!(),
                        },
                        _ => {
                            let start = self.at;
                            while self.peek().is_some_and(|c| c != ':') {
                                self.at += 1;
                            }
                            self.s[start..self.at].trim().to_string()
                        }
                    };
                    self.eat(':')?;
                    map.insert(key, self.value(true)?);
                    self.ws();
                    if self.peek() == Some(',') {
                        self.at += 1;
                    }
                }
            }
            Some('[') => {
                self.at += 1;
                let mut seq = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(']') {
                        self.at += 1;
                        return Ok(Value::Array(seq));
                    }
                    seq.push(self.value(true)?);
                    self.ws();
                    if self.peek() == Some(',') {
                        self.at += 1;
                    }
                }
            }
            Some('"') => self.quoted(),
            _ => {
                let start = self.at;
                while let Some(c) = self.peek() {
                    if in_flow && matches!(c, ',' | '}' | ']') {
                        break;
                    }
                    self.at += c.len_utf8();
                }
                Ok(plain(self.s[start..self.at].trim()))
            }
        }
    }

    fn quoted(&mut self) -> Result<Value, String> {
        self.eat('"')?;
        let mut out = String::new();
        let mut chars = self.s[self.at..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(Value::String(out));
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated string".into())
    }
}

fn plain(s: &str) -> Value {
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" | "~" | "" => Value::Null,
        _ => {
            if let Ok(i) = s.parse::<i64>() {
                Value::Number(i.into())
            } else if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
                Value::Number(n)
            } else {
                Value::String(s.to_string())
            }
        }
    }
}

/// The document, with `$ref`s resolved on demand.
pub struct Doc(pub Value);

impl Doc {
    /// Follows `$ref` (only `#/…` pointers) until a value without one.
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => match self.0.pointer(r.trim_start_matches('#')) {
                    Some(t) => v = t,
                    None => panic!("dangling $ref {r}"),
                },
                None => return v,
            }
        }
        panic!("$ref loop");
    }

    /// The operation object of `method` (lower case) on the path template `path`.
    pub fn operation(&self, path: &str, method: &str) -> &Value {
        self.0["paths"][path]
            .get(method)
            .unwrap_or_else(|| panic!("{method} {path} is not documented"))
    }

    /// The documented statuses of an operation.
    pub fn statuses(&self, path: &str, method: &str) -> Vec<u16> {
        self.operation(path, method)["responses"]
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The JSON schema of an operation's `status` answer, if it documents a JSON body.
    pub fn response_schema(&self, path: &str, method: &str, status: u16) -> Option<&Value> {
        let r = &self.operation(path, method)["responses"][status.to_string()];
        let r = self.resolve(r);
        r.pointer("/content/application~1json/schema")
            .map(|s| self.resolve(s))
    }

    /// A component schema by name, resolved.
    pub fn schema(&self, name: &str) -> &Value {
        let s = &self.0["components"]["schemas"][name];
        assert!(!s.is_null(), "no schema {name}");
        self.resolve(s)
    }

    /// Why `v` does not match `schema` (at `at`), if it does not.
    pub fn check(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = self.resolve(schema);
        if v.is_null() {
            return if s["nullable"] == true || s.get("type").is_none() {
                Ok(())
            } else {
                Err(format!("{at}: null where {} is wanted", s["type"]))
            };
        }
        if let Some(t) = s["type"].as_str() {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                _ => true,
            };
            if !ok {
                return Err(format!("{at}: {v} is not {t}"));
            }
        }
        if let Some(e) = s["enum"].as_array() {
            if !e.contains(v) {
                return Err(format!("{at}: {v} not in {e:?}"));
            }
        }
        if let (Some(min), Some(n)) = (s["minimum"].as_f64(), v.as_f64()) {
            if n < min {
                return Err(format!("{at}: {n} < minimum {min}"));
            }
        }
        if let (Some(max), Some(n)) = (s["maximum"].as_f64(), v.as_f64()) {
            if n > max {
                return Err(format!("{at}: {n} > maximum {max}"));
            }
        }
        if let Some(obj) = v.as_object() {
            for r in s["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !obj.contains_key(r) {
                    return Err(format!("{at}: required field {r:?} missing"));
                }
            }
            let props = s["properties"].as_object();
            for (k, fv) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.check(ps, fv, &format!("{at}.{k}"))?,
                    None => match &s["additionalProperties"] {
                        Value::Bool(false) => return Err(format!("{at}: extra field {k:?}")),
                        Value::Object(_) => {
                            self.check(&s["additionalProperties"], fv, &format!("{at}.{k}"))?
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Some(items) = v.as_array() {
            if let Some(max) = s["maxItems"].as_u64() {
                if items.len() as u64 > max {
                    return Err(format!("{at}: {} items > maxItems {max}", items.len()));
                }
            }
            if s.get("items").is_some() {
                for (i, item) in items.iter().enumerate() {
                    self.check(&s["items"], item, &format!("{at}[{i}]"))?;
                }
            }
        }
        Ok(())
    }
}

#[test]
fn parses_the_subset() {
    let v = parse_yaml(
        "# c\na:\n  b: 1\n  \"200\":\n    d: \"x: \\\"y\\\"\"\n  l:\n    - {n: p, s: {t: [a, b]}}\n    - k: v\n      m: true\n",
    )
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"a": {"b": 1, "200": {"d": "x: \"y\""},
            "l": [{"n": "p", "s": {"t": ["a", "b"]}}, {"k": "v", "m": true}]}})
    );
}
