//! [`CanvasRefusal`]: messages carrying canvas (chain, callbacks, errbacks,
//! chord) are refused, not half-run, until canvas is built.

use super::{Job, Outcome, Rejection, Stage, Step};
use crate::TaskError;

/// Refuses a message whose `embed` carries a chain, callbacks, errbacks or a
/// chord: running the task and dropping the rest of the workflow would lose
/// work in silence. The task and every remaining chain step (their frozen
/// ids) are told FAILURE `NotImplementedError`, as Celery fails a chain,
/// and the message is rejected (dead-lettered, so it can be replayed).
#[derive(Debug, Default, Clone, Copy)]
pub struct CanvasRefusal;

impl Stage for CanvasRefusal {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let request = &job.request;
        let canvas = request.canvas_parts();
        if canvas.is_empty() {
            return Step::Next;
        }
        let parts = canvas.join(", ");
        tracing::warn!(task_id = %request.id, task = %request.name, %parts,
            "this worker cannot run canvas (chain, group callbacks, chord) yet: \
             not running the task, dead-lettering it");
        let reason = format!(
            "this Rust worker does not run canvas yet: the message carries {parts}; \
             the task was not run and was moved to the queue's dead-letter queue"
        );
        let steps = request
            .chain_step_ids()
            .into_iter()
            .map(|(id, reply_to)| (id, reply_to.or_else(|| request.reply_to.clone())));
        let notify = std::iter::once((request.id.clone(), request.reply_to.clone()))
            .chain(steps)
            .filter_map(|(id, reply_to)| Some((id, reply_to?)))
            .collect();
        Step::Stop(Outcome::Rejected(Rejection::new(
            format!("NotImplementedError: {reason}"),
            TaskError::new("NotImplementedError", reason),
            notify,
        )))
    }
}
