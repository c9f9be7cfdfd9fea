//! Which instance of a scheduler group leads: the one whose connection
//! holds the group's lock, an exclusive queue (`<prefix>.leader`).
//! RabbitMQ lets one connection declare an exclusive queue and refuses the
//! others with `RESOURCE_LOCKED` (405) until that connection closes; a
//! process that dies closes its socket, so the queue (the lock) goes at
//! once, and a broker that stops hearing from a client (heartbeats) closes
//! its connection. A standby instance declares the queue again every poll.

use std::time::Duration;

use crate::broker::{Broker, BrokerError, QueueSpec};

/// What a scheduler instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Not started yet.
    Starting,
    /// Connecting, or waiting for the lock.
    Standby,
    /// Holding the lock: firing the group's runs.
    Leading,
}

/// A group's lock.
#[derive(Debug, Clone)]
pub(crate) struct Leadership {
    queue: String,
}

impl Leadership {
    pub(crate) fn new(queue: String) -> Self {
        Self { queue }
    }

    /// The lock queue's name.
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    fn spec(&self) -> QueueSpec {
        QueueSpec {
            name: self.queue.clone(),
            durable: false,
            auto_delete: false,
            exclusive: true,
            arguments: serde_json::Map::new(),
            same_name_exchange: None,
        }
    }

    /// Waits until `broker`'s connection holds the lock, trying every
    /// `poll`; fails if the connection is lost or the broker refuses the
    /// declaration for another reason.
    pub(crate) async fn acquire(
        &self,
        broker: &dyn Broker,
        poll: Duration,
    ) -> Result<(), BrokerError> {
        let spec = self.spec();
        loop {
            match broker.declare_queue(&spec).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_resource_locked() => tokio::time::sleep(poll).await,
                Err(error) => return Err(error),
            }
        }
    }

    /// Checks that `broker`'s connection still holds the lock (declaring
    /// it again is a no-op for its owner; a lost connection fails).
    pub(crate) async fn confirm(&self, broker: &dyn Broker) -> Result<(), BrokerError> {
        broker.declare_queue(&self.spec()).await
    }
}
