//! Celery's `celery.backend_cleanup`: Celery's beat schedules it daily
//! (04:00) when results expire (`result_expires`) on a backend that cannot
//! expire them itself (a database, files), and a Rust worker on the default
//! queue may receive it. This framework's backends expire results
//! themselves (Redis keys carry a TTL; `rpc://` stores nothing), so the task
//! succeeds doing nothing instead of being refused as unknown.

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

use crate::registry::TaskOutcome;
use crate::TaskArgs;

/// The task's name.
pub const BACKEND_CLEANUP_TASK: &str = "celery.backend_cleanup";

/// Its handler: nothing to clean up; returns `None`.
pub(crate) fn backend_cleanup(args: TaskArgs) -> BoxFuture<'static, TaskOutcome> {
    drop(args);
    Box::pin(async {
        RawValue::from_string("null".to_owned())
            .map_err(|error| crate::TaskError::new("EncodeError", error.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_acks_celerys_backend_cleanup_as_a_no_op() {
        let registry = crate::Registry::new();
        let task = registry
            .get(BACKEND_CLEANUP_TASK)
            .expect("a builtin task of every registry");
        let args = TaskArgs::new(BACKEND_CLEANUP_TASK, Vec::new(), Vec::new());
        let outcome = futures_util::FutureExt::now_or_never((task.handler)(args))
            .expect("ready at once")
            .expect("succeeds");
        assert_eq!(outcome.get(), "null");
    }
}
