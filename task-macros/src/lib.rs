//! The `#[task]` attribute of `task_core`. Use it through `task_core::task`;
//! this crate holds only the macro.
//!
//! The work is split like `tracing-attributes`: `attr` parses the
//! attribute's keys, `validate` checks the function, `expand` generates the
//! code, and `ctxt` collects every error so they are all reported at once.

mod attr;
mod ctxt;
mod expand;
mod validate;

use proc_macro::TokenStream;

/// Turns a function into a task: a value that runs the function here,
/// publishes calls of it to RabbitMQ, and that a worker finds by name.
///
/// ```no_run
/// use std::time::Duration;
/// use task_core::{task, TaskError};
///
/// /// Adds two numbers.
/// #[task(name = "tasks.add")]
/// pub async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
///     Ok(x + y)
/// }
///
/// # async fn demo() -> Result<(), task_core::Error> {
/// assert_eq!(add.run(2, 3).await, Ok(5)); // in this process
///
/// let pending = add.delay(2, 3).await?; // through the broker, to a worker
/// assert_eq!(pending.get(Duration::from_secs(5)).await?, 5);
/// # Ok(()) }
/// ```
///
/// # What it generates
///
/// The function becomes a unit struct of the same name and visibility
/// (`pub struct add;`), which keeps the function's doc comments,
/// `#[deprecated]` and lint attributes; `#[cfg]` applies to everything
/// generated, and other attributes (`#[inline]`, `#[tracing::instrument]`,
/// ...) go on `run`, which holds the body. Its methods take the function's
/// parameters:
///
/// - `run(&self, ...)`: the original body, run in this process. It is an
///   `async fn` for an `async fn` task and a plain `fn` otherwise.
/// - `s(&self, ...) -> Signature<T>`: a call not yet sent (Celery's
///   `add.s(2, 3)`), to which options such as `.countdown(...)` or
///   `.queue(...)` can be added before `.apply_async()`.
/// - `async delay(&self, ...) -> Result<AsyncResult<T>, Error>`: publishes a
///   call through the default app and returns once the broker confirmed it
///   (Celery's `add.delay(2, 3)`); `.get(timeout)` on the result waits for the
///   value.
///
/// The struct also implements the `Task` trait (`NAME`, `PARAMS`, `OPTIONS`
/// and `Output`, the `T` above), and the task is registered with `inventory`,
/// so that `Registry::global()` in any binary that links it can run it by
/// name. Registration happens at link time: a worker runs the tasks of the
/// crates it links.
///
/// # Keys
///
/// | Key | Meaning | Default |
/// |-----|---------|---------|
/// | `name = "tasks.add"` | The name the task is published and registered under (Celery's task name; use the Python name to interoperate). | The function's path: `concat!(module_path!(), "::", "add")`, e.g. `my_app::tasks::add`. |
/// | `queue = "emails"` | The queue calls are published to when they name none. | The app's default queue. |
/// | `track_started` or `track_started = true` | Publish a `STARTED` state before the body runs. | `false` |
/// | `early_ack` or `early_ack = true` | Acknowledge the message when the task starts rather than when it ends: at most once instead of at least once (Celery's `acks_late = False`). | `false` |
/// | `time_limit = 30` | Hard time limit in seconds (an integer or a float, more than 0) when the call sets none: the task is cancelled and fails with `TimeLimitExceeded`. | none |
/// | `soft_time_limit = 25` | Soft time limit in seconds (more than 0, and less than `time_limit` when both are given) when the call sets none: the task sees it through `TaskContext` and can wrap up. | none |
/// | `max_retries = 5` or `max_retries = None` | Retries allowed after the first run; `None` for no limit. | `3` |
/// | `default_retry_delay = 10` | Seconds (0 or more) before a retry when there is no backoff, unless the error sets its own delay (`TaskError::retry_in`). | `180` |
/// | `retry_backoff = 2`, `retry_backoff` or `retry_backoff = true/false` | Exponential backoff: retry `n` (from 0) waits `factor × 2^n` seconds, capped at `retry_backoff_max`. The factor is more than 0; `true` (or the bare key) is 1 second, `false` turns backoff off. | off |
/// | `retry_backoff_max = 600` | The cap on backoff delays, in seconds (more than 0). | `600` |
/// | `retry_jitter = false` or `retry_jitter = true` | Draw each retry delay uniformly from 0 to the computed delay, so that failing tasks do not retry in lockstep. | `true` |
/// | `autoretry_for = ["IoError", "TimeoutError"]` or `autoretry_for = [std::io::Error, MyError]` | Error types whose failures are retried automatically (see below). | none: only errors made with `TaskError::retry` are retried |
/// | `rate_limit = "10/s"` | At most this many runs per second (`/s`), minute (`/m`) or hour (`/h`) on each worker, in Celery's notation (a bare count, like `"10"`, is per second). Checked at compile time. | none |
/// | `crate = "my_app::task_core"` | The path of `task_core`, for crates that use it through a re-export. | `::task_core` |
///
/// Durations are in seconds, like Celery's, and are kept to the millisecond:
/// `2.5` is 2500 ms, and a value finer than a millisecond is an error. The
/// retry keys fill `OPTIONS.retry` (a `RetryPolicy`), starting from Celery's
/// defaults.
///
/// Keys are checked strictly: an unknown key, a key set twice, a value of the
/// wrong kind or out of range, an empty name or queue, a rate limit that is
/// not `<count>/s`, `<count>/m` or `<count>/h`, and a soft time limit not
/// below the hard one are compile errors.
///
/// ```no_run
/// use task_core::{task, TaskError};
///
/// #[task(
///     queue = "fetch",
///     time_limit = 30,
///     soft_time_limit = 25,
///     max_retries = 5,
///     retry_backoff = 2,
///     retry_backoff_max = 60,
///     autoretry_for = [std::io::Error, "TimeoutError"],
///     rate_limit = "100/m",
/// )]
/// async fn fetch(url: String) -> Result<String, TaskError> {
///     Ok(url)
/// }
/// ```
///
/// ## Matching `autoretry_for`
///
/// A path entry (`std::io::Error`, `MyError`) is a Rust error type, matched by
/// type identity (`TypeId`): it retries failures converted from that very
/// type (returned as the task's error type, or converted into `TaskError`
/// with `?` / `From`, or with `TaskError::from_exception`), and no other type
/// of the same name (`std::io::Error` does not match `serde_json::Error`). It
/// must name a type implementing `std::error::Error`, so that a typo is a
/// compile error. Errors whose Rust type is not known (a `Box<dyn Error>`, an
/// `anyhow::Error`, a `String`, a `TaskError::new(...)`) match no path entry.
///
/// A string entry (`"TimeoutError"`) is an exception name, matched against
/// what `TaskError::exc_type` reports: the name given to
/// `TaskError::new("TimeoutError", ...)`, a `CeleryException`'s own name, or
/// `"Exception"` for messages and boxed errors.
///
/// # Arguments
///
/// A task's arguments are deserialized from the message, so each must be a
/// plain name (`mut` is fine) with an owned type implementing `Serialize` and
/// `DeserializeOwned`: `String` rather than `&str`, `Vec<T>` rather than
/// `&[T]`, no `impl Trait`. Arguments are matched by position, else by name
/// (Celery's keyword arguments; `r#type` is called `type`), and an `Option<T>`
/// argument may be left out (it is then `None`).
///
/// # Return type
///
/// `Result<T, E>` where `T: Serialize + DeserializeOwned` and `E` converts
/// into `TaskError` (every `std::error::Error + Send + Sync + 'static` does, so
/// `?` works in the body),
/// or nothing (`()`). An `Err` is reported to the caller as the task's failure,
/// and so is a panic.
///
/// # Blocking tasks
///
/// A task may be a plain `fn`: the worker then runs it on tokio's blocking
/// thread pool (`OPTIONS.blocking` is `true`), so CPU-bound or blocking work
/// does not stall other tasks. `s` and `delay` are the same as for an
/// `async fn`; `run` stays a plain function.
///
/// ```no_run
/// use task_core::{task, TaskError};
///
/// #[task(queue = "cpu")]
/// fn checksum(data: Vec<u8>) -> Result<u32, TaskError> {
///     Ok(data.iter().map(|&byte| u32::from(byte)).sum())
/// }
/// ```
///
/// # The task's name in its module
///
/// Because the task is a unit struct, its name is a value in the whole
/// module: a parameter or local variable of the same name in that module
/// would be a pattern matching the struct, not a new binding (a parameter
/// named like its own task is rejected for this reason).
///
/// # Not allowed
///
/// Generic functions (type, lifetime or const parameters, `where` clauses),
/// methods (`self`), pattern arguments such as `(a, b): (i64, i64)` or `_`,
/// borrowed or `impl Trait` argument types, `#[cfg]` on an argument,
/// `unsafe fn`, `const fn`, `extern "C" fn` and variadic functions are
/// rejected with an error pointing at the offending token; so is `#[task]` on
/// anything but a function.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::task(attr.into(), item.into()).into()
}
