//! [`Requests`]: the tasks this worker holds (received and not yet running,
//! or running), as remote control's `active`, `reserved` and `query_task`
//! show them, with the counts `stats` reports and the handle that
//! terminates a run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::value::RawValue;
use serde_json::{json, Value};
use task_core::protocol::repr::{args_repr, kwargs_repr};
use task_core::DeliveryInfo;
use tokio::sync::oneshot;

/// One task this worker holds.
#[derive(Debug)]
pub(crate) struct HeldRequest {
    pub(crate) name: &'static str,
    /// Positional arguments, as a JSON list.
    pub(crate) args: String,
    /// Keyword arguments, as a JSON object.
    pub(crate) kwargs: String,
    pub(crate) delivery: DeliveryInfo,
    pub(crate) eta: Option<String>,
    /// When the body started, seconds since the epoch.
    pub(crate) started: Option<f64>,
    /// Its body runs on the blocking pool: it cannot be terminated.
    pub(crate) blocking: bool,
    /// Acked before the run (early ack).
    pub(crate) acknowledged: bool,
    /// Its Celery stamps, when it has some.
    pub(crate) stamps: Option<Value>,
    terminate: Option<oneshot::Sender<()>>,
}

impl HeldRequest {
    /// A request received now, not yet running.
    pub(crate) fn new(name: &'static str, args: String, kwargs: String) -> Self {
        Self {
            name,
            args,
            kwargs,
            delivery: DeliveryInfo::default(),
            eta: None,
            started: None,
            blocking: false,
            acknowledged: false,
            stamps: None,
            terminate: None,
        }
    }
}

/// What a terminate request found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Termination {
    /// The run was told to stop.
    Stopped,
    /// The task is not running here.
    NotRunning,
    /// It runs a blocking body, which cannot be interrupted.
    Blocking,
}

/// The tasks this worker holds, by id, and what it has done.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    held: Mutex<HashMap<String, HeldRequest>>,
    processed: AtomicU64,
    total: Mutex<HashMap<&'static str, u64>>,
}

impl Requests {
    /// Records a request taken from the queue.
    pub(crate) fn receive(&self, id: &str, request: HeldRequest) {
        self.lock().insert(id.to_owned(), request);
    }

    /// Marks a request running; the receiver completes when it is asked to
    /// terminate.
    pub(crate) fn start(&self, id: &str, now: f64, acknowledged: bool) -> oneshot::Receiver<()> {
        let (terminate, terminated) = oneshot::channel();
        if let Some(request) = self.lock().get_mut(id) {
            request.started = Some(now);
            request.acknowledged = acknowledged;
            request.terminate = Some(terminate);
        }
        terminated
    }

    /// Forgets a request; `ran` counts it as processed.
    pub(crate) fn finish(&self, id: &str, ran: bool) {
        let Some(request) = self.lock().remove(id) else {
            return;
        };
        if ran {
            self.processed.fetch_add(1, Ordering::Relaxed);
            *self
                .total
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(request.name)
                .or_default() += 1;
        }
    }

    /// Stops the run of `id`, if it runs here.
    pub(crate) fn terminate(&self, id: &str) -> Termination {
        let mut held = self.lock();
        match held.get_mut(id) {
            Some(request) if request.started.is_some() => {
                if request.blocking {
                    return Termination::Blocking;
                }
                match request.terminate.take() {
                    Some(signal) => {
                        let _ = signal.send(());
                        Termination::Stopped
                    }
                    None => Termination::NotRunning,
                }
            }
            _ => Termination::NotRunning,
        }
    }

    /// Stops the async runs whose stamps `revoking` finds revoked; returns
    /// the `{name: value}` of each stamp that stopped one.
    pub(crate) fn terminate_stamped(
        &self,
        revoking: impl Fn(&Value) -> Option<Value>,
    ) -> Vec<Value> {
        let mut held = self.lock();
        let mut stopped = Vec::new();
        for request in held.values_mut() {
            if request.started.is_none() || request.blocking {
                continue;
            }
            let Some(by) = request.stamps.as_ref().and_then(&revoking) else {
                continue;
            };
            if let Some(signal) = request.terminate.take() {
                let _ = signal.send(());
                stopped.push(by);
            }
        }
        stopped
    }

    /// Tasks running now.
    pub(crate) fn active_count(&self) -> u64 {
        self.lock().values().filter(|r| r.started.is_some()).count() as u64
    }

    /// Tasks running or waiting for a concurrency slot (not for their
    /// ETA): what autoscaling sizes the concurrency to.
    pub(crate) fn runnable_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|r| r.started.is_some() || r.eta.is_none())
            .count()
    }

    /// Tasks run since the worker started.
    pub(crate) fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Tasks run since the worker started, by name.
    pub(crate) fn totals(&self) -> Value {
        let total = self.total.lock().unwrap_or_else(PoisonError::into_inner);
        Value::Object(
            total
                .iter()
                .map(|(name, n)| ((*name).to_owned(), json!(n)))
                .collect(),
        )
    }

    /// `inspect active`: each running request as Celery's `Request.info`
    /// has it; `safe` gives the arguments as their Python repr.
    pub(crate) fn active(&self, hostname: &str, safe: bool) -> Vec<Value> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.started.is_some())
            .map(|(id, r)| request_info(id, r, hostname, safe))
            .collect()
    }

    /// `inspect reserved`: the requests received and not running, but
    /// those waiting for their ETA.
    pub(crate) fn reserved(&self, hostname: &str, safe: bool) -> Vec<Value> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.started.is_none() && r.eta.is_none())
            .map(|(id, r)| request_info(id, r, hostname, safe))
            .collect()
    }

    /// `inspect scheduled`: the requests waiting here for their ETA (longer
    /// waits are handed back to the broker, and are in no worker's list),
    /// as `{eta, priority, request}`.
    pub(crate) fn scheduled(&self, hostname: &str) -> Vec<Value> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.started.is_none())
            .filter_map(|(id, r)| {
                let eta = r.eta.as_ref()?;
                Some(json!({
                    "eta": eta,
                    "priority": r.delivery.priority,
                    "request": request_info(id, r, hostname, false),
                }))
            })
            .collect()
    }

    /// `query_task`: `{id: [state, info]}` for each of `ids` held here.
    pub(crate) fn query(&self, ids: &[String], hostname: &str) -> Value {
        let held = self.lock();
        let found = ids.iter().filter_map(|id| {
            let request = held.get(id)?;
            let state = if request.started.is_some() {
                "active"
            } else {
                "reserved"
            };
            Some((
                id.clone(),
                json!([state, request_info(id, request, hostname, false)]),
            ))
        });
        Value::Object(found.collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldRequest>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn request_info(id: &str, request: &HeldRequest, hostname: &str, safe: bool) -> Value {
    let (args, kwargs) = if safe {
        // Made here, not for every task received (Python's own repr, sent
        // in Celery's `argsrepr` header, is not kept).
        let args: Vec<Box<RawValue>> = serde_json::from_str(&request.args).unwrap_or_default();
        let kwargs: Vec<(String, Box<RawValue>)> = serde_json::from_str::<
            serde_json::Map<String, Value>,
        >(&request.kwargs)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, value)| Some((key, serde_json::value::to_raw_value(&value).ok()?)))
        .collect();
        (json!(args_repr(&args)), json!(kwargs_repr(&kwargs)))
    } else {
        (
            serde_json::from_str(&request.args).unwrap_or(Value::Null),
            serde_json::from_str(&request.kwargs).unwrap_or(Value::Null),
        )
    };
    json!({
        "id": id,
        "name": request.name,
        "args": args,
        "kwargs": kwargs,
        "type": request.name,
        "hostname": hostname,
        "time_start": request.started,
        "acknowledged": request.acknowledged,
        "delivery_info": {
            "exchange": request.delivery.exchange,
            "routing_key": request.delivery.routing_key,
            "priority": request.delivery.priority,
            "redelivered": request.delivery.redelivered,
        },
        "worker_pid": request.started.map(|_| std::process::id()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_reserved_then_active_then_counted() {
        let requests = Requests::default();
        requests.receive(
            "a",
            HeldRequest::new("tasks.add", "[2,3]".into(), "{}".into()),
        );
        assert_eq!(requests.reserved("w@h", false)[0]["args"], json!([2, 3]));
        assert!(requests.active("w@h", false).is_empty());
        assert_eq!(requests.runnable_count(), 1);
        let _terminated = requests.start("a", 1.5, false);
        assert_eq!(requests.active_count(), 1);
        assert_eq!(
            requests.query(&["a".into(), "b".into()], "w@h")["a"][0],
            "active"
        );
        requests.finish("a", true);
        assert_eq!((requests.active_count(), requests.processed()), (0, 1));
        let mut later = HeldRequest::new("tasks.add", "[]".into(), "{}".into());
        later.eta = Some("2026-12-05T10:00:00+00:00".into());
        requests.receive("b", later);
        assert!(requests.reserved("w@h", false).is_empty());
        assert_eq!(requests.runnable_count(), 0);
        assert_eq!(requests.scheduled("w@h")[0]["request"]["id"], "b");
        assert_eq!(requests.totals(), json!({"tasks.add": 1}));
    }

    #[tokio::test]
    async fn terminate_signals_a_running_async_task_only() {
        let requests = Requests::default();
        requests.receive("a", HeldRequest::new("t", "[]".into(), "{}".into()));
        assert_eq!(requests.terminate("a"), Termination::NotRunning);
        let terminated = requests.start("a", 1.0, false);
        assert_eq!(requests.terminate("a"), Termination::Stopped);
        assert!(terminated.await.is_ok());
        let mut blocking = HeldRequest::new("t", "[]".into(), "{}".into());
        blocking.blocking = true;
        requests.receive("b", blocking);
        let _running = requests.start("b", 1.0, false);
        assert_eq!(requests.terminate("b"), Termination::Blocking);
    }
}
