use task_core::task;

#[task]
async fn echo(_value: String)
where
    String: Clone,
{
}

fn main() {}
