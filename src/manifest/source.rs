//! The Sandboxfile's text: parsed once with spans, seen as JSON by the schema validator, and
//! pointed back into by every diagnostic.
//!
//! JSON Schema speaks in JSON pointers (`/sandbox/worker/patch/2/mode`); users read lines and
//! columns. [`Spans`] maps the first to the second, so a check that runs long after parsing still
//! underlines the exact key or value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use serde_json::{Map, Number, Value};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Where a key and its value are in the text, by JSON pointer.
#[derive(Debug, Default)]
pub(super) struct Spans {
    by_pointer: HashMap<String, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Option<Range<usize>>,
    value: Range<usize>,
}

impl Spans {
    /// The value's span, or the nearest enclosing value's when the pointer names something absent
    /// (a missing key is reported on the table that should hold it).
    pub(super) fn value(&self, pointer: &str) -> Range<usize> {
        self.find(pointer).value
    }

    /// The key's span when the pointer names a key, else the value's.
    pub(super) fn key(&self, pointer: &str) -> Range<usize> {
        let entry = self.find(pointer);
        entry.key.unwrap_or(entry.value)
    }

    fn find(&self, mut pointer: &str) -> Entry {
        loop {
            if let Some(entry) = self.by_pointer.get(pointer) {
                return entry.clone();
            }
            match pointer.rfind('/') {
                Some(i) => pointer = &pointer[..i],
                None => return Entry { key: None, value: 0..0 },
            }
        }
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub(super) fn escape(segment: &str) -> Cow<'_, str> {
    if segment.contains(['~', '/']) {
        Cow::Owned(segment.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(segment)
    }
}

/// Converts a parsed document into the JSON the schema validator reads, recording spans.
pub(super) fn to_json(root: &Spanned<DeTable<'_>>) -> (Value, Spans) {
    let mut spans = Spans::default();
    spans.by_pointer.insert(String::new(), Entry { key: None, value: root.span() });
    let value = table(root.get_ref(), "", &mut spans);
    (value, spans)
}

fn table(table: &DeTable<'_>, pointer: &str, spans: &mut Spans) -> Value {
    let mut map = Map::new();
    for (key, item) in table {
        let child = format!("{pointer}/{}", escape(key.get_ref()));
        spans.by_pointer.insert(child.clone(), Entry { key: Some(key.span()), value: item.span() });
        map.insert(key.get_ref().to_string(), value(item.get_ref(), &child, spans));
    }
    Value::Object(map)
}

fn value(value: &DeValue<'_>, pointer: &str, spans: &mut Spans) -> Value {
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
            Ok(n) => Value::Number(n.into()),
            // Out of range for i64: no field of ours takes such a number; keep the text so the
            // schema reports a type error instead of msb inventing a value.
            Err(_) => Value::String(i.as_str().to_owned()),
        },
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(|| Value::String(f.as_str().to_owned()), Value::Number),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let child = format!("{pointer}/{i}");
                    spans.by_pointer.insert(child.clone(), Entry { key: None, value: item.span() });
                    self::value(item.get_ref(), &child, spans)
                })
                .collect(),
        ),
        DeValue::Table(t) => table(t, pointer, spans),
    }
}

/// Line and column (1-based, columns in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
