use task_core::{task, TaskError};

#[task]
async fn on_number(x: i64) -> Result<(), TaskError> {
    let _ = x;
    Ok(())
}

#[task]
async fn work(x: i64) -> Result<i64, TaskError> {
    Ok(x)
}

fn main() {
    // An errback gets the failed task's id first, not an `i64`.
    let _ = work.s(1).link_error(on_number.partial());
}
