//! Reading and replaying a dead-letter queue (`<queue>.dead_letter`): what
//! the workers could not process, kept with the reason in its headers.
//!
//! Each operation takes a snapshot: it receives the messages ready in the
//! dead-letter queue without acknowledging them, acts on the selected ones
//! (a replayed message is published back to its queue and acknowledged only
//! once the broker confirmed the copy; a discarded one is acknowledged), and
//! then closes its channel, which returns every other message to the queue.
//! A message is never removed before its replacement is safe.

use std::time::Duration;

use futures_util::StreamExt;
use task_core::broker::delay_topology::strip_death_history;
use task_core::broker::{
    dead_letter_headers, BrokerError, ConsumeOptions, Message, DEAD_LETTER_SUFFIX,
};
use task_core::App;

/// How long a snapshot waits for the next message the broker said was ready.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One dead-lettered message and what the worker recorded about it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The task id (`id` header), when the message had one.
    pub task_id: Option<String>,
    /// The task name (`task` header), when the message had one.
    pub task: Option<String>,
    /// Why it was dead-lettered (`x-dead-letter-reason`).
    pub reason: Option<String>,
    /// The queue it came from and is replayed to.
    pub origin_queue: String,
    /// When it was dead-lettered (ISO-8601, UTC).
    pub dead_lettered_at: Option<String>,
    /// The worker (`<pid>@<host>`) that dead-lettered it.
    pub worker: Option<String>,
    /// The message itself, headers included.
    pub message: Message,
}

impl DeadLetter {
    fn of(message: Message, dead_letter_queue: &str) -> Self {
        let headers = &message.properties.headers;
        let text = |key: &str| headers.get_str(key).map(str::to_owned);
        let origin_queue = text(dead_letter_headers::QUEUE).unwrap_or_else(|| {
            dead_letter_queue
                .strip_suffix(DEAD_LETTER_SUFFIX)
                .unwrap_or(dead_letter_queue)
                .to_owned()
        });
        Self {
            task_id: text("id").or_else(|| message.properties.correlation_id.clone()),
            task: text("task"),
            reason: text(dead_letter_headers::REASON),
            dead_lettered_at: text(dead_letter_headers::AT),
            worker: text(dead_letter_headers::WORKER),
            origin_queue,
            message,
        }
    }

    /// The message as it was before it was dead-lettered: the worker's
    /// `x-dead-letter-*` headers and any broker death history removed.
    pub fn original_message(&self) -> Message {
        let mut message = self.message.clone();
        let headers = &mut message.properties.headers;
        for key in [
            dead_letter_headers::REASON,
            dead_letter_headers::QUEUE,
            dead_letter_headers::AT,
            dead_letter_headers::WORKER,
        ] {
            headers.remove(key);
        }
        strip_death_history(headers);
        message
    }
}

/// Which dead-lettered messages an operation acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every message in the queue (up to the operation's limit).
    All,
    /// The messages of these task ids.
    TaskIds(Vec<String>),
}

impl Selection {
    fn selects(&self, letter: &DeadLetter) -> bool {
        match self {
            Selection::All => true,
            Selection::TaskIds(ids) => letter
                .task_id
                .as_ref()
                .is_some_and(|id| ids.iter().any(|wanted| wanted == id)),
        }
    }
}

/// What a replay or discard did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Messages replayed to their queue (or discarded).
    pub done: usize,
    /// Messages looked at and left in the dead-letter queue.
    pub kept: usize,
}

/// The dead-letter queue of one task queue.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    app: App,
    name: String,
}

impl DeadLetterQueue {
    /// The dead-letter queue of task queue `queue` (`<queue>.dead_letter`).
    pub fn of(app: &App, queue: &str) -> Self {
        Self {
            app: app.clone(),
            name: format!("{queue}{DEAD_LETTER_SUFFIX}"),
        }
    }

    /// The dead-letter queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many messages it holds.
    pub async fn len(&self) -> Result<u32, BrokerError> {
        self.app.broker().queue_message_count(&self.name).await
    }

    /// Whether it holds no message.
    pub async fn is_empty(&self) -> Result<bool, BrokerError> {
        Ok(self.len().await? == 0)
    }

    /// The first `limit` messages, oldest first; all stay in the queue.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut letters = Vec::new();
        self.snapshot(limit, |letter| {
            letters.push(letter.clone());
            Action::Keep
        })
        .await?;
        Ok(letters)
    }

    /// Publishes the selected messages (among the first `limit`) back to the
    /// queues they came from, as they were before they were dead-lettered,
    /// and removes each from the dead-letter queue once the broker confirmed
    /// its copy. Stops at the first copy that cannot be published (e.g. the
    /// queue no longer exists); that message and the rest stay.
    pub async fn replay(&self, which: &Selection, limit: usize) -> Result<Settled, BrokerError> {
        self.snapshot(limit, |letter| {
            if which.selects(letter) {
                Action::Replay
            } else {
                Action::Keep
            }
        })
        .await
    }

    /// Removes the selected messages (among the first `limit`) for good.
    pub async fn discard(&self, which: &Selection, limit: usize) -> Result<Settled, BrokerError> {
        self.snapshot(limit, |letter| {
            if which.selects(letter) {
                Action::Discard
            } else {
                Action::Keep
            }
        })
        .await
    }

    /// Receives up to `limit` ready messages without acknowledging them,
    /// settles each as `decide` says, then closes the channel so that the
    /// kept ones return to the queue in their order.
    async fn snapshot(
        &self,
        limit: usize,
        mut decide: impl FnMut(&DeadLetter) -> Action,
    ) -> Result<Settled, BrokerError> {
        let broker = self.app.broker();
        let ready =
            usize::try_from(broker.queue_message_count(&self.name).await?).unwrap_or(usize::MAX);
        let wanted = ready.min(limit).min(usize::from(u16::MAX));
        let mut settled = Settled::default();
        if wanted == 0 {
            return Ok(settled);
        }
        let prefetch = u16::try_from(wanted).unwrap_or(u16::MAX);
        let mut consumer = broker
            .consume(
                std::slice::from_ref(&self.name),
                ConsumeOptions::manual_ack(prefetch),
            )
            .await?;
        let mut outcome = Ok(());
        let mut held = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            let delivery =
                match tokio::time::timeout(RECEIVE_TIMEOUT, consumer.deliveries.next()).await {
                    // Fewer than counted: another consumer took some.
                    Err(_) | Ok(None) => break,
                    Ok(Some(Err(error))) => {
                        outcome = Err(error);
                        break;
                    }
                    Ok(Some(Ok(delivery))) => delivery,
                };
            let letter = DeadLetter::of(delivery.message.clone(), &self.name);
            let result = match decide(&letter) {
                Action::Keep => {
                    settled.kept += 1;
                    Ok(())
                }
                Action::Discard => delivery.acker.ack().await.map(|()| settled.done += 1),
                Action::Replay => {
                    match broker
                        .publish("", &letter.origin_queue, &letter.original_message())
                        .await
                    {
                        Ok(()) => delivery.acker.ack().await.map(|()| settled.done += 1),
                        Err(error) => Err(error),
                    }
                }
            };
            // Unacknowledged deliveries must outlive the loop: dropping one
            // does not requeue it, closing the channel does.
            held.push(delivery);
            if let Err(error) = result {
                outcome = Err(error);
                break;
            }
        }
        if let Err(error) = consumer.cancel.close().await {
            tracing::debug!(%error, "could not close the dead-letter snapshot channel");
        }
        drop(held);
        outcome.map(|()| settled)
    }
}

/// What to do with one message of a snapshot.
enum Action {
    Keep,
    Replay,
    Discard,
}
