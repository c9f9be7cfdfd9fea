//! [`Eta`]: a task is not run before its `eta`.

use std::time::Duration;

use chrono::Utc;
use task_core::pipeline::{Job, Outcome, Stage, Step};

/// A task whose ETA is less than this far away waits in the worker; a later
/// one is handed back to the broker's delay levels.
pub(crate) const PARK_THRESHOLD: Duration = Duration::from_millis(50);

/// Holds a task until its `eta`: a short wait in the worker, a longer one
/// in the broker ([`Outcome::Deferred`], its concurrency slot given back),
/// so an ETA never holds a slot or an unacked delivery for long. (Tasks the
/// framework delays arrive when due; this catches a Python producer's ETA
/// and delays beyond what the delay levels reach.)
#[derive(Debug, Default)]
pub(crate) struct Eta;

impl Stage for Eta {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let Some(wait) = job
            .request
            .eta
            .and_then(|eta| (eta - Utc::now()).to_std().ok())
        else {
            return Step::Next;
        };
        if wait > PARK_THRESHOLD {
            if let Some(slot) = job.slot.as_deref_mut() {
                slot.release();
            }
            return Step::Stop(Outcome::Deferred { wait });
        }
        Step::Wait(Box::pin(async move {
            tokio::time::sleep(wait).await;
            None
        }))
    }
}
