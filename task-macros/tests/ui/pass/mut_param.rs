#![deny(warnings)]

use task_core::{task, TaskError};

/// `mut` stays on the body's parameter; callers do not see it.
#[task]
async fn count_down(mut n: u32, mut log: Vec<u32>) -> Result<Vec<u32>, TaskError> {
    while n > 0 {
        log.push(n);
        n -= 1;
    }
    Ok(log)
}

fn main() {
    // `s` takes plain values.
    let n = 3;
    let _ = count_down.s(n, Vec::new());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(runtime.block_on(count_down.run(3, vec![])), Ok(vec![3, 2, 1]));
}
