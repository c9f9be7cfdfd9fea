//! RabbitMQ's record of dead-lettering: the `x-death` and
//! `x-first-death-*` headers of a dead-lettered message.

use serde_json::{Map, Value};

use crate::broker::Headers;

/// Adds this death to a message's `x-death` headers as RabbitMQ does (the
/// latest first, a repeated queue and reason counted), and returns the queues
/// that would make a cycle of expiries (empty once a rejection is involved).
pub(super) fn record_death(
    headers: &mut Headers,
    queue: &str,
    reason: &str,
    exchange: &str,
    routing_key: &str,
    original_expiration: Option<String>,
) -> Vec<String> {
    let mut deaths = match headers.get_json("x-death") {
        Some(Value::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let field =
        |death: &Value, key: &str| death.get(key).and_then(Value::as_str).map(str::to_owned);
    let previous = deaths.iter().position(|d| {
        field(d, "queue").as_deref() == Some(queue) && field(d, "reason").as_deref() == Some(reason)
    });
    let count = previous
        .map(|i| deaths.remove(i))
        .and_then(|d| d.get("count").and_then(Value::as_u64))
        .unwrap_or(0)
        + 1;
    let mut death = Map::new();
    death.insert("count".into(), Value::from(count));
    death.insert("reason".into(), Value::from(reason));
    death.insert("queue".into(), Value::from(queue));
    death.insert("time".into(), Value::from(unix_seconds()));
    death.insert("exchange".into(), Value::from(exchange));
    death.insert(
        "routing-keys".into(),
        Value::Array(vec![Value::from(routing_key)]),
    );
    if let Some(expiration) = original_expiration {
        death.insert("original-expiration".into(), Value::from(expiration));
    }
    deaths.insert(0, Value::Object(death));
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
        .any(|d| field(d, "reason").as_deref() == Some("rejected"));
    let cycle = if rejected {
        Vec::new()
    } else {
        deaths.iter().filter_map(|d| field(d, "queue")).collect()
    };
    headers.insert_json("x-death", &Value::Array(deaths));
    cycle
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
