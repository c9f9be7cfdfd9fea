//! Process accounting from `/proc` and `getrusage`, percentiles and medians,
//! and a description of the machine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of one process, in seconds (`None` once it is gone).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (1-based); `after` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// Context switches (voluntary + involuntary) of every thread of `pid`
/// still alive: the thread hand-overs a message costs.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for thread in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let status = std::fs::read_to_string(thread.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// Context switches of `pid` and its live descendants.
pub fn tree_context_switches(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(context_switches)
        .sum()
}

/// The parent pid of a process.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and every live descendant of it (a prefork pool's children).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                if let Some(parent) = parent_pid(child) {
                    all.push((child, parent));
                }
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU seconds of `pid` and its live descendants.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    process_tree(pid)
        .into_iter()
        .filter_map(process_cpu_seconds)
        .sum()
}

/// The local RabbitMQ server's Erlang VM (`beam.smp` booting `rabbit`), if
/// it runs on this machine. CLI tools (`rabbitmqctl`) run in a `beam.smp` of
/// their own, and the tests' private nodes set `RABBITMQ_NODE_PORT`: neither
/// is the broker the bench talks to.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .find(|pid| {
            let is_beam = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp");
            let boots_rabbit = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| contains(&cmdline, b"rabbit\0boot"));
            let private_node = std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| contains(&environ, b"RABBITMQ_NODE_PORT="));
            is_beam && boots_rabbit && !private_node
        })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// CPU seconds of the local broker so far (`None` if it is not local).
pub fn broker_cpu_seconds() -> Option<f64> {
    broker_pid().and_then(process_cpu_seconds)
}

/// This process's user + system CPU seconds (all threads).
pub fn self_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// User + system CPU seconds of this process's reaped children (workers,
/// Python clients) and their reaped descendants.
pub fn children_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_CHILDREN)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Busy CPU seconds of the whole machine so far (all CPUs, from /proc/stat).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = cpu.iter().take(8).sum::<f64>() - cpu.get(3)? - cpu.get(4)?;
    Some(busy / ticks_per_second())
}

/// Snapshot for telling how much CPU other processes took during a run.
#[derive(Debug, Clone, Copy)]
pub struct CpuShare {
    at: std::time::Instant,
    machine: Option<f64>,
    ours: f64,
    broker: Option<f64>,
}

/// Where the machine's CPU went over a benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub wall_seconds: f64,
    /// Average CPUs busy (of `nproc`).
    pub machine_busy_cpus: Option<f64>,
    /// The benchmark: this process and its children (workers, Python).
    pub benchmark_cpus: f64,
    pub rabbitmq_cpus: Option<f64>,
    /// Everything else on the machine (other users' builds and tests).
    pub other_processes_cpus: Option<f64>,
}

impl CpuShare {
    pub fn start() -> Self {
        Self {
            at: std::time::Instant::now(),
            machine: machine_busy_seconds(),
            ours: self_cpu_seconds() + children_cpu_seconds(),
            broker: broker_cpu_seconds(),
        }
    }

    /// Only meaningful once every child has been reaped.
    pub fn finish(&self) -> CpuUse {
        let wall = self.at.elapsed().as_secs_f64();
        let ours = (self_cpu_seconds() + children_cpu_seconds() - self.ours) / wall;
        let machine = machine_busy_seconds()
            .zip(self.machine)
            .map(|(b, a)| (b - a) / wall);
        let broker = broker_cpu_seconds()
            .zip(self.broker)
            .map(|(b, a)| (b - a) / wall);
        CpuUse {
            wall_seconds: wall,
            machine_busy_cpus: machine,
            benchmark_cpus: ours,
            rabbitmq_cpus: broker,
            other_processes_cpus: machine.map(|m| (m - ours - broker.unwrap_or(0.0)).max(0.0)),
        }
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS (writes 5
/// to `/proc/self/clear_refs`, Linux 4.0+); whether it could.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Self::of_ms(&mut ms)
    }

    pub fn of_ms(ms: &mut [f64]) -> Option<Self> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(Self {
            calls: ms.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        })
    }
}

/// The median of the values present (`None` if there are none).
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// What the benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total: String,
    pub kernel: String,
    pub rabbitmq_version: String,
    pub erlang_version: String,
    pub rustc: String,
    pub load_average_at_start: String,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let status = command_output("rabbitmqctl", &["status"]).unwrap_or_default();
        let pick = |key: &str| {
            status
                .lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "unknown (rabbitmqctl status unavailable)".into())
        };
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            mem_total,
            kernel: command_output("uname", &["-r"]).unwrap_or_else(|| "unknown".into()),
            rabbitmq_version: pick("RabbitMQ version:"),
            erlang_version: pick("Erlang configuration:"),
            rustc: command_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
            load_average_at_start: load_average(),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The workspace root (this example is part of the root package).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
