//! The periodic-task scheduler (`task_core::beat`) against the real
//! RabbitMQ: what it sends, its durable record across restarts, several
//! scheduler processes (`examples/worker.rs beat`) with the leader killed
//! again and again, bad schedules refused at start, and Celery 5.7 on both
//! sides (a Python worker runs what it sends; Python's `celery beat` drives
//! a Rust worker).

mod common;
#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use task_core::beat::{Beat, Entry, MissedRuns, Role, BEAT_TASK_HEADER, ENTRY_HEADER, RUN_HEADER};
use task_core::broker::{headers::as_integer, ConsumeOptions, Consumer, Message};
use task_core::{App, Signature, TaskContext, TaskError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::{plain_app, python, repo, RESULT_TIMEOUT};

/// A scheduler group and task queue of the test's own, removed at the end.
struct Group {
    app: App,
    name: String,
    queue: String,
}

impl Group {
    async fn new(label: &str) -> Self {
        let app = plain_app().await;
        let name = format!("test-{label}-{}", uuid::Uuid::new_v4().simple());
        let queue = common::unique_queue(label);
        Self { app, name, queue }
    }

    /// A schedule file (in a directory `remove` deletes) with one entry,
    /// `tick`, sending `t.tick` to the group's queue every second.
    fn tick_schedule(&self) -> std::path::PathBuf {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).unwrap();
        let schedule = dir.join("schedule.toml");
        std::fs::write(
            &schedule,
            format!(
                "[entries.tick]\ntask = \"t.tick\"\nevery = 1\n[entries.tick.options]\nqueue = \"{}\"\n",
                self.queue
            ),
        )
        .unwrap();
        schedule
    }

    fn dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(&self.name)
    }

    fn run_log(&self) -> String {
        format!("task_core.beat.{}.runs", self.name)
    }

    /// Consumes the task queue (declared as the scheduler declares it).
    async fn consume(&self) -> Consumer {
        self.app.ensure_queue(&self.queue).await.unwrap();
        self.app
            .broker()
            .consume(std::slice::from_ref(&self.queue), ConsumeOptions::no_ack())
            .await
            .unwrap()
    }

    async fn remove(self) {
        let _ = std::fs::remove_dir_all(self.dir());
        for queue in [self.queue.clone(), self.run_log()] {
            let _ = self.app.broker().delete_queue(&queue).await;
        }
        let _ = self.app.broker().delete_exchange(&self.queue).await;
    }
}

/// A schedule file of the test's own, in a directory removed on drop.
struct TempSchedule {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl TempSchedule {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("beat-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("schedule.toml");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }
}

impl Drop for TempSchedule {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one fired message says.
#[derive(Debug, Clone)]
struct Fired {
    entry: String,
    run: DateTime<Utc>,
    origin: String,
    received: Instant,
    message: Message,
}

fn fired(message: Message) -> Fired {
    let headers = &message.properties.headers;
    let run = headers
        .get(RUN_HEADER)
        .and_then(as_integer)
        .and_then(DateTime::from_timestamp_millis)
        .expect("a beat_run header");
    Fired {
        entry: headers
            .get_str(ENTRY_HEADER)
            .expect("a beat_entry header")
            .to_owned(),
        run,
        origin: headers.get_str("origin").unwrap_or_default().to_owned(),
        received: Instant::now(),
        message,
    }
}

async fn next_fired(consumer: &mut Consumer) -> Fired {
    let delivery = tokio::time::timeout(RESULT_TIMEOUT, consumer.deliveries.next())
        .await
        .expect("a run fired in time")
        .expect("the consumer runs")
        .expect("a delivery");
    fired(delivery.message)
}

fn header_json(message: &Message, name: &str) -> Option<Value> {
    message.properties.headers.get_json(name)
}

#[tokio::test]
async fn a_fired_run_is_a_celery_task_message_with_the_beat_header_and_its_expiry_as_ttl() {
    let group = Group::new("beat-message").await;
    let mut consumer = group.consume().await;
    let signature = Signature::<Value>::new("reports.nightly")
        .arg(7)
        .kwarg("label", "x")
        .queue(group.queue.clone())
        .expires_in(Duration::from_secs(10))
        .priority(3)
        .task_id("fixed-id-is-not-reused");
    let beat = Beat::builder()
        .broker_url(common::broker_url())
        .name(group.name.clone())
        .entry(Entry::every(
            "every-second",
            Duration::from_secs(1),
            signature,
        ))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (beat, stop) = (beat.clone(), stop.clone());
        async move { beat.run_until(stop.cancelled_owned()).await }
    });
    let first = next_fired(&mut consumer).await;
    let second = next_fired(&mut consumer).await;
    stop.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(first.entry, "every-second");
    assert_eq!(
        second.run - first.run,
        chrono::Duration::seconds(1),
        "runs on the 1 s grid"
    );
    assert_eq!(first.run.timestamp_subsec_millis(), 0, "on whole seconds");
    let message = &first.message;
    let properties = &message.properties;
    assert_eq!(header_json(message, BEAT_TASK_HEADER), Some(json!(true)));
    assert_eq!(header_json(message, "task"), Some(json!("reports.nightly")));
    assert_eq!(properties.expiration.as_deref(), Some("10000"));
    assert_eq!(properties.priority, Some(3));
    let expires = header_json(message, "expires").expect("an expires header");
    assert!(expires.is_string(), "ISO time: {expires}");
    assert!(
        properties.headers.get("BCC").is_none(),
        "the broker removes BCC"
    );
    let body: Value = serde_json::from_slice(&message.body).unwrap();
    assert_eq!(body[0], json!([7]));
    assert_eq!(body[1], json!({"label": "x"}));
    let ids: Vec<_> = [&first, &second]
        .iter()
        .map(|fired| fired.message.properties.correlation_id.clone())
        .collect();
    assert_ne!(ids[0], ids[1], "each run is a task of its own");
    assert_ne!(ids[0].as_deref(), Some("fixed-id-is-not-reused"));
    assert_eq!(properties.reply_to, None, "nobody waits for a beat result");
    group.remove().await;
}

/// Runs `beat` until it has fired `count` runs into `consumer`, then stops it.
async fn run_for(beat: &Beat, consumer: &mut Consumer, count: usize) -> Vec<Fired> {
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (beat, stop) = (beat.clone(), stop.clone());
        async move { beat.run_until(stop.cancelled_owned()).await }
    });
    let mut runs = Vec::new();
    for _ in 0..count {
        runs.push(next_fired(consumer).await);
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    runs
}

#[tokio::test]
async fn the_record_survives_a_restart_and_missed_runs_follow_each_entrys_policy() {
    let group = Group::new("beat-missed").await;
    let mut consumer = group.consume().await;
    let every = |name: &str, missed| {
        Entry::every(
            name,
            Duration::from_secs(1),
            Signature::<Value>::new("t.tick").queue(group.queue.clone()),
        )
        .missed(missed)
    };
    let beat = Beat::builder()
        .broker_url(common::broker_url())
        .name(group.name.clone())
        .grace(Duration::from_millis(500))
        .entry(every("skip", MissedRuns::Skip))
        .entry(every("once", MissedRuns::RunOnce))
        .entry(every("all", MissedRuns::RunAll { max: 2 }))
        .build()
        .unwrap();
    let before = run_for(&beat, &mut consumer, 3).await;
    let last_before = before.iter().map(|fired| fired.run).max().unwrap();
    // Every scheduler down for 4 runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Drain what the first term fired after the three.
    let mut late_of_first_term = 0;
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.deliveries.next()).await
    {
        late_of_first_term += 1;
    }
    let restarted_at = Utc::now();
    let after = run_for(&beat, &mut consumer, 9).await;
    let mut by_entry: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    for fired in &after {
        by_entry
            .entry(fired.entry.clone())
            .or_default()
            .push(fired.run);
    }
    let missed = |entry: &str| {
        by_entry
            .get(entry)
            .map(|runs| {
                runs.iter()
                    .filter(|run| **run < restarted_at - chrono::Duration::milliseconds(500))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(late_of_first_term <= 3, "the first term stopped");
    assert_eq!(missed("skip"), 0, "skip fires no missed run: {by_entry:?}");
    assert_eq!(
        missed("once"),
        1,
        "run-once fires the latest missed run once: {by_entry:?}"
    );
    assert_eq!(
        missed("all"),
        2,
        "run-all fires the latest two: {by_entry:?}"
    );
    for runs in by_entry.values() {
        assert!(
            runs.iter()
                .all(|run| *run > last_before - chrono::Duration::seconds(1)),
            "nothing before the first term's runs fires again: {runs:?}"
        );
        let mut sorted = runs.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), runs.len(), "no run twice: {runs:?}");
    }
    group.remove().await;
}

/// A scheduler process: `worker beat` on the group's schedule file.
struct BeatProcess {
    child: Child,
}

impl BeatProcess {
    fn start(schedule: &std::path::Path, group: &str) -> Self {
        let child = Command::new(common::example_binary("worker"))
            .args(["--broker", &common::broker_url(), "--loglevel", "warning"])
            .arg("beat")
            .arg("--schedule")
            .arg(schedule)
            .args(["--beat-name", group])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("the worker binary starts (cargo test builds it)");
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BeatProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How late a run was sent: its `published_at` header − its scheduled time.
fn lateness_ms(fired: &Fired) -> i64 {
    let sent = header_json(&fired.message, "published_at")
        .and_then(|v| v.as_f64())
        .unwrap_or_default();
    (sent * 1000.0) as i64 - fired.run.timestamp_millis()
}

/// The pid in a Celery `origin` header (`gen<pid>@<host>`).
fn origin_pid(origin: &str) -> Option<u32> {
    origin.strip_prefix("gen")?.split('@').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scheduler_processes_with_the_leader_killed_again_and_again_fire_each_run_exactly_once(
) {
    /// Where in the second between two runs each kill falls (ms after a
    /// run was received): a kill just before a run makes that run fall
    /// due during the takeover.
    const KILL_PHASES_MS: [u64; 5] = [0, 300, 600, 850, 950];
    let group = Group::new("beat-ha").await;
    let schedule = group.tick_schedule();
    let mut consumer = group.consume().await;
    let mut processes: BTreeMap<u32, BeatProcess> = (0..3)
        .map(|_| BeatProcess::start(&schedule, &group.name))
        .map(|process| (process.pid(), process))
        .collect();
    let mut seen: Vec<Fired> = Vec::new();
    let mut takeovers = Vec::new();
    let mut late_at_takeover = Vec::new();
    for phase in KILL_PHASES_MS {
        // The leader: whoever sends two runs in a row.
        let leader = loop {
            let fired = next_fired(&mut consumer).await;
            let pid = origin_pid(&fired.origin).expect("a gen<pid>@host origin");
            let repeated = seen.last().is_some_and(|last| last.origin == fired.origin);
            seen.push(fired);
            if repeated {
                break pid;
            }
        };
        let process = processes
            .remove(&leader)
            .expect("the leader is one of ours");
        // Placing the kill in time, not waiting for something.
        tokio::time::sleep(Duration::from_millis(phase)).await;
        process.kill_9();
        let killed = Instant::now();
        let replacement = BeatProcess::start(&schedule, &group.name);
        processes.insert(replacement.pid(), replacement);
        // The next run sent by another process.
        loop {
            let fired = next_fired(&mut consumer).await;
            let new_leader = origin_pid(&fired.origin) != Some(leader);
            let received = fired.received;
            seen.push(fired);
            if new_leader {
                takeovers.push(received - killed);
                late_at_takeover.push(lateness_ms(seen.last().expect("just pushed")));
                break;
            }
        }
    }
    // A few more runs from the last leader, then every process stops.
    for _ in 0..3 {
        seen.push(next_fired(&mut consumer).await);
    }
    for (_, process) in std::mem::take(&mut processes) {
        process.terminate();
    }
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(1), consumer.deliveries.next()).await
    {
        seen.push(fired(delivery.message));
    }

    let mut per_run: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for fired in &seen {
        *per_run.entry(fired.run).or_default() += 1;
    }
    let (first, last) = (
        *per_run.keys().next().unwrap(),
        *per_run.keys().next_back().unwrap(),
    );
    let slots = (last - first).num_seconds() + 1;
    let duplicates: Vec<_> = per_run.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = (0..slots)
        .map(|i| first + chrono::Duration::seconds(i))
        .filter(|slot| !per_run.contains_key(slot))
        .collect();
    let worst_late = late_at_takeover.iter().max().copied().unwrap_or_default();
    eprintln!(
        "beat HA: {slots} one-second slots, {} messages, {} SIGKILLs of the leader (at {KILL_PHASES_MS:?} ms \
         after a run); duplicates {}, missed {}; kill → first run from the new leader: {takeovers:?}; \
         lateness of that run (published − scheduled): {late_at_takeover:?} ms; \
         lateness of all runs max {} ms",
        seen.len(),
        KILL_PHASES_MS.len(),
        duplicates.len(),
        missing.len(),
        seen.iter().map(lateness_ms).max().unwrap_or_default(),
    );
    assert!(duplicates.is_empty(), "runs fired twice: {duplicates:?}");
    assert!(missing.is_empty(), "runs never fired: {missing:?}");
    assert!(
        worst_late < 5_000,
        "runs due during a takeover were sent within 5 s: {late_at_takeover:?}"
    );
    group.remove().await;
}

#[tokio::test]
async fn standby_instances_in_one_process_wait_while_one_leads() {
    let group = Group::new("beat-standby").await;
    let mut consumer = group.consume().await;
    let build = || {
        Beat::builder()
            .broker_url(common::broker_url())
            .name(group.name.clone())
            .standby_poll(Duration::from_millis(100))
            .entry(Entry::every(
                "tick",
                Duration::from_secs(1),
                Signature::<Value>::new("t.tick").queue(group.queue.clone()),
            ))
            .build()
            .unwrap()
    };
    let (first, second) = (build(), build());
    let stop_first = CancellationToken::new();
    let stop_second = CancellationToken::new();
    let mut first_role = first.role();
    let running_first = tokio::spawn({
        let stop = stop_first.clone();
        async move { first.run_until(stop.cancelled_owned()).await }
    });
    first_role
        .wait_for(|role| *role == Role::Leading)
        .await
        .unwrap();
    let mut second_role = second.role();
    let running_second = tokio::spawn({
        let stop = stop_second.clone();
        async move { second.run_until(stop.cancelled_owned()).await }
    });
    second_role
        .wait_for(|role| *role == Role::Standby)
        .await
        .unwrap();
    next_fired(&mut consumer).await;
    assert_eq!(*second_role.borrow(), Role::Standby, "one leader at a time");
    // The leader stops: the standby leads.
    stop_first.cancel();
    running_first.await.unwrap().unwrap();
    tokio::time::timeout(
        RESULT_TIMEOUT,
        second_role.wait_for(|role| *role == Role::Leading),
    )
    .await
    .expect("the standby takes over")
    .unwrap();
    next_fired(&mut consumer).await;
    stop_second.cancel();
    running_second.await.unwrap().unwrap();
    group.remove().await;
}

#[tokio::test]
async fn schedulers_on_a_redis_broker_lead_one_at_a_time() {
    let prefix = format!("t.beat.{}.", uuid::Uuid::new_v4().simple());
    let url = format!("{}?global_keyprefix={prefix}", common::redis_url());
    let app = App::builder().broker_url(&url).connect().await.unwrap();
    let name = format!("test-redis-{}", uuid::Uuid::new_v4().simple());
    let queue = common::unique_queue("beat-redis");
    app.ensure_queue(&queue).await.unwrap();
    let mut consumer = app
        .broker()
        .consume(std::slice::from_ref(&queue), ConsumeOptions::no_ack())
        .await
        .unwrap();
    let build = || {
        Beat::builder()
            .broker_url(&url)
            .name(name.clone())
            .standby_poll(Duration::from_millis(100))
            .entry(Entry::every(
                "tick",
                Duration::from_secs(1),
                Signature::<Value>::new("t.tick").queue(queue.clone()),
            ))
            .build()
            .unwrap()
    };
    let (first, second) = (build(), build());
    let (stop_first, stop_second) = (CancellationToken::new(), CancellationToken::new());
    let mut first_role = first.role();
    let running_first = tokio::spawn({
        let stop = stop_first.clone();
        async move { first.run_until(stop.cancelled_owned()).await }
    });
    first_role
        .wait_for(|role| *role == Role::Leading)
        .await
        .unwrap();
    let mut second_role = second.role();
    let running_second = tokio::spawn({
        let stop = stop_second.clone();
        async move { second.run_until(stop.cancelled_owned()).await }
    });
    second_role
        .wait_for(|role| *role == Role::Standby)
        .await
        .unwrap();
    assert_eq!(next_fired(&mut consumer).await.entry, "tick");
    assert_eq!(*second_role.borrow(), Role::Standby, "one leader at a time");
    // The leader stops (its connection closes: the lock goes): the standby
    // leads.
    stop_first.cancel();
    running_first.await.unwrap().unwrap();
    tokio::time::timeout(
        RESULT_TIMEOUT,
        second_role.wait_for(|role| *role == Role::Leading),
    )
    .await
    .expect("the standby takes over")
    .unwrap();
    assert_eq!(next_fired(&mut consumer).await.entry, "tick");
    stop_second.cancel();
    running_second.await.unwrap().unwrap();
    consumer.cancel.close().await.unwrap();
    app.close().await.unwrap();
    redis_keys::delete_redis_keys(&prefix).await;
}

#[test]
fn an_invalid_schedule_fails_at_start_naming_each_entry() {
    let schedule = TempSchedule::new(
        r#"
        [entries.bad-cron]
        task = "t.a"
        cron = "61 * * * *"
        [entries.bad-zone]
        task = "t.b"
        cron = "0 3 * * *"
        timezone = "Mars/Olympus"
        [entries.celery-sunday-7]
        task = "t.c"
        crontab = { day_of_week = "7" }
        [entries.fine]
        task = "t.d"
        every = "5m"
        "#,
    );
    let mut command = Command::new(common::example_binary("worker"));
    command
        .args(["--broker", &common::broker_url()])
        .arg("beat")
        .arg("--schedule")
        .arg(&schedule.path);
    let output = common::output_within(command, common::CHILD_PROCESS_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    for name in ["`bad-cron`", "`bad-zone`", "`celery-sunday-7`"] {
        assert!(stderr.contains(name), "{name} named: {stderr}");
    }
    assert!(!stderr.contains("`fine`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs `script` under the interop venv's python in `tests/interop`, until
/// dropped.
struct PythonProcess {
    child: Child,
}

impl PythonProcess {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(python())
            .args(args)
            .current_dir(repo().join("tests/interop"))
            .env("BROKER_URL", common::broker_url())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("python starts");
        Self { child }
    }
}

impl Drop for PythonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_python_worker_runs_what_the_rust_scheduler_sends() {
    let group = Group::new("beat-rs2py").await;
    let seen_queue = common::unique_queue("beat-rs2py-seen");
    let app = &group.app;
    app.ensure_queue(&group.queue).await.unwrap();
    let python_worker = PythonProcess::start(
        &[
            "-m",
            "celery",
            "-A",
            "pyapp",
            "worker",
            "-Q",
            &group.queue,
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "warning",
        ],
        &[],
    );
    let mut seen = {
        app.ensure_queue(&seen_queue).await.unwrap();
        app.broker()
            .consume(std::slice::from_ref(&seen_queue), ConsumeOptions::no_ack())
            .await
            .unwrap()
    };
    let beat = Beat::builder()
        .broker_url(common::broker_url())
        .name(group.name.clone())
        .entry(Entry::every(
            "relay",
            Duration::from_secs(1),
            Signature::<Value>::new("py.beat_relay")
                .arg(seen_queue.clone())
                .kwarg("label", "from-rust")
                .queue(group.queue.clone()),
        ))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (beat, stop) = (beat.clone(), stop.clone());
        async move { beat.run_until(stop.cancelled_owned()).await }
    });
    // The Python task sends what it saw to `seen_queue`.
    let delivery = tokio::time::timeout(Duration::from_secs(60), seen.deliveries.next())
        .await
        .expect("the python worker ran a fired task")
        .unwrap()
        .unwrap();
    stop.cancel();
    running.await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&delivery.message.body).unwrap();
    let report = &body[0][0];
    assert_eq!(report["label"], json!("from-rust"));
    assert_eq!(report["celery_beat_task"], json!(true), "{report}");
    assert_eq!(report["beat_entry"], json!("relay"), "{report}");
    drop(python_worker);
    let _ = app.broker().delete_queue(&seen_queue).await;
    group.remove().await;
}

/// Where `beat.rust_tick` reports, by label.
static TICKS: std::sync::Mutex<Vec<(String, tokio::sync::mpsc::UnboundedSender<Value>)>> =
    std::sync::Mutex::new(Vec::new());

#[task_core::task(name = "beat.rust_tick")]
async fn rust_tick(label: String, ctx: TaskContext) -> Result<(), TaskError> {
    let report = json!({
        "label": label,
        "celery_beat_task": ctx.header(BEAT_TASK_HEADER),
    });
    for (wanted, ticks) in TICKS.lock().unwrap().iter() {
        if *wanted == label {
            let _ = ticks.send(report.clone());
        }
    }
    Ok(())
}

#[tokio::test]
async fn python_celery_beat_drives_a_rust_worker() {
    let queue = common::unique_queue("beat-py2rs");
    let label = uuid::Uuid::new_v4().to_string();
    let (ticks, mut ticked) = tokio::sync::mpsc::unbounded_channel();
    TICKS.lock().unwrap().push((label.clone(), ticks));
    let app = plain_app().await;
    let worker = common::TestWorker::start_on(queue.clone(), app, 1, |builder| builder).await;
    let dir = std::env::temp_dir().join(format!("pybeat-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let schedule_db = dir.join("celerybeat-schedule");
    let beat = PythonProcess::start(
        &[
            "-m",
            "celery",
            "-A",
            "pybeat",
            "beat",
            "-l",
            "warning",
            "-s",
            schedule_db.to_str().unwrap(),
            "--pidfile=",
        ],
        &[("BEAT_QUEUE", &queue), ("BEAT_LABEL", &label)],
    );
    for _ in 0..2 {
        let report = tokio::time::timeout(Duration::from_secs(60), ticked.recv())
            .await
            .expect("celery beat's task ran on the Rust worker")
            .unwrap();
        assert_eq!(report["celery_beat_task"], json!(true), "{report}");
    }
    drop(beat);
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_worker_started_with_dash_b_also_runs_the_scheduler() {
    let group = Group::new("beat-embedded").await;
    let worker_queue = common::unique_queue("beat-embedded-worker");
    let schedule = group.tick_schedule();
    let mut consumer = group.consume().await;
    let mut worker = Command::new(common::example_binary("worker"))
        .args(["--broker", &common::broker_url(), "--loglevel", "warning"])
        .args(["-Q", &worker_queue, "-B", "--beat-name", &group.name])
        .arg("--schedule")
        .arg(&schedule)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("the worker binary starts");
    let first = next_fired(&mut consumer).await;
    let second = next_fired(&mut consumer).await;
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(first.entry, "tick");
    assert_eq!(second.run - first.run, chrono::Duration::seconds(1));
    assert_eq!(
        origin_pid(&first.origin),
        Some(worker.id()),
        "sent by the worker process"
    );
    let _ = group.app.broker().delete_queue(&worker_queue).await;
    let _ = group.app.broker().delete_exchange(&worker_queue).await;
    group.remove().await;
}

#[tokio::test]
async fn the_beat_command_serves_its_metrics() {
    let group = Group::new("beat-metrics").await;
    let schedule = group.tick_schedule();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut consumer = group.consume().await;
    let mut beat = Command::new(common::example_binary("worker"))
        .args(["--broker", &common::broker_url(), "--loglevel", "warning"])
        .args(["--metrics-addr", &addr, "beat", "--beat-name", &group.name])
        .arg("--schedule")
        .arg(&schedule)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("the worker binary starts");
    next_fired(&mut consumer).await;
    next_fired(&mut consumer).await;
    let (status, body) = common::http("GET", &format!("http://{addr}/metrics"), &json!({})).await;
    let _ = beat.kill();
    let _ = beat.wait();
    assert_eq!(status, 200, "{body}");
    let sample = |series: &str| -> f64 {
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in {body}"))
    };
    assert!(sample("task_beat_runs_total{entry=\"tick\"}") >= 2.0);
    assert_eq!(sample("task_beat_leading"), 1.0);
    assert!(sample("task_beat_lateness_seconds_count") >= 2.0);
    group.remove().await;
}

#[tokio::test]
async fn a_broker_that_cannot_be_reached_at_start_is_an_error_not_a_wait() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let beat = Beat::builder()
        .broker_url(format!("amqp://guest:secret@127.0.0.1:{port}/%2f"))
        .entry(Entry::every(
            "tick",
            Duration::from_secs(1),
            Signature::<Value>::new("t.tick"),
        ))
        .build()
        .unwrap();
    let error = tokio::time::timeout(RESULT_TIMEOUT, beat.run_until(std::future::pending()))
        .await
        .expect("fails at once")
        .expect_err("no broker there");
    let text = error.to_string();
    assert!(text.contains(&port.to_string()), "{text}");
    assert!(
        !text.contains("secret"),
        "the password is not shown: {text}"
    );
}

#[test]
fn beat_check_prints_each_entrys_next_runs_without_a_broker() {
    let schedule = TempSchedule::new(
        r#"
        [entries.first-monday]
        task = "reports.monthly"
        crontab = { minute = "0", hour = "9", day_of_week = "1", day_of_month = "1-7" }
        [entries.christmas]
        task = "greet"
        at = "2000-12-24T18:00:00+01:00"
        "#,
    );
    let mut command = Command::new(common::example_binary("worker"));
    command
        .args(["--broker", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .args(["beat", "--check", "--schedule"])
        .arg(&schedule.path);
    let output = common::output_within(command, common::CHILD_PROCESS_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("2 periodic entries"), "{stdout}");
    let runs: Vec<DateTime<Utc>> = stdout
        .lines()
        .filter_map(|line| DateTime::parse_from_rfc3339(line.trim()).ok())
        .map(|run| run.with_timezone(&Utc))
        .collect();
    assert_eq!(runs.len(), 3, "three runs of the monthly entry: {stdout}");
    for run in &runs {
        use chrono::Datelike;
        assert_eq!(run.weekday(), chrono::Weekday::Mon, "{stdout}");
        assert!(run.day() <= 7, "Celery's day fields ANDed: {stdout}");
    }
    assert!(
        stdout.contains("(no run to come)"),
        "a past one-off: {stdout}"
    );
}
