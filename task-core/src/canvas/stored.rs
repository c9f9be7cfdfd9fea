//! [`Canvas`]: any canvas read back from Celery's dict form, for
//! signatures stored (in a database, a config file, a message) and sent
//! later.

use serde_json::Value;

use super::chain::InvalidSignature;
use super::{Chain, Chord, Group};
use crate::Signature;

/// A signature, chain, group or chord read from Celery's dict form,
/// untyped (the dict form carries no types): match on it, type the one you
/// expect (`returning`) and send it, or replace a task by it as it is.
///
/// ```
/// use task_core::canvas::{chain, Canvas};
/// use task_core::Signature;
/// let add = |x: i64| Signature::<i64>::new("tasks.add").arg(x).arg(1);
/// let stored = chain(add(1)).then_immutable(add(2)).to_dict().to_string();
///
/// match Canvas::from_json(&stored).unwrap() {
///     Canvas::Chain(steps) => assert_eq!(steps.returning::<i64>().len(), 2),
///     other => panic!("not a chain: {other:?}"),
/// }
/// ```
#[derive(Debug, Clone)]
pub enum Canvas {
    /// One task call.
    Signature(Signature<Value>),
    /// Steps run one after the other.
    Chain(Chain<Value>),
    /// Members sent at once.
    Group(Group<Value>),
    /// A group whose values go to a body.
    Chord(Chord<Value, Value>),
}

impl Canvas {
    /// Reads any canvas in Celery's dict form, by its `subtask_type`
    /// (`chain`, `group`, `chord`, none for a plain signature) or its task
    /// name (`celery.chain`, ...); a JSON list is a group. Each shape is
    /// read as [`Signature::from_dict`], [`Chain::from_dict`],
    /// [`Group::from_dict`] and [`Chord::from_dict`] read it.
    pub fn from_dict(dict: &Value) -> Result<Self, InvalidSignature> {
        if dict.is_array() {
            return Group::from_dict(dict).map(Self::Group);
        }
        let kind = dict.get("subtask_type").and_then(Value::as_str);
        let task = dict.get("task").and_then(Value::as_str);
        match (kind, task) {
            (Some("chain"), _) | (_, Some("celery.chain")) => {
                Chain::from_dict(dict).map(Self::Chain)
            }
            (Some("group"), _) | (_, Some("celery.group")) => {
                Group::from_dict(dict).map(Self::Group)
            }
            (Some("chord"), _) | (_, Some("celery.chord")) => {
                Chord::from_dict(dict).map(Self::Chord)
            }
            _ => Signature::from_dict(dict).map(Self::Signature),
        }
    }

    /// Reads any canvas from JSON text in Celery's dict form; see
    /// [`Canvas::from_dict`].
    pub fn from_json(text: &str) -> Result<Self, InvalidSignature> {
        let dict: Value = serde_json::from_str(text)
            .map_err(|error| InvalidSignature::new(format!("not JSON: {error}")))?;
        Self::from_dict(&dict)
    }

    /// The canvas in Celery's dict form.
    pub fn to_dict(&self) -> Value {
        match self {
            Self::Signature(signature) => signature.to_dict(),
            Self::Chain(steps) => steps.to_dict(),
            Self::Group(members) => members.to_dict(),
            Self::Chord(chord) => chord.to_dict(),
        }
    }
}

impl From<Signature<Value>> for Canvas {
    fn from(signature: Signature<Value>) -> Self {
        Self::Signature(signature)
    }
}

impl From<Chain<Value>> for Canvas {
    fn from(steps: Chain<Value>) -> Self {
        Self::Chain(steps)
    }
}

impl From<Group<Value>> for Canvas {
    fn from(members: Group<Value>) -> Self {
        Self::Group(members)
    }
}

impl From<Chord<Value, Value>> for Canvas {
    fn from(chord: Chord<Value, Value>) -> Self {
        Self::Chord(chord)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::canvas::{chain, chord, group, Partial};

    fn add(x: i64) -> Signature<i64> {
        Signature::new("tasks.add").arg(x).arg(1)
    }

    #[test]
    fn every_shape_reads_back_to_the_same_dict() {
        let total = || Partial::new(Signature::<i64>::new("tasks.sum_all"));
        let shapes = [
            add(1).to_dict(),
            chain(add(1)).then(Partial::new(add(2))).to_dict(),
            chain(add(1))
                .then_chord([Partial::new(add(2)), Partial::new(add(3))], total())
                .to_dict(),
            group([add(1), add(2)]).to_dict(),
            chord(group([add(1), add(2)]), total()).to_dict(),
        ];
        for dict in shapes {
            let read = Canvas::from_dict(&dict).expect("reads back");
            assert_eq!(read.to_dict(), dict, "{read:?}");
        }
    }

    #[test]
    fn the_shape_is_the_one_the_dict_names() {
        let group_dict = group([add(1)]).to_dict();
        assert!(matches!(
            Canvas::from_dict(&group_dict),
            Ok(Canvas::Group(_))
        ));
        let listed = json!([add(1).to_dict(), add(2).to_dict()]);
        assert!(matches!(Canvas::from_dict(&listed), Ok(Canvas::Group(g)) if g.len() == 2));
        let chord_dict = chord(group([add(1)]), Partial::new(add(0))).to_dict();
        assert!(matches!(
            Canvas::from_dict(&chord_dict),
            Ok(Canvas::Chord(_))
        ));
        assert!(matches!(
            Canvas::from_dict(&add(1).to_dict()),
            Ok(Canvas::Signature(_))
        ));
    }

    #[test]
    fn a_malformed_canvas_is_a_typed_error_saying_what_is_wrong() {
        let no_header = json!({"task": "celery.chord", "kwargs": {"body": add(1).to_dict()}});
        let error = Canvas::from_dict(&no_header).expect_err("no header");
        assert!(error.reason().contains("header"), "{error}");
        let bad_member = json!({"subtask_type": "group", "kwargs": {"tasks": [{"args": []}]}});
        let error = Canvas::from_dict(&bad_member).expect_err("member without a task");
        assert!(error.reason().contains("task"), "{error}");
        assert!(Canvas::from_json("{").is_err());
        assert!(Canvas::from_dict(&json!(3)).is_err());
    }
}
