//! The wire of a chord joined by RabbitMQ alone, without a result backend
//! (not Celery's: Celery's `rpc://` refuses chords, so this is Rust to
//! Rust). See ARCHITECTURE.md, "Chords on RabbitMQ alone", for the design
//! and what it guarantees.
//!
//! - The chord's **join queue** (`chord.<group id>`, durable) receives a
//!   [`PartEntry`] per finished header part, in persistent messages each
//!   holding the entries of one or more parts ([`entries_message`]).
//! - Each header part's message carries the join queue's name in its
//!   [`JOIN_QUEUE_HEADER`] header, beside Celery's `group`, `group_index`
//!   and `chord` (the body) in `embed`.
//! - One **join task** ([`JOIN_TASK`], a [`JoinRequest`]) per chord, sent
//!   before the header to [`JOIN_TASK_QUEUE`], which every worker consumes
//!   apart from its task queues, is run by a worker's canvas stage: it
//!   consumes the join queue alone (exclusive consumer), holds the entries
//!   unacked until one per part is in, publishes the body to its queue (or
//!   fails it), then deletes the join queue.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::broker::{Message, Properties, QueueSpec};
use crate::protocol::task_message::{encode_task, TaskCall, TaskRequest};
use crate::protocol::{CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON};
use crate::TaskState;

/// The name of the join task a worker's canvas stage runs.
pub const JOIN_TASK: &str = "task_core.chord_join";

/// The queue of the join tasks, which every worker consumes (durable,
/// shared by the workers of a vhost: any worker can join any chord).
pub const JOIN_TASK_QUEUE: &str = "task_core.chord_join";

/// The header naming the join queue on a chord's header parts.
pub const JOIN_QUEUE_HEADER: &str = "chord_join_queue";

/// How long a join queue nobody uses is kept (RabbitMQ's `x-expires`):
/// Celery's default `result_chord_expires`, one day.
pub const JOIN_QUEUE_EXPIRES: Duration = Duration::from_secs(24 * 3600);

/// The join queue of chord `group_id`.
pub fn join_queue_name(group_id: &str) -> String {
    format!("chord.{group_id}")
}

/// How a join queue is declared: durable, not auto-deleted (a join task
/// that restarts finds its entries), gone after [`JOIN_QUEUE_EXPIRES`]
/// unused.
pub fn join_queue_spec(name: &str) -> QueueSpec {
    QueueSpec {
        same_name_exchange: None,
        ..QueueSpec::task_queue(name)
    }
    .expires_after(JOIN_QUEUE_EXPIRES)
}

/// What the join task is asked: join chord `group_id` of `size` parts,
/// then publish `body` (a frozen signature in Celery's dict form: its task
/// id, reply queue and group set).
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The chord's group id.
    pub group_id: String,
    /// How many header parts it has.
    pub size: usize,
    /// The body, with its task id frozen.
    pub body: Box<RawValue>,
    /// The queue the body goes to (chosen by whoever started the chord).
    pub body_queue: String,
}

impl JoinRequest {
    /// The join task's message, id `join_id`, in the chord's lineage
    /// (`root_id`), its result not stored.
    pub fn message(&self, join_id: &str, root_id: Option<&str>) -> Result<Message, String> {
        let args = [
            raw(&self.group_id)?,
            raw(&self.size)?,
            self.body.clone(),
            raw(&self.body_queue)?,
        ];
        let call = TaskCall {
            args: &args,
            ignore_result: true,
            root_id,
            ..TaskCall::plain(join_id, JOIN_TASK)
        };
        encode_task(&call).map_err(|e| e.to_string())
    }

    /// The request a join task's message carries.
    pub fn of(request: &TaskRequest) -> Result<Self, String> {
        let [group_id, size, body, body_queue] = request.args.as_slice() else {
            return Err(format!(
                "{JOIN_TASK} takes 4 arguments (group id, size, body, body queue), got {}",
                request.args.len()
            ));
        };
        let group_id: String = serde_json::from_str(group_id.get())
            .map_err(|e| format!("{JOIN_TASK}: the group id is not a string: {e}"))?;
        let size: usize = serde_json::from_str(size.get())
            .map_err(|e| format!("{JOIN_TASK}: the size is not a count: {e}"))?;
        let body_queue: String = serde_json::from_str(body_queue.get())
            .map_err(|e| format!("{JOIN_TASK}: the body queue is not a string: {e}"))?;
        Ok(Self {
            group_id,
            size,
            body: body.clone(),
            body_queue,
        })
    }
}

/// One finished header part, as it goes into the join queue.
#[derive(Debug, Serialize, Deserialize)]
pub struct PartEntry {
    /// The part's task id.
    pub task_id: String,
    /// Its place in the header (`group_index`).
    pub group_index: Option<u64>,
    /// How it ended (SUCCESS, FAILURE, REVOKED).
    pub state: TaskState,
    /// Its value, or its exception (`{exc_type, exc_message, exc_module}`).
    pub result: Box<RawValue>,
}

/// `entries` (of parts of the same chord) as one persistent message for
/// the join queue: a JSON list of entries.
pub fn entries_message(entries: &[PartEntry]) -> Result<Message, String> {
    Ok(Message {
        properties: Properties {
            content_type: Some(CONTENT_TYPE_JSON.into()),
            content_encoding: Some(CONTENT_ENCODING_UTF8.into()),
            persistent: true,
            ..Properties::default()
        },
        body: serde_json::to_vec(entries).map_err(|e| e.to_string())?,
    })
}

/// The entries a join queue's message holds: a list of entries, or one
/// entry alone.
pub fn entries_of(message: &Message) -> Result<Vec<PartEntry>, String> {
    // Told apart by their first byte (serde's untagged enums cannot hold
    // the entries' raw results).
    let is_list = message.body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[');
    let entries = if is_list {
        serde_json::from_slice(&message.body)
    } else {
        serde_json::from_slice(&message.body).map(|entry| vec![entry])
    };
    entries.map_err(|error| format!("a chord join entry does not decode: {error}"))
}

impl PartEntry {
    /// What the join counts a part by: its place in the header (a part
    /// that ran twice is counted once), else its task id.
    pub fn key(&self) -> PartKey {
        match self.group_index {
            Some(index) => PartKey::Index(index),
            None => PartKey::Task(self.task_id.clone()),
        }
    }
}

/// What identifies a header part in the join: see [`PartEntry::key`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartKey {
    /// Its `group_index`.
    Index(u64),
    /// Its task id (a part without an index).
    Task(String),
}

fn raw<T: Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>, String> {
    serde_json::value::to_raw_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::task_message::decode_task;

    #[test]
    fn a_join_request_round_trips_through_its_task_message() {
        let body = RawValue::from_string(
            r#"{"task":"tasks.sum_all","args":[],"kwargs":{},"options":{"task_id":"b1"}}"#
                .to_owned(),
        )
        .unwrap();
        let request = JoinRequest {
            group_id: "g1".into(),
            size: 3,
            body,
            body_queue: "q".into(),
        };
        let message = request.message("j1", Some("r1")).unwrap();
        let decoded = decode_task(&message).unwrap();
        assert_eq!(decoded.name, JOIN_TASK);
        assert!(decoded.ignore_result());
        assert_eq!(decoded.root_id.as_deref(), Some("r1"));
        let again = JoinRequest::of(&decoded).unwrap();
        assert_eq!(again.group_id, "g1");
        assert_eq!(again.size, 3);
        assert_eq!(again.body.get(), request.body.get());
        assert_eq!(again.body_queue, "q");
    }

    #[test]
    fn a_malformed_join_request_is_an_error_not_a_panic() {
        let message = JoinRequest {
            group_id: "g1".into(),
            size: 1,
            body: RawValue::from_string("{}".to_owned()).unwrap(),
            body_queue: "q".into(),
        }
        .message("j1", None)
        .unwrap();
        let mut request = decode_task(&message).unwrap();
        request.args.truncate(2);
        assert!(JoinRequest::of(&request)
            .unwrap_err()
            .contains("4 arguments"));
        request.args = vec![
            raw("g1").unwrap(),
            raw("many").unwrap(),
            raw("{}").unwrap(),
            raw("q").unwrap(),
        ];
        assert!(JoinRequest::of(&request).unwrap_err().contains("size"));
    }

    #[test]
    fn entries_round_trip_and_are_keyed_by_their_place() {
        let entry = PartEntry {
            task_id: "t1".into(),
            group_index: Some(2),
            state: TaskState::Success,
            result: raw(&5).unwrap(),
        };
        let message = entries_message(std::slice::from_ref(&entry)).unwrap();
        assert!(message.properties.persistent);
        let read = entries_of(&message).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].key(), PartKey::Index(2));
        assert_eq!(read[0].state, TaskState::Success);
        assert_eq!(read[0].result.get(), "5");
        assert!(entries_of(&Message::default()).is_err());
        // One entry alone reads as well.
        let alone = Message {
            body: serde_json::to_vec(&entry).unwrap(),
            ..Message::default()
        };
        assert_eq!(entries_of(&alone).unwrap()[0].task_id, "t1");
        let several = entries_message(&[
            entry,
            PartEntry {
                task_id: "t2".into(),
                group_index: None,
                state: TaskState::Failure,
                result: raw("boom").unwrap(),
            },
        ])
        .unwrap();
        let keys: Vec<PartKey> = entries_of(&several)
            .unwrap()
            .iter()
            .map(PartEntry::key)
            .collect();
        assert_eq!(keys, [PartKey::Index(2), PartKey::Task("t2".into())]);
    }
}
