//! [`Stage`]: a step of the pipeline that runs before the task and sees its
//! outcome after.

use futures_util::future::BoxFuture;

use super::{Job, Outcome};

/// What a stage's [`Stage::before`] decides.
pub enum Step<'a> {
    /// Go on to the next stage (and then run the task).
    Next,
    /// End here with this outcome; the task does not run.
    Stop(Outcome),
    /// Wait for this future first: `None` goes on, `Some` ends with that
    /// outcome. (Only a stage that must wait pays for a boxed future.)
    Wait(BoxFuture<'a, Option<Outcome>>),
}

/// A step of the pipeline between the lookup of the task and its run, and an
/// observer of the outcome: where cross-cutting features plug in (expiry,
/// ETA, rate limits, early ack, logging; later revokes, events, metrics).
///
/// Both methods are synchronous in the common case so that a stage that
/// has nothing to do costs a function call: one that must wait returns a
/// boxed future.
pub trait Stage: Send + Sync + 'static {
    /// Before the task runs: let the job through, make it wait, or end it.
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let _ = job;
        Step::Next
    }

    /// After the outcome is known and before settlement, in reverse stage
    /// order, for every stage whose `before` ran (the one that stopped the
    /// job included). It may change the outcome; a stage that must wait
    /// returns a future.
    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        let _ = (job, outcome);
        None
    }
}
