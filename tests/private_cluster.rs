//! The three-node cluster fixture (`common/private_cluster.rs`): the
//! cluster forms, a quorum queue survives the `SIGKILL` of its leader with
//! every confirmed message, and the killed node comes back into the cluster
//! and the queue.

#[path = "common/private_cluster.rs"]
mod private_cluster;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use private_cluster::PrivateCluster;

/// How many messages go through the queue.
const MESSAGES: usize = 100;
/// Every wait of the test is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` every half second until it returns `Some`, for at most
/// [`WAIT`]; panics with `what` if it never does.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} (waited {WAIT:?})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_forms_and_a_node_comes_back_after_sigkill() {
    let started = Instant::now();
    let cluster = PrivateCluster::start("sigkill").await;
    let start_took = started.elapsed();
    let running = cluster.running_nodes().await;
    for i in 0..3 {
        assert!(
            running.iter().any(|name| name == cluster.node(i)),
            "{} is not running in the cluster: {running:?}",
            cluster.node(i)
        );
    }

    // A durable quorum queue, 100 persistent messages confirmed through
    // node 0.
    let queue = format!("test.private_cluster.{}", uuid::Uuid::new_v4().simple());
    let publisher = Connection::connect(&cluster.url(0), ConnectionProperties::default())
        .await
        .expect("connect to node 0");
    let channel = publisher.create_channel().await.expect("a channel");
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .expect("the quorum queue is declared");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("publisher confirms");
    for n in 0..MESSAGES {
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("a confirmation");
        assert!(
            confirmation.is_ack(),
            "message {n} nacked: {confirmation:?}"
        );
    }
    let _ = publisher.close(200, "published".into()).await;

    let members = cluster.quorum_members(&queue).await;
    assert_eq!(members.len(), 3, "the queue is on every node: {members:?}");
    let leader = eventually("the queue has a leader", || cluster.leader_of(&queue)).await;
    let killed = cluster
        .index_of(&leader)
        .unwrap_or_else(|| panic!("the leader {leader} is no node of the cluster"));

    // SIGKILL the leader.
    let kill_started = Instant::now();
    cluster.kill(killed).await;
    let kill_took = kill_started.elapsed();
    assert!(!cluster.is_running(killed), "node {killed} still runs");
    let survivor = (killed + 1) % 3;
    let new_leader = eventually("a surviving node leads the queue", || async {
        cluster
            .leader_of(&queue)
            .await
            .filter(|new_leader| *new_leader != leader)
    })
    .await;
    eprintln!("leader {leader} killed; {new_leader} leads now");

    // Every message back through a surviving node.
    let consumer_connection =
        Connection::connect(&cluster.url(survivor), ConnectionProperties::default())
            .await
            .expect("connect to a surviving node");
    let channel = consumer_connection
        .create_channel()
        .await
        .expect("a channel");
    channel
        .basic_qos(20, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "private_cluster".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume from the queue");
    let mut received = BTreeSet::new();
    while received.len() < MESSAGES {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} messages came back", received.len()))
            .expect("the consumer is open")
            .expect("a delivery");
        let body = String::from_utf8_lossy(&delivery.data).into_owned();
        let n: usize = body
            .parse()
            .unwrap_or_else(|_| panic!("a message of the test: {body:?}"));
        received.insert(n);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(received, (0..MESSAGES).collect::<BTreeSet<_>>());
    let _ = consumer_connection.close(200, "consumed".into()).await;

    // The killed node comes back into the cluster and the queue.
    let restart_started = Instant::now();
    cluster.restart(killed).await;
    let restart_took = restart_started.elapsed();
    assert!(cluster.is_running(killed), "node {killed} is not running");
    let running = cluster.running_nodes().await;
    assert!(
        running.iter().any(|name| name == cluster.node(killed)),
        "{} is not running in the cluster: {running:?}",
        cluster.node(killed)
    );
    assert!(
        cluster
            .quorum_members(&queue)
            .await
            .iter()
            .any(|name| name == cluster.node(killed)),
        "{} is no member of the queue any more",
        cluster.node(killed)
    );
    eventually(
        "the restarted node is an online member of the queue",
        || async {
            cluster
                .quorum_online(&queue)
                .await
                .iter()
                .any(|name| name == cluster.node(killed))
                .then_some(())
        },
    )
    .await;

    eprintln!(
        "cluster start {start_took:.1?}, kill {kill_took:.1?}, restart {restart_took:.1?}, \
         whole test {:.1?}",
        started.elapsed()
    );
}
