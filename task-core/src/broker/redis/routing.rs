//! Exchanges on Redis, as kombu's virtual transport keeps them: a direct or
//! topic exchange is its binding set (`_kombu.binding.<exchange>`), read at
//! each publish; a fanout exchange is a pub/sub channel. kombu knows an
//! exchange's kind only in the process that declared it; here the kind of
//! every exchange a Rust process declares is also kept in Redis
//! (`_task_core.exchanges`), so that a client publishes to a worker's
//! fanout exchange as the worker declared it. An exchange nobody declared
//! is direct, as in kombu, except Celery's broadcast exchanges
//! (`celery.pidbox`, `celeryev`), which Celery makes fanout on Redis.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::keys::parse_binding;
use crate::broker::memory::topic_matches;
use crate::broker::ExchangeKind;

/// Celery's exchanges that are fanout on Redis whoever declared them.
const CELERY_FANOUT: [&str; 2] = ["celery.pidbox", "celeryev"];

/// What this process knows of exchanges and fanout bindings.
#[derive(Default)]
pub(crate) struct Routing {
    kinds: Mutex<HashMap<String, ExchangeKind>>,
    /// Queue → (fanout exchange, subscription key): a queue bound to a
    /// fanout exchange is consumed from its channel, as kombu does.
    fanout_queues: Mutex<HashMap<String, (String, String)>>,
}

impl Routing {
    /// The kind this process knows for `exchange`, if any.
    pub(crate) fn known_kind(&self, exchange: &str) -> Option<ExchangeKind> {
        if CELERY_FANOUT.contains(&exchange) {
            return Some(ExchangeKind::Fanout);
        }
        self.kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exchange)
            .copied()
    }

    /// Remembers `exchange`'s kind.
    pub(crate) fn remember_kind(&self, exchange: &str, kind: ExchangeKind) {
        self.kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(exchange.to_owned(), kind);
    }

    /// Forgets `exchange` (deleted).
    pub(crate) fn forget(&self, exchange: &str) {
        self.kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(exchange);
        self.fanout_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (bound_to, _)| bound_to != exchange);
    }

    /// Records that `queue` is bound to the fanout `exchange` with `key`
    /// (kombu subscribes with `#` turned into `*`).
    pub(crate) fn bind_fanout(&self, queue: &str, exchange: &str, key: &str) {
        self.fanout_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                queue.to_owned(),
                (exchange.to_owned(), key.replace('#', "*")),
            );
    }

    /// Forgets a fanout binding of `queue`.
    pub(crate) fn unbind_fanout(&self, queue: &str, exchange: &str) {
        let mut queues = self
            .fanout_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queues
            .get(queue)
            .is_some_and(|(bound, _)| bound == exchange)
        {
            queues.remove(queue);
        }
    }

    /// Forgets the fanout binding of `queue` (deleted), whatever its exchange.
    pub(crate) fn forget_queue(&self, queue: &str) {
        self.fanout_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue);
    }

    /// The fanout exchange and key `queue` is bound to, if it is.
    pub(crate) fn fanout_of(&self, queue: &str) -> Option<(String, String)> {
        self.fanout_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
            .cloned()
    }
}

/// The queues a message published to an exchange of `kind` with
/// `routing_key` goes to, from the exchange's binding set (each queue
/// once, in the set's order).
pub(crate) fn route<'a>(
    kind: ExchangeKind,
    members: &'a [String],
    routing_key: &str,
) -> Vec<&'a str> {
    let mut queues: Vec<&str> = Vec::new();
    for member in members {
        let Some((key, _pattern, queue)) = parse_binding(member) else {
            continue;
        };
        let matches = match kind {
            ExchangeKind::Direct => key == routing_key,
            ExchangeKind::Topic => topic_matches(key, routing_key),
            ExchangeKind::Fanout => true,
        };
        if matches && !queues.contains(&queue) {
            queues.push(queue);
        }
    }
    queues
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::redis::keys::binding_member;

    #[test]
    fn direct_and_topic_tables_route_as_kombu_does() {
        let members = vec![
            binding_member("celery", "", "celery"),
            binding_member("a.*", "", "star"),
            binding_member("a.#", "", "hash"),
            binding_member("celery", "", "celery"),
        ];
        assert_eq!(route(ExchangeKind::Direct, &members, "celery"), ["celery"]);
        assert!(route(ExchangeKind::Direct, &members, "other").is_empty());
        assert_eq!(
            route(ExchangeKind::Topic, &members, "a.b"),
            ["star", "hash"]
        );
        assert_eq!(route(ExchangeKind::Topic, &members, "a.b.c"), ["hash"]);
        assert_eq!(
            route(ExchangeKind::Fanout, &members, "x"),
            ["celery", "star", "hash"]
        );
    }

    #[test]
    fn celery_broadcast_exchanges_are_fanout() {
        let routing = Routing::default();
        assert_eq!(routing.known_kind("celeryev"), Some(ExchangeKind::Fanout));
        assert_eq!(routing.known_kind("celery"), None);
        routing.remember_kind("x", ExchangeKind::Topic);
        assert_eq!(routing.known_kind("x"), Some(ExchangeKind::Topic));
        routing.bind_fanout("q", "f", "#");
        assert_eq!(routing.fanout_of("q"), Some(("f".into(), "*".into())));
        routing.forget("f");
        assert_eq!(routing.fanout_of("q"), None);
    }
}
