//! [`Received`] and [`Running`]: the worker's view of each task for remote
//! control (`active`, `reserved`, `query_task`, `revoke`) and its task
//! events. `Received` comes first in the stage list: it drops revoked
//! tasks before anything else happens to them and records the request;
//! `Running` comes last, right before the body: the task is active, and
//! can be terminated.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use task_core::events::{
    EventKind, TaskFailed, TaskReceived, TaskRejected, TaskRetried, TaskRevoked, TaskStarted,
    TaskSucceeded,
};
use task_core::pipeline::{Job, Outcome, Stage, Step};
use task_core::protocol::repr::{args_repr, kwargs_repr, value_repr_of};
use task_core::protocol::result_message::traceback_of;
use task_core::TaskError;

use crate::node::Node;
use crate::requests::HeldRequest;

/// Records each request as reserved and sends `task-received`; a revoked
/// task stops here (REVOKED to its caller, `task-revoked`). After the run:
/// forgets it, counts it, and sends the events of endings that did not run
/// (revoked, expired, terminated, rejected).
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) node: Arc<Node>,
}

/// Marks the request active, lets remote control terminate it (an async
/// body), sends `task-started`; after the run, the event of its outcome.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) node: Arc<Node>,
}

impl Stage for Received {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let request = &job.request;
        if self.node.revoked.contains(&request.id) {
            tracing::info!(task_id = %request.id, task = %request.name, "discarding a revoked task");
            return Step::Stop(Outcome::Revoked {
                reason: "revoked".to_owned(),
            });
        }
        let stamps = request
            .carries_stamps()
            .then(|| message_stamps(job.message))
            .flatten();
        if let Some(by) = stamps
            .as_ref()
            .filter(|_| !self.node.revoked_stamps.is_empty())
            .and_then(|stamps| self.node.revoked_stamps.revoking(stamps))
        {
            tracing::info!(task_id = %request.id, task = %request.name, revoked_by = %by,
                "discarding a task revoked by its stamps");
            return Step::Stop(Outcome::Revoked {
                reason: "revoked".to_owned(),
            });
        }
        let mut held = HeldRequest::new(
            job.task.name,
            json_list(request.args.iter().map(|a| a.get())),
            json_object(request.kwargs.iter().map(|(k, v)| (k.as_str(), v.get()))),
        );
        held.delivery = job.delivery.clone();
        let eta = request.eta.map(|eta| eta.to_rfc3339());
        // Scheduled (`inspect scheduled`) while its ETA is ahead.
        held.eta = eta
            .clone()
            .filter(|_| request.eta.is_some_and(|at| at > task_core::clock::now()));
        held.blocking = job.task.options.blocking;
        held.stamps = stamps;
        if self.node.events.task_events() {
            // The client's repr, sent in the headers; made here for the
            // messages that lack it.
            let headers = &job.message.properties.headers;
            let args = match headers.get_str("argsrepr") {
                Some(repr) => repr.to_owned(),
                None => args_repr(&request.args),
            };
            let kwargs = match headers.get_str("kwargsrepr") {
                Some(repr) => repr.to_owned(),
                None => kwargs_repr(&request.kwargs),
            };
            self.node.events.task(EventKind::TaskReceived(TaskReceived {
                uuid: request.id.clone(),
                name: request.name.clone(),
                args,
                kwargs,
                root_id: Some(
                    request
                        .root_id
                        .clone()
                        .unwrap_or_else(|| request.id.clone()),
                ),
                parent_id: request.parent_id.clone(),
                retries: request.retries(),
                eta,
                expires: request.expires.map(|at| at.to_rfc3339()),
            }));
        }
        self.node.requests.receive(&request.id, held);
        Step::Next
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        let id = &job.request.id;
        self.node.requests.finish(id, job.runtime.is_some());
        if !self.node.events.task_events() {
            return None;
        }
        let event = match outcome {
            Outcome::Revoked { reason } => EventKind::TaskRevoked(TaskRevoked {
                uuid: id.clone(),
                terminated: reason == "terminated",
                signum: (reason == "terminated").then_some(15),
                expired: reason == "expired",
            }),
            Outcome::Rejected(_) => EventKind::TaskRejected(TaskRejected {
                uuid: id.clone(),
                requeue: false,
            }),
            Outcome::Requeued { .. } => EventKind::TaskRejected(TaskRejected {
                uuid: id.clone(),
                requeue: true,
            }),
            _ => return None,
        };
        self.node.events.task(event);
        None
    }
}

impl Stage for Running {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        // Revoked while it waited (its ETA, its rate limit turn).
        if self.node.revoked.contains(&job.request.id) {
            tracing::info!(task_id = %job.request.id, "discarding a task revoked while it waited");
            return Step::Stop(Outcome::Revoked {
                reason: "revoked".to_owned(),
            });
        }
        let now = task_core::protocol::task_message::unix_seconds(task_core::clock::now());
        let terminated = self
            .node
            .requests
            .start(&job.request.id, now, job.is_settled());
        if task_core::metrics::enabled() {
            metrics::gauge!(crate::metrics::ACTIVE).increment(1.0);
            if let Some(published) = job.request.published_at {
                // From when it could first run: its publish, or its ETA.
                let due = job.request.eta.map_or(published, |eta| {
                    published.max(task_core::protocol::task_message::unix_seconds(eta))
                });
                // Clocks of different machines can disagree: never negative.
                metrics::histogram!(crate::metrics::QUEUE_WAIT, "task" => job.task.name)
                    .record((now - due).max(0.0));
            }
        }
        if !job.task.options.blocking {
            job.terminate_on(async move {
                // A request that ends normally drops the sender: no signal.
                if terminated.await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
        }
        if self.node.events.task_events() {
            self.node.events.task(EventKind::TaskStarted(TaskStarted {
                uuid: job.request.id.clone(),
            }));
        }
        Step::Next
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        if task_core::metrics::enabled() {
            metrics::gauge!(crate::metrics::ACTIVE).decrement(1.0);
        }
        if !self.node.events.task_events() {
            return None;
        }
        let uuid = job.request.id.clone();
        let event = match outcome {
            Outcome::Succeeded { value } => EventKind::TaskSucceeded(TaskSucceeded {
                uuid,
                result: value_repr_of(value),
                runtime: job.runtime.unwrap_or_default().as_secs_f64(),
            }),
            Outcome::Failed { error } => EventKind::TaskFailed(TaskFailed {
                uuid,
                exception: exception_repr(error),
                traceback: Some(traceback_of(error)),
            }),
            Outcome::Retry { error, .. } => EventKind::TaskRetried(TaskRetried {
                uuid,
                exception: exception_repr(error),
                traceback: Some(traceback_of(error)),
            }),
            _ => return None,
        };
        self.node.events.task(event);
        None
    }
}

/// `ValueError('boom')`, as Celery's events carry an exception.
fn exception_repr(error: &TaskError) -> String {
    let message = serde_json::value::to_raw_value(error.message()).ok();
    match message {
        Some(raw) => format!("{}({})", error.exc_type(), value_repr_of(&raw)),
        None => format!("{}()", error.exc_type()),
    }
}

/// The Celery stamps of `message` (`stamps`, the names `stamped_headers`
/// lists), when it has some: read only for messages that carry any.
fn message_stamps(message: &task_core::broker::Message) -> Option<serde_json::Value> {
    let headers = &message.properties.headers;
    match headers.get("stamps") {
        Some(task_core::broker::HeaderValue::FieldTable(table)) if !table.inner().is_empty() => {}
        _ => return None,
    }
    let mut stamps = headers.get_json("stamps")?;
    if let (Some(names), Some(map)) = (headers.get_json("stamped_headers"), stamps.as_object_mut())
    {
        if let Some(names) = names.as_array() {
            map.retain(|name, _| names.iter().any(|n| n.as_str() == Some(name)));
        }
    }
    Some(stamps)
}

fn json_list<'v>(values: impl Iterator<Item = &'v str>) -> String {
    let mut out = String::from("[");
    for (i, value) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(value);
    }
    out.push(']');
    out
}

fn json_object<'v>(entries: impl Iterator<Item = (&'v str, &'v str)>) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(key).to_string());
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}
