//! Queue declarations as RabbitMQ checks them (for the brokers that model
//! RabbitMQ's semantics: `memory://` and Redis): which arguments are valid,
//! what they mean for the queue, and when a re-declaration is equivalent.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::broker::{BrokerError, Message, QueueSpec, QueueType, ReplyCode};

/// Queue arguments RabbitMQ (3.10) compares when a queue is declared again
/// (others are ignored in the comparison, as RabbitMQ does). `x-queue-type`
/// is compared by the type it means: absent and `classic` are the same.
const COMPARED_ARGUMENTS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

/// Arguments RabbitMQ 3.10 knows but refuses on a classic queue (`invalid
/// arg ... of queue type rabbit_classic_queue`): those of quorum queues and
/// streams.
const NOT_FOR_CLASSIC: &[&str] = &[
    "x-delivery-limit",
    "x-dead-letter-strategy",
    "x-quorum-initial-group-size",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// Arguments RabbitMQ 3.10 knows but refuses on a quorum queue (`invalid
/// arg ... of queue type rabbit_quorum_queue`): those of classic queues
/// and streams. (`x-max-priority` is refused before, by the client:
/// [`QueueSpec::quorum`].)
const NOT_FOR_QUORUM: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// The largest TTL RabbitMQ accepts, in milliseconds.
pub(crate) const MAX_TTL_MS: u64 = u32::MAX as u64;

/// What a queue does with a message that would take it over its
/// `x-max-length` / `x-max-length-bytes` (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// `drop-head` (the default): the oldest ready messages are dropped.
    DropHead,
    /// `reject-publish`: the publish is refused (a confirm `nack`).
    RejectPublish,
}
/// How a queue was declared, and what its arguments mean.
#[derive(Debug, Clone)]
pub(crate) struct Declaration {
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) exclusive: bool,
    pub(crate) arguments: Map<String, Value>,
    pub(crate) max_priority: Option<u8>,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) dead_letter_exchange: Option<String>,
    pub(crate) dead_letter_routing_key: Option<String>,
    /// `x-max-length`: the most ready messages kept (the oldest are dropped).
    pub(crate) max_length: Option<usize>,
    /// `x-max-length-bytes`: the most body bytes kept in ready messages.
    pub(crate) max_length_bytes: Option<usize>,
    /// `x-overflow`: what a full queue does.
    pub(crate) overflow: Overflow,
    /// `x-queue-type` (classic without).
    pub(crate) queue_type: QueueType,
    /// `x-delivery-limit` (quorum queues): how many times a message may be
    /// returned to the queue (rejected with requeue, or left unacked by a
    /// consumer that went) and still be delivered again.
    pub(crate) delivery_limit: Option<u64>,
}

impl Declaration {
    /// Reads and checks a queue specification, as RabbitMQ checks arguments.
    pub(crate) fn of(spec: &QueueSpec) -> Result<Self, String> {
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
        let overflow = match text("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => {
                return Err(invalid(
                    "x-overflow",
                    "not supported here (drop-head or reject-publish)",
                ))
            }
            Some(_) => return Err(invalid("x-overflow", "invalid_overflow")),
        };
        let queue_type = match text("x-queue-type")?.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some("stream") => {
                return Err(invalid(
                    "x-queue-type",
                    "\"unsupported queue type 'stream'\" (this broker keeps no streams: \
                     see Broker::supports_streams)",
                ))
            }
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    &format!("\"unsupported queue type '{other}'\""),
                ))
            }
        };
        let (refused, type_name) = match queue_type {
            QueueType::Quorum => (NOT_FOR_QUORUM, "rabbit_quorum_queue"),
            _ => (NOT_FOR_CLASSIC, "rabbit_classic_queue"),
        };
        if let Some(key) = refused.iter().find(|key| arguments.contains_key(**key)) {
            return Err(format!(
                "PRECONDITION_FAILED - invalid arg '{key}' for queue '{}' of queue type \
                 {type_name}",
                spec.name
            ));
        }
        // RabbitMQ 3.10 takes any value here (and no limit from a value
        // that is not a number); memory:// and Redis refuse what cannot be a count.
        let delivery_limit = integer("x-delivery-limit")?;
        match text("x-dead-letter-strategy")?.as_deref() {
            // Dead-lettering is synchronous here: both are at least once.
            None | Some("at-most-once" | "at-least-once") => {}
            Some(_) => return Err(invalid("x-dead-letter-strategy", "invalid_dlx_strategy")),
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
            overflow,
            queue_type,
            delivery_limit,
        })
    }

    /// Why `self` (a new declaration) differs from `current`, if it does.
    pub(crate) fn inequivalence(&self, current: &Declaration, queue: &str) -> Option<String> {
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
                    let same = if *key == "x-queue-type" {
                        self.queue_type == current.queue_type
                    } else {
                        same_argument(received, existing)
                    };
                    (!same).then(|| {
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

    /// Whether it is a quorum queue.
    pub(crate) fn is_quorum(&self) -> bool {
        self.queue_type == QueueType::Quorum
    }

    /// Whether a queue holding `ready` messages of `bytes` body bytes
    /// refuses a publish of `size` bytes: for a classic queue with
    /// `reject-publish`, when the message would take it over a limit.
    /// (A quorum queue decides by its state: [`Declaration::over_limit`].)
    pub(crate) fn would_overflow(&self, ready: usize, bytes: usize, size: usize) -> bool {
        self.overflow == Overflow::RejectPublish
            && !self.is_quorum()
            && (self.max_length.is_some_and(|max| ready >= max)
                || self.max_length_bytes.is_some_and(|max| bytes + size > max))
    }

    /// Whether `ready` messages of `bytes` body bytes are over a limit.
    pub(crate) fn over_limit(&self, ready: usize, bytes: usize) -> bool {
        self.max_length.is_some_and(|max| ready > max)
            || self.max_length_bytes.is_some_and(|max| bytes > max)
    }

    /// Whether `ready` messages of `bytes` body bytes are back under the
    /// soft limits (80%) at which a quorum queue that refused publishes
    /// takes them again.
    pub(crate) fn below_soft_limit(&self, ready: usize, bytes: usize) -> bool {
        // As `rabbit_fifo` (`?LOW_LIMIT`): `Num =< trunc(Max * 0.8)`.
        let below = |max: Option<usize>, n: usize| max.is_none_or(|max| n <= max - max.div_ceil(5));
        below(self.max_length, ready) && below(self.max_length_bytes, bytes)
    }

    /// The priority level a message is stored at.
    pub(crate) fn level(&self, message: &Message) -> usize {
        match self.max_priority {
            Some(max) => usize::from(message.properties.priority.unwrap_or(0).min(max)),
            None => 0,
        }
    }
}

/// RabbitMQ's refusal (405) of another connection's exclusive queue.
pub(crate) fn locked(operation: &'static str, queue: &str) -> BrokerError {
    BrokerError::refused(
        operation,
        ReplyCode::ResourceLocked,
        format!(
            "queue `{queue}`: RESOURCE_LOCKED - cannot obtain exclusive access to locked queue \
             '{queue}': it was declared exclusive by another connection"
        ),
    )
}

/// Argument equality as RabbitMQ sees it: numbers by value, whatever their type.
fn same_argument(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// A message's `expiration` property (milliseconds), checked as RabbitMQ does.
pub(crate) fn parse_expiration(message: &Message) -> Result<Option<Duration>, BrokerError> {
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
