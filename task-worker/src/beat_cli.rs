//! The scheduler on the command line: `beat` (the scheduler alone) and
//! `-B` / `--beat` (a worker that also runs one, as Celery's `-B`; unlike
//! Celery's, any number of workers may run it: one leads).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use task_core::beat::{Beat, BeatError, ScheduleFile};
use task_core::broker::{Credentials, QueueType, TlsOptions};

/// The scheduler's settings.
#[derive(Debug, Clone, Args)]
pub struct BeatArgs {
    /// A TOML file of periodic entries (`[entries.<name>]` with `task` and
    /// one of `cron`, `crontab`, `every`, `at`; see `task_core::beat::ScheduleFile`).
    /// Entries registered in code with `periodic!` run too.
    #[arg(
        short = 's',
        long = "schedule",
        value_name = "FILE",
        env = "BEAT_SCHEDULE"
    )]
    pub schedule: Option<PathBuf>,
    /// The scheduler group: instances with the same name share one leader
    /// and one record of runs; every instance of a group must have the
    /// same entries.
    #[arg(long = "beat-name", default_value = "default")]
    pub name: String,
    /// The time zone of cron entries that name none (IANA name, e.g.
    /// `Europe/Paris`; default UTC, or the file's `timezone`).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Seconds a run may be late and still fire whatever its missed-run
    /// policy (a takeover, a pause); older runs are missed.
    #[arg(long = "beat-grace", default_value_t = task_core::beat::DEFAULT_GRACE.as_secs_f64())]
    pub grace: f64,
    /// Milliseconds between a standby instance's attempts to take the lead
    /// (bounds the takeover time once the leader is gone).
    #[arg(long = "standby-poll-ms", default_value_t = task_core::beat::DEFAULT_STANDBY_POLL.as_millis() as u64)]
    pub standby_poll_ms: u64,
    /// Check the entries and print each one's next runs, then exit
    /// (nothing is sent; no broker needed).
    #[arg(long)]
    pub check: bool,
}

/// How many upcoming runs `--check` prints per entry.
const CHECK_RUNS: usize = 3;

/// Prints each entry of `beat` and its next runs (`beat --check`).
pub(crate) fn print_upcoming(beat: &Beat, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let upcoming = beat.upcoming(chrono::Utc::now(), CHECK_RUNS);
    writeln!(out, "{} periodic entries", upcoming.len())?;
    for entry in upcoming {
        writeln!(
            out,
            "{}: {} -> {} on {}",
            entry.entry, entry.task, entry.queue, entry.schedule
        )?;
        if entry.next.is_empty() {
            writeln!(out, "  (no run to come)")?;
        }
        for run in entry.next {
            writeln!(
                out,
                "  {}",
                run.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )?;
        }
    }
    Ok(())
}

/// Builds the scheduler `args` describe, on `broker_url`.
pub(crate) fn build(
    args: &BeatArgs,
    broker_url: &str,
    queue_type: QueueType,
    tls: Option<TlsOptions>,
    credentials: Option<Credentials>,
) -> Result<Beat, BeatError> {
    let mut builder = Beat::builder()
        .broker_url(broker_url)
        .queue_type(queue_type)
        .name(args.name.clone())
        .grace(
            Duration::try_from_secs_f64(args.grace.max(0.0))
                .unwrap_or(task_core::beat::DEFAULT_GRACE),
        )
        .standby_poll(Duration::from_millis(args.standby_poll_ms))
        .declared_entries();
    if let Some(path) = &args.schedule {
        let file = ScheduleFile::read(path)?;
        if let Some(zone) = &file.timezone {
            builder = builder.timezone(zone.clone());
        }
        builder = builder.entries(file.into_entries());
    }
    if let Some(zone) = &args.timezone {
        builder = builder.timezone(zone.clone());
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials);
    }
    let beat = builder.build()?;
    let names: Vec<&str> = beat.entry_names().collect();
    if names.is_empty() {
        tracing::warn!(
            "beat: no periodic entries (give --schedule FILE, or register entries with periodic!)"
        );
    } else {
        tracing::info!(entries = names.len(), names = %names.join(", "), "beat: entries");
    }
    Ok(beat)
}
