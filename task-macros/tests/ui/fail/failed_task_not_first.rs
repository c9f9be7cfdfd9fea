use task_core::{task, FailedTask, TaskError};

// Celery passes an errback the failed task's id first.
#[task]
async fn late(channel: String, failed: FailedTask) -> Result<(), TaskError> {
    let _ = (channel, failed);
    Ok(())
}

fn main() {}
