//! A small ordered document tree, written as YAML or JSON.
//!
//! Kubernetes manifests are read by people: keys keep the order they are written in
//! (`apiVersion`, `kind`, `metadata`, `spec`; a container's `name` first), which serde_json's
//! sorted maps would lose. Strings that YAML could read as something else (`"2"`, `yes`, `null`,
//! `a: b`) are written as JSON strings, which YAML reads as the same strings.

/// A value of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
    Str(String),
    Int(i64),
}

impl Node {
    /// A map from `(key, value)` pairs, in order.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Node)>) -> Node {
        Node::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    /// The document as YAML, one value per line, two-space indents, ending in a newline.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Node::Map(entries) if !entries.is_empty() => write_map(&mut out, entries, 0),
            Node::List(items) if !items.is_empty() => write_list(&mut out, items, 0),
            scalar => {
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
        out
    }

    /// The document as indented JSON, ending in a newline.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        write_json(&mut out, self, 0);
        out.push('\n');
        out
    }
}

fn indent(out: &mut String, level: usize) {
    out.extend(std::iter::repeat_n(' ', level * 2));
}

fn write_map(out: &mut String, entries: &[(String, Node)], level: usize) {
    for (i, (key, value)) in entries.iter().enumerate() {
        // The first key of a list item follows its `- ` on the same line.
        if i > 0 || !out.ends_with("- ") {
            indent(out, level);
        }
        out.push_str(&scalar(key));
        out.push(':');
        match value {
            Node::Map(inner) if !inner.is_empty() => {
                out.push('\n');
                write_map(out, inner, level + 1);
            }
            Node::List(items) if !items.is_empty() => {
                out.push('\n');
                write_list(out, items, level);
            }
            other => {
                out.push(' ');
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

/// List items sit at their key's indent, as `kubectl` writes them.
fn write_list(out: &mut String, items: &[Node], level: usize) {
    for item in items {
        indent(out, level);
        out.push_str("- ");
        match item {
            Node::Map(entries) if !entries.is_empty() => write_map(out, entries, level + 1),
            Node::List(inner) if !inner.is_empty() => {
                out.push('\n');
                write_list(out, inner, level + 1);
            }
            other => {
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

/// A scalar, or an empty map or list, on one line.
fn inline(node: &Node) -> String {
    match node {
        Node::Str(s) => scalar(s),
        Node::Int(n) => n.to_string(),
        Node::Map(_) => "{}".into(),
        Node::List(_) => "[]".into(),
    }
}

/// A string as a plain YAML scalar when it cannot be read as anything else, else JSON-quoted.
fn scalar(s: &str) -> String {
    if is_plain(s) { s.to_owned() } else { quote(s) }
}

fn is_plain(s: &str) -> bool {
    // YAML 1.1 reads these (in any case) as booleans or null.
    const WORDS: [&str; 9] = ["true", "false", "yes", "no", "on", "off", "y", "n", "null"];
    let Some(first) = s.chars().next() else { return false };
    (first.is_ascii_alphabetic() || first == '/' || first == '_')
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@+=".contains(c))
        && !s.ends_with(':')
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn write_json(out: &mut String, node: &Node, level: usize) {
    match node {
        Node::Str(s) => out.push_str(&quote(s)),
        Node::Int(n) => out.push_str(&n.to_string()),
        Node::Map(entries) if entries.is_empty() => out.push_str("{}"),
        Node::List(items) if items.is_empty() => out.push_str("[]"),
        Node::Map(entries) => {
            out.push_str("{\n");
            for (i, (key, value)) in entries.iter().enumerate() {
                indent(out, level + 1);
                out.push_str(&quote(key));
                out.push_str(": ");
                write_json(out, value, level + 1);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            indent(out, level);
            out.push('}');
        }
        Node::List(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                indent(out, level + 1);
                write_json(out, item, level + 1);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            indent(out, level);
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Node {
        Node::map([
            ("apiVersion", Node::str("v1")),
            ("kind", Node::str("Pod")),
            (
                "spec",
                Node::map([
                    (
                        "containers",
                        Node::List(vec![Node::map([
                            ("name", Node::str("worker")),
                            ("image", Node::str("127.0.0.1:5000/a/b:1@sha256:00")),
                            ("env", Node::List(vec![Node::map([("name", Node::str("A")), ("value", Node::str("a: b"))])])),
                            ("resources", Node::map([("limits", Node::map([("cpu", Node::str("2"))]))])),
                            ("args", Node::List(vec![Node::str("yes"), Node::str("--x")])),
                        ])]),
                    ),
                    ("replicas", Node::Int(3)),
                    ("empty", Node::map::<String>([])),
                ]),
            ),
        ])
    }

    #[test]
    fn yaml_keeps_order_and_quotes_what_could_be_misread() {
        let expected = r#"apiVersion: v1
kind: Pod
spec:
  containers:
  - name: worker
    image: "127.0.0.1:5000/a/b:1@sha256:00"
    env:
    - name: A
      value: "a: b"
    resources:
      limits:
        cpu: "2"
    args:
    - "yes"
    - "--x"
  replicas: 3
  empty: {}
"#;
        assert_eq!(doc().to_yaml(), expected);
    }

    #[test]
    fn json_is_the_same_document() {
        let json: serde_json::Value = serde_json::from_str(&doc().to_json()).expect("valid JSON");
        assert_eq!(json["spec"]["containers"][0]["env"][0]["value"], "a: b");
        assert_eq!(json["spec"]["replicas"], 3);
        assert!(doc().to_json().find("\"apiVersion\"") < doc().to_json().find("\"kind\""));
    }
}
