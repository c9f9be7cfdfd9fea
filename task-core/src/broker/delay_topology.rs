//! Delayed delivery kept by RabbitMQ itself, without plugins: a binary
//! cascade of TTL queues.
//!
//! Level `k` (0..[`LEVELS`]) is a topic exchange `task.delay.level.k` and a
//! durable queue of the same name whose every message waits exactly `2^k` ms
//! (`x-message-ttl`) before it is dead-lettered to level `k-1` (level 0
//! dead-letters to the delivery exchange). A delayed message's routing key
//! spells its delay in binary, most significant bit first, followed by the
//! target queue: `1.0.1. … .0.<queue>`, and is published to the level of its
//! highest set bit (the levels above would only pass it on). At each level the bit for that level
//! routes the message into the level's queue (bit 1: wait `2^k` ms) or
//! straight on to the next level's exchange (bit 0). Dead-lettering keeps the
//! routing key, so the message walks down the levels, waiting exactly the sum
//! of its bits, and the delivery exchange finally routes it to its queue by
//! the queue name after the bits.
//!
//! Because every message in one level queue waits the same time, queue order
//! is expiry order: a short delay never waits behind a long one. Nothing is
//! held in a worker's memory or prefetch window, and everything is durable
//! and persistent, so delays survive a broker restart. Delays longer than
//! `2^LEVELS - 1` ms (about 49 days) are cut; the worker that receives the
//! message early parks it again for the rest.

/// Number of levels: delays up to 2^32 - 1 ms (about 49.7 days).
pub const LEVELS: u32 = 32;

/// The longest delay one trip through the levels can give, in milliseconds.
pub const MAX_DELAY_MS: u64 = (1u64 << LEVELS) - 1;

/// The exchange (and queue) of level `k`.
pub fn level_name(k: u32) -> String {
    format!("task.delay.level.{k}")
}

/// The exchange that routes due messages to their queues.
pub const DELIVERY_EXCHANGE: &str = "task.delay.deliver";

/// The exchange a message delayed `delay_ms` is first published to: the
/// level of its highest set bit (the levels above would only pass it on, and
/// every exchange-to-exchange hop costs the broker CPU), or the delivery
/// exchange for no delay.
pub fn entry_exchange(delay_ms: u64) -> String {
    let delay = delay_ms.min(MAX_DELAY_MS);
    if delay == 0 {
        DELIVERY_EXCHANGE.to_owned()
    } else {
        level_name(63 - delay.leading_zeros())
    }
}

/// The routing key of a message delayed `delay_ms` (capped at
/// [`MAX_DELAY_MS`]) for `queue`.
pub fn routing_key(delay_ms: u64, queue: &str) -> String {
    let delay = delay_ms.min(MAX_DELAY_MS);
    let mut key = String::with_capacity(LEVELS as usize * 2 + queue.len());
    for k in (0..LEVELS).rev() {
        key.push(if delay >> k & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(queue);
    key
}

/// The binding pattern at level `k` for messages whose bit `k` is `bit`.
pub fn level_pattern(k: u32, bit: bool) -> String {
    let mut pattern = "*.".repeat((LEVELS - 1 - k) as usize);
    pattern.push(if bit { '1' } else { '0' });
    pattern.push_str(".#");
    pattern
}

/// The delivery exchange's binding pattern for `queue`: any bits, then
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

    /// Walks a key down the levels as RabbitMQ would and returns the waits.
    fn walk(key: &str) -> Vec<u32> {
        (0..LEVELS)
            .rev()
            .filter(|k| topic_matches(&level_pattern(*k, true), key))
            .collect()
    }

    #[test]
    fn a_key_waits_exactly_its_delay_and_reaches_only_its_queue() {
        for delay in [0u64, 1, 2, 3, 1000, 1023, 10_000, MAX_DELAY_MS] {
            let key = routing_key(delay, "orders.high");
            let waited: u64 = walk(&key).iter().map(|k| 1u64 << k).sum();
            assert_eq!(waited, delay, "{key}");
            for k in 0..LEVELS {
                let one = topic_matches(&level_pattern(k, true), &key);
                let zero = topic_matches(&level_pattern(k, false), &key);
                assert!(one ^ zero, "level {k} routes {key} exactly one way");
            }
            assert!(topic_matches(&delivery_pattern("orders.high"), &key));
            assert!(!topic_matches(&delivery_pattern("high"), &key));
            assert!(!topic_matches(&delivery_pattern("orders"), &key));
        }
        assert_eq!(routing_key(u64::MAX, "q"), routing_key(MAX_DELAY_MS, "q"));
    }

    #[test]
    fn levels_chain_down_to_the_delivery_exchange() {
        assert_eq!(entry_exchange(MAX_DELAY_MS), "task.delay.level.31");
        assert_eq!(entry_exchange(1000), "task.delay.level.9");
        assert_eq!(entry_exchange(1), "task.delay.level.0");
        assert_eq!(entry_exchange(0), DELIVERY_EXCHANGE);
        assert_eq!(next_exchange(5), "task.delay.level.4");
        assert_eq!(next_exchange(0), DELIVERY_EXCHANGE);
        assert!(delivery_pattern("q").len() < 255);
    }
}
