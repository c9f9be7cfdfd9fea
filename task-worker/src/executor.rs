//! One delivery, start to end: the worker's [`Pipeline`] takes it to an
//! outcome, the [`Settler`] publishes what the outcome calls for and settles
//! the message with the broker.

use std::sync::Arc;

use task_core::broker::Delivery;
use task_core::pipeline::{Input, Pipeline, Slot};
use task_core::{DeliveryInfo, States};

use crate::settle::Settler;

/// What handling a delivery needs from its worker.
#[derive(Clone)]
pub(crate) struct Executor {
    /// The steps and stages of the worker.
    pub(crate) pipeline: Pipeline,
    /// Turns outcomes into publishes and acks.
    pub(crate) settler: Settler,
    /// The shared values tasks take as `State<T>`.
    pub(crate) states: Arc<States>,
}

impl Executor {
    /// Processes one delivery to the end, never panicking.
    /// `slot` is the concurrency slot the delivery holds (`None` for the
    /// framework's own tasks, which wait rather than run).
    pub(crate) async fn handle(&self, mut delivery: Delivery, mut slot: Option<Slot>) {
        // Settlement needs the message, queue and acker, not these.
        let exchange = std::mem::take(&mut delivery.exchange);
        let routing_key = std::mem::take(&mut delivery.routing_key);
        let input = Input {
            message: &delivery.message,
            queue: &delivery.queue,
            delivery: DeliveryInfo {
                exchange,
                routing_key,
                redelivered: delivery.redelivered,
                priority: delivery.message.properties.priority,
            },
            acker: Some(delivery.acker.as_ref()),
            slot: slot.as_mut(),
            results: self.settler.results.as_ref(),
            states: &self.states,
        };
        let processed = self.pipeline.process(input).await;
        self.settler.settle(&delivery, processed).await;
    }
}
