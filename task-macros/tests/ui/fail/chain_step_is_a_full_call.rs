use task_core::canvas::chain;
use task_core::{task, TaskError};

#[task(name = "ui.chain.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

fn main() {
    // A full call takes no previous result: `then_immutable`, or `partial`.
    let _ = chain(add.s(1, 2)).then(add.s(3, 4));
}
