//! Which runs of an entry to fire now: a pure function of the schedule,
//! the last run accounted for, the time and the missed-run policy, so that
//! every scheduler process decides alike (and tests need no clock).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::MissedRuns;
use crate::schedule::Schedule;

/// What one entry has due at `now` ([`due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    /// The runs to fire, oldest first.
    pub(crate) runs: Vec<DateTime<Utc>>,
    /// The latest missed run, fired or skipped by the policy (so it is
    /// not looked at again), else the `last` given.
    pub(crate) missed_through: DateTime<Utc>,
}

/// The runs of one entry to fire at `now`, given that every run up to
/// `last` is accounted for (fired, or before the entry was first seen).
///
/// Runs due within `grace` before `now` are late, not missed: they all
/// fire (a takeover, a slow publish). Older runs are missed, and `policy`
/// says which of them fire. Only the runs that fire are enumerated, so a
/// long outage of a frequent entry costs no more than `max` steps.
pub(crate) fn due(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: MissedRuns,
    grace: Duration,
) -> Due {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let missed_until = now.checked_sub_signed(grace).unwrap_or(now);
    let mut runs = Vec::new();
    // Missed runs: (last, missed_until].
    let latest_missed = schedule
        .last_at_or_before(missed_until)
        .filter(|run| *run > last);
    if let Some(latest) = latest_missed {
        match policy {
            MissedRuns::Skip => {}
            MissedRuns::RunOnce => runs.push(latest),
            MissedRuns::RunAll { max } => {
                let mut run = latest;
                for _ in 0..max {
                    runs.push(run);
                    let before = run - chrono::Duration::milliseconds(1);
                    match schedule.last_at_or_before(before).filter(|r| *r > last) {
                        Some(earlier) => run = earlier,
                        None => break,
                    }
                }
                runs.reverse();
            }
        }
    }
    // Late runs: (max(last, missed_until), now].
    let mut cursor = last.max(missed_until);
    while let Some(run) = schedule.next_after(cursor).filter(|run| *run <= now) {
        runs.push(run);
        cursor = run;
    }
    Due {
        runs,
        missed_through: latest_missed.unwrap_or(last),
    }
}

/// The delay of an entry's run within `0..max`, the same in every process
/// for the same entry and run (FNV-1a of the name and the run's
/// millisecond timestamp).
pub(crate) fn jitter(entry: &str, run: DateTime<Utc>, max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in entry.bytes().chain(run.timestamp_millis().to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::from_millis(hash % max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, h, m, s)
            .single()
            .expect("valid time")
    }

    fn every(secs: u64) -> Schedule {
        Schedule::every(Duration::from_secs(secs)).expect("valid period")
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn a_run_due_now_fires_once() {
        let runs = due(
            &every(60),
            at(10, 0, 0),
            at(10, 1, 0),
            MissedRuns::Skip,
            GRACE,
        )
        .runs;
        assert_eq!(runs, vec![at(10, 1, 0)]);
        let runs = due(
            &every(60),
            at(10, 1, 0),
            at(10, 1, 0),
            MissedRuns::Skip,
            GRACE,
        )
        .runs;
        assert!(runs.is_empty(), "a run accounted for does not fire again");
    }

    #[test]
    fn late_runs_within_the_grace_period_all_fire_whatever_the_policy() {
        // A takeover 4 s late on a 1 s schedule.
        let runs = due(
            &every(1),
            at(10, 0, 0),
            at(10, 0, 4),
            MissedRuns::Skip,
            GRACE,
        )
        .runs;
        assert_eq!(
            runs,
            vec![at(10, 0, 1), at(10, 0, 2), at(10, 0, 3), at(10, 0, 4)]
        );
    }

    #[test]
    fn missed_runs_follow_the_policy() {
        let (last, now) = (at(8, 0, 0), at(12, 0, 40));
        let hourly = every(3600);
        assert!(due(&hourly, last, now, MissedRuns::Skip, GRACE)
            .runs
            .is_empty());
        assert_eq!(
            due(&hourly, last, now, MissedRuns::RunOnce, GRACE).runs,
            vec![at(12, 0, 0)],
            "Celery's behaviour: the latest missed run, once"
        );
        assert_eq!(
            due(&hourly, last, now, MissedRuns::RunAll { max: 10 }, GRACE).runs,
            vec![at(9, 0, 0), at(10, 0, 0), at(11, 0, 0), at(12, 0, 0)]
        );
        assert_eq!(
            due(&hourly, last, now, MissedRuns::RunAll { max: 2 }, GRACE).runs,
            vec![at(11, 0, 0), at(12, 0, 0)],
            "the latest `max`, oldest first"
        );
        assert_eq!(
            due(&hourly, last, now, MissedRuns::Skip, GRACE).missed_through,
            at(12, 0, 0)
        );
    }

    #[test]
    fn missed_and_late_runs_together() {
        // Down from 10:00:00 to 10:01:00 on a 10 s schedule, grace 30 s:
        // 10:00:10 and 10:00:20 (and 10:00:30) are missed, the rest late.
        let runs = due(
            &every(10),
            at(10, 0, 0),
            at(10, 1, 0),
            MissedRuns::RunOnce,
            GRACE,
        )
        .runs;
        assert_eq!(
            runs,
            vec![at(10, 0, 30), at(10, 0, 40), at(10, 0, 50), at(10, 1, 0)]
        );
        let runs = due(
            &every(10),
            at(10, 0, 0),
            at(10, 1, 0),
            MissedRuns::Skip,
            GRACE,
        )
        .runs;
        assert_eq!(runs, vec![at(10, 0, 40), at(10, 0, 50), at(10, 1, 0)]);
    }

    #[test]
    fn a_long_outage_of_a_frequent_entry_enumerates_only_what_fires() {
        let last = Utc
            .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        let runs = due(
            &every(1),
            last,
            at(10, 0, 0),
            MissedRuns::RunAll { max: 3 },
            GRACE,
        )
        .runs;
        assert_eq!(
            runs.len(),
            3 + 30,
            "3 missed, 30 late within the grace period"
        );
    }

    #[test]
    fn jitter_is_below_its_bound_and_the_same_for_the_same_run() {
        let max = Duration::from_secs(10);
        let a = jitter("report", at(3, 0, 0), max);
        assert!(a < max);
        assert_eq!(a, jitter("report", at(3, 0, 0), max));
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|i| jitter("report", at(3, i, 0), max))
            .collect();
        assert!(spread.len() > 10, "runs get different delays: {spread:?}");
        assert_eq!(
            jitter("report", at(3, 0, 0), Duration::ZERO),
            Duration::ZERO
        );
    }
}
