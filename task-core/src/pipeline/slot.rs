//! [`Slot`]: one of a worker's concurrency slots, held by a job.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A concurrency slot held by a job, which a stage gives back while the job
/// waits (for its rate-limit turn) so that other tasks run meanwhile.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
}

impl Slot {
    /// The slot `permit` of `slots`.
    pub fn new(permit: OwnedSemaphorePermit, slots: Arc<Semaphore>) -> Self {
        Self {
            permit: Some(permit),
            slots,
        }
    }

    /// Gives the slot back for good: what is left to do with this job is
    /// broker I/O (parking it), not running a task.
    pub fn release(&mut self) {
        self.permit = None;
    }

    /// Waits until `instant` without holding the slot, then takes one again.
    pub async fn wait_until(&mut self, instant: tokio::time::Instant) {
        if instant <= tokio::time::Instant::now() {
            return;
        }
        self.permit = None;
        tokio::time::sleep_until(instant).await;
        self.permit = Arc::clone(&self.slots).acquire_owned().await.ok();
    }
}
