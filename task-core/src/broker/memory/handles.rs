//! What a consumer holds: its deliveries stream, its cancel handle, and each
//! delivery's acknowledger. They reach the broker through a weak reference,
//! so they never keep a dropped private broker alive.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::Core;
use crate::broker::{Acknowledger, BrokerError, ConsumerCancel, Delivery};

/// How a delivery is settled.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    Ack,
    Requeue,
    /// Rejected without requeue: dead-lettered or dropped.
    Discard,
}

impl Outcome {
    /// The AMQP method it stands for.
    pub(super) fn operation(self) -> &'static str {
        match self {
            Outcome::Ack => "basic.ack",
            Outcome::Requeue | Outcome::Discard => "basic.reject",
        }
    }
}

/// Settles a delivery made with manual acknowledgement.
pub(super) struct MemoryAcker {
    core: Weak<Core>,
    consumer: u64,
    tag: u64,
}

impl MemoryAcker {
    /// The acknowledger of delivery `tag` of consumer `consumer`.
    pub(super) fn new(core: Weak<Core>, consumer: u64, tag: u64) -> Self {
        Self {
            core,
            consumer,
            tag,
        }
    }

    fn settle(&self, outcome: Outcome) -> Result<(), BrokerError> {
        let core = self.core.upgrade().ok_or_else(|| {
            BrokerError::failed(outcome.operation(), "the memory:// broker is gone")
        })?;
        core.settle_delivery(self.consumer, self.tag, outcome)
    }
}

#[async_trait]
impl Acknowledger for MemoryAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.settle(Outcome::Ack)
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        self.settle(if requeue {
            Outcome::Requeue
        } else {
            Outcome::Discard
        })
    }
}

/// The acknowledger of a `no_ack` delivery: the broker forgot it already.
pub(super) struct NoAck;

#[async_trait]
impl Acknowledger for NoAck {
    async fn ack(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn reject(&self, _requeue: bool) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A consumer's deliveries. Dropping it closes the consumer (its unacked
/// messages go back to their queues), like closing an AMQP channel.
pub(super) struct MemoryDeliveries {
    receiver: mpsc::UnboundedReceiver<Delivery>,
    closed: Arc<AtomicBool>,
    core: Weak<Core>,
    consumer: u64,
}

impl MemoryDeliveries {
    /// The stream of consumer `consumer`, fed through `receiver`, ending at
    /// once when `closed` is set.
    pub(super) fn new(
        receiver: mpsc::UnboundedReceiver<Delivery>,
        closed: Arc<AtomicBool>,
        core: Weak<Core>,
        consumer: u64,
    ) -> Self {
        Self {
            receiver,
            closed,
            core,
            consumer,
        }
    }
}

impl Stream for MemoryDeliveries {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        self.receiver.poll_recv(cx).map(|next| next.map(Ok))
    }
}

impl Drop for MemoryDeliveries {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.close_consumer(self.consumer);
        }
    }
}

/// Cancels or closes a memory consumer.
pub(super) struct MemoryConsumerCancel {
    core: Weak<Core>,
    consumer: u64,
}

impl MemoryConsumerCancel {
    /// The cancel handle of consumer `consumer`.
    pub(super) fn new(core: Weak<Core>, consumer: u64) -> Self {
        Self { core, consumer }
    }
}

#[async_trait]
impl ConsumerCancel for MemoryConsumerCancel {
    async fn cancel(&self) -> Result<(), BrokerError> {
        if let Some(core) = self.core.upgrade() {
            core.cancel_consumer(self.consumer);
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), BrokerError> {
        if let Some(core) = self.core.upgrade() {
            core.close_consumer(self.consumer);
        }
        Ok(())
    }
}
