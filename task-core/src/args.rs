//! Decoding a call's positional and keyword arguments into a task's typed
//! parameters, with Python-like errors that name the task and the argument.

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::TaskError;

/// The arguments of one call, as they came off the wire, consumed parameter by
/// parameter by the handler that `#[task]` generates.
#[derive(Debug)]
pub struct TaskArgs {
    task: &'static str,
    positional: Vec<Option<Box<RawValue>>>,
    keyword: Vec<(String, Option<Box<RawValue>>)>,
}

impl TaskArgs {
    /// Wraps the decoded `args` and `kwargs` of a message for task `task`.
    pub fn new(
        task: &'static str,
        positional: Vec<Box<RawValue>>,
        keyword: Vec<(String, Box<RawValue>)>,
    ) -> Self {
        Self {
            task,
            positional: positional.into_iter().map(Some).collect(),
            keyword: keyword.into_iter().map(|(k, v)| (k, Some(v))).collect(),
        }
    }

    /// Takes parameter number `index`, called `name`, from the positional
    /// arguments or else from the keyword arguments. A missing argument is
    /// accepted only when its type deserializes from `null` (`Option<T>`).
    pub fn take<T: DeserializeOwned>(&mut self, index: usize, name: &str) -> Result<T, TaskError> {
        let by_position = self.positional.get_mut(index).and_then(Option::take);
        let by_keyword = self
            .keyword
            .iter_mut()
            .find(|(key, value)| key == name && value.is_some())
            .and_then(|(_, value)| value.take());
        let raw = match (by_position, by_keyword) {
            (Some(_), Some(_)) => {
                return Err(TaskError::bad_arguments(format!(
                    "{}() got multiple values for argument `{name}`",
                    self.task
                )))
            }
            (Some(raw), None) | (None, Some(raw)) => raw,
            (None, None) => {
                return serde_json::from_str("null").map_err(|_| {
                    TaskError::bad_arguments(format!(
                        "{}() missing required argument `{name}`",
                        self.task
                    ))
                })
            }
        };
        serde_json::from_str(raw.get()).map_err(|error| {
            TaskError::bad_arguments(format!(
                "{}() argument `{name}`: {error} (got {})",
                self.task,
                truncate(raw.get(), 200)
            ))
        })
    }

    /// Checks that every argument was used by a parameter: extra positional
    /// arguments and unknown keywords are errors, as in Python.
    pub fn finish(self) -> Result<(), TaskError> {
        let expected = self.positional.iter().filter(|v| v.is_none()).count();
        if self.positional.iter().any(Option::is_some) {
            return Err(TaskError::bad_arguments(format!(
                "{}() takes {expected} positional arguments but {} were given",
                self.task,
                self.positional.len()
            )));
        }
        if let Some((key, _)) = self.keyword.iter().find(|(_, v)| v.is_some()) {
            return Err(TaskError::bad_arguments(format!(
                "{}() got an unexpected keyword argument `{key}`",
                self.task
            )));
        }
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn positional_and_keyword_arguments_fill_parameters() {
        let mut args = TaskArgs::new("t", vec![raw("1")], vec![("y".into(), raw("\"a\""))]);
        assert_eq!(args.take::<i64>(0, "x").unwrap(), 1);
        assert_eq!(args.take::<String>(1, "y").unwrap(), "a");
        args.finish().unwrap();
    }

    #[test]
    fn missing_option_is_none_but_missing_value_is_an_error() {
        let mut args = TaskArgs::new("t", vec![], vec![]);
        assert_eq!(args.take::<Option<i64>>(0, "x").unwrap(), None);
        let err = args.take::<i64>(1, "y").unwrap_err();
        assert_eq!(err.exc_type(), "TypeError");
        assert_eq!(err.message(), "t() missing required argument `y`");
    }

    #[test]
    fn wrong_types_extra_and_duplicate_arguments_are_named() {
        let mut args = TaskArgs::new("t", vec![raw("\"no\"")], vec![]);
        let err = args.take::<i64>(0, "x").unwrap_err();
        assert!(
            err.message().starts_with("t() argument `x`: invalid type"),
            "{err}"
        );

        let args = TaskArgs::new("t", vec![raw("1"), raw("2")], vec![]);
        let err = args.finish().unwrap_err();
        assert_eq!(
            err.message(),
            "t() takes 0 positional arguments but 2 were given"
        );

        let mut args = TaskArgs::new("t", vec![raw("1")], vec![("x".into(), raw("2"))]);
        let err = args.take::<i64>(0, "x").unwrap_err();
        assert_eq!(err.message(), "t() got multiple values for argument `x`");

        let args = TaskArgs::new("t", vec![], vec![("zz".into(), raw("2"))]);
        let err = args.finish().unwrap_err();
        assert_eq!(err.message(), "t() got an unexpected keyword argument `zz`");
    }
}
