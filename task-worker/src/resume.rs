//! [`consumer_until_stopped`]: the worker's side consumers (chord joins,
//! remote control, the revoke log) resume the same way after a lost
//! connection: try again with a capped exponential backoff until it works
//! or the worker stops.

use std::future::Future;
use std::time::Duration;

use task_core::broker::{BrokerError, Consumer};
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
