//! Delayed delivery kept by RabbitMQ itself, without plugins: a cascade of
//! TTL queues, one level per hexadecimal digit of the delay.
//!
//! Level `k` (0..[`LEVELS`]) is a topic exchange `task.delay.v2.L<k>` with
//! 15 durable queues `task.delay.v2.L<k>.<d>` (`d` = 1..f), whose every
//! message waits exactly `d × 16^k` ms (`x-message-ttl`) before it is
//! dead-lettered to level `k-1` (level 0 dead-letters to the delivery
//! exchange). A delayed message's routing key spells its delay in
//! hexadecimal, most significant digit first, followed by the target queue:
//! `0.0.0.0.2.7.1.0.<queue>` for 10,000 ms, and is published to the level of
//! its highest non-zero digit (the levels above would only pass it on). At
//! each level, the digit for that level routes the message into the queue
//! that waits that many units, or, for a zero, straight on to the next
//! level's exchange. Dead-lettering keeps the routing key, so the message
//! walks down the levels, waiting exactly its delay, and the delivery
//! exchange finally routes it to its queue by the queue name after the
//! digits.
//!
//! A message is dead-lettered once per non-zero digit: at most 4 times for
//! delays under 65 s (a binary cascade takes one hop per set bit, about 7
//! for 10 s, and each hop is a persistent enqueue in the broker). Because
//! every message in one queue waits the same time, queue order is expiry
//! order: a short delay never waits behind a long one. Nothing is held in a
//! worker's memory or prefetch window, and everything is durable and
//! persistent, so delays survive a broker restart. Delays longer than
//! [`MAX_DELAY_MS`] (about 49.7 days) are cut; the worker that receives the
//! message early parks it again for the rest.
//!
//! A message that comes due for a queue the delivery exchange cannot route
//! to (the queue was deleted and declared again, so its binding is gone, or
//! it does not exist yet) is not dropped: the delivery exchange's
//! alternate exchange [`UNROUTED`] (fanout) keeps it, with its routing key,
//! in the durable queue of the same name, from which workers move it to its
//! queue once that exists ([`target_queue`] reads it from the key).
//!
//! (The first generation, `task.delay.x16.*`, had no alternate exchange;
//! exchange arguments cannot change in place, hence the new names. Messages
//! still in the old levels arrive through the old delivery exchange's
//! bindings, which RabbitMQ keeps; the old objects can be deleted once
//! their queues are empty.)

//! With quorum queues the framework uses Celery's own layout instead
//! ([`celery`]): binary levels of whole seconds, each a quorum queue that
//! dead-letters at least once, so a delayed task survives a node's death in
//! transit and Python and Rust peers share the levels ([`Layout`]).

use super::QueueType;

/// Which delay levels a broker publishes delayed messages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Layout {
    /// This framework's cascade of classic TTL queues (this module's
    /// functions): millisecond resolution, at most 8 hops, an unrouted
    /// queue keeping what comes due for a queue that is gone.
    #[default]
    Cascade,
    /// Celery 5.5+'s native delayed delivery ([`celery`]): 28 binary levels
    /// of whole seconds, declared exactly as kombu declares them (queues of
    /// `level_type`), shared with Python peers.
    Celery {
        /// The type of the level queues (Celery's
        /// `broker_native_delayed_delivery_queue_type`, `quorum` by default).
        level_type: QueueType,
    },
}

impl Layout {
    /// The layout a task queue type goes with: Celery's native levels of
    /// quorum queues for quorum queues (what Celery 5.5+ peers use), the
    /// cascade for classic ones.
    pub fn for_queue_type(queue_type: QueueType) -> Self {
        match queue_type {
            QueueType::Classic => Layout::Cascade,
            QueueType::Quorum => Layout::Celery {
                level_type: QueueType::Quorum,
            },
        }
    }

    /// The finest delay the layout keeps: a delay is cut down to a multiple
    /// of it, so a message may arrive up to this much early (a worker holds
    /// it for the rest).
    pub fn resolution(self) -> std::time::Duration {
        match self {
            Layout::Cascade => std::time::Duration::from_millis(1),
            Layout::Celery { .. } => std::time::Duration::from_secs(1),
        }
    }
}

/// Bits per level (one hexadecimal digit).
const DIGIT_BITS: u32 = 4;

/// Number of levels (digits): delays up to 16^8 - 1 ms (about 49.7 days).
pub const LEVELS: u32 = 8;

/// The longest delay one trip through the levels can give, in milliseconds.
pub const MAX_DELAY_MS: u64 = (1u64 << (LEVELS * DIGIT_BITS)) - 1;

/// The digit values that wait (0 passes straight on).
pub const WAITING_DIGITS: std::ops::RangeInclusive<u32> = 1..=15;

/// The exchange of level `k`.
pub fn level_name(k: u32) -> String {
    format!("task.delay.v2.L{k}")
}

/// The queue of level `k` where messages whose digit `k` is `digit` wait.
pub fn wait_queue_name(k: u32, digit: u32) -> String {
    format!("task.delay.v2.L{k}.{digit:x}")
}

/// How long a message waits in [`wait_queue_name`]`(k, digit)`, in ms.
pub fn wait_ms(k: u32, digit: u32) -> u64 {
    u64::from(digit) << (k * DIGIT_BITS)
}

/// Every wait queue of the cascade, lowest level first.
pub fn wait_queues() -> impl Iterator<Item = String> {
    (0..LEVELS).flat_map(|k| WAITING_DIGITS.map(move |digit| wait_queue_name(k, digit)))
}

/// The exchange that routes due messages to their queues.
pub const DELIVERY_EXCHANGE: &str = "task.delay.v2.deliver";

/// The delivery exchange's alternate exchange (fanout), and the durable
/// queue bound to it, where due messages that no queue binding matched are
/// kept until their queue exists.
pub const UNROUTED: &str = "task.delay.v2.unrouted";

/// The queue a delayed message's routing key is for (what follows the
/// digits), if the key has that shape.
pub fn target_queue(routing_key: &str) -> Option<&str> {
    let mut rest = routing_key;
    for _ in 0..LEVELS {
        let (digit, tail) = rest.split_once('.')?;
        if digit.len() != 1 || !digit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        rest = tail;
    }
    (!rest.is_empty()).then_some(rest)
}

fn digit(delay: u64, k: u32) -> u32 {
    // Masked to 4 bits: the cast cannot truncate.
    (delay >> (k * DIGIT_BITS) & 0xf) as u32
}

/// The exchange a message delayed `delay_ms` is first published to: the
/// level of its highest non-zero digit (the levels above would only pass it
/// on, and every exchange-to-exchange hop costs the broker CPU), or the
/// delivery exchange for no delay.
pub fn entry_exchange(delay_ms: u64) -> String {
    let delay = delay_ms.min(MAX_DELAY_MS);
    match (0..LEVELS).rev().find(|&k| digit(delay, k) != 0) {
        Some(k) => level_name(k),
        None => DELIVERY_EXCHANGE.to_owned(),
    }
}

/// The routing key of a message delayed `delay_ms` (capped at
/// [`MAX_DELAY_MS`]) for `queue`.
pub fn routing_key(delay_ms: u64, queue: &str) -> String {
    let delay = delay_ms.min(MAX_DELAY_MS);
    let mut key = String::with_capacity(LEVELS as usize * 2 + queue.len());
    for k in (0..LEVELS).rev() {
        key.push(char::from_digit(digit(delay, k), 16).unwrap_or('0'));
        key.push('.');
    }
    key.push_str(queue);
    key
}

/// The binding pattern at level `k` for messages whose digit `k` is `digit`.
pub fn level_pattern(k: u32, digit: u32) -> String {
    let mut pattern = "*.".repeat((LEVELS - 1 - k) as usize);
    pattern.push(char::from_digit(digit, 16).unwrap_or('0'));
    pattern.push_str(".#");
    pattern
}

/// The delivery exchange's binding pattern for `queue`: any digits, then
/// exactly the queue's name.
pub fn delivery_pattern(queue: &str) -> String {
    let mut pattern = "*.".repeat(LEVELS as usize);
    pattern.push_str(queue);
    pattern
}

/// Where level `k` sends what it is done with.
pub fn next_exchange(k: u32) -> String {
    if k == 0 {
        DELIVERY_EXCHANGE.to_owned()
    } else {
        level_name(k - 1)
    }
}

/// Whether RabbitMQ recorded dead-lettering history in these headers.
pub fn has_death_history(headers: &super::Headers) -> bool {
    headers.iter().any(|(key, _)| is_death_header(key))
}

/// Removes RabbitMQ's dead-lettering history (`x-death`, `x-first-death-*`,
/// `x-last-death-*`), so that the message may travel the levels again.
pub fn strip_death_history(headers: &mut super::Headers) {
    headers.retain(|key, _| !is_death_header(key));
}

fn is_death_header(key: &str) -> bool {
    key == "x-death" || key.starts_with("x-first-death-") || key.starts_with("x-last-death-")
}

/// Celery 5.5+'s native delayed delivery on RabbitMQ, as kombu 5.7 lays
/// it out (`kombu/transport/native_delayed_delivery.py`), so that a
/// countdown sent by either side reaches a worker of the other at its ETA.
///
/// Level `k` (0..28) is a topic exchange `celery_delayed_<k>` and a queue of
/// the same name (durable, `x-queue-type` quorum or classic, `x-message-ttl`
/// 2^k s, `x-overflow: reject-publish`, dead-lettering to level `k-1`, or
/// from level 0 to the delivery exchange `celery_delayed_delivery`, at
/// least once for quorum queues). A delayed message's routing key is its
/// delay in whole seconds as 28 bits, most significant first, each followed
/// by `.`, then the target's routing key (`0.….1.0.1.0.celery` for 10 s).
/// At level `k` a set bit routes the message into the level's queue, where
/// it waits 2^k s; a clear bit passes it straight on to level `k-1`'s
/// exchange. The delivery exchange routes on the key's tail: every target
/// queue is bound to it (Celery's workers bind their queue's exchange with
/// `#.<routing key>`; this framework binds the queue itself with exactly 28
/// words before the key: [`celery::delivery_pattern`]; RabbitMQ routes a
/// message that reaches one queue by both paths to it once).
///
/// Celery's clients publish to level 27; this framework publishes to the
/// level of the highest set bit (the levels above would only pass the
/// message on). Delays are whole seconds: Celery's client cuts the
/// fraction off, as does this framework, whose workers hold a message that
/// arrives less than a second early for the rest. A due message for a queue
/// bound to nothing is dropped by RabbitMQ (kombu's exchanges have no
/// alternate exchange, and one cannot be added without making every peer's
/// declaration differ).
pub mod celery {
    /// Bits in the delay (whole seconds): up to 2^28 - 1 s, about 8.5 years.
    pub const BITS: u32 = 28;

    /// The longest delay one trip through the levels gives, in seconds.
    pub const MAX_DELAY_SECS: u64 = (1 << BITS) - 1;

    /// The exchange that routes due messages to their queues.
    pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

    /// The exchange and the queue of level `k`.
    pub fn level_name(k: u32) -> String {
        format!("celery_delayed_{k}")
    }

    /// How long a message waits in level `k`'s queue, in milliseconds
    /// (its `x-message-ttl`).
    pub fn wait_ms(k: u32) -> u64 {
        (1u64 << k) * 1000
    }

    /// Where level `k` dead-letters to.
    pub fn next_exchange(k: u32) -> String {
        if k == 0 {
            DELIVERY_EXCHANGE.to_owned()
        } else {
            level_name(k - 1)
        }
    }

    /// The pattern binding level `k`'s queue to its exchange: bit `k` set.
    pub fn queue_pattern(k: u32) -> String {
        bit_pattern(k, '1')
    }

    /// The pattern binding level `k`'s exchange to the next one's (and
    /// level 0's to the delivery exchange): bit `k` clear.
    pub fn pass_pattern(k: u32) -> String {
        bit_pattern(k, '0')
    }

    fn bit_pattern(k: u32, bit: char) -> String {
        let mut pattern = "*.".repeat((BITS - 1 - k) as usize);
        pattern.push(bit);
        pattern.push_str(".#");
        pattern
    }

    /// The delivery exchange's binding for `routing_key`: 28 bits, then
    /// exactly the key. (Celery's workers bind `#.<key>`, which also takes
    /// what is due for any key ending in `.<key>`: a queue `high` would get
    /// the delayed tasks of a queue `tasks.high`.)
    pub fn delivery_pattern(routing_key: &str) -> String {
        let mut pattern = "*.".repeat(BITS as usize);
        pattern.push_str(routing_key);
        pattern
    }

    /// The routing key of a message delayed `secs` seconds (capped at
    /// [`MAX_DELAY_SECS`]) for `routing_key`, whose own delay prefix, if it
    /// carries one from an earlier trip, is dropped first (as kombu does).
    pub fn routing_key(secs: u64, routing_key: &str) -> String {
        let secs = secs.min(MAX_DELAY_SECS);
        let target = strip_prefix(routing_key);
        let mut key = String::with_capacity(BITS as usize * 2 + target.len());
        for k in (0..BITS).rev() {
            key.push(if secs >> k & 1 == 1 { '1' } else { '0' });
            key.push('.');
        }
        key.push_str(target);
        key
    }

    /// The routing key without a delay prefix (28 `0.` / `1.` words).
    pub fn strip_prefix(routing_key: &str) -> &str {
        let bytes = routing_key.as_bytes();
        let prefix = BITS as usize * 2;
        let is_prefix = bytes.len() >= prefix
            && bytes[..prefix]
                .chunks(2)
                .all(|pair| matches!(pair, [b'0' | b'1', b'.']));
        if is_prefix {
            &routing_key[prefix..]
        } else {
            routing_key
        }
    }

    /// The level a message delayed `secs` seconds is first published to:
    /// that of its highest set bit (`None` for no delay).
    pub fn entry_level(secs: u64) -> Option<u32> {
        let secs = secs.min(MAX_DELAY_SECS);
        (secs > 0).then(|| 63 - secs.leading_zeros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RabbitMQ's topic matching (`*` one word, `#` zero or more).
    fn topic_matches(pattern: &str, key: &str) -> bool {
        fn words(pattern: &[&str], key: &[&str]) -> bool {
            match (pattern.split_first(), key.split_first()) {
                (None, None) => true,
                (Some((&"#", rest)), _) => {
                    words(rest, key) || (!key.is_empty() && words(pattern, &key[1..]))
                }
                (Some((&"*", rest)), Some((_, tail))) => words(rest, tail),
                (Some((word, rest)), Some((first, tail))) => word == first && words(rest, tail),
                _ => false,
            }
        }
        let pattern: Vec<&str> = pattern.split('.').collect();
        let key: Vec<&str> = key.split('.').collect();
        words(&pattern, &key)
    }

    /// Walks a key down the levels as RabbitMQ would and returns the wait
    /// queues it passes through.
    fn walk(key: &str) -> Vec<(u32, u32)> {
        (0..LEVELS)
            .rev()
            .flat_map(|k| WAITING_DIGITS.map(move |d| (k, d)))
            .filter(|(k, d)| topic_matches(&level_pattern(*k, *d), key))
            .collect()
    }

    #[test]
    fn a_key_waits_exactly_its_delay_and_reaches_only_its_queue() {
        for delay in [0u64, 1, 2, 15, 16, 1000, 1023, 10_000, 65_535, MAX_DELAY_MS] {
            let key = routing_key(delay, "orders.high");
            let hops = walk(&key);
            let waited: u64 = hops.iter().map(|(k, d)| wait_ms(*k, *d)).sum();
            assert_eq!(waited, delay, "{key}");
            assert_eq!(
                hops.len(),
                format!("{delay:x}").chars().filter(|&c| c != '0').count(),
                "one hop per non-zero digit: {key}"
            );
            for k in 0..LEVELS {
                let routes = (0..16)
                    .filter(|d| topic_matches(&level_pattern(k, *d), &key))
                    .count();
                assert_eq!(routes, 1, "level {k} routes {key} exactly one way");
            }
            assert!(topic_matches(&delivery_pattern("orders.high"), &key));
            assert!(!topic_matches(&delivery_pattern("high"), &key));
            assert!(!topic_matches(&delivery_pattern("orders"), &key));
        }
        assert_eq!(routing_key(10_000, "q"), "0.0.0.0.2.7.1.0.q");
        assert_eq!(routing_key(u64::MAX, "q"), routing_key(MAX_DELAY_MS, "q"));
    }

    #[test]
    fn levels_chain_down_to_the_delivery_exchange() {
        assert_eq!(entry_exchange(MAX_DELAY_MS), "task.delay.v2.L7");
        assert_eq!(entry_exchange(10_000), "task.delay.v2.L3");
        assert_eq!(entry_exchange(15), "task.delay.v2.L0");
        assert_eq!(entry_exchange(0), DELIVERY_EXCHANGE);
        assert_eq!(next_exchange(5), "task.delay.v2.L4");
        assert_eq!(next_exchange(0), DELIVERY_EXCHANGE);
        assert_eq!(wait_queue_name(3, 10), "task.delay.v2.L3.a");
        assert_eq!(wait_ms(3, 10), 40_960);
        assert_eq!(wait_queues().count(), 120);
        assert!(delivery_pattern("q").len() < 255);
    }

    #[test]
    fn the_target_queue_is_read_back_from_the_routing_key() {
        assert_eq!(
            target_queue(&routing_key(10_000, "orders.high")),
            Some("orders.high")
        );
        assert_eq!(target_queue(&routing_key(0, "q")), Some("q"));
        assert_eq!(target_queue("0.0.0.0.2.7.1.0."), None);
        assert_eq!(target_queue("orders"), None);
        assert_eq!(target_queue("0.0.0.0.2.7.1.zz.q"), None);
    }

    /// Walks a key down Celery's levels as RabbitMQ would: the levels whose
    /// queue it enters, from the entry level down.
    fn walk_celery(entry: u32, key: &str) -> Vec<u32> {
        (0..=entry)
            .rev()
            .filter(|k| {
                let enters = topic_matches(&celery::queue_pattern(*k), key);
                let passes = topic_matches(&celery::pass_pattern(*k), key);
                assert!(enters ^ passes, "level {k} routes {key} exactly one way");
                enters
            })
            .collect()
    }

    #[test]
    fn celery_keys_wait_their_whole_seconds_as_kombu_computes_them() {
        // kombu: '.'.join(f'{countdown:028b}') + '.' + routing_key
        assert_eq!(
            celery::routing_key(10, "celery"),
            format!("{}1.0.1.0.celery", "0.".repeat(24))
        );
        for secs in [1u64, 2, 3, 10, 59, 60, 3600, 86_400, celery::MAX_DELAY_SECS] {
            let key = celery::routing_key(secs, "tasks.high");
            let entry = celery::entry_level(secs).unwrap();
            let waited: u64 = walk_celery(entry, &key)
                .iter()
                .map(|k| celery::wait_ms(*k))
                .sum();
            assert_eq!(waited, secs * 1000, "{key}");
            // From level 27, as Celery's clients publish, the same queues.
            assert_eq!(
                walk_celery(celery::BITS - 1, &key),
                walk_celery(entry, &key)
            );
            assert!(topic_matches(&celery::delivery_pattern("tasks.high"), &key));
            assert!(!topic_matches(&celery::delivery_pattern("high"), &key));
        }
        assert_eq!(celery::entry_level(0), None);
        assert_eq!(celery::entry_level(1), Some(0));
        assert_eq!(celery::entry_level(10), Some(3));
        assert_eq!(celery::next_exchange(0), celery::DELIVERY_EXCHANGE);
        assert_eq!(celery::next_exchange(3), "celery_delayed_2");
    }

    #[test]
    fn a_celery_key_delayed_again_keeps_one_prefix() {
        let once = celery::routing_key(5, "celery");
        let twice = celery::routing_key(7, &once);
        assert_eq!(twice, celery::routing_key(7, "celery"));
        assert_eq!(celery::strip_prefix(&once), "celery");
        assert_eq!(celery::strip_prefix("0.1.celery"), "0.1.celery");
    }
}
