//! kubectl's `-o jsonpath=TEMPLATE`: text with `{...}` actions, each a JSONPath query
//! (`{.items[*].metadata.name}`), a string literal (`{"\n"}`), or `{range QUERY}` ...
//! `{end}`, which renders its body once per node the query selects, with that node as `$`.
//!
//! Queries are evaluated by `serde_json_path` (RFC 9535); kubectl's leading `.` stands for
//! `$.`, and its filters (`[?(@.name=="db")]`) are RFC filters already. As with kubectl's
//! default `--allow-missing-template-keys`, a query that selects nothing prints nothing;
//! several nodes print separated by spaces; strings print bare, other values as JSON.

use std::fmt::Write as _;

use serde_json::Value;
use serde_json_path::JsonPath;

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template that does not parse, naming what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid jsonpath template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Query(JsonPath),
    Range(JsonPath, Vec<Part>),
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Template {}

impl std::str::FromStr for Template {
    type Err = TemplateError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| TemplateError {
            template: source.to_owned(),
            reason,
        };
        // The body being built, and the ranges opened around it.
        let mut stack: Vec<(Option<JsonPath>, Vec<Part>)> = vec![(None, Vec::new())];
        let mut rest = source;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                push(&mut stack, Part::Text(rest.to_owned()));
                break;
            };
            if open > 0 {
                push(&mut stack, Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = action_end(after).ok_or_else(|| fail("a `{` is not closed".into()))?;
            let action = after[..close].trim();
            rest = &after[close + 1..];
            if let Some(literal) = action.strip_prefix('"') {
                let literal = literal
                    .strip_suffix('"')
                    .ok_or_else(|| fail(format!("{{{action}}}: the string is not closed")))?;
                push(&mut stack, Part::Text(unescape(literal)));
            } else if let Some(query) = action.strip_prefix("range ") {
                stack.push((Some(query_of(query.trim()).map_err(fail)?), Vec::new()));
            } else if action == "end" {
                let (Some(query), body) = stack
                    .pop()
                    .ok_or_else(|| fail("`{end}` without `{range}`".into()))?
                else {
                    return Err(fail("`{end}` without `{range}`".into()));
                };
                push(&mut stack, Part::Range(query, body));
            } else {
                push(&mut stack, Part::Query(query_of(action).map_err(fail)?));
            }
        }
        match stack.pop() {
            Some((None, parts)) if stack.is_empty() => Ok(Template {
                source: source.to_owned(),
                parts,
            }),
            _ => Err(fail("a `{range}` has no `{end}`".into())),
        }
    }
}

impl Template {
    /// The template applied to `value` (the object, or the `List`, that `-o json` prints).
    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        render(&self.parts, value, &mut out);
        out
    }
}

fn render(parts: &[Part], value: &Value, out: &mut String) {
    for part in parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Query(query) => {
                for (i, node) in query.query(value).all().into_iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    match node {
                        Value::String(s) => out.push_str(s),
                        other => {
                            let _ = write!(out, "{other}");
                        }
                    }
                }
            }
            Part::Range(query, body) => {
                for node in query.query(value).all() {
                    render(body, node, out);
                }
            }
        }
    }
}

fn push(stack: &mut [(Option<JsonPath>, Vec<Part>)], part: Part) {
    if let Some((_, parts)) = stack.last_mut() {
        parts.push(part);
    }
}

/// Where the action that starts `text` ends: the first `}` outside a quoted string.
fn action_end(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

/// A kubectl query (`.a.b`, `$.a`, `@.a`, `a.b`) as an RFC 9535 JSONPath. kubectl's names
/// may hold characters RFC shorthand does not (`.pod-template-hash`, `kubernetes\.io/name`
/// with its dots escaped): those become bracketed names (`['pod-template-hash']`).
fn query_of(action: &str) -> Result<JsonPath, String> {
    let path = action
        .strip_prefix('$')
        .or_else(|| action.strip_prefix('@'))
        .unwrap_or(action);
    JsonPath::parse(&rfc_path(path)).map_err(|e| format!("{{{action}}}: {e}"))
}

fn rfc_path(path: &str) -> String {
    let mut out = String::from("$");
    let chars: Vec<char> = path.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            // A bracketed selector, copied as written (filters may nest brackets).
            let mut depth = 0usize;
            let mut quote: Option<char> = None;
            while i < chars.len() {
                let c = chars[i];
                out.push(c);
                i += 1;
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '[') => depth += 1,
                    (None, ']') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            continue;
        }
        let mut descendant = false;
        if chars[i] == '.' {
            i += 1;
            if chars.get(i) == Some(&'.') {
                descendant = true;
                i += 1;
            }
        }
        let mut name = String::new();
        while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
            if chars[i] == '\\' && i + 1 < chars.len() {
                i += 1;
            }
            name.push(chars[i]);
            i += 1;
        }
        let lead = if descendant { ".." } else { "." };
        let shorthand = name == "*"
            || (!name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_alphanumeric() || c == '_'));
        if name.is_empty() {
            if descendant {
                out.push_str("..");
            }
        } else if shorthand {
            out.push_str(lead);
            out.push_str(&name);
        } else {
            if descendant {
                out.push_str("..");
            }
            let quoted = name.replace('\\', "\\\\").replace('\'', "\\'");
            out.push_str(&format!("['{quoted}']"));
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, value: &Value) -> String {
        template
            .parse::<Template>()
            .unwrap_or_else(|e| panic!("{e}"))
            .render(value)
    }

    #[test]
    fn kubectl_templates_render_like_kubectl() {
        let list = serde_json::json!({"kind": "List", "items": [
            {"metadata": {"name": "db", "labels": {"role": "db"}}, "status": {"podIP": "10.0.0.1"}},
            {"metadata": {"name": "web"}, "status": {"podIP": "10.0.0.2"}},
        ]});
        assert_eq!(render("{.items[*].metadata.name}", &list), "db web");
        assert_eq!(render("{.items[0].status.podIP}", &list), "10.0.0.1");
        assert_eq!(
            render(
                r#"{range .items[*]}{.metadata.name}{"\t"}{.status.podIP}{"\n"}{end}"#,
                &list
            ),
            "db\t10.0.0.1\nweb\t10.0.0.2\n"
        );
        assert_eq!(
            render(r#"{.items[?(@.metadata.name=="web")].status.podIP}"#, &list),
            "10.0.0.2"
        );
        assert_eq!(
            render("name: {.items[0].metadata.labels}", &list),
            r#"name: {"role":"db"}"#
        );
        assert_eq!(render("{.kind}/{.missing}", &list), "List/");
        let pod = serde_json::json!({"metadata": {"labels": {
            "pod-template-hash": "abc", "kubernetes.io/metadata.name": "x"}}});
        assert_eq!(render("{.metadata.labels.pod-template-hash}", &pod), "abc");
        assert_eq!(
            render(r"{.metadata.labels.kubernetes\.io/metadata\.name}", &pod),
            "x"
        );
        assert_eq!(render("{..pod-template-hash}", &pod), "abc");
        assert_eq!(
            rfc_path(".items[?(@.a[0]==\"x\")].b"),
            "$.items[?(@.a[0]==\"x\")].b"
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "{.items",
            "{range .items[*]}{.a}",
            "{end}",
            "{.items[}",
            r#"{"open}"#,
        ] {
            assert!(bad.parse::<Template>().is_err(), "{bad}");
        }
    }
}
