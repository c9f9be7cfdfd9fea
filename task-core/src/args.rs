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
                "{}() argument `{name}`: {} (got {})",
                self.task,
                explain_json_error(raw.get(), &error),
                truncate(raw.get(), 200)
            ))
        })
    }

    /// The positional arguments not taken yet, in order (a task taking
    /// `*args`).
    pub(crate) fn into_positional(self) -> Vec<Box<RawValue>> {
        self.positional.into_iter().flatten().collect()
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

/// The deserializer's explanation of why `json` is not the type asked for,
/// except for an integer literal too large or small for the integer type
/// asked for. serde_json reads an integer beyond `u64`/`i64` (Python's
/// `2**70`) as a float and would say "invalid type: floating point
/// `1.1805916207174113e21`, expected i64"; this says which integer does not
/// fit in which type, with the type's range.
pub(crate) fn explain_json_error(json: &str, error: &serde_json::Error) -> String {
    integer_out_of_range(json, error).unwrap_or_else(|| error.to_string())
}

fn integer_out_of_range(json: &str, error: &serde_json::Error) -> Option<String> {
    if error.classify() != serde_json::error::Category::Data {
        return None;
    }
    let text = error.to_string();
    if !(text.starts_with("invalid type: floating point")
        || text.starts_with("invalid value: integer"))
    {
        return None;
    }
    let expected = text.split(", expected ").nth(1)?;
    let expected = expected.split(" at line ").next()?;
    let (min, max) = integer_range(expected)?;
    let literal = integer_literal_at(json, error.line(), error.column())?;
    Some(format!(
        "the integer {literal} does not fit in {expected} (from {min} to {max})"
    ))
}

/// The range of a primitive integer type, by the name serde expects it as.
fn integer_range(name: &str) -> Option<(String, String)> {
    macro_rules! ranges {
        ($($ty:ident)*) => {
            match name {
                $(stringify!($ty) => Some(($ty::MIN.to_string(), $ty::MAX.to_string())),)*
                _ => None,
            }
        };
    }
    ranges!(i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize)
}

/// The integer literal (digits, maybe after `-`, not part of a float) that
/// ends at or around 1-based `line`/`column` of `json`, where serde_json
/// reports an error about a number.
fn integer_literal_at(json: &str, line: usize, column: usize) -> Option<&str> {
    let line_start: usize = json
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    let bytes = json.as_bytes();
    let is_digit = |index: usize| bytes.get(index).is_some_and(u8::is_ascii_digit);
    let mut end = (line_start + column).min(bytes.len());
    while is_digit(end) {
        end += 1;
    }
    let mut start = end;
    while start > 0 && is_digit(start - 1) {
        start -= 1;
    }
    if start == end {
        return None;
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    let part_of_float = |index: Option<usize>| {
        index
            .and_then(|index| bytes.get(index))
            .is_some_and(|byte| matches!(byte, b'.' | b'e' | b'E' | b'+' | b'-'))
    };
    if part_of_float(start.checked_sub(1)) || part_of_float(Some(end)) {
        return None;
    }
    json.get(start..end)
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

    #[test]
    fn integers_too_big_for_the_parameter_say_so() {
        // Python's 2**70: serde_json reads it as a float.
        let mut args = TaskArgs::new("t", vec![raw("1180591620717411303424")], vec![]);
        let err = args.take::<i64>(0, "x").unwrap_err();
        assert_eq!(err.exc_type(), "TypeError");
        assert_eq!(
            err.message(),
            "t() argument `x`: the integer 1180591620717411303424 does not fit in i64 \
             (from -9223372036854775808 to 9223372036854775807) (got 1180591620717411303424)"
        );

        let mut args = TaskArgs::new("t", vec![raw("-1180591620717411303424")], vec![]);
        let err = args.take::<u64>(0, "x").unwrap_err();
        assert!(
            err.message()
                .starts_with("t() argument `x`: the integer -1180591620717411303424 does not fit in u64 (from 0 to 18446744073709551615)"),
            "{err}"
        );

        // Within u64 but not i32, inside a list, in a keyword argument.
        let mut args = TaskArgs::new("t", vec![], vec![("xs".into(), raw("[1, 4294967296]"))]);
        let err = args.take::<Vec<i32>>(0, "xs").unwrap_err();
        assert_eq!(
            err.message(),
            "t() argument `xs`: the integer 4294967296 does not fit in i32 \
             (from -2147483648 to 2147483647) (got [1, 4294967296])"
        );

        // Negative into unsigned.
        let mut args = TaskArgs::new("t", vec![raw("-1")], vec![]);
        let err = args.take::<u8>(0, "x").unwrap_err();
        assert!(
            err.message()
                .starts_with("t() argument `x`: the integer -1 does not fit in u8 (from 0 to 255)"),
            "{err}"
        );

        // A float or a big integer where no integer is expected keeps serde's words.
        let mut args = TaskArgs::new("t", vec![raw("1.5"), raw("1180591620717411303424")], vec![]);
        let err = args.take::<i64>(0, "x").unwrap_err();
        assert!(
            err.message()
                .contains("invalid type: floating point `1.5`, expected i64"),
            "{err}"
        );
        let err = args.take::<String>(1, "y").unwrap_err();
        assert!(err.message().contains("expected a string"), "{err}");
    }
}
