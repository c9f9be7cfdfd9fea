//! [`Canvas`]: what follows a task in its message's `embed`, as Celery's
//! worker does it (`celery/app/trace.py`): after a success, the callbacks
//! (`link`) and then the next chain step are published before the task's
//! result and its ack; after a failure, the errbacks (`link_error`) are
//! published with the failed task's id and every remaining chain step is
//! told FAILURE. Chords and nested canvas (a group or chain as a callback
//! or step) are refused, not half-run, until they are built.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use task_core::broker::headers::{integer_value, text_value};
use task_core::broker::Message;
use task_core::pipeline::{Job, Outcome, Rejection, Stage, Step};
use task_core::protocol::result_message;
use task_core::protocol::task_message::{encode_task, TaskCall};
use task_core::{App, Registry, TaskError};

/// Runs the canvas a Celery message carries (see the module docs).
pub(crate) struct Canvas {
    /// Publishes the steps, callbacks and errbacks.
    pub(crate) app: App,
    /// Where a step's task is queued when its signature names no queue.
    pub(crate) registry: Registry,
}

/// A message's `embed`.
#[derive(Deserialize, Default)]
struct Embed {
    #[serde(default)]
    callbacks: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    errbacks: Option<Vec<Box<RawValue>>>,
    /// The remaining steps, the next one last.
    #[serde(default)]
    chain: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    chord: Option<Box<RawValue>>,
}

/// A signature in Celery's dict form.
#[derive(Deserialize)]
struct SignatureDict {
    task: String,
    #[serde(default)]
    args: Vec<Box<RawValue>>,
    #[serde(default)]
    kwargs: serde_json::Map<String, Value>,
    #[serde(default)]
    options: SignatureOptions,
    #[serde(default)]
    subtask_type: Option<String>,
    #[serde(default)]
    immutable: bool,
}

#[derive(Deserialize, Default)]
struct SignatureOptions {
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    priority: Option<u8>,
    /// Its own callbacks (a chain step's `link`).
    #[serde(default)]
    link: Option<Box<RawValue>>,
    /// Its own errbacks (a chain step's `link_error`).
    #[serde(default)]
    link_error: Option<Box<RawValue>>,
}

impl Embed {
    fn of(job: &Job<'_>) -> Option<Embed> {
        // The common case, no canvas, was told at decode; after the run,
        // the job keeps the `embed` only when it carries canvas.
        if !job.request.carries_canvas() || job.request.canvas_parts().is_empty() {
            return None;
        }
        serde_json::from_str(job.request.embed.as_deref()?.get()).ok()
    }

    fn callbacks(&self) -> &[Box<RawValue>] {
        self.callbacks.as_deref().unwrap_or_default()
    }

    fn errbacks(&self) -> &[Box<RawValue>] {
        self.errbacks.as_deref().unwrap_or_default()
    }

    fn chain(&self) -> &[Box<RawValue>] {
        self.chain.as_deref().unwrap_or_default()
    }

    /// What this worker cannot run yet, if anything.
    fn unsupported(&self) -> Option<String> {
        if self
            .chord
            .as_ref()
            .is_some_and(|c| c.get().trim() != "null")
        {
            return Some("a chord".to_owned());
        }
        for raw in self
            .callbacks()
            .iter()
            .chain(self.errbacks())
            .chain(self.chain())
        {
            match serde_json::from_str::<SignatureDict>(raw.get()) {
                Ok(sig) if sig.subtask_type.is_none() => {}
                Ok(sig) => {
                    return Some(format!(
                        "a nested {} in its canvas",
                        sig.subtask_type.unwrap_or_default()
                    ))
                }
                Err(error) => return Some(format!("a signature that does not decode ({error})")),
            }
        }
        None
    }
}

impl Stage for Canvas {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let Some(embed) = Embed::of(job) else {
            return Step::Next;
        };
        let Some(what) = embed.unsupported() else {
            return Step::Next;
        };
        let request = &job.request;
        tracing::warn!(task_id = %request.id, task = %request.name, %what,
            "this worker cannot run this canvas yet: not running the task, dead-lettering it");
        let reason = format!(
            "this Rust worker does not run {what} yet; the task was not run and was moved to \
             the queue's dead-letter queue"
        );
        let mut notify: Vec<(String, String)> = request
            .reply_to
            .iter()
            .map(|reply_to| (request.id.clone(), reply_to.clone()))
            .collect();
        notify.extend(chain_steps(&embed).filter_map(|sig| {
            let reply_to = sig.options.reply_to.or_else(|| request.reply_to.clone())?;
            Some((sig.options.task_id?, reply_to))
        }));
        Step::Stop(Outcome::Rejected(Rejection::new(
            format!("NotImplementedError: {reason}"),
            TaskError::new("NotImplementedError", reason),
            notify,
        )))
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        if !matches!(outcome, Outcome::Succeeded { .. } | Outcome::Failed { .. }) {
            return None;
        }
        let embed = Embed::of(job)?;
        Some(Box::pin(async move {
            match outcome {
                Outcome::Succeeded { value } => {
                    if let Err(error) = self.after_success(job, &embed, value).await {
                        // Not acked: the task runs again and so do its
                        // follow-ups (at least once, never lost).
                        tracing::error!(task_id = %job.request.id, %error,
                            "could not publish what follows the task; it will run again");
                        *outcome = Outcome::Retry {
                            error: TaskError::new("CanvasPublishError", error),
                            delay: Duration::from_secs(1),
                        };
                    }
                }
                Outcome::Failed { error } => self.after_failure(job, &embed, error).await,
                _ => {}
            }
        }))
    }
}

/// The remaining chain steps, next first.
fn chain_steps(embed: &Embed) -> impl Iterator<Item = SignatureDict> + '_ {
    embed
        .chain()
        .iter()
        .rev()
        .filter_map(|raw| serde_json::from_str(raw.get()).ok())
}

impl Canvas {
    /// Celery's order: the callbacks, then the next chain step.
    async fn after_success(
        &self,
        job: &Job<'_>,
        embed: &Embed,
        value: &RawValue,
    ) -> Result<(), String> {
        let callbacks = embed.callbacks();
        // Several callbacks go out as a group of their own.
        let group = (callbacks.len() > 1).then(uuid_string);
        for (index, raw) in callbacks.iter().enumerate() {
            let sig = decode_signature(raw)?;
            let member = group.as_deref().map(|id| (id, index));
            self.publish(job, &sig, Some(value), &[], member).await?;
        }
        if let Some((next, rest)) = embed.chain().split_last() {
            let sig = decode_signature(next)?;
            self.publish(job, &sig, Some(value), rest, None).await?;
        }
        Ok(())
    }

    /// The errbacks get the failed task's id; every remaining chain step is
    /// told FAILURE (as Celery's `_fail_chain`), since none of them will run.
    async fn after_failure(&self, job: &Job<'_>, embed: &Embed, error: &TaskError) {
        let failed_id = serde_json::value::to_raw_value(&job.request.id).ok();
        let errbacks = embed.errbacks();
        let group = (!errbacks.is_empty()).then(uuid_string);
        for (index, raw) in errbacks.iter().enumerate() {
            let published = match decode_signature(raw) {
                Ok(sig) => {
                    let member = group.as_deref().map(|id| (id, index));
                    self.publish(job, &sig, failed_id.as_deref(), &[], member)
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = published {
                tracing::error!(task_id = %job.request.id, %error, "could not publish an errback");
            }
        }
        for sig in chain_steps(embed) {
            let reply_to = sig
                .options
                .reply_to
                .or_else(|| job.request.reply_to.clone());
            if let (Some(id), Some(reply_to)) = (sig.options.task_id, reply_to) {
                job.results
                    .publish_result(&reply_to, result_message::failure(&id, error))
                    .await;
            }
        }
    }

    /// Publishes signature `sig` as a task: `first` in front of its
    /// arguments (unless immutable), `chain` as its remaining steps, in
    /// group `member` (id, index) if given; its root is the job's root, its
    /// parent the job.
    async fn publish(
        &self,
        job: &Job<'_>,
        sig: &SignatureDict,
        first: Option<&RawValue>,
        chain: &[Box<RawValue>],
        member: Option<(&str, usize)>,
    ) -> Result<(), String> {
        let mut args: Vec<Box<RawValue>> = Vec::with_capacity(sig.args.len() + 1);
        if let (Some(first), false) = (first, sig.immutable) {
            args.push(first.to_owned());
        }
        args.extend(sig.args.iter().cloned());
        let kwargs: Vec<(String, Box<RawValue>)> = sig
            .kwargs
            .iter()
            .filter_map(|(key, value)| {
                Some((key.clone(), serde_json::value::to_raw_value(value).ok()?))
            })
            .collect();
        let id = sig.options.task_id.clone().unwrap_or_else(uuid_string);
        let root_id = job
            .request
            .root_id
            .clone()
            .unwrap_or_else(|| job.request.id.clone());
        let call = TaskCall {
            id: &id,
            name: &sig.task,
            args: &args,
            kwargs: &kwargs,
            reply_to: sig.options.reply_to.as_deref(),
            eta: None,
            expires: None,
            priority: sig.options.priority,
            time_limit: None,
            soft_time_limit: None,
            ignore_result: false,
            retries: 0,
            root_id: Some(&root_id),
            parent_id: Some(&job.request.id),
        };
        let mut message = encode_task(&call).map_err(|e| e.to_string())?;
        set_embed(&mut message, &args, &kwargs, sig, chain).map_err(|e| e.to_string())?;
        if let Some((group, index)) = member {
            let headers = &mut message.properties.headers;
            headers.insert("group", text_value(group));
            headers.insert(
                "group_index",
                integer_value(i64::try_from(index).unwrap_or(i64::MAX)),
            );
        }
        let queue = sig
            .options
            .queue
            .clone()
            .or_else(|| {
                self.registry
                    .get(&sig.task)
                    .and_then(|task| task.options.queue.map(str::to_owned))
            })
            .unwrap_or_else(|| self.app.default_queue().to_owned());
        self.app
            .ensure_queue(&queue)
            .await
            .map_err(|e| e.to_string())?;
        self.app
            .broker()
            .publish("", &queue, &message)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Rewrites the message body with this step's own `embed`: its callbacks
/// and errbacks (`link`, `link_error` options) and the remaining `chain`
/// (`[]` on the last step, as Celery sends it).
fn set_embed(
    message: &mut Message,
    args: &[Box<RawValue>],
    kwargs: &[(String, Box<RawValue>)],
    sig: &SignatureDict,
    chain: &[Box<RawValue>],
) -> Result<(), serde_json::Error> {
    #[derive(serde::Serialize)]
    struct OutEmbed<'a> {
        callbacks: Option<&'a RawValue>,
        errbacks: Option<&'a RawValue>,
        chain: &'a [Box<RawValue>],
        chord: Option<()>,
    }
    let kwargs: serde_json::Map<String, Value> = kwargs
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), serde_json::from_str(value.get()).ok()?)))
        .collect();
    let embed = OutEmbed {
        callbacks: sig.options.link.as_deref(),
        errbacks: sig.options.link_error.as_deref(),
        chain,
        chord: None,
    };
    message.body = serde_json::to_vec(&(args, kwargs, embed))?;
    Ok(())
}

fn decode_signature(raw: &RawValue) -> Result<SignatureDict, String> {
    serde_json::from_str(raw.get()).map_err(|error| format!("a signature does not decode: {error}"))
}

fn uuid_string() -> String {
    uuid::Uuid::new_v4().to_string()
}
