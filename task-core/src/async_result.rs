//! The caller's side of results: [`AsyncResult`], a typed handle to one
//! task's outcome, and [`PendingResults`], the table that routes each result
//! message arriving on the reply queue to the handle waiting for it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::protocol::result_message::{ExceptionInfo, ResultBody, TaskState};
use crate::{Error, TaskFailure};

/// What is known of one task's result so far.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// A state without a final value (PENDING, STARTED, RETRY).
    Waiting(TaskState),
    /// The final result message.
    Ready(Arc<ResultBody>),
    /// The result can no longer arrive.
    Lost(Arc<str>),
}

/// Results expected by this client, by task id.
#[derive(Debug, Default)]
pub(crate) struct PendingResults {
    table: Arc<Mutex<Table>>,
}

/// Told the id of a task nobody waits for any more (its last handle was
/// dropped before its result arrived), e.g. to end a subscription.
pub(crate) type AbandonHook = Box<dyn Fn(&str) + Send + Sync>;

/// The waiters, by task id.
#[derive(Default)]
struct Table {
    slots: HashMap<String, Entry>,
    /// Numbers the entries, so that a handle never removes a newer entry of
    /// the same task id (a call sent again with the same id).
    next_generation: u64,
    abandoned: Option<AbandonHook>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("slots", &self.slots)
            .field("next_generation", &self.next_generation)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Entry {
    sender: watch::Sender<Slot>,
    generation: u64,
}

/// One handle's hold on a task id's entry in [`PendingResults`]: receives
/// its states, and removes the entry when the last handle of the id is
/// dropped before the result arrived (so a result never awaited does not
/// stay in the table).
#[derive(Debug)]
pub(crate) struct Waiter {
    receiver: watch::Receiver<Slot>,
    task_id: String,
    generation: u64,
    table: Weak<Mutex<Table>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(table) = self.table.upgrade() else {
            return;
        };
        let mut table = lock(&table);
        let last_of_this_entry = table.slots.get(&self.task_id).is_some_and(|entry| {
            // Our own receiver is still alive here: 1 means nobody else's is.
            entry.generation == self.generation && entry.sender.receiver_count() <= 1
        });
        if last_of_this_entry {
            table.slots.remove(&self.task_id);
            if let Some(abandoned) = &table.abandoned {
                abandoned(&self.task_id);
            }
        }
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PendingResults {
    /// A table that calls `abandoned` with each task id nobody waits for
    /// any more before its result arrived.
    pub(crate) fn with_abandon_hook(abandoned: AbandonHook) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table {
                abandoned: Some(abandoned),
                ..Table::default()
            })),
        }
    }

    /// The ids of the tasks awaited.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.lock().slots.keys().cloned().collect()
    }

    /// Whether a result is awaited for `task_id`.
    pub(crate) fn is_awaited(&self, task_id: &str) -> bool {
        self.lock().slots.contains_key(task_id)
    }

    /// Starts expecting a result for `task_id` (before its message is published,
    /// so a fast result cannot be missed). Handles to an id already expected
    /// share its entry: each of them receives the result.
    pub(crate) fn expect(&self, task_id: &str) -> Waiter {
        let mut table = self.lock();
        let (receiver, generation) = match table.slots.get(task_id) {
            Some(entry) => (entry.sender.subscribe(), entry.generation),
            None => {
                let generation = table.next_generation;
                table.next_generation += 1;
                let (sender, receiver) = watch::channel(Slot::Waiting(TaskState::Pending));
                table
                    .slots
                    .insert(task_id.to_owned(), Entry { sender, generation });
                (receiver, generation)
            }
        };
        Waiter {
            receiver,
            task_id: task_id.to_owned(),
            generation,
            table: Arc::downgrade(&self.table),
        }
    }

    /// Stops expecting `task_id`: its waiters see the result as lost.
    pub(crate) fn forget(&self, task_id: &str) {
        self.lock().slots.remove(task_id);
    }

    /// Routes a result message to its waiter. Results nobody waits for are
    /// dropped, as Celery's `rpc://` backend does.
    pub(crate) fn deliver(&self, body: ResultBody) {
        let mut table = self.lock();
        if body.status.is_ready() {
            if let Some(entry) = table.slots.remove(&body.task_id) {
                drop(table);
                entry.sender.send_replace(Slot::Ready(Arc::new(body)));
            }
        } else if let Some(entry) = table.slots.get(&body.task_id) {
            if entry.sender.receiver_count() == 0 {
                table.slots.remove(&body.task_id);
            } else {
                entry.sender.send_replace(Slot::Waiting(body.status));
            }
        }
    }

    /// Wakes every waiter with an error: no result can arrive any more.
    pub(crate) fn fail_all(&self, reason: &str) {
        let reason: Arc<str> = Arc::from(reason);
        let entries: Vec<Entry> = self.lock().slots.drain().map(|(_, entry)| entry).collect();
        for entry in entries {
            entry.sender.send_replace(Slot::Lost(reason.clone()));
        }
    }

    /// How many results are awaited.
    pub(crate) fn len(&self) -> usize {
        self.lock().slots.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.table)
    }
}

/// A handle to the result of a published task, typed by its value.
///
/// Only the client that sent a task receives its result (Celery's `rpc://`
/// semantics); `get` can be called again after a timeout. Dropping the
/// handle stops waiting for the result. The handle does not keep its
/// [`App`](crate::App) connected: once the app's last handle is dropped,
/// a result still awaited ends with [`Error::ResultLost`].
#[derive(Debug)]
pub struct AsyncResult<R> {
    task_id: String,
    slot: Option<Waiter>,
    /// The app the result arrives through, kept connected while the result
    /// is awaited (dropped after the waiter, so the app's close, if this was
    /// its last handle, finds no waiter left).
    app: Option<crate::App>,
    value: PhantomData<fn() -> R>,
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(task_id: String, slot: Option<Waiter>, app: Option<crate::App>) -> Self {
        Self {
            task_id,
            slot,
            app,
            value: PhantomData,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.task_id
    }

    /// The latest known state, without waiting.
    pub fn state(&self) -> TaskState {
        match self
            .slot
            .as_ref()
            .map(|slot| slot.receiver.borrow().clone())
        {
            None => TaskState::Pending,
            Some(Slot::Waiting(state)) => state,
            Some(Slot::Ready(body)) => body.status,
            Some(Slot::Lost(_)) => TaskState::Pending,
        }
    }

    /// Whether the final state has arrived.
    pub fn ready(&self) -> bool {
        self.state().is_ready()
    }

    /// Deletes the task's stored result (Celery's `forget`) and stops
    /// waiting for it; see [`App::forget`](crate::App::forget).
    pub async fn forget(self) -> Result<(), Error> {
        match &self.app {
            Some(app) => app.forget(&self.task_id).await,
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` until the task's latest known state satisfies
    /// `reached` or the task is finished, and returns that state (without
    /// polling: it wakes on each result message).
    ///
    /// Intermediate states arrive only when the worker sends them (STARTED
    /// with `track_started`, RETRY on a retry), and states that follow each
    /// other quickly may be seen only as the last of them, so a caller
    /// waiting for `Started` should also expect a finished task:
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use task_core::{AsyncResult, TaskState};
    /// # async fn demo(pending: AsyncResult<i64>) -> Result<(), task_core::Error> {
    /// let state = pending
    ///     .wait_for_state(|s| s == TaskState::Started, Duration::from_secs(5))
    ///     .await?;
    /// println!("the task is {state}");
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_state(
        &self,
        reached: impl Fn(TaskState) -> bool,
        timeout: Duration,
    ) -> Result<TaskState, Error> {
        let Some(slot) = &self.slot else {
            return Err(Error::ResultIgnored {
                task_id: self.task_id.clone(),
            });
        };
        let mut slot = slot.receiver.clone();
        let waited = tokio::time::timeout(
            timeout,
            slot.wait_for(|s| match s {
                Slot::Waiting(state) => reached(*state),
                Slot::Ready(_) | Slot::Lost(_) => true,
            }),
        )
        .await;
        let lost = |reason: &str| Error::ResultLost {
            task_id: self.task_id.clone(),
            reason: reason.to_owned(),
        };
        match waited {
            Err(_) => Err(Error::Timeout {
                task_id: self.task_id.clone(),
                waited: timeout,
            }),
            Ok(Err(_)) => Err(lost("the client's result table was dropped")),
            Ok(Ok(state)) => match &*state {
                Slot::Waiting(state) => Ok(*state),
                Slot::Ready(body) => Ok(body.status),
                Slot::Lost(reason) => Err(lost(reason)),
            },
        }
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits up to `timeout` for the final state: the value on SUCCESS, a
    /// typed error on FAILURE, REVOKED, REJECTED, IGNORED, timeout or a lost result queue.
    pub async fn get(&self, timeout: Duration) -> Result<R, Error> {
        let Some(slot) = &self.slot else {
            return Err(Error::ResultIgnored {
                task_id: self.task_id.clone(),
            });
        };
        let mut slot = slot.receiver.clone();
        let waited =
            tokio::time::timeout(timeout, slot.wait_for(|s| !matches!(s, Slot::Waiting(_)))).await;
        let state = match waited {
            Err(_) => {
                return Err(Error::Timeout {
                    task_id: self.task_id.clone(),
                    waited: timeout,
                })
            }
            Ok(Err(_)) => Slot::Lost(Arc::from("the client's result table was dropped")),
            Ok(Ok(state)) => state.clone(),
        };
        match state {
            Slot::Waiting(_) => unreachable!("wait_for returned a waiting state"),
            Slot::Lost(reason) => Err(Error::ResultLost {
                task_id: self.task_id.clone(),
                reason: reason.to_string(),
            }),
            Slot::Ready(body) => self.outcome(&body),
        }
    }

    fn outcome(&self, body: &ResultBody) -> Result<R, Error> {
        let raw = body.result.as_ref().map_or("null", |raw| raw.get());
        match body.status {
            TaskState::Success => serde_json::from_str(raw).map_err(|e| Error::DecodeResult {
                task_id: self.task_id.clone(),
                expected: std::any::type_name::<R>(),
                reason: crate::args::explain_json_error(raw, &e),
            }),
            TaskState::Revoked => Err(Error::Revoked {
                task_id: self.task_id.clone(),
                reason: reason(raw),
            }),
            TaskState::Rejected => Err(Error::Rejected {
                task_id: self.task_id.clone(),
                reason: reason(raw),
            }),
            TaskState::Ignored => Err(Error::Ignored {
                task_id: self.task_id.clone(),
            }),
            _ => {
                let info = serde_json::from_str::<ExceptionInfo>(raw).unwrap_or(ExceptionInfo {
                    exc_type: "UnknownError".into(),
                    exc_message: serde_json::Value::String(raw.to_owned()),
                    exc_module: None,
                });
                Err(Error::TaskFailed(Box::new(TaskFailure {
                    task_id: self.task_id.clone(),
                    message: info.message(),
                    exc_args: info.args(),
                    exc_type: info.exc_type,
                    exc_module: info.exc_module,
                    traceback: body.traceback.clone(),
                })))
            }
        }
    }
}

/// The reason a REVOKED or REJECTED result gives: its exception's message,
/// else its text, else the JSON as sent.
fn reason(raw: &str) -> String {
    if let Ok(info) = serde_json::from_str::<ExceptionInfo>(raw) {
        return info.message();
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(serde_json::Value::Null) => "no reason given".to_owned(),
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(id: &str, json: &str) -> ResultBody {
        let text = format!("{{\"task_id\": \"{id}\", {json}}}");
        ResultBody::decode(text.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn results_reach_their_waiters_and_states_progress() {
        let pending = PendingResults::default();
        let handle = AsyncResult::<i64>::new("a".into(), Some(pending.expect("a")), None);
        assert_eq!(handle.state(), TaskState::Pending);
        pending.deliver(body("a", r#""status": "STARTED", "result": {"pid": 1}"#));
        assert_eq!(handle.state(), TaskState::Started);
        pending.deliver(body("a", r#""status": "SUCCESS", "result": 7"#));
        assert_eq!(handle.get(Duration::from_secs(1)).await.unwrap(), 7);
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test]
    async fn waiting_for_a_state_wakes_on_it_or_on_the_end() {
        let pending = Arc::new(PendingResults::default());
        let handle = AsyncResult::<i64>::new("w".into(), Some(pending.expect("w")), None);
        let started = |s| s == TaskState::Started;
        let timeout = Duration::from_secs(5);
        let sender = Arc::clone(&pending);
        let deliver = tokio::spawn(async move {
            sender.deliver(body("w", r#""status": "STARTED", "result": null"#));
        });
        assert_eq!(
            handle.wait_for_state(started, timeout).await.unwrap(),
            TaskState::Started
        );
        deliver.await.unwrap();
        pending.deliver(body("w", r#""status": "SUCCESS", "result": 1"#));
        // Finished without ever being in the awaited state: the end is returned.
        assert_eq!(
            handle
                .wait_for_state(|s| s == TaskState::Retry, timeout)
                .await
                .unwrap(),
            TaskState::Success
        );

        let silent = AsyncResult::<i64>::new("s".into(), Some(pending.expect("s")), None);
        let error = silent
            .wait_for_state(started, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error}");
        pending.fail_all("gone");
        let error = silent.wait_for_state(started, timeout).await.unwrap_err();
        assert!(matches!(error, Error::ResultLost { .. }), "{error}");
    }

    #[tokio::test]
    async fn failures_timeouts_and_losses_are_typed_errors() {
        let pending = PendingResults::default();
        let failed = AsyncResult::<i64>::new("f".into(), Some(pending.expect("f")), None);
        pending.deliver(body(
            "f",
            r#""status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}, "traceback": "tb""#,
        ));
        let error = failed.get(Duration::from_secs(1)).await.unwrap_err();
        let failure = error.as_task_failure().unwrap();
        assert_eq!(
            (failure.exc_type.as_str(), failure.message.as_str()),
            ("ValueError", "bad")
        );
        assert_eq!(failure.traceback.as_deref(), Some("tb"));

        let slow = AsyncResult::<i64>::new("s".into(), Some(pending.expect("s")), None);
        let error = slow.get(Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }));

        pending.fail_all("connection lost");
        let error = slow.get(Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(error, Error::ResultLost { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_dropped_handle_removes_its_waiter() {
        let pending = PendingResults::default();
        let dropped = AsyncResult::<i64>::new("d".into(), Some(pending.expect("d")), None);
        let kept = AsyncResult::<i64>::new("k".into(), Some(pending.expect("k")), None);
        assert_eq!(pending.len(), 2);
        drop(dropped);
        assert_eq!(pending.len(), 1, "the dropped handle's waiter leaked");
        pending.deliver(body("k", r#""status": "SUCCESS", "result": 1"#));
        assert_eq!(kept.get(Duration::from_secs(1)).await.unwrap(), 1);
        // A result for the dropped handle arriving late is dropped, as for any stranger.
        pending.deliver(body("d", r#""status": "SUCCESS", "result": 2"#));
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test]
    async fn handles_to_one_task_id_share_its_waiter() {
        let pending = PendingResults::default();
        let first = AsyncResult::<i64>::new("same".into(), Some(pending.expect("same")), None);
        let second = AsyncResult::<i64>::new("same".into(), Some(pending.expect("same")), None);
        let third = AsyncResult::<i64>::new("same".into(), Some(pending.expect("same")), None);
        assert_eq!(pending.len(), 1);
        // Dropping one handle keeps the waiter of the others.
        drop(third);
        assert_eq!(pending.len(), 1);
        pending.deliver(body("same", r#""status": "SUCCESS", "result": 7"#));
        assert_eq!(first.get(Duration::from_secs(1)).await.unwrap(), 7);
        assert_eq!(second.get(Duration::from_secs(1)).await.unwrap(), 7);
        assert_eq!(pending.len(), 0);

        // A handle dropped after its result arrived leaves a newer waiter of
        // the same id (a call sent again with the same id) alone.
        let again = AsyncResult::<i64>::new("same".into(), Some(pending.expect("same")), None);
        drop(first);
        drop(second);
        assert_eq!(pending.len(), 1);
        pending.deliver(body("same", r#""status": "SUCCESS", "result": 8"#));
        assert_eq!(again.get(Duration::from_secs(1)).await.unwrap(), 8);
    }

    #[tokio::test]
    async fn rejected_and_ignored_results_are_typed_errors() {
        let pending = PendingResults::default();
        let rejected = AsyncResult::<i64>::new("rj".into(), Some(pending.expect("rj")), None);
        pending.deliver(body(
            "rj",
            r#""status": "REJECTED", "result": {"exc_type": "Reject", "exc_message": ["no room", false], "exc_module": "celery.exceptions"}"#,
        ));
        match rejected.get(Duration::from_secs(1)).await {
            Err(Error::Rejected { task_id, reason }) => {
                assert_eq!(
                    (task_id.as_str(), reason.as_str()),
                    ("rj", "no room, false")
                )
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(rejected.state(), TaskState::Rejected);
        let ignored = AsyncResult::<i64>::new("ig".into(), Some(pending.expect("ig")), None);
        pending.deliver(body("ig", r#""status": "IGNORED", "result": null"#));
        match ignored.get(Duration::from_secs(1)).await {
            Err(Error::Ignored { task_id }) => assert_eq!(task_id, "ig"),
            other => panic!("expected Ignored, got {other:?}"),
        }
        assert!(ignored.ready());
        assert_eq!(pending.len(), 0, "both waiters are done");
    }

    #[tokio::test]
    async fn wrong_result_types_and_revocations_are_reported() {
        let pending = PendingResults::default();
        let wrong = AsyncResult::<i64>::new("w".into(), Some(pending.expect("w")), None);
        pending.deliver(body("w", r#""status": "SUCCESS", "result": "text""#));
        assert!(matches!(
            wrong.get(Duration::from_secs(1)).await,
            Err(Error::DecodeResult { .. })
        ));
        // A Python big integer (2**70) for an i64 result names the integer.
        let big = AsyncResult::<i64>::new("b".into(), Some(pending.expect("b")), None);
        pending.deliver(body(
            "b",
            r#""status": "SUCCESS", "result": 1180591620717411303424"#,
        ));
        match big.get(Duration::from_secs(1)).await {
            Err(Error::DecodeResult { reason, .. }) => assert_eq!(
                reason,
                "the integer 1180591620717411303424 does not fit in i64 \
                 (from -9223372036854775808 to 9223372036854775807)"
            ),
            other => panic!("expected DecodeResult, got {other:?}"),
        }
        let revoked = AsyncResult::<i64>::new("r".into(), Some(pending.expect("r")), None);
        pending.deliver(body(
            "r",
            r#""status": "REVOKED", "result": {"exc_type": "TaskRevokedError", "exc_message": ["expired"]}"#,
        ));
        match revoked.get(Duration::from_secs(1)).await {
            Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "expired"),
            other => panic!("expected Revoked, got {other:?}"),
        }
    }
}
