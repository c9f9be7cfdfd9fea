//! [`Entry`]: one periodic task, as declared (in code or in a file), and
//! [`MissedRuns`], what happens to the runs that nobody fired in time.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::schedule::{Crontab, Schedule, ScheduleError};
use crate::Signature;

/// What to do with the runs of an entry that were due while no scheduler
/// was running (older than the scheduler's grace period, see
/// [`BeatBuilder::grace`](super::BeatBuilder::grace)). Runs late by less
/// than the grace period (a takeover, a busy machine) are always fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissedRuns {
    /// Fire none of them: the entry goes on with its next run.
    Skip,
    /// Fire the latest of them once (Celery beat's behaviour: missed runs
    /// collapse into one).
    #[default]
    RunOnce,
    /// Fire each of them, oldest first, but no more than the latest `max`.
    RunAll {
        /// The most missed runs fired.
        max: u32,
    },
}

/// How an entry's schedule was given, checked when the scheduler is built
/// (so a bad expression is an error naming the entry, at start).
#[derive(Debug, Clone)]
pub(crate) enum When {
    /// Standard (Vixie) cron text.
    Cron(String),
    /// Celery's `crontab(...)` fields.
    Celery(Crontab),
    /// A fixed period.
    Every(Duration),
    /// One instant.
    Once(DateTime<Utc>),
    /// A schedule built already.
    Schedule(Box<Schedule>),
}

/// One periodic task: a name (unique in its scheduler: the durable record
/// of its last run is kept under it), what to send (a [`Signature`]: task,
/// arguments and call options such as queue, expiry and priority), when,
/// and how to treat late and missed runs.
///
/// ```
/// use std::time::Duration;
/// use task_core::beat::{Entry, MissedRuns};
/// use task_core::Signature;
///
/// let nightly = Entry::cron("nightly-report", "0 3 * * *", Signature::<()>::new("reports.nightly"))
///     .timezone("Europe/Paris")
///     .jitter(Duration::from_secs(30))
///     .missed(MissedRuns::Skip);
/// let heartbeat = Entry::every(
///     "heartbeat",
///     Duration::from_secs(10),
///     Signature::<()>::new("ops.heartbeat").expires_in(Duration::from_secs(10)),
/// );
/// # let _ = (nightly, heartbeat);
/// ```
#[derive(Debug, Clone)]
pub struct Entry {
    pub(crate) name: String,
    pub(crate) signature: Signature,
    pub(crate) when: When,
    pub(crate) timezone: Option<String>,
    pub(crate) jitter: Option<Duration>,
    pub(crate) missed: MissedRuns,
}

impl Entry {
    fn with<R>(name: impl Into<String>, when: When, signature: Signature<R>) -> Self {
        Self {
            name: name.into(),
            signature: signature.returning(),
            when,
            timezone: None,
            jitter: None,
            missed: MissedRuns::default(),
        }
    }

    /// Runs on a standard (Vixie) cron expression: `"m h dom mon dow"` (or
    /// six fields with seconds first); a day matching either day field is
    /// due when both are restricted, and 0 or 7 is Sunday. See
    /// [`crate::schedule`] for how it differs from Celery's form.
    pub fn cron<R>(
        name: impl Into<String>,
        expression: impl Into<String>,
        signature: Signature<R>,
    ) -> Self {
        Self::with(name, When::Cron(expression.into()), signature)
    }

    /// Runs on Celery's `crontab(...)`: day fields ANDed, day of week 0-6
    /// with Sunday = 0 (7 is refused), as Celery's beat reads it.
    pub fn celery<R>(name: impl Into<String>, crontab: Crontab, signature: Signature<R>) -> Self {
        Self::with(name, When::Celery(crontab), signature)
    }

    /// Runs every `period`, on a grid every process computes alike (whole
    /// multiples of the period since the Unix epoch: `every(5 min)` runs at
    /// :00, :05, ...).
    pub fn every<R>(name: impl Into<String>, period: Duration, signature: Signature<R>) -> Self {
        Self::with(name, When::Every(period), signature)
    }

    /// Runs once, at `at` (if the scheduler first sees the entry after
    /// that, it never runs).
    pub fn once<R>(name: impl Into<String>, at: DateTime<Utc>, signature: Signature<R>) -> Self {
        Self::with(name, When::Once(at), signature)
    }

    /// Runs on a [`Schedule`] built already.
    pub fn on<R>(name: impl Into<String>, schedule: Schedule, signature: Signature<R>) -> Self {
        Self::with(name, When::Schedule(Box::new(schedule)), signature)
    }

    /// Evaluates a cron schedule in this IANA time zone (`"Europe/Paris"`)
    /// instead of the scheduler's (UTC unless
    /// [`BeatBuilder::timezone`](super::BeatBuilder::timezone) says
    /// otherwise). A run at a local time that a DST change skips fires
    /// once, just after the change; one that a DST change repeats fires
    /// once, the first time.
    pub fn timezone(mut self, zone: impl Into<String>) -> Self {
        self.timezone = Some(zone.into());
        self
    }

    /// Delays each run by a pseudo-random amount below `max`, the same for
    /// a given run in every process (so that many entries due at the same
    /// minute do not all fire at once).
    pub fn jitter(mut self, max: Duration) -> Self {
        self.jitter = Some(max).filter(|max| !max.is_zero());
        self
    }

    /// What to do with runs missed while no scheduler ran (default:
    /// [`MissedRuns::RunOnce`], as Celery).
    pub fn missed(mut self, policy: MissedRuns) -> Self {
        self.missed = policy;
        self
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the entry sends.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The entry's schedule, checked, in `default_zone` unless the entry
    /// names its own.
    pub(crate) fn resolve(&self, default_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let (schedule, zone) = match &self.when {
            When::Cron(expression) => (Schedule::cron(expression)?, default_zone),
            When::Celery(crontab) => (Schedule::celery(crontab)?, default_zone),
            When::Every(period) => return Schedule::every(*period),
            When::Once(at) => return Ok(Schedule::once(*at)),
            // Built with its own zone, if any: only the entry's overrides it.
            When::Schedule(schedule) => ((**schedule).clone(), None),
        };
        match self.timezone.as_deref().or(zone) {
            Some(zone) => schedule.in_timezone(zone),
            None => Ok(schedule),
        }
    }
}

/// A function that makes an entry, registered next to its task with
/// [`periodic!`](crate::periodic); a scheduler built with
/// [`BeatBuilder::declared_entries`](super::BeatBuilder::declared_entries)
/// takes every one linked into the binary.
pub struct DeclaredEntry(pub fn() -> Entry);

inventory::collect!(DeclaredEntry);

/// Registers a periodic entry next to its task: the function given makes
/// the [`Entry`](crate::beat::Entry), and a scheduler built with
/// `BeatBuilder::declared_entries()` (the `beat` command does) runs it.
///
/// ```
/// use task_core::beat::Entry;
///
/// #[task_core::task(name = "reports.nightly")]
/// async fn nightly_report() -> Result<(), task_core::TaskError> {
///     Ok(())
/// }
///
/// fn nightly() -> Entry {
///     Entry::cron("nightly-report", "0 3 * * *", nightly_report.s()).timezone("Europe/Paris")
/// }
/// task_core::periodic!(nightly);
/// ```
#[macro_export]
macro_rules! periodic {
    ($make:path) => {
        $crate::__private::inventory::submit! {
            $crate::beat::DeclaredEntry($make)
        }
    };
}
