//! The running task's request, readable from inside its body (Celery's
//! `self.request`): id, name, retries, where the task sits in its workflow
//! (`root_id`, `parent_id`, group), how it was delivered (`delivery_info`),
//! its headers, `eta`, `expires`, `reply_to`, `ignore_result`, the
//! effective time limits (and whether the soft one passed), stamps,
//! `replaced_task_nesting`, the worker's `hostname` and `is_eager`. A call made from inside a running task inherits its `root_id`
//! and gets it as `parent_id`.
//!
//! ```
//! use task_core::{task, TaskError};
//!
//! #[task(name = "tasks.crunch")]
//! async fn crunch(chunks: u32) -> Result<u32, TaskError> {
//!     let mut done = 0;
//!     for _ in 0..chunks {
//!         if task_core::current_task().is_some_and(|t| t.soft_time_limit_exceeded()) {
//!             break; // wrap up before the hard limit cancels the task
//!         }
//!         done += 1;
//!     }
//!     Ok(done)
//! }
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::state::{State, States};

/// What a worker knows of the task it is running.
#[derive(Debug, Clone)]
pub struct TaskContext {
    inner: Arc<ContextParts>,
}

/// Everything a [`TaskContext`] holds.
#[derive(Debug, Clone)]
pub(crate) struct ContextParts {
    pub(crate) id: String,
    /// The registration's name when a pipeline runs the task (no copy).
    pub(crate) name: Cow<'static, str>,
    pub(crate) queue: String,
    pub(crate) retries: u32,
    pub(crate) soft_deadline: Option<Instant>,
    pub(crate) lineage: Lineage,
    pub(crate) delivery: DeliveryInfo,
    pub(crate) states: Arc<States>,
    pub(crate) headers: Vec<(String, serde_json::Value)>,
    pub(crate) embed: Option<Box<serde_json::value::RawValue>>,
    /// The task's own span in its trace: a child of the `traceparent` its
    /// message carried.
    pub(crate) trace: Option<crate::trace_context::TraceParent>,
    /// The rest of the request, as Celery's `self.request` has it.
    pub(crate) request: RequestFields,
}

/// The request's fields beyond identity and lineage (Celery's
/// `self.request`).
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestFields {
    pub(crate) eta: Option<DateTime<Utc>>,
    pub(crate) expires: Option<DateTime<Utc>>,
    pub(crate) reply_to: Option<String>,
    pub(crate) ignore_result: bool,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) soft_time_limit: Option<Duration>,
    pub(crate) replaced_task_nesting: u32,
    pub(crate) stamps: Option<serde_json::Value>,
    pub(crate) hostname: Option<Arc<str>>,
    pub(crate) is_eager: bool,
}

/// Where a task sits in its workflow, as its message says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The first task of the workflow (`None`: this task is the first).
    pub root_id: Option<String>,
    /// The task whose worker sent this one.
    pub parent_id: Option<String>,
    /// The group it is a member of.
    pub group_id: Option<String>,
    /// Its position in that group.
    pub group_index: Option<u32>,
}

/// How the task's message reached the worker (Celery's `delivery_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The broker delivered it before (to a consumer that did not ack it).
    pub redelivered: bool,
    /// Its priority, if it had one.
    pub priority: Option<u8>,
}

impl TaskContext {
    /// The context of task `id` named `name`, consumed from `queue`, retried
    /// `retries` times, whose soft time limit ends at `soft_deadline`.
    pub fn new(
        id: String,
        name: String,
        queue: String,
        retries: u32,
        soft_deadline: Option<Instant>,
    ) -> Self {
        Self {
            inner: Arc::new(ContextParts {
                id,
                name: Cow::Owned(name),
                queue,
                retries,
                soft_deadline,
                lineage: Lineage::default(),
                delivery: DeliveryInfo::default(),
                states: Arc::default(),
                headers: Vec::new(),
                embed: None,
                trace: None,
                request: RequestFields::default(),
            }),
        }
    }

    /// A context with every part at once (one allocation; the pipeline's).
    pub(crate) fn from_parts(parts: ContextParts) -> Self {
        Self {
            inner: Arc::new(parts),
        }
    }

    /// This context, with the task's place in its workflow.
    pub fn with_lineage(self, lineage: Lineage) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.lineage = lineage;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// This context, with how the task's message was delivered.
    pub fn with_delivery(self, delivery: DeliveryInfo) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.delivery = delivery;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// This context, with the shared values its task can take as
    /// [`State<T>`](crate::State) parameters.
    pub fn with_states(self, states: Arc<States>) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.states = states;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The shared value of type `T` the worker provides, if it does (what a
    /// `State<T>` parameter receives).
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        self.inner.states.get::<T>()
    }

    /// This context, with the message's extra headers (see
    /// [`TaskContext::header`]) and its `embed`.
    pub fn with_message_parts(
        self,
        headers: Vec<(String, serde_json::Value)>,
        embed: Option<Box<serde_json::value::RawValue>>,
    ) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.headers = headers;
        inner.embed = embed;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A header the caller added to the message (`Signature::header`,
    /// Celery's `apply_async(headers={...})`) or a Celery stamp, as JSON;
    /// Celery's own protocol headers and the broker's (`x-...`) are not
    /// among them.
    pub fn header(&self, name: &str) -> Option<&serde_json::Value> {
        self.inner
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Every extra header (see [`TaskContext::header`]), in key order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        self.inner
            .headers
            .iter()
            .map(|(key, value)| (key.as_str(), value))
    }

    /// The message's `embed` as sent (callbacks, errbacks, chain, chord),
    /// if it had one.
    pub fn embed(&self) -> Option<&serde_json::value::RawValue> {
        self.inner.embed.as_deref()
    }

    /// The task's span in its trace (W3C trace context): a child of the
    /// `traceparent` header its message carried (sent by `.delay()`, by a
    /// task that called it, or by an OpenTelemetry-instrumented Python
    /// client). Calls the task makes carry it as their parent.
    pub fn trace(&self) -> Option<crate::trace_context::TraceParent> {
        self.inner.trace
    }

    /// The first task of the workflow: the `root_id` the message carried,
    /// or this task's own id.
    pub fn root_id(&self) -> &str {
        self.inner
            .lineage
            .root_id
            .as_deref()
            .unwrap_or(&self.inner.id)
    }

    /// The task whose worker sent this one, if any.
    pub fn parent_id(&self) -> Option<&str> {
        self.inner.lineage.parent_id.as_deref()
    }

    /// The group this task is a member of, and its position in it.
    pub fn group(&self) -> Option<(&str, Option<u32>)> {
        let lineage = &self.inner.lineage;
        lineage
            .group_id
            .as_deref()
            .map(|group| (group, lineage.group_index))
    }

    /// How the task's message was delivered.
    pub fn delivery(&self) -> &DeliveryInfo {
        &self.inner.delivery
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The queue the task was consumed from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// How many times this task was retried before this run.
    pub fn retries(&self) -> u32 {
        self.inner.retries
    }

    /// When the task was due to run (its `eta` or countdown), if it had one.
    pub fn eta(&self) -> Option<DateTime<Utc>> {
        self.inner.request.eta
    }

    /// When the task expires, if it does.
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        self.inner.request.expires
    }

    /// Where the caller waits for the result (`rpc://`'s reply queue).
    pub fn reply_to(&self) -> Option<&str> {
        self.inner.request.reply_to.as_deref()
    }

    /// The message's correlation id: the task id, as Celery sets it.
    pub fn correlation_id(&self) -> &str {
        &self.inner.id
    }

    /// The message's content type: tasks run only from JSON messages.
    pub fn content_type(&self) -> &'static str {
        crate::protocol::CONTENT_TYPE_JSON
    }

    /// Whether the caller asked for no result.
    pub fn ignore_result(&self) -> bool {
        self.inner.request.ignore_result
    }

    /// The effective time limits, `(hard, soft)`: the call's own (Celery's
    /// `time_limit` / `soft_time_limit` options) when given, else the
    /// task's declared ones (or as remote control changed them), else none.
    pub fn time_limits(&self) -> (Option<Duration>, Option<Duration>) {
        (
            self.inner.request.time_limit,
            self.inner.request.soft_time_limit,
        )
    }

    /// How many times the task was replaced on the way here (Celery's
    /// `replaced_task_nesting`).
    pub fn replaced_task_nesting(&self) -> u32 {
        self.inner.request.replaced_task_nesting
    }

    /// Celery's stamps (`stamps` header: `{name: value}`), if any.
    pub fn stamps(&self) -> Option<&serde_json::Value> {
        self.inner.request.stamps.as_ref()
    }

    /// The node name of the worker running the task (`celery@host`); none
    /// in eager mode.
    pub fn hostname(&self) -> Option<&str> {
        self.inner.request.hostname.as_deref()
    }

    /// Whether the task runs in eager mode (in the caller's process).
    pub fn is_eager(&self) -> bool {
        self.inner.request.is_eager
    }

    /// Whether the soft time limit has passed: time to wrap up.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        self.inner
            .soft_deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Resolves when the soft time limit passes (never, without one): select
    /// on it to stop work cleanly before the hard limit cancels the task.
    pub async fn soft_time_limit(&self) {
        match self.inner.soft_deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    /// Runs `body` with this context as the current task's.
    pub async fn scope<F: Future>(self, body: F) -> F::Output {
        CURRENT.scope(self, body).await
    }

    /// Runs the blocking `body` on this thread with this context as current.
    /// The thread's previous context (usually none) is restored when `body`
    /// returns or unwinds, so a pool thread reused after a panicking task
    /// never reports that task's context.
    pub fn scope_blocking<R>(self, body: impl FnOnce() -> R) -> R {
        let previous = BLOCKING_CURRENT.with(|current| current.replace(Some(self)));
        let _restore = RestoreBlocking(previous);
        body()
    }
}

/// Puts a thread's previous blocking context back when dropped, also during
/// unwinding.
struct RestoreBlocking(Option<TaskContext>);

impl Drop for RestoreBlocking {
    fn drop(&mut self) {
        let previous = self.0.take();
        // `try_with`: the thread-local may already be gone at thread exit.
        let _ = BLOCKING_CURRENT.try_with(|current| current.replace(previous));
    }
}

tokio::task_local! {
    static CURRENT: TaskContext;
}

thread_local! {
    static BLOCKING_CURRENT: RefCell<Option<TaskContext>> = const { RefCell::new(None) };
}

/// The context of the task running on this tokio task or blocking thread;
/// `None` outside a worker (e.g. when the body is called directly with `run`).
pub fn current_task() -> Option<TaskContext> {
    CURRENT
        .try_with(Clone::clone)
        .ok()
        .or_else(|| BLOCKING_CURRENT.with(|current| current.borrow().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_soft_limit_is_visible_inside_the_scope_only() {
        assert!(current_task().is_none());
        let context = TaskContext::new(
            "id".into(),
            "t".into(),
            "q".into(),
            2,
            Some(Instant::now() + Duration::from_secs(1)),
        );
        context
            .scope(async {
                let current = current_task().unwrap();
                assert_eq!(
                    (current.id(), current.name(), current.retries()),
                    ("id", "t", 2)
                );
                assert!(!current.soft_time_limit_exceeded());
                current.soft_time_limit().await;
                assert!(current.soft_time_limit_exceeded());
            })
            .await;
        assert!(current_task().is_none());
    }

    #[test]
    fn blocking_bodies_see_their_context() {
        let context = TaskContext::new("b".into(), "t".into(), "q".into(), 0, None);
        let id = context.scope_blocking(|| current_task().map(|c| c.id().to_owned()));
        assert_eq!(id.as_deref(), Some("b"));
        assert!(current_task().is_none());
    }

    #[test]
    fn a_panicking_blocking_body_leaves_no_context_on_its_thread() {
        let context = TaskContext::new("p".into(), "t".into(), "q".into(), 0, None);
        let unwound = std::panic::catch_unwind(|| context.scope_blocking(|| panic!("boom")));
        assert!(unwound.is_err(), "the body panicked");
        assert!(
            current_task().is_none(),
            "the next code on this thread saw {:?}",
            current_task().map(|c| c.id().to_owned())
        );
    }

    #[test]
    fn a_nested_blocking_scope_restores_the_outer_context() {
        let outer = TaskContext::new("outer".into(), "t".into(), "q".into(), 0, None);
        let inner = TaskContext::new("inner".into(), "t".into(), "q".into(), 0, None);
        let seen = outer.scope_blocking(|| {
            let unwound = std::panic::catch_unwind(|| inner.scope_blocking(|| panic!("boom")));
            assert!(unwound.is_err());
            current_task().map(|c| c.id().to_owned())
        });
        assert_eq!(seen.as_deref(), Some("outer"));
        assert!(current_task().is_none());
    }
}
