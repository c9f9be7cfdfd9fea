//! The running task's request, readable from inside its body (Celery's
//! `self.request`): id, name, retries, and the soft time limit.
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

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;

/// What a worker knows of the task it is running.
#[derive(Debug, Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    id: String,
    name: String,
    queue: String,
    retries: u32,
    soft_deadline: Option<Instant>,
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
            inner: Arc::new(ContextInner {
                id,
                name,
                queue,
                retries,
                soft_deadline,
            }),
        }
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
    pub fn scope_blocking<R>(self, body: impl FnOnce() -> R) -> R {
        BLOCKING_CURRENT.with(|current| *current.borrow_mut() = Some(self));
        let result = body();
        BLOCKING_CURRENT.with(|current| current.borrow_mut().take());
        result
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
}
