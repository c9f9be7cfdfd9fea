#![deny(warnings)]

/// A crate that re-exports `task_core` to its users.
mod runtime {
    pub use task_core;
}

use runtime::task_core::{task, Task, TaskError};

#[task(crate = "task_core")]
async fn plain(x: i64) -> Result<i64, TaskError> {
    Ok(x)
}

#[task(crate = "crate::runtime::task_core", name = "tasks.reexported")]
async fn reexported(x: i64) -> Result<i64, TaskError> {
    Ok(x)
}

fn main() {
    assert_eq!(<plain as Task>::PARAMS, ["x"]);
    assert_eq!(<reexported as Task>::NAME, "tasks.reexported");
}
