//! Queue declarations as RabbitMQ checks them: which arguments are valid,
//! what they mean for the queue, and when a re-declaration is equivalent.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::broker::{BrokerError, Message, QueueSpec, ReplyCode};

/// Queue arguments RabbitMQ compares when a queue is declared again (others
/// are ignored in the comparison, as RabbitMQ does).
const COMPARED_ARGUMENTS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

/// The largest TTL RabbitMQ accepts, in milliseconds.
pub(super) const MAX_TTL_MS: u64 = u32::MAX as u64;

/// How a queue was declared, and what its arguments mean.
#[derive(Debug, Clone)]
pub(super) struct Declaration {
    pub(super) durable: bool,
    pub(super) auto_delete: bool,
    pub(super) exclusive: bool,
    pub(super) arguments: Map<String, Value>,
    pub(super) max_priority: Option<u8>,
    pub(super) message_ttl: Option<Duration>,
    pub(super) dead_letter_exchange: Option<String>,
    pub(super) dead_letter_routing_key: Option<String>,
    /// `x-max-length`: the most ready messages kept (the oldest are dropped).
    pub(super) max_length: Option<usize>,
    /// `x-max-length-bytes`: the most body bytes kept in ready messages.
    pub(super) max_length_bytes: Option<usize>,
}

impl Declaration {
    /// Reads and checks a queue specification, as RabbitMQ checks arguments.
    pub(super) fn of(spec: &QueueSpec) -> Result<Self, String> {
        let arguments = &spec.arguments;
        let invalid = |key: &str, why: &str| {
            format!(
                "PRECONDITION_FAILED - invalid arg '{key}' for queue '{}': {why}",
                spec.name
            )
        };
        let integer = |key: &str| -> Result<Option<u64>, String> {
            match arguments.get(key) {
                None => Ok(None),
                Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                    invalid(
                        key,
                        &format!("expected a non-negative integer, got {value}"),
                    )
                }),
            }
        };
        let text = |key: &str| -> Result<Option<String>, String> {
            match arguments.get(key) {
                None => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(value) => Err(invalid(key, &format!("expected a string, got {value}"))),
            }
        };
        let max_priority = match integer("x-max-priority")? {
            None => None,
            Some(max) => Some(
                u8::try_from(max).map_err(|_| invalid("x-max-priority", "max_value_exceeded"))?,
            ),
        };
        let message_ttl = match integer("x-message-ttl")? {
            Some(ms) if ms > MAX_TTL_MS => {
                return Err(invalid("x-message-ttl", "max_value_exceeded"))
            }
            ms => ms.map(Duration::from_millis),
        };
        if let Some(expires) = integer("x-expires")? {
            if expires == 0 || expires > MAX_TTL_MS {
                return Err(invalid("x-expires", "must be between 1 and 4294967295"));
            }
        }
        let dead_letter_exchange = text("x-dead-letter-exchange")?;
        let dead_letter_routing_key = text("x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined",
            ));
        }
        let size = |key: &str| -> Result<Option<usize>, String> {
            integer(key)?
                .map(|n| usize::try_from(n).map_err(|_| invalid(key, "max_value_exceeded")))
                .transpose()
        };
        let max_length = size("x-max-length")?;
        let max_length_bytes = size("x-max-length-bytes")?;
        match text("x-overflow")?.as_deref() {
            None | Some("drop-head") => {}
            Some("reject-publish" | "reject-publish-dlx") => {
                return Err(invalid(
                    "x-overflow",
                    "not supported by memory:// (only drop-head)",
                ))
            }
            Some(other) => {
                return Err(invalid(
                    "x-overflow",
                    &format!("unknown overflow behaviour '{other}'"),
                ))
            }
        }
        Ok(Self {
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            exclusive: spec.exclusive,
            arguments: arguments.clone(),
            max_priority,
            message_ttl,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_length,
            max_length_bytes,
        })
    }

    /// Why `self` (a new declaration) differs from `current`, if it does.
    pub(super) fn inequivalence(&self, current: &Declaration, queue: &str) -> Option<String> {
        let flag = |name: &str, received: bool, current: bool| {
            (received != current).then(|| {
                format!(
                    "PRECONDITION_FAILED - inequivalent arg '{name}' for queue '{queue}': \
                     received '{received}' but current is '{current}'"
                )
            })
        };
        flag("durable", self.durable, current.durable)
            .or_else(|| flag("auto_delete", self.auto_delete, current.auto_delete))
            .or_else(|| flag("exclusive", self.exclusive, current.exclusive))
            .or_else(|| {
                COMPARED_ARGUMENTS.iter().find_map(|key| {
                    let received = self.arguments.get(*key);
                    let existing = current.arguments.get(*key);
                    (!same_argument(received, existing)).then(|| {
                        let show =
                            |v: Option<&Value>| v.map_or("none".to_owned(), |v| format!("'{v}'"));
                        format!(
                            "PRECONDITION_FAILED - inequivalent arg '{key}' for queue '{queue}': \
                             received {} but current is {}",
                            show(received),
                            show(existing)
                        )
                    })
                })
            })
    }

    /// The priority level a message is stored at.
    pub(super) fn level(&self, message: &Message) -> usize {
        match self.max_priority {
            Some(max) => usize::from(message.properties.priority.unwrap_or(0).min(max)),
            None => 0,
        }
    }
}

/// Argument equality as RabbitMQ sees it: numbers by value, whatever their type.
fn same_argument(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// A message's `expiration` property (milliseconds), checked as RabbitMQ does.
pub(super) fn parse_expiration(message: &Message) -> Result<Option<Duration>, BrokerError> {
    let Some(text) = &message.properties.expiration else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(ms) if ms <= MAX_TTL_MS => Ok(Some(Duration::from_millis(ms))),
        _ => Err(BrokerError::refused(
            "basic.publish",
            ReplyCode::PreconditionFailed,
            format!("PRECONDITION_FAILED - invalid expiration '{text}'"),
        )),
    }
}
