//! [`Group`]: signatures sent together, and [`GroupResult`], their results
//! in order.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, Stream};
use serde::de::DeserializeOwned;

use super::chain::InvalidSignature;
use crate::{App, AsyncResult, Error, Signature};

/// Signatures sent together as one group (Celery's `group(...)`): each
/// member is published with the group's id and its index, and their
/// results come back as one [`GroupResult`], in the members' order.
///
/// ```no_run
/// # async fn demo(app: task_core::App) -> Result<(), task_core::Error> {
/// use std::time::Duration;
/// use task_core::canvas::group;
/// # let add = |x: i64, y: i64| app.signature("tasks.add").arg(x).arg(y).returning::<i64>();
/// let sums = group((0..10).map(|i| add(i, i))).apply_async_with(&app).await?;
/// let values: Vec<i64> = sums.get(Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Group<R> {
    pub(crate) id: String,
    pub(crate) members: Vec<Signature<R>>,
}

/// A group of these signatures (all returning `R`), with a fresh group id.
pub fn group<R>(members: impl IntoIterator<Item = Signature<R>>) -> Group<R> {
    Group {
        id: uuid::Uuid::new_v4().to_string(),
        members: members.into_iter().collect(),
    }
}

impl<R> Group<R> {
    /// Uses `id` as the group id (Celery's `group_id`).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How many members it has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The group in Celery's dict form (`{"task": "celery.group", "args":
    /// [], "kwargs": {"tasks": [...]}, "options": {"task_id": <group id>},
    /// "subtask_type": "group", "immutable": false}`), each member marked
    /// with the group id and its index.
    pub fn to_dict(&self) -> serde_json::Value {
        let tasks: Vec<serde_json::Value> = self
            .members
            .iter()
            .enumerate()
            .map(|(index, member)| {
                let mut dict = member.to_dict();
                if let Some(options) = dict
                    .get_mut("options")
                    .and_then(serde_json::Value::as_object_mut)
                {
                    options.insert("group_id".into(), self.id.as_str().into());
                    options.insert("group_index".into(), index.into());
                }
                dict
            })
            .collect();
        serde_json::json!({
            "task": "celery.group",
            "args": [],
            "kwargs": {"tasks": tasks},
            "options": {"task_id": self.id},
            "subtask_type": "group",
            "immutable": false,
        })
    }

    /// The same group, its members' results read as `T` (for a group read
    /// by [`Group::from_dict`]).
    pub fn returning<T>(self) -> Group<T> {
        Group {
            id: self.id,
            members: self.members.into_iter().map(Signature::returning).collect(),
        }
    }

    /// The members, each marked with the group id and its index.
    pub(crate) fn marked_members(self) -> (String, Vec<Signature<R>>) {
        let id = self.id;
        let members = self
            .members
            .into_iter()
            .enumerate()
            .map(|(index, mut member)| {
                member.options.group = Some((id.clone(), index));
                member
            })
            .collect();
        (id, members)
    }
}

impl Group<serde_json::Value> {
    /// A group read from Celery's dict form (see [`Group::to_dict`]; a
    /// `celery.group` as Python stores or sends it, or a plain list of
    /// signatures), untyped: type it with [`Group::returning`]. Its id is
    /// the dict's `options.task_id` (a fresh one when it has none); each
    /// member is read by [`Signature::from_dict`], so a member that is
    /// itself a chain, group or chord is refused.
    ///
    /// ```
    /// use task_core::canvas::{group, Group};
    /// use task_core::Signature;
    /// let add = |x: i64| Signature::<i64>::new("tasks.add").arg(x).arg(1);
    /// let sent = group([add(1), add(2)]);
    /// let read = Group::from_dict(&sent.to_dict()).unwrap().returning::<i64>();
    /// assert_eq!((read.id(), read.len()), (sent.id(), 2));
    /// assert_eq!(read.to_dict(), sent.to_dict());
    /// ```
    pub fn from_dict(dict: &serde_json::Value) -> Result<Self, InvalidSignature> {
        use serde_json::Value;
        let (members, id) = match dict {
            Value::Array(members) => (members, None),
            Value::Object(object) => {
                let is_group = object.get("subtask_type").and_then(Value::as_str) == Some("group")
                    || object.get("task").and_then(Value::as_str) == Some("celery.group");
                if !is_group {
                    return Err(InvalidSignature::new(
                        "not a group (`subtask_type` is not \"group\")",
                    ));
                }
                let members = object
                    .get("kwargs")
                    .and_then(|kwargs| kwargs.get("tasks"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        InvalidSignature::new("a group lists its members in `kwargs.tasks`")
                    })?;
                let id = object
                    .get("options")
                    .and_then(|options| options.get("task_id"))
                    .and_then(Value::as_str);
                (members, id)
            }
            _ => {
                return Err(InvalidSignature::new(
                    "a group is a JSON object or a list of signatures",
                ))
            }
        };
        let members = members
            .iter()
            .map(Signature::from_dict)
            .collect::<Result<Vec<_>, _>>()?;
        let read = group(members);
        Ok(match id {
            Some(id) => read.with_id(id),
            None => read,
        })
    }
}

impl<R: DeserializeOwned> Group<R> {
    /// Publishes every member through the default app (all at once: their
    /// publisher confirms overlap) and returns once the broker confirmed
    /// them all.
    pub async fn apply_async(self) -> Result<GroupResult<R>, Error> {
        self.apply_async_with(&App::current()?).await
    }

    /// Publishes every member through `app`; see [`Group::apply_async`].
    pub async fn apply_async_with(self, app: &App) -> Result<GroupResult<R>, Error> {
        let (id, members) = self.marked_members();
        let results = send_all(app, members, true).await?;
        Ok(GroupResult { id, results })
    }
}

/// Publishes `members` concurrently; the handles in the members' order
/// (waiting for their results only when `awaited`).
pub(crate) async fn send_all<R: DeserializeOwned>(
    app: &App,
    members: Vec<Signature<R>>,
    awaited: bool,
) -> Result<Vec<AsyncResult<R>>, Error> {
    let sends = members
        .into_iter()
        .map(|member| app.send_awaited(member, awaited));
    futures_util::future::try_join_all(sends).await
}

/// The results of a group, in the members' order (Celery's `GroupResult`).
#[derive(Debug)]
pub struct GroupResult<R> {
    id: String,
    results: Vec<AsyncResult<R>>,
}

impl<R> GroupResult<R> {
    /// The handles `results` of group `id`, in member order.
    pub(crate) fn from_parts(id: String, results: Vec<AsyncResult<R>>) -> Self {
        Self { id, results }
    }

    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Each member's handle, in order.
    pub fn results(&self) -> &[AsyncResult<R>] {
        &self.results
    }

    /// How many members it has.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Whether every member is finished.
    pub fn ready(&self) -> bool {
        self.results.iter().all(AsyncResult::ready)
    }

    /// How many members succeeded so far (Celery's `completed_count`).
    pub fn completed_count(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.state() == crate::TaskState::Success)
            .count()
    }

    /// Whether any member failed (or was revoked or rejected) so far.
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|r| r.ready() && r.state() != crate::TaskState::Success)
    }

    /// Saves the group's member ids in the result backend (Celery's
    /// `GroupResult.save`), so any process can [`restore`](Self::restore) it.
    pub async fn save(&self, app: &App) -> Result<(), Error> {
        let ids: Vec<String> = self.results.iter().map(|r| r.id().to_owned()).collect();
        app.save_group(&self.id, &ids).await
    }
}

impl<R: DeserializeOwned> GroupResult<R> {
    /// A saved group, restored by id from the result backend (Celery's
    /// `GroupResult.restore`), typed by the caller; `None` when none is
    /// saved under `group_id`.
    pub async fn restore(app: &App, group_id: &str) -> Result<Option<Self>, Error> {
        let Some(ids) = app.restore_group(group_id).await? else {
            return Ok(None);
        };
        let results =
            futures_util::future::try_join_all(ids.iter().map(|id| app.result(id))).await?;
        Ok(Some(Self {
            id: group_id.to_owned(),
            results,
        }))
    }

    /// Waits up to `timeout` (for the whole group) for every member and
    /// returns their values in order, or the first failure in member order
    /// (Celery's `join` with `propagate=True`).
    pub async fn get(&self, timeout: Duration) -> Result<Vec<R>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut values = Vec::with_capacity(self.results.len());
        for result in &self.results {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            values.push(result.get(left).await?);
        }
        Ok(values)
    }

    /// Waits up to `timeout` (for the whole group) and returns each
    /// member's outcome in order, failures included.
    pub async fn join_all(&self, timeout: Duration) -> Vec<Result<R, Error>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut outcomes = Vec::with_capacity(self.results.len());
        for result in &self.results {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            outcomes.push(result.get(left).await);
        }
        outcomes
    }

    /// Each member's outcome as it finishes, with its index, within
    /// `timeout` for each.
    pub fn as_completed(
        &self,
        timeout: Duration,
    ) -> impl Stream<Item = (usize, Result<R, Error>)> + '_ {
        self.results
            .iter()
            .enumerate()
            .map(|(index, result)| async move { (index, result.get(timeout).await) })
            .collect::<FuturesUnordered<_>>()
    }
}
