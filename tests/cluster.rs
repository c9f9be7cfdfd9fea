//! A real local cluster of three RabbitMQ nodes (`common/private_cluster.rs`)
//! with quorum task queues: one node is SIGKILLed while tasks, results and
//! delayed tasks are in flight, then restarted. Nothing is lost, the worker
//! and the client fail over to another node of their URL list by
//! themselves, and every result of a task that finished after the kill
//! reaches its caller; duplicates (late ack: a task whose ack died with the
//! node runs again) are counted and reported.

mod common;
#[path = "common/private_cluster.rs"]
mod private_cluster;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::TestWorker;
use private_cluster::PrivateCluster;
use task_core::broker::amqp::ReconnectPolicy;
use task_core::broker::QueueType;
use task_core::{task, App, Error, TaskError};

/// Each task's runs: when each ended.
static RUNS: Mutex<Option<HashMap<u64, Vec<Instant>>>> = Mutex::new(None);

#[task(name = "cluster.work")]
async fn work(id: u64) -> Result<u64, TaskError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    RUNS.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_default()
        .push(Instant::now());
    Ok(id)
}

/// Immediate tasks sent.
const TASKS: u64 = 400;
/// Delayed tasks sent (countdowns of 2 to 5 s).
const DELAYED: u64 = 60;
/// Every wait of the test is bounded by this.
const WAIT: Duration = Duration::from_secs(120);

/// An app on the cluster's nodes, node 0 first (Celery's failover list),
/// with quorum task queues.
async fn cluster_app(cluster: &PrivateCluster) -> App {
    App::builder()
        .broker_url(cluster.urls().join(";"))
        .queue_type(QueueType::Quorum)
        .reconnect_policy(ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            operation_deadline: Duration::from_secs(60),
        })
        .set_as_default(false)
        .connect()
        .await
        .expect("the cluster accepts connections")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_no_task_and_no_delayed_task() {
    common::init_logs();
    let cluster = PrivateCluster::start("cluster-kill").await;
    let queue = common::unique_queue("cluster-kill");
    // Worker and client each on a connection of their own, both on node 0
    // (first in the list), where the queue's leader lives too: its kill
    // takes both connections and the leader.
    let worker_app = cluster_app(&cluster).await;
    let client = cluster_app(&cluster).await;
    let w = TestWorker::start_on(queue.clone(), worker_app, 8, |b| b).await;
    client.ensure_queue(&queue).await.unwrap();
    let leader = cluster.leader_of(&queue).await;
    assert_eq!(leader.as_deref(), Some(cluster.node(0)), "leader on node 0");

    // Publish at a steady pace, delayed tasks among them, on a task of its
    // own, so that publishing goes on across the kill.
    let sender = {
        let client = client.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            let mut failed = Vec::new();
            for id in 0..TASKS + DELAYED {
                let mut call = work.s(id).queue(queue.clone());
                let delayed = id >= TASKS;
                if delayed {
                    call = call.countdown(Duration::from_millis(2000 + (id % 4) * 1000));
                }
                let sent_at = Instant::now();
                match call.apply_async_with(&client).await {
                    Ok(handle) => handles.push((id, delayed, sent_at, sent_at.elapsed(), handle)),
                    Err(error) => failed.push((id, error.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (handles, failed)
        })
    };

    // Kill node 0 once a third of the tasks ran.
    let deadline = Instant::now() + WAIT;
    while ran_count() < TASKS / 3 {
        assert!(Instant::now() < deadline, "the tasks do not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    cluster.kill(0).await;
    eprintln!("killed node 0 after {} tasks ran", ran_count());
    let (handles, failed) = sender.await.unwrap();
    // Failover within the operation deadline: no publish failed.
    assert!(failed.is_empty(), "publishes failed: {failed:?}");

    // Every task runs (at least once), each delayed one not before its ETA.
    let mut results = 0;
    let mut lost_results = Vec::new();
    let deadline = Instant::now() + WAIT;
    for (id, delayed, sent_at, _, handle) in &handles {
        let left = deadline.saturating_duration_since(Instant::now());
        match handle.get(left.max(Duration::from_millis(1))).await {
            Ok(value) => {
                assert_eq!(value, *id);
                results += 1;
            }
            Err(Error::ResultLost { .. } | Error::Timeout { .. }) => lost_results.push(*id),
            Err(other) => panic!("task {id}: {other}"),
        }
        let runs = runs_of(*id);
        assert!(!runs.is_empty(), "task {id} never ran (lost)");
        if *delayed {
            let countdown = Duration::from_millis(2000 + (id % 4) * 1000);
            assert!(
                runs[0] >= *sent_at + countdown,
                "delayed task {id} ran {:?} after sending, before its countdown",
                runs[0] - *sent_at
            );
        }
    }
    // A result is lost only if it sat in the client's reply queue on the
    // dead node (rpc:// results are transient): its task ended before the
    // kill, never after.
    for id in &lost_results {
        let last = *runs_of(*id).last().unwrap();
        assert!(
            last < killed_at,
            "task {id} ended {:?} after the kill, yet its result never came",
            last - killed_at
        );
    }
    // Resumed: the first task published after the kill (through the
    // client's new node) ran on the worker (on its new node).
    let resumed = handles
        .iter()
        .filter(|(_, delayed, sent_at, ..)| !delayed && *sent_at > killed_at)
        .filter_map(|(id, ..)| runs_of(*id).first().copied())
        .min()
        .map(|ran| ran - killed_at);
    let slowest_publish = handles
        .iter()
        .map(|(.., took, _)| *took)
        .max()
        .unwrap_or_default();
    let duplicates: usize = (0..TASKS + DELAYED)
        .map(|id| runs_of(id).len().saturating_sub(1))
        .sum();
    eprintln!(
        "cluster kill: {} tasks ({} delayed), 0 lost, {results} results, {} results lost \
         (ended before the kill), {duplicates} duplicate runs; first task sent after the kill \
         ran {resumed:?} after it; slowest publish {slowest_publish:?}",
        TASKS + DELAYED,
        DELAYED,
        lost_results.len()
    );
    assert!(
        resumed.is_some_and(|took| took < Duration::from_secs(30)),
        "the worker did not resume within 30 s: {resumed:?}"
    );

    // The node comes back into the cluster and the queue.
    cluster.restart(0).await;
    let members = cluster.quorum_members(&queue).await;
    assert!(
        members.iter().any(|member| member == cluster.node(0)),
        "node 0 back in the queue: {members:?}"
    );
    let (app, queue) = w.halt().await;
    app.broker().delete_queue(&queue).await.unwrap();
    app.broker().delete_exchange(&queue).await.unwrap();
    drop(client);
}

fn ran_count() -> u64 {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .map_or(0, |runs| runs.len() as u64)
}

fn runs_of(id: u64) -> Vec<Instant> {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|runs| runs.get(&id).cloned())
        .unwrap_or_default()
}
