//! Message headers as they travel: an AMQP field table.
//!
//! Headers keep AMQP's own value types from the publisher to the consumer,
//! so a message crosses the framework without being converted (converting
//! the ~20 Celery headers to JSON and back was the largest per-message cost).
//! JSON views exist for tests, logs and callers that prefer them.

use std::collections::BTreeMap;
use std::fmt;

use lapin::types::{FieldArray, FieldTable, ShortString};
use serde_json::{Map, Value};

use super::field_table::{amqp_to_json, json_to_amqp, short_string};
/// Reading and writing single values: kept with the conversions, re-exported here.
pub use super::field_table::{as_integer, as_number, as_text, integer_value, text_value};

/// One header value: any AMQP field value (`LongString` for text, `LongInt`
/// and `LongLongInt` for integers, `FieldArray`, `FieldTable`, `Void`, ...).
pub use lapin::types::AMQPValue as HeaderValue;

/// A message's application headers, keyed by name (at most 255 bytes each,
/// as AMQP allows), in AMQP's value types.
#[derive(Clone, Default)]
pub struct Headers(Repr);

#[derive(Clone)]
enum Repr {
    /// Built or edited here.
    Owned(BTreeMap<ShortString, HeaderValue>),
    /// As lapin received them, inside the delivery's properties: read in
    /// place, copied only when edited.
    Received(Box<lapin::BasicProperties>),
}

impl Default for Repr {
    fn default() -> Self {
        Self::Owned(BTreeMap::new())
    }
}

/// Shared by every `Received` delivery without headers.
static NO_HEADERS: BTreeMap<ShortString, HeaderValue> = BTreeMap::new();

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The headers of a delivery lapin received, without copying them.
    pub(crate) fn received(properties: lapin::BasicProperties) -> Self {
        Self(Repr::Received(Box::new(properties)))
    }

    /// Headers from entries already sorted by key, with keys of at most
    /// 255 bytes and no short-string values (the framework's own headers).
    pub(crate) fn from_sorted<const N: usize>(entries: [(&'static str, HeaderValue); N]) -> Self {
        debug_assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0));
        debug_assert!(entries.iter().all(|(_, value)| !has_short_string(value)));
        Self(Repr::Owned(
            entries
                .into_iter()
                .map(|(key, value)| (ShortString::from(key), value))
                .collect(),
        ))
    }

    fn map(&self) -> &BTreeMap<ShortString, HeaderValue> {
        match &self.0 {
            Repr::Owned(map) => map,
            Repr::Received(properties) => properties
                .headers()
                .as_ref()
                .map_or(&NO_HEADERS, FieldTable::inner),
        }
    }

    fn map_mut(&mut self) -> &mut BTreeMap<ShortString, HeaderValue> {
        if let Repr::Received(_) = &self.0 {
            self.0 = Repr::Owned(self.map().clone());
        }
        match &mut self.0 {
            Repr::Owned(map) => map,
            Repr::Received(_) => unreachable!("made owned just above"),
        }
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&HeaderValue> {
        self.map().get(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.map().contains_key(key)
    }

    /// The value of `key` when it is text (see [`as_text`]).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(as_text)
    }

    /// The value of `key` as JSON (see [`Headers::to_json`] for the mapping).
    pub fn get_json(&self, key: &str) -> Option<Value> {
        self.get(key).map(amqp_to_json)
    }

    /// Sets `key` (cut to 255 bytes at a character boundary) to `value`.
    ///
    /// A `ShortString` value, at any depth, is stored as a `LongString`:
    /// RabbitMQ reads the AMQP 0-9-1 `s` tag as a 16-bit integer, so a short
    /// string would reach consumers as garbage (lapin 4.12 then spins forever
    /// parsing the delivery).
    pub fn insert(&mut self, key: &str, value: HeaderValue) -> Option<HeaderValue> {
        let value = if has_short_string(&value) {
            wire_safe(&value)
        } else {
            value
        };
        self.map_mut().insert(short_string(key), value)
    }

    /// Sets `key` to a text value (an AMQP long string).
    pub fn insert_str(&mut self, key: &str, text: &str) -> Option<HeaderValue> {
        self.insert(key, text_value(text))
    }

    /// Sets `key` to a JSON value, written as py-amqp writes it (strings as
    /// long strings, integers as 32- or 64-bit, `null` as void, ...).
    pub fn insert_json(&mut self, key: &str, value: &Value) -> Option<HeaderValue> {
        self.insert(key, json_to_amqp(value))
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<HeaderValue> {
        self.map_mut().remove(key)
    }

    /// Keeps only the headers for which `keep` answers true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &HeaderValue) -> bool) {
        self.map_mut()
            .retain(|key, value| keep(key.as_str(), value));
    }

    /// The headers in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.map().iter().map(|(key, value)| (key.as_str(), value))
    }

    /// Every header as JSON: integers and floats as numbers, UTF-8 strings as
    /// text (other byte strings as arrays of numbers), tables as objects,
    /// timestamps as integers, void as `null`.
    pub fn to_json(&self) -> Map<String, Value> {
        self.iter()
            .map(|(key, value)| (key.to_owned(), amqp_to_json(value)))
            .collect()
    }

    /// Headers from a JSON object (see [`Headers::insert_json`]).
    pub fn from_json(map: &Map<String, Value>) -> Self {
        let mut headers = Self::new();
        for (key, value) in map {
            headers.insert_json(key, value);
        }
        headers
    }

    /// The headers as the AMQP table lapin publishes.
    pub fn to_field_table(&self) -> FieldTable {
        match &self.0 {
            Repr::Owned(map) => FieldTable::from(map.clone()),
            Repr::Received(properties) => properties.headers().clone().unwrap_or_default(),
        }
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.map() == other.map()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl From<&FieldTable> for Headers {
    fn from(table: &FieldTable) -> Self {
        Self(Repr::Owned(table.inner().clone()))
    }
}

impl<'a> FromIterator<(&'a str, HeaderValue)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, HeaderValue)>>(entries: I) -> Self {
        let mut headers = Self::new();
        for (key, value) in entries {
            headers.insert(key, value);
        }
        headers
    }
}

fn has_short_string(value: &HeaderValue) -> bool {
    match value {
        HeaderValue::ShortString(_) => true,
        HeaderValue::FieldArray(items) => items.as_slice().iter().any(has_short_string),
        HeaderValue::FieldTable(table) => table.inner().values().any(has_short_string),
        _ => false,
    }
}

/// `value` with every short string turned into a long string.
fn wire_safe(value: &HeaderValue) -> HeaderValue {
    match value {
        HeaderValue::ShortString(text) => text_value(text.as_str()),
        HeaderValue::FieldArray(items) => HeaderValue::FieldArray(FieldArray::from(
            items.as_slice().iter().map(wire_safe).collect::<Vec<_>>(),
        )),
        HeaderValue::FieldTable(table) => HeaderValue::FieldTable(FieldTable::from(
            table
                .inner()
                .iter()
                .map(|(key, value)| (key.clone(), wire_safe(value)))
                .collect::<BTreeMap<_, _>>(),
        )),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_headers() {
        let value = json!({
            "s": "text", "n": 5, "big": 1u64 << 40, "neg": -7, "f": 0.25,
            "b": false, "null": null, "list": [1, "a", null], "obj": {"x": [true]}
        });
        let Value::Object(map) = &value else {
            unreachable!()
        };
        let headers = Headers::from_json(map);
        assert_eq!(Value::Object(headers.to_json()), value);
        assert_eq!(headers.get_str("s"), Some("text"));
        assert_eq!(headers.get_str("n"), None);
        assert_eq!(headers.get_json("list"), Some(json!([1, "a", null])));
    }

    #[test]
    fn editing_headers() {
        let mut headers = Headers::new();
        headers.insert_str("a", "x");
        headers.insert("b", HeaderValue::LongInt(1));
        headers.insert("x-death", HeaderValue::Void);
        assert_eq!(headers.len(), 3);
        headers.retain(|key, _| !key.starts_with("x-"));
        assert_eq!(headers.remove("b"), Some(HeaderValue::LongInt(1)));
        assert!(headers.contains_key("a") && !headers.contains_key("b"));
        let table = headers.to_field_table();
        assert_eq!(Headers::from(&table), headers);
    }

    #[test]
    fn short_strings_are_stored_as_long_strings_at_any_depth() {
        let mut inner = FieldTable::default();
        inner.insert("k".into(), HeaderValue::ShortString("deep".into()));
        let mut headers = Headers::new();
        headers.insert("top", HeaderValue::ShortString("s".into()));
        headers.insert(
            "nested",
            HeaderValue::FieldArray(FieldArray::from(vec![HeaderValue::FieldTable(inner)])),
        );
        assert_eq!(headers.get("top"), Some(&text_value("s")));
        assert!(!headers.iter().any(|(_, value)| has_short_string(value)));
        assert_eq!(
            headers.get_json("nested"),
            Some(serde_json::json!([{"k": "deep"}]))
        );
    }

    #[test]
    fn received_headers_are_read_in_place_and_copied_when_edited() {
        let mut table = FieldTable::default();
        table.insert("a".into(), text_value("x"));
        let properties = lapin::BasicProperties::default().with_headers(table.clone());
        let mut headers = Headers::received(properties);
        assert_eq!(headers, Headers::from(&table));
        assert_eq!(headers.get_str("a"), Some("x"));
        assert_eq!(headers.to_field_table(), table);
        headers.insert_str("b", "y");
        assert_eq!(headers.len(), 2);
        assert!(Headers::received(lapin::BasicProperties::default()).is_empty());
    }

    #[test]
    fn long_keys_are_cut_at_a_char_boundary() {
        let mut headers = Headers::new();
        headers.insert_str(&"é".repeat(200), "v");
        let (key, _) = headers.iter().next().unwrap();
        assert!(key.len() <= 255 && key.chars().all(|c| c == 'é'));
    }
}
