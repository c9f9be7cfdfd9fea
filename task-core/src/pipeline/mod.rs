//! The path every task message takes from its delivery to its settlement,
//! shared by the worker and eager mode.
//!
//! [`Pipeline::process`] takes one message through fixed steps and an
//! ordered list of [`Stage`]s and ends in one [`Outcome`]; whoever consumed
//! the message then settles it (the worker publishes and acks, eager mode
//! hands the result to its caller). The steps, in order:
//!
//! 1. **size check**: a body over the pipeline's limit is
//!    [`Outcome::Rejected`] unread;
//! 2. **decode** the protocol v2 message ([`decode_task`]); malformed →
//!    rejected;
//! 3. **look up** the task in the pipeline's [`Registry`]; unknown →
//!    rejected with Celery's `NotRegistered`;
//! 4. **the stages**, in order, each of which may let the job through,
//!    make it wait, or end it with an outcome (the worker's list: canvas
//!    (publishes what follows a task, refuses chords), expiry, ETA, rate
//!    limit, expiry again, early ack, logging, then the user's stages; eager
//!    mode's: canvas refusal (chords), expiry);
//! 5. **run**: STARTED when the task tracks it, the body inside its
//!    [`TaskContext`] under its hard time limit with panics caught, then the
//!    **retry decision** ([`TaskRegistration::retry_delay`]): success,
//!    failure, retry after a delay, or (an error from
//!    [`TaskError::replace`]) replaced by another signature;
//! 6. every stage whose `before` ran sees the outcome in `after`, in
//!    reverse order (where events, metrics and hooks observe it).
//!
//! A cross-cutting feature is a [`Stage`] in its own module, added to the
//! stage list where it belongs ([`PipelineBuilder::stage`]).

mod canvas_refusal;
mod expiry;
mod outcome;
mod result_sink;
mod settings;
mod slot;
mod stage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

pub use canvas_refusal::CanvasRefusal;
pub use expiry::Expiry;
pub use futures_util::future::BoxFuture;
pub use outcome::{Outcome, Rejection};
pub use result_sink::ResultSink;
pub use settings::{TaskOverride, TaskSettings};
pub use slot::Slot;
pub use stage::{Stage, Step};

use crate::backend::{BackendError, ResultRecord, TaskMessageRef};
use crate::broker::{Acknowledger, Message};
use crate::context::{ContextParts, RequestFields};
use crate::protocol::result_message;
use crate::protocol::task_message::{decode_task, PartialRequest, TaskRequest};
use crate::registry::TaskRegistration;
use crate::{DeliveryInfo, Lineage, Registry, States, TaskArgs, TaskContext, TaskError};

/// One message on its way through a [`Pipeline`]: what a consumer hands in.
pub struct Input<'m> {
    /// The message as received.
    pub message: &'m Message,
    /// The queue it was consumed from (the task's queue in eager mode).
    pub queue: &'m str,
    /// How it was delivered.
    pub delivery: DeliveryInfo,
    /// Settles it with the broker, where there is one (early ack).
    pub acker: Option<&'m dyn Acknowledger>,
    /// The concurrency slot the job holds, where concurrency is bounded:
    /// stages give it back while they wait.
    pub slot: Option<&'m mut Slot>,
    /// Where results for the caller go (STARTED, and what settlement sends).
    pub results: &'m dyn ResultSink,
    /// The shared values tasks take as `State<T>` parameters.
    pub states: &'m Arc<States>,
}

/// A decoded task message with its task, as the stages see it.
pub struct Job<'m> {
    /// The message as received (retries and parking publish edited copies).
    pub message: &'m Message,
    /// The queue it was consumed from.
    pub queue: &'m str,
    /// How it was delivered.
    pub delivery: DeliveryInfo,
    /// The decoded request. The run step moves the arguments, the lineage,
    /// the extra headers and (unless it carries canvas) the `embed` out of
    /// it into the task's context: a stage's `after` reads them from
    /// [`Job::message`] if it needs them.
    pub request: TaskRequest,
    /// The task it calls.
    pub task: &'static TaskRegistration,
    /// Settles the message with the broker, where there is one.
    pub acker: Option<&'m dyn Acknowledger>,
    /// The concurrency slot the job holds, if any.
    pub slot: Option<&'m mut Slot>,
    /// Where results for the caller go.
    pub results: &'m dyn ResultSink,
    /// The shared values tasks take as `State<T>` parameters.
    pub states: &'m Arc<States>,
    /// How long the body ran (set by the run step).
    pub runtime: Option<Duration>,
    /// The task's span in its trace: a child of the `traceparent` its
    /// message carried, if any. The body's context and what follows the
    /// task carry it as their parent.
    pub trace: Option<crate::trace_context::TraceParent>,
    /// The `traceparent` the message carried (what OpenTelemetry's span
    /// joins).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    carried_trace: Option<crate::trace_context::TraceParent>,
    settled: bool,
    /// Ends the run early when it completes ([`Job::terminate_on`]; in a
    /// mutex only so that a `&Job` can be shared across threads).
    terminate: Option<std::sync::Mutex<BoxFuture<'static, ()>>>,
}

impl Job<'_> {
    /// Where the caller wants its results: `reply_to`, unless it asked for
    /// none (`ignore_result`).
    pub fn reply_to(&self) -> Option<&str> {
        self.request
            .reply_to
            .as_deref()
            .filter(|_| !self.request.ignore_result())
    }

    /// Stops the body when `signal` completes (remote control's `revoke`
    /// with `terminate`): the run ends in [`Outcome::Revoked`] with the
    /// reason `terminated`. An async body is dropped at its next await; a
    /// blocking (`fn`) body's thread cannot be stopped and runs on, its
    /// result dropped.
    pub fn terminate_on(&mut self, signal: impl std::future::Future<Output = ()> + Send + 'static) {
        self.terminate = Some(std::sync::Mutex::new(Box::pin(signal)));
    }

    /// Whether the message was settled with the broker already (acked early).
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// Records that a stage settled the message with the broker: settlement
    /// must not ack it again.
    pub fn mark_settled(&mut self) {
        self.settled = true;
    }

    /// Hands `result` (a result message about this job's task) to its
    /// caller, unless it asked for none (`ignore_result`).
    pub async fn report(&self, result: &Message) -> Result<(), BackendError> {
        if self.request.ignore_result() {
            return Ok(());
        }
        let record = ResultRecord {
            task_id: &self.request.id,
            result,
            reply_to: self.request.reply_to.as_deref(),
            task: Some(TaskMessageRef {
                message: self.message,
                queue: self.queue,
            }),
        };
        self.results.publish_result(&record).await
    }
}

/// What [`Pipeline::process`] ends with: the outcome, and the job when the
/// message got as far as being one (it was small enough, decoded, and its
/// task is known).
pub struct Processed<'m> {
    /// The decoded job, if the message got that far.
    pub job: Option<Job<'m>>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The steps and stages a task message goes through; see the module docs.
#[derive(Clone)]
pub struct Pipeline {
    registry: Registry,
    settings: Arc<TaskSettings>,
    max_message_size: Option<usize>,
    stages: Arc<[Arc<dyn Stage>]>,
    unit_random: fn() -> f64,
    hostname: Option<Arc<str>>,
    eager: bool,
}

/// Builds a [`Pipeline`].
pub struct PipelineBuilder {
    registry: Registry,
    settings: Arc<TaskSettings>,
    max_message_size: Option<usize>,
    stages: Vec<Arc<dyn Stage>>,
    unit_random: fn() -> f64,
    hostname: Option<Arc<str>>,
    eager: bool,
}

impl PipelineBuilder {
    /// The node name tasks see as their `hostname` (the worker's, e.g.
    /// `celery@host`).
    pub fn hostname(mut self, hostname: impl Into<Arc<str>>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Tasks run here in eager mode (they see `is_eager`).
    pub fn eager(mut self, eager: bool) -> Self {
        self.eager = eager;
        self
    }

    /// Rejects message bodies larger than this, unread.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Reads the tasks' time limits from `settings`, which can change while
    /// the pipeline runs (default: the declared limits, unchangeable).
    pub fn settings(mut self, settings: Arc<TaskSettings>) -> Self {
        self.settings = settings;
        self
    }

    /// Adds `stage` after the stages added so far.
    pub fn stage(mut self, stage: impl Stage) -> Self {
        self.stages.push(Arc::new(stage));
        self
    }

    /// Adds a shared stage after the stages added so far.
    pub fn shared_stage(mut self, stage: Arc<dyn Stage>) -> Self {
        self.stages.push(stage);
        self
    }

    /// Draws the retry jitter (uniform in `[0, 1)`; default: a fast
    /// non-cryptographic generator).
    pub fn unit_random(mut self, draw: fn() -> f64) -> Self {
        self.unit_random = draw;
        self
    }

    /// The pipeline.
    pub fn build(self) -> Pipeline {
        Pipeline {
            registry: self.registry,
            settings: self.settings,
            max_message_size: self.max_message_size,
            stages: self.stages.into(),
            unit_random: self.unit_random,
            hostname: self.hostname,
            eager: self.eager,
        }
    }
}

impl Pipeline {
    /// A pipeline running the tasks of `registry`, with no stages yet.
    pub fn builder(registry: Registry) -> PipelineBuilder {
        PipelineBuilder {
            registry,
            settings: Arc::default(),
            max_message_size: None,
            stages: Vec::new(),
            unit_random: fastrand::f64,
            hostname: None,
            eager: false,
        }
    }

    /// The tasks this pipeline runs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Takes one message through every step to its outcome. Never panics
    /// on what the message holds: a panicking task body is a failure.
    pub async fn process<'m>(&self, input: Input<'m>) -> Processed<'m> {
        let Input {
            message,
            queue,
            delivery,
            acker,
            slot,
            results,
            states,
        } = input;
        if let Some(limit) = self.max_message_size.filter(|l| message.body.len() > *l) {
            let reason = format!(
                "message body of {} bytes exceeds the worker's limit of {limit} bytes",
                message.body.len(),
            );
            return rejected(Rejection::unreadable(message, "MessageTooLarge", reason));
        }
        let request = match decode_task(message) {
            Ok(request) => request,
            Err(error) => {
                return rejected(Rejection::unreadable(
                    message,
                    "DecodeError",
                    error.to_string(),
                ))
            }
        };
        let Some(task) = self.registry.get(&request.name) else {
            return rejected(Rejection::not_registered(&request));
        };
        let carried_trace = request
            .extra_headers
            .iter()
            .find(|(name, _)| name == crate::trace_context::TRACEPARENT)
            .and_then(|(_, value)| value.as_str())
            .and_then(crate::trace_context::TraceParent::parse);
        let mut job = Job {
            message,
            queue,
            delivery,
            request,
            task,
            acker,
            slot,
            results,
            states,
            runtime: None,
            trace: carried_trace.map(|parent| parent.child()),
            carried_trace,
            settled: false,
            terminate: None,
        };
        let mut entered = 0;
        let mut stopped = None;
        for stage in self.stages.iter() {
            entered += 1;
            let step = stage.before(&mut job);
            let stop = match step {
                Step::Next => None,
                Step::Stop(outcome) => Some(outcome),
                Step::Wait(waiting) => waiting.await,
            };
            if stop.is_some() {
                stopped = stop;
                break;
            }
        }
        let mut outcome = match stopped {
            Some(outcome) => outcome,
            None => self.run(&mut job).await,
        };
        for stage in self.stages[..entered].iter().rev() {
            if let Some(observing) = stage.after(&job, &mut outcome) {
                observing.await;
            }
        }
        Processed {
            job: Some(job),
            outcome,
        }
    }

    /// The run step: STARTED, the body in its context under its limits,
    /// then the retry decision.
    async fn run(&self, job: &mut Job<'_>) -> Outcome {
        let task = job.task;
        if task.options.track_started {
            if let Err(error) = job.report(&result_message::started(&job.request.id)).await {
                // Not a final state: the task runs; its end is stored (or
                // its message not acked) as usual.
                tracing::warn!(task_id = %job.request.id, %error, "could not store STARTED");
            }
        }
        let (hard, soft) = self.settings.limits(task, &job.request);
        let span = tracing::info_span!(
            "task",
            task_id = %job.request.id,
            task = task.name,
            retries = job.request.retries(),
            queue = job.queue,
            trace_id = tracing::field::Empty,
        );
        // Under OpenTelemetry the span's own ids are the task's place in
        // the trace.
        #[cfg(feature = "opentelemetry")]
        if let Some(joined) = crate::trace_context::otel::join(&span, job.carried_trace) {
            job.trace = Some(joined);
        }
        let trace = job.trace;
        let request = &mut job.request;
        // The job keeps its root when what follows it (canvas) is
        // published after the run, with the same root.
        let lineage = Lineage {
            root_id: if request.carries_canvas() {
                request.root_id.clone()
            } else {
                request.root_id.take()
            },
            parent_id: request.parent_id.take(),
            group_id: request.group_id.take(),
            group_index: request.group_index,
        };
        if let Some(trace) = &trace {
            span.record(
                "trace_id",
                tracing::field::display(format_args!("{:032x}", trace.trace_id)),
            );
        }
        let context = TaskContext::from_parts(ContextParts {
            id: request.id.clone(),
            // The registration's own name: the one the request was looked
            // up by.
            name: std::borrow::Cow::Borrowed(task.name),
            queue: job.queue.to_owned(),
            retries: request.retries(),
            soft_deadline: soft.map(|soft| tokio::time::Instant::now() + soft),
            lineage,
            delivery: job.delivery.clone(),
            states: Arc::clone(job.states),
            headers: std::mem::take(&mut request.extra_headers),
            // Kept in the job too when it carries canvas: what follows the
            // task is published after it ran.
            embed: if !request.carries_canvas() {
                request.embed.take()
            } else {
                request.embed.clone()
            },
            trace,
            request: RequestFields::of(job.message, request, (hard, soft), self),
        });
        let args = TaskArgs::new(
            task.name,
            std::mem::take(&mut request.args),
            std::mem::take(&mut request.kwargs),
        );
        let started = Instant::now();
        let ran = match job.terminate.take() {
            None => task.run(args, context, hard).instrument(span).await,
            Some(signal) => tokio::select! {
                biased;
                ran = task.run(args, context, hard).instrument(span) => ran,
                () = signal.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) => {
                    job.runtime = Some(started.elapsed());
                    return Outcome::Revoked { reason: "terminated".into() };
                }
            },
        };
        job.runtime = Some(started.elapsed());
        match ran {
            Ok(value) => Outcome::Succeeded { value },
            Err(mut error) => {
                if let Some(signature) = error.take_replacement() {
                    return Outcome::Replaced { signature };
                }
                if error.is_ignore() {
                    return Outcome::TaskIgnored;
                }
                if let Some(requeue) = error.reject_request() {
                    return rejected_by_task(&job.request, error, requeue);
                }
                match task.retry_delay(&error, job.request.retries(), (self.unit_random)()) {
                    Some(delay) => Outcome::Retry { error, delay },
                    None => Outcome::Failed { error },
                }
            }
        }
    }
}

/// The outcome of a body that rejected its message ([`TaskError::reject`]):
/// requeued, or dead-lettered with FAILURE (the `Reject` exception) told
/// to its caller.
fn rejected_by_task(request: &TaskRequest, error: TaskError, requeue: bool) -> Outcome {
    let reason = format!("Reject: {}", error.message());
    if requeue {
        return Outcome::Requeued { reason };
    }
    let notify = if request.ignore_result() {
        Vec::new()
    } else {
        // An empty reply queue: the result backend's alone.
        vec![(
            request.id.clone(),
            request.reply_to.clone().unwrap_or_default(),
        )]
    };
    Outcome::Rejected(Rejection::new(reason, error, notify))
}

impl RequestFields {
    /// What the context tells of `request` (read from `message`), run
    /// under the effective `limits` by `pipeline`.
    fn of(
        message: &Message,
        request: &TaskRequest,
        limits: (Option<Duration>, Option<Duration>),
        pipeline: &Pipeline,
    ) -> Self {
        // Read only when there are some (Celery's empty table, usually).
        let stamps = request
            .carries_stamps()
            .then(|| message.properties.headers.get_json("stamps"))
            .flatten();
        Self {
            eta: request.eta,
            expires: request.expires,
            reply_to: request.reply_to.clone(),
            ignore_result: request.ignore_result(),
            time_limit: limits.0,
            soft_time_limit: limits.1,
            replaced_task_nesting: request.replaced_task_nesting(),
            stamps,
            hostname: pipeline.hostname.clone(),
            is_eager: pipeline.eager,
        }
    }
}

fn rejected<'m>(rejection: Rejection) -> Processed<'m> {
    Processed {
        job: None,
        outcome: Outcome::Rejected(rejection),
    }
}

impl Rejection {
    /// A message that is not a task that can be read: told to its caller
    /// when its id and reply queue can be found.
    fn unreadable(message: &Message, exc_type: &str, reason: String) -> Self {
        let partial = PartialRequest::of(message);
        let failure = TaskError::new(exc_type.to_owned(), reason.clone());
        let notify = match (partial.id, partial.reply_to) {
            (Some(id), Some(reply_to)) => vec![(id, reply_to)],
            _ => Vec::new(),
        };
        Rejection::new(format!("{exc_type}: {reason}"), failure, notify)
    }

    /// A task this pipeline does not know.
    fn not_registered(request: &TaskRequest) -> Self {
        let mut rejection = Rejection::new(
            format!("NotRegistered: no task `{}` in this worker", request.name),
            TaskError::new("NotRegistered", format!("'{}'", request.name)),
            request
                .reply_to
                .iter()
                .map(|reply_to| (request.id.clone(), reply_to.clone()))
                .collect(),
        );
        rejection.not_registered = Some(request.name.clone());
        rejection
    }
}

#[cfg(test)]
mod tests;
