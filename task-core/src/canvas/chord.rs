//! [`Chord`]: a group whose values, in order, go to a body once every
//! member finished (Celery's `chord(header, body)`), joined in the result
//! backend as Celery's Redis backend joins chords, so Python and Rust
//! workers run the parts and the body alike, or on RabbitMQ alone
//! ([`chord_join`](crate::protocol::chord_join)) without a backend.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::chain::{Follows, InvalidSignature};
use super::group::{send_all, Group};
use crate::protocol::chord_join::{self, JoinRequest, JOIN_QUEUE_HEADER};
use crate::protocol::result_message;
use crate::{App, AsyncResult, Error, Signature};

/// A header group and a body that receives the header's values.
#[derive(Debug, Clone)]
pub struct Chord<R, S> {
    header: Group<R>,
    body: Signature<S>,
}

/// A chord: once every member of `header` succeeded, `body` runs with the
/// list of their values, in member order, in front of its own arguments.
/// `body` is a [`Partial`](super::Partial) whose first parameter is a `Vec`
/// of the members' result type (`sum_all.partial()` for
/// `sum_all(values: Vec<i64>)`; checked at compile time, as a chain's
/// steps are). A failed member makes the body FAILURE (`ChordError` naming
/// it) and runs the body's errbacks.
///
/// Joined in the result backend when it joins chords (Redis, Celery's
/// protocol: Python and Rust workers share the chord), else on RabbitMQ
/// alone, where Celery's `rpc://` refuses chords (Rust workers run the
/// parts and the join; see [`Chord::apply_async_with`]).
///
/// ```no_run
/// # async fn demo(app: task_core::App) -> Result<(), task_core::Error> {
/// use std::time::Duration;
/// use task_core::canvas::{chord, group, Partial};
/// # let add = |x: i64, y: i64| app.signature("tasks.add").arg(x).arg(y).returning::<i64>();
/// let header = group((1..=3).map(|i| add(i, i)));
/// // A task of this crate: `sum_all.partial()`; by name (any language):
/// let total = Partial::new(app.signature("tasks.sum_all").returning::<i64>());
/// let sum = chord(header, total).apply_async_with(&app).await?;
/// assert_eq!(sum.get(Duration::from_secs(10)).await?, 12);
/// # Ok(()) }
/// ```
pub fn chord<R, P: Follows<Vec<R>>>(header: Group<R>, body: P) -> Chord<R, P::Output> {
    Chord {
        header,
        body: body.into_step().returning(),
    }
}

impl<R, S> Chord<R, S> {
    /// The chord in Celery's dict form: `celery.chord` with the header as a
    /// `celery.group` and the body in the header's group.
    pub fn to_dict(&self) -> Value {
        chord_dict(&self.header, &self.body, None)
    }

    /// The header group.
    pub fn header(&self) -> &Group<R> {
        &self.header
    }

    /// The body.
    pub fn body(&self) -> &Signature<S> {
        &self.body
    }

    /// The same chord, its members' results read as `T` and the body's as
    /// `U` (for a chord read by [`Chord::from_dict`]; unchecked, as the
    /// dict form carries no types).
    pub fn returning<T, U>(self) -> Chord<T, U> {
        Chord {
            header: self.header.returning(),
            body: self.body.returning(),
        }
    }

    pub(super) fn into_parts(self) -> (Group<R>, Signature<S>) {
        (self.header, self.body)
    }
}

impl Chord<Value, Value> {
    /// A chord read from Celery's dict form (see [`Chord::to_dict`]; a
    /// `celery.chord` as Python stores or sends it), untyped: type it with
    /// [`Chord::returning`]. The header is a `celery.group` or a list of
    /// plain signatures ([`Group::from_dict`]), its id the header group's
    /// `task_id`, else the chord's; the body is a plain signature.
    ///
    /// ```
    /// use task_core::canvas::{chord, group, Chord, Partial};
    /// use task_core::Signature;
    /// let add = |x: i64| Signature::<i64>::new("tasks.add").arg(x).arg(1);
    /// let total = Partial::new(Signature::<i64>::new("tasks.sum_all"));
    /// let sent = chord(group([add(1), add(2)]), total);
    /// let read = Chord::from_dict(&sent.to_dict()).unwrap().returning::<i64, i64>();
    /// assert_eq!(read.body().name(), "tasks.sum_all");
    /// assert_eq!(read.to_dict(), sent.to_dict());
    /// ```
    pub fn from_dict(dict: &Value) -> Result<Self, InvalidSignature> {
        let object = dict
            .as_object()
            .ok_or_else(|| InvalidSignature::new("a chord is a JSON object"))?;
        let is_chord = object.get("subtask_type").and_then(Value::as_str) == Some("chord")
            || object.get("task").and_then(Value::as_str) == Some("celery.chord");
        if !is_chord {
            return Err(InvalidSignature::new(
                "not a chord (`subtask_type` is not \"chord\")",
            ));
        }
        let kwargs = object
            .get("kwargs")
            .ok_or_else(|| InvalidSignature::new("a chord has no `kwargs`"))?;
        let header_dict = kwargs
            .get("header")
            .ok_or_else(|| InvalidSignature::new("a chord has no `kwargs.header`"))?;
        let mut header = Group::from_dict(header_dict)?;
        let header_has_id = header_dict
            .pointer("/options/task_id")
            .and_then(Value::as_str)
            .is_some();
        let chord_id = object
            .get("options")
            .and_then(|options| options.get("task_id"))
            .and_then(Value::as_str);
        if let (false, Some(id)) = (header_has_id, chord_id) {
            header = header.with_id(id);
        }
        let body = Signature::from_dict(
            kwargs
                .get("body")
                .ok_or_else(|| InvalidSignature::new("a chord has no `kwargs.body`"))?,
        )?;
        Ok(Chord { header, body })
    }
}

/// A chord as Celery's client puts it in a chain (CELERY_OPERATIONS.md
/// §1.7): `celery.chord` with the header as a `celery.group` of its
/// members (marked with the group id and their index) and the body in the
/// header's group, `reply_to` on the members and the body when given.
pub(crate) fn chord_dict<R, S>(
    header: &Group<R>,
    body: &Signature<S>,
    reply_to: Option<&str>,
) -> Value {
    let mut header_dict = header.to_dict();
    let mut body = body.to_dict();
    if let Some(reply_to) = reply_to {
        let members = header_dict
            .pointer_mut("/kwargs/tasks")
            .and_then(Value::as_array_mut);
        for member in members.into_iter().flatten() {
            set_option(member, "reply_to", reply_to);
        }
        set_option(&mut body, "reply_to", reply_to);
    }
    set_option(&mut body, "group_id", header.id());
    serde_json::json!({
        "task": "celery.chord",
        "args": [],
        "kwargs": {"kwargs": {}, "header": header_dict, "body": body},
        "options": {"task_id": header.id()},
        "subtask_type": "chord",
        "immutable": false,
    })
}

/// Sets option `key` of a signature in Celery's dict form to `value`.
fn set_option(dict: &mut Value, key: &str, value: &str) {
    if let Some(options) = dict.get_mut("options").and_then(Value::as_object_mut) {
        options.insert(key.into(), value.into());
    }
}

impl<R: DeserializeOwned, S: DeserializeOwned> Chord<R, S> {
    /// Sends the chord through the default app; see [`Chord::apply_async_with`].
    pub async fn apply_async(self) -> Result<AsyncResult<S>, Error> {
        self.apply_async_with(&App::current()?).await
    }

    /// Sends the chord through `app`: the body's result is awaited first
    /// (so it cannot be missed), the chord's join is set up, then the
    /// header's members are published with the body in their message
    /// (Celery's `embed.chord`). Returns the body's handle.
    ///
    /// With a result backend that joins chords (Redis) the join is Celery's:
    /// the header's size is written to the backend, and Python and Rust
    /// workers run the parts and the body alike. Otherwise (`rpc://`) the
    /// chord is joined on RabbitMQ alone: a durable join queue receives the
    /// parts' results, and a join task, sent before the header to the queue
    /// every worker consumes join tasks from, publishes the body once every
    /// part is in (see [`chord_join`](crate::protocol::chord_join)); its
    /// parts and join task need Rust workers, and the parts' own results go
    /// to the join only.
    pub async fn apply_async_with(self, app: &App) -> Result<AsyncResult<S>, Error> {
        let Chord { header, mut body } = self;
        if app.is_eager() {
            return run_inline(app, header, body).await;
        }
        if header.is_empty() {
            // Nothing to wait for: the body runs at once with no values.
            return app.send(body.arg(Vec::<()>::new())).await;
        }
        let body_id = body
            .options
            .task_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let body_queue = body
            .options
            .queue
            .as_deref()
            .unwrap_or(app.default_queue())
            .to_owned();
        let mut body_dict = body.to_dict();
        if let Some(options) = body_dict
            .get_mut("options")
            .and_then(serde_json::Value::as_object_mut)
        {
            options.insert("reply_to".into(), app.result_address().await?.into());
            options.insert("group_id".into(), header.id().into());
        }
        let result = app.result::<S>(&body_id).await?;
        let size = header.len();
        let (group_id, mut members) = header.marked_members();
        match app
            .result_backend()
            .filter(|backend| backend.joins_chords())
        {
            Some(backend) => backend.set_chord_size(&group_id, size).await?,
            None => {
                let join_queue =
                    start_broker_join(app, &group_id, size, &body_dict, &body_queue).await?;
                for member in &mut members {
                    member
                        .options
                        .headers
                        .push((JOIN_QUEUE_HEADER.to_owned(), join_queue.clone().into()));
                    // Their results go to the join alone: under `rpc://`
                    // nobody could read them (the caller holds the body's
                    // handle only).
                    member.options.ignore_result = true;
                }
            }
        }
        for member in &mut members {
            member.options.chord = Some(body_dict.clone());
        }
        send_all(app, members, false).await?;
        Ok(result)
    }
}

/// Sets up the join of chord `group_id` (`size` parts) on the broker: its
/// durable join queue, then its join task. Returns the join queue's name,
/// for the header parts.
async fn start_broker_join(
    app: &App,
    group_id: &str,
    size: usize,
    body: &serde_json::Value,
    body_queue: &str,
) -> Result<String, Error> {
    let body = serde_json::value::to_raw_value(body).map_err(|e| Error::EncodeArguments {
        task: chord_join::JOIN_TASK.to_owned(),
        reason: e.to_string(),
    })?;
    let request = JoinRequest {
        group_id: group_id.to_owned(),
        size,
        body,
        body_queue: body_queue.to_owned(),
    };
    start_join_on_broker(app, &request, None).await
}

/// Starts the join of a chord on the broker ([`chord_join`]): declares its
/// durable join queue, then publishes its join task (in the tree
/// `root_id`). Returns the join queue's name, which each header part must
/// carry in its [`JOIN_QUEUE_HEADER`] header. Whoever starts a chord
/// without a result backend that joins chords calls it before publishing
/// the header: a client, or the worker that reaches a chord in a chain.
pub async fn start_join_on_broker(
    app: &App,
    request: &JoinRequest,
    root_id: Option<&str>,
) -> Result<String, Error> {
    let join_queue = chord_join::join_queue_name(&request.group_id);
    app.broker()
        .declare_queue(&chord_join::join_queue_spec(&join_queue))
        .await?;
    let join_id = uuid::Uuid::new_v4().to_string();
    let message = request
        .message(&join_id, root_id)
        .map_err(|reason| Error::EncodeArguments {
            task: chord_join::JOIN_TASK.to_owned(),
            reason,
        })?;
    app.ensure_shared(&app.chord_join_queue_spec()).await?;
    app.broker()
        .publish("", chord_join::JOIN_TASK_QUEUE, &message)
        .await?;
    Ok(join_queue)
}

/// Eager mode (as Celery's `task_always_eager`): the header's members run
/// inline, one after the other, then the body with their values, or the
/// body fails with `ChordError` naming the first member that failed.
async fn run_inline<R, S: DeserializeOwned>(
    app: &App,
    header: Group<R>,
    mut body: Signature<S>,
) -> Result<AsyncResult<S>, Error> {
    let (_, members) = header.marked_members();
    let mut values = Vec::with_capacity(members.len());
    for member in members {
        // Eager results are in once `send` returns.
        let handle = app.send(member.returning::<serde_json::Value>()).await?;
        match handle.get(Duration::from_secs(1)).await {
            Ok(value) => values.push(value),
            Err(error) => {
                let reason = crate::eager::failed_part_reason(handle.id(), &error);
                let body_id = body
                    .options
                    .task_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let failure = result_message::chord_error(&body_id, &reason);
                return Ok(app.failed_result(body_id, &failure));
            }
        }
    }
    match serde_json::value::to_raw_value(&values) {
        Ok(values) => body.args.insert(0, values),
        Err(error) => body.encode_error = Some(error.to_string()),
    }
    app.send(body).await
}
