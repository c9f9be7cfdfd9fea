//! The time the framework schedules by: ETAs, countdowns and expiry.
//!
//! [`now`] is the wall clock read once (at first use) and advanced by tokio's
//! monotonic clock from then on. Waits computed from it therefore agree with
//! the timers that carry them out, a step of the system clock (an NTP step, a
//! manual change) does not make every pending wait jump, and under tokio's
//! paused test clock (`start_paused`) ETAs, countdowns, retries and expiry
//! follow the paused time, so such tests run in milliseconds. Times on the
//! wire stay absolute UTC (`eta`, `expires`), compared with [`now`].

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// The current time, for scheduling (see the module docs).
pub fn now() -> DateTime<Utc> {
    static ANCHOR: OnceLock<(DateTime<Utc>, std::time::Instant)> = OnceLock::new();
    let (wall, at) = *ANCHOR.get_or_init(|| (Utc::now(), std::time::Instant::now()));
    let monotonic = Instant::now().into_std();
    // A paused runtime created before the anchor reads earlier instants.
    match monotonic.checked_duration_since(at) {
        Some(ahead) => chrono::Duration::from_std(ahead).map_or(wall, |ahead| wall + ahead),
        None => chrono::Duration::from_std(at - monotonic).map_or(wall, |behind| wall - behind),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock() {
        let before = now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let elapsed = now() - before;
        assert!(
            (elapsed - chrono::Duration::seconds(3600))
                .num_milliseconds()
                .abs()
                < 50,
            "{elapsed}"
        );
    }

    #[test]
    fn starts_at_the_wall_clock() {
        let drift = now() - Utc::now();
        assert!(drift.num_milliseconds().abs() < 1000, "{drift}");
    }
}
