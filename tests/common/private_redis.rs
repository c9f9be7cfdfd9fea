//! A Redis server of the test's own, started, stopped, killed and restarted
//! by the test, for fault tests of the Redis result backend: the shared
//! Redis at 6379 is used by other tests concurrently and must never be
//! disturbed.
//!
//! The server is the system's `redis-server`, run in the foreground as a
//! child process on a free port of `127.0.0.1`, with a data directory of its
//! own under the temporary directory (`taskredis_<pid>_<n>`, also its working
//! directory). It keeps an append-only file fsynced on every write
//! (`--appendonly yes --appendfsync always`, no RDB snapshots), so what it
//! acknowledged survives [`PrivateRedis::stop`], [`PrivateRedis::kill`] and
//! [`PrivateRedis::restart`]. It is ready when it answers `PING` with `PONG`
//! (not `-LOADING` while it replays the file).
//!
//! On drop the server is killed and its directory removed (the tail of its
//! log is printed first when the test failed). Servers and directories left
//! by a test process that was killed are removed by the next start.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Data directories start with this, followed by `<pid>_<n>`: the pid tells
/// whether the test process that started the server is still alive.
const DIR_PREFIX: &str = "taskredis_";
/// How long a server may take to answer after its start (two CPUs, other
/// tests running, an append-only file to replay).
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, read and write timeout of one command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

static SERVERS_STARTED: AtomicU32 = AtomicU32::new(0);

/// Where a server lives (no ownership of its process).
#[derive(Debug, Clone)]
struct Server {
    port: u16,
    dir: PathBuf,
    /// More `redis-server` options (e.g. a TLS listener).
    extra_args: Vec<String>,
}

impl Server {
    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts `redis-server` on the port and directory and waits until it
    /// answers `PING`; the error carries the tail of its log.
    fn spawn(&self) -> Result<Child, String> {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log())
            .args(["--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(&self.extra_args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (is it installed?): {e}"))?;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited ({status})\n{}",
                    tail_of(&self.log(), 20)
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {BOOT_TIMEOUT:?}\n{}",
                    self.port,
                    tail_of(&self.log(), 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops `server`: SIGTERM (Redis flushes its append-only file and exits),
/// SIGKILL if it is still there after [`STOP_TIMEOUT`].
fn terminate(mut server: Child) {
    if let Ok(pid) = i32::try_from(server.id()) {
        // SAFETY: the pid is our child's, not reaped yet (so not reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Kills `server` (SIGKILL) and reaps it.
fn kill(mut server: Child) {
    let _ = server.kill();
    let _ = server.wait();
}

/// A Redis server of the test's own on `127.0.0.1:<port>`, database 0, no
/// password.
#[derive(Debug)]
pub struct PrivateRedis {
    server: Server,
    process: Option<Child>,
}

impl PrivateRedis {
    /// Starts a fresh server on a free port and waits until it answers.
    /// Panics with the server's log if it cannot start.
    pub async fn start() -> PrivateRedis {
        Self::start_with(Vec::new()).await
    }

    /// Starts a fresh server as [`PrivateRedis::start`], with more
    /// `redis-server` options (e.g. a TLS listener on another free port).
    pub async fn start_with(extra_args: Vec<String>) -> PrivateRedis {
        tokio::task::spawn_blocking(move || Self::start_blocking(extra_args))
            .await
            .expect("the redis start does not panic")
    }

    /// A free TCP port on 127.0.0.1 (for a second listener).
    pub fn free_port() -> u16 {
        free_port()
    }

    fn start_blocking(extra_args: Vec<String>) -> PrivateRedis {
        reap_orphans();
        let mut failures = Vec::new();
        // A port picked free can be taken before the server binds it: retry.
        for _ in 0..3 {
            let n = SERVERS_STARTED.fetch_add(1, Ordering::SeqCst);
            let server = Server {
                port: free_port(),
                dir: std::env::temp_dir().join(format!("{DIR_PREFIX}{}_{n}", std::process::id())),
                extra_args: extra_args.clone(),
            };
            let _ = fs::remove_dir_all(&server.dir);
            if let Err(e) = fs::create_dir_all(&server.dir) {
                panic!("create {}: {e}", server.dir.display());
            }
            match server.spawn() {
                Ok(process) => {
                    return PrivateRedis {
                        server,
                        process: Some(process),
                    }
                }
                Err(failure) => {
                    eprintln!("[private redis] start failed, retrying: {failure}");
                    failures.push(failure);
                    let _ = fs::remove_dir_all(&server.dir);
                }
            }
        }
        panic!(
            "could not start a private Redis server (needs redis-server installed): {}",
            failures.join("\n---\n")
        );
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.server.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Its data directory (the append-only file is under `appendonlydir/`).
    pub fn dir(&self) -> &Path {
        &self.server.dir
    }

    /// Whether the server process is running (stopped or killed: false).
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| matches!(process.try_wait(), Ok(None)))
    }

    /// Stops the server gracefully (SIGTERM; Redis closes every client
    /// connection and exits) and waits until it has exited.
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            tokio::task::spawn_blocking(move || terminate(process))
                .await
                .expect("the redis stop does not panic");
        }
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits until
    /// it has exited. Every write it acknowledged is on disk.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            tokio::task::spawn_blocking(move || kill(process))
                .await
                .expect("the redis kill does not panic");
        }
    }

    /// Stops the server if it runs, starts it again on the same port and
    /// directory (its data replayed from the append-only file), and waits
    /// until it answers. Panics with its log if it does not come back.
    pub async fn restart(&mut self) {
        let previous = self.process.take();
        let server = self.server.clone();
        let process = tokio::task::spawn_blocking(move || {
            if let Some(process) = previous {
                terminate(process);
            }
            server.spawn()
        })
        .await
        .expect("the redis restart does not panic")
        .unwrap_or_else(|reason| panic!("private redis could not restart: {reason}"));
        self.process = Some(process);
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered, until [`PrivateRedis::thaw`].
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        let process = self.process.as_ref().expect("the server is running");
        let pid = i32::try_from(process.id()).expect("a pid fits in i32");
        // SAFETY: the pid is our child's, not reaped yet (so not reused).
        unsafe { libc::kill(pid, signal) };
    }

    /// Runs one command (`["SET", "k", "v"]`) and returns the reply; a
    /// quick blocking call on the local socket. Errs when the server cannot
    /// be reached; a Redis error reply is `Ok(Resp::Error(..))`.
    pub fn command(&self, args: &[&str]) -> Result<Resp, String> {
        command(self.server.port, args)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            kill(process);
        }
        if std::thread::panicking() {
            eprintln!(
                "[private redis] the test failed; the end of the server's log ({}):\n{}",
                self.server.log().display(),
                tail_of(&self.server.log(), 30)
            );
        }
        let _ = fs::remove_dir_all(&self.server.dir);
    }
}

/// A Redis reply (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3 foo`; `None` for the nil bulk string (`GET` of a missing key).
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`; `None` for the nil array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a bulk or simple string reply (`None` for nil).
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(text) => Some(text.clone()),
            Resp::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }
}

/// Runs one command against the Redis on `127.0.0.1:<port>` (a new
/// connection each time) and returns its reply.
pub fn command(port: u16, args: &[&str]) -> Result<Resp, String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&address, COMMAND_TIMEOUT)
        .map_err(|e| format!("connect to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(COMMAND_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(COMMAND_TIMEOUT)))
        .map_err(|e| format!("{address}: {e}"))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    (&stream)
        .write_all(&request)
        .map_err(|e| format!("send to {address}: {e}"))?;
    read_reply(&mut BufReader::new(&stream)).map_err(|e| format!("reply from {address}: {e}"))
}

fn read_reply(reader: &mut impl BufRead) -> Result<Resp, String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| format!("truncated reply {line:?}"))?;
    let (kind, rest) = line.split_at_checked(1).ok_or("empty reply line")?;
    let number = || rest.parse::<i64>().map_err(|e| format!("{line:?}: {e}"));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Resp::Bulk(None),
            Ok(len) => {
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes).map_err(|e| e.to_string())?;
                bytes.truncate(len);
                Resp::Bulk(Some(bytes))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Resp::Array(None),
            Ok(len) => Resp::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(format!("unexpected reply {line:?}")),
    })
}

/// Whether the Redis on `port` answers `PING` with `PONG` (not `-LOADING`).
fn ping(port: u16) -> bool {
    matches!(command(port, &["PING"]), Ok(Resp::Simple(pong)) if pong == "PONG")
}

/// Kills private servers whose test process is gone (killed before its drop
/// ran) and removes their directories: they would otherwise stay forever.
fn reap_orphans() {
    let owner_gone = |name: &str| {
        name.strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    // A server's working directory is its data directory.
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "redis-server" {
            continue;
        }
        let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        let name = cwd
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cwd.parent() == Some(std::env::temp_dir().as_path()) && owner_gone(&name) {
            eprintln!(
                "[private redis] killing redis-server {pid} in {}",
                cwd.display()
            );
            // SAFETY: the pid is a redis-server in a directory of ours whose
            // test process is gone (checked just above).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if owner_gone(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
