#![deny(warnings)]

use task_core::{task, Signature, Task};

/// No return type: the task's output is `()`.
#[task]
async fn log(line: String) {
    println!("{line}");
}

#[task]
fn log_blocking(line: String) -> () {
    println!("{line}");
}

fn main() {
    let _: Signature<()> = log.s("hello".to_owned());
    let _: Signature<()> = log_blocking.s("hello".to_owned());
    let _: Option<<log as Task>::Output> = None::<()>;
}
