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

#[cfg(test)]
mod tests {
    use super::*;

    /// RabbitMQ's topic matching, enough for these patterns (`*` one word, `#` the rest).
    fn topic_matches(pattern: &str, key: &str) -> bool {
        let pattern: Vec<&str> = pattern.split('.').collect();
        let key: Vec<&str> = key.split('.').collect();
        let mut i = 0;
        for (p, word) in pattern.iter().enumerate() {
            match *word {
                "#" => return p == pattern.len() - 1,
                "*" => {}
                w if key.get(i) == Some(&w) => {}
                _ => return false,
            }
            i += 1;
        }
        i == key.len()
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
}
