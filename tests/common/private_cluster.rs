//! A three-node RabbitMQ cluster of the test's own, for tests that kill a
//! node (`SIGKILL` of its Erlang VM) and bring it back: the shared RabbitMQ
//! at 5672 must never be disturbed.
//!
//! Each node is a private node as `private_broker.rs` makes them (its own
//! node name, AMQP and distribution ports, config, data and log
//! directories; guest may log in from 127.0.0.1; no plugins), all three
//! booted at once. Nodes 1 and 2 then join node 0 (`stop_app`,
//! `join_cluster`, `start_app`; deterministic, where peer discovery of nodes
//! booting together can race), and the cluster is ready when `rabbitmqctl
//! cluster_status` on node 0 lists all three as running. The nodes
//! authenticate each other with the Erlang cookie of the user they run as
//! (`rabbitmq` as root), which is created first if it is missing, so that
//! three nodes booting together do not each write one. Fresh 3.10 nodes
//! have every feature flag enabled, `quorum_queue` included.
//!
//! A killed node keeps its data directory, name and ports:
//! [`PrivateCluster::restart`] boots it again on them and it rejoins the
//! cluster by itself. On drop every node is halted and the directories are
//! removed (kept, and their paths printed, when the test failed); nodes left
//! by a test process that was killed are halted by the next start, as
//! private brokers are.
//!
//! Nodes are numbered 0, 1 and 2.
#![allow(dead_code)] // each test binary uses a different subset

#[path = "private_broker.rs"]
mod private_broker;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use private_broker::{boot_node, is_our_node, reap_orphans, Node, Tools, NODE_PREFIX};

/// How many nodes a cluster has.
pub const CLUSTER_SIZE: usize = 3;
/// How long the nodes may take to see each other running (after joining,
/// after a restart).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a killed node's VM may take to be gone and its port closed.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often cluster state is polled (every poll runs the CLI: a second of
/// CPU on this machine).
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Tells the clusters of this process apart: node `i` of cluster `k` is
/// `taskfaults_<pid>_c<k>n<i>` (private brokers' are `taskfaults_<pid>_<n>`).
static CLUSTERS_STARTED: AtomicU32 = AtomicU32::new(0);

/// A three-node RabbitMQ cluster on `127.0.0.1`, user guest/guest.
#[derive(Debug)]
pub struct PrivateCluster {
    nodes: Nodes,
    /// Each node's server process (the Debian wrapper or the script), while
    /// the node runs: `None` once it is killed.
    servers: Mutex<Vec<Option<Child>>>,
}

impl PrivateCluster {
    /// Boots three fresh nodes at once and clusters them (20-60 s on two
    /// CPUs). Panics with the nodes' output if they cannot boot or cluster.
    pub async fn start(label: &str) -> PrivateCluster {
        let label = label.to_owned();
        tokio::task::spawn_blocking(move || Self::start_blocking(&label))
            .await
            .expect("the cluster start does not panic")
    }

    fn start_blocking(label: &str) -> PrivateCluster {
        let tools = Tools::find();
        reap_orphans(&tools);
        if let Err(reason) = ensure_cookie(&tools) {
            panic!("private cluster: {reason}");
        }
        let k = CLUSTERS_STARTED.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let booted: Vec<Result<(Node, Child), String>> = std::thread::scope(|scope| {
            let boots: Vec<_> = (0..CLUSTER_SIZE)
                .map(|i| {
                    let tools = &tools;
                    let name = format!("{NODE_PREFIX}{}_c{k}n{i}", std::process::id());
                    scope.spawn(move || boot_with_retries(&name, label, tools))
                })
                .collect();
            boots
                .into_iter()
                .map(|boot| boot.join().expect("a node boot does not panic"))
                .collect()
        });
        let booted_in = started.elapsed();
        let mut nodes = Vec::new();
        let mut servers = Vec::new();
        let mut failures = Vec::new();
        for result in booted {
            match result {
                Ok((node, server)) => {
                    nodes.push(node);
                    servers.push(Some(server));
                }
                Err(failure) => failures.push(failure),
            }
        }
        if !failures.is_empty() {
            for (node, server) in nodes.iter().zip(servers) {
                node.halt(server);
                let _ = fs::remove_dir_all(&node.dir);
            }
            panic!(
                "could not start a private RabbitMQ cluster (needs rabbitmq-server installed, \
                 and root or the rabbitmq user): {}",
                failures.join("\n---\n")
            );
        }
        // From here on, drop halts the nodes if the cluster cannot form.
        let cluster = PrivateCluster {
            nodes: Nodes(nodes),
            servers: Mutex::new(servers),
        };
        let all: Vec<usize> = (0..CLUSTER_SIZE).collect();
        let formed = cluster
            .nodes
            .join_all()
            .and_then(|()| cluster.nodes.wait_for_running(0, &all));
        if let Err(reason) = formed {
            panic!("private cluster: {reason}");
        }
        eprintln!(
            "[private cluster] {} formed in {:.1?} (nodes booted in {booted_in:.1?}): ports {:?}",
            cluster.nodes[0].name,
            started.elapsed(),
            cluster
                .nodes
                .0
                .iter()
                .map(|node| node.port)
                .collect::<Vec<_>>()
        );
        cluster
    }

    /// The AMQP URL of every node, in node order.
    pub fn urls(&self) -> Vec<String> {
        (0..CLUSTER_SIZE).map(|i| self.url(i)).collect()
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port(i))
    }

    /// Node `i`'s Erlang node name (`taskfaults_<pid>_c<k>n<i>@localhost`), as
    /// `cluster_status` and the queue's leader and members name it.
    pub fn node(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s AMQP port on 127.0.0.1 (the same after a restart).
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Which node (0, 1 or 2) is called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.0.iter().position(|node| node.name == name)
    }

    /// Whether node `i`'s Erlang VM is alive and its AMQP port accepts
    /// connections (not whether the others see it: see
    /// [`PrivateCluster::running_nodes`]).
    pub fn is_running(&self, i: usize) -> bool {
        let node = &self.nodes[i];
        !vm_pids(&node.name).is_empty()
            && TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], node.port)),
                Duration::from_millis(500),
            )
            .is_ok()
    }

    /// Kills node `i` the hard way: `SIGKILL` of its Erlang VM (`beam.smp`),
    /// no shutdown at all. Returns once the VM is gone, its AMQP port
    /// refuses connections and its name is free again in epmd. Panics if
    /// the node was not running.
    pub async fn kill(&self, i: usize) {
        let server = self.take_server(i);
        let node = self.nodes[i].clone();
        let started = Instant::now();
        let killed = tokio::task::spawn_blocking(move || kill_node(&node, server))
            .await
            .expect("the kill does not panic");
        if let Err(reason) = killed {
            panic!("private cluster: killing {}: {reason}", self.nodes[i].name);
        }
        eprintln!(
            "[private cluster] killed {} in {:.1?}",
            self.nodes[i].name,
            started.elapsed()
        );
    }

    /// Boots killed node `i` again on its data directory (same name and
    /// ports) and waits until it is running and the other running nodes
    /// see it in the cluster again. Panics with its output if it does not
    /// come back.
    pub async fn restart(&self, i: usize) {
        assert!(
            self.servers.lock().expect("servers lock")[i].is_none() && !self.is_running(i),
            "private cluster: {} is running; kill it first",
            self.nodes[i].name
        );
        let node = self.nodes[i].clone();
        let started = Instant::now();
        let booted = tokio::task::spawn_blocking(move || {
            let mut server = node.spawn()?;
            match node.await_boot(&mut server) {
                Ok(()) => Ok(server),
                Err(reason) => {
                    node.halt(Some(server));
                    Err(reason)
                }
            }
        })
        .await
        .expect("the restart does not panic");
        match booted {
            Ok(server) => self.servers.lock().expect("servers lock")[i] = Some(server),
            Err(reason) => panic!(
                "private cluster: {} did not boot again: {reason}",
                self.nodes[i].name
            ),
        }
        let booted_in = started.elapsed();
        // Seen as running by a node that stayed up (and by itself).
        let alive: Vec<usize> = (0..CLUSTER_SIZE).filter(|&j| self.is_running(j)).collect();
        let observer = alive.iter().copied().find(|&j| j != i).unwrap_or(i);
        let seen = self.blocking(move |cluster| {
            cluster.wait_for_running(observer, &alive)?;
            cluster.wait_for_running(i, &alive)
        });
        if let Err(reason) = seen.await {
            panic!("private cluster: {reason}");
        }
        eprintln!(
            "[private cluster] {} back in {:.1?} (booted in {booted_in:.1?})",
            self.nodes[i].name,
            started.elapsed()
        );
    }

    /// Runs `rabbitmqctl -n <node i> <args>` and returns its output; panics
    /// if it fails.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> String {
        self.try_ctl(i, args)
            .await
            .unwrap_or_else(|reason| panic!("{reason}"))
    }

    /// [`PrivateCluster::ctl`] that returns the failure (e.g. against a
    /// node that is down).
    pub async fn try_ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let node = self.nodes[i].clone();
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node.ctl(&args)
        })
        .await
        .expect("rabbitmqctl does not panic")
    }

    /// The nodes `cluster_status` lists as running, asked of the first node
    /// whose VM is up.
    pub async fn running_nodes(&self) -> Vec<String> {
        let result = self
            .blocking(|cluster| running_nodes_of(cluster.any_running_node()?))
            .await;
        result.unwrap_or_else(|reason| panic!("private cluster: {reason}"))
    }

    /// The members of quorum queue `queue` (in vhost `/`), as node names.
    pub async fn quorum_members(&self, queue: &str) -> Vec<String> {
        self.queue_info(queue).await.members
    }

    /// The members of quorum queue `queue` that are up (`online`).
    pub async fn quorum_online(&self, queue: &str) -> Vec<String> {
        self.queue_info(queue).await.online
    }

    /// The node that leads quorum queue `queue`, if it has a leader now.
    pub async fn leader_of(&self, queue: &str) -> Option<String> {
        self.queue_info(queue).await.leader
    }

    /// `list_queues name type leader members online` of `queue`, asked of
    /// the first node whose VM is up (again, a few times, if the command
    /// fails: e.g. just after a kill). Panics if the queue is not there or
    /// is not a quorum queue.
    async fn queue_info(&self, queue: &str) -> QuorumInfo {
        let queue = queue.to_owned();
        let result = self
            .blocking(move |cluster| {
                let mut attempts = 0;
                let output = loop {
                    attempts += 1;
                    let listed = cluster.any_running_node().and_then(|node| {
                        node.ctl(&[
                            "list_queues",
                            "--quiet",
                            "--formatter",
                            "json",
                            "name",
                            "type",
                            "leader",
                            "members",
                            "online",
                        ])
                    });
                    match listed {
                        Ok(output) => break output,
                        Err(reason) if attempts >= 3 => return Err(reason),
                        Err(_) => std::thread::sleep(Duration::from_secs(1)),
                    }
                };
                quorum_info(&output, &queue).map_err(|reason| format!("list_queues: {reason}"))
            })
            .await;
        result.unwrap_or_else(|reason| panic!("private cluster: {reason}"))
    }

    fn take_server(&self, i: usize) -> Option<Child> {
        self.servers.lock().expect("servers lock")[i].take()
    }

    /// Runs a blocking step on the nodes off the async runtime (clients
    /// keep running meanwhile).
    async fn blocking<T, F>(&self, step: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Nodes) -> Result<T, String> + Send + 'static,
    {
        let nodes = self.nodes.clone();
        tokio::task::spawn_blocking(move || step(&nodes))
            .await
            .expect("a cluster step does not panic")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let servers: Vec<Option<Child>> = match self.servers.get_mut() {
            Ok(servers) => servers.iter_mut().map(Option::take).collect(),
            Err(poisoned) => poisoned.into_inner().iter_mut().map(Option::take).collect(),
        };
        // All at once: each `rabbitmqctl stop` takes seconds.
        std::thread::scope(|scope| {
            for (node, server) in self.nodes.0.iter().zip(servers) {
                scope.spawn(move || {
                    if vm_pids(&node.name).is_empty() {
                        // Killed (and not restarted): only its wrapper may
                        // be left.
                        reap(server);
                    } else {
                        node.halt(server);
                    }
                });
            }
        });
        if std::thread::panicking() {
            for node in &self.nodes.0 {
                eprintln!(
                    "[private cluster] the test failed: node {} logs kept in {}",
                    node.name,
                    node.dir.display()
                );
            }
        } else {
            for node in &self.nodes.0 {
                let _ = fs::remove_dir_all(&node.dir);
            }
        }
    }
}

/// The cluster's nodes (where they live, how to reach them), with the
/// blocking steps on them.
#[derive(Debug, Clone)]
struct Nodes(Vec<Node>);

impl std::ops::Index<usize> for Nodes {
    type Output = Node;

    fn index(&self, i: usize) -> &Node {
        &self.0[i]
    }
}

impl Nodes {
    /// Nodes 1 and 2 join node 0, both at once (4-6 s; one after the other
    /// took 9-10 s): Mnesia serialises the schema changes, and every node's
    /// `cluster_nodes.config` lists all three afterwards.
    fn join_all(&self) -> Result<(), String> {
        let first = self[0].name.as_str();
        std::thread::scope(|scope| {
            let joins: Vec<_> = self.0[1..]
                .iter()
                .map(|node| {
                    scope.spawn(move || {
                        node.ctl(&["stop_app"])?;
                        node.ctl(&["join_cluster", first])?;
                        node.ctl(&["start_app"]).map(drop)
                    })
                })
                .collect();
            joins
                .into_iter()
                .try_for_each(|join| join.join().expect("a join does not panic"))
        })
    }

    /// Waits until `cluster_status` on node `observer` lists every node of
    /// `expected` as running.
    fn wait_for_running(&self, observer: usize, expected: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let running = running_nodes_of(&self[observer]);
            if let Ok(running) = &running {
                if expected.iter().all(|&i| running.contains(&self[i].name)) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let wanted: Vec<&str> = expected.iter().map(|&i| self[i].name.as_str()).collect();
                return Err(format!(
                    "{} does not see {wanted:?} running after {CLUSTER_TIMEOUT:?}: {running:?}",
                    self[observer].name
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn any_running_node(&self) -> Result<&Node, String> {
        (0..CLUSTER_SIZE)
            .find(|&i| !vm_pids(&self[i].name).is_empty())
            .map(|i| &self[i])
            .ok_or_else(|| "no node is running".to_owned())
    }
}

/// Creates and boots a fresh node called `name` (`name`, then `<name>r1`,
/// `<name>r2`: a port picked free can be taken before the node binds it).
fn boot_with_retries(name: &str, label: &str, tools: &Tools) -> Result<(Node, Child), String> {
    let mut failures = Vec::new();
    for attempt in 0..3 {
        let name = match attempt {
            0 => name.to_owned(),
            _ => format!("{name}r{attempt}"),
        };
        match boot_node(&name, label, tools, None) {
            Ok(booted) => return Ok(booted),
            Err(failure) => {
                eprintln!("[private cluster] boot of {name} failed, retrying: {failure}");
                failures.push(failure);
            }
        }
    }
    Err(failures.join("\n---\n"))
}

/// Makes sure the Erlang cookie of the user the nodes run as exists:
/// otherwise each of the three nodes booting at once would write its own,
/// and they could not talk to each other.
fn ensure_cookie(tools: &Tools) -> Result<(), String> {
    let home = match tools.owner {
        Some((uid, _)) => home_of(uid).ok_or_else(|| format!("no home for uid {uid}"))?,
        None => std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .ok_or("HOME is not set")?,
    };
    let cookie = home.join(".erlang.cookie");
    if cookie.exists() {
        return Ok(());
    }
    let value: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_uppercase()
        .chars()
        .filter(char::is_ascii_alphabetic)
        .chain("RABBITMQCOOKIE".chars())
        .take(20)
        .collect();
    fs::write(&cookie, value).map_err(|e| format!("write {}: {e}", cookie.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400))
        .map_err(|e| format!("chmod {}: {e}", cookie.display()))?;
    if let Some((uid, gid)) = tools.owner {
        std::os::unix::fs::chown(&cookie, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", cookie.display()))?;
    }
    Ok(())
}

/// The home directory of user `uid` (`/etc/passwd`).
fn home_of(uid: u32) -> Option<std::path::PathBuf> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 5 && fields[2].parse() == Ok(uid))
            .then(|| std::path::PathBuf::from(fields[5]))
    })
}

/// `SIGKILL`s the node's VM and waits until it is gone, its port refuses
/// connections and epmd forgot its name (so that it can boot again under
/// it); reaps its server process (the wrapper exits with the VM).
fn kill_node(node: &Node, server: Option<Child>) -> Result<(), String> {
    let pids = vm_pids(&node.name);
    if pids.is_empty() {
        reap(server);
        return Err("its VM is not running".to_owned());
    }
    for &pid in &pids {
        // SAFETY: `pid` is our node's VM (checked by `vm_pids` just now).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    let short_name = node.name.split('@').next().unwrap_or(&node.name);
    loop {
        let vm_alive = !vm_pids(&node.name).is_empty();
        let registered = epmd_names().iter().any(|name| name == short_name);
        if !vm_alive && !registered {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "after {KILL_TIMEOUT:?}: VM alive {vm_alive}, registered in epmd {registered}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    node.wait_for_port(false, KILL_TIMEOUT, None)?;
    reap(server);
    Ok(())
}

/// Waits a little for a server process whose VM is gone to exit, then
/// kills it.
fn reap(server: Option<Child>) {
    let Some(mut server) = server else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// The pids of the Erlang VMs (`beam.smp`) of node `name`: their
/// environment names the node (the wrapper's shells have it too, but are
/// not VMs).
fn vm_pids(name: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
                && is_our_node(*pid, name)
        })
        .collect()
}

/// The node names (without `@host`) registered in the local epmd.
fn epmd_names() -> Vec<String> {
    let Ok(output) = Command::new("epmd").arg("-names").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // "name taskfaults_1234_c0 at port 41234"
            line.strip_prefix("name ")?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// The nodes `rabbitmqctl cluster_status` on `node` lists as running.
fn running_nodes_of(node: &Node) -> Result<Vec<String>, String> {
    let output = node.ctl(&["cluster_status", "--formatter", "json"])?;
    let status: serde_json::Value = serde_json::from_str(&output).map_err(|e| {
        format!(
            "cluster_status of {} is not JSON ({e}): {output}",
            node.name
        )
    })?;
    let running = status
        .get("running_nodes")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| {
            format!(
                "cluster_status of {} has no running_nodes: {output}",
                node.name
            )
        })?;
    Ok(running
        .iter()
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect())
}

/// A quorum queue's leader and members, as `list_queues` shows them.
#[derive(Debug, Clone, Default)]
struct QuorumInfo {
    leader: Option<String>,
    members: Vec<String>,
    online: Vec<String>,
}

/// `queue`'s row of `list_queues --formatter json name type leader members
/// online`.
fn quorum_info(output: &str, queue: &str) -> Result<QuorumInfo, String> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(output).map_err(|e| format!("no JSON ({e}): {output}"))?;
    let row = rows
        .iter()
        .find(|row| row.get("name").and_then(serde_json::Value::as_str) == Some(queue))
        .ok_or_else(|| format!("no queue {queue}: {output}"))?;
    if row.get("type").and_then(serde_json::Value::as_str) != Some("quorum") {
        return Err(format!("{queue} is no quorum queue: {row}"));
    }
    let names = |key: &str| -> Vec<String> {
        row.get(key)
            .and_then(serde_json::Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let leader = row
        .get("leader")
        .and_then(serde_json::Value::as_str)
        .filter(|leader| leader.contains('@'))
        .map(str::to_owned);
    Ok(QuorumInfo {
        leader,
        members: names("members"),
        online: names("online"),
    })
}
