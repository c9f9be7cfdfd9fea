#![deny(warnings)]

use task_core::{task, Task, TaskError};

/// Runs on the blocking pool.
#[task]
fn checksum(data: Vec<u8>) -> Result<u32, TaskError> {
    Ok(data.iter().map(|&byte| u32::from(byte)).sum())
}

fn main() {
    // `run` of a non-async task is a plain function.
    assert_eq!(checksum.run(vec![1, 2, 3]), Ok(6));
    assert!(<checksum as Task>::OPTIONS.blocking);
    let _call: task_core::Signature<u32> = checksum.s(vec![1]);
}
