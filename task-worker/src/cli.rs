//! The worker's command line (`-Q`, `-c`, `--prefetch`, `--broker`), for the
//! binaries that link a set of tasks and call [`main`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use task_core::broker::TlsOptions;
use task_core::{Registry, DEFAULT_BROKER_URL};

use crate::{shutdown, Worker};

/// Runs registered tasks from RabbitMQ queues.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct WorkerArgs {
    /// Broker URL.
    #[arg(long, env = "BROKER_URL", default_value = DEFAULT_BROKER_URL, hide_env_values = true)]
    pub broker: String,
    /// Queues to consume, comma-separated.
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
    pub queues: Vec<String>,
    /// Tasks run at once (default: number of CPUs).
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Unacknowledged messages the broker may send ahead (default: 4 × concurrency).
    #[arg(long)]
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
    /// PEM file of the CA that signed the broker's certificate, trusted
    /// besides the system's roots (`amqps://` URLs).
    #[arg(long, env = "BROKER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (`amqps://`;
    /// needs `--tls-key`).
    #[arg(long, env = "BROKER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "BROKER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log filter (`info`, `debug`, `task_worker=debug`, ...); `RUST_LOG` wins if set.
    #[arg(short = 'l', long, default_value = "info")]
    pub loglevel: String,
    /// Print the registered tasks and exit.
    #[arg(long)]
    pub list_tasks: bool,
}

/// Parses the command line, runs a worker until SIGTERM / Ctrl-C and
/// returns the process's exit code. A worker binary is:
///
/// ```no_run
/// // Link the crate (or module) that defines your #[task]s, then:
/// fn main() -> std::process::ExitCode {
///     task_worker::cli::main()
/// }
/// ```
pub fn main() -> ExitCode {
    let args = WorkerArgs::parse();
    init_logging(&args.loglevel);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a worker configured by `args` until a shutdown signal.
pub async fn run(args: WorkerArgs) -> Result<(), crate::WorkerError> {
    if args.list_tasks {
        for name in Registry::global()?.names() {
            println!("{name}");
        }
        return Ok(());
    }
    let mut builder = Worker::builder()
        .broker_url(args.broker)
        .queues(args.queues)
        .shutdown_timeout(Duration::from_secs_f64(args.shutdown_timeout.max(0.0)))
        .max_message_size(args.max_message_size)
        .ack_timeout((args.ack_timeout > 0).then(|| Duration::from_secs(args.ack_timeout)));
    if let Some(concurrency) = args.concurrency {
        builder = builder.concurrency(concurrency);
    }
    if let Some(prefetch) = args.prefetch {
        builder = builder.prefetch(prefetch);
    }
    if let Some(tls) = tls_options(args.tls_ca_file, args.tls_cert, args.tls_key) {
        builder = builder.tls(tls);
    }
    let worker = builder.build().await?;
    tokio::spawn(shutdown::on_signal(worker.shutdown_handle()));
    worker.run().await
}

/// The TLS settings the `--tls-*` flags ask for, if any.
fn tls_options(
    ca_file: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Option<TlsOptions> {
    if ca_file.is_none() && cert.is_none() && key.is_none() {
        return None;
    }
    let mut tls = TlsOptions::new();
    if let Some(ca_file) = ca_file {
        tls = tls.ca_file(ca_file);
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        tls = tls.client_cert(cert, key);
    }
    Some(tls)
}

/// lapin logs every message the broker returns (a result whose caller's
/// reply queue is gone) at WARN with its whole body; the executor already
/// logs that case once, at DEBUG, without the body. lapin's connection
/// internals (`lapin::channel`, `lapin::channels`, `lapin::io_loop`) log
/// ERROR lines for a failed or lost connection ("Exponential backoff
/// attempts exhausted", parser errors) that the broker reports once itself,
/// readably: a typed error for a first connection, a warning for a lost
/// one. `RUST_LOG` or a `--loglevel` that names `lapin` itself overrides
/// this.
const QUIET_RETURNS: &str = "lapin::returned_messages=error,\
                             lapin::channel=off,lapin::channels=off,lapin::io_loop=off";

fn init_logging(level: &str) {
    let with_quiet_returns = if level.contains("lapin") {
        level.to_owned()
    } else {
        format!("{level},{QUIET_RETURNS}")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(with_quiet_returns))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{QUIET_RETURNS}")));
    // A second initialisation (tests calling main twice) is harmless.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
