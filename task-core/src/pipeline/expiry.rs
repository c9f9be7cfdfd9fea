//! [`Expiry`]: a task whose `expires` has passed is not run.

use chrono::Utc;

use super::{Job, Outcome, Stage, Step};

/// Ends a job whose `expires` has passed with [`Outcome::Revoked`]
/// (`"expired"`), as Celery does. Placed before the waits and again after
/// them, which may outlive the expiry.
#[derive(Debug, Default, Clone, Copy)]
pub struct Expiry;

impl Stage for Expiry {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let request = &job.request;
        if request.expires.is_none_or(|expires| expires > Utc::now()) {
            return Step::Next;
        }
        tracing::warn!(task_id = %request.id, task = %request.name, "discarding an expired task");
        Step::Stop(Outcome::Revoked {
            reason: "expired".to_owned(),
        })
    }
}
