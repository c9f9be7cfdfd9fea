//! Autoscaling (Celery's `--autoscale MAX,MIN`): [`Autoscale`], the
//! bounds, and the scaler that every second grows the worker's concurrency
//! to the tasks it holds (up to the maximum) and, once nothing has made it
//! grow for the keep-alive, shrinks it to what it holds (down to the
//! minimum), as Celery's `Autoscaler` does. What it holds: the tasks it
//! runs or that wait for their turn, the one taken from the queues that
//! waits for a slot, and, while one does, the messages ready in its queues. The bounds change at run time
//! through remote control (`autoscale`, `pool_grow`, `pool_shrink`).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// How often the scaler looks (Celery's `AUTOSCALE_INTERVAL`... its
/// `Autoscaler` sleeps one second between looks).
const INTERVAL: Duration = Duration::from_secs(1);

/// How long the worker stays grown after it last had to grow, by default
/// (Celery's `AUTOSCALE_KEEPALIVE`).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// Autoscaling bounds: at most `max` tasks at once, at least `min` (never
/// below one: an idle slot costs nothing here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscale {
    /// The most tasks run at once.
    pub max: usize,
    /// The fewest concurrency slots kept.
    pub min: usize,
}

/// Why `--autoscale` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}`: expected MAX[,MIN] with 1 <= MIN <= MAX (e.g. `10,3`)")]
pub struct BadAutoscale {
    given: String,
}

impl Autoscale {
    /// Bounds from `max` and `min`; `None` unless `1 <= min <= max`.
    pub fn new(max: usize, min: usize) -> Option<Self> {
        (min >= 1 && min <= max).then_some(Self { max, min })
    }
}

impl FromStr for Autoscale {
    type Err = BadAutoscale;

    /// `MAX,MIN` as Celery's `--autoscale` takes it; `MAX` alone keeps one
    /// slot at least.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadAutoscale {
            given: text.to_owned(),
        };
        let mut parts = text.split(',').map(str::trim);
        let max = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let min = match parts.next() {
            Some(n) => n.parse().map_err(|_| bad())?,
            None => 1,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Self::new(max, min).ok_or_else(bad)
    }
}

impl fmt::Display for Autoscale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.max, self.min)
    }
}

/// The running scaler's bounds and when it last grew the worker.
#[derive(Debug)]
pub(crate) struct Autoscaler {
    state: Mutex<State>,
    keepalive: Duration,
}

#[derive(Debug)]
struct State {
    bounds: Autoscale,
    last_grown: Instant,
}

impl Autoscaler {
    pub(crate) fn new(bounds: Autoscale, keepalive: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                bounds,
                last_grown: Instant::now(),
            }),
            keepalive,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bounds now.
    pub(crate) fn bounds(&self) -> Autoscale {
        self.lock().bounds
    }

    /// One look: grow to the tasks held (up to the maximum), or, when the
    /// worker has not had to grow for the keep-alive, shrink to them (down
    /// to the minimum). `backlog`: the tasks waiting beyond those it runs.
    fn scale(&self, node: &Node, backlog: usize) {
        let mut state = self.lock();
        let Autoscale { max, min } = state.bounds;
        let slots = node.concurrency();
        let held = node.requests.runnable_count() + backlog;
        let wanted = held.min(max);
        if wanted > slots {
            tracing::debug!(from = slots, to = wanted, "autoscale: growing");
            node.grow(wanted - slots);
            state.last_grown = Instant::now();
            return;
        }
        let kept = held.max(min);
        if kept < slots && state.last_grown.elapsed() >= self.keepalive {
            tracing::debug!(from = slots, to = kept, "autoscale: shrinking");
            node.shrink(slots - kept);
        }
    }

    /// `autoscale max min` (either may be absent): new bounds, the
    /// concurrency brought within them at once (Celery's `update`).
    pub(crate) fn update(&self, node: &Node, max: Option<usize>, min: Option<usize>) -> Autoscale {
        let mut state = self.lock();
        let max = max.unwrap_or(state.bounds.max).max(1);
        let min = min.unwrap_or(state.bounds.min).clamp(1, max);
        state.bounds = Autoscale { max, min };
        let slots = node.concurrency();
        if slots > max {
            node.shrink(slots - max);
        } else if slots < min {
            node.grow(min - slots);
        }
        state.bounds
    }

    /// `pool_grow n` under autoscaling: `n` more slots now, the maximum
    /// raised to them if needed (Celery's `force_scale_up`).
    pub(crate) fn force_grow(&self, node: &Node, n: usize) {
        let mut state = self.lock();
        let grown = node.concurrency() + n;
        state.bounds.max = state.bounds.max.max(grown);
        node.grow(n);
        state.last_grown = Instant::now();
    }

    /// `pool_shrink n` under autoscaling: up to `n` fewer slots now, the
    /// minimum lowered to them if needed (Celery's `force_scale_down`);
    /// returns by how many.
    pub(crate) fn force_shrink(&self, node: &Node, n: usize) -> usize {
        let mut state = self.lock();
        let shrunk = node.concurrency().saturating_sub(n).max(1);
        state.bounds.min = state.bounds.min.min(shrunk);
        node.shrink(n)
    }

    /// `stats.autoscaler`, as Celery's `Autoscaler.info`.
    pub(crate) fn info(&self, node: &Node) -> Value {
        let bounds = self.bounds();
        json!({
            "max": bounds.max,
            "min": bounds.min,
            "current": node.concurrency(),
            "qty": node.requests.runnable_count(),
        })
    }
}

/// Scales `node` every second until `stop`.
pub(crate) async fn run(node: Arc<Node>, stop: CancellationToken) {
    let Some(scaler) = node.autoscaler.as_ref() else {
        return;
    };
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let backlog = backlog(&node).await;
        scaler.scale(&node, backlog);
    }
}

/// The tasks waiting beyond those the worker runs: none while a slot is
/// free; else the one taken from the queues that waits for a slot, and the
/// messages ready in the queues consumed (those prefetched and not yet
/// taken are not counted: the worker grows again at the next look).
async fn backlog(node: &Node) -> usize {
    if !node.waiting_for_slot() {
        return 0;
    }
    let mut waiting = 1;
    for queue in node.queues() {
        if let Ok(ready) = node.app.broker().queue_message_count(&queue).await {
            waiting += usize::try_from(ready).unwrap_or(usize::MAX);
        }
    }
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_read_as_celery_writes_them() {
        assert_eq!("10,3".parse(), Ok(Autoscale { max: 10, min: 3 }));
        assert_eq!(" 4 , 4 ".parse(), Ok(Autoscale { max: 4, min: 4 }));
        assert_eq!("6".parse(), Ok(Autoscale { max: 6, min: 1 }));
        for bad in ["", "x", "3,10", "0", "5,0", "1,2,3", "5,-1"] {
            assert!(bad.parse::<Autoscale>().is_err(), "{bad}");
        }
        assert_eq!(Autoscale { max: 10, min: 3 }.to_string(), "10,3");
    }
}
