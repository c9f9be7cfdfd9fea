//! Queue and exchange declarations, kept in Redis so that every Rust process
//! checks them as RabbitMQ does: a re-declaration must be equivalent (406),
//! a queue or exchange nobody declared is not found (404), an exclusive
//! queue belongs to the connection that declared it (405).
//!
//! kombu keeps no declarations in Redis (a queue is its lists and its
//! bindings), so what a Python process declared counts as existing when its
//! lists hold messages or a binding names it, and its arguments are unknown.
//! Records: `_task_core.queues` (queue → [`QueueRecord`] JSON) and
//! `_task_core.exchanges` (exchange → [`ExchangeRecord`] JSON).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys;
use super::Inner;
use crate::broker::declaration::{locked, Declaration};
use crate::broker::{BrokerError, ExchangeKind, ExchangeSpec, QueueSpec, ReplyCode};

/// A queue's declaration as kept in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueueRecord {
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
    /// The connection an exclusive queue belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

impl QueueRecord {
    fn of(spec: &QueueSpec, owner: Option<&str>) -> Self {
        Self {
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            exclusive: spec.exclusive,
            arguments: spec.arguments.clone(),
            owner: owner.map(str::to_owned),
        }
    }

    /// The queue's declaration, read as RabbitMQ reads its arguments (none
    /// if the record cannot be read so: written by a later version).
    pub(crate) fn declaration(&self, name: &str) -> Option<Declaration> {
        let spec = QueueSpec {
            name: name.to_owned(),
            durable: self.durable,
            auto_delete: self.auto_delete,
            exclusive: self.exclusive,
            arguments: self.arguments.clone(),
            same_name_exchange: None,
        };
        Declaration::of(&spec).ok()
    }

    /// Whether the queue goes when its last consumer does.
    pub(crate) fn auto_delete(&self) -> bool {
        self.auto_delete
    }
}

/// An exchange's declaration as kept in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExchangeRecord {
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
}

impl ExchangeRecord {
    fn of(spec: &ExchangeSpec) -> Self {
        Self {
            kind: spec.kind.as_str().to_owned(),
            durable: spec.durable,
            auto_delete: spec.auto_delete,
        }
    }

    /// Reads a record.
    fn parse(stored: &str) -> Option<Self> {
        serde_json::from_str(stored).ok()
    }

    /// Whether the exchange goes with its last binding.
    pub(crate) fn auto_delete(&self) -> bool {
        self.auto_delete
    }

    /// The exchange's kind (direct if unknown, as kombu has it).
    pub(crate) fn kind(&self) -> ExchangeKind {
        match self.kind.as_str() {
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            _ => ExchangeKind::Direct,
        }
    }
}

/// What is known of a queue: whether it exists, whether a Rust process
/// declared it, how many messages are ready in it.
pub(crate) struct QueueState {
    pub(crate) exists: bool,
    pub(crate) declared: bool,
    pub(crate) ready: u64,
}

fn precondition_failed(operation: &'static str, reason: String) -> BrokerError {
    BrokerError::refused(operation, ReplyCode::PreconditionFailed, reason)
}

/// 404 for a queue nobody declared.
pub(crate) fn queue_not_found(operation: &'static str, queue: &str) -> BrokerError {
    BrokerError::refused(
        operation,
        ReplyCode::NotFound,
        format!("queue `{queue}`: NOT_FOUND - no queue '{queue}'"),
    )
}

/// 404 for an exchange nobody declared.
pub(crate) fn exchange_not_found(operation: &'static str, exchange: &str) -> BrokerError {
    BrokerError::refused(
        operation,
        ReplyCode::NotFound,
        format!("NOT_FOUND - no exchange '{exchange}'"),
    )
}

impl Inner {
    /// Records the declaration of `spec` (exclusive: owned by this
    /// connection), or checks it against the one recorded.
    pub(crate) async fn record_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        const OPERATION: &str = "queue.declare";
        let declaration =
            Declaration::of(spec).map_err(|reason| precondition_failed(OPERATION, reason))?;
        let owner = spec.exclusive.then_some(self.id.as_str());
        let record = serde_json::to_string(&QueueRecord::of(spec, owner))
            .map_err(|e| BrokerError::failed(OPERATION, e.to_string()))?;
        let (key, name) = (self.keys.queues.clone(), spec.name.clone());
        let (added, current): (bool, Option<String>) = self
            .retrying("hsetnx", |mut c| {
                let (key, name, record) = (key.clone(), name.clone(), record.clone());
                async move {
                    let added: bool = c.hset_nx(&key, &name, &record).await?;
                    if added {
                        return Ok((true, None));
                    }
                    let current: Option<String> = c.hget(&key, &name).await?;
                    Ok((false, current))
                }
            })
            .await?;
        if spec.exclusive && added {
            self.remember_exclusive(&spec.name);
        }
        let Some(current) = current
            .as_deref()
            .and_then(|c| serde_json::from_str::<QueueRecord>(c).ok())
        else {
            return Ok(());
        };
        if let Some(owner) = current.owner.as_deref().filter(|o| *o != self.id) {
            if self.connection_alive(owner).await? {
                return Err(locked(OPERATION, &spec.name));
            }
            // Its owner vanished without closing: the queue went with it,
            // as RabbitMQ deletes it when the socket closes.
            self.replace_stale(&spec.name, &record).await?;
            if spec.exclusive {
                self.remember_exclusive(&spec.name);
            }
            return Ok(());
        }
        match current.declaration(&spec.name) {
            Some(current) => match declaration.inequivalence(&current, &spec.name) {
                Some(reason) => Err(precondition_failed(OPERATION, reason)),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// What is known of queue `name`; refused (405) if it is another
    /// connection's exclusive queue.
    pub(crate) async fn queue_state(
        &self,
        name: &str,
        operation: &'static str,
    ) -> Result<QueueState, BrokerError> {
        let (key, field) = (self.keys.queues.clone(), name.to_owned());
        let lists = self.keys.lists(name);
        let bindings = self.keys.bindings(name);
        let (stored, counts, members): (Option<String>, Vec<u64>, Vec<String>) = self
            .retrying("queue state", |mut c| {
                let mut pipe = redis::pipe();
                pipe.hget(&key, &field);
                let mut counts = redis::pipe();
                for list in &lists {
                    counts.llen(list);
                }
                pipe.smembers(&bindings);
                async move {
                    let (stored, members): (Option<String>, Vec<String>) =
                        pipe.query_async(&mut c).await?;
                    let counts: Vec<u64> = counts.query_async(&mut c).await?;
                    Ok((stored, counts, members))
                }
            })
            .await?;
        let record = stored
            .as_deref()
            .and_then(|s| serde_json::from_str::<QueueRecord>(s).ok());
        let mut declared = stored.is_some();
        if let Some(owner) = record
            .as_ref()
            .and_then(|r| r.owner.as_deref())
            .filter(|owner| *owner != self.id)
        {
            if self.connection_alive(owner).await? {
                return Err(locked(operation, name));
            }
            // Its owner vanished: it is gone, as on RabbitMQ.
            declared = false;
        }
        let ready: u64 = counts.iter().sum();
        let bound = members
            .iter()
            .any(|member| keys::parse_binding(member).is_some_and(|(_, _, queue)| queue == name));
        Ok(QueueState {
            exists: declared || ready > 0 || bound,
            declared,
            ready,
        })
    }

    /// [`Inner::queue_state`], refused (404) for a queue that does not exist.
    pub(crate) async fn existing_queue(
        &self,
        name: &str,
        operation: &'static str,
    ) -> Result<QueueState, BrokerError> {
        let state = self.queue_state(name, operation).await?;
        if state.exists {
            Ok(state)
        } else {
            Err(queue_not_found(operation, name))
        }
    }

    /// The record of queue `name`, if a Rust process declared it.
    pub(crate) async fn queue_record(
        &self,
        name: &str,
    ) -> Result<Option<QueueRecord>, BrokerError> {
        let (key, field) = (self.keys.queues.clone(), name.to_owned());
        let stored: Option<String> = self
            .retrying("hget", |mut c| {
                let (key, field) = (key.clone(), field.clone());
                async move { c.hget(&key, &field).await }
            })
            .await?;
        Ok(stored.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Those of `queues` whose record is gone (deleted, by any process).
    pub(crate) async fn records_gone(&self, queues: &[String]) -> Result<Vec<String>, BrokerError> {
        let key = self.keys.queues.clone();
        let present: Vec<bool> = self
            .retrying("hexists", |mut c| {
                let mut pipe = redis::pipe();
                for queue in queues {
                    pipe.hexists(&key, queue);
                }
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(queues
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(queue, _)| queue.clone())
            .collect())
    }

    /// Refuses (405) an operation on another connection's exclusive queue.
    pub(crate) async fn check_owner(
        &self,
        name: &str,
        operation: &'static str,
    ) -> Result<Option<QueueRecord>, BrokerError> {
        let record = self.queue_record(name).await?;
        match record.as_ref().and_then(|r| r.owner.as_deref()) {
            Some(owner) if owner != self.id && self.connection_alive(owner).await? => {
                Err(locked(operation, name))
            }
            _ => Ok(record),
        }
    }

    /// Records the declaration of exchange `spec`, or checks it against the
    /// one recorded (406 if it differs).
    pub(crate) async fn record_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        const OPERATION: &str = "exchange.declare";
        let wanted = ExchangeRecord::of(spec);
        let record = serde_json::to_string(&wanted)
            .map_err(|e| BrokerError::failed(OPERATION, e.to_string()))?;
        let (key, name) = (self.keys.exchanges.clone(), spec.name.clone());
        let current: Option<String> = self
            .retrying("hsetnx", |mut c| {
                let (key, name, record) = (key.clone(), name.clone(), record.clone());
                async move {
                    let added: bool = c.hset_nx(&key, &name, &record).await?;
                    if added {
                        return Ok(None);
                    }
                    c.hget(&key, &name).await
                }
            })
            .await?;
        let Some(current) = current.as_deref().and_then(ExchangeRecord::parse) else {
            return Ok(());
        };
        let differs =
            |what: &str, received: &dyn std::fmt::Display, now: &dyn std::fmt::Display| {
                precondition_failed(
                    OPERATION,
                    format!(
                        "PRECONDITION_FAILED - inequivalent arg '{what}' for exchange '{}': \
                     received '{received}' but current is '{now}'",
                        spec.name
                    ),
                )
            };
        if current.kind != wanted.kind {
            return Err(differs("type", &wanted.kind, &current.kind));
        }
        if current.durable != wanted.durable {
            return Err(differs("durable", &wanted.durable, &current.durable));
        }
        if current.auto_delete != wanted.auto_delete {
            return Err(differs(
                "auto_delete",
                &wanted.auto_delete,
                &current.auto_delete,
            ));
        }
        Ok(())
    }

    /// The record of exchange `name`, if a Rust process declared it.
    pub(crate) async fn exchange_record(
        &self,
        name: &str,
    ) -> Result<Option<ExchangeRecord>, BrokerError> {
        let (key, field) = (self.keys.exchanges.clone(), name.to_owned());
        let stored: Option<String> = self
            .retrying("hget", |mut c| {
                let (key, field) = (key.clone(), field.clone());
                async move { c.hget(&key, &field).await }
            })
            .await?;
        Ok(stored.as_deref().and_then(ExchangeRecord::parse))
    }

    /// Whether exchange `name` exists: declared by a Rust process, one of
    /// Celery's broadcast exchanges, or holding bindings (kombu's).
    pub(crate) async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError> {
        if self.routing.known_kind(name).is_some() || self.exchange_record(name).await?.is_some() {
            return Ok(true);
        }
        let key = self.keys.bindings(name);
        let bound: bool = self
            .retrying("exists", |mut c| {
                let key = key.clone();
                async move { c.exists(&key).await }
            })
            .await?;
        Ok(bound)
    }

    /// Whether connection `id` is still open: its lease has not lapsed.
    async fn connection_alive(&self, id: &str) -> Result<bool, BrokerError> {
        let key = self.keys.connection(id);
        self.retrying("exists", |mut c| {
            let key = key.clone();
            async move { c.exists(&key).await }
        })
        .await
    }

    /// Replaces the record of a queue whose owner vanished with `record`,
    /// and empties its lists.
    async fn replace_stale(&self, name: &str, record: &str) -> Result<(), BrokerError> {
        let (key, field, record) = (self.keys.queues.clone(), name.to_owned(), record.to_owned());
        let lists = self.keys.lists(name);
        self.retrying("hset", |mut c| {
            let mut pipe = redis::pipe();
            pipe.atomic().hset(&key, &field, &record).ignore();
            for list in &lists {
                pipe.del(list).ignore();
            }
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Remembers an exclusive queue this connection declared (deleted when
    /// it closes).
    fn remember_exclusive(&self, queue: &str) {
        self.exclusive_queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(queue.to_owned());
    }
}

/// Takes this connection's lease, and keeps renewing it while the
/// connection is open, once it declares an exclusive queue: other
/// connections see it open while the lease holds.
pub(crate) async fn ensure_lease(inner: &Arc<Inner>) -> Result<(), BrokerError> {
    if inner.leased.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let lease = inner
        .options
        .connection_lease
        .max(Duration::from_millis(30));
    if let Err(error) = renew_lease(inner, lease).await {
        inner.leased.store(false, Ordering::Release);
        return Err(error);
    }
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(lease / 3).await;
            let Some(inner) = weak.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            if let Err(error) = renew_lease(&inner, lease).await {
                tracing::warn!(%error, "redis broker: cannot renew this connection's lease yet");
            }
        }
    });
    Ok(())
}

async fn renew_lease(inner: &Inner, lease: Duration) -> Result<(), BrokerError> {
    let key = inner.keys.connection(&inner.id);
    let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    inner
        .retrying("set", |mut c| {
            let key = key.clone();
            async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
}
