//! Python-style `repr` of JSON arguments, for Celery's `argsrepr` and
//! `kwargsrepr` headers (shown by Flower and in worker logs).

use serde_json::value::RawValue;
use serde_json::Value;

/// Celery cuts these headers at 1024 characters.
pub const MAX_REPR_CHARS: usize = 1024;

/// `(2, 3)` for positional arguments `[2, 3]`.
pub fn args_repr(args: &[Box<RawValue>]) -> String {
    let mut out = String::from("(");
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        raw_repr(arg, &mut out);
        if out.len() > MAX_REPR_CHARS {
            break;
        }
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    truncate(out)
}

/// `{'x': 1}` for keyword arguments.
pub fn kwargs_repr(kwargs: &[(String, Box<RawValue>)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in kwargs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        string_repr(key, &mut out);
        out.push_str(": ");
        raw_repr(value, &mut out);
        if out.len() > MAX_REPR_CHARS {
            break;
        }
    }
    out.push('}');
    truncate(out)
}

/// `'text'` for a JSON value `"text"` (a task's result, in events), cut as
/// the headers are.
pub fn value_repr_of(raw: &RawValue) -> String {
    let mut out = String::new();
    raw_repr(raw, &mut out);
    truncate(out)
}

fn raw_repr(raw: &RawValue, out: &mut String) {
    // Huge values are cut anyway: avoid parsing megabytes for a log line.
    if raw.get().len() > MAX_REPR_CHARS * 4 {
        out.push_str(&raw.get()[..floor_char_boundary(raw.get(), MAX_REPR_CHARS)]);
        return;
    }
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(value) => value_repr(&value, out),
        Err(_) => out.push_str(raw.get()),
    }
}

fn value_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => string_repr(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                string_repr(key, out);
                out.push_str(": ");
                value_repr(item, out);
            }
            out.push('}');
        }
    }
}

fn string_repr(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_REPR_CHARS {
        let cut = floor_char_boundary(&text, MAX_REPR_CHARS - 3);
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn reprs_look_like_python() {
        assert_eq!(args_repr(&[raw("2"), raw("3")]), "(2, 3)");
        assert_eq!(args_repr(&[raw("\"a'b\"")]), "('a\\'b',)");
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(
            kwargs_repr(&[("x".into(), raw("[null, true, {\"k\": 1.5}]"))]),
            "{'x': [None, True, {'k': 1.5}]}"
        );
    }

    #[test]
    fn long_reprs_are_cut() {
        let long = format!("\"{}\"", "é".repeat(5000));
        let repr = args_repr(&[raw(&long)]);
        assert!(repr.len() <= MAX_REPR_CHARS);
        assert!(repr.ends_with("..."));
    }
}
