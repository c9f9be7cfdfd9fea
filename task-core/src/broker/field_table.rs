//! Conversion between AMQP field tables and JSON values.
//!
//! Python's py-amqp writes headers with many AMQP types (`S`, `t`, `I`, `L`,
//! `d`, `V`, `A`, `F`, ...): every one of them is read here, so a header from
//! any peer decodes. Writing uses the types py-amqp reads back natively.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// Every AMQP value, as JSON. Byte strings become text when they are UTF-8
/// and arrays of numbers otherwise; decimals and floats become JSON numbers
/// (non-finite floats become `null`); timestamps become integers.
pub fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(_) => float(as_number(value).unwrap_or(f64::NAN)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => bytes_to_json(s.as_bytes()),
        AMQPValue::ByteArray(b) => bytes_to_json(b.as_slice()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_to_json).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(table_to_json(table)),
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP table as a JSON object.
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), amqp_to_json(value)))
        .collect()
}

/// A JSON value as the AMQP value py-amqp itself would write for it.
pub fn json_to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => number_to_amqp(n),
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(json_to_table(map)),
    }
}

/// A JSON object as an AMQP table. Keys longer than AMQP's 255-byte limit
/// are truncated at a character boundary.
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(short_string(key), json_to_amqp(value));
    }
    table
}

pub(crate) fn short_string(text: &str) -> ShortString {
    let mut end = text.len().min(lapin::types::MAX_SHORT_STRING_LENGTH);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&text[..end])
}

fn number_to_amqp(n: &Number) -> AMQPValue {
    if let Some(i) = n.as_i64() {
        integer_value(i)
    } else if let Some(u) = n.as_u64() {
        // Above i64::MAX: AMQP has no unsigned 64-bit type RabbitMQ accepts.
        AMQPValue::Double(u as f64)
    } else {
        AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn bytes_to_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => Value::Array(bytes.iter().map(|b| Value::from(*b)).collect()),
    }
}

/// A text header value, as py-amqp writes strings (an AMQP long string).
pub fn text_value(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes()))
}

/// An integer header value as py-amqp writes one: 32-bit when it fits.
pub fn integer_value(n: i64) -> AMQPValue {
    i32::try_from(n).map_or(AMQPValue::LongLongInt(n), AMQPValue::LongInt)
}

/// A value as text: a long string that is UTF-8, or a short string.
pub fn as_text(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str()),
        _ => None,
    }
}

/// A value as an integer: any of AMQP's signed or unsigned integer widths.
pub fn as_integer(value: &AMQPValue) -> Option<i64> {
    Some(match *value {
        AMQPValue::ShortShortInt(n) => i64::from(n),
        AMQPValue::ShortShortUInt(n) => i64::from(n),
        AMQPValue::ShortInt(n) => i64::from(n),
        AMQPValue::ShortUInt(n) => i64::from(n),
        AMQPValue::LongInt(n) => i64::from(n),
        AMQPValue::LongUInt(n) => i64::from(n),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    })
}

/// A value as a number: floats, decimals and integers.
pub fn as_number(value: &AMQPValue) -> Option<f64> {
    match *value {
        AMQPValue::Float(f) => Some(f64::from(f)),
        AMQPValue::Double(f) => Some(f),
        AMQPValue::DecimalValue(d) => Some(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        ref other => as_integer(other).map(|n| n as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue};
    use serde_json::json;

    #[test]
    fn every_amqp_type_reads_as_json() {
        let mut inner = FieldTable::default();
        inner.insert("k".into(), AMQPValue::Void);
        let values = vec![
            (AMQPValue::Boolean(true), json!(true)),
            (AMQPValue::ShortShortInt(-1), json!(-1)),
            (AMQPValue::ShortShortUInt(1), json!(1)),
            (AMQPValue::ShortInt(-2), json!(-2)),
            (AMQPValue::ShortUInt(2), json!(2)),
            (AMQPValue::LongInt(-3), json!(-3)),
            (AMQPValue::LongUInt(3), json!(3)),
            (AMQPValue::LongLongInt(1 << 40), json!(1u64 << 40)),
            (AMQPValue::Timestamp(7), json!(7)),
            (AMQPValue::Float(0.5), json!(0.5)),
            (AMQPValue::Double(1.25), json!(1.25)),
            (AMQPValue::Double(f64::NAN), json!(null)),
            (
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 150,
                }),
                json!(1.5),
            ),
            (AMQPValue::ShortString("s".into()), json!("s")),
            (AMQPValue::LongString("é".into()), json!("é")),
            (
                AMQPValue::LongString(vec![0xff, 0x00].into()),
                json!([255, 0]),
            ),
            (
                AMQPValue::ByteArray(ByteArray::from(vec![0xfeu8, 2])),
                json!([254, 2]),
            ),
            (
                AMQPValue::FieldArray(vec![AMQPValue::Void, AMQPValue::LongInt(1)].into()),
                json!([null, 1]),
            ),
            (AMQPValue::FieldTable(inner), json!({"k": null})),
            (AMQPValue::Void, json!(null)),
        ];
        for (amqp, expected) in values {
            assert_eq!(amqp_to_json(&amqp), expected, "{amqp:?}");
        }
    }

    #[test]
    fn queue_arguments_round_trip() {
        let value =
            json!({"x-max-priority": 10, "x-expires": 86_400_000u64, "x-dead-letter-exchange": ""});
        let Value::Object(map) = &value else {
            unreachable!()
        };
        assert_eq!(Value::Object(table_to_json(&json_to_table(map))), value);
    }

    #[test]
    fn long_keys_are_cut_at_a_char_boundary() {
        let key = "é".repeat(200);
        assert!(short_string(&key).as_str().len() <= 255);
    }
}
