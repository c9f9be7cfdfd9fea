// An errback's first parameter may be a `FailedTask` (the failed task's id,
// with its failure when a Rust worker ran it), taking the id callers pass;
// its partial is what `link_error` takes, checked at compile time.

use task_core::canvas::Partial;
use task_core::{task, FailedTask, Signature, TaskContext, TaskError};

#[task(name = "ui.errback.alert")]
async fn alert(failed: FailedTask, task: TaskContext, channel: String) -> Result<(), TaskError> {
    let _ = (failed.task_id(), failed.failure(), task.id(), channel);
    Ok(())
}

#[task(name = "ui.errback.by_id")]
async fn by_id(failed_id: String) -> Result<(), TaskError> {
    let _ = failed_id;
    Ok(())
}

#[task(name = "ui.errback.work")]
async fn work(x: i64) -> Result<i64, TaskError> {
    Ok(x)
}

fn main() {
    let errback: Partial<FailedTask, ()> = alert.partial("ops".to_owned());
    let _ = work.s(1).link_error(errback);
    let _ = work.s(1).link_error(by_id.partial());
    let _ = work.s(1).link_error(Signature::<()>::new("py.on_error"));
    // Called directly, the id is the argument.
    let _ = alert.s(FailedTask::new("some-id"), "ops".to_owned());
}
