//! The worker's logs: level names as Celery spells them, text or JSON lines
//! on stderr, and a writer that can never stop the worker.
//!
//! A worker whose stderr is a closed pipe (`worker 2>&1 | head -1`) must still
//! shut down when told: writes that fail are dropped here, and
//! tracing-subscriber's own report of a failed write (an `eprintln!`, which
//! panics on a closed stderr) is turned off.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// lapin logs every message the broker returns (a result whose caller's
/// reply queue is gone) at WARN with its whole body; the executor logs that
/// case itself, without the body. lapin's connection internals
/// (`lapin::channel`, `lapin::channels`, `lapin::io_loop`) log ERROR lines
/// for a failed or lost connection ("Exponential backoff attempts
/// exhausted", parser errors) that the broker layer reports once itself,
/// readably: a typed error for a first connection, a warning for a lost one.
/// A filter that names `lapin` overrides this.
const QUIET_RETURNS: &str = "lapin::returned_messages=error,\
                             lapin::channel=off,lapin::channels=off,lapin::io_loop=off";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured only when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A log filter given on the command line: a level as Celery or tracing
/// spells it (`DEBUG`, `info`, `warning`, `WARN`, `error`, `CRITICAL`,
/// `off`), or tracing directives whose levels are spelled the same way
/// (`info,task_worker=debug`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    /// The directives in tracing's spelling.
    directives: String,
}

/// A `--loglevel` that names no level this worker knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown log level `{given}`: use one of trace, debug, info, warning, error, critical, off \
     (any case), or directives such as `info,task_worker=debug`"
)]
pub struct UnknownLogLevel {
    /// The part of the filter that was not understood.
    pub given: String,
}

/// Celery's and tracing's level names, in tracing's spelling.
fn level(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" | "fatal" => "error",
        "off" => "off",
        _ => return None,
    })
}

impl FromStr for LogFilter {
    type Err = UnknownLogLevel;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = |given: &str| UnknownLogLevel {
            given: given.to_owned(),
        };
        let mut directives = Vec::new();
        for directive in text.split(',').map(str::trim) {
            if directive.is_empty() {
                continue;
            }
            // A bare word must be a level: `verbose` would otherwise be read
            // as a target name and silence everything else.
            let normalized = match directive.split_once('=') {
                None => level(directive)
                    .ok_or_else(|| unknown(directive))?
                    .to_owned(),
                Some((target, name)) if !target.is_empty() => {
                    format!(
                        "{target}={}",
                        level(name).ok_or_else(|| unknown(directive))?
                    )
                }
                Some(_) => return Err(unknown(directive)),
            };
            directives.push(normalized);
        }
        if directives.is_empty() {
            return Err(unknown(text));
        }
        let directives = directives.join(",");
        EnvFilter::try_new(&directives).map_err(|_| unknown(text))?;
        Ok(Self { directives })
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.directives)
    }
}

impl LogFilter {
    /// The filter with lapin's per-returned-message warnings quietened,
    /// unless the filter says something about lapin itself.
    fn env_filter(&self) -> EnvFilter {
        let directives = if self.directives.contains("lapin") {
            self.directives.clone()
        } else {
            format!("{},{QUIET_RETURNS}", self.directives)
        };
        EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
    }
}

/// Writes log lines to stderr and drops them when stderr is gone: logging
/// must never fail, panic or block the worker's shutdown.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrOrNothing;

impl Write for StderrOrNothing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A closed pipe or a full disk loses the line, not the worker.
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for StderrOrNothing {
    type Writer = StderrOrNothing;

    fn make_writer(&'a self) -> Self::Writer {
        StderrOrNothing
    }
}

/// Installs the process's log subscriber: `RUST_LOG` if set and valid,
/// otherwise `filter`; lines go to stderr in `format`, without colour
/// escapes unless stderr is a terminal. A second call does nothing.
pub fn init(filter: &LogFilter, format: LogFormat) {
    let env_filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(directives).unwrap_or_else(|_| filter.env_filter())
        }
        _ => filter.env_filter(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(StderrOrNothing)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// Lets a repeated log line through at most once per interval, counting the
/// ones it held back, so a flood of the same problem stays readable.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// At most one line per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were held back
    /// since the last one), `None` when this one is held back.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            state.suppressed += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// Runs `f` under a text subscriber with `filter` and returns what it logged.
#[cfg(test)]
pub(crate) fn capture(filter: EnvFilter, f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<String, UnknownLogLevel> {
        text.parse::<LogFilter>().map(|filter| filter.to_string())
    }

    #[test]
    fn celery_level_names_are_accepted_in_any_case() {
        for (given, expected) in [
            ("warning", "warn"),
            ("WARNING", "warn"),
            ("Warn", "warn"),
            ("DEBUG", "debug"),
            ("info", "info"),
            ("ERROR", "error"),
            ("CRITICAL", "error"),
            ("fatal", "error"),
            ("trace", "trace"),
            ("off", "off"),
        ] {
            assert_eq!(parse(given).as_deref(), Ok(expected), "{given}");
        }
    }

    #[test]
    fn directives_keep_their_targets_and_normalize_their_levels() {
        assert_eq!(
            parse("info,task_worker=DEBUG, lapin=warning").as_deref(),
            Ok("info,task_worker=debug,lapin=warn")
        );
    }

    #[test]
    fn unknown_levels_are_refused_not_read_as_targets() {
        for given in [
            "verbose",
            "nonsense",
            "info,loud",
            "task_worker=loud",
            "",
            "=info",
        ] {
            let error = parse(given).expect_err(given);
            assert!(
                error.to_string().contains("unknown log level"),
                "{given}: {error}"
            );
        }
    }

    /// What a subscriber with `filter` writes for one ERROR and one INFO line.
    fn logged_under(filter: &str) -> String {
        let filter: LogFilter = filter.parse().unwrap();
        capture(filter.env_filter(), || {
            tracing::error!(target: "task_worker::cli", "fatal: cannot connect");
            tracing::info!(target: "task_worker::worker", "worker ready");
        })
    }

    #[test]
    fn a_warning_level_keeps_errors_visible_and_hides_info() {
        for level in ["warning", "WARNING", "warn", "error", "CRITICAL"] {
            let logged = logged_under(level);
            assert!(
                logged.contains("fatal: cannot connect"),
                "{level}: {logged:?}"
            );
            assert!(!logged.contains("worker ready"), "{level}: {logged:?}");
        }
        let logged = logged_under("INFO");
        assert!(logged.contains("worker ready"), "{logged:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.allow(), Some(2));
        assert_eq!(throttle.allow(), None);
    }

    #[test]
    fn a_failed_write_is_swallowed() {
        let mut writer = StderrOrNothing;
        assert_eq!(writer.write(b"line\n").ok(), Some(5));
        assert!(writer.flush().is_ok());
    }
}
