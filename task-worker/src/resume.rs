//! [`consumer_until_stopped`]: the worker's side consumers (chord joins,
//! expired tasks, remote control, the revoke log) resume the same way
//! after a lost connection: try again with a capped exponential backoff
//! until it works or the worker stops. [`drain_until_stopped`] is the whole
//! consuming loop of the side queues whose deliveries go to the executor.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use task_core::broker::{BrokerError, Consumer, Delivery};
use tokio_util::sync::CancellationToken;

/// The first pause after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Calls `consume` until it gives a consumer (returned) or `stop` is
/// cancelled (`None`), pausing between attempts; each failure is logged
/// at `warn` as `cannot consume <what>`.
pub(crate) async fn consumer_until_stopped<F, Fut>(
    stop: &CancellationToken,
    what: &str,
    mut consume: F,
) -> Option<Consumer>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Consumer, BrokerError>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            consumed = consume() => match consumed {
                Ok(consumer) => return Some(consumer),
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "cannot consume {what}; retrying");
                }
            },
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Consumes what `consume` gives until `stop` (cancelling the consumer
/// then), resuming as [`consumer_until_stopped`] after a lost connection,
/// and hands each delivery to `each`. The worker's side queues (chord
/// joins, expired tasks) are drained this way.
pub(crate) async fn drain_until_stopped<F, Fut>(
    stop: &CancellationToken,
    what: &str,
    mut consume: F,
    mut each: impl FnMut(Delivery),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Consumer, BrokerError>>,
{
    loop {
        let Some(mut consumer) = consumer_until_stopped(stop, what, &mut consume).await else {
            return;
        };
        loop {
            let delivery = tokio::select! {
                () = stop.cancelled() => {
                    if let Err(error) = consumer.cancel.cancel().await {
                        tracing::debug!(%error, "could not cancel the consumer of {what}");
                    }
                    return;
                }
                delivery = consumer.deliveries.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => each(delivery),
                Some(Err(error)) => {
                    tracing::warn!(%error, "lost the consumer of {what}; resuming");
                    break;
                }
                None => break,
            }
        }
    }
}
