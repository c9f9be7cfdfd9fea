//! The Redis keys of kombu's Redis transport (kombu 5.7,
//! `kombu/transport/redis.py`), and this broker's own, under one optional
//! prefix (kombu's `global_keyprefix`).
//!
//! - A queue is a list per priority step: `<queue>` for the first step,
//!   `<queue>\x06\x16<step>` for the others (steps `0, 3, 6, 9` by default);
//!   producers `LPUSH`, consumers pop from the right, the first step first.
//! - A binding is a member `<routing key>\x06\x16<pattern>\x06\x16<queue>` of
//!   the set `_kombu.binding.<exchange>` (and `_kombu.binding_permanent.<exchange>`).
//! - A delivered, unacknowledged message is a field of the hash `unacked`
//!   (value `[envelope, exchange, routing key]`) and a member of the sorted
//!   set `unacked_index` scored by when it was delivered (or, here, when its
//!   holder last said it still runs it), in seconds.
//! - A fanout exchange is a pub/sub channel `/<db>.<exchange>/<routing key>`.
//! - This broker's own: `_task_core.delayed` (countdowns and ETAs, scored by
//!   their due time in milliseconds) and `_task_core.exchanges` (the
//!   declaration of each exchange declared by a Rust process),
//!   `_task_core.queues` (the declaration of each queue declared by a Rust
//!   process), and per queue
//!   `_task_core.consumers.<queue>` (its Rust consumers, scored by when
//!   their claim lapses, in ms) and `_task_core.exclusive.<queue>` (its
//!   exclusive consumer, expiring with its claim), and per connection that
//!   declared an exclusive queue `_task_core.connection.<id>` (its lease).

/// kombu's separator inside binding members and priority list names.
pub const SEP: &str = "\x06\x16";

/// kombu's default priority steps.
pub const DEFAULT_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The highest message priority kombu's virtual transports keep (higher
/// values are cut down to it).
pub const MAX_PRIORITY: u8 = 9;

/// The names of every key, computed once per broker.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    steps: Vec<u8>,
    fanout_prefix: String,
    pub(crate) unacked: String,
    pub(crate) unacked_index: String,
    pub(crate) unacked_mutex: String,
    pub(crate) delayed: String,
    pub(crate) exchanges: String,
    pub(crate) queues: String,
}

impl Keys {
    /// The keys for a broker with this global key prefix, these priority
    /// steps (sorted, starting at 0) and this database number.
    pub(crate) fn new(prefix: &str, steps: &[u8], db: i64) -> Self {
        let mut steps = steps.to_vec();
        steps.sort_unstable();
        steps.dedup();
        if steps.first() != Some(&0) {
            steps.insert(0, 0);
        }
        let key = |name: &str| format!("{prefix}{name}");
        Self {
            prefix: prefix.to_owned(),
            steps,
            fanout_prefix: format!("{prefix}/{db}."),
            unacked: key("unacked"),
            unacked_index: key("unacked_index"),
            unacked_mutex: key("unacked_mutex"),
            delayed: key("_task_core.delayed"),
            exchanges: key("_task_core.exchanges"),
            queues: key("_task_core.queues"),
        }
    }

    /// The global key prefix (`""` for none).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The priority steps, lowest first (the order lists are popped in).
    pub(crate) fn steps(&self) -> &[u8] {
        &self.steps
    }

    /// The step a message priority falls in (kombu's `priority(n)`: the
    /// greatest step not above it), after clamping it to 0..=9.
    pub(crate) fn step_of(&self, priority: u8) -> u8 {
        let priority = priority.min(MAX_PRIORITY);
        self.steps
            .iter()
            .copied()
            .rfind(|step| *step <= priority)
            .unwrap_or(0)
    }

    /// The list holding `queue`'s messages of priority `priority`.
    pub(crate) fn list(&self, queue: &str, priority: u8) -> String {
        match self.step_of(priority) {
            0 => format!("{}{queue}", self.prefix),
            step => format!("{}{queue}{SEP}{step}", self.prefix),
        }
    }

    /// Every list of `queue`, in the order they are popped.
    pub(crate) fn lists(&self, queue: &str) -> Vec<String> {
        self.steps
            .iter()
            .map(|step| self.list(queue, *step))
            .collect()
    }

    /// The set of `exchange`'s bindings.
    pub(crate) fn bindings(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// The set kombu 5.7 keeps beside [`Keys::bindings`] for bindings of
    /// queues without an expiry (its sweep keeps tables listed there).
    pub(crate) fn permanent_bindings(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// The set of `queue`'s consumers (Rust processes'), scored by when
    /// each one's claim lapses (ms).
    pub(crate) fn consumers(&self, queue: &str) -> String {
        format!("{}_task_core.consumers.{queue}", self.prefix)
    }

    /// The lease of connection `id`: present while that connection is open
    /// (it owns the exclusive queues it declared while it is).
    pub(crate) fn connection(&self, id: &str) -> String {
        format!("{}_task_core.connection.{id}", self.prefix)
    }

    /// The key naming `queue`'s exclusive consumer while it has one.
    pub(crate) fn exclusive(&self, queue: &str) -> String {
        format!("{}_task_core.exclusive.{queue}", self.prefix)
    }

    /// The pub/sub channel a fanout message to `exchange` with
    /// `routing_key` goes to (kombu's `fanout_prefix` and
    /// `fanout_patterns`, both on by default).
    pub(crate) fn fanout_topic(&self, exchange: &str, routing_key: &str) -> String {
        if routing_key.is_empty() {
            format!("{}{exchange}", self.fanout_prefix)
        } else {
            format!("{}{exchange}/{routing_key}", self.fanout_prefix)
        }
    }
}

/// A binding as kombu stores it in a binding set.
pub(crate) fn binding_member(routing_key: &str, pattern: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{pattern}{SEP}{queue}")
}

/// A binding set's member read back: `(routing key, pattern, queue)`.
pub(crate) fn parse_binding(member: &str) -> Option<(&str, &str, &str)> {
    let mut parts = member.splitn(3, SEP);
    Some((parts.next()?, parts.next()?, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_lists_are_named_as_kombu_names_them() {
        let keys = Keys::new("", &DEFAULT_PRIORITY_STEPS, 0);
        assert_eq!(keys.list("celery", 0), "celery");
        assert_eq!(keys.list("celery", 2), "celery");
        assert_eq!(keys.list("celery", 5), "celery\x06\x163");
        assert_eq!(keys.list("celery", 9), "celery\x06\x169");
        assert_eq!(keys.list("celery", 200), "celery\x06\x169");
        assert_eq!(
            keys.lists("q"),
            ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
        );
    }

    #[test]
    fn the_global_prefix_goes_before_every_key_and_channel() {
        let keys = Keys::new("app1:", &DEFAULT_PRIORITY_STEPS, 2);
        assert_eq!(keys.list("q", 6), "app1:q\x06\x166");
        assert_eq!(keys.bindings("celery"), "app1:_kombu.binding.celery");
        assert_eq!(keys.unacked_index, "app1:unacked_index");
        assert_eq!(
            keys.fanout_topic("celeryev", "worker.heartbeat"),
            "app1:/2.celeryev/worker.heartbeat"
        );
        assert_eq!(
            keys.fanout_topic("celery.pidbox", ""),
            "app1:/2.celery.pidbox"
        );
    }

    #[test]
    fn binding_members_round_trip() {
        let member = binding_member("celery", "", "celery");
        assert_eq!(member, "celery\x06\x16\x06\x16celery");
        assert_eq!(parse_binding(&member), Some(("celery", "", "celery")));
    }

    #[test]
    fn steps_always_start_at_zero() {
        let keys = Keys::new("", &[5, 2], 0);
        assert_eq!(keys.steps(), [0, 2, 5]);
        assert_eq!(keys.list("q", 1), "q");
        assert_eq!(keys.list("q", 4), "q\x06\x162");
    }
}
