#![deny(warnings)]

use task_core::{task, TaskError};

#[task]
async fn greet(name: String, greeting: Option<String>) -> Result<String, TaskError> {
    Ok(format!("{}, {name}!", greeting.as_deref().unwrap_or("Hello")))
}

fn main() {
    let _ = greet.s("Ada".to_owned(), None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        runtime.block_on(greet.run("Ada".to_owned(), None)),
        Ok("Hello, Ada!".to_owned())
    );
}
