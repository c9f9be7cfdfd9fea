//! A worker run as a child process: its pid for `/proc` accounting, a
//! liveness check, and SIGTERM with a deadline (killed on drop).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys;

pub struct ChildProc {
    label: String,
    log: PathBuf,
    child: Child,
}

impl ChildProc {
    /// Starts `command`; its output goes to a log file in the temp directory
    /// (named in the error should it exit early).
    pub fn spawn(label: &str, mut command: Command) -> Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "task-bench-{}-{}.log",
            label.replace(' ', "-"),
            std::process::id()
        ));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {label}: {command:?}"))?;
        Ok(Self {
            label: label.to_owned(),
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited already.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "{} exited early with {status}; the end of {}:\n{}",
                self.label,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// CPU seconds of the process and its children (prefork pools).
    pub fn cpu_seconds(&self) -> f64 {
        sys::tree_cpu_seconds(self.pid())
    }

    /// Context switches of the process's threads and its children's.
    pub fn context_switches(&self) -> u64 {
        sys::tree_context_switches(self.pid())
    }

    /// Peak resident set of the process and its children, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let peaks: Vec<u64> = sys::process_tree(self.pid())
            .into_iter()
            .filter_map(|pid| sys::status_kib(pid, "VmHWM"))
            .collect();
        (!peaks.is_empty()).then(|| peaks.iter().sum())
    }

    /// Current resident set of the process itself, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        sys::status_kib(self.pid(), "VmRSS")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(mut self, grace: Duration) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                let _ = std::fs::remove_file(&self.log);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "  ({} did not stop within {grace:?} of SIGTERM: killed)",
            self.label
        );
        self.kill_tree();
        Ok(())
    }

    /// SIGKILL to the process and every descendant (a prefork pool).
    fn kill_tree(&mut self) {
        for pid in sys::process_tree(self.child.id()).into_iter().rev() {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: signalling our child and its descendants.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_tree();
        }
    }
}
