//! [`ScheduleFile`]: entries read from a TOML file, Celery's
//! `beat_schedule` in TOML:
//!
//! ```toml
//! timezone = "Europe/Paris"          # for cron entries without their own (default UTC)
//!
//! [entries.cleanup]
//! task = "maintenance.cleanup"
//! cron = "0 3 * * *"                 # standard cron; or:
//! # crontab = { minute = "0", hour = "3", day_of_week = "mon-fri" }   (Celery's form)
//! # every = "5m"                     (or a number of seconds)
//! # at = "2026-12-24T18:00:00+01:00" (once)
//! args = [30]
//! kwargs = { dry_run = false }
//! jitter = "30s"
//! missed = "skip"                    # or "once" (default, as Celery), "all" with missed_max
//!
//! [entries.cleanup.options]
//! queue = "maintenance"
//! expires = "1h"
//! priority = 5
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{BeatError, Entry, EntryError, MissedRuns};
use crate::schedule::Crontab;
use crate::Signature;

/// A schedule file, read and checked.
#[derive(Debug)]
pub struct ScheduleFile {
    /// The time zone of cron entries without their own.
    pub timezone: Option<String>,
    entries: Vec<Entry>,
}

impl ScheduleFile {
    /// Reads `path`. A file that is not valid TOML, an unknown key, or an
    /// entry without exactly one schedule is an error naming the file (and
    /// the entry); schedules themselves are checked when the scheduler is
    /// built.
    pub fn read(path: &Path) -> Result<Self, BeatError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            BeatError::Config(format!(
                "cannot read the schedule file `{}`: {error}",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|error| match error {
            BeatError::Config(reason) => {
                BeatError::Config(format!("schedule file `{}`: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// Reads a schedule file's text.
    pub fn parse(text: &str) -> Result<Self, BeatError> {
        let file: FileDoc =
            toml::from_str(text).map_err(|error| BeatError::Config(error.to_string()))?;
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        for (name, doc) in file.entries {
            match doc.into_entry(&name) {
                Ok(entry) => entries.push(entry),
                Err(reason) => errors.push(EntryError {
                    entry: name,
                    reason,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(BeatError::Entries(errors));
        }
        Ok(Self {
            timezone: file.timezone,
            entries,
        })
    }

    /// The entries, in name order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries, taken.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    timezone: Option<String>,
    #[serde(default)]
    entries: BTreeMap<String, EntryDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    task: String,
    cron: Option<String>,
    crontab: Option<Crontab>,
    every: Option<DurationDoc>,
    at: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    jitter: Option<DurationDoc>,
    missed: Option<String>,
    missed_max: Option<u32>,
    #[serde(default)]
    options: OptionsDoc,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptionsDoc {
    queue: Option<String>,
    expires: Option<DurationDoc>,
    priority: Option<u8>,
    time_limit: Option<DurationDoc>,
    soft_time_limit: Option<DurationDoc>,
    #[serde(default)]
    ignore_result: bool,
    #[serde(default)]
    headers: Map<String, Value>,
}

/// A duration: seconds as a number, or text such as `"90s"`, `"5m"`,
/// `"1h 30m"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationDoc {
    Seconds(f64),
    Text(String),
}

impl DurationDoc {
    fn get(&self, what: &str) -> Result<Duration, String> {
        match self {
            DurationDoc::Seconds(seconds) => Duration::try_from_secs_f64(*seconds)
                .map_err(|_| format!("`{what}`: {seconds} is not a number of seconds")),
            DurationDoc::Text(text) => humantime::parse_duration(text)
                .map_err(|error| format!("`{what}`: `{text}` is not a duration ({error})")),
        }
    }
}

impl EntryDoc {
    fn into_entry(self, name: &str) -> Result<Entry, String> {
        let mut signature = Signature::<Value>::new(self.task);
        for arg in &self.args {
            signature = signature.arg(arg);
        }
        for (key, value) in &self.kwargs {
            signature = signature.kwarg(key.clone(), value);
        }
        let options = self.options;
        if let Some(queue) = options.queue {
            signature = signature.queue(queue);
        }
        if let Some(expires) = &options.expires {
            signature = signature.expires_in(expires.get("options.expires")?);
        }
        if let Some(priority) = options.priority {
            signature = signature.priority(priority);
        }
        if let Some(limit) = &options.time_limit {
            signature = signature.time_limit(limit.get("options.time_limit")?);
        }
        if let Some(limit) = &options.soft_time_limit {
            signature = signature.soft_time_limit(limit.get("options.soft_time_limit")?);
        }
        if options.ignore_result {
            signature = signature.ignore_result();
        }
        for (key, value) in &options.headers {
            signature = signature.header(key.clone(), value);
        }
        let given = [
            self.cron.is_some(),
            self.crontab.is_some(),
            self.every.is_some(),
            self.at.is_some(),
        ];
        if given.iter().filter(|given| **given).count() != 1 {
            return Err("give exactly one of `cron`, `crontab`, `every` and `at`".into());
        }
        let mut entry = if let Some(expression) = self.cron {
            Entry::cron(name, expression, signature)
        } else if let Some(crontab) = self.crontab {
            Entry::celery(name, crontab, signature)
        } else if let Some(every) = &self.every {
            Entry::every(name, every.get("every")?, signature)
        } else {
            let text = self.at.unwrap_or_default();
            let at = DateTime::parse_from_rfc3339(&text)
                .map_err(|error| {
                    format!("`at`: `{text}` is not an RFC 3339 time with an offset ({error})")
                })?
                .with_timezone(&Utc);
            Entry::once(name, at, signature)
        };
        if let Some(zone) = self.timezone {
            entry = entry.timezone(zone);
        }
        if let Some(jitter) = &self.jitter {
            entry = entry.jitter(jitter.get("jitter")?);
        }
        let missed = match (self.missed.as_deref(), self.missed_max) {
            (None | Some("once"), None) => MissedRuns::RunOnce,
            (Some("skip"), None) => MissedRuns::Skip,
            (Some("all"), max) => MissedRuns::RunAll {
                max: max.unwrap_or(100),
            },
            (_, Some(_)) => return Err("`missed_max` goes with `missed = \"all\"`".into()),
            (Some(other), None) => {
                return Err(format!(
                    "`missed`: `{other}` is not one of \"skip\", \"once\", \"all\""
                ))
            }
        };
        Ok(entry.missed(missed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_every_kind_of_entry_reads() {
        let file = ScheduleFile::parse(
            r#"
            timezone = "Europe/Paris"
            [entries.a]
            task = "t.a"
            cron = "0 3 * * *"
            args = [1, "x"]
            kwargs = { y = 2 }
            jitter = "30s"
            missed = "skip"
            [entries.a.options]
            queue = "q"
            expires = 60
            priority = 3
            [entries.b]
            task = "t.b"
            crontab = { minute = "0", hour = "9", day_of_week = "1", day_of_month = "1-7" }
            [entries.c]
            task = "t.c"
            every = "1m 30s"
            missed = "all"
            missed_max = 5
            [entries.d]
            task = "t.d"
            at = "2026-12-24T18:00:00+01:00"
            "#,
        )
        .expect("valid file");
        assert_eq!(file.timezone.as_deref(), Some("Europe/Paris"));
        let names: Vec<_> = file.entries().iter().map(Entry::name).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        let a = &file.entries()[0];
        assert_eq!(a.missed, MissedRuns::Skip);
        assert_eq!(a.jitter, Some(Duration::from_secs(30)));
        assert_eq!(a.signature.options().queue.as_deref(), Some("q"));
        assert_eq!(a.signature.options().priority, Some(3));
        assert_eq!(file.entries()[2].missed, MissedRuns::RunAll { max: 5 });
        assert!(
            matches!(file.entries()[2].when, super::super::entry::When::Every(d) if d == Duration::from_secs(90))
        );
    }

    #[test]
    fn every_bad_entry_is_reported_by_name_at_once() {
        let error = ScheduleFile::parse(
            r#"
            [entries.two]
            task = "t"
            cron = "* * * * *"
            every = 5
            [entries.none]
            task = "t"
            [entries.late]
            task = "t"
            at = "tomorrow"
            "#,
        )
        .expect_err("invalid entries");
        let text = error.to_string();
        for name in ["`two`", "`none`", "`late`"] {
            assert!(text.contains(name), "{name} named in: {text}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error =
            ScheduleFile::parse("[entries.a]\ntask = \"t\"\ncron = \"* * * * *\"\nevry = 5\n")
                .expect_err("unknown key");
        assert!(error.to_string().contains("evry"), "{error}");
    }
}
