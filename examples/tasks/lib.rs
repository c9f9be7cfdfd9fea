//! The example tasks: Celery's tutorial `tasks.add` and a few more that show
//! what tasks can take and return. Linked by the `quickstart` and `worker`
//! examples and by the integration tests.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use task_core::canvas::{chain, group};
use task_core::{task, TaskContext, TaskError};

/// Adds two integers (Celery's tutorial task).
#[task(name = "tasks.add")]
pub async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

/// Multiplies two integers.
#[task(name = "tasks.mul")]
pub async fn mul(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x * y)
}

/// Greets someone (strings travel as UTF-8 JSON).
#[task(name = "tasks.hello")]
pub async fn hello(name: String) -> Result<String, TaskError> {
    Ok(format!("Hello, {name}!"))
}

/// Summary statistics of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of values.
    pub count: usize,
    /// Arithmetic mean, `None` for an empty series.
    pub mean: Option<f64>,
    /// Largest value, `None` for an empty series.
    pub max: Option<f64>,
}

/// Computes [`Stats`] of a series (structs and vectors travel as JSON).
#[task(name = "tasks.stats")]
pub async fn stats(values: Vec<f64>) -> Result<Stats, TaskError> {
    let count = values.len();
    let mean = (count > 0).then(|| values.iter().sum::<f64>() / count as f64);
    let max = values.iter().copied().reduce(f64::max);
    Ok(Stats { count, mean, max })
}

/// Sums a list of integers (a chord body: the header's values come first).
#[task(name = "tasks.sum_all")]
pub async fn sum_all(values: Vec<i64>) -> Result<i64, TaskError> {
    Ok(values.iter().sum())
}

/// Parses an integer: fails with `ParseIntError` on bad input.
#[task(name = "tasks.parse_int")]
pub async fn parse_int(text: String) -> Result<i64, TaskError> {
    Ok(text.trim().parse::<i64>()?)
}

/// Sleeps, then returns how long it slept (for shutdown and time-limit demos).
#[task(name = "tasks.sleep", track_started)]
pub async fn sleep(seconds: f64) -> Result<f64, TaskError> {
    tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
    Ok(seconds)
}

/// Hands its work to `tasks.add` (Celery's `self.replace`): the caller gets
/// `add`'s result under this task's id. The replacement goes to the queue
/// this task came from, so the same workers run it.
#[task(name = "tasks.delegate_add")]
pub async fn delegate_add(x: i64, y: i64, task: TaskContext) -> Result<i64, TaskError> {
    Err(TaskError::replace(
        add.s(x, y).queue(task.queue().to_owned()),
    ))
}

/// `(x + y) * 2`, by replacing itself with a chain: the chain's last step
/// answers the caller.
#[task(name = "tasks.delegate_chain")]
pub async fn delegate_chain(x: i64, y: i64, task: TaskContext) -> Result<i64, TaskError> {
    let queue = task.queue().to_owned();
    Err(TaskError::replace(
        chain(add.s(x, y).queue(queue.clone())).then(mul.partial(2).with(|s| s.queue(queue))),
    ))
}

/// `[x + 1, x + 2, ..., x + n]`, by replacing itself with a group: the
/// caller gets the members' values as one list (Celery turns the group into
/// a chord whose body is `celery.accumulate`).
#[task(name = "tasks.fan_out")]
pub async fn fan_out(x: i64, n: i64, task: TaskContext) -> Result<Vec<i64>, TaskError> {
    let queue = task.queue().to_owned();
    Err(TaskError::replace(group(
        (1..=n).map(|i| add.s(x, i).queue(queue.clone())),
    )))
}

/// Sums `0..n` on the blocking pool (a CPU-bound, non-async task).
#[task(name = "tasks.cpu_sum")]
pub fn cpu_sum(n: u64) -> Result<u64, TaskError> {
    Ok((0..n).fold(0u64, u64::wrapping_add))
}

/// How an application tests its own tasks without a broker or a worker: on an
/// eager app (Celery's `task_always_eager`) `.delay()` runs the task inline
/// and returns a ready result. Arguments and results still go through the
/// wire format, so what a real worker would refuse fails here too.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use task_core::App;

    use super::*;

    #[tokio::test]
    async fn add_runs_inline_on_an_eager_app() {
        let _app = App::eager(); // becomes the default app that `.delay()` uses
        let result = add.delay(2, 3).await.unwrap();
        assert!(result.ready());
        assert_eq!(result.get(Duration::ZERO).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_task_that_replaces_itself_answers_with_the_replacement() {
        let _app = App::eager();
        let result = delegate_add.delay(20, 22).await.unwrap();
        assert_eq!(result.get(Duration::ZERO).await.unwrap(), 42);
        let by_chain = delegate_chain.delay(1, 2).await.unwrap();
        assert_eq!(by_chain.get(Duration::ZERO).await.unwrap(), 6);
        let by_group = fan_out.delay(10, 3).await.unwrap();
        assert_eq!(
            by_group.get(Duration::ZERO).await.unwrap(),
            vec![11, 12, 13]
        );
    }

    #[tokio::test]
    async fn a_failing_task_reports_its_error_type_and_message() {
        let _app = App::eager();
        let result = parse_int.delay("forty-two".into()).await.unwrap();
        let error = result.get(Duration::ZERO).await.unwrap_err();
        let failure = error.as_task_failure().expect("a task failure");
        assert_eq!(failure.exc_type, "ParseIntError");
        assert_eq!(failure.message, "invalid digit found in string");
    }

    #[tokio::test]
    async fn a_value_the_wire_cannot_carry_is_caught() {
        let _app = App::eager();
        // JSON has no NaN: it travels as `null`, which a `Vec<f64>` parameter
        // refuses, exactly as on a real worker.
        let result = stats.delay(vec![1.0, f64::NAN]).await.unwrap();
        let error = result.get(Duration::ZERO).await.unwrap_err();
        assert_eq!(error.as_task_failure().unwrap().exc_type, "TypeError");
        // Calling the body directly would not have noticed.
        assert!(stats.run(vec![1.0, f64::NAN]).await.is_ok());
    }
}
