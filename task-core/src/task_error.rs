//! The error a task body returns, and how it is reported to the caller.
//!
//! [`TaskError`] plays the role `anyhow::Error` plays in applications: any
//! `std::error::Error` converts into it with `?`, keeping the error's type name
//! (which becomes Celery's `exc_type`), its message and its chain of causes
//! (which becomes the traceback the caller sees).

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
}

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

    /// The retry this error asks for, if any.
    pub fn retry_request(&self) -> Option<RetryRequest> {
        self.retry
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

    /// The module a Python client looks the exception type up in: `builtins`
    /// for Python's own exception names, `"rust"` otherwise.
    pub fn exc_module(&self) -> &'static str {
        if PYTHON_BUILTIN_EXCEPTIONS.contains(&self.exc_type.as_ref()) {
            "builtins"
        } else {
            RUST_EXCEPTION_MODULE
        }
    }

    /// A failure caused by the call itself (missing, extra or mistyped
    /// arguments), reported as Python's `TypeError` like Celery does.
    pub fn bad_arguments(message: impl Into<String>) -> Self {
        Self::new("TypeError", message)
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
        let mut causes = String::new();
        let mut source = error.source();
        while let Some(cause) = source {
            if causes.is_empty() {
                causes.push_str("Caused by:");
            }
            causes.push_str("\n    ");
            causes.push_str(&cause.to_string());
            source = cause.source();
        }
        Self {
            exc_type: Cow::Borrowed(short_type_name(std::any::type_name::<E>())),
            message: error.to_string(),
            traceback: (!causes.is_empty()).then_some(causes),
            retry: None,
        }
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
