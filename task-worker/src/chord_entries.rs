//! [`ChordEntries`]: puts finished chord parts' entries into their chords'
//! join queues, several parts of the same chord in one persistent message
//! (a group commit: while one batch's publish awaits its confirm, the parts
//! that finish meanwhile gather into the next; nothing waits for a timer).
//!
//! Each part's ack waits for the confirm of the batch holding its entry, so
//! batching changes nothing of what survives a crash: an entry is in the
//! durable join queue before its part is acked. It cuts the persistent
//! messages RabbitMQ writes, reads and deletes per chord from one per part
//! to about one per batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use task_core::broker::BrokerError;
use task_core::protocol::chord_join::{entries_message, PartEntry};
use task_core::App;
use tokio::sync::oneshot;

/// What a part's entry waits for: `Ok` once its batch is confirmed (or its
/// chord was joined already), else why not.
type Confirmed = oneshot::Sender<Result<(), String>>;

/// The entries waiting for a publish, by join queue.
#[derive(Default)]
struct Pending {
    /// The entries not yet published, with who waits for each.
    waiting: Vec<(PartEntry, Confirmed)>,
    /// Whether a publish to this queue is in flight (its publisher sends
    /// what gathered meanwhile next).
    publishing: bool,
}

/// The worker's batcher of chord entries (one per worker, shared by its
/// runs).
#[derive(Clone)]
pub(crate) struct ChordEntries {
    app: App,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

impl ChordEntries {
    /// Puts entries through `app`'s broker.
    pub(crate) fn new(app: App) -> Self {
        Self {
            app,
            pending: Arc::default(),
        }
    }

    /// Puts `entry` into `join_queue` and returns once a confirmed publish
    /// holds it, or its chord was joined already (the queue is gone: the
    /// part was counted before, as a part that ran twice).
    pub(crate) async fn put(&self, join_queue: &str, entry: PartEntry) -> Result<(), String> {
        let (confirmed, outcome) = oneshot::channel();
        let publish_now = {
            let mut pending = self.lock();
            let queue = pending.entry(join_queue.to_owned()).or_default();
            queue.waiting.push((entry, confirmed));
            !std::mem::replace(&mut queue.publishing, true)
        };
        if publish_now {
            // On a task of its own: a put dropped midway (its run cancelled)
            // leaves no batch behind.
            tokio::spawn(self.clone().publish_until_empty(join_queue.to_owned()));
        }
        outcome
            .await
            .unwrap_or_else(|_| Err("the chord entry's publisher stopped".to_owned()))
    }

    /// Publishes the entries waiting for `join_queue`, batch after batch,
    /// until none is left.
    async fn publish_until_empty(self, join_queue: String) {
        let join_queue = join_queue.as_str();
        loop {
            let batch = {
                let mut pending = self.lock();
                let Some(queue) = pending.get_mut(join_queue) else {
                    return;
                };
                if queue.waiting.is_empty() {
                    pending.remove(join_queue);
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let (entries, waiters): (Vec<PartEntry>, Vec<Confirmed>) = batch.into_iter().unzip();
            let outcome = self.publish(join_queue, &entries).await;
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
    }

    async fn publish(&self, join_queue: &str, entries: &[PartEntry]) -> Result<(), String> {
        let message = entries_message(entries)?;
        match self.app.broker().publish("", join_queue, &message).await {
            Ok(()) => Ok(()),
            Err(BrokerError::Unroutable { .. }) => {
                tracing::info!(
                    join_queue,
                    entries = entries.len(),
                    "the chord of these parts was joined already: not counted again"
                );
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is one statement): go on with it.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
