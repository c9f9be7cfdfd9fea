//! The worker's command line, for the binaries that link a set of tasks and
//! call [`main`] (or [`main_for`] with [`binary_info!`](crate::binary_info)):
//! running a worker (`-Q`, `-c`, `--prefetch`, `--broker`, ...) and reading
//! or replaying its dead-letter queues (`dead-letters list|show|replay|discard`).

use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use task_core::broker::{BrokerError, Credentials, DeadLetterRetention, QueueType, TlsOptions};
use task_core::{App, Registry, DEFAULT_BROKER_URL};

use crate::autoscale::Autoscale;
use crate::beat_cli::BeatArgs;
use crate::control_cli::RemoteArgs;
use crate::dead_letters::{DeadLetter, DeadLetterQueue, Selection};
use crate::logging::{self, LogFilter, LogFormat};
use crate::{shutdown, Worker};

/// Runs registered tasks from RabbitMQ queues.
#[derive(Debug, Clone, Parser)]
#[command(about)]
pub struct WorkerArgs {
    /// Broker URL: `amqp://` / `amqps://` (RabbitMQ; `a;b;c` for a node
    /// list), `redis://` / `rediss://` (Redis, as kombu lays it out; kombu's
    /// transport options in the query: `?visibility_timeout=3600&global_keyprefix=app1:`)
    /// or `memory://`.
    #[arg(long, env = "BROKER_URL", default_value = DEFAULT_BROKER_URL, hide_env_values = true, global = true)]
    pub broker: String,
    /// The type of the task queues declared (Celery's
    /// `task_default_queue_type`): `classic`, or `quorum` (replicated over a
    /// RabbitMQ cluster; delays through Celery's native delayed delivery
    /// levels, which Celery 5.5+ peers share).
    #[arg(
        long,
        env = "TASK_QUEUE_TYPE",
        default_value = "classic",
        global = true
    )]
    pub queue_type: QueueType,
    /// With `--queue-type quorum`: a message delivered this many times
    /// without an ack (a task that kills its worker) goes to the queue's
    /// dead-letter queue (`x-delivery-limit`; every peer must declare the
    /// queue alike).
    #[arg(long)]
    pub delivery_limit: Option<u32>,
    /// Queues to consume, comma-separated (default: `celery` and every queue
    /// a registered task names).
    #[arg(short = 'Q', long, value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Tasks run at once, at least 1 (default: number of CPUs).
    #[arg(short = 'c', long)]
    pub concurrency: Option<NonZeroUsize>,
    /// Size the concurrency to the work, as Celery's `--autoscale`: start
    /// with MIN tasks at once, grow up to MAX with the tasks held, shrink
    /// back after 30 s without growth (overrides `-c`).
    #[arg(long, value_name = "MAX,MIN")]
    pub autoscale: Option<Autoscale>,
    /// Unacknowledged messages the broker may send ahead, at least 1
    /// (default: 4 × concurrency, or 4 × the autoscale maximum).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,
    /// Seconds running tasks get to finish after SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Task messages with a larger body (bytes) go to the dead-letter queue unread.
    #[arg(long, default_value_t = crate::worker::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,
    /// Seconds a running task may keep its message unacknowledged before
    /// RabbitMQ (3.11.15+) gives up on the worker; 0 leaves the broker's
    /// `consumer_timeout` (30 min by default).
    #[arg(long, default_value_t = crate::worker::DEFAULT_ACK_TIMEOUT.as_secs())]
    pub ack_timeout: u64,
    /// Where results are stored (Celery's `result_backend`): `rpc://` (the
    /// callers' reply queues), `redis://host:port/db` or `rediss://...`.
    #[arg(
        long,
        env = "RESULT_BACKEND",
        default_value = "rpc://",
        hide_env_values = true
    )]
    pub result_backend: String,
    /// Seconds the result backend keeps results (Celery's
    /// `result_expires`); 0 keeps them until forgotten.
    #[arg(long, default_value_t = task_core::backend::DEFAULT_RESULT_EXPIRES.as_secs())]
    pub result_expires: u64,
    /// Store each task's name, arguments, worker, retries and queue with
    /// its result (Celery's `result_extended`).
    #[arg(long)]
    pub result_extended: bool,
    /// PEM file of the CA that signed a `rediss://` result backend's
    /// certificate (then only that CA is trusted).
    #[arg(long, env = "RESULT_BACKEND_TLS_CA_FILE")]
    pub result_backend_tls_ca_file: Option<PathBuf>,
    /// PEM file of the CA that signed the broker's certificate, trusted
    /// besides the system's roots (`amqps://` URLs).
    #[arg(long, env = "BROKER_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (`amqps://`;
    /// needs `--tls-key`).
    #[arg(long, env = "BROKER_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "BROKER_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
    /// The broker user for nodes whose URL names none (with
    /// `--broker-password-file`, or the password in `BROKER_PASSWORD`).
    #[arg(long, env = "BROKER_USER", global = true)]
    pub broker_user: Option<String>,
    /// A file holding the broker password (a mounted secret), for nodes
    /// whose URL names no user; never logged.
    #[arg(long, env = "BROKER_PASSWORD_FILE", global = true)]
    pub broker_password_file: Option<PathBuf>,
    /// Most messages a dead-letter queue keeps (the oldest go first); 0: no limit.
    #[arg(long, default_value_t = 10_000)]
    pub dead_letter_max_messages: u32,
    /// Most body bytes a dead-letter queue keeps; 0: no limit.
    #[arg(long, default_value_t = 1 << 30)]
    pub dead_letter_max_bytes: u64,
    /// Days a dead-lettered message is kept (at most 49); 0: no limit.
    #[arg(long, default_value_t = 14.0)]
    pub dead_letter_max_age_days: f64,
    /// Log level as Celery spells it (`DEBUG`, `INFO`, `WARNING`, `ERROR`,
    /// `CRITICAL`, any case) or tracing directives (`info,task_worker=debug`);
    /// `RUST_LOG` wins if set.
    #[arg(short = 'l', long, default_value = "info", global = true)]
    pub loglevel: LogFilter,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// The worker's node name, as Celery's `-n`: `%h` the host name, `%n`
    /// its first label, `%d` its domain (`w1@%h`); `celery@` is put in
    /// front of a name without `@`.
    #[arg(short = 'n', long = "hostname", default_value = crate::worker::DEFAULT_NODE_NAME)]
    pub node_name: String,
    /// Send task events (task-received, task-started, task-succeeded, ...)
    /// for monitors such as Flower, as Celery's `-E`; monitors can also
    /// turn them on while the worker runs.
    #[arg(short = 'E', long)]
    pub task_events: bool,
    /// Send no worker-online / worker-heartbeat / worker-offline events
    /// (monitors then show this worker offline).
    #[arg(long)]
    pub without_heartbeat: bool,
    /// Accepted for Celery's command line: revoked ids reach a starting
    /// worker through the revoke log, not by asking the running workers.
    #[arg(long, hide = true)]
    pub without_mingle: bool,
    /// Accepted for Celery's command line; this worker has no gossip.
    #[arg(long, hide = true)]
    pub without_gossip: bool,
    /// Answer no remote control (`celery inspect`, `celery control`,
    /// Flower's buttons).
    #[arg(long)]
    pub without_remote_control: bool,
    /// Serve Prometheus metrics at `http://<addr>/metrics` (tasks by name
    /// and outcome, run times, tasks active, prefetch in use, rate-limit
    /// waits, reconnections, publishes).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Print the registered tasks (name and default queue) and exit.
    #[arg(long)]
    pub list_tasks: bool,
    /// Also run the periodic-task scheduler in this process, as Celery's
    /// `-B` (several workers may: one leads, the others take over when it
    /// stops). Its settings: `--schedule`, `--beat-name`, ...
    #[arg(short = 'B', long)]
    pub beat: bool,
    /// The scheduler's settings (with `-B`).
    #[command(flatten)]
    pub beat_options: BeatArgs,
    /// Instead of running a worker: another command.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands other than running the worker.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Inspect and replay the messages workers could not process.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Ask the running workers (Celery's `celery inspect`): `ping`,
    /// `stats`, `active`, `reserved`, `registered`, `revoked`, ...
    Inspect(RemoteArgs),
    /// Tell the running workers (Celery's `celery control`): `revoke`,
    /// `terminate`, `rate_limit`, `time_limit`, `pool_grow`, `shutdown`, ...
    Control(RemoteArgs),
    /// Run the periodic-task scheduler alone (Celery's `celery beat`):
    /// sends each entry's task when due. Run it on several machines: one
    /// leads, another takes over within a second if it dies, and no run is
    /// sent twice or skipped.
    Beat(BeatArgs),
}

/// `dead-letters ...`: the dead-letter queue of one task queue.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead-lettered messages, oldest first: task id, task, when, why.
    List(DeadLetterTarget),
    /// Print one dead-lettered message whole: headers and body.
    Show {
        #[command(flatten)]
        target: DeadLetterTarget,
        /// The task id of the message.
        task_id: String,
    },
    /// Publish messages back to the queue they came from, as they were
    /// before they were dead-lettered; each leaves the dead-letter queue
    /// once its copy is confirmed.
    Replay {
        #[command(flatten)]
        target: DeadLetterTarget,
        /// Task ids to replay.
        #[arg(required_unless_present = "all")]
        task_ids: Vec<String>,
        /// Replay every message (up to `--limit`).
        #[arg(long, conflicts_with = "task_ids")]
        all: bool,
    },
    /// Remove messages for good.
    Discard {
        #[command(flatten)]
        target: DeadLetterTarget,
        /// Task ids to remove.
        #[arg(required_unless_present = "all")]
        task_ids: Vec<String>,
        /// Remove every message (up to `--limit`).
        #[arg(long, conflicts_with = "task_ids")]
        all: bool,
    },
}

/// Which dead-letter queue, and how many of its messages to look at.
#[derive(Debug, Clone, Args)]
pub struct DeadLetterTarget {
    /// The task queue whose dead-letter queue (`<queue>.dead_letter`) to use.
    #[arg(short = 'Q', long, default_value = "celery")]
    pub queue: String,
    /// Look at no more than this many messages (oldest first).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// Names the worker binary in `--version` and its startup log line: make
/// one with [`binary_info!`](crate::binary_info) in the binary's own crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryInfo {
    /// The binary's package name.
    pub name: &'static str,
    /// The binary's package version.
    pub version: &'static str,
}

/// The [`BinaryInfo`] of the crate this is written in (its
/// `CARGO_PKG_NAME` and `CARGO_PKG_VERSION`):
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     task_worker::cli::main_for(task_worker::binary_info!())
/// }
/// ```
#[macro_export]
macro_rules! binary_info {
    () => {
        $crate::cli::BinaryInfo {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
        }
    };
}

/// [`main_for`], naming the binary by its file name (its version unknown).
/// A worker binary is:
///
/// ```no_run
/// // Link the crate (or module) that defines your #[task]s, then:
/// fn main() -> std::process::ExitCode {
///     task_worker::cli::main()
/// }
/// ```
pub fn main() -> ExitCode {
    let name = std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "worker".to_owned());
    let name: &'static str = Box::leak(name.into_boxed_str());
    main_for(BinaryInfo {
        name,
        version: "(version unknown)",
    })
}

/// How long the binary waits for the tokio runtime's leftover tasks once its
/// command has finished, before it exits all the same.
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The exit code when no worker replied to `inspect` / `control` (as
/// `celery`'s: `EX_UNAVAILABLE`).
const NO_NODE_REPLIED: u8 = 69;

/// Parses the command line, runs a worker until SIGTERM / Ctrl-C (or the
/// command given) and returns the process's exit code. `binary` names the
/// binary in `--version` and in the startup log line.
pub fn main_for(binary: BinaryInfo) -> ExitCode {
    let version: &'static str = Box::leak(
        format!(
            "{} (task-worker {})",
            binary.version,
            env!("CARGO_PKG_VERSION")
        )
        .into_boxed_str(),
    );
    let command = WorkerArgs::command().name(binary.name).version(version);
    let args = match WorkerArgs::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    logging::init(&args.loglevel, args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::debug!(binary = binary.name, version, "starting");
    let outcome = runtime.block_on(async {
        match args.command.clone() {
            Some(Command::DeadLetters(command)) => {
                dead_letters(&args, command).await.map(|()| true)
            }
            Some(Command::Inspect(remote) | Command::Control(remote)) => {
                remote_control(&args, &remote).await
            }
            Some(Command::Beat(beat)) => run_beat(&args, &beat)
                .await
                .map(|()| true)
                .map_err(|error| error.to_string()),
            None => run(args)
                .await
                .map(|()| true)
                .map_err(|error| error.to_string()),
        }
    });
    // What is still running once the command is done (a blocking call
    // stuck in the system, a client library's task) must not keep the
    // process from exiting.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(NO_NODE_REPLIED),
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a worker configured by `args` until a shutdown signal.
pub async fn run(args: WorkerArgs) -> Result<(), crate::WorkerError> {
    if args.list_tasks {
        let registry = Registry::global()?;
        let mut out = std::io::stdout().lock();
        for name in registry.names() {
            let queue = registry.get(name).and_then(|task| task.options.queue);
            // A closed stdout (`| head`) ends the listing, not the process.
            let written = match queue {
                Some(queue) => writeln!(out, "{name}\tqueue={queue}"),
                None => writeln!(out, "{name}"),
            };
            if written.is_err() {
                break;
            }
        }
        return Ok(());
    }
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr)?;
    }
    let tls = tls_options(&args);
    let broker_credentials = credentials(&args)?;
    // Checked before connecting: a bad entry fails the start.
    let beat = match args.beat {
        true => Some(crate::beat_cli::build(
            &args.beat_options,
            &args.broker,
            args.queue_type,
            tls.clone(),
            broker_credentials.clone(),
        )?),
        false => None,
    };
    let limit = |n: u64| (n > 0).then_some(n);
    let max_age_ms = (args.dead_letter_max_age_days.max(0.0) * 86_400_000.0) as u64;
    let retention = DeadLetterRetention {
        max_messages: (args.dead_letter_max_messages > 0).then_some(args.dead_letter_max_messages),
        max_bytes: limit(args.dead_letter_max_bytes),
        max_age: limit(max_age_ms).map(Duration::from_millis),
    };
    let mut builder = Worker::builder()
        .broker_url(args.broker)
        .queue_type(args.queue_type)
        .delivery_limit(args.delivery_limit)
        .queues(args.queues)
        .shutdown_timeout(Duration::from_secs_f64(args.shutdown_timeout.max(0.0)))
        .max_message_size(args.max_message_size)
        .ack_timeout((args.ack_timeout > 0).then(|| Duration::from_secs(args.ack_timeout)))
        .dead_letter_retention(retention)
        .result_backend(args.result_backend)
        .result_expires((args.result_expires > 0).then(|| Duration::from_secs(args.result_expires)))
        .result_extended(args.result_extended)
        .node_name(args.node_name)
        .task_events(args.task_events)
        .heartbeat(!args.without_heartbeat)
        .remote_control(!args.without_remote_control);
    if let Some(concurrency) = args.concurrency {
        builder = builder.concurrency(concurrency.get());
    }
    if let Some(bounds) = args.autoscale {
        builder = builder.autoscale(bounds);
    }
    if let Some(prefetch) = args.prefetch {
        builder = builder.prefetch(prefetch);
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    if let Some(credentials) = broker_credentials {
        builder = builder.credentials(credentials);
    }
    if let Some(ca_file) = args.result_backend_tls_ca_file.clone() {
        builder = builder.result_backend_tls(TlsOptions::new().ca_file(ca_file));
    }
    let worker = builder.build().await?;
    tokio::spawn(shutdown::on_signal(worker.shutdown_handle()));
    let beat = beat.map(|beat| {
        let stop = worker.shutdown_handle();
        tokio::spawn(async move {
            if let Err(error) = beat.run_until(stop.cancelled()).await {
                tracing::error!("beat stopped: {error}");
            }
        })
    });
    let outcome = worker.run().await;
    if let Some(beat) = beat {
        // Its connection closed, the lock goes to another instance.
        let _ = beat.await;
    }
    outcome
}

/// Runs the scheduler alone until SIGTERM / Ctrl-C.
async fn run_beat(
    args: &WorkerArgs,
    beat_args: &BeatArgs,
) -> Result<(), task_core::beat::BeatError> {
    let beat = crate::beat_cli::build(
        beat_args,
        &args.broker,
        args.queue_type,
        tls_options(args),
        credentials(args)?,
    )?;
    if beat_args.check {
        // A closed stdout (`| head`) ends the listing, not the process.
        let _ = crate::beat_cli::print_upcoming(&beat, &mut std::io::stdout().lock());
        return Ok(());
    }
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr)
            .map_err(|error| task_core::beat::BeatError::Config(error.to_string()))?;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(shutdown::on_signal(stop.clone()));
    beat.run_until(stop.cancelled()).await
}

/// The broker credentials `--broker-user` / `--broker-password-file` give
/// (or their variables); without a password file, the app reads
/// `BROKER_USER` / `BROKER_PASSWORD` itself.
fn credentials(args: &WorkerArgs) -> Result<Option<Credentials>, BrokerError> {
    match &args.broker_password_file {
        Some(path) => {
            let user = args
                .broker_user
                .clone()
                .unwrap_or_else(|| task_core::broker::credentials::DEFAULT_USER.to_owned());
            Credentials::password_file(user, path).map(Some)
        }
        None => Credentials::from_env(),
    }
}

/// The TLS settings the `--tls-*` flags ask for, if any.
fn tls_options(args: &WorkerArgs) -> Option<TlsOptions> {
    if args.tls_ca_file.is_none() && args.tls_cert.is_none() && args.tls_key.is_none() {
        return None;
    }
    let mut tls = TlsOptions::new();
    if let Some(ca_file) = &args.tls_ca_file {
        tls = tls.ca_file(ca_file.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls = tls.client_cert(cert.clone(), key.clone());
    }
    Some(tls)
}

/// Runs an `inspect` or `control` command; its output goes to stdout.
/// `Ok(false)`: no worker replied.
async fn remote_control(args: &WorkerArgs, remote: &RemoteArgs) -> Result<bool, String> {
    let mut builder = App::builder()
        .broker_url(args.broker.clone())
        .set_as_default(false);
    if let Some(tls) = tls_options(args) {
        builder = builder.tls(tls);
    }
    if let Some(credentials) = credentials(args).map_err(|error| error.to_string())? {
        builder = builder.credentials(credentials);
    }
    let app = builder.connect().await.map_err(|error| error.to_string())?;
    let outcome = crate::control_cli::run(&app, remote).await;
    let _ = app.close().await;
    outcome
}

/// Runs a `dead-letters` command; its output goes to stdout.
async fn dead_letters(args: &WorkerArgs, command: DeadLetterCommand) -> Result<(), String> {
    let mut builder = App::builder()
        .broker_url(args.broker.clone())
        .set_as_default(false);
    if let Some(tls) = tls_options(args) {
        builder = builder.tls(tls);
    }
    if let Some(credentials) = credentials(args).map_err(|error| error.to_string())? {
        builder = builder.credentials(credentials);
    }
    let app = builder.connect().await.map_err(|error| error.to_string())?;
    let outcome = run_dead_letters(&app, command).await;
    let _ = app.close().await;
    outcome
}

async fn run_dead_letters(app: &App, command: DeadLetterCommand) -> Result<(), String> {
    let selection = |task_ids: Vec<String>, all: bool| {
        if all {
            Selection::All
        } else {
            Selection::TaskIds(task_ids)
        }
    };
    let mut out = std::io::stdout().lock();
    match command {
        DeadLetterCommand::List(target) => {
            let queue = DeadLetterQueue::of(app, &target.queue);
            let letters = queue.list(target.limit).await.map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{} message(s) in {}", letters.len(), queue.name());
            for letter in &letters {
                let _ = writeln!(out, "{}", summary(letter));
            }
        }
        DeadLetterCommand::Show { target, task_id } => {
            let queue = DeadLetterQueue::of(app, &target.queue);
            let letters = queue.list(target.limit).await.map_err(|e| e.to_string())?;
            let letter = letters
                .iter()
                .find(|letter| letter.task_id.as_deref() == Some(task_id.as_str()))
                .ok_or_else(|| {
                    format!(
                        "no message of task id `{task_id}` among the first {} in {}",
                        target.limit,
                        queue.name()
                    )
                })?;
            let properties = &letter.message.properties;
            let headers = serde_json::Value::Object(properties.headers.to_json());
            let _ = writeln!(out, "{}", summary(letter));
            let _ = writeln!(
                out,
                "content_type: {}\nreply_to: {}\nheaders: {}\nbody ({} bytes):\n{}",
                properties.content_type.as_deref().unwrap_or("-"),
                properties.reply_to.as_deref().unwrap_or("-"),
                serde_json::to_string_pretty(&headers).unwrap_or_default(),
                letter.message.body.len(),
                String::from_utf8_lossy(&letter.message.body)
            );
        }
        DeadLetterCommand::Replay {
            target,
            task_ids,
            all,
        } => {
            let queue = DeadLetterQueue::of(app, &target.queue);
            let settled = queue
                .replay(&selection(task_ids, all), target.limit)
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "replayed {} message(s); {} left in {}",
                settled.done,
                settled.kept,
                queue.name()
            );
        }
        DeadLetterCommand::Discard {
            target,
            task_ids,
            all,
        } => {
            let queue = DeadLetterQueue::of(app, &target.queue);
            let settled = queue
                .discard(&selection(task_ids, all), target.limit)
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "discarded {} message(s); {} left in {}",
                settled.done,
                settled.kept,
                queue.name()
            );
        }
    }
    Ok(())
}

/// One line about a dead letter: id, task, origin, when, size, why.
fn summary(letter: &DeadLetter) -> String {
    format!(
        "{}\t{}\tfrom={}\tat={}\tbytes={}\treason={}",
        letter.task_id.as_deref().unwrap_or("?"),
        letter.task.as_deref().unwrap_or("?"),
        letter.origin_queue,
        letter.dead_lettered_at.as_deref().unwrap_or("?"),
        letter.message.body.len(),
        letter.reason.as_deref().unwrap_or("?"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<WorkerArgs, clap::Error> {
        WorkerArgs::try_parse_from(std::iter::once("worker").chain(args.iter().copied()))
    }

    #[test]
    fn zero_concurrency_and_zero_prefetch_are_refused() {
        for args in [&["-c", "0"][..], &["--prefetch", "0"]] {
            let error = parse(args).expect_err("refused");
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        }
        let error = parse(&["--autoscale", "2,5"]).expect_err("min above max");
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        let args = parse(&["--autoscale", "10,3"]).unwrap();
        assert_eq!(args.autoscale, Autoscale::new(10, 3));
        let args = parse(&["-c", "3", "--prefetch", "1"]).unwrap();
        assert_eq!(args.concurrency.map(NonZeroUsize::get), Some(3));
        assert_eq!(args.prefetch, Some(1));
    }

    #[test]
    fn celery_log_levels_parse_and_unknown_ones_are_refused() {
        assert_eq!(
            parse(&["-l", "WARNING"]).unwrap().loglevel.to_string(),
            "warn"
        );
        let error = parse(&["-l", "verbose"]).expect_err("refused");
        assert!(
            error.to_string().contains("unknown log level `verbose`"),
            "{error}"
        );
    }

    #[test]
    fn no_queue_option_leaves_the_choice_to_the_builder() {
        assert!(parse(&[]).unwrap().queues.is_empty());
        assert_eq!(parse(&["-Q", "a,b"]).unwrap().queues, ["a", "b"]);
    }

    #[test]
    fn dead_letter_commands_parse() {
        let args = parse(&["dead-letters", "replay", "-Q", "orders", "id-1", "id-2"]).unwrap();
        match args.command {
            Some(Command::DeadLetters(DeadLetterCommand::Replay {
                target,
                task_ids,
                all,
            })) => {
                assert_eq!(target.queue, "orders");
                assert_eq!(task_ids, ["id-1", "id-2"]);
                assert!(!all);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["dead-letters", "replay"]).is_err(),
            "ids or --all required"
        );
        assert!(parse(&["dead-letters", "discard", "--all", "x"]).is_err());
        assert!(parse(&["--broker", "memory://", "dead-letters", "list"]).is_ok());
    }
}
