use task_core::task;

#[task]
async fn echo(echo: String) -> Result<String, task_core::TaskError> {
    Ok(echo)
}

fn main() {}
