#![deny(warnings)]

use task_core::{task, Task, TaskError};

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

fn main() {
    assert_eq!(<add as Task>::NAME, "tasks.add");
}
