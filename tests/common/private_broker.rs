//! A RabbitMQ node of the test's own, started and stopped by the test, for
//! tests that stop or restart the broker: the shared RabbitMQ at 5672 is
//! used by other tests concurrently and must never be disturbed.
//!
//! The node runs the system's `rabbitmq-server` with an environment of its
//! own (node name, AMQP and distribution ports, config, data and log
//! directories under a temporary directory), so nothing of the system node
//! is read or written. As root, the Debian wrapper drops privileges to the
//! `rabbitmq` user, so the node's directories are handed to that user; as
//! any other user the scripts under `/usr/lib/rabbitmq/bin` are run directly.
//!
//! `rabbitmq-server -detached` is unreliable here, so the server runs in the
//! foreground as a child process; the node is ready when its port accepts a
//! connection and `rabbitmqctl await_startup` returns. On drop the node is
//! halted (`rabbitmqctl stop`), killed if it does not go, and its directory
//! is removed (kept, and its path printed, when the test failed). Nodes left
//! by a test process that was killed are halted by the next harness start.
//!
//! `private_cluster.rs` builds a three-node cluster out of the same pieces
//! (the `pub(crate)` items).
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Node names start with this, followed by `<pid>_<n>`: the pid tells
/// whether the test process that started the node is still alive.
pub(crate) const NODE_PREFIX: &str = "taskfaults_";
/// How long a node may take to boot (two CPUs, other tests running).
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `rabbitmqctl` command may take.
pub(crate) const CTL_TIMEOUT: Duration = Duration::from_secs(60);

static NODES_STARTED: AtomicU32 = AtomicU32::new(0);

/// How to run RabbitMQ's scripts on this machine.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    server: PathBuf,
    ctl: PathBuf,
    /// The uid and gid the node runs as, when it is not the current user
    /// (root with the Debian wrapper): its directories must be theirs.
    pub(crate) owner: Option<(u32, u32)>,
}

impl Tools {
    /// Finds RabbitMQ's scripts, and whom the node runs as.
    pub(crate) fn find() -> Tools {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let rabbitmq_user = user_ids("rabbitmq");
        // Debian's wrapper (`/usr/sbin/rabbitmq-server`) runs the scripts as
        // `rabbitmq` when called by root; anyone else runs the scripts
        // themselves.
        let wrapper = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-script-wrapper").exists();
        let (server, ctl, owner) = if root && wrapper && rabbitmq_user.is_some() {
            (
                find_program("rabbitmq-server", &["/usr/sbin"]),
                find_program("rabbitmqctl", &["/usr/sbin"]),
                rabbitmq_user,
            )
        } else {
            let dirs = [
                "/usr/lib/rabbitmq/bin",
                "/usr/lib/rabbitmq/sbin",
                "/usr/sbin",
            ];
            let direct = |name: &str| {
                dirs.iter()
                    .map(|dir| Path::new(dir).join(name))
                    .find(|path| path.exists() && !is_debian_wrapper(path))
                    .unwrap_or_else(|| find_program(name, &[]))
            };
            (direct("rabbitmq-server"), direct("rabbitmqctl"), None)
        };
        Tools { server, ctl, owner }
    }

    /// Runs `rabbitmqctl -n <node> <args>` with a time limit.
    pub(crate) fn ctl(&self, node: &str, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.ctl);
        command.arg("-n").arg(node).args(args);
        for variable in NODE_ENVIRONMENT {
            command.env_remove(variable);
        }
        run_with_timeout(command, CTL_TIMEOUT)
            .map_err(|e| format!("rabbitmqctl -n {node} {}: {e}", args.join(" ")))
    }
}

/// Variables that configure a node: set for our node's server, cleared for
/// the CLI (which finds the node through epmd).
const NODE_ENVIRONMENT: [&str; 10] = [
    "RABBITMQ_NODENAME",
    "RABBITMQ_NODE_PORT",
    "RABBITMQ_DIST_PORT",
    "RABBITMQ_CONFIG_FILE",
    "RABBITMQ_ADVANCED_CONFIG_FILE",
    "RABBITMQ_MNESIA_BASE",
    "RABBITMQ_LOG_BASE",
    "RABBITMQ_PID_FILE",
    "RABBITMQ_ENABLED_PLUGINS_FILE",
    "RABBITMQ_ALLOW_INPUT",
];

/// A TLS listener for a private node (`listeners.ssl.default`): the node's
/// certificate and key and the CA it verifies client certificates with, all
/// PEM.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// The CA that signs client certificates (`ssl_options.cacertfile`).
    pub ca_pem: String,
    /// The node's certificate (`ssl_options.certfile`).
    pub cert_pem: String,
    /// The node's private key (`ssl_options.keyfile`).
    pub key_pem: String,
    /// Refuse clients without a valid certificate (`verify_peer` and
    /// `fail_if_no_peer_cert`); otherwise `verify_none`.
    pub require_client_cert: bool,
}

/// Where a node lives and how to reach it (no ownership of its process).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// `<name>@localhost`.
    pub(crate) name: String,
    /// The AMQP port (on 127.0.0.1).
    pub(crate) port: u16,
    /// The Erlang distribution port.
    dist_port: u16,
    /// The TLS listener's port, if the node has one.
    tls_port: Option<u16>,
    /// Config, data (`mnesia`), logs, pid file and the server's output.
    pub(crate) dir: PathBuf,
    tools: Tools,
}

impl Node {
    /// Runs `rabbitmqctl -n <this node> <args>` with a time limit.
    pub(crate) fn ctl(&self, args: &[&str]) -> Result<String, String> {
        self.tools.ctl(&self.name, args)
    }

    /// Picks free ports for a fresh node called `name` (without the
    /// `@localhost`) and writes its directory: config (AMQP listener on
    /// 127.0.0.1, guest allowed from there; `tls` if given), no plugins.
    pub(crate) fn create(
        name: &str,
        label: &str,
        tools: &Tools,
        tls: Option<&NodeTls>,
    ) -> Result<Node, String> {
        let ports = free_ports(3);
        let (port, dist_port) = (ports[0], ports[1]);
        let tls_port = tls.map(|_| ports[2]);
        // As root the node runs as `rabbitmq`: its directory must be
        // reachable by that user, whatever TMPDIR says.
        let base = if tools.owner.is_some() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let node = Node {
            name: format!("{name}@localhost"),
            port,
            dist_port,
            tls_port,
            dir: base.join(format!("{name}-{label}")),
            tools: tools.clone(),
        };
        let dir = &node.dir;
        let _ = fs::remove_dir_all(dir);
        let mnesia = dir.join("mnesia");
        let log = dir.join("log");
        for d in [dir, &mnesia, &log] {
            fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let config = dir.join("rabbitmq.conf");
        let mut settings =
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n");
        let mut tls_files = Vec::new();
        if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
            for (file, pem) in [
                ("ca.pem", &tls.ca_pem),
                ("cert.pem", &tls.cert_pem),
                ("key.pem", &tls.key_pem),
            ] {
                let path = dir.join(file);
                fs::write(&path, pem).map_err(|e| format!("write {}: {e}", path.display()))?;
                tls_files.push(path);
            }
            let (verify, fail_if_no_peer_cert) = if tls.require_client_cert {
                ("verify_peer", true)
            } else {
                ("verify_none", false)
            };
            settings.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = {verify}\n\
                 ssl_options.fail_if_no_peer_cert = {fail_if_no_peer_cert}\n",
                tls_files[0].display(),
                tls_files[1].display(),
                tls_files[2].display(),
            ));
        }
        fs::write(&config, settings).map_err(|e| e.to_string())?;
        let plugins = dir.join("enabled_plugins");
        fs::write(&plugins, "[].\n").map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = tools.owner {
            for path in [dir, &mnesia, &log, &config, &plugins]
                .into_iter()
                .chain(&tls_files)
            {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
        }
        Ok(node)
    }

    /// Starts the node's server in the foreground as a child process, its
    /// output appended to `server.out`: a fresh node, or one that stopped
    /// again on the data it kept (same name and ports).
    pub(crate) fn spawn(&self) -> Result<Child, String> {
        let dir = &self.dir;
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.output())
            .map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.tools.server);
        command
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env_remove("RABBITMQ_ALLOW_INPUT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.tools.server.display()))
    }

    /// Waits (up to [`BOOT_TIMEOUT`]) until the node started by `server`
    /// accepts connections and `rabbitmqctl await_startup` returns; the
    /// error has the tail of the server's output.
    pub(crate) fn await_boot(&self, server: &mut Child) -> Result<(), String> {
        self.wait_for_port(true, BOOT_TIMEOUT, Some(server))
            .and_then(|()| self.ctl(&["await_startup"]).map(drop))
            .map_err(|reason| format!("{reason}\n{}", tail_of(&self.output(), 40)))
    }

    /// What the server wrote to stdout and stderr.
    pub(crate) fn output(&self) -> PathBuf {
        self.dir.join("server.out")
    }

    /// Waits until the port accepts (`open`) or refuses connections; fails
    /// early if `server` (the node's process) exits.
    pub(crate) fn wait_for_port(
        &self,
        open: bool,
        timeout: Duration,
        mut server: Option<&mut Child>,
    ) -> Result<(), String> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + timeout;
        loop {
            let accepts = TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok();
            if accepts == open {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = server.as_deref_mut().map(Child::try_wait) {
                return Err(format!("the node exited ({status})"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "port {} still {} after {timeout:?}",
                    self.port,
                    if open { "closed" } else { "open" }
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node: `rabbitmqctl stop`, then kills whatever remains.
    pub(crate) fn halt(&self, server: Option<Child>) {
        if let Err(reason) = self.ctl(&["stop"]) {
            eprintln!("[private broker] {reason}");
        }
        // The Erlang VM runs in a session of its own under `su`: kill it by
        // its pid file if it is still there.
        if let Some(pid) = fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_our_node(pid, &self.name) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if is_our_node(pid, &self.name) {
                // SAFETY: the pid is our node's VM (checked just above).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(mut server) = server {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// A RabbitMQ node of the test's own on `127.0.0.1:<port>`, user guest/guest.
#[derive(Debug)]
pub struct PrivateBroker {
    node: Node,
    server: Option<Child>,
}

impl PrivateBroker {
    /// Boots a fresh node (5-20 s) on free ports. Panics with the node's
    /// output if it cannot boot.
    pub async fn start(label: &str) -> PrivateBroker {
        Self::start_with(label, None).await
    }

    /// Boots a fresh node that also has a TLS listener ([`PrivateBroker::tls_port`]).
    pub async fn start_with_tls(label: &str, tls: NodeTls) -> PrivateBroker {
        Self::start_with(label, Some(tls)).await
    }

    async fn start_with(label: &str, tls: Option<NodeTls>) -> PrivateBroker {
        let label = label.to_owned();
        tokio::task::spawn_blocking(move || Self::start_blocking(&label, tls.as_ref()))
            .await
            .expect("the broker start does not panic")
    }

    fn start_blocking(label: &str, tls: Option<&NodeTls>) -> PrivateBroker {
        let tools = Tools::find();
        reap_orphans(&tools);
        let mut failures = Vec::new();
        // A port picked free can be taken before the node binds it: retry.
        for _ in 0..3 {
            match Self::boot(label, &tools, tls) {
                Ok(broker) => return broker,
                Err(failure) => {
                    eprintln!("[private broker] boot failed, retrying: {failure}");
                    failures.push(failure);
                }
            }
        }
        panic!(
            "could not start a private RabbitMQ node (needs rabbitmq-server installed, and root \
             or the rabbitmq user): {}",
            failures.join("\n---\n")
        );
    }

    fn boot(label: &str, tools: &Tools, tls: Option<&NodeTls>) -> Result<PrivateBroker, String> {
        let n = NODES_STARTED.fetch_add(1, Ordering::SeqCst);
        let name = format!("{NODE_PREFIX}{}_{n}", std::process::id());
        let (node, server) = boot_node(&name, label, tools, tls)?;
        Ok(PrivateBroker {
            node,
            server: Some(server),
        })
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.node.port)
    }

    /// The TLS listener's port (nodes started with
    /// [`PrivateBroker::start_with_tls`]).
    pub fn tls_port(&self) -> u16 {
        self.node.tls_port.expect("the node was started with TLS")
    }

    /// `amqps://guest:guest@<host>:<tls port>/%2f`: `host` is the name the
    /// client checks the node's certificate against.
    pub fn tls_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.tls_port())
    }

    /// Runs `rabbitmqctl <args>` against the node and returns its output.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let node = self.node.clone();
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node.ctl(&args)
        })
        .await
        .expect("rabbitmqctl does not panic")
        .unwrap_or_else(|reason| panic!("{reason}"))
    }

    /// The node name (`taskfaults_<pid>_<n>@localhost`).
    pub fn node(&self) -> &str {
        &self.node.name
    }

    /// Stops the RabbitMQ application (the Erlang node stays up): every
    /// client connection is closed and the port refuses connections.
    pub async fn stop_app(&self) {
        self.blocking(|node| {
            node.ctl(&["stop_app"])?;
            node.wait_for_port(false, Duration::from_secs(30), None)
        })
        .await;
    }

    /// Starts the RabbitMQ application again and waits until it accepts
    /// connections. Durable queues and persistent messages are back.
    pub async fn start_app(&self) {
        self.blocking(|node| {
            // `start_app` returns once the application has started.
            node.ctl(&["start_app"])?;
            node.wait_for_port(true, Duration::from_secs(60), None)
        })
        .await;
    }

    /// The restart the "nothing lost" issue asks for: `stop_app`, `pause`,
    /// `start_app`.
    pub async fn restart_app(&self, pause: Duration) {
        self.stop_app().await;
        tokio::time::sleep(pause).await;
        self.start_app().await;
    }

    /// Halts the node and removes its directory (what drop does, awaited).
    pub async fn shutdown(mut self) {
        let server = self.server.take();
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            node.halt(server);
            let _ = fs::remove_dir_all(&node.dir);
        })
        .await
        .expect("the broker shutdown does not panic");
    }

    /// Runs a blocking step off the async runtime (clients and in-process
    /// workers keep running meanwhile) and panics if it failed.
    async fn blocking<F>(&self, step: F)
    where
        F: FnOnce(&Node) -> Result<(), String> + Send + 'static,
    {
        let node = self.node.clone();
        let result = tokio::task::spawn_blocking(move || step(&node))
            .await
            .expect("a broker step does not panic");
        if let Err(reason) = result {
            panic!("private broker {}: {reason}", self.node.name);
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return; // shut down already
        };
        self.node.halt(Some(server));
        if std::thread::panicking() {
            eprintln!(
                "[private broker] the test failed: node {} logs kept in {}",
                self.node.name,
                self.node.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.node.dir);
        }
    }
}

/// Creates and boots a fresh node called `name` (see [`Node::create`]);
/// on failure nothing of it is left.
pub(crate) fn boot_node(
    name: &str,
    label: &str,
    tools: &Tools,
    tls: Option<&NodeTls>,
) -> Result<(Node, Child), String> {
    let node = Node::create(name, label, tools, tls)?;
    let started = Instant::now();
    let mut server = node.spawn()?;
    if let Err(reason) = node.await_boot(&mut server) {
        node.halt(Some(server));
        let _ = fs::remove_dir_all(&node.dir);
        return Err(reason);
    }
    eprintln!(
        "[private broker] {} up on 127.0.0.1:{} in {:.1?}",
        node.name,
        node.port,
        started.elapsed()
    );
    Ok((node, server))
}

/// Halts private nodes whose test process is gone (killed before its drop
/// ran): they would otherwise run forever.
pub(crate) fn reap_orphans(tools: &Tools) {
    let Ok(output) = Command::new("epmd").arg("-names").output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "name taskfaults_1234_0 at port 41234"
        let Some(name) = line
            .strip_prefix("name ")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NODE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("[private broker] halting {name}@localhost, left by process {pid}");
            let _ = tools.ctl(&format!("{name}@localhost"), &["stop"]);
        }
    }
}

/// Whether `pid` is (still) the Erlang VM of `node` (guards against pid
/// reuse): the VM's environment names its node.
pub(crate) fn is_our_node(pid: i32, node: &str) -> bool {
    let wanted = format!("RABBITMQ_NODENAME={node}");
    fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| {
            environ
                .split(|byte| *byte == 0)
                .any(|variable| variable == wanted.as_bytes())
        })
        .unwrap_or(false)
}

/// `n` distinct ports free right now (held together so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == user)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn is_debian_wrapper(path: &Path) -> bool {
    fs::canonicalize(path)
        .map(|target| target.ends_with("rabbitmq-script-wrapper"))
        .unwrap_or(false)
}

/// `name` from `PATH`, else from `extra` directories, else the bare name.
fn find_program(name: &str, extra: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `command` to completion, killing it after `timeout`.
fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<String, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let Some(status) = status else {
        // A grandchild may still hold the pipes: leave the readers behind.
        return Err(format!("timed out after {timeout:?}"));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!("{status}: {stdout}{stderr}"))
    }
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
