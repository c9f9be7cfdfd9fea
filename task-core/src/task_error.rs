//! The error a task body returns, and how it is reported to the caller.
//!
//! [`TaskError`] plays the role `anyhow::Error` plays in applications: any
//! `std::error::Error` converts into it with `?`, keeping the error's type name
//! (which becomes Celery's `exc_type`), its message and its chain of causes
//! (which becomes the traceback the caller sees).
//!
//! [`IntoTaskError`] lists every error type a task may return (`TaskError`,
//! std errors, `String`, `Box<dyn Error>`, `anyhow::Error`), and
//! [`CeleryException`] lets an error type name its own `exc_type`.

use std::any::TypeId;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// Python's built-in exception names: a failure reported under one of these
/// names is raised as the real built-in class by a Python Celery client.
const PYTHON_BUILTIN_EXCEPTIONS: &[&str] = &[
    "Exception",
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "IndexError",
    "KeyError",
    "LookupError",
    "NotImplementedError",
    "OverflowError",
    "RuntimeError",
    "TimeoutError",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
];

/// The module reported for error types that are not Python built-ins. A Python
/// client does not find it in `sys.modules` and synthesizes an exception class
/// with the reported name, which is what Celery does for unknown types.
pub const RUST_EXCEPTION_MODULE: &str = "rust";

/// Why a task did not produce a value.
///
/// Every `std::error::Error` converts into a `TaskError` (so `?` works inside a
/// task body), recording the error's type name and its chain of causes. A
/// `TaskError` can also be built by hand with a Celery-style exception name:
///
/// ```
/// use task_core::TaskError;
/// let err = TaskError::new("ValueError", "x must be positive");
/// assert_eq!(err.exc_type(), "ValueError");
/// ```
///
/// `TaskError` deliberately does not implement `std::error::Error` itself:
/// that is what lets the blanket `From<E: Error>` conversion exist.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskError {
    exc_type: Cow<'static, str>,
    message: String,
    traceback: Option<String>,
    retry: Option<RetryRequest>,
    /// The type of the Rust error this was converted from, when known.
    source_type: Option<TypeId>,
    /// What few errors carry (boxed: the common error stays small).
    rare: Option<Box<Rare>>,
}

/// The parts of a [`TaskError`] few errors have.
#[derive(Clone, PartialEq, Eq, Default)]
struct Rare {
    /// The Python module of the exception class, when named.
    module: Option<Cow<'static, str>>,
    /// The exception's arguments (Celery's `exc_message` list), when given.
    args: Option<Vec<serde_json::Value>>,
    /// How the task ends instead of failing, when it asks.
    ending: Option<Ending>,
    /// The signature (Celery's dict form) the task is replaced by.
    replacement: Option<Box<serde_json::Value>>,
    /// How the retry asked for differs from this run.
    retry: Option<crate::Retry>,
}

/// An ending other than a failure, asked for by the task body (Celery's
/// control exceptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Celery's `Ignore`: no result, the message acked.
    Ignore,
    /// Celery's `Reject`: the message rejected, requeued or not.
    Reject { requeue: bool },
}

/// The module of Celery's own exceptions (`Reject`, `Ignore`, ...).
const CELERY_EXCEPTIONS: &str = "celery.exceptions";

/// A task's request to be run again (Celery's `self.retry(...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRequest {
    /// Wait this long before the retry (`None`: the task's retry policy decides).
    pub countdown: Option<Duration>,
}

impl TaskError {
    /// An error with an explicit exception type name (e.g. `"ValueError"`).
    pub fn new(exc_type: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            exc_type: exc_type.into(),
            message: message.into(),
            traceback: None,
            retry: None,
            source_type: None,
            rare: None,
        }
    }

    /// Asks the worker to retry the task, with this error as the reason, after
    /// the delay its retry policy gives; once `max_retries` is used up the task
    /// fails with this error.
    ///
    /// ```
    /// use task_core::TaskError;
    /// fn fetch() -> Result<String, std::io::Error> { Err(std::io::Error::other("timeout")) }
    /// let err = TaskError::from(fetch().unwrap_err()).retry();
    /// assert!(err.retry_request().is_some());
    /// ```
    pub fn retry(mut self) -> Self {
        self.retry = Some(RetryRequest { countdown: None });
        self
    }

    /// Like [`TaskError::retry`], after exactly `countdown`.
    pub fn retry_in(mut self, countdown: Duration) -> Self {
        self.retry = Some(RetryRequest {
            countdown: Some(countdown),
        });
        self
    }

    /// Like [`TaskError::retry`], with the next run changed by `retry`
    /// (new arguments, a countdown or ETA, another queue, another
    /// `max_retries`: Celery's `self.retry(...)` options).
    pub fn retry_with(mut self, retry: crate::Retry) -> Self {
        self.retry = Some(RetryRequest {
            countdown: retry.wait(),
        });
        self.with_rare(|rare| rare.retry = Some(retry))
    }

    /// The retry this error asks for, if any.
    pub fn retry_request(&self) -> Option<RetryRequest> {
        self.retry
    }

    /// How the retry asked for differs from this run
    /// ([`TaskError::retry_with`]), if it does.
    pub fn retry_changes(&self) -> Option<&crate::Retry> {
        self.rare.as_ref()?.retry.as_ref()
    }

    /// Ends the task by replacing it with `by` (Celery's `self.replace`): a
    /// [`Signature`](crate::Signature), a [`Chain`](crate::canvas::Chain),
    /// a [`Group`](crate::canvas::Group) (whose values come back as one
    /// list: Celery turns it into a chord with `celery.accumulate` as its
    /// body) or a [`Chord`](crate::canvas::Chord). The worker publishes it
    /// before the running task's ack; what gives the replacement's result
    /// (the call, the chain's last step, the chord's body) takes over the
    /// running task's id, callbacks, errbacks (a chain's every step gets
    /// them, as in Celery), group and chord, the task's remaining chain
    /// steps follow it, and the running task ends without a result. Its
    /// caller gets the replacement's result under the same id; unlike
    /// Celery's worker, the caller's `reply_to` is kept, so a caller on
    /// `rpc://` gets it too. The replacement's result type should be the
    /// task's own: the caller reads it as that.
    ///
    /// ```
    /// use task_core::canvas::chain;
    /// use task_core::{task, TaskError};
    ///
    /// #[task(name = "doc.replace.add")]
    /// async fn add(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x + y) }
    ///
    /// /// Hands the sum to `doc.replace.add`, which answers the caller.
    /// #[task(name = "doc.replace.delegate")]
    /// async fn delegate(x: i64, y: i64) -> Result<i64, TaskError> {
    ///     Err(TaskError::replace(add.s(x, y)))
    /// }
    ///
    /// /// Adds `x` twice, in a chain whose last step answers the caller.
    /// #[task(name = "doc.replace.twice")]
    /// async fn add_twice(x: i64, y: i64) -> Result<i64, TaskError> {
    ///     Err(TaskError::replace(chain(add.s(x, y)).then(add.partial(x))))
    /// }
    /// ```
    pub fn replace(by: impl crate::canvas::Replacement) -> Self {
        let message = format!("replaced by {}", by.replacement_name());
        let replacement = Box::new(by.into_replacement());
        Self::new("Replace", message).with_rare(|rare| rare.replacement = Some(replacement))
    }

    /// The signature this error replaces the task by, if any
    /// ([`TaskError::replace`]).
    pub fn replacement(&self) -> Option<&serde_json::Value> {
        self.rare.as_ref()?.replacement.as_deref()
    }

    /// Takes the replacement out of the error.
    pub(crate) fn take_replacement(&mut self) -> Option<Box<serde_json::Value>> {
        self.rare.as_mut()?.replacement.take()
    }

    /// An error of the generic type `TaskError` with the given message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new("TaskError", message.to_string())
    }

    /// Attaches a traceback (free text shown to the caller below the message).
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    /// Whether this error was converted from a Rust error of type `T` (with
    /// `?`, `From`, [`TaskError::from_exception`] or as the task's own error
    /// type). Errors built by hand, from a message, a `Box<dyn Error>` or an
    /// `anyhow::Error` have no known source type.
    ///
    /// ```
    /// use task_core::TaskError;
    /// let err = TaskError::from(std::io::Error::other("disk gone"));
    /// assert!(err.source_is::<std::io::Error>());
    /// assert!(!err.source_is::<std::fmt::Error>());
    /// ```
    pub fn source_is<T: 'static>(&self) -> bool {
        self.source_type == Some(TypeId::of::<T>())
    }

    /// The [`TypeId`] of the Rust error this was converted from, if known
    /// (see [`TaskError::source_is`]).
    pub fn source_type_id(&self) -> Option<TypeId> {
        self.source_type
    }

    /// The exception type name reported to the caller (Celery's `exc_type`).
    pub fn exc_type(&self) -> &str {
        &self.exc_type
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The traceback text, if any: for converted Rust errors, their causes.
    pub fn traceback(&self) -> Option<&str> {
        self.traceback.as_deref()
    }

    /// The module a Python client looks the exception type up in: the one
    /// named ([`TaskError::with_module`]), else `builtins` for Python's own
    /// exception names, else `"rust"`.
    pub fn exc_module(&self) -> &str {
        if let Some(module) = self.rare.as_ref().and_then(|rare| rare.module.as_deref()) {
            return module;
        }
        if PYTHON_BUILTIN_EXCEPTIONS.contains(&self.exc_type.as_ref()) {
            "builtins"
        } else {
            RUST_EXCEPTION_MODULE
        }
    }

    /// Names the Python module of the exception class: a Python caller
    /// that has imported it rebuilds that very class (Celery looks the
    /// class up in the caller's `sys.modules`, else makes one up with the
    /// same name).
    ///
    /// ```
    /// use serde_json::json;
    /// use task_core::TaskError;
    ///
    /// // What `raise ExpectedException('Task expected to fail', 'test')`
    /// // in the Python module `myapp.errors` sends.
    /// let err = TaskError::new("ExpectedException", "Task expected to fail")
    ///     .with_module("myapp.errors")
    ///     .with_args([json!("Task expected to fail"), json!("test")]);
    /// assert_eq!(err.exc_module(), "myapp.errors");
    /// assert_eq!(err.exc_args(), Some(&[json!("Task expected to fail"), json!("test")][..]));
    /// ```
    pub fn with_module(self, module: impl Into<Cow<'static, str>>) -> Self {
        let module = module.into();
        self.with_rare(|rare| rare.module = Some(module))
    }

    /// Sets the exception's arguments (Celery's `exc_message` list, what a
    /// Python caller passes to the class: `ExpectedException(*args)`).
    /// Without them a failure carries one argument, the message.
    pub fn with_args(self, args: impl IntoIterator<Item = serde_json::Value>) -> Self {
        let args = args.into_iter().collect();
        self.with_rare(|rare| rare.args = Some(args))
    }

    /// The exception's arguments, when given ([`TaskError::with_args`]).
    pub fn exc_args(&self) -> Option<&[serde_json::Value]> {
        self.rare.as_ref()?.args.as_deref()
    }

    /// Ends the task without a result (Celery's `Ignore`): the message is
    /// acked, nothing runs after it (callbacks, chain), and the caller is
    /// told IGNORED (a Rust caller's `get` returns
    /// [`Error::Ignored`](crate::Error::Ignored); a Python caller keeps
    /// waiting, as with a Python worker).
    pub fn ignore() -> Self {
        Self::new("Ignore", "the task asked to be ignored")
            .with_module(CELERY_EXCEPTIONS)
            .with_rare(|rare| rare.ending = Some(Ending::Ignore))
    }

    /// Rejects the task's message (Celery's `Reject(reason, requeue)`).
    /// With `requeue` the message goes back to its queue (the next delivery
    /// says `redelivered`) and the caller is told nothing: a task that
    /// always rejects with requeue runs forever. Without, the message is
    /// dead-lettered as a poison message is, and the caller is told
    /// FAILURE (`celery.exceptions.Reject` with `[reason, false]`).
    pub fn reject(reason: impl Into<String>, requeue: bool) -> Self {
        let reason = reason.into();
        Self::new("Reject", reason.clone())
            .with_module(CELERY_EXCEPTIONS)
            .with_args([reason.into(), requeue.into()])
            .with_rare(|rare| rare.ending = Some(Ending::Reject { requeue }))
    }

    /// Whether the task asked to end without a result ([`TaskError::ignore`]).
    pub fn is_ignore(&self) -> bool {
        self.ending() == Some(Ending::Ignore)
    }

    /// `Some(requeue)` when the task rejected its message
    /// ([`TaskError::reject`]).
    pub fn reject_request(&self) -> Option<bool> {
        match self.ending()? {
            Ending::Reject { requeue } => Some(requeue),
            Ending::Ignore => None,
        }
    }

    fn ending(&self) -> Option<Ending> {
        self.rare.as_ref()?.ending
    }

    fn with_rare(mut self, edit: impl FnOnce(&mut Rare)) -> Self {
        edit(self.rare.get_or_insert_with(Box::default));
        self
    }

    /// A failure caused by the call itself (missing, extra or mistyped
    /// arguments), reported as Python's `TypeError` like Celery does.
    pub fn bad_arguments(message: impl Into<String>) -> Self {
        Self::new("TypeError", message)
    }

    /// An error of a type that names its own exception type
    /// ([`CeleryException`]): its `exc_type`, message and causes.
    pub fn from_exception<E: CeleryException + 'static>(error: E) -> Self {
        Self {
            exc_type: Cow::Owned(error.exc_type().to_owned()),
            message: error.to_string(),
            traceback: causes(error.source()),
            retry: None,
            source_type: Some(TypeId::of::<E>()),
            rare: None,
        }
        .with_rare(|rare| {
            rare.module = error.exc_module().map(|m| Cow::Owned(m.to_owned()));
            rare.args = error.exc_args();
        })
    }

    /// An error whose type is not known (a `dyn Error`): reported as
    /// [`GENERIC_EXCEPTION`], with its message and causes.
    pub fn from_dyn(error: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            exc_type: Cow::Borrowed(GENERIC_EXCEPTION),
            message: error.to_string(),
            traceback: causes(error.source()),
            retry: None,
            source_type: None,
            rare: None,
        }
    }

    /// A task that panicked. The panic payload becomes the message.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&'static str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "task panicked with a non-string payload".to_owned()
        };
        Self::new("Panic", message)
    }
}

impl<E> From<E> for TaskError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self {
            exc_type: Cow::Borrowed(short_type_name(std::any::type_name::<E>())),
            message: error.to_string(),
            traceback: causes(error.source()),
            retry: None,
            source_type: Some(TypeId::of::<E>()),
            rare: None,
        }
    }
}

/// `"Caused by:"` and one indented line per cause, or `None` without causes.
fn causes(mut source: Option<&(dyn std::error::Error + 'static)>) -> Option<String> {
    let mut causes = String::new();
    while let Some(cause) = source {
        if causes.is_empty() {
            causes.push_str("Caused by:");
        }
        causes.push_str("\n    ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    (!causes.is_empty()).then_some(causes)
}

/// The `exc_type` of failures whose Rust type is not known: a `String` or
/// `&str` message, a `Box<dyn Error>` and an `anyhow::Error`. It is Python's
/// base `Exception`, which a Python client raises as the built-in class.
pub const GENERIC_EXCEPTION: &str = "Exception";

/// An error type that names the exception it is reported as (Celery's
/// `exc_type`), for example one name per variant.
///
/// A task whose return type is `Result<T, E>` with `E: CeleryException`
/// reports `E::exc_type` instead of the Rust type's name; the message is the
/// error's `Display` and the traceback its causes, as for any error. Python's
/// built-in exception names (`KeyError`, `ValueError`, ...) are raised as the
/// built-in class by a Python Celery client.
///
/// ```
/// use task_core::{CeleryException, TaskError};
///
/// #[derive(Debug)]
/// enum LookupError {
///     NotFound(String),
///     Invalid(String),
/// }
///
/// impl std::fmt::Display for LookupError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         match self {
///             LookupError::NotFound(key) => write!(f, "no such key: {key}"),
///             LookupError::Invalid(key) => write!(f, "invalid key: {key}"),
///         }
///     }
/// }
///
/// impl std::error::Error for LookupError {}
///
/// impl CeleryException for LookupError {
///     fn exc_type(&self) -> &str {
///         match self {
///             LookupError::NotFound(_) => "KeyError",
///             LookupError::Invalid(_) => "ValueError",
///         }
///     }
/// }
///
/// let err = TaskError::from_exception(LookupError::NotFound("a".into()));
/// assert_eq!(err.exc_type(), "KeyError");
/// assert_eq!(err.exc_module(), "builtins");
/// ```
///
/// The choice is made where `#[task]` converts the body's error; inside a
/// body that returns `Result<T, TaskError>`, `?` goes through the generic
/// `From<std::error::Error>` conversion, which keeps the type name: use
/// `.map_err(TaskError::from_exception)` there.
pub trait CeleryException: std::error::Error {
    /// The exception type name this error is reported as.
    fn exc_type(&self) -> &str;

    /// The Python module of the class (see [`TaskError::with_module`]);
    /// by default `builtins` for Python's built-in names, else `rust`.
    fn exc_module(&self) -> Option<&str> {
        None
    }

    /// The exception's arguments (see [`TaskError::with_args`]); by
    /// default one, the message.
    fn exc_args(&self) -> Option<Vec<serde_json::Value>> {
        None
    }
}

/// Markers that tell apart the [`IntoTaskError`] conversions (so that they
/// can coexist with the one for every `std::error::Error`). Only
/// [`Custom`](kind::Custom) is meant to be named, by user implementations.
pub mod kind {
    /// [`TaskError`](crate::TaskError) itself.
    #[derive(Debug)]
    pub enum Own {}
    /// Any `std::error::Error + Send + Sync + 'static`.
    #[derive(Debug)]
    pub enum StdError {}
    /// A `String` or `&'static str` message.
    #[derive(Debug)]
    pub enum Message {}
    /// A boxed `dyn std::error::Error`.
    #[derive(Debug)]
    pub enum Boxed {}
    /// An `anyhow::Error` (with the `anyhow` feature).
    #[derive(Debug)]
    pub enum Anyhow {}
    /// A user type that implements [`IntoTaskError`](crate::IntoTaskError)
    /// itself (it must not also implement `std::error::Error`).
    #[derive(Debug)]
    pub enum Custom {}
}

/// An error type a task body may fail with: the `E` of a task's
/// `Result<T, E>`.
///
/// Implemented for:
///
/// | `E` | `exc_type` | message | traceback |
/// | --- | --- | --- | --- |
/// | [`TaskError`] | its own | its own | its own |
/// | any `std::error::Error + Send + Sync + 'static` | the type's name (`ParseIntError`), or [`CeleryException::exc_type`] | `Display` | the chain of `source()`s |
/// | `String`, `&'static str` | `Exception` | the text | none |
/// | `Box<dyn Error + Send + Sync>`, `Box<dyn Error + Send>` | `Exception` (the boxed type is not known) | `Display` | the chain of `source()`s |
/// | `anyhow::Error` (feature `anyhow`) | `Exception` (the root cause's type is not known) | `Display` (the outermost context) | the rest of the chain |
///
/// The `Kind` parameter only keeps these implementations apart; it is
/// inferred. A type of your own that does not implement `std::error::Error`
/// can implement `IntoTaskError<kind::Custom>`.
#[diagnostic::on_unimplemented(
    message = "a task cannot fail with `{Self}`: it does not convert into `TaskError`",
    label = "this is the task's error type, `{Self}`",
    note = "a task's error type may be any `std::error::Error + Send + Sync + 'static`, `TaskError`, `String`, `&'static str`, `Box<dyn Error + Send + Sync>`, or `anyhow::Error` (task-core's `anyhow` feature)"
)]
pub trait IntoTaskError<Kind> {
    /// Converts the error, keeping what can be kept of its type, message and causes.
    fn into_task_error(self) -> TaskError;
}

impl IntoTaskError<kind::Own> for TaskError {
    fn into_task_error(self) -> TaskError {
        self
    }
}

impl<E> IntoTaskError<kind::StdError> for E
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn into_task_error(self) -> TaskError {
        TaskError::from(self)
    }
}

impl IntoTaskError<kind::Message> for String {
    fn into_task_error(self) -> TaskError {
        TaskError::new(GENERIC_EXCEPTION, self)
    }
}

impl IntoTaskError<kind::Message> for &'static str {
    fn into_task_error(self) -> TaskError {
        TaskError::new(GENERIC_EXCEPTION, self)
    }
}

impl IntoTaskError<kind::Boxed> for Box<dyn std::error::Error + Send + Sync> {
    fn into_task_error(self) -> TaskError {
        TaskError::from_dyn(self.as_ref())
    }
}

impl IntoTaskError<kind::Boxed> for Box<dyn std::error::Error + Send> {
    fn into_task_error(self) -> TaskError {
        TaskError::from_dyn(self.as_ref())
    }
}

#[cfg(feature = "anyhow")]
impl IntoTaskError<kind::Anyhow> for anyhow::Error {
    fn into_task_error(self) -> TaskError {
        TaskError::from_dyn(&*self)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("exc_type", &self.exc_type)
            .field("message", &self.message)
            .field("traceback", &self.traceback)
            .field("retry", &self.retry)
            .finish()
    }
}

/// `"std::num::ParseIntError"` → `"ParseIntError"`, `"a::B<c::D>"` → `"B"`.
fn short_type_name(full: &'static str) -> &'static str {
    let without_generics = full.split('<').next().unwrap_or(full);
    without_generics
        .rsplit("::")
        .next()
        .unwrap_or(without_generics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn std_errors_keep_their_type_name_message_and_causes() {
        let err: TaskError = "x".parse::<i64>().unwrap_err().into();
        assert_eq!(err.exc_type(), "ParseIntError");
        assert_eq!(err.message(), "invalid digit found in string");
        assert_eq!(err.traceback(), None);

        let err: TaskError = Outer(std::io::Error::other("disk gone")).into();
        assert_eq!(err.exc_type(), "Outer");
        assert_eq!(err.traceback(), Some("Caused by:\n    disk gone"));
        assert_eq!(err.exc_module(), RUST_EXCEPTION_MODULE);
    }

    #[derive(Debug, thiserror::Error)]
    enum Lookup {
        #[error("no such key: {0}")]
        NotFound(String),
        #[error("invalid key")]
        Invalid(#[source] std::num::ParseIntError),
    }

    impl CeleryException for Lookup {
        fn exc_type(&self) -> &str {
            match self {
                Lookup::NotFound(_) => "KeyError",
                Lookup::Invalid(_) => "ValueError",
            }
        }
    }

    fn convert<E: IntoTaskError<K>, K>(error: E) -> TaskError {
        error.into_task_error()
    }

    #[test]
    fn each_error_kind_converts_with_its_exc_type_message_and_traceback() {
        let err = convert(TaskError::new("KeyError", "k").with_traceback("tb"));
        assert_eq!(
            (err.exc_type(), err.message(), err.traceback()),
            ("KeyError", "k", Some("tb"))
        );

        let err = convert(Outer(std::io::Error::other("disk gone")));
        assert_eq!(
            (err.exc_type(), err.message(), err.traceback()),
            ("Outer", "outer failed", Some("Caused by:\n    disk gone"))
        );

        let err = convert(String::from("no luck"));
        assert_eq!(
            (err.exc_type(), err.message(), err.traceback()),
            ("Exception", "no luck", None)
        );
        assert_eq!(err.exc_module(), "builtins");
        let err = convert("static text");
        assert_eq!(
            (err.exc_type(), err.message()),
            ("Exception", "static text")
        );

        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Box::new(Outer(std::io::Error::other("disk gone")));
        let err = convert(boxed);
        assert_eq!(
            (err.exc_type(), err.message(), err.traceback()),
            (
                "Exception",
                "outer failed",
                Some("Caused by:\n    disk gone")
            )
        );
        let boxed: Box<dyn std::error::Error + Send> = Box::new(std::io::Error::other("plain"));
        let boxed_message = convert(boxed);
        assert_eq!(
            (boxed_message.exc_type(), boxed_message.message()),
            ("Exception", "plain")
        );
    }

    #[cfg(feature = "anyhow")]
    #[test]
    fn anyhow_errors_report_the_outermost_context_and_the_chain_below() {
        use anyhow::Context as _;
        let error = Err::<(), _>(std::io::Error::other("disk gone"))
            .context("reading the config")
            .context("starting up")
            .unwrap_err();
        let err = convert(error);
        assert_eq!(err.exc_type(), "Exception");
        assert_eq!(err.message(), "starting up");
        assert_eq!(
            err.traceback(),
            Some("Caused by:\n    reading the config\n    disk gone")
        );
    }

    #[test]
    fn celery_exceptions_name_their_type_per_variant() {
        let err = TaskError::from_exception(Lookup::NotFound("a".into()));
        assert_eq!(
            (err.exc_type(), err.message(), err.exc_module()),
            ("KeyError", "no such key: a", "builtins")
        );
        let cause = "x".parse::<i64>().unwrap_err();
        let err = TaskError::from_exception(Lookup::Invalid(cause));
        assert_eq!(err.exc_type(), "ValueError");
        assert_eq!(
            err.traceback(),
            Some("Caused by:\n    invalid digit found in string")
        );
        // The generic conversion (`?` into `TaskError`) keeps the type name.
        assert_eq!(convert(Lookup::NotFound("a".into())).exc_type(), "Lookup");
    }

    #[test]
    fn python_builtin_names_map_to_builtins() {
        assert_eq!(TaskError::new("ValueError", "v").exc_module(), "builtins");
        assert_eq!(TaskError::bad_arguments("t").exc_type(), "TypeError");
    }

    #[test]
    fn short_names_drop_paths_and_generics() {
        assert_eq!(short_type_name("a::b::C<d::E>"), "C");
        assert_eq!(short_type_name("Plain"), "Plain");
    }

    #[test]
    fn panic_payloads_become_messages() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(TaskError::from_panic(payload.as_ref()).message(), "boom");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("kaput"));
        assert_eq!(TaskError::from_panic(payload.as_ref()).message(), "kaput");
    }
}
