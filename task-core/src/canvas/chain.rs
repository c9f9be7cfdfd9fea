//! [`Chain`]: tasks run one after the other, each step given the previous
//! step's result in front of its own arguments (Celery's `chain(...)` /
//! `a | b | c`), typed at compile time by [`Partial`] and [`Follows`]; and
//! signatures read from Celery's dict form ([`Signature::from_dict`],
//! [`Chain::from_dict`]).
//!
//! On the wire a chain is Celery's: only the first step is published, its
//! message's `embed.chain` holding the remaining steps in reverse order (the
//! next one last), each frozen with its `task_id` and the caller's
//! `reply_to`, so that whichever worker runs a step (Rust or Python)
//! publishes the next one, and the last step's result reaches the caller.
//! A chord step ([`Chain::then_chord`]) is a `celery.chord` element, as
//! Celery sends `a | group(..) | b`: the worker that runs the step before it
//! publishes its header, and the steps after it follow its body.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::chord::{chord_dict, Chord};
use super::group::{group, Group, GroupResult};
use crate::signature::{errback, Errback};
use crate::{App, AsyncResult, Error, FailedTask, Signature};

/// A call of a task with every argument but its first, which the previous
/// step of a [`Chain`] supplies: its result, of type `A`. `R` is the task's
/// own result type. `#[task]` generates it as `task.partial(..)` for tasks
/// with at least one argument (`add.partial(10)` is Celery's `add.s(10)` as
/// a chain step); for a task known by name, [`Partial::new`] states `A`.
pub struct Partial<A, R> {
    signature: Signature<R>,
    takes: PhantomData<fn(A)>,
}

impl<A, R> Partial<A, R> {
    /// A step calling `signature` with a value of type `A` in front of its
    /// arguments. Nothing checks that the task's first parameter takes an
    /// `A` (the task may be a Python one): `#[task]`'s `partial` does.
    ///
    /// ```
    /// use task_core::canvas::Partial;
    /// use task_core::Signature;
    /// // py.add(x, y): x comes from the previous step.
    /// let add_ten: Partial<i64, i64> = Partial::new(Signature::new("py.add").arg(10));
    /// ```
    pub fn new(signature: Signature<R>) -> Self {
        Self {
            signature,
            takes: PhantomData,
        }
    }

    /// The call without its first argument.
    pub fn signature(&self) -> &Signature<R> {
        &self.signature
    }

    /// The call without its first argument, to send as it is (Celery's
    /// partial signature).
    pub fn into_signature(self) -> Signature<R> {
        self.signature
    }

    /// Sets the step's options through its signature's builder methods:
    /// `add.partial(10).with(|s| s.queue("math").countdown(delay))`.
    pub fn with(self, options: impl FnOnce(Signature<R>) -> Signature<R>) -> Self {
        Self::new(options(self.signature))
    }

    /// The full call, with `first` as its first argument.
    pub fn complete(self, first: A) -> Signature<R>
    where
        A: Serialize,
    {
        let mut signature = self.signature;
        match serde_json::value::to_raw_value(&first) {
            Ok(raw) => signature.args.insert(0, raw),
            Err(error) => {
                signature
                    .encode_error
                    .get_or_insert_with(|| error.to_string());
            }
        }
        signature
    }
}

impl<A, R> Clone for Partial<A, R> {
    fn clone(&self) -> Self {
        Self::new(self.signature.clone())
    }
}

impl<A, R> fmt::Debug for Partial<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partial")
            .field("takes", &std::any::type_name::<A>())
            .field("signature", &self.signature)
            .finish()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A step that can follow a step whose result is `R`: a [`Partial<R, _>`]
/// whose task takes exactly an `R` first. The type must match exactly
/// (`i64` does not follow `i32`, though JSON would carry it): whether a
/// value's JSON form decodes as another type is not something the compiler
/// can tell, so a mismatch is a compile error, and a deliberate conversion
/// is spelled out with [`Signature::returning`] or [`Partial::new`].
#[diagnostic::on_unimplemented(
    message = "this step does not take `{R}` as its first argument (a chain step takes the previous step's result, a chord's body the header's values)",
    label = "expected a step taking `{R}` first",
    note = "`.then(task.partial(..))` and `chord(header, task.partial(..))` put what comes before in front of the step's arguments: the task's first parameter must be `{R}`",
    note = "a chain step that takes no previous result is added with `.then_immutable(task.s(..))`"
)]
pub trait Follows<R>: sealed::Sealed {
    /// The result of the step.
    type Output;

    /// The step, untyped.
    #[doc(hidden)]
    fn into_step(self) -> Signature<Value>;
}

impl<A, R> sealed::Sealed for Partial<A, R> {}

impl<R> errback::Sealed for Partial<FailedTask, R> {}

impl<R> Errback for Partial<FailedTask, R> {
    fn into_errback(self) -> Value {
        self.signature.to_dict()
    }
}

impl<R> errback::Sealed for Partial<String, R> {}

impl<R> Errback for Partial<String, R> {
    fn into_errback(self) -> Value {
        self.signature.to_dict()
    }
}

impl<A, R> Follows<A> for Partial<A, R> {
    type Output = R;

    fn into_step(self) -> Signature<Value> {
        self.signature.returning()
    }
}

/// Tasks run one after the other (Celery's `chain`), typed by the result of
/// its last step. Built with [`chain`] from a full first call, then
/// [`then`](Chain::then) for each step that takes the previous result, or
/// [`then_immutable`](Chain::then_immutable) for one that does not. A step
/// that fails ends the chain: the steps after it are told FAILURE with the
/// same error, so the chain's handle reports it.
///
/// ```no_run
/// # use task_core::{task, TaskError};
/// # #[task(name = "doc.chain.add")]
/// # async fn add(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x + y) }
/// # #[task(name = "doc.chain.mul")]
/// # async fn mul(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x * y) }
/// # async fn demo(app: task_core::App) -> Result<(), task_core::Error> {
/// use std::time::Duration;
/// use task_core::canvas::chain;
/// // mul(add(add(2, 3), 10), 2)
/// let steps = chain(add.s(2, 3)).then(add.partial(10)).then(mul.partial(2));
/// let result = steps.apply_async_with(&app).await?;
/// assert_eq!(result.get(Duration::from_secs(10)).await?, 30);
/// # Ok(()) }
/// ```
pub struct Chain<R> {
    steps: Vec<ChainStep>,
    result: PhantomData<fn() -> R>,
}

/// One step of a [`Chain`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChainStep {
    /// A task.
    Task(Signature<Value>),
    /// A chord (Celery's `group(..)` followed by a task in a chain): each
    /// member of `header` gets the previous step's result in front of its
    /// arguments, `body` their values in member order.
    Chord {
        /// The members, run at once.
        header: Group<Value>,
        /// Runs once every member succeeded.
        body: Signature<Value>,
    },
}

impl ChainStep {
    /// The call whose result is the step's: the task, or the chord's body.
    fn outcome_signature(&mut self) -> &mut Signature<Value> {
        match self {
            ChainStep::Task(signature) => signature,
            ChainStep::Chord { body, .. } => body,
        }
    }
}

/// A chain that starts with the call `first`.
pub fn chain<R>(first: Signature<R>) -> Chain<R> {
    Chain {
        steps: vec![ChainStep::Task(first.returning())],
        result: PhantomData,
    }
}

impl<R> Clone for Chain<R> {
    fn clone(&self) -> Self {
        Self {
            steps: self.steps.clone(),
            result: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Chain<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain").field("steps", &self.steps).finish()
    }
}

impl<R> Chain<R> {
    /// Appends `next`, which receives this chain's result in front of its
    /// arguments. Compiles only when `next` takes an `R` first (see
    /// [`Follows`]).
    pub fn then<P: Follows<R>>(mut self, next: P) -> Chain<P::Output> {
        self.steps.push(ChainStep::Task(next.into_step()));
        self.retyped()
    }

    /// Appends `next`, which runs after this chain succeeded but does not
    /// receive its result (Celery's `.si()`: `immutable`).
    pub fn then_immutable<S>(mut self, next: Signature<S>) -> Chain<S> {
        self.steps
            .push(ChainStep::Task(next.immutable().returning()));
        self.retyped()
    }

    /// Appends a chord (Celery's `chain | group(..) | body`): every member
    /// of `header` receives this chain's result in front of its arguments
    /// and they run at once; `body` receives their values, in member
    /// order, once all succeeded, and the chain goes on from the body's
    /// result. Compiles only when each member takes an `R` first and the
    /// body a `Vec` of the members' result type. A failed member makes the
    /// body, and so the chain, FAILURE (`ChordError` naming it).
    ///
    /// The worker that runs the step before the chord starts it, joined as
    /// [`chord`](super::chord) says (in the Redis result backend, else on
    /// RabbitMQ alone); eager mode runs it inline.
    ///
    /// ```no_run
    /// # use task_core::{task, TaskError};
    /// # #[task(name = "doc.then_chord.add")]
    /// # async fn add(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x + y) }
    /// # #[task(name = "doc.then_chord.sum_all")]
    /// # async fn sum_all(values: Vec<i64>) -> Result<i64, TaskError> { Ok(values.iter().sum()) }
    /// # async fn demo(app: task_core::App) -> Result<(), task_core::Error> {
    /// use std::time::Duration;
    /// use task_core::canvas::chain;
    /// // add(1, 1), then add(2, 10) and add(2, 20) at once, then their sum.
    /// let steps = chain(add.s(1, 1))
    ///     .then_chord([add.partial(10), add.partial(20)], sum_all.partial());
    /// let total = steps.apply_async_with(&app).await?;
    /// assert_eq!(total.get(Duration::from_secs(10)).await?, 34);
    /// # Ok(()) }
    /// ```
    pub fn then_chord<H, P>(
        mut self,
        header: impl IntoIterator<Item = H>,
        body: P,
    ) -> Chain<P::Output>
    where
        H: Follows<R>,
        P: Follows<Vec<H::Output>>,
    {
        let header = group(header.into_iter().map(Follows::into_step));
        self.steps.push(ChainStep::Chord {
            header,
            body: body.into_step(),
        });
        self.retyped()
    }

    /// Ends the chain with a group (Celery's `chain(a, group(b, c))`): every
    /// member gets this chain's result in front of its arguments and they
    /// run at once; the chain's handle is their [`GroupResult`], in member
    /// order. Compiles only when each member takes an `R` first. Nothing
    /// can follow (Celery turns a group followed by a step into a chord:
    /// [`Chain::then_chord`]).
    ///
    /// ```no_run
    /// # use task_core::{task, TaskError};
    /// # #[task(name = "doc.then_group.add")]
    /// # async fn add(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x + y) }
    /// # #[task(name = "doc.then_group.mul")]
    /// # async fn mul(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x * y) }
    /// # async fn demo(app: task_core::App) -> Result<(), task_core::Error> {
    /// use std::time::Duration;
    /// use task_core::canvas::chain;
    /// // add(1, 1), then add(2, 10) and mul(2, 3) at once.
    /// let both = chain(add.s(1, 1))
    ///     .then_group([add.partial(10), mul.partial(3)])
    ///     .apply_async_with(&app)
    ///     .await?;
    /// assert_eq!(both.get(Duration::from_secs(10)).await?, vec![12, 6]);
    /// # Ok(()) }
    /// ```
    pub fn then_group<H: Follows<R>>(
        self,
        members: impl IntoIterator<Item = H>,
    ) -> ChainToGroup<H::Output> {
        ChainToGroup {
            steps: self.steps,
            group: group(members.into_iter().map(Follows::into_step)),
            result: PhantomData,
        }
    }

    /// Runs `callback` after the chain's last step succeeds, with its
    /// result in front of its arguments unless it is immutable (Celery's
    /// `chain.link`: the last step's `link`; a chord step's body).
    pub fn link<C>(mut self, callback: Signature<C>) -> Self {
        let callback = callback.to_dict();
        if let Some(last) = self.steps.last_mut() {
            last.outcome_signature().options.link.push(callback);
        }
        self
    }

    /// Runs `errback` when a step fails, with the failed step's id in front
    /// of its arguments (Celery's `chain.link_error`: every step's
    /// `link_error`; a chord step's body, which fails when a member does).
    pub fn link_error(mut self, errback: impl Errback) -> Self {
        let errback = errback.into_errback();
        for step in &mut self.steps {
            step.outcome_signature()
                .options
                .link_error
                .push(errback.clone());
        }
        self
    }

    /// Changes the result type (for chains read with
    /// [`Chain::from_dict`], which start untyped).
    pub fn returning<T>(self) -> Chain<T> {
        self.retyped()
    }

    fn retyped<T>(self) -> Chain<T> {
        Chain {
            steps: self.steps,
            result: PhantomData,
        }
    }

    /// Its steps, in order, untyped.
    pub fn steps(&self) -> &[ChainStep] {
        &self.steps
    }

    /// How many steps it has (at least one).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it has no steps (never: a chain starts with a call).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The chain in Celery's dict form, as Celery serialises a chain:
    /// `{"task": "celery.chain", "args": [], "kwargs": {"tasks": [...]},
    /// "options": {}, "subtask_type": "chain", "immutable": false}`, its
    /// steps in order, each in [`Signature::to_dict`]'s form.
    pub fn to_dict(&self) -> Value {
        let tasks: Vec<Value> = self.steps.iter().map(ChainStep::to_dict).collect();
        serde_json::json!({
            "task": "celery.chain",
            "args": [],
            "kwargs": {"tasks": tasks},
            "options": {},
            "subtask_type": "chain",
            "immutable": false,
        })
    }
}

/// The first of `steps`, frozen: every task gets its id (its own if set),
/// and the first carries the steps after it, reversed, each with its id
/// and `reply_to` (Celery's `embed.chain`, a chord as a `celery.chord`
/// element among them). Returns it with the id of the task whose result is
/// the chain's.
fn freeze(steps: Vec<ChainStep>, reply_to: &str) -> Result<(Signature<Value>, String), Error> {
    {
        let mut steps = steps.into_iter();
        let Some(ChainStep::Task(mut first)) = steps.next() else {
            return Err(Error::EncodeArguments {
                task: "celery.chain".to_owned(),
                reason: "a chain starts with a task".to_owned(),
            });
        };
        let mut last_id = freeze_task(&mut first)?;
        let mut frozen = Vec::with_capacity(steps.len());
        for mut step in steps {
            last_id = match &mut step {
                ChainStep::Task(task) => freeze_task(task)?,
                ChainStep::Chord { header, body } => {
                    for member in &mut header.members {
                        freeze_task(member)?;
                    }
                    freeze_task(body)?
                }
            };
            frozen.push(step);
        }
        // Reversed, the next step last; a chord's body is frozen into the
        // header's group, and the steps after the chord stay in this list:
        // whoever applies the chord hands them to its body, as Celery does.
        let after: Vec<Value> = frozen
            .into_iter()
            .rev()
            .map(|step| match step {
                ChainStep::Task(task) => with_reply_to(task.to_dict(), reply_to),
                ChainStep::Chord { header, body } => chord_dict(&header, &body, Some(reply_to)),
            })
            .collect();
        first.options.chain = after;
        Ok((first, last_id))
    }
}

impl ChainStep {
    /// The step in Celery's dict form: a task's [`Signature::to_dict`], or
    /// a `celery.chord` whose header is a `celery.group`.
    pub fn to_dict(&self) -> Value {
        match self {
            Self::Task(task) => task.to_dict(),
            Self::Chord { header, body } => chord_dict(header, body, None),
        }
    }
}

/// Gives `task` its id unless it has one; refuses it if its arguments did
/// not encode. Returns the id.
fn freeze_task(task: &mut Signature<Value>) -> Result<String, Error> {
    if let Some(reason) = &task.encode_error {
        return Err(Error::EncodeArguments {
            task: task.name.to_string(),
            reason: reason.clone(),
        });
    }
    Ok(task
        .options
        .task_id
        .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
        .clone())
}

fn with_reply_to(mut dict: Value, reply_to: &str) -> Value {
    if let Some(options) = dict.get_mut("options").and_then(Value::as_object_mut) {
        options.insert("reply_to".into(), reply_to.into());
    }
    dict
}

impl<R: DeserializeOwned> Chain<R> {
    /// Sends the chain through the process's default app; see
    /// [`Chain::apply_async_with`].
    pub async fn apply_async(self) -> Result<AsyncResult<R>, Error> {
        self.apply_async_with(&App::current()?).await
    }

    /// Sends the chain through `app` and returns the handle of its last
    /// step (awaited before anything is published, so its result cannot be
    /// missed): the first step is published with the others in its
    /// message's `embed.chain`, reversed, each frozen with its task id and
    /// this app's `reply_to`; the worker that runs a step publishes the
    /// next. Each step keeps its own options (queue, countdown, expiry,
    /// time limits, priority). An eager app runs the steps inline, through
    /// the same messages.
    pub async fn apply_async_with(self, app: &App) -> Result<AsyncResult<R>, Error> {
        let steps = match <[ChainStep; 1]>::try_from(self.steps) {
            Ok([ChainStep::Task(first)]) => return app.send(first.returning()).await,
            Ok([step]) => vec![step],
            Err(steps) => steps,
        };
        let reply_to = app.result_address().await?;
        let (first, last_id) = freeze(steps, &reply_to)?;
        let result = app.result::<R>(&last_id).await?;
        app.send_awaited(first, false).await?;
        Ok(result)
    }
}

/// A chain that ends with a group ([`Chain::then_group`]), typed by the
/// members' result type: its handle is their [`GroupResult`].
pub struct ChainToGroup<T> {
    steps: Vec<ChainStep>,
    group: Group<Value>,
    result: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ChainToGroup<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainToGroup")
            .field("steps", &self.steps)
            .field("group", &self.group)
            .finish()
    }
}

impl<T: DeserializeOwned> ChainToGroup<T> {
    /// Sends it through the process's default app; see
    /// [`ChainToGroup::apply_async_with`].
    pub async fn apply_async(self) -> Result<GroupResult<T>, Error> {
        self.apply_async_with(&App::current()?).await
    }

    /// Sends it through `app` as Celery's client sends it: the chain's
    /// steps frozen as [`Chain::apply_async_with`] freezes them, the group
    /// as a `celery.group` element after them, each member frozen with its
    /// id and this app's `reply_to`, so the worker that runs the last step
    /// publishes the members. Returns the members' handles (awaited before
    /// anything is published).
    pub async fn apply_async_with(self, app: &App) -> Result<GroupResult<T>, Error> {
        let ChainToGroup { steps, group, .. } = self;
        let reply_to = app.result_address().await?;
        let (group_id, mut members) = group.marked_members();
        let mut ids = Vec::with_capacity(members.len());
        for member in &mut members {
            ids.push(freeze_task(member)?);
        }
        let tasks: Vec<Value> = members
            .iter()
            .map(|member| with_reply_to(member.to_dict(), &reply_to))
            .collect();
        let group_dict = serde_json::json!({
            "task": "celery.group",
            "args": [],
            "kwargs": {"tasks": tasks},
            "options": {"task_id": group_id},
            "subtask_type": "group",
            "immutable": false,
        });
        let (mut first, _) = freeze(steps, &reply_to)?;
        // Reversed: the last step first.
        first.options.chain.insert(0, group_dict);
        let mut results = Vec::with_capacity(ids.len());
        for id in &ids {
            results.push(app.result::<T>(id).await?);
        }
        app.send_awaited(first, false).await?;
        Ok(GroupResult::from_parts(group_id, results))
    }
}

impl Chain<Value> {
    /// A chain read from Celery's dict form (see [`Chain::to_dict`]; a
    /// `celery.chain` signature as Python stores or sends it), untyped:
    /// type it with [`Chain::returning`]. Each step is read by
    /// [`ChainStep::from_dict`].
    pub fn from_dict(dict: &Value) -> Result<Self, InvalidSignature> {
        let object = dict
            .as_object()
            .ok_or_else(|| InvalidSignature::new("a chain is a JSON object"))?;
        let is_chain = object.get("subtask_type").and_then(Value::as_str) == Some("chain")
            || object.get("task").and_then(Value::as_str) == Some("celery.chain");
        if !is_chain {
            return Err(InvalidSignature::new(
                "not a chain (`subtask_type` is not \"chain\"): read it with Signature::from_dict",
            ));
        }
        let tasks = object
            .get("kwargs")
            .and_then(|kwargs| kwargs.get("tasks"))
            .and_then(Value::as_array)
            .ok_or_else(|| InvalidSignature::new("a chain lists its steps in `kwargs.tasks`"))?;
        if tasks.is_empty() {
            return Err(InvalidSignature::new("a chain needs at least one step"));
        }
        let steps = tasks
            .iter()
            .map(ChainStep::from_dict)
            .collect::<Result<Vec<_>, _>>()?;
        if !matches!(steps.first(), Some(ChainStep::Task(_))) {
            return Err(InvalidSignature::new("a chain starts with a task"));
        }
        Ok(Chain {
            steps,
            result: PhantomData,
        })
    }
}

impl ChainStep {
    /// A chain step read from Celery's dict form: a plain signature
    /// ([`Signature::from_dict`]) or a `celery.chord` (its header a
    /// `celery.group` or a list of plain signatures, its body a plain
    /// signature). A group (in a Celery chain only ever the last step) or a
    /// nested chain is refused.
    pub fn from_dict(dict: &Value) -> Result<Self, InvalidSignature> {
        if dict.get("subtask_type").and_then(Value::as_str) != Some("chord") {
            return Signature::from_dict(dict).map(Self::Task);
        }
        let chord = Chord::from_dict(dict)?;
        let (header, body) = chord.into_parts();
        Ok(Self::Chord { header, body })
    }
}

/// A JSON value that is not a signature in Celery's dict form, or one this
/// crate cannot send (a nested group or chord), with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a signature this crate can read: {reason}")]
pub struct InvalidSignature {
    reason: String,
}

impl InvalidSignature {
    pub(super) fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Signature<Value> {
    /// A plain signature read from Celery's dict form (`{"task", "args",
    /// "kwargs", "options", "subtask_type", "immutable"}`, as
    /// [`Signature::to_dict`] writes it and Celery stores and sends it),
    /// untyped: type it with [`Signature::returning`]. The options read are
    /// `queue`, `task_id`, `priority`, `countdown`, `eta`, `expires`,
    /// `time_limit`, `soft_time_limit`, `link` and `link_error`; others
    /// (`reply_to`, ...) are left out. A chain, group or chord is refused
    /// (a chain is read by [`Chain::from_dict`]).
    ///
    /// ```
    /// use task_core::Signature;
    /// let dict = serde_json::json!({
    ///     "task": "tasks.add", "args": [2], "kwargs": {"y": 3},
    ///     "options": {"queue": "math"}, "subtask_type": null, "immutable": false,
    /// });
    /// let add = Signature::from_dict(&dict).unwrap().returning::<i64>();
    /// assert_eq!(add.name(), "tasks.add");
    /// assert_eq!(add.to_dict(), dict);
    /// ```
    pub fn from_dict(dict: &Value) -> Result<Self, InvalidSignature> {
        let object = dict
            .as_object()
            .ok_or_else(|| InvalidSignature::new("a signature is a JSON object"))?;
        match object.get("subtask_type") {
            None | Some(Value::Null) => {}
            Some(kind) => {
                return Err(InvalidSignature::new(format!(
                    "a {} (subtask_type {kind}), not a plain signature",
                    kind.as_str().unwrap_or("canvas")
                )))
            }
        }
        let name = object
            .get("task")
            .and_then(Value::as_str)
            .ok_or_else(|| InvalidSignature::new("`task` (the task name) is missing"))?;
        let mut signature = Signature::<Value>::new(Cow::Owned(name.to_owned()));
        match object.get("args") {
            None | Some(Value::Null) => {}
            Some(Value::Array(args)) => {
                for arg in args {
                    signature = signature.arg(arg);
                }
            }
            Some(_) => return Err(InvalidSignature::new("`args` is not a list")),
        }
        match object.get("kwargs") {
            None | Some(Value::Null) => {}
            Some(Value::Object(kwargs)) => {
                for (key, value) in kwargs {
                    signature = signature.kwarg(key.clone(), value);
                }
            }
            Some(_) => return Err(InvalidSignature::new("`kwargs` is not an object")),
        }
        if let Some(options) = object.get("options").filter(|o| !o.is_null()) {
            let options = options
                .as_object()
                .ok_or_else(|| InvalidSignature::new("`options` is not an object"))?;
            signature = read_options(signature, options)?;
        }
        match object.get("immutable") {
            Some(Value::Bool(true)) => signature = signature.immutable(),
            None | Some(Value::Null | Value::Bool(false)) => {}
            Some(_) => return Err(InvalidSignature::new("`immutable` is not a boolean")),
        }
        Ok(signature)
    }

    /// A plain signature read from JSON text in Celery's dict form; see
    /// [`Signature::from_dict`].
    pub fn from_json(text: &str) -> Result<Self, InvalidSignature> {
        let dict: Value = serde_json::from_str(text)
            .map_err(|error| InvalidSignature::new(format!("not JSON: {error}")))?;
        Self::from_dict(&dict)
    }
}

/// `signature` with the call options of a dict's `options` that this crate
/// sends.
fn read_options(
    mut signature: Signature<Value>,
    options: &Map<String, Value>,
) -> Result<Signature<Value>, InvalidSignature> {
    let seconds = |key: &str| -> Result<Option<Duration>, InvalidSignature> {
        match options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_f64()
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                .map(Some)
                .ok_or_else(|| {
                    InvalidSignature::new(format!("`{key}` is not a number of seconds"))
                }),
        }
    };
    let time = |key: &str, value: &str| -> Result<DateTime<Utc>, InvalidSignature> {
        DateTime::parse_from_rfc3339(value)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|error| {
                InvalidSignature::new(format!("`{key}` is not an ISO 8601 time: {error}"))
            })
    };
    let text = |key: &str| -> Result<Option<String>, InvalidSignature> {
        match options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(InvalidSignature::new(format!("`{key}` is not a string"))),
        }
    };
    if let Some(queue) = text("queue")? {
        signature = signature.queue(queue);
    }
    if let Some(id) = text("task_id")? {
        signature = signature.task_id(id);
    }
    match options.get("priority") {
        None | Some(Value::Null) => {}
        Some(value) => {
            let priority = value
                .as_u64()
                .and_then(|p| u8::try_from(p).ok())
                .ok_or_else(|| InvalidSignature::new("`priority` is not an integer of 0..=255"))?;
            signature = signature.priority(priority);
        }
    }
    if let Some(delay) = seconds("countdown")? {
        signature = signature.countdown(delay);
    }
    if let Some(eta) = text("eta")? {
        signature = signature.eta(time("eta", &eta)?);
    }
    match options.get("expires") {
        None | Some(Value::Null) => {}
        Some(Value::String(at)) => signature = signature.expires_at(time("expires", at)?),
        Some(_) => {
            if let Some(after) = seconds("expires")? {
                signature = signature.expires_in(after);
            }
        }
    }
    if let Some(limit) = seconds("time_limit")? {
        signature = signature.time_limit(limit);
    }
    if let Some(limit) = seconds("soft_time_limit")? {
        signature = signature.soft_time_limit(limit);
    }
    for (key, list) in [
        ("link", &mut signature.options.link),
        ("link_error", &mut signature.options.link_error),
    ] {
        match options.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(callbacks)) => list.extend(callbacks.iter().cloned()),
            Some(callback @ Value::Object(_)) => list.push(callback.clone()),
            Some(_) => {
                return Err(InvalidSignature::new(format!(
                    "`{key}` is not a signature or a list of them"
                )))
            }
        }
    }
    Ok(signature)
}

#[cfg(test)]
mod tests;
