use task_core::canvas::chain;
use task_core::{task, TaskError};

#[task(name = "ui.chain.ping")]
async fn ping() -> Result<i64, TaskError> {
    Ok(1)
}

fn main() {
    // A task without arguments cannot take the previous step's result.
    let _ = chain(ping.s()).then(ping.partial());
}
