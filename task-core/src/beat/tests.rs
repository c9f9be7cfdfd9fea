//! The scheduler's loop on `memory://` with tokio's paused clock: when it
//! fires, what, and that two instances in one process share one lead.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use futures_util::StreamExt;

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, ConsumeOptions, Consumer, QueueSpec};
use crate::schedule::Crontab;
use crate::Signature;

fn run_of(delivery: &crate::broker::Delivery) -> (String, DateTime<Utc>) {
    let headers = &delivery.message.properties.headers;
    let run = headers
        .get(RUN_HEADER)
        .and_then(crate::broker::headers::as_integer)
        .and_then(DateTime::from_timestamp_millis)
        .expect("a run header");
    (
        headers
            .get_str(ENTRY_HEADER)
            .expect("an entry header")
            .to_owned(),
        run,
    )
}

/// Runs `beat` until the returned signal fires.
fn start(
    beat: &Beat,
) -> (
    tokio_util_like::Stop,
    tokio::task::JoinHandle<Result<(), BeatError>>,
) {
    let stop = tokio_util_like::Stop::default();
    let running = tokio::spawn({
        let (beat, stop) = (beat.clone(), stop.clone());
        async move { beat.run_until(stop.wait()).await }
    });
    (stop, running)
}

async fn consumer(broker: &MemoryBroker, queue: &str) -> Consumer {
    broker
        .declare_queue(&QueueSpec::task_queue(queue))
        .await
        .expect("declared");
    broker
        .consume(&[queue.to_owned()], ConsumeOptions::no_ack())
        .await
        .expect("consuming")
}

#[tokio::test(start_paused = true)]
async fn on_a_paused_clock_every_run_fires_on_time_and_in_order() {
    let broker = MemoryBroker::new();
    let mut deliveries = consumer(&broker, "paused").await.deliveries;
    let send = || Signature::<()>::new("t.tick").queue("paused");
    let beat = Beat::builder()
        .broker(Arc::new(broker.clone()))
        .entry(Entry::every("ten-seconds", Duration::from_secs(10), send()))
        .entry(Entry::celery("each-minute", Crontab::new(), send()))
        .entry(Entry::cron("odd-minutes", "1-59/2 * * * *", send()).jitter(Duration::from_secs(5)))
        .build()
        .expect("valid entries");
    let (stop, running) = start(&beat);
    let started = crate::clock::now();
    let mut fired = Vec::new();
    // Ten virtual minutes.
    while fired.len() < 60 + 10 + 5 {
        let delivery = deliveries.next().await.expect("open").expect("a delivery");
        let late = crate::clock::now() - run_of(&delivery).1;
        fired.push((run_of(&delivery), late));
    }
    stop.fire();
    running.await.expect("no panic").expect("stops cleanly");
    let runs = |entry: &str| -> Vec<DateTime<Utc>> {
        fired
            .iter()
            .filter(|((name, _), _)| name == entry)
            .map(|((_, run), _)| *run)
            .collect()
    };
    let tens = runs("ten-seconds");
    assert!(
        tens.windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::seconds(10)),
        "{tens:?}"
    );
    assert!(tens[0] > started && tens[0].second() % 10 == 0);
    let minutes = runs("each-minute");
    assert!(minutes.iter().all(|run| run.second() == 0));
    assert!(minutes
        .windows(2)
        .all(|w| w[1] - w[0] == chrono::Duration::minutes(1)));
    let odd = runs("odd-minutes");
    assert!(
        odd.iter()
            .all(|run| run.minute() % 2 == 1 && run.second() == 0),
        "{odd:?}"
    );
    for ((entry, run), late) in &fired {
        let bound = if entry == "odd-minutes" { 5_000 } else { 1 };
        assert!(
            late.num_milliseconds() >= 0 && late.num_milliseconds() < bound,
            "{entry} at {run} fired {late} late"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_one_off_entry_fires_once_and_a_past_one_never() {
    let broker = MemoryBroker::new();
    let mut deliveries = consumer(&broker, "once").await.deliveries;
    let now = crate::clock::now();
    let send = || Signature::<()>::new("t.once").queue("once");
    let beat = Beat::builder()
        .broker(Arc::new(broker.clone()))
        .entry(Entry::once(
            "soon",
            now + chrono::Duration::seconds(30),
            send(),
        ))
        .entry(Entry::once(
            "past",
            now - chrono::Duration::seconds(30),
            send(),
        ))
        .entry(Entry::every("marker", Duration::from_secs(3600), send()))
        .build()
        .expect("valid entries");
    let (stop, running) = start(&beat);
    let mut names = Vec::new();
    // Until the hourly marker: everything due before it has fired.
    loop {
        let delivery = deliveries.next().await.expect("open").expect("a delivery");
        let (entry, _) = run_of(&delivery);
        if entry == "marker" {
            break;
        }
        names.push(entry);
    }
    stop.fire();
    running.await.expect("no panic").expect("stops cleanly");
    assert_eq!(names, ["soon"]);
}

#[test]
fn every_invalid_entry_is_reported_at_build_by_name() {
    let send = || Signature::<()>::new("t");
    let error = Beat::builder()
        .entry(Entry::cron("bad-cron", "0 25 * * *", send()))
        .entry(Entry::cron("bad-zone", "0 3 * * *", send()).timezone("Europe/Atlantis"))
        .entry(Entry::celery(
            "sunday-seven",
            Crontab::new().day_of_week("7"),
            send(),
        ))
        .entry(Entry::every("zero", Duration::ZERO, send()))
        .entry(Entry::every("dup", Duration::from_secs(1), send()))
        .entry(Entry::every("dup", Duration::from_secs(2), send()))
        .entry(Entry::every("fine", Duration::from_secs(1), send()))
        .build()
        .err()
        .expect("invalid entries");
    let BeatError::Entries(errors) = &error else {
        panic!("entry errors: {error}")
    };
    let names: Vec<&str> = errors.iter().map(|e| e.entry.as_str()).collect();
    assert_eq!(
        names,
        ["bad-cron", "bad-zone", "sunday-seven", "zero", "dup"],
        "{error}"
    );
    assert!(error.to_string().contains("Europe/Atlantis"), "{error}");
}

/// A tiny stop signal (task-core does not depend on tokio-util).
mod tokio_util_like {
    use std::sync::Arc;
    use tokio::sync::watch;

    #[derive(Clone)]
    pub(super) struct Stop(Arc<watch::Sender<bool>>);

    impl Default for Stop {
        fn default() -> Self {
            Self(Arc::new(watch::channel(false).0))
        }
    }

    impl Stop {
        pub(super) fn fire(&self) {
            self.0.send_replace(true);
        }

        pub(super) async fn wait(self) {
            let mut stopped = self.0.subscribe();
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    }
}

#[test]
fn a_group_name_that_cannot_name_queues_is_refused() {
    for name in [String::new(), "g".repeat(201)] {
        let error = Beat::builder().name(name).build().err().expect("refused");
        assert!(error.to_string().contains("group name"), "{error}");
    }
}
