//! Messages rejected without requeue, as RabbitMQ treats them: dead-lettered
//! to the exchange their queue's declaration names (`x-dead-letter-exchange`,
//! `x-dead-letter-routing-key`), with RabbitMQ's `x-death` record, or else
//! dropped.

use super::{envelope, Inner};
use crate::broker::dead_letter::record_death;
use crate::broker::BrokerError;

impl Inner {
    /// Rejects the message held under `tag`, popped from `queue`, for good:
    /// dead-lettered if the queue's declaration says so, then forgotten.
    /// If the dead letter cannot be published, the message stays held (it
    /// comes back after the visibility timeout) and the error is returned.
    pub(crate) async fn reject_for_good(&self, tag: &str, queue: &str) -> Result<(), BrokerError> {
        let target = self
            .queue_record(queue)
            .await?
            .and_then(|record| record.declaration(queue))
            .and_then(|d| {
                d.dead_letter_exchange
                    .clone()
                    .map(|exchange| (exchange, d.dead_letter_routing_key.clone()))
            });
        if let Some((exchange, routing_key)) = target {
            self.dead_letter(tag, queue, &exchange, routing_key.as_deref())
                .await?;
        }
        self.ack(tag).await
    }

    /// Publishes a copy of the message under `tag` to `exchange`, recording
    /// its death (reason `rejected`) as RabbitMQ does.
    async fn dead_letter(
        &self,
        tag: &str,
        queue: &str,
        exchange: &str,
        routing_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        let Some(entry) = self.unacked_entry(tag).await? else {
            return Ok(());
        };
        let decoded =
            serde_json::from_str::<(Box<serde_json::value::RawValue>, String, String)>(&entry)
                .ok()
                .and_then(|(raw, _, _)| envelope::decode(raw.get().as_bytes()).ok());
        let Some(decoded) = decoded else {
            tracing::warn!(
                tag,
                queue,
                "redis broker: a rejected message that is not kombu's envelope is dropped, not dead-lettered"
            );
            return Ok(());
        };
        let mut message = decoded.message;
        let expiration = message.properties.expiration.take();
        record_death(
            &mut message.properties.headers,
            queue,
            "rejected",
            &decoded.info.exchange,
            &decoded.info.routing_key,
            expiration,
        );
        let routing_key = routing_key.unwrap_or(&decoded.info.routing_key);
        // As RabbitMQ: a dead letter nobody is bound to receive is dropped.
        self.publish(exchange, routing_key, &message, false, None)
            .await
    }
}
