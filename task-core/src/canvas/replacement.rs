//! [`Replacement`]: what a task can replace itself by
//! ([`TaskError::replace`](crate::TaskError::replace), Celery's
//! `self.replace(sig)`): a call, a chain, a group or a chord.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Canvas, Chain, Chord, Group};
use crate::registry::TaskOutcome;
use crate::{Signature, TaskArgs, TaskError};

/// What a task can replace itself by: a [`Signature`], a [`Chain`], a
/// [`Group`] (its values as one list, as Celery turns it into a chord with
/// `celery.accumulate` as its body), a [`Chord`] or a stored [`Canvas`]. The one whose result is
/// the replacement's (the call, the chain's last step, the chord's body)
/// takes over the replaced task's id, caller, callbacks, group and chord.
#[diagnostic::on_unimplemented(
    message = "a task is replaced by a Signature, a Chain, a Group, a Chord or a Canvas, not by `{Self}`"
)]
pub trait Replacement: sealed::Sealed {
    /// The replacement in Celery's dict form.
    #[doc(hidden)]
    fn into_replacement(self) -> Value;

    /// The name the replacement is known by (its task, or `celery.chain`,
    /// `celery.group`, `celery.chord`).
    #[doc(hidden)]
    fn replacement_name(&self) -> String;
}

mod sealed {
    /// Only this crate's canvas replaces a task.
    pub trait Sealed {}
}

impl<R> sealed::Sealed for Signature<R> {}

impl<R> Replacement for Signature<R> {
    fn into_replacement(self) -> Value {
        self.to_dict()
    }

    fn replacement_name(&self) -> String {
        self.name().to_owned()
    }
}

impl<R> sealed::Sealed for Chain<R> {}

impl<R> Replacement for Chain<R> {
    fn into_replacement(self) -> Value {
        self.to_dict()
    }

    fn replacement_name(&self) -> String {
        "celery.chain".to_owned()
    }
}

impl<R> sealed::Sealed for Group<R> {}

impl<R> Replacement for Group<R> {
    fn into_replacement(self) -> Value {
        self.to_dict()
    }

    fn replacement_name(&self) -> String {
        "celery.group".to_owned()
    }
}

impl<R, S> sealed::Sealed for Chord<R, S> {}

impl<R, S> Replacement for Chord<R, S> {
    fn into_replacement(self) -> Value {
        self.to_dict()
    }

    fn replacement_name(&self) -> String {
        "celery.chord".to_owned()
    }
}

impl sealed::Sealed for Canvas {}

impl Replacement for Canvas {
    fn into_replacement(self) -> Value {
        self.to_dict()
    }

    fn replacement_name(&self) -> String {
        match self {
            Canvas::Signature(signature) => signature.replacement_name(),
            Canvas::Chain(steps) => steps.replacement_name(),
            Canvas::Group(members) => members.replacement_name(),
            Canvas::Chord(chord) => chord.replacement_name(),
        }
    }
}

/// Celery's builtin `celery.accumulate(*args, index=None)`, the body of a
/// group that replaced a task: `args[index]` (the list of the group's
/// values, as a chord body gets them), or every argument as a list
/// without `index`.
pub(crate) fn accumulate(mut args: TaskArgs) -> BoxFuture<'static, TaskOutcome> {
    // `index` is keyword-only (no positional place).
    let index = args.take::<Option<i64>>(usize::MAX, "index");
    let mut positional = args.into_positional();
    Box::pin(async move {
        let index = index?;
        let Some(index) = index else {
            return serde_json::value::to_raw_value(&positional)
                .map_err(|error| TaskError::new("EncodeError", error.to_string()));
        };
        // Python's indexing: a negative index counts from the end.
        let count = i64::try_from(positional.len()).unwrap_or(i64::MAX);
        let at = if index < 0 { index + count } else { index };
        usize::try_from(at)
            .ok()
            .filter(|at| *at < positional.len())
            .map(|at| positional.swap_remove(at))
            .ok_or_else(|| TaskError::new("IndexError", "tuple index out of range"))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn run(args: &str, index: Option<&str>) -> Result<String, TaskError> {
        let positional: Vec<Box<RawValue>> = serde_json::from_str(args).unwrap();
        let keyword = index
            .map(|index| {
                (
                    "index".to_owned(),
                    RawValue::from_string(index.to_owned()).unwrap(),
                )
            })
            .into_iter()
            .collect();
        let args = TaskArgs::new("celery.accumulate", positional, keyword);
        let outcome = futures_util::FutureExt::now_or_never(accumulate(args)).unwrap();
        outcome.map(|value| value.get().to_owned())
    }

    #[test]
    fn accumulate_returns_the_argument_at_index_or_all_of_them() {
        assert_eq!(run("[[1,2,3]]", Some("0")).unwrap(), "[1,2,3]");
        assert_eq!(run("[1,2]", Some("-1")).unwrap(), "2");
        assert_eq!(run("[1,2]", None).unwrap(), "[1,2]");
        assert_eq!(run("[1,2]", Some("null")).unwrap(), "[1,2]");
        assert_eq!(run("[1]", Some("3")).unwrap_err().exc_type(), "IndexError");
        assert_eq!(
            run("[1]", Some("\"x\"")).unwrap_err().exc_type(),
            "TypeError"
        );
    }
}
