//! [`Signature`]: a task call with its arguments and options, not yet sent
//! (Celery's `add.s(2, 3)`), and [`CallOptions`], the `apply_async` options.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::broker::Message;
use crate::protocol::task_message::{encode_task, TaskCall};
use crate::trace_context::{TraceParent, TRACEPARENT};
use crate::{App, AsyncResult, Error, Task, TaskContext};

/// When a task stops being worth running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// At this time.
    At(DateTime<Utc>),
    /// This long after it is sent.
    After(Duration),
}

/// Per-call options (Celery's `apply_async` keyword arguments).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Queue to publish to (default: the task's queue, else the app's default queue).
    pub queue: Option<Cow<'static, str>>,
    /// Use this task id instead of a fresh UUID.
    pub task_id: Option<String>,
    /// Run no earlier than this long after sending.
    pub countdown: Option<Duration>,
    /// Run no earlier than this time.
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this.
    pub expires: Option<Expiry>,
    /// Message priority (queues with `x-max-priority` honour it).
    pub priority: Option<u8>,
    /// Hard time limit.
    pub time_limit: Option<Duration>,
    /// Soft time limit.
    pub soft_time_limit: Option<Duration>,
    /// Do not publish or wait for a result.
    pub ignore_result: bool,
    /// Extra message headers (Celery's custom headers and stamps), in the
    /// order set; they cannot replace a protocol header.
    pub headers: Vec<(String, serde_json::Value)>,
    /// Callbacks run after a success with its result (Celery's `link`), as
    /// signatures in Celery's dict form.
    pub link: Vec<serde_json::Value>,
    /// Errbacks run after a failure with the failed task's id (Celery's
    /// `link_error`), in Celery's dict form.
    pub link_error: Vec<serde_json::Value>,
    /// As a callback or chain step, take no result in front of the
    /// arguments (Celery's `.si()`).
    pub immutable: bool,
    /// The group this call is a member of, and its place in it (Celery's
    /// `group` and `group_index` headers); set by [`group`](crate::canvas::group).
    pub group: Option<(String, usize)>,
    /// The chord body this call is a header part of, in Celery's dict form
    /// (the message's `embed.chord`); set by [`chord`](crate::canvas::chord).
    pub chord: Option<serde_json::Value>,
    /// The steps that follow this call in its chain, in Celery's dict form,
    /// the next one last (the message's `embed.chain`); set by
    /// [`Chain`](crate::canvas::Chain).
    pub chain: Vec<serde_json::Value>,
    /// Celery's stamps (`stamps` and `stamped_headers` headers): what
    /// `revoke_by_stamped_headers` matches.
    pub stamps: Vec<(String, serde_json::Value)>,
}

/// A task call, typed by the value it returns: built by `task.s(..)` for
/// `#[task]` functions, or by name with [`Signature::new`] for any task
/// (including Python ones).
///
/// ```no_run
/// # async fn demo() -> Result<(), task_core::Error> {
/// use std::time::Duration;
/// use task_core::Signature;
/// let pending = Signature::<i64>::new("tasks.add")
///     .arg(2)
///     .kwarg("y", 3)
///     .queue("math")
///     .countdown(Duration::from_secs(1))
///     .apply_async()
///     .await?;
/// let sum = pending.get(Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
pub struct Signature<R = serde_json::Value> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) args: Vec<Box<RawValue>>,
    pub(crate) kwargs: Vec<(String, Box<RawValue>)>,
    pub(crate) options: CallOptions,
    pub(crate) encode_error: Option<String>,
    result: PhantomData<fn() -> R>,
}

impl<R> Clone for Signature<R> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            options: self.options.clone(),
            encode_error: self.encode_error.clone(),
            result: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Signature<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("kwargs", &self.kwargs)
            .field("options", &self.options)
            .finish()
    }
}

impl<R> Signature<R> {
    /// A call of the task registered as `name`, with no arguments yet.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            args: Vec::new(),
            kwargs: Vec::new(),
            options: CallOptions::default(),
            encode_error: None,
            result: PhantomData,
        }
    }

    /// A call of `#[task]` type `T`, with its declared defaults.
    pub fn of_task<T: Task<Output = R>>() -> Self {
        let mut signature = Self::new(T::NAME);
        signature.options.queue = T::OPTIONS.queue.map(Cow::Borrowed);
        signature
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The options set so far.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// Changes the result type (for calls by name, which start untyped:
    /// [`App::signature`] gives a `Signature<serde_json::Value>`).
    pub fn returning<T>(self) -> Signature<T> {
        Signature {
            name: self.name,
            args: self.args,
            kwargs: self.kwargs,
            options: self.options,
            encode_error: self.encode_error,
            result: PhantomData,
        }
    }

    /// Appends a positional argument.
    pub fn arg(mut self, value: impl Serialize) -> Self {
        if let Some(raw) = self.encode_argument(&value) {
            self.args.push(raw);
        }
        self
    }

    /// Sets a keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        if let Some(raw) = self.encode_argument(&value) {
            let name = name.into();
            self.kwargs.retain(|(key, _)| *key != name);
            self.kwargs.push((name, raw));
        }
        self
    }

    fn encode_argument(&mut self, value: &impl Serialize) -> Option<Box<RawValue>> {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Some(raw),
            Err(error) => {
                self.encode_error.get_or_insert_with(|| error.to_string());
                None
            }
        }
    }

    /// Publishes to this queue.
    pub fn queue(mut self, queue: impl Into<Cow<'static, str>>) -> Self {
        self.options.queue = Some(queue.into());
        self
    }

    /// Uses this task id.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.options.task_id = Some(id.into());
        self
    }

    /// Runs no earlier than `delay` after sending.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.options.countdown = Some(delay);
        self
    }

    /// Runs no earlier than `time`.
    pub fn eta(mut self, time: DateTime<Utc>) -> Self {
        self.options.eta = Some(time);
        self
    }

    /// Expires `after` sending: a worker that gets it later reports REVOKED.
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.options.expires = Some(Expiry::After(after));
        self
    }

    /// Expires at `time`.
    pub fn expires_at(mut self, time: DateTime<Utc>) -> Self {
        self.options.expires = Some(Expiry::At(time));
        self
    }

    /// Adds a message header that the task's worker can read (Celery's
    /// `apply_async(headers=...)`). A name that is one of the protocol's own
    /// headers (`id`, `task`, `eta`, ...) makes the call fail to encode,
    /// as does a value that is not JSON.
    pub fn header(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(value) => self.options.headers.push((name.into(), value)),
            Err(error) => {
                self.encode_error.get_or_insert_with(|| error.to_string());
            }
        }
        self
    }

    /// Stamps the call (Celery 5.3+'s stamping): `name` = `value` in the
    /// message's `stamps`, listed in its `stamped_headers`. Workers revoke
    /// the calls whose stamps match a `revoke_by_stamped_headers`.
    pub fn stamp(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(value) => self.options.stamps.push((name.into(), value)),
            Err(error) => {
                self.encode_error.get_or_insert_with(|| error.to_string());
            }
        }
        self
    }

    /// Sets the message priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.options.priority = Some(priority);
        self
    }

    /// Sets the hard time limit.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.options.time_limit = Some(limit);
        self
    }

    /// Sets the soft time limit.
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.options.soft_time_limit = Some(limit);
        self
    }

    /// Sends without a result: no reply queue, nothing to wait for.
    pub fn ignore_result(mut self) -> Self {
        self.options.ignore_result = true;
        self
    }
}

/// A call encoded for the wire.
pub(crate) struct EncodedCall {
    /// The task id (the call's own, or a fresh UUID).
    pub(crate) task_id: String,
    /// The protocol v2 message.
    pub(crate) message: Message,
    /// When the task may run, if not at once.
    pub(crate) eta: Option<DateTime<Utc>>,
}

/// What [`Signature::link_error`] takes: a [`Signature`] (unchecked, as in
/// Celery), or a [`Partial`](crate::canvas::Partial) whose task takes a
/// [`FailedTask`](crate::FailedTask) or the failed id (`String`) first.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an errback",
    label = "expected a signature, or a partial taking `FailedTask` or `String` first",
    note = "an errback gets the failed task's id in front of its arguments: its task's first parameter is a `FailedTask` (to receive the failure too) or a `String`"
)]
pub trait Errback: errback::Sealed {
    /// The errback in Celery's dict form.
    #[doc(hidden)]
    fn into_errback(self) -> serde_json::Value;
}

pub(crate) mod errback {
    /// Only this crate's types are errbacks.
    pub trait Sealed {}
}

impl<C> errback::Sealed for Signature<C> {}

impl<C> Errback for Signature<C> {
    fn into_errback(self) -> serde_json::Value {
        self.to_dict()
    }
}

impl<R> Signature<R> {
    /// Encodes this call as a protocol v2 task message whose results go to
    /// `reply_to` (ignored when the call ignores its result), resolving
    /// `countdown` and relative expiry against the current time.
    /// Runs `callback` after this task succeeds, with this task's result in
    /// front of its arguments unless it is [`immutable`](Signature::immutable)
    /// (Celery's `link`); a worker publishes it before it acks this task.
    /// A callback given its own id ([`Signature::task_id`]) answers this
    /// call's caller too, `rpc://` included: `app.result(id)` awaits it
    /// (call it before sending, so that the result cannot be missed).
    pub fn link<C>(mut self, callback: Signature<C>) -> Self {
        self.options.link.push(callback.to_dict());
        self
    }

    /// Runs `errback` after this task fails for good, with the failed task's
    /// id as its first argument (Celery's `link_error`): a signature, or,
    /// checked at compile time, a [`Partial`](crate::canvas::Partial) of a
    /// task whose first parameter is a [`FailedTask`](crate::FailedTask)
    /// (which also receives the failure) or a `String` (the id).
    pub fn link_error(mut self, errback: impl Errback) -> Self {
        self.options.link_error.push(errback.into_errback());
        self
    }

    /// As a callback or chain step, this call takes no result in front of
    /// its arguments (Celery's `.si()`).
    pub fn immutable(mut self) -> Self {
        self.options.immutable = true;
        self
    }

    /// This call in Celery's dict form (`{"task", "args", "kwargs",
    /// "options", "subtask_type", "immutable"}`), as Celery stores and sends
    /// signatures; arguments that could not be encoded are left out (sending
    /// the signature itself reports them).
    pub fn to_dict(&self) -> serde_json::Value {
        let args: Vec<serde_json::Value> = self
            .args
            .iter()
            .filter_map(|arg| serde_json::from_str(arg.get()).ok())
            .collect();
        let kwargs: serde_json::Map<String, serde_json::Value> = self
            .kwargs
            .iter()
            .filter_map(|(key, value)| Some((key.clone(), serde_json::from_str(value.get()).ok()?)))
            .collect();
        let options = &self.options;
        let mut dict_options = serde_json::Map::new();
        if let Some(queue) = &options.queue {
            dict_options.insert("queue".into(), queue.as_ref().into());
        }
        if let Some(id) = &options.task_id {
            dict_options.insert("task_id".into(), id.as_str().into());
        }
        if let Some(priority) = options.priority {
            dict_options.insert("priority".into(), priority.into());
        }
        if let Some(countdown) = options.countdown {
            dict_options.insert("countdown".into(), countdown.as_secs_f64().into());
        }
        if let Some(eta) = options.eta {
            dict_options.insert("eta".into(), eta.to_rfc3339().into());
        }
        match options.expires {
            Some(Expiry::After(after)) => {
                dict_options.insert("expires".into(), after.as_secs_f64().into());
            }
            Some(Expiry::At(time)) => {
                dict_options.insert("expires".into(), time.to_rfc3339().into());
            }
            None => {}
        }
        if let Some(limit) = options.time_limit {
            dict_options.insert("time_limit".into(), limit.as_secs_f64().into());
        }
        if let Some(limit) = options.soft_time_limit {
            dict_options.insert("soft_time_limit".into(), limit.as_secs_f64().into());
        }
        if !options.link.is_empty() {
            dict_options.insert("link".into(), options.link.clone().into());
        }
        if !options.link_error.is_empty() {
            dict_options.insert("link_error".into(), options.link_error.clone().into());
        }
        if let Some((group_id, index)) = &options.group {
            dict_options.insert("group_id".into(), group_id.as_str().into());
            dict_options.insert("group_index".into(), (*index).into());
        }
        if !options.chain.is_empty() {
            dict_options.insert("chain".into(), options.chain.clone().into());
        }
        if let Some(chord) = &options.chord {
            dict_options.insert("chord".into(), chord.clone());
        }
        serde_json::json!({
            "task": self.name.as_ref(),
            "args": args,
            "kwargs": kwargs,
            "options": dict_options,
            "subtask_type": null,
            "immutable": options.immutable,
        })
    }

    pub(crate) fn encode_call(&self, reply_to: Option<&str>) -> Result<EncodedCall, Error> {
        // A call made from inside a running task joins its workflow.
        let parent = crate::current_task();
        let encode_error = |reason: String| Error::EncodeArguments {
            task: self.name.to_string(),
            reason,
        };
        if let Some(reason) = &self.encode_error {
            return Err(encode_error(reason.clone()));
        }
        let options = &self.options;
        let task_id = options
            .task_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let now = crate::clock::now();
        let eta = options
            .eta
            .or(options.countdown.map(|countdown| now + countdown));
        let expires = options.expires.map(|expiry| match expiry {
            Expiry::At(time) => time,
            Expiry::After(after) => now + after,
        });
        let mut message = encode_task(&TaskCall {
            id: &task_id,
            name: &self.name,
            args: &self.args,
            kwargs: &self.kwargs,
            reply_to: reply_to.filter(|_| !options.ignore_result),
            eta,
            expires,
            priority: options.priority,
            time_limit: options.time_limit.map(|d| d.as_secs_f64()),
            soft_time_limit: options.soft_time_limit.map(|d| d.as_secs_f64()),
            ignore_result: options.ignore_result,
            retries: 0,
            root_id: parent.as_ref().map(TaskContext::root_id),
            parent_id: parent.as_ref().map(TaskContext::id),
        })
        .map_err(|e| encode_error(e.to_string()))?;
        let headers = &mut message.properties.headers;
        if let Some((group_id, index)) = &options.group {
            headers.insert_str("group", group_id);
            headers.insert_json("group_index", &serde_json::Value::from(*index));
        }
        if !options.stamps.is_empty() {
            let names: Vec<serde_json::Value> = options
                .stamps
                .iter()
                .map(|(name, _)| name.as_str().into())
                .collect();
            let stamps: serde_json::Map<String, serde_json::Value> =
                options.stamps.iter().cloned().collect();
            headers.insert_json("stamped_headers", &names.into());
            headers.insert_json("stamps", &stamps.into());
        }
        for (name, value) in &options.headers {
            if headers.contains_key(name) {
                return Err(encode_error(format!(
                    "`{name}` is a protocol header: set it through its call option"
                )));
            }
            headers.insert_json(name, value);
        }
        // The trace (unless the caller set the header itself): the current
        // OpenTelemetry span as the parent, else the calling task's span,
        // else a new trace.
        if !headers.contains_key(TRACEPARENT) {
            #[cfg(feature = "opentelemetry")]
            let current = crate::trace_context::otel::current();
            #[cfg(not(feature = "opentelemetry"))]
            let current = None;
            let trace = current
                .or_else(|| parent.as_ref().and_then(TaskContext::trace))
                .unwrap_or_else(TraceParent::new_root);
            headers.insert(TRACEPARENT, trace.header_value());
        }
        if !options.link.is_empty()
            || !options.link_error.is_empty()
            || options.chord.is_some()
            || !options.chain.is_empty()
        {
            let nonempty = |list: Vec<serde_json::Value>| {
                (!list.is_empty()).then(|| serde_json::Value::from(list))
            };
            // A callback or errback given its own id answers this caller
            // too (under `rpc://` Celery's worker sends it to its own reply
            // queue, where nobody waits for it).
            let answering = |list: &Vec<serde_json::Value>| -> Vec<serde_json::Value> {
                list.iter()
                    .cloned()
                    .map(|mut dict| {
                        if let (Some(reply_to), Some(options)) = (
                            reply_to.filter(|_| !options.ignore_result),
                            dict.get_mut("options").and_then(|o| o.as_object_mut()),
                        ) {
                            if options.get("task_id").is_some_and(|id| id.is_string())
                                && !options.get("reply_to").is_some_and(|to| to.is_string())
                            {
                                options.insert("reply_to".into(), reply_to.into());
                            }
                        }
                        dict
                    })
                    .collect()
            };
            let (link, link_error) = (answering(&options.link), answering(&options.link_error));
            let embed = serde_json::json!({
                "callbacks": nonempty(link),
                "errbacks": nonempty(link_error),
                "chain": nonempty(options.chain.clone()),
                "chord": options.chord,
            });
            let kwargs: serde_json::Map<String, serde_json::Value> = self
                .kwargs
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v.get()).ok()?)))
                .collect();
            message.body = serde_json::to_vec(&(&self.args, kwargs, embed))
                .map_err(|e| encode_error(e.to_string()))?;
        }
        Ok(EncodedCall {
            task_id,
            message,
            eta,
        })
    }
}

impl<R: DeserializeOwned> Signature<R> {
    /// Publishes the call through the process's default app and returns once
    /// the broker confirmed it.
    pub async fn apply_async(self) -> Result<AsyncResult<R>, Error> {
        App::current()?.send(self).await
    }

    /// Publishes the call through `app`.
    pub async fn apply_async_with(self, app: &App) -> Result<AsyncResult<R>, Error> {
        app.send(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_in_celerys_dict_form() {
        let callback = Signature::<i64>::new("tasks.mul").arg(10).immutable();
        let sig = Signature::<i64>::new("tasks.add")
            .arg(2)
            .kwarg("y", 3)
            .queue("math")
            .link(callback)
            .link_error(Signature::<()>::new("tasks.on_error"));
        let dict = sig.to_dict();
        assert_eq!(dict["task"], "tasks.add");
        assert_eq!(dict["args"], serde_json::json!([2]));
        assert_eq!(dict["kwargs"], serde_json::json!({"y": 3}));
        assert_eq!(dict["options"]["queue"], "math");
        assert_eq!(dict["options"]["link"][0]["task"], "tasks.mul");
        assert_eq!(dict["options"]["link"][0]["immutable"], true);
        assert_eq!(dict["options"]["link_error"][0]["task"], "tasks.on_error");
        assert_eq!(dict["subtask_type"], serde_json::Value::Null);
        // Sent, the callbacks ride in the body's embed, as Celery sends them.
        let call = sig.encode_call(Some("replies")).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&call.message.body).unwrap();
        assert_eq!(body[0], serde_json::json!([2]));
        assert_eq!(body[2]["callbacks"][0]["task"], "tasks.mul");
        assert_eq!(body[2]["errbacks"][0]["task"], "tasks.on_error");
        assert_eq!(body[2]["chain"], serde_json::Value::Null);
    }
    use crate::{Lineage, TaskContext};

    fn lineage_headers(call: &EncodedCall) -> (Option<String>, Option<String>) {
        let headers = &call.message.properties.headers;
        let text = |key| headers.get_str(key).map(str::to_owned);
        (text("root_id"), text("parent_id"))
    }

    #[test]
    fn extra_headers_travel_and_cannot_replace_protocol_headers() {
        let call = Signature::<i64>::new("tests.h")
            .header("tenant", "acme")
            .header("trace", serde_json::json!({"span": 7}))
            .encode_call(None)
            .unwrap();
        let headers = call.message.properties.headers.to_json();
        assert_eq!(headers["tenant"], "acme");
        assert_eq!(headers["trace"], serde_json::json!({"span": 7}));
        assert_eq!(headers["task"], "tests.h");
        let refused = Signature::<i64>::new("tests.h")
            .header("task", "other")
            .encode_call(None);
        match refused {
            Err(Error::EncodeArguments { reason, .. }) => {
                assert!(reason.contains("`task` is a protocol header"), "{reason}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("the protocol header was replaced"),
        }
    }

    #[tokio::test]
    async fn a_call_from_inside_a_task_joins_its_workflow() {
        let signature = Signature::<i64>::new("tests.child").task_id("child-1");
        let top = signature.encode_call(None).unwrap();
        assert_eq!(
            lineage_headers(&top),
            (Some("child-1".to_owned()), None),
            "a top-level call is its own root"
        );

        let first = TaskContext::new("parent-1".into(), "t".into(), "q".into(), 0, None);
        let from_first = first.scope(async { signature.encode_call(None) }).await;
        assert_eq!(
            lineage_headers(&from_first.unwrap()),
            (Some("parent-1".to_owned()), Some("parent-1".to_owned()))
        );

        let deeper = TaskContext::new("parent-2".into(), "t".into(), "q".into(), 0, None)
            .with_lineage(Lineage {
                root_id: Some("root-0".into()),
                parent_id: Some("parent-1".into()),
                ..Lineage::default()
            });
        let from_deeper = deeper
            .scope_blocking(|| signature.encode_call(None))
            .unwrap();
        assert_eq!(
            lineage_headers(&from_deeper),
            (Some("root-0".to_owned()), Some("parent-2".to_owned()))
        );
    }
}
