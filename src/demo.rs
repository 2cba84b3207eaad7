//! `trailspike demo`: the zero-setup first run.
//!
//! Starts librdkafka's in-process mock cluster, feeds it synthetic
//! CloudTrail with spikes in it (and two malformed messages, to show the
//! dead-letter topic), runs the same pipeline as `trailspike run` against
//! it, and prints each alert as it reaches the alerts topic, while
//! `/metrics` is served.
//!
//! The mock keeps only about 5 MiB per partition, so the bundled data is
//! small: two days of 40 identities.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientConfig;
use rdkafka::Offset;

use crate::alert::{Alert, Status};
use crate::config::Config;
use crate::generate::{self, GenerateArgs};
use crate::kafka::pipeline::{self, Health, RunOptions};
use crate::metrics::Metrics;
use crate::parse::RejectReason;

const PARTITIONS: i32 = 4;

/// The bundled data: deterministic, with spikes late enough in it that
/// their identities have more than 15 windows of history.
pub fn demo_data() -> GenerateArgs {
    GenerateArgs {
        seed: 2024,
        hours: 40,
        arns: 40,
        rate_per_hour: 250.0,
        spikes: 2,
        ..GenerateArgs::default()
    }
}

/// Runs the demo. `follow` keeps the pipeline running after the bundled
/// data is done, until Ctrl-C.
pub fn run(
    mut config: Config,
    follow: bool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka mock")?;
    let bootstrap = cluster.bootstrap_servers();
    for topic in [
        &config.kafka.input_topic,
        &config.kafka.alerts_topic,
        &config.kafka.dead_letter_topic,
    ] {
        cluster.create_topic(topic, PARTITIONS, 1)?;
    }
    config.kafka.bootstrap_servers = bootstrap.clone();
    // The mock's topics are new on every run, so its state must be too: a
    // watermark left by an earlier run would make every record late.
    let state = tempfile::Builder::new()
        .prefix("trailspike-demo-state")
        .tempdir()
        .context("creating a temporary state directory")?;
    config.state.dir = state.path().to_path_buf();
    // An empty mock partition holds a fetch for the whole wait: keep it short.
    config
        .kafka
        .consumer_properties
        .insert("fetch.wait.max.ms".into(), "50".into());
    config.detection.idle_timeout = Duration::from_secs(2);
    let records = feed(&config)?;
    eprintln!("demo: {records} CloudTrail messages on topic {:?} of an in-process Kafka at {bootstrap}", config.kafka.input_topic);

    let printer_done = Arc::new(AtomicBool::new(false));
    let printer = {
        let config = config.clone();
        let done = printer_done.clone();
        std::thread::spawn(move || print_alerts(&config, &done))
    };
    let options = RunOptions {
        stop_at_end: !follow,
        reload: None,
    };
    let outcome = pipeline::run(&config, metrics.clone(), health, shutdown, options);
    printer_done.store(true, Ordering::Relaxed);
    let printed = printer
        .join()
        .map_err(|_| anyhow::anyhow!("alert printer panicked"))??;
    outcome?;
    drop(cluster);
    let dead_letters: u64 = RejectReason::ALL
        .iter()
        .map(|r| Metrics::count(&metrics.dead_letters, r.as_str()))
        .sum();
    eprintln!(
        "\ndemo: {} messages read, {} calls counted, {dead_letters} dead-lettered, \
         {} windows closed, {} alerts produced",
        metrics.messages_consumed.get(),
        metrics.records_counted.get(),
        metrics.windows_closed.get(),
        metrics.alerts_produced.get(),
    );
    Ok(printed)
}

/// Produces the bundled records, two malformed messages, and one record
/// per partition far enough ahead to close every window of the data.
fn feed(config: &Config) -> anyhow::Result<usize> {
    let mut lines = Vec::new();
    generate::generate(&demo_data(), &mut lines)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .create()?;
    let topic = &config.kafka.input_topic;
    let mut count = 0;
    let mut last_time = 0;
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        last_time = last_time.max(event_time(line));
        // Spread evenly: the mock keeps only about 5 MiB per partition,
        // and the sticky partitioner would pile batches onto one.
        let partition = (count % PARTITIONS as usize) as i32;
        send(
            &producer,
            BaseRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .payload(line),
        )?;
        count += 1;
        if count == 1000 {
            send(
                &producer,
                BaseRecord::<[u8], [u8]>::to(topic).payload(b"{\"eventTime\": oops"),
            )?;
            send(
                &producer,
                BaseRecord::<[u8], [u8]>::to(topic).payload(b"[\"not a record\"]"),
            )?;
        }
    }
    let closer = crate::alert::rfc3339(last_time + 2 * 3600);
    let sentinel = format!(r#"{{"eventTime":"{closer}","eventType":"AwsServiceEvent"}}"#);
    for partition in 0..PARTITIONS {
        send(
            &producer,
            BaseRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .payload(sentinel.as_bytes()),
        )?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(count)
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.flush(Duration::from_millis(100))?;
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

fn event_time(line: &[u8]) -> i64 {
    #[derive(serde::Deserialize)]
    struct Time<'a> {
        #[serde(rename = "eventTime", borrow)]
        event_time: &'a str,
    }
    serde_json::from_slice::<Time<'_>>(line)
        .ok()
        .and_then(|t| crate::parse::parse_event_time(t.event_time).ok())
        .unwrap_or(0)
}

/// Prints every alert on the alerts topic as it arrives; once `done` is
/// set, reads on to the end of every partition and returns.
fn print_alerts(config: &Config, done: &AtomicBool) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", "trailspike-demo-printer")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let topic = config.kafka.alerts_topic.as_str();
    // Assigned rather than subscribed: no group join to wait for.
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let mut next = vec![0; PARTITIONS as usize];
    let mut ends: Option<Vec<i64>> = None;
    let mut printed = 0;
    loop {
        if let Some(ends) = &ends {
            if next.iter().zip(ends).all(|(n, end)| n >= end) {
                return Ok(printed);
            }
        } else if done.load(Ordering::Relaxed) {
            let mut found = Vec::new();
            for partition in 0..PARTITIONS {
                let (_, high) = consumer.fetch_watermarks(
                    topic,
                    partition,
                    Duration::from_secs(5),
                )?;
                found.push(high);
            }
            ends = Some(found);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                next[message.partition() as usize] = message.offset() + 1;
                let alert = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Alert>(p).ok());
                if let Some(alert) = alert {
                    println!("{}", describe(&alert));
                    printed += 1;
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "reading alerts failed"),
            None => {}
        }
    }
}

/// An alert as a person reads it: what happened, how far out, and what
/// it was made of.
pub fn describe(alert: &Alert) -> String {
    let list = |items: Vec<String>, more: bool| {
        let mut text = items.join(", ");
        if more {
            text.push_str(", ...");
        }
        text
    };
    let names = list(
        alert.event_name.iter().take(6).cloned().collect(),
        alert.event_name.len() > 6 || alert.event_name_truncated,
    );
    let e = &alert.explanation;
    let new_apis = match e.new_event_names.len() {
        0 => "none".to_string(),
        n => list(e.new_event_names.iter().take(4).cloned().collect(), n > 4),
    };
    let top = |values: &[crate::alert::ValueCount], n: usize| {
        list(
            values
                .iter()
                .take(n)
                .map(|v| format!("{} ({})", v.value, v.count))
                .collect(),
            values.len() > n,
        )
    };
    let how_far = match (alert.z_score, alert.ratio_to_average) {
        (Some(z), Some(ratio)) => format!("z-score {z:.1}, {ratio:.1}x the average"),
        _ => "no spread in the baseline yet".to_string(),
    };
    let (label, status) = match alert.status {
        Status::New => ("SPIKE", String::new()),
        Status::Ongoing => (
            "SPIKE",
            format!(", ongoing for {} windows", alert.incident_spike_windows),
        ),
        Status::Resolved => ("ENDED", String::new()),
    };
    format!(
        "\n{label}  {user}\n  window      {start} .. {end}{status}\n  API calls   {calls} \
         (threshold {threshold:.1}: average {avg:.1}, deviation {stdev:.1} over {n} windows; {how_far})\n  \
         APIs        {unique} distinct: {names}\n  \
         never seen  {new_apis}\n  \
         addresses   {ips}\n  \
         user agent  {agents}\n  \
         failed      {failed} of {calls} calls{codes}\n  \
         alertId     {id} (incident {incident})",
        user = alert.user,
        start = alert.window_start,
        end = alert.window_end,
        calls = alert.number_of_api_calls,
        threshold = alert.threshold,
        avg = alert.avg_api_calls,
        stdev = alert.stdev_api_calls,
        n = alert.num_data_points,
        unique = alert.unique_apis_called,
        ips = top(&e.top_source_ips, 3),
        agents = top(&e.top_user_agents, 1),
        failed = e.failed_calls,
        codes = if e.top_error_codes.is_empty() {
            String::new()
        } else {
            format!(": {}", top(&e.top_error_codes, 3))
        },
        id = alert.alert_id,
        incident = alert.incident_id,
    )
}
