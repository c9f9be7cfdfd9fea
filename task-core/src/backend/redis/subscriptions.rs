//! Waiting for results by pub/sub: the table of awaited results, fed by the
//! states Redis publishes on each awaited key's channel.
//!
//! Subscribing and unsubscribing go through one control task, in the order
//! they were asked for, and in batches: whatever has queued up while the
//! last batch was out becomes one `SUBSCRIBE` and one `UNSUBSCRIBE` of many
//! channels. A channel is dropped only when nobody waits on its key any
//! more at the time the batch is sent, so a handle dropped and a new one
//! made for the same task id (in either order) never leaves the new one
//! without its subscription.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{task_key, TASK_KEY_PREFIX};
use crate::async_result::{PendingResults, Waiter};
use crate::backend::{BackendError, ResultMeta};
use crate::protocol::result_message::ResultBody;

/// At most this many requests are sent as one batch.
const MAX_BATCH: usize = 4096;
/// At most this many keys are read by one `MGET` after a lost connection.
const READ_CHUNK: usize = 1000;

/// The results this process awaits, and the subscriptions that feed them.
pub(super) struct Subscriptions {
    pending: Arc<PendingResults>,
    requests: mpsc::UnboundedSender<Request>,
}

/// What the waiters and the push handler ask of the control task.
enum Request {
    /// Subscribe to a key's channel (its waiter is registered already);
    /// answered once Redis has confirmed.
    Subscribe {
        key: String,
        subscribed: oneshot::Sender<Result<(), BackendError>>,
    },
    /// The key's waiters may all be gone (dropped, or their final state
    /// came): unsubscribe unless a new waiter came meanwhile.
    Release(String),
    /// The connection was lost: read every awaited key again once it is back.
    ReadAwaited,
}

/// The control task's queue, until it is started on a connection.
pub(super) struct ControlQueue(mpsc::UnboundedReceiver<Request>);

/// Receives what Redis pushes on the connection (published states, and the
/// client's own notice of a lost connection). Runs on the connection's read
/// path: it only hands things over, never waits.
pub(super) struct PushHandler {
    pending: Weak<PendingResults>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Subscriptions {
    /// The table, the handler to give the connection for what Redis
    /// pushes, and the control queue to start once connected.
    pub(super) fn new() -> (Self, PushHandler, ControlQueue) {
        let (requests, queue) = mpsc::unbounded_channel();
        let abandoned = requests.clone();
        let pending = Arc::new(PendingResults::with_abandon_hook(Box::new(
            move |task_id: &str| {
                let _ = abandoned.send(Request::Release(task_key(task_id)));
            },
        )));
        let push = PushHandler {
            pending: Arc::downgrade(&pending),
            requests: requests.clone(),
        };
        (Self { pending, requests }, push, ControlQueue(queue))
    }

    /// Registers a waiter for `task_id` and subscribes to its channel;
    /// returns once Redis has confirmed the subscription, so that no state
    /// published from then on is missed.
    pub(super) async fn watch(&self, task_id: &str) -> Result<Waiter, BackendError> {
        let waiter = self.pending.expect(task_id);
        let (subscribed, confirmation) = oneshot::channel();
        self.requests
            .send(Request::Subscribe {
                key: task_key(task_id),
                subscribed,
            })
            .map_err(|_| closed())?;
        confirmation.await.map_err(|_| closed())??;
        Ok(waiter)
    }

    /// Hands a state read for `key` to its waiters.
    pub(super) fn deliver(&self, key: &str, body: ResultBody) {
        deliver(&self.pending, &self.requests, key, body);
    }

    /// How many results are awaited.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}

impl ControlQueue {
    /// Starts the control task on `connection`. It ends once the backend
    /// (its table and connection) is gone.
    pub(super) fn start(self, connection: &Arc<ConnectionManager>, subscriptions: &Subscriptions) {
        tokio::spawn(control_loop(
            self.0,
            Arc::downgrade(connection),
            Arc::downgrade(&subscriptions.pending),
            subscriptions.requests.downgrade(),
        ));
    }
}

impl PushHandler {
    /// Takes one push from the connection.
    pub(super) fn handle(&self, info: PushInfo) -> Result<(), std::convert::Infallible> {
        match info.kind {
            PushKind::Message => {
                let Some(pending) = self.pending.upgrade() else {
                    return Ok(());
                };
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (info.data.first(), info.data.get(1))
                else {
                    return Ok(());
                };
                let key = String::from_utf8_lossy(channel);
                match ResultBody::decode(payload) {
                    Ok(body) => deliver(&pending, &self.requests, &key, body),
                    Err(error) => {
                        tracing::warn!(channel = %key, %error,
                            "dropping a published result that is not a Celery result")
                    }
                }
            }
            PushKind::Disconnection => {
                let _ = self.requests.send(Request::ReadAwaited);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Hands a state read or received for `key` to its waiters; a final one
/// ends the subscription (unless someone waits on the key again).
fn deliver(
    pending: &PendingResults,
    requests: &mpsc::UnboundedSender<Request>,
    key: &str,
    body: ResultBody,
) {
    let ready = body.status.is_ready();
    pending.deliver(body);
    if ready {
        let _ = requests.send(Request::Release(key.to_owned()));
    }
}

fn closed() -> BackendError {
    BackendError::operation(
        "subscribe",
        std::io::Error::other("the result backend is closed"),
    )
}

/// Does what the waiters and the push handler ask, in order and in
/// batches, while the backend exists.
async fn control_loop(
    mut queue: mpsc::UnboundedReceiver<Request>,
    connection: Weak<ConnectionManager>,
    pending: Weak<PendingResults>,
    requests: mpsc::WeakUnboundedSender<Request>,
) {
    let mut batch = Vec::new();
    let mut reading: Option<JoinHandle<()>> = None;
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (Some(manager), Some(table)) = (connection.upgrade(), pending.upgrade()) else {
            return;
        };
        let mut connection = (*manager).clone();
        drop(manager);
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        let mut answers = Vec::new();
        let mut read_again = false;
        for request in batch.drain(..) {
            let key = match request {
                Request::Subscribe { key, subscribed } => {
                    answers.push(subscribed);
                    key
                }
                Request::Release(key) => key,
                Request::ReadAwaited => {
                    read_again = true;
                    continue;
                }
            };
            if seen.insert(key.clone()) {
                keys.push(key);
            }
        }
        // Whether a key is wanted is read now, after every request queued
        // before this batch: a waiter registered later sends its own
        // Subscribe, which comes after this batch's UNSUBSCRIBE.
        let (wanted, unwanted): (Vec<String>, Vec<String>) = keys.into_iter().partition(|key| {
            key.strip_prefix(TASK_KEY_PREFIX)
                .is_some_and(|id| table.is_awaited(id))
        });
        let subscribed = if wanted.is_empty() {
            Ok(())
        } else {
            connection.subscribe(&wanted).await
        };
        for answer in answers {
            let _ = answer.send(
                subscribed
                    .clone()
                    .map_err(|e| BackendError::operation("subscribe", e)),
            );
        }
        if !unwanted.is_empty() {
            // A failure leaves a subscription nobody reads: harmless.
            let _ = connection.unsubscribe(&unwanted).await;
        }
        if read_again {
            if let Some(previous) = reading.take() {
                previous.abort();
            }
            if let Some(requests) = requests.upgrade() {
                reading = Some(tokio::spawn(read_awaited(
                    connection,
                    Arc::downgrade(&table),
                    requests.downgrade(),
                )));
            }
        }
    }
}

/// Reads the stored state of every awaited task (after a lost connection:
/// the client subscribes again before its first command on the new
/// connection, so nothing published from then on is missed, and this read
/// covers what was published while it was down). Retries while Redis is
/// away, as long as results are awaited.
async fn read_awaited(
    mut connection: ConnectionManager,
    pending: Weak<PendingResults>,
    requests: mpsc::WeakUnboundedSender<Request>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(ids) = pending.upgrade().map(|table| table.ids()) else {
            return;
        };
        let mut failed = None;
        for chunk in ids.chunks(READ_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|id| task_key(id)).collect();
            let stored: Vec<Option<Vec<u8>>> = match redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut connection)
                .await
            {
                Ok(stored) => stored,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            };
            let (Some(table), Some(requests)) = (pending.upgrade(), requests.upgrade()) else {
                return;
            };
            for (key, bytes) in keys.iter().zip(stored) {
                let Some(bytes) = bytes else { continue };
                match ResultMeta::decode(key, &bytes) {
                    Ok(meta) => deliver(&table, &requests, key, meta.into_body()),
                    Err(error) => tracing::warn!(%key, %error, "cannot read a result"),
                }
            }
        }
        let Some(error) = failed else {
            return;
        };
        tracing::warn!(%error, ?pause, "cannot read awaited results after a lost Redis connection; trying again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
