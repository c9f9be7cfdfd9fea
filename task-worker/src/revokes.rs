//! [`RevokedIds`]: the ids of revoked tasks this worker knows, bounded in
//! number and age as Celery's (50,000 ids, 3 hours), so that a flood of
//! revokes cannot grow the worker without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Celery's `REVOKES_MAX`.
pub(crate) const MAX_REVOKED: usize = 50_000;

/// Celery's `REVOKE_EXPIRES`.
pub(crate) const REVOKED_FOR: Duration = Duration::from_secs(3 * 3600);

/// Revoked task ids, the oldest forgotten first.
#[derive(Debug)]
pub(crate) struct RevokedIds {
    inner: Mutex<Revoked>,
    max: usize,
    keep_for: Duration,
}

#[derive(Debug, Default)]
struct Revoked {
    /// id → when it was revoked.
    ids: HashMap<String, Instant>,
    /// In the order they were revoked (an id revoked again appears twice;
    /// the older entry is skipped when it comes up).
    order: VecDeque<(String, Instant)>,
}

impl Default for RevokedIds {
    fn default() -> Self {
        Self::new(MAX_REVOKED, REVOKED_FOR)
    }
}

impl RevokedIds {
    /// At most `max` ids, each kept for `keep_for`.
    pub(crate) fn new(max: usize, keep_for: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            max,
            keep_for,
        }
    }

    /// Adds `id`; returns whether it was new.
    pub(crate) fn insert(&self, id: &str) -> bool {
        self.insert_aged(id, Duration::ZERO)
    }

    /// Adds `id`, revoked `age` ago (read from the revoke log); returns
    /// whether it was new.
    pub(crate) fn insert_aged(&self, id: &str, age: Duration) -> bool {
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        let mut revoked = self.lock();
        revoked.expire(now, self.keep_for);
        if revoked.ids.get(id).is_some_and(|known| *known >= at) {
            return false;
        }
        let new = revoked.ids.insert(id.to_owned(), at).is_none();
        revoked.order.push_back((id.to_owned(), at));
        while revoked.ids.len() > self.max {
            revoked.pop_oldest();
        }
        new
    }

    /// Whether `id` is revoked.
    pub(crate) fn contains(&self, id: &str) -> bool {
        let revoked = self.lock();
        if revoked.ids.is_empty() {
            return false;
        }
        revoked
            .ids
            .get(id)
            .is_some_and(|at| at.elapsed() < self.keep_for)
    }

    /// Every id known, oldest first.
    pub(crate) fn list(&self) -> Vec<String> {
        let mut revoked = self.lock();
        revoked.expire(Instant::now(), self.keep_for);
        let Revoked { ids, order } = &*revoked;
        order
            .iter()
            .filter(|(id, at)| ids.get(id) == Some(at) && at.elapsed() < self.keep_for)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Revoked> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Revoked {
    fn expire(&mut self, now: Instant, keep_for: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= keep_for)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, at)) = self.order.pop_front() {
            if self.ids.get(&id) == Some(&at) {
                self.ids.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_up_to_the_bound_oldest_out_first() {
        let revoked = RevokedIds::new(2, Duration::from_secs(60));
        assert!(revoked.insert("a"));
        assert!(!revoked.insert("a"));
        revoked.insert("b");
        revoked.insert("c");
        assert!(!revoked.contains("a"));
        assert!(revoked.contains("b") && revoked.contains("c"));
        assert_eq!(revoked.list(), ["b", "c"]);
    }

    #[test]
    fn ids_expire() {
        let revoked = RevokedIds::new(10, Duration::ZERO);
        revoked.insert("a");
        assert!(!revoked.contains("a"));
        assert!(revoked.list().is_empty());
    }
}
