//! The types of a chord's join in a result backend: a header part's result
//! going in ([`ChordPart`]), and what the join answers ([`ChordJoin`]).

use serde_json::value::RawValue;

use crate::TaskState;

/// One header part's result, handed to the join.
#[derive(Debug, Clone, Copy)]
pub struct ChordPart<'a> {
    /// The chord's group id (the header tasks' `group`).
    pub group_id: &'a str,
    /// The part's task id.
    pub task_id: &'a str,
    /// The part's place in the header (`group_index`), if it has one.
    pub group_index: Option<u64>,
    /// How it ended (SUCCESS, or FAILURE / REVOKED).
    pub state: TaskState,
    /// Its value, or its exception (`{exc_type, exc_message, exc_module}`).
    pub result: &'a RawValue,
}

/// What the join answers for one part.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChordJoin {
    /// Other parts are still to come (or another process claimed the body).
    Pending,
    /// This part completed the chord, and this process holds the claim to
    /// publish its body.
    Complete(ChordClaim),
    /// The chord was finished already (this is a late copy of a part).
    Finished,
}

/// The claim to publish a complete chord's body, with every part's result
/// in header order.
#[derive(Debug)]
pub struct ChordClaim {
    /// The chord's group id.
    pub group_id: String,
    /// What proves the claim is this process's (compared by the backend).
    pub(crate) token: String,
    /// The parts' results, in header order.
    pub parts: Vec<ChordPartResult>,
}

/// How a claimed chord ended, for [`ResultBackend::finish_chord`](super::ResultBackend::finish_chord).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChordEnd {
    /// The body was published: the chord's keys go, and late copies of its
    /// parts are ignored.
    BodySent,
    /// A part failed and the body was told FAILURE: the size goes, so a
    /// late copy of a part does not fail it again.
    Failed,
    /// The body could not be published: the claim is given back, so the
    /// part's next run (the task is retried) can claim it again.
    NotSent,
}

/// One part's result as the join stored it.
#[derive(Debug)]
pub struct ChordPartResult {
    /// The part's task id.
    pub task_id: String,
    /// How it ended.
    pub state: TaskState,
    /// Its value, or its exception.
    pub result: Box<RawValue>,
}

impl ChordClaim {
    /// The first part that did not succeed, if any: the chord fails with it
    /// (Celery's `ChordError`).
    pub fn failed_part(&self) -> Option<&ChordPartResult> {
        self.parts
            .iter()
            .find(|part| part.state != TaskState::Success)
    }

    /// The parts' values in header order, as one JSON array: the body's
    /// first argument.
    pub fn values(&self) -> Result<Box<RawValue>, serde_json::Error> {
        let values: Vec<&RawValue> = self.parts.iter().map(|part| &*part.result).collect();
        serde_json::value::to_raw_value(&values)
    }
}
