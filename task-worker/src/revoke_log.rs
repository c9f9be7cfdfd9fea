//! Reads the revoke log (`task_core::control::revoke_log`): at start, every
//! revoke still kept, before the worker takes its first task; then each new
//! one as it is written, for as long as the worker runs.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use task_core::broker::{ConsumeOptions, Consumer, StreamOffset};
use task_core::control::revoke_log::{self, RevokeEntry, REVOKE_LOG};
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::resume::consumer_until_stopped;

/// How long a starting worker may spend reading the log before it starts
/// consuming tasks anyway (with a warning).
const CATCH_UP_WITHIN: Duration = Duration::from_secs(10);

/// How many entries the broker sends ahead.
const READ_AHEAD: u16 = 1000;

/// Reads the whole log into `node`'s revoked ids: writes a marker of its
/// own, then reads from the oldest entry up to that marker. Returns the
/// consumer, to follow the log with ([`follow`]); `None` on a broker
/// without streams (`memory://`: revokes reach running workers only) or
/// when the log cannot be read (logged).
pub(crate) async fn catch_up(node: &Node) -> Option<Consumer> {
    let broker = node.app.broker();
    if !broker.supports_streams() {
        return None;
    }
    let marker = uuid::Uuid::new_v4().to_string();
    let mut mark = RevokeEntry::revoking(Vec::new());
    mark.marker = Some(marker.clone());
    let started = async {
        revoke_log::append(broker.as_ref(), &mark).await?;
        broker
            .consume(&[REVOKE_LOG.to_owned()], read_options())
            .await
    };
    let mut consumer = match started.await {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::warn!(%error, "cannot read the revoke log: revokes sent before this worker \
                started are not known to it");
            return None;
        }
    };
    let read = async {
        let mut entries = 0_u64;
        while let Some(delivery) = consumer.deliveries.next().await {
            let Ok(delivery) = delivery else { break };
            let entry = apply(node, &delivery.message.body);
            let _ = delivery.acker.ack().await;
            entries += 1;
            if entry.is_some_and(|entry| entry.marker.as_deref() == Some(marker.as_str())) {
                return Some(entries);
            }
        }
        None
    };
    match tokio::time::timeout(CATCH_UP_WITHIN, read).await {
        Ok(Some(entries)) => {
            tracing::debug!(
                entries,
                revoked = node.revoked.list().len(),
                "read the revoke log"
            );
        }
        Ok(None) => tracing::warn!("the revoke log ended while being read"),
        Err(_) => tracing::warn!(
            "reading the revoke log took longer than {CATCH_UP_WITHIN:?}: consuming tasks \
             while the rest is read"
        ),
    }
    Some(consumer)
}

/// Follows the log from `consumer` until `stop`, reading it again from the
/// oldest entry after a lost connection (an entry written meanwhile is not
/// missed; those read twice change nothing).
pub(crate) async fn follow(node: Arc<Node>, consumer: Consumer, stop: CancellationToken) {
    let log = [REVOKE_LOG.to_owned()];
    let mut next = Some(consumer);
    loop {
        let mut reading = match next.take() {
            Some(reading) => reading,
            None => {
                let broker = node.app.broker();
                let resumed = consumer_until_stopped(&stop, "the revoke log", || {
                    broker.consume(&log, read_options())
                });
                match resumed.await {
                    Some(reading) => reading,
                    None => return,
                }
            }
        };
        loop {
            let delivery = tokio::select! {
                () = stop.cancelled() => {
                    let _ = reading.cancel.close().await;
                    return;
                }
                delivery = reading.deliveries.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    apply(&node, &delivery.message.body);
                    let _ = delivery.acker.ack().await;
                }
                Some(Err(_)) | None => break,
            }
        }
    }
}

fn read_options() -> ConsumeOptions {
    ConsumeOptions::manual_ack(READ_AHEAD).from_stream_offset(StreamOffset::First)
}

/// Adds the ids of one entry (not yet expired) to `node`'s revoked ids;
/// returns the entry, or `None` (logged) if it cannot be read.
fn apply(node: &Node, body: &[u8]) -> Option<RevokeEntry> {
    let entry: RevokeEntry = match serde_json::from_slice(body) {
        Ok(entry) => entry,
        Err(error) => {
            tracing::warn!(%error, "an entry of the revoke log cannot be read; skipped");
            return None;
        }
    };
    let age = entry.age();
    if age < revoke_log::KEEP_FOR {
        for id in &entry.ids {
            node.revoked.insert_aged(id, age);
        }
    }
    Some(entry)
}
