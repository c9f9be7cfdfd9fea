//! What this worker knows is revoked: [`RevokedIds`], the ids of revoked
//! tasks, bounded in number and age as Celery's (50,000 ids, 3 hours), so
//! that a flood of revokes cannot grow the worker without bound; and
//! [`RevokedStamps`], the stamps revoked by `revoke_by_stamped_headers`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use std::time::{Duration, Instant};

/// Celery's `REVOKES_MAX`.
pub(crate) const MAX_REVOKED: usize = 50_000;

/// Celery's `REVOKE_EXPIRES`.
pub(crate) const REVOKED_FOR: Duration = Duration::from_secs(3 * 3600);

/// Revoked task ids, the oldest forgotten first.
#[derive(Debug)]
pub(crate) struct RevokedIds {
    inner: Mutex<Revoked>,
    /// Whether any id was ever revoked here (read for every task, without
    /// the lock: most workers never see a revoke).
    any: AtomicBool,
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
            any: AtomicBool::new(false),
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
        self.any.store(true, Ordering::Release);
        revoked.order.push_back((id.to_owned(), at));
        while revoked.ids.len() > self.max {
            revoked.pop_oldest();
        }
        new
    }

    /// Whether `id` is revoked.
    pub(crate) fn contains(&self, id: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
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

/// The stamps revoked by `revoke_by_stamped_headers` (Celery 5.3+):
/// `{stamp name: [values]}`. A task is revoked when one of its stamps (its
/// value, or one of its values) is among the values revoked under that
/// name. Kept in memory, as Celery keeps them.
#[derive(Debug, Default)]
pub(crate) struct RevokedStamps {
    by_name: Mutex<HashMap<String, Vec<Value>>>,
    /// Whether there are any (read for every task received).
    any: AtomicBool,
}

impl RevokedStamps {
    /// Revokes `values` (a value or a list of them) under `name`.
    pub(crate) fn add(&self, name: &str, values: &Value) {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        by_name
            .entry(name.to_owned())
            .or_default()
            .extend(as_list(values).iter().cloned());
        self.any.store(true, Ordering::Relaxed);
    }

    /// Whether none was revoked.
    pub(crate) fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    /// The `{name: value}` of `stamps` (a task's) that is revoked, if one is.
    pub(crate) fn revoking(&self, stamps: &Value) -> Option<Value> {
        let stamps = stamps.as_object()?;
        let by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        stamps.iter().find_map(|(name, stamped)| {
            let revoked = by_name.get(name)?;
            as_list(stamped)
                .iter()
                .find(|value| revoked.contains(value))
                .map(|value| serde_json::json!({ name.clone(): value }))
        })
    }
}

/// `value` as a list: itself if it is one, else a list of it.
fn as_list(value: &Value) -> std::borrow::Cow<'_, [Value]> {
    match value {
        Value::Array(items) => std::borrow::Cow::Borrowed(items),
        other => std::borrow::Cow::Owned(vec![other.clone()]),
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stamp_value_or_one_of_its_values_revokes() {
        let revoked = RevokedStamps::default();
        assert!(revoked.is_empty());
        revoked.add("mtask_id", &json!("a"));
        revoked.add("mtask_id", &json!(["b", "c"]));
        assert!(!revoked.is_empty());
        assert_eq!(
            revoked.revoking(&json!({"mtask_id": "c"})),
            Some(json!({"mtask_id": "c"}))
        );
        assert_eq!(
            revoked.revoking(&json!({"other": "a", "mtask_id": ["x", "a"]})),
            Some(json!({"mtask_id": "a"}))
        );
        assert_eq!(revoked.revoking(&json!({"mtask_id": "z"})), None);
        assert_eq!(revoked.revoking(&json!({"other": "a"})), None);
    }
}
