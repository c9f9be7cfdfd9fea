//! Exchanges as RabbitMQ routes through them: direct (exact key), fanout
//! (every bound queue) and topic (AMQP patterns with `*` and `#`), their
//! bindings, and when a re-declaration is equivalent.

use crate::broker::{BrokerError, ExchangeKind, ExchangeSpec, ReplyCode};

/// A declared exchange and its queue bindings.
#[derive(Debug)]
pub(super) struct Exchange {
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
    /// `(routing key or pattern, queue)`, in binding order, without repeats.
    bindings: Vec<(String, String)>,
}

impl Exchange {
    /// A new exchange, without bindings.
    pub(super) fn of(spec: &ExchangeSpec) -> Self {
        Self {
            kind: spec.kind,
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            bindings: Vec::new(),
        }
    }

    /// RabbitMQ's refusal of `spec` as a re-declaration of `self`, if it is not
    /// equivalent.
    pub(super) fn check_equivalent(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        let differs =
            |arg: &str, received: &dyn std::fmt::Display, current: &dyn std::fmt::Display| {
                BrokerError::refused(
                    "exchange.declare",
                    ReplyCode::PreconditionFailed,
                    format!(
                    "exchange `{}`: PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange \
                     '{}': received '{received}' but current is '{current}'",
                    spec.name, spec.name
                ),
                )
            };
        if spec.kind != self.kind {
            return Err(differs("type", &spec.kind, &self.kind));
        }
        if spec.durable != self.durable {
            return Err(differs("durable", &spec.durable, &self.durable));
        }
        if spec.auto_delete != self.auto_delete {
            return Err(differs("auto_delete", &spec.auto_delete, &self.auto_delete));
        }
        Ok(())
    }

    /// Adds a binding (nothing if it exists).
    pub(super) fn bind(&mut self, key: &str, queue: &str) {
        if !self.bindings.iter().any(|(k, q)| k == key && q == queue) {
            self.bindings.push((key.to_owned(), queue.to_owned()));
        }
    }

    /// Removes a binding; whether it existed.
    pub(super) fn unbind(&mut self, key: &str, queue: &str) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|(k, q)| !(k == key && q == queue));
        self.bindings.len() != before
    }

    /// Removes every binding of `queue`; whether there was one.
    pub(super) fn unbind_queue(&mut self, queue: &str) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|(_, q)| q != queue);
        self.bindings.len() != before
    }

    /// Whether an auto-delete exchange has lost its last binding.
    pub(super) fn is_unused(&self) -> bool {
        self.auto_delete && self.bindings.is_empty()
    }

    /// The queues a message with `routing_key` goes to (each once, in
    /// binding order).
    pub(super) fn route(&self, routing_key: &str) -> Vec<String> {
        let mut targets: Vec<String> = Vec::new();
        for (key, queue) in &self.bindings {
            let matches = match self.kind {
                ExchangeKind::Direct => key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(key, routing_key),
            };
            if matches && !targets.contains(queue) {
                targets.push(queue.clone());
            }
        }
        targets
    }
}

/// The words of a routing key or pattern, as RabbitMQ splits them: on `.`,
/// an empty key having no words (`"a."` is `a` and an empty word).
fn words(text: &str) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('.').collect()
    }
}

/// Whether a topic binding `pattern` matches `routing_key`: `*` matches
/// exactly one word, `#` zero or more, any other word itself.
pub(crate) fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern = words(pattern);
    let key = words(routing_key);
    // matched[j]: whether the pattern words seen so far match the first j
    // key words (one row of the dynamic programme, pattern word by word).
    let mut matched = vec![false; key.len() + 1];
    matched[0] = true;
    for word in pattern {
        let mut next = vec![false; key.len() + 1];
        match word {
            "#" => {
                let mut reachable = false;
                for j in 0..=key.len() {
                    reachable |= matched[j];
                    next[j] = reachable;
                }
            }
            word => {
                for j in 1..=key.len() {
                    next[j] = matched[j - 1] && (word == "*" || word == key[j - 1]);
                }
            }
        }
        matched = next;
    }
    matched[key.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::delay_topology;

    #[test]
    fn topic_patterns_match_as_in_rabbitmq() {
        for (pattern, key, expected) in [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#.c", "a.b.c", true),
            ("#.c", "c", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("*", "", false),
            ("*", "a", true),
            ("", "", true),
            ("", "a", false),
            ("a.#.d", "a.d", true),
            ("a.#.d", "a.b.c.d", true),
            ("a.#.d", "a.b.c", false),
            ("*.*.#", "a", false),
            ("#.#", "a.b", true),
            ("a.*.c", "a..c", true),
            ("a.*", "a.", true),
            ("celery.*", "celery.pidbox.x", false),
        ] {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "pattern {pattern:?} key {key:?}"
            );
        }
    }

    /// The delay cascade's bindings route as its design says: each level's
    /// digit pattern takes the message whose digit at that level is set.
    #[test]
    fn delay_level_patterns_route_by_digit() {
        let key = delay_topology::routing_key(10_000, "tasks"); // 0x2710
        for k in 0..delay_topology::LEVELS {
            for digit in 0..16 {
                let expected = (10_000u64 >> (4 * k)) & 0xf == u64::from(digit);
                assert_eq!(
                    topic_matches(&delay_topology::level_pattern(k, digit), &key),
                    expected,
                    "level {k} digit {digit}"
                );
            }
        }
        assert!(topic_matches(
            &delay_topology::delivery_pattern("tasks"),
            &key
        ));
        assert!(!topic_matches(
            &delay_topology::delivery_pattern("other"),
            &key
        ));
    }

    #[test]
    fn routing_by_kind() {
        let mut exchange = Exchange::of(&ExchangeSpec::topic("t"));
        exchange.bind("a.*", "q1");
        exchange.bind("#", "q2");
        exchange.bind("a.b", "q1");
        assert_eq!(exchange.route("a.b"), ["q1", "q2"]);
        assert_eq!(exchange.route("b"), ["q2"]);
        exchange.kind = ExchangeKind::Fanout;
        assert_eq!(exchange.route("whatever"), ["q1", "q2"]);
        exchange.kind = ExchangeKind::Direct;
        assert_eq!(exchange.route("a.b"), ["q1"]);
        assert!(exchange.unbind("a.b", "q1") && !exchange.unbind("a.b", "q1"));
        assert!(exchange.route("a.b").is_empty());
    }
}
