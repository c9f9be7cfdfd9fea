// Chains: `partial` takes every argument but the first (worker-provided
// `State<T>` / `TaskContext` parameters are not arguments), and each step's
// first argument is the previous step's result type.

use task_core::canvas::{chain, Chain, Partial};
use task_core::{task, Signature, State, TaskContext, TaskError};

struct Settings {
    factor: i64,
}

#[task(name = "ui.chain.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[task(name = "ui.chain.scale")]
async fn scale(settings: State<Settings>, x: i64, task: TaskContext, extra: i64) -> Result<i64, TaskError> {
    let _ = task.id();
    Ok(x * settings.factor + extra)
}

#[task(name = "ui.chain.to_text")]
fn to_text(value: i64) -> Result<String, TaskError> {
    Ok(value.to_string())
}

#[task(name = "ui.chain.shout")]
async fn shout(text: String, times: usize) -> Result<String, TaskError> {
    Ok(text.to_uppercase().repeat(times))
}

#[task(name = "ui.chain.ping")]
async fn ping() -> Result<(), TaskError> {
    Ok(())
}

fn main() {
    let typed: Chain<String> = chain(add.s(1, 2))
        .then(add.partial(3))
        .then(scale.partial(1))
        .then(to_text.partial())
        .then(shout.partial(2));
    let _: Chain<()> = typed.clone().then_immutable(ping.s());
    let step: Partial<i64, i64> = add.partial(4);
    let _: Signature<i64> = step.clone().complete(1);
    // A task known by name states what it takes.
    let by_name: Partial<String, usize> = Partial::new(Signature::new("py.len"));
    let last: Chain<usize> = typed.then(by_name);
    assert_eq!(last.len(), 6);
    assert_eq!(last.to_dict()["kwargs"]["tasks"][5]["task"], "py.len");
}
