//! RabbitMQ's record of dead-lettering: the `x-death` and
//! `x-first-death-*` headers of a dead-lettered message, in the AMQP types
//! RabbitMQ writes (`count` a 64-bit integer, `time` a timestamp, text as
//! long strings).

use lapin::types::{FieldArray, FieldTable};

use crate::broker::headers::{as_integer, as_text, text_value};
use crate::broker::{HeaderValue, Headers};

/// Adds this death to a message's `x-death` headers as RabbitMQ does (the
/// latest first, a repeated queue and reason counted), and returns the queues
/// that would make a cycle of expiries (empty once a rejection is involved).
pub(crate) fn record_death(
    headers: &mut Headers,
    queue: &str,
    reason: &str,
    exchange: &str,
    routing_key: &str,
    original_expiration: Option<String>,
) -> Vec<String> {
    let mut deaths: Vec<FieldTable> = match headers.get("x-death") {
        Some(HeaderValue::FieldArray(items)) => items
            .as_slice()
            .iter()
            .filter_map(|item| match item {
                HeaderValue::FieldTable(death) => Some(death.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let previous = deaths
        .iter()
        .position(|d| field(d, "queue") == Some(queue) && field(d, "reason") == Some(reason));
    let count = previous
        .map(|i| deaths.remove(i))
        .and_then(|d| d.inner().get("count").and_then(as_integer))
        .unwrap_or(0)
        + 1;
    let mut death = FieldTable::default();
    death.insert("count".into(), HeaderValue::LongLongInt(count));
    death.insert("reason".into(), text_value(reason));
    death.insert("queue".into(), text_value(queue));
    death.insert("time".into(), HeaderValue::Timestamp(unix_seconds()));
    death.insert("exchange".into(), text_value(exchange));
    death.insert(
        "routing-keys".into(),
        HeaderValue::FieldArray(FieldArray::from(vec![text_value(routing_key)])),
    );
    if let Some(expiration) = original_expiration {
        death.insert("original-expiration".into(), text_value(&expiration));
    }
    deaths.insert(0, death);
    for (key, value) in [
        ("x-first-death-reason", reason),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", exchange),
    ] {
        if !headers.contains_key(key) {
            headers.insert_str(key, value);
        }
    }
    let rejected = deaths
        .iter()
        .any(|d| field(d, "reason") == Some("rejected"));
    let cycle = if rejected {
        Vec::new()
    } else {
        deaths
            .iter()
            .filter_map(|d| field(d, "queue").map(str::to_owned))
            .collect()
    };
    headers.insert(
        "x-death",
        HeaderValue::FieldArray(FieldArray::from(
            deaths
                .into_iter()
                .map(HeaderValue::FieldTable)
                .collect::<Vec<_>>(),
        )),
    );
    cycle
}

/// A text field of one `x-death` entry.
fn field<'a>(death: &'a FieldTable, key: &str) -> Option<&'a str> {
    death.inner().get(key).and_then(as_text)
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
