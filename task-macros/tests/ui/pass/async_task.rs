#![deny(warnings)]

use task_core::{task, Task, TaskError};

/// Adds two numbers.
#[task]
pub async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(runtime.block_on(add.run(2, 3)), Ok(5));
    assert!(!<add as Task>::OPTIONS.blocking);
}
