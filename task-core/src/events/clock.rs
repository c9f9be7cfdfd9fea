//! [`LamportClock`]: the logical clock Celery's events and remote control
//! messages carry (`clock`), so that a monitor can order what several
//! processes sent.

use std::sync::atomic::{AtomicU64, Ordering};

/// A Lamport clock: advanced by one for each message sent, and moved past
/// each clock value received.
#[derive(Debug, Default)]
pub struct LamportClock {
    value: AtomicU64,
}

impl LamportClock {
    /// A clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Advances the clock for a message about to be sent; returns the new
    /// value, which the message carries.
    pub fn forward(&self) -> u64 {
        self.value.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves the clock past `received` (a value another process sent), as
    /// Lamport's rule says: the clock becomes `max(own, received) + 1`.
    pub fn adjust(&self, received: u64) -> u64 {
        let mut current = self.value.load(Ordering::Relaxed);
        loop {
            let next = current.max(received) + 1;
            match self.value.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => current = actual,
            }
        }
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_sends_and_moves_past_what_it_receives() {
        let clock = LamportClock::new();
        assert_eq!((clock.forward(), clock.forward()), (1, 2));
        assert_eq!(clock.adjust(10), 11);
        assert_eq!(clock.adjust(3), 12);
        assert_eq!(clock.value(), 12);
    }
}
