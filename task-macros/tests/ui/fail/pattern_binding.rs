use task_core::task;

#[task]
async fn first(all @ [head, ..]: [i64; 2]) -> Result<i64, task_core::TaskError> {
    Ok(head + all[1])
}

fn main() {}
