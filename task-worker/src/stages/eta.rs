//! [`Eta`]: a task is not run before its `eta`.

use std::time::Duration;

use task_core::pipeline::{Job, Outcome, Stage, Step};

/// A task whose ETA is less than this far away waits in the worker; a later
/// one is handed back to the broker's delay levels (unless they keep only
/// coarser delays: see [`Eta::for_resolution`]).
pub(crate) const PARK_THRESHOLD: Duration = Duration::from_millis(50);

/// Holds a task until its `eta`: a short wait in the worker, a longer one
/// in the broker ([`Outcome::Deferred`], its concurrency slot given back),
/// so an ETA never holds a slot or an unacked delivery for long. (Tasks the
/// framework delays arrive when due; this catches a Python producer's ETA
/// and delays beyond what the delay levels reach.)
#[derive(Debug)]
pub(crate) struct Eta {
    /// ETAs this close are waited for in the worker.
    hold_within: Duration,
}

impl Eta {
    /// The stage for a broker whose delays are cut to multiples of
    /// `resolution` ([`Broker::delay_resolution`]): a task may arrive up
    /// to that early (Celery's native delay levels keep whole seconds), and
    /// handing the rest back to the broker would send it round again at
    /// once, so the worker holds it.
    ///
    /// [`Broker::delay_resolution`]: task_core::broker::Broker::delay_resolution
    pub(crate) fn for_resolution(resolution: Duration) -> Self {
        Self {
            hold_within: PARK_THRESHOLD.max(resolution),
        }
    }
}

impl Stage for Eta {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let Some(wait) = job
            .request
            .eta
            .and_then(|eta| (eta - task_core::clock::now()).to_std().ok())
        else {
            return Step::Next;
        };
        if wait > self.hold_within {
            if let Some(slot) = job.slot.as_deref_mut() {
                slot.release();
            }
            return Step::Stop(Outcome::Deferred { wait });
        }
        // Without its slot: tasks held up to a second (Celery's whole-second
        // levels) must not keep others from running meanwhile.
        let until = tokio::time::Instant::now() + wait;
        Step::Wait(Box::pin(async move {
            match job.slot.as_deref_mut() {
                Some(slot) => slot.wait_until(until).await,
                None => tokio::time::sleep_until(until).await,
            }
            None
        }))
    }
}
