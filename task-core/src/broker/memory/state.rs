//! The broker's state behind its lock: queues and their ready messages,
//! exchanges, consumers and their unacked deliveries, delayed messages; and
//! everything that moves messages between them (routing, delivery, requeue,
//! expiry, dead-lettering).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::exchange::Exchange;
use super::handles::{MemoryAcker, NoAck, Outcome};
use super::timer::{rearm, Timer};
use super::Core;
use crate::broker::dead_letter::record_death;
use crate::broker::declaration::{locked, parse_expiration, Declaration, Overflow};
use crate::broker::{
    Acknowledger, BrokerError, ConsumeOptions, Delivery, ExchangeSpec, HeaderValue, Message,
    QueueSpec, ReplyCode,
};

/// The header a quorum queue sets on a message it delivers again: how many
/// times it was returned before (RabbitMQ 3.10 writes it from the first
/// return on, as a 64-bit integer).
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Delays too long for the clock are cut to this (about 30 years).
const MAX_DELAY: Duration = Duration::from_secs(30 * 365 * 86_400);

/// The whole broker state.
#[derive(Default)]
pub(super) struct State {
    queues: HashMap<String, Queue>,
    /// Exchanges by name, with their bindings.
    exchanges: HashMap<String, Exchange>,
    consumers: HashMap<u64, ConsumerState>,
    /// Messages published with a delay, by due time (then publish order).
    delayed: BTreeMap<(Instant, u64), Delayed>,
    /// Delayed messages that came due while their queue did not exist, in
    /// due order, until [`State::redeliver_unrouted`] finds their queue
    /// (as RabbitMQ's delay levels keep them in their alternate exchange).
    unrouted: Vec<Delayed>,
    /// When queues have a head message to expire: (deadline, queue id,
    /// queue name). An entry may be stale (the message left earlier); it
    /// then only makes the timer look at the queue for nothing.
    expiries: BTreeSet<(Instant, u64, String)>,
    /// Armed for the earliest of the first expiry and the first delayed message.
    timer: Option<Timer>,
    ids: u64,
}

/// A stored message.
struct Entry {
    message: Message,
    /// Where it was published (for dead-lettering and `x-death`).
    exchange: String,
    routing_key: String,
    redelivered: bool,
    /// How many times it was returned to its queue after a delivery (a
    /// reject with requeue, a consumer that went without settling it):
    /// what a quorum queue's `x-delivery-limit` bounds.
    returns: u64,
    /// When it expires in its current queue.
    expires_at: Option<Instant>,
}

/// A message kept by the broker until it is due in `queue`.
struct Delayed {
    queue: String,
    entry: Entry,
}

/// A queue: its declaration, ready messages, consumers and expiry timer.
struct Queue {
    /// Distinguishes this queue from a later one of the same name.
    id: u64,
    declaration: Declaration,
    /// The connection an exclusive queue belongs to.
    owner: Option<u64>,
    /// Ready messages by priority level (one level without `x-max-priority`).
    levels: Vec<VecDeque<Entry>>,
    ready_len: usize,
    /// The body bytes of the ready messages (for `x-max-length-bytes`).
    ready_bytes: usize,
    /// Consumers, in round-robin order.
    consumers: Vec<u64>,
    /// The consumer that holds the queue alone (an exclusive consume).
    exclusive_consumer: Option<u64>,
    next_consumer: usize,
    /// For `auto_delete`: deleted when its last consumer goes, once it had one.
    had_consumer: bool,
    /// The earliest deadline of this queue in the broker's expiries.
    scheduled: Option<Instant>,
    /// A quorum queue with `x-overflow: reject-publish` refuses publishes
    /// from when it goes over a limit until it is back under 80% of it.
    rejecting: bool,
}

impl Queue {
    /// Appends a ready message at the tail of its priority level.
    fn push_back(&mut self, entry: Entry) {
        let level = self.declaration.level(&entry.message);
        self.ready_bytes += entry.message.body.len();
        self.levels[level].push_back(entry);
        self.ready_len += 1;
    }

    /// Puts a message back at the head of its priority level.
    fn push_front(&mut self, entry: Entry) {
        let level = self.declaration.level(&entry.message);
        self.ready_bytes += entry.message.body.len();
        self.levels[level].push_front(entry);
        self.ready_len += 1;
    }

    /// The next message to deliver: the oldest of the highest priority.
    fn pop(&mut self) -> Option<Entry> {
        let entry = self.levels.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.ready_len -= 1;
        self.ready_bytes -= entry.message.body.len();
        Some(entry)
    }

    /// Whether a publish of `size` bytes is refused (`x-overflow:
    /// reject-publish`): a classic queue refuses a message that would take
    /// it over a limit; a quorum queue refuses publishes while it is
    /// [`Queue::rejecting`], and takes one that takes it over its limit.
    fn refuses(&self, size: usize) -> bool {
        self.rejecting
            || self
                .declaration
                .would_overflow(self.ready_len, self.ready_bytes, size)
    }

    /// After an operation on a quorum queue with `reject-publish`: it
    /// refuses publishes once over a limit, takes them again once back
    /// under 80% of every limit (RabbitMQ's `rabbit_fifo`
    /// `evaluate_limit`).
    fn evaluate_limit(&mut self) {
        let declaration = &self.declaration;
        if !declaration.is_quorum() || declaration.overflow != Overflow::RejectPublish {
            return;
        }
        if declaration.over_limit(self.ready_len, self.ready_bytes) {
            self.rejecting = true;
        } else if declaration.below_soft_limit(self.ready_len, self.ready_bytes) {
            self.rejecting = false;
        }
    }

    /// Drops the oldest ready messages while the queue holds more than its
    /// `x-max-length` / `x-max-length-bytes` allow (RabbitMQ's `drop-head`;
    /// a `reject-publish` queue refuses them before instead).
    fn drop_overflow(&mut self) {
        if self.declaration.overflow != Overflow::DropHead {
            return;
        }
        while self
            .declaration
            .over_limit(self.ready_len, self.ready_bytes)
        {
            let Some(entry) = self.levels.iter_mut().find_map(VecDeque::pop_front) else {
                return;
            };
            self.ready_len -= 1;
            self.ready_bytes -= entry.message.body.len();
        }
    }

    /// Removes the messages at the heads of the levels whose time has come.
    fn expire_heads(&mut self, now: Instant, expired: &mut Vec<Entry>) {
        for level in &mut self.levels {
            while level
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now))
            {
                if let Some(entry) = level.pop_front() {
                    self.ready_len -= 1;
                    self.ready_bytes -= entry.message.body.len();
                    expired.push(entry);
                }
            }
        }
    }

    /// When the next head expires.
    fn next_deadline(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|level| level.front().and_then(|e| e.expires_at))
            .min()
    }
}

/// An unsettled delivery, kept for requeueing.
struct Unacked {
    queue: String,
    queue_id: u64,
    entry: Entry,
}

/// One `consume` call: its queues, prefetch window and unacked deliveries.
struct ConsumerState {
    session: u64,
    queues: Vec<String>,
    prefetch: u16,
    /// The window applies to each queue on its own, not to all together.
    prefetch_per_queue: bool,
    no_ack: bool,
    /// By delivery tag (increasing with delivery order).
    unacked: BTreeMap<u64, Unacked>,
    /// `None` once cancelled: no new deliveries.
    sender: Option<mpsc::UnboundedSender<Delivery>>,
    /// Set when closed: the stream ends at once.
    closed: Arc<AtomicBool>,
}

impl ConsumerState {
    /// Whether it takes another delivery from `queue` now (open, and room
    /// in its window, or in the queue's window with
    /// [`ConsumeOptions::prefetch_per_queue`]; `no_ack` deliveries do not
    /// count against prefetch, as in RabbitMQ).
    fn has_room(&self, queue: &str) -> bool {
        if self.sender.is_none() {
            return false;
        }
        if self.no_ack || self.prefetch == 0 {
            return true;
        }
        let in_flight = if self.prefetch_per_queue {
            self.unacked.values().filter(|u| u.queue == queue).count()
        } else {
            self.unacked.len()
        };
        in_flight < usize::from(self.prefetch)
    }
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }

    /// Publishes a message: routes it, enqueues it in every queue reached
    /// (an unroutable message is an error), delivers what can be delivered.
    pub(super) fn publish(
        &mut self,
        core: &Arc<Core>,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        expiration: Option<Duration>,
    ) -> Result<(), BrokerError> {
        let targets = self.route(exchange, routing_key)?;
        if targets.is_empty() {
            return Err(BrokerError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        let now = Instant::now();
        let mut refused = false;
        for queue in &targets {
            let entry = Entry {
                message: message.clone(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                redelivered: false,
                returns: 0,
                expires_at: None,
            };
            refused |= !self.enqueue(queue, entry, expiration, now);
        }
        self.settle(core, targets, now);
        // As RabbitMQ's confirm: a `nack` if one queue refused it, even
        // though the others keep it.
        if refused {
            return Err(BrokerError::Nacked {
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(())
    }

    /// Keeps a message until `delay` has passed, then enqueues it in `queue`.
    pub(super) fn publish_delayed(
        &mut self,
        core: &Arc<Core>,
        queue: &str,
        message: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if !self.queues.contains_key(queue) {
            return Err(BrokerError::Unroutable {
                exchange: String::new(),
                routing_key: queue.to_owned(),
            });
        }
        let now = Instant::now();
        let due = now.checked_add(delay).unwrap_or(now + MAX_DELAY);
        let seq = self.next_id();
        let entry = Entry {
            message: message.clone(),
            exchange: String::new(),
            routing_key: queue.to_owned(),
            redelivered: false,
            returns: 0,
            expires_at: None,
        };
        let delayed = Delayed {
            queue: queue.to_owned(),
            entry,
        };
        self.delayed.insert((due, seq), delayed);
        self.arm_timer(core);
        Ok(())
    }

    /// Registers a consumer of `queues` (all must exist) that receives its
    /// deliveries through `sender`, and returns its id.
    pub(super) fn add_consumer(
        &mut self,
        core: &Arc<Core>,
        session: u64,
        queues: &[String],
        options: ConsumeOptions,
        sender: mpsc::UnboundedSender<Delivery>,
        closed: Arc<AtomicBool>,
    ) -> Result<u64, BrokerError> {
        // Several queues share one window through RabbitMQ's global QoS,
        // which quorum queues refuse (as the AMQP broker asks for it).
        let global_qos = queues.len() > 1 && options.prefetch > 0 && !options.prefetch_per_queue;
        for queue in queues {
            let queue_state = self.accessible_queue("basic.consume", queue, session)?;
            if global_qos && queue_state.declaration.is_quorum() {
                return Err(BrokerError::refused(
                    "basic.consume",
                    ReplyCode::NotImplemented,
                    format!(
                        "queue `{queue}`: NOT_IMPLEMENTED - queue '{queue}' in vhost '/' does \
                         not support global qos (consume with prefetch_per_queue)"
                    ),
                ));
            }
            if queue_state.exclusive_consumer.is_some()
                || (options.exclusive && !queue_state.consumers.is_empty())
            {
                return Err(BrokerError::refused(
                    "basic.consume",
                    ReplyCode::AccessRefused,
                    format!(
                        "queue `{queue}`: ACCESS_REFUSED - queue '{queue}' in vhost '/' \
                         in exclusive use"
                    ),
                ));
            }
        }
        let mut names: Vec<String> = Vec::with_capacity(queues.len());
        for queue in queues {
            if !names.contains(queue) {
                names.push(queue.clone());
            }
        }
        let id = self.next_id();
        for name in &names {
            if let Some(queue) = self.queues.get_mut(name) {
                queue.consumers.push(id);
                queue.had_consumer = true;
                if options.exclusive {
                    queue.exclusive_consumer = Some(id);
                }
            }
        }
        let consumer = ConsumerState {
            session,
            queues: names.clone(),
            prefetch: options.prefetch,
            prefetch_per_queue: options.prefetch_per_queue,
            no_ack: options.no_ack,
            unacked: BTreeMap::new(),
            sender: Some(sender),
            closed,
        };
        self.consumers.insert(id, consumer);
        self.settle(core, names, Instant::now());
        Ok(id)
    }

    /// Deletes an exchange and its bindings (the default one cannot be).
    pub(super) fn delete_exchange(&mut self, name: &str) -> Result<(), BrokerError> {
        if name.is_empty() {
            return Err(default_exchange_refused("exchange.delete"));
        }
        self.exchanges.remove(name);
        Ok(())
    }

    /// Declares an exchange, or checks that a re-declaration is equivalent.
    pub(super) fn declare_exchange(&mut self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        if spec.name.is_empty() {
            return Err(default_exchange_refused("exchange.declare"));
        }
        match self.exchanges.get(&spec.name) {
            Some(exchange) => exchange.check_equivalent(spec),
            None if spec.name.starts_with("amq.") => Err(BrokerError::refused(
                "exchange.declare",
                ReplyCode::AccessRefused,
                format!(
                    "exchange `{0}`: ACCESS_REFUSED - exchange name '{0}' contains reserved \
                     prefix 'amq.*'",
                    spec.name
                ),
            )),
            None => {
                self.exchanges.insert(spec.name.clone(), Exchange::of(spec));
                Ok(())
            }
        }
    }

    /// Binds a queue to an exchange (both must exist).
    pub(super) fn bind(
        &mut self,
        session: u64,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.check_binding("queue.bind", session, queue, exchange)?;
        if let Some(bound) = self.exchanges.get_mut(exchange) {
            bound.bind(routing_key, queue);
        }
        Ok(())
    }

    /// Removes a binding; an auto-delete exchange goes with its last one.
    /// As on RabbitMQ, a binding, queue or exchange that does not exist is
    /// no error; the default exchange and another connection's exclusive
    /// queue are.
    pub(super) fn unbind(
        &mut self,
        session: u64,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        if exchange.is_empty() {
            return Err(default_exchange_refused("queue.unbind"));
        }
        if self.queues.contains_key(queue) {
            self.accessible_queue("queue.unbind", queue, session)?;
        }
        if let Some(bound) = self.exchanges.get_mut(exchange) {
            if bound.unbind(routing_key, queue) && bound.is_unused() {
                self.exchanges.remove(exchange);
            }
        }
        Ok(())
    }

    /// What RabbitMQ checks before it binds: not the default exchange, both
    /// exist, the queue is not another connection's.
    fn check_binding(
        &self,
        operation: &'static str,
        session: u64,
        queue: &str,
        exchange: &str,
    ) -> Result<(), BrokerError> {
        let context = || format!("queue `{queue}` and exchange `{exchange}`");
        if exchange.is_empty() {
            return Err(default_exchange_refused(operation));
        }
        if !self.exchanges.contains_key(exchange) {
            return Err(BrokerError::refused(
                operation,
                ReplyCode::NotFound,
                format!("{}: NOT_FOUND - no exchange '{exchange}'", context()),
            ));
        }
        self.accessible_queue(operation, queue, session).map(drop)
    }

    /// The queue `name`, if it exists (404 `NOT_FOUND`) and `session` may
    /// use it (405 `RESOURCE_LOCKED` for another connection's exclusive queue).
    fn accessible_queue(
        &self,
        operation: &'static str,
        name: &str,
        session: u64,
    ) -> Result<&Queue, BrokerError> {
        let queue = self.queues.get(name).ok_or_else(|| {
            BrokerError::refused(
                operation,
                ReplyCode::NotFound,
                format!("queue `{name}`: NOT_FOUND - no queue '{name}'"),
            )
        })?;
        match queue.owner {
            Some(owner) if owner != session => Err(locked(operation, name)),
            _ => Ok(queue),
        }
    }

    /// How many messages of a queue are ready (not delivered and unsettled).
    pub(super) fn ready_count(
        &mut self,
        core: &Arc<Core>,
        session: u64,
        name: &str,
    ) -> Result<u32, BrokerError> {
        self.accessible_queue("queue.declare(passive)", name, session)?;
        // Timers do this on time; doing it here too makes a count taken
        // right at a deadline exact.
        let now = Instant::now();
        self.release_delayed(core, now);
        self.settle(core, vec![name.to_owned()], now);
        let ready = self.queues.get(name).map_or(0, |queue| queue.ready_len);
        Ok(u32::try_from(ready).unwrap_or(u32::MAX))
    }

    /// Closes every consumer of a connection and deletes its exclusive queues.
    pub(super) fn close_session(&mut self, core: &Arc<Core>, session: u64) {
        let owned: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, consumer)| consumer.session == session)
            .map(|(id, _)| *id)
            .collect();
        for id in owned {
            self.close_consumer(core, id);
        }
        let exclusive: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.owner == Some(session))
            .map(|(name, _)| name.clone())
            .collect();
        for name in exclusive {
            self.delete_queue(&name);
        }
    }

    /// The timer fired: expires what is due in the queues it was armed for,
    /// releases the delayed messages that are due, and re-arms.
    pub(super) fn on_timer(&mut self, core: &Arc<Core>, token: u64, now: Instant) {
        if self.timer.as_ref().is_some_and(|t| t.token == token) {
            self.timer = None;
        }
        let mut due = Vec::new();
        while self.expiries.first().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, id, name)) = self.expiries.pop_first() else {
                break;
            };
            if let Some(queue) = self.queues.get_mut(&name) {
                if queue.id == id {
                    queue.scheduled = None;
                    due.push(name);
                }
            }
        }
        self.release_delayed(core, now);
        self.settle(core, due, now);
    }

    /// Declares a queue named `spec.name` for connection `session` (and
    /// its same-name exchange binding).
    pub(super) fn declare(&mut self, spec: &QueueSpec, session: u64) -> Result<(), BrokerError> {
        if spec.name.starts_with("amq.") {
            return Err(BrokerError::refused(
                "queue.declare",
                ReplyCode::AccessRefused,
                format!(
                    "queue `{0}`: ACCESS_REFUSED - queue name '{0}' contains reserved prefix \
                     'amq.*'",
                    spec.name
                ),
            ));
        }
        self.declare_as(spec, &spec.name, session)
    }

    /// Declares a queue the broker names (`amq.gen-…`) and returns its name.
    pub(super) fn declare_server_named(
        &mut self,
        spec: &QueueSpec,
        session: u64,
    ) -> Result<String, BrokerError> {
        let name = format!("amq.gen-{}", uuid::Uuid::new_v4().simple());
        self.declare_as(spec, &name, session)?;
        Ok(name)
    }

    /// Declares queue `name` as `spec` says.
    fn declare_as(
        &mut self,
        spec: &QueueSpec,
        name: &str,
        session: u64,
    ) -> Result<(), BrokerError> {
        let invalid = |reason: String| {
            BrokerError::refused(
                "queue.declare",
                ReplyCode::PreconditionFailed,
                format!("queue `{name}`: {reason}"),
            )
        };
        let declaration = Declaration::of(spec).map_err(invalid)?;
        match self.queues.get(name) {
            Some(queue) => {
                if queue.owner.is_some_and(|owner| owner != session) {
                    return Err(locked("queue.declare", name));
                }
                if let Some(why) = declaration.inequivalence(&queue.declaration, name) {
                    return Err(invalid(why));
                }
            }
            None => {
                let levels = usize::from(declaration.max_priority.unwrap_or(0)) + 1;
                let id = self.next_id();
                self.queues.insert(
                    name.to_owned(),
                    Queue {
                        id,
                        owner: declaration.exclusive.then_some(session),
                        declaration,
                        levels: (0..levels).map(|_| VecDeque::new()).collect(),
                        ready_len: 0,
                        ready_bytes: 0,
                        consumers: Vec::new(),
                        exclusive_consumer: None,
                        next_consumer: 0,
                        had_consumer: false,
                        scheduled: None,
                        rejecting: false,
                    },
                );
            }
        }
        if let Some(kind) = spec.same_name_exchange {
            // A refusal is reported as the queue's declaration, as the AMQP
            // broker reports it.
            self.declare_exchange(&ExchangeSpec::new(name, kind))
                .map_err(|error| match error {
                    BrokerError::Operation {
                        reason,
                        reply_code,
                        source,
                        ..
                    } => BrokerError::Operation {
                        operation: "queue.declare",
                        reason: format!("queue `{name}`: {reason}"),
                        reply_code,
                        source,
                    },
                    other => other,
                })?;
            if let Some(exchange) = self.exchanges.get_mut(name) {
                exchange.bind(name, name);
            }
        }
        Ok(())
    }

    /// The queues a publish reaches (empty: unroutable).
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(if self.queues.contains_key(routing_key) {
                vec![routing_key.to_owned()]
            } else {
                Vec::new()
            });
        }
        let bound = self.exchanges.get(exchange).ok_or_else(|| {
            BrokerError::refused(
                "basic.publish",
                ReplyCode::NotFound,
                format!("NOT_FOUND - no exchange '{exchange}'"),
            )
        })?;
        let mut targets = bound.route(routing_key);
        targets.retain(|queue| self.queues.contains_key(queue));
        Ok(targets)
    }

    /// Appends a message to a queue, with its deadline in that queue;
    /// `false` if the queue refused it (`x-overflow: reject-publish`).
    fn enqueue(
        &mut self,
        name: &str,
        mut entry: Entry,
        expiration: Option<Duration>,
        now: Instant,
    ) -> bool {
        let Some(queue) = self.queues.get_mut(name) else {
            return true;
        };
        if queue.refuses(entry.message.body.len()) {
            return false;
        }
        let ttl = match (queue.declaration.message_ttl, expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        entry.expires_at = ttl.map(|ttl| now + ttl);
        queue.push_back(entry);
        queue.drop_overflow();
        true
    }

    /// Brings queues up to date after a change: expires (and dead-letters)
    /// messages whose time has come, delivers to consumers with room, and
    /// arms expiry timers. Queues that receive dead letters are settled too.
    fn settle(&mut self, core: &Arc<Core>, queues: Vec<String>, now: Instant) {
        let mut work: VecDeque<String> = queues.into();
        while let Some(name) = work.pop_front() {
            let mut dead = Vec::new();
            self.dispatch(core, &name, now, &mut dead);
            for (entry, reason) in dead {
                for target in self
                    .dead_letter(&name, entry, reason, now)
                    .into_iter()
                    .flatten()
                {
                    if !work.contains(&target) {
                        work.push_back(target);
                    }
                }
            }
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.evaluate_limit();
            }
            self.schedule_expiry(&name);
        }
        // Cheap, and revives the timer if the runtime that armed it has shut
        // down (e.g. one `#[tokio::test]` after another).
        self.arm_timer(core);
    }

    /// Delivers ready messages of `name` to its consumers, round robin, as
    /// long as one has room in its prefetch window. What leaves the queue
    /// meanwhile to be dead-lettered goes to `dead`, with the reason.
    fn dispatch(
        &mut self,
        core: &Arc<Core>,
        name: &str,
        now: Instant,
        dead: &mut Vec<(Entry, &'static str)>,
    ) {
        let mut expired = Vec::new();
        loop {
            let Some(queue) = self.queues.get_mut(name) else {
                return;
            };
            queue.expire_heads(now, &mut expired);
            dead.extend(expired.drain(..).map(|entry| (entry, "expired")));
            if queue.ready_len == 0 || queue.consumers.is_empty() {
                return;
            }
            let count = queue.consumers.len();
            let start = queue.next_consumer % count;
            let chosen = (0..count).map(|i| (start + i) % count).find(|&i| {
                self.consumers
                    .get(&queue.consumers[i])
                    .is_some_and(|consumer| consumer.has_room(name))
            });
            let Some(index) = chosen else {
                return;
            };
            queue.next_consumer = index + 1;
            let consumer_id = queue.consumers[index];
            let queue_id = queue.id;
            let quorum = queue.declaration.is_quorum();
            let Some(entry) = queue.pop() else {
                return;
            };
            self.ids += 1;
            let tag = self.ids;
            let Some(consumer) = self.consumers.get_mut(&consumer_id) else {
                return;
            };
            let redelivered = entry.redelivered;
            let (exchange, routing_key) = (entry.exchange.clone(), entry.routing_key.clone());
            let returns = entry.returns;
            let (mut message, acker): (Message, Box<dyn Acknowledger>) = if consumer.no_ack {
                (entry.message, Box::new(NoAck))
            } else {
                let message = entry.message.clone();
                let unacked = Unacked {
                    queue: name.to_owned(),
                    queue_id,
                    entry,
                };
                consumer.unacked.insert(tag, unacked);
                let acker = MemoryAcker::new(Arc::downgrade(core), consumer_id, tag);
                (message, Box::new(acker))
            };
            if quorum && returns > 0 {
                // On the delivery only: the stored message (and so a dead
                // letter) has none, as on RabbitMQ.
                let count = i64::try_from(returns).unwrap_or(i64::MAX);
                message
                    .properties
                    .headers
                    .insert(DELIVERY_COUNT_HEADER, HeaderValue::LongLongInt(count));
            }
            let delivery = Delivery {
                message,
                queue: name.to_owned(),
                exchange,
                routing_key,
                redelivered,
                acker,
            };
            let sent = consumer
                .sender
                .as_ref()
                .is_some_and(|sender| sender.send(delivery).is_ok());
            if !sent {
                // The stream is gone (it closes the consumer as it drops):
                // put the message back and stop delivering to it.
                consumer.sender = None;
                if let Some(unacked) = consumer.unacked.remove(&tag) {
                    if let Some(over) = self.requeue(unacked) {
                        dead.push((over.entry, "delivery_limit"));
                    }
                }
            }
        }
    }

    /// Puts an unsettled message back at the head of its queue, redelivered,
    /// and counts the return; returns it instead when that takes it over
    /// its quorum queue's `x-delivery-limit` (returned more than that many
    /// times: delivered at most limit + 1 times, as RabbitMQ 3.10 does), to
    /// be dead-lettered with the reason `delivery_limit`. A message whose
    /// queue is gone is dropped.
    fn requeue(&mut self, unacked: Unacked) -> Option<Unacked> {
        let queue = self.queues.get_mut(&unacked.queue)?;
        if queue.id != unacked.queue_id {
            return None;
        }
        let mut unacked = unacked;
        unacked.entry.returns += 1;
        if queue.declaration.is_quorum()
            && queue
                .declaration
                .delivery_limit
                .is_some_and(|limit| unacked.entry.returns > limit)
        {
            return Some(unacked);
        }
        unacked.entry.redelivered = true;
        queue.push_front(unacked.entry);
        None
    }

    /// Returns an unsettled message to its queue ([`State::requeue`]), or
    /// dead-letters it past its delivery limit; returns the queues it
    /// reached then.
    fn give_back(&mut self, unacked: Unacked, now: Instant) -> Vec<String> {
        match self.requeue(unacked) {
            Some(over) => self
                .dead_letter(&over.queue, over.entry, "delivery_limit", now)
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Sends a message that expired or was rejected from `source` to the
    /// queue's dead-letter exchange, with RabbitMQ's `x-death` headers.
    /// Returns the queues it reached (none: dropped).
    fn dead_letter(
        &mut self,
        source: &str,
        entry: Entry,
        reason: &str,
        now: Instant,
    ) -> Option<Vec<String>> {
        let declaration = &self.queues.get(source)?.declaration;
        let exchange = declaration.dead_letter_exchange.clone()?;
        let routing_key = declaration
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| entry.routing_key.clone());
        let targets = self.route(&exchange, &routing_key).ok()?;
        let mut message = entry.message;
        let original_expiration = message.properties.expiration.take();
        let cycle = record_death(
            &mut message.properties.headers,
            source,
            reason,
            &entry.exchange,
            &entry.routing_key,
            original_expiration,
        );
        let mut reached = Vec::new();
        for target in targets {
            // A message that expires around a loop without ever being
            // rejected is dropped, as RabbitMQ does, rather than cycling.
            if cycle.contains(&target) {
                continue;
            }
            let copy = Entry {
                message: message.clone(),
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                redelivered: false,
                returns: 0,
                expires_at: None,
            };
            self.enqueue(&target, copy, None, now);
            reached.push(target);
        }
        Some(reached)
    }

    /// Records when the first message of a queue to expire is due, unless
    /// an earlier (or equal) time is recorded already.
    fn schedule_expiry(&mut self, name: &str) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let Some(deadline) = queue.next_deadline() else {
            return;
        };
        if queue.scheduled.is_some_and(|at| at <= deadline) {
            return;
        }
        queue.scheduled = Some(deadline);
        self.expiries.insert((deadline, queue.id, name.to_owned()));
    }

    /// Arms the timer for the earliest expiry or delayed message, unless it
    /// is armed (and alive) for that time or earlier already.
    fn arm_timer(&mut self, core: &Arc<Core>) {
        let next_expiry = self.expiries.first().map(|(at, _, _)| *at);
        let next_delayed = self.delayed.first_key_value().map(|((at, _), _)| *at);
        let Some(deadline) = next_expiry.into_iter().chain(next_delayed).min() else {
            return;
        };
        self.ids += 1;
        rearm(&mut self.timer, core, deadline, self.ids);
    }

    /// Moves the delayed messages that are due to their queues (a queue
    /// deleted meanwhile drops its messages, as a dead-letter with no route).
    fn release_delayed(&mut self, core: &Arc<Core>, now: Instant) {
        let mut targets: Vec<String> = Vec::new();
        while let Some(due) = self.delayed.first_entry() {
            if due.key().0 > now {
                break;
            }
            let Delayed { queue, entry } = due.remove();
            let expiration = parse_expiration(&entry.message).ok().flatten();
            if self.queues.contains_key(&queue) {
                self.enqueue(&queue, entry, expiration, now);
                if !targets.contains(&queue) {
                    targets.push(queue);
                }
            } else {
                self.unrouted.push(Delayed { queue, entry });
            }
        }
        self.settle(core, targets, now);
    }

    /// Moves the due messages kept for want of their queue to those queues
    /// that exist now; returns how many moved.
    pub(super) fn redeliver_unrouted(&mut self, core: &Arc<Core>) -> u32 {
        let now = Instant::now();
        let mut targets: Vec<String> = Vec::new();
        let mut moved = 0;
        for Delayed { queue, entry } in std::mem::take(&mut self.unrouted) {
            if !self.queues.contains_key(&queue) {
                self.unrouted.push(Delayed { queue, entry });
                continue;
            }
            let expiration = parse_expiration(&entry.message).ok().flatten();
            self.enqueue(&queue, entry, expiration, now);
            moved += 1;
            if !targets.contains(&queue) {
                targets.push(queue);
            }
        }
        self.settle(core, targets, now);
        moved
    }

    /// Deletes a queue for connection `session` (not another connection's
    /// exclusive queue; no error if it does not exist).
    pub(super) fn delete_queue_for(&mut self, session: u64, name: &str) -> Result<(), BrokerError> {
        if self
            .queues
            .get(name)
            .and_then(|queue| queue.owner)
            .is_some_and(|owner| owner != session)
        {
            return Err(locked("queue.delete", name));
        }
        self.delete_queue(name);
        Ok(())
    }

    /// Deletes a queue with its messages and bindings (and the auto-delete
    /// exchanges it was the last queue bound to).
    fn delete_queue(&mut self, name: &str) {
        let Some(queue) = self.queues.remove(name) else {
            return;
        };
        self.exchanges
            .retain(|_, exchange| !(exchange.unbind_queue(name) && exchange.is_unused()));
        // Its consumers lose it; one left without queues ends, as RabbitMQ
        // cancels the consumers of a deleted queue.
        for id in queue.consumers {
            if let Some(consumer) = self.consumers.get_mut(&id) {
                consumer.queues.retain(|q| q != name);
                if consumer.queues.is_empty() {
                    consumer.sender = None;
                }
            }
        }
    }

    /// Stops new deliveries to a consumer; its unacked messages stay with it.
    pub(super) fn cancel_consumer(&mut self, id: u64) {
        let Some(consumer) = self.consumers.get_mut(&id) else {
            return;
        };
        consumer.sender = None;
        let queues = consumer.queues.clone();
        self.detach(id, &queues);
    }

    /// Ends a consumer: its stream stops and its unacked messages are requeued.
    pub(super) fn close_consumer(&mut self, core: &Arc<Core>, id: u64) {
        let Some(consumer) = self.consumers.remove(&id) else {
            return;
        };
        consumer.closed.store(true, Ordering::Release);
        let mut touched: Vec<String> = consumer.queues.clone();
        let now = Instant::now();
        // Requeue newest first, each at the head: the oldest ends up first.
        for (_, unacked) in consumer.unacked.into_iter().rev() {
            if !touched.contains(&unacked.queue) {
                touched.push(unacked.queue.clone());
            }
            for target in self.give_back(unacked, now) {
                if !touched.contains(&target) {
                    touched.push(target);
                }
            }
        }
        self.detach(id, &consumer.queues);
        touched.retain(|q| self.queues.contains_key(q));
        self.settle(core, touched, now);
    }

    /// Removes a consumer from its queues, deleting the `auto_delete` queues
    /// it was the last consumer of.
    fn detach(&mut self, id: u64, queues: &[String]) {
        for name in queues {
            let Some(queue) = self.queues.get_mut(name) else {
                continue;
            };
            queue.consumers.retain(|c| *c != id);
            if queue.exclusive_consumer == Some(id) {
                queue.exclusive_consumer = None;
            }
            if queue.declaration.auto_delete && queue.had_consumer && queue.consumers.is_empty() {
                self.delete_queue(name);
            }
        }
    }

    /// Settles one delivery of a consumer.
    pub(super) fn settle_delivery(
        &mut self,
        core: &Arc<Core>,
        consumer_id: u64,
        tag: u64,
        outcome: Outcome,
    ) -> Result<(), BrokerError> {
        // Both are refused by the client on AMQP (lapin does not send a
        // settlement it knows to be late), so neither has a reply code.
        let consumer = self.consumers.get_mut(&consumer_id).ok_or_else(|| {
            BrokerError::failed(
                outcome.operation(),
                "the consumer of this delivery is closed: the message went back to its queue",
            )
        })?;
        let unacked = consumer.unacked.remove(&tag).ok_or_else(|| {
            BrokerError::failed(
                outcome.operation(),
                format!("delivery {tag} was settled already"),
            )
        })?;
        let mut touched = consumer.queues.clone();
        let now = Instant::now();
        match outcome {
            Outcome::Ack => {}
            Outcome::Requeue => {
                if !touched.contains(&unacked.queue) {
                    touched.push(unacked.queue.clone());
                }
                touched.extend(self.give_back(unacked, now));
            }
            Outcome::Discard => {
                let live = self
                    .queues
                    .get(&unacked.queue)
                    .is_some_and(|q| q.id == unacked.queue_id);
                if live {
                    if let Some(targets) =
                        self.dead_letter(&unacked.queue, unacked.entry, "rejected", now)
                    {
                        touched.extend(targets);
                    }
                }
            }
        }
        self.settle(core, touched, now);
        Ok(())
    }
}

/// RabbitMQ's refusal of an operation on the default exchange.
fn default_exchange_refused(operation: &'static str) -> BrokerError {
    BrokerError::refused(
        operation,
        ReplyCode::AccessRefused,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
}
