//! [`Node`]: this worker as remote control and events see it: its node
//! name, the tasks it holds, the revoked ids it knows, its events, its
//! concurrency (and autoscaler) and the settings commands change.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;
use task_core::pipeline::TaskSettings;
use task_core::{App, Registry};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::autoscale::Autoscaler;
use crate::events::WorkerEvents;
use crate::requests::Requests;
use crate::revokes::{RevokedIds, RevokedStamps};

/// What a running worker shares with its stages, its remote control and
/// its heartbeat.
#[derive(Debug)]
pub(crate) struct Node {
    /// The node name (`celery@host`).
    pub(crate) hostname: String,
    pub(crate) started: Instant,
    pub(crate) app: App,
    pub(crate) registry: Registry,
    pub(crate) settings: Arc<TaskSettings>,
    pub(crate) requests: Requests,
    pub(crate) revoked: RevokedIds,
    /// The stamps revoked (`revoke_by_stamped_headers`).
    pub(crate) revoked_stamps: RevokedStamps,
    pub(crate) events: WorkerEvents,
    /// The queues consumed now.
    pub(crate) queues: Mutex<Vec<String>>,
    pub(crate) prefetch: u16,
    /// The concurrency slots: `pool_grow` adds permits, `pool_shrink`
    /// takes some away for good.
    pub(crate) slots: Arc<Semaphore>,
    concurrency: AtomicUsize,
    /// A task taken from the queues waits for a concurrency slot.
    waiting_for_slot: AtomicBool,
    /// Sizes the concurrency to the work held (`--autoscale`), if on.
    pub(crate) autoscaler: Option<Autoscaler>,
    /// Cancelled to stop the worker (the `shutdown` command).
    pub(crate) shutdown: CancellationToken,
    /// Asks the worker's consuming loop to start or stop consuming a queue
    /// (`add_consumer`, `cancel_consumer`).
    pub(crate) queue_changes: mpsc::UnboundedSender<QueueChange>,
}

/// A change to the queues a worker consumes, with where its answer goes
/// (the reply to the remote control command).
#[derive(Debug)]
pub(crate) enum QueueChange {
    /// Start consuming this queue (declared as a task queue if missing).
    Add {
        queue: String,
        answer: oneshot::Sender<Value>,
    },
    /// Stop consuming this queue (its messages taken already still run).
    Cancel {
        queue: String,
        answer: oneshot::Sender<Value>,
    },
}

/// How [`Node`] is made.
pub(crate) struct NodeParts {
    pub(crate) hostname: String,
    pub(crate) app: App,
    pub(crate) registry: Registry,
    pub(crate) settings: Arc<TaskSettings>,
    pub(crate) events: WorkerEvents,
    pub(crate) queues: Vec<String>,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
    pub(crate) autoscaler: Option<Autoscaler>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) queue_changes: mpsc::UnboundedSender<QueueChange>,
}

impl Node {
    pub(crate) fn new(parts: NodeParts) -> Self {
        Self {
            hostname: parts.hostname,
            started: Instant::now(),
            app: parts.app,
            registry: parts.registry,
            settings: parts.settings,
            requests: Requests::default(),
            revoked: RevokedIds::default(),
            revoked_stamps: RevokedStamps::default(),
            events: parts.events,
            queues: Mutex::new(parts.queues),
            prefetch: parts.prefetch,
            slots: Arc::new(Semaphore::new(parts.concurrency)),
            concurrency: AtomicUsize::new(parts.concurrency),
            waiting_for_slot: AtomicBool::new(false),
            autoscaler: parts.autoscaler,
            shutdown: parts.shutdown,
            queue_changes: parts.queue_changes,
        }
    }

    /// How many tasks may run at once now.
    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Relaxed)
    }

    /// Records whether a task taken from the queues waits for a slot.
    pub(crate) fn set_waiting_for_slot(&self, waiting: bool) {
        self.waiting_for_slot.store(waiting, Ordering::Relaxed);
    }

    /// Whether a task taken from the queues waits for a slot: every slot
    /// is busy and there is more.
    pub(crate) fn waiting_for_slot(&self) -> bool {
        self.waiting_for_slot.load(Ordering::Relaxed)
    }

    /// Lets `n` more tasks run at once.
    pub(crate) fn grow(&self, n: usize) {
        self.slots.add_permits(n);
        self.concurrency.fetch_add(n, Ordering::Relaxed);
    }

    /// Lets up to `n` fewer tasks run at once, keeping at least one;
    /// returns by how many. Slots in use are taken once their tasks end.
    pub(crate) fn shrink(&self, n: usize) -> usize {
        let mut current = self.concurrency();
        loop {
            let by = n.min(current.saturating_sub(1));
            if by == 0 {
                return 0;
            }
            match self.concurrency.compare_exchange(
                current,
                current - by,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let slots = Arc::clone(&self.slots);
                    let by_u32 = u32::try_from(by).unwrap_or(u32::MAX);
                    tokio::spawn(async move {
                        if let Ok(taken) = slots.acquire_many_owned(by_u32).await {
                            taken.forget();
                        }
                    });
                    return by;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The queues consumed now.
    pub(crate) fn queues(&self) -> Vec<String> {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the queues consumed from now on.
    pub(crate) fn set_queues(&self, queues: Vec<String>) {
        *self.queues.lock().unwrap_or_else(PoisonError::into_inner) = queues;
    }
}
