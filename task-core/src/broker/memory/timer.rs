//! The broker's timer: a tokio task that sleeps until the next deadline (a
//! queue head's expiry or a delayed message's due time), then wakes the
//! broker up. One is armed at a time, for the earliest deadline.

use std::sync::Arc;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::Core;

/// An armed timer: a tokio task that sleeps until `deadline`.
///
/// A timer runs on the runtime of the operation that armed it. If that
/// runtime shuts down, the timer is finished without having fired, and the
/// next operation on what it watched arms a new one.
pub(super) struct Timer {
    /// When it fires.
    pub(super) deadline: Instant,
    /// Tells this timer from a later one of the same slot.
    pub(super) token: u64,
    /// Stops it.
    pub(super) handle: AbortHandle,
}

/// Arms `slot` for `deadline`, unless it is armed already for that time or
/// earlier (the earlier timer re-arms for the rest when it fires). Without a
/// runtime (never from the async API) nothing is armed: the next operation
/// arms it.
pub(super) fn rearm(slot: &mut Option<Timer>, core: &Arc<Core>, deadline: Instant, token: u64) {
    if let Some(timer) = slot {
        if timer.deadline <= deadline && !timer.handle.is_finished() {
            return;
        }
        timer.handle.abort();
    }
    *slot = None;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let core = Arc::downgrade(core);
    let handle = runtime.spawn(async move {
        tokio::time::sleep_until(deadline).await;
        if let Some(core) = core.upgrade() {
            core.on_timer(token);
        }
    });
    *slot = Some(Timer {
        deadline,
        token,
        handle: handle.abort_handle(),
    });
}
