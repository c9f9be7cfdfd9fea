//! [`CanvasRefusal`]: canvas that cannot run here (chords nothing here
//! joins, shapes Celery never sends) is refused, not half-run.

use super::{Job, Outcome, Rejection, Stage, Step};
use crate::protocol::canvas::Embed;
use crate::protocol::chord_join::JOIN_QUEUE_HEADER;
use crate::TaskError;

/// Refuses a message whose `embed` carries what cannot run here (a chord,
/// as a header part or nested in a chain or callback, that nothing here
/// joins; a shape Celery never sends; see `Embed::unsupported`): running
/// the task and dropping the rest of the workflow would lose work in
/// silence. The task
/// and every remaining chain step (their frozen ids) are told FAILURE
/// `NotImplementedError`, as Celery fails a chain, and the message is
/// rejected (dead-lettered, so it can be replayed). Callbacks, errbacks,
/// chains and groups pass: whoever runs the task sends what follows it.
#[derive(Debug, Default, Clone, Copy)]
pub struct CanvasRefusal {
    /// Whether the result backend joins chords (Celery's chords on Redis):
    /// every chord part runs, and chords in chains start.
    pub backend_joins: bool,
    /// Whether chords are joined here without a result backend: by a
    /// worker on the broker ([`chord_join`]: the parts that name their join
    /// queue run), or inline by eager mode; chords in chains start.
    ///
    /// [`chord_join`]: crate::protocol::chord_join
    pub broker_joins: bool,
}

impl Stage for CanvasRefusal {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let Some(embed) = Embed::of(&job.request) else {
            return Step::Next;
        };
        let names_join_queue = || {
            job.message
                .properties
                .headers
                .get_str(JOIN_QUEUE_HEADER)
                .is_some()
        };
        let part_joined = self.backend_joins || (self.broker_joins && names_join_queue());
        let nested_chords = self.backend_joins || self.broker_joins;
        let Some(what) = embed.unsupported(part_joined, nested_chords) else {
            return Step::Next;
        };
        let request = &job.request;
        tracing::warn!(task_id = %request.id, task = %request.name, %what,
            "cannot run this canvas yet: not running the task, dead-lettering it");
        let reason = format!(
            "this Rust worker does not run {what} yet; the task was not run and was moved to \
             the queue's dead-letter queue"
        );
        let mut notify: Vec<(String, String)> = request
            .reply_to
            .iter()
            .map(|reply_to| (request.id.clone(), reply_to.clone()))
            .collect();
        notify.extend(embed.chain_callers(request.reply_to.as_deref()));
        Step::Stop(Outcome::Rejected(Rejection::new(
            format!("NotImplementedError: {reason}"),
            TaskError::new("NotImplementedError", reason),
            notify,
        )))
    }
}
