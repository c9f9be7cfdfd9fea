//! What a Redis broker does in the background once it consumes (or has
//! published a delay): renew the visibility of the messages it holds,
//! restore those of processes that died (kombu's `restore_visible`, under
//! kombu's own mutex so Python and Rust restorers never restore one message
//! twice), and move due delayed messages to their lists. The tasks hold the
//! broker weakly: they end with it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use tokio::sync::Notify;

use super::Inner;
use crate::broker::BrokerError;

/// The most unacknowledged messages one restore pass looks at.
const RESTORE_BATCH: isize = 100;
/// The most delayed messages one move takes.
const MOVE_BATCH: u32 = 500;
/// How often the mover looks for delays published by other processes.
const MOVER_POLL: Duration = Duration::from_millis(100);
/// How long kombu's restore mutex is held at most (kombu's
/// `unacked_mutex_expire`).
const MUTEX_EXPIRES_SECS: u64 = 300;

/// The background tasks' switches.
#[derive(Default)]
pub(crate) struct Upkeep {
    started: AtomicBool,
    stopped: AtomicBool,
    stop: Notify,
    mover: Notify,
    /// The earliest due time (ms) the mover knows of.
    next_due: AtomicU64,
}

impl Upkeep {
    /// Tells the mover a delay is due at `due_ms`.
    pub(crate) fn wake_mover(&self, due_ms: u64) {
        let before = self.next_due.fetch_min(due_ms, Ordering::AcqRel);
        if due_ms < before || before == 0 {
            self.mover.notify_one();
        }
    }

    /// Stops the tasks.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.mover.notify_one();
    }
}

/// Seconds since the epoch, as kombu scores `unacked_index`.
pub(crate) fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Milliseconds since the epoch, the delayed set's scores.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Starts the background tasks once per broker.
pub(crate) fn start(inner: &Arc<Inner>) {
    if inner.upkeep.started.swap(true, Ordering::AcqRel) {
        return;
    }
    inner.upkeep.next_due.store(u64::MAX, Ordering::Release);
    tokio::spawn(keep_visible(Arc::downgrade(inner)));
    tokio::spawn(move_delayed(Arc::downgrade(inner)));
}

/// Renews what this process holds every third of the visibility timeout,
/// and restores what others left every quarter of it (at most every 30 s).
async fn keep_visible(inner: Weak<Inner>) {
    let (renew_every, restore_every) = match inner.upgrade() {
        Some(inner) => {
            let timeout = inner.options.visibility_timeout;
            (
                (timeout / 3).clamp(Duration::from_millis(50), Duration::from_secs(300)),
                (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)),
            )
        }
        None => return,
    };
    let mut renew = tokio::time::interval(renew_every);
    let mut restore = tokio::time::interval(restore_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    restore.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let restoring = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.upkeep.stopped.load(Ordering::Acquire) {
                return;
            }
            let stop = inner.upkeep.stop.notified();
            tokio::select! {
                _ = renew.tick() => false,
                _ = restore.tick() => true,
                _ = stop => return,
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        let outcome = if restoring {
            restore_visible(&inner).await.map(|restored| {
                if restored > 0 {
                    tracing::warn!(
                        restored,
                        "redis broker: restored messages left unacknowledged past the visibility timeout (a consumer died)"
                    );
                }
            })
        } else {
            renew_held(&inner).await
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, "redis broker: visibility upkeep failed; trying again");
        }
    }
}

/// Sets the score of every message this process holds to now.
async fn renew_held(inner: &Inner) -> Result<(), BrokerError> {
    let tags = inner.held_tags();
    if tags.is_empty() {
        return Ok(());
    }
    let now = now_secs();
    for chunk in tags.chunks(1000) {
        let index = inner.keys.unacked_index.clone();
        inner
            .retrying("zadd", move |mut c| {
                let mut command = redis::cmd("ZADD");
                command.arg(&index).arg("XX");
                for tag in chunk {
                    command.arg(now).arg(tag);
                }
                async move { command.query_async::<()>(&mut c).await }
            })
            .await?;
    }
    Ok(())
}

/// kombu's `restore_visible`: under kombu's mutex, puts back the messages
/// whose score is older than the visibility timeout (their holder died or
/// is kombu's, which renews nothing). Returns how many.
pub(crate) async fn restore_visible(inner: &Inner) -> Result<u32, BrokerError> {
    let token = uuid::Uuid::new_v4().to_string();
    let mutex = inner.keys.unacked_mutex.clone();
    let taken: bool = {
        let (mutex, token) = (mutex.clone(), token.clone());
        inner
            .retrying("set", move |mut c| {
                let (mutex, token) = (mutex.clone(), token.clone());
                async move {
                    let options = redis::SetOptions::default()
                        .conditional_set(redis::ExistenceCheck::NX)
                        .with_expiration(redis::SetExpiry::EX(MUTEX_EXPIRES_SECS));
                    let reply: Option<String> = c.set_options(&mutex, &token, options).await?;
                    Ok(reply.is_some())
                }
            })
            .await?
    };
    if !taken {
        return Ok(0);
    }
    let outcome = restore_stale(inner).await;
    let script = &inner.scripts.release_mutex;
    let released: Result<i64, _> = inner
        .retrying("del", |mut c| {
            let mut invocation = script.prepare_invoke();
            invocation.key(&mutex).arg(&token);
            async move { invocation.invoke_async(&mut c).await }
        })
        .await;
    if let Err(error) = released {
        tracing::debug!(%error, "redis broker: the restore mutex will expire by itself");
    }
    outcome
}

async fn restore_stale(inner: &Inner) -> Result<u32, BrokerError> {
    let ceil = now_secs() - inner.options.visibility_timeout.as_secs_f64();
    let index = inner.keys.unacked_index.clone();
    let stale: Vec<String> = inner
        .retrying("zrangebyscore", move |mut c| {
            let index = index.clone();
            async move {
                c.zrangebyscore_limit(&index, "-inf", ceil, 0, RESTORE_BATCH)
                    .await
            }
        })
        .await?;
    let held = inner.held_tags();
    let mut restored = 0;
    for tag in stale.iter().filter(|tag| !held.contains(tag)) {
        if inner.restore(tag, Some(ceil), true).await? {
            restored += 1;
        }
    }
    Ok(restored)
}

/// Moves what is due, then sleeps until the next due time (or a new
/// earlier delay, or [`MOVER_POLL`] for other processes' delays).
async fn move_delayed(inner: Weak<Inner>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.upkeep.stopped.load(Ordering::Acquire) {
                return;
            }
            match move_due(&inner).await {
                Ok((_, next)) => next,
                Err(error) => {
                    tracing::warn!(%error, "redis broker: cannot move due delayed messages yet");
                    None
                }
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let upkeep = &strong.upkeep;
        upkeep
            .next_due
            .store(next.unwrap_or(u64::MAX), Ordering::Release);
        let wait = next.map_or(MOVER_POLL, |due| {
            Duration::from_millis(due.saturating_sub(now_ms())).min(MOVER_POLL)
        });
        let woken = upkeep.mover.notified();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = woken => {}
        }
    }
}

/// Moves the due delayed messages (a batch at a time) to their lists;
/// returns how many moved and the next due time.
pub(crate) async fn move_due(inner: &Inner) -> Result<(u32, Option<u64>), BrokerError> {
    let mut moved = 0;
    loop {
        let script = &inner.scripts.move_due;
        let key = inner.keys.delayed.clone();
        let now = now_ms();
        let (count, next): (u32, Option<String>) = inner
            .retrying("move due", |mut c| {
                let mut invocation = script.prepare_invoke();
                invocation.key(&key).arg(now).arg(MOVE_BATCH);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        moved += count;
        let next = next
            .and_then(|score| score.parse::<f64>().ok())
            .map(|ms| ms as u64);
        if count < MOVE_BATCH {
            return Ok((moved, next));
        }
    }
}
