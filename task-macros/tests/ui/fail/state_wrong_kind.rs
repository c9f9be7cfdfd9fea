use std::rc::Rc;

use task_core::{task, State, TaskError};

// `State` needs the type of the shared value.
#[task]
async fn bare(_pool: State) -> Result<(), TaskError> {
    Ok(())
}

#[task]
async fn two(_pool: State<u32, u64>) -> Result<(), TaskError> {
    Ok(())
}

// The shared value is used from many threads at once.
#[task]
async fn not_shareable(_cache: State<Rc<u32>>) -> Result<(), TaskError> {
    Ok(())
}

// Taken by value, not borrowed.
#[task]
async fn borrowed(_task: &task_core::TaskContext) -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
