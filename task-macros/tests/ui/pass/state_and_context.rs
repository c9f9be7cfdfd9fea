// Worker-provided parameters: `State<T>` and `TaskContext`, anywhere in the
// list; callers pass only the other arguments, in order.

use std::sync::Mutex;

use task_core::{task, State, StateType, Task, TaskContext, TaskError};

struct Pool {
    size: u32,
}

struct Counter {
    value: Mutex<u32>,
}

#[task(name = "ui.state.query")]
async fn query(pool: State<Pool>, sql: String, task: TaskContext, limit: u32) -> Result<u32, TaskError> {
    let _ = (sql, task.id());
    Ok(pool.size.min(limit))
}

#[task(name = "ui.state.blocking")]
fn count(counter: task_core::State<Counter>, by: u32) -> Result<u32, TaskError> {
    let mut value = counter.value.lock().unwrap();
    *value += by;
    Ok(*value)
}

#[task(name = "ui.state.context_only")]
async fn whoami(task: TaskContext) -> Result<String, TaskError> {
    Ok(task.name().to_owned())
}

fn main() {
    assert_eq!(<query as Task>::PARAMS, ["sql", "limit"]);
    assert_eq!(<query as Task>::STATES, [StateType::of::<Pool>()]);
    assert_eq!(<count as Task>::STATES, [StateType::of::<Counter>()]);
    assert!(<whoami as Task>::PARAMS.is_empty());
    let _call = query.s("select 1".to_owned(), 10);
    let _call = count.s(2);
    let _call = whoami.s();
}
