//! Scaled out: the internal topics, and a partition's state restored from
//! its changelog.
//!
//! `<group_id>-repartition` carries the calls re-keyed by ARN
//! ([`super::repartition`]); `<group_id>-changelog`, compacted, carries
//! every write of every partition's state, keyed by the store's own key,
//! with a tombstone for a removal. Both have `scale_out.partitions`
//! partitions, and partition `p` of the changelog holds the state of
//! partition `p` of the repartition topic.
//!
//! The changelog is the state's durable copy; the local sled tree is a
//! cache of it that knows how far into the changelog it is. Writes reach
//! the tree only after the transaction that wrote them to the changelog
//! committed, so a tree is never ahead of the changelog, and catching up
//! is reading from where the tree stopped. Reading again from an earlier
//! offset is harmless too: the same writes in the same order end in the
//! same state.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;

use crate::config::Config;
use crate::store::{ChangelogPosition, StateStore, StoreError, Write};

use super::{
    client_config, consumer_config, failed, require, KafkaFailure, ReaderContext,
};

/// Longest wait for the broker while creating topics or restoring.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long compaction keeps a tombstone on the changelog (set at
/// creation), in milliseconds: a tree last synced longer ago than
/// [`MAX_TREE_IDLE_MS`] may have missed a deletion, and restores whole.
const DELETE_RETENTION_MS: &str = "86400000";
const MAX_TREE_IDLE_MS: i64 = 12 * 3600 * 1000;
/// Pause between two looks at a new topic's metadata.
const METADATA_RETRY: Duration = Duration::from_millis(200);

/// The names of the internal topics of `config`'s group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTopics {
    pub repartition: String,
    pub changelog: String,
}

impl InternalTopics {
    pub fn of(config: &Config) -> InternalTopics {
        let group = &config.kafka.group_id;
        InternalTopics {
            repartition: format!("{group}-repartition"),
            changelog: format!("{group}-changelog"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(
        "topic {topic} has {found} partitions but scale_out.partitions is {configured}; \
         set scale_out.partitions = {found}, or use a new kafka.group_id (the internal \
         topics cannot be repartitioned in place: each partition's state is keyed to it)"
    )]
    PartitionCount {
        topic: String,
        found: i32,
        configured: i32,
    },
    #[error("cannot start a runtime for the admin client: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(
        "no changelog topic {0}: nothing has run with scale_out.enabled and this \
         kafka.group_id"
    )]
    NoChangelog(String),
    #[error("restoring partition {partition}: {source}")]
    Store {
        partition: i32,
        #[source]
        source: StoreError,
    },
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> ChangelogError {
    failed(operation)
}

/// Creates the internal topics unless they exist, and checks that they
/// have `scale_out.partitions` partitions.
pub fn ensure_topics(config: &Config) -> Result<InternalTopics, ChangelogError> {
    let topics = InternalTopics::of(config);
    let scale_out = &config.scale_out;
    let admin: AdminClient<DefaultClientContext> = client_config(&config.kafka)
        .create()
        .map_err(kafka("creating an admin client"))?;
    let replication = || TopicReplication::Fixed(scale_out.replication_factor);
    let new_topics = [
        NewTopic::new(&topics.repartition, scale_out.partitions, replication()),
        NewTopic::new(&topics.changelog, scale_out.partitions, replication())
            .set("cleanup.policy", "compact")
            .set("delete.retention.ms", DELETE_RETENTION_MS),
    ];
    let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
    // The admin client answers with futures; this runs in the pipeline's
    // blocking thread, which has no executor of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ChangelogError::Runtime)?;
    let results = runtime
        .block_on(admin.create_topics(&new_topics, &options))
        .map_err(kafka("creating the internal topics"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "internal topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(topic, error = %code, "cannot create an internal topic");
                return Err(kafka("creating the internal topics")(KafkaError::AdminOp(
                    code,
                )));
            }
        }
    }
    for topic in [&topics.repartition, &topics.changelog] {
        let found = created_partition_count(admin.inner(), topic)?;
        if found != scale_out.partitions {
            return Err(ChangelogError::PartitionCount {
                topic: topic.clone(),
                found,
                configured: scale_out.partitions,
            });
        }
    }
    Ok(topics)
}

/// `topic`'s partition count once the broker's metadata shows it: an
/// instance started with others may find the topic created by one of them
/// and not yet in the metadata it is answered with.
fn created_partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<i32, ChangelogError> {
    let deadline = Instant::now() + BROKER_TIMEOUT;
    loop {
        let found = partition_count(client, topic)?;
        if found > 0 || Instant::now() >= deadline {
            return Ok(found);
        }
        std::thread::sleep(METADATA_RETRY);
    }
}

fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<i32, ChangelogError> {
    let metadata = client
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .map_err(kafka("reading internal topic metadata"))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32))
}

/// What a restore did, for its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Where reading started: where the local tree had stopped, or the
    /// start of the changelog.
    pub from_offset: i64,
    pub writes: u64,
    /// The local tree was dropped first: it was ahead of the changelog
    /// (the topic was recreated), behind its start (compacted away), or
    /// idle long enough to have missed a compacted tombstone.
    pub cleared: bool,
}

/// A reader of the changelog that restores partitions' trees, one after
/// another, with one consumer (made once per rebalance, not per partition).
pub struct ChangelogReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
}

impl ChangelogReader {
    pub fn new(
        config: &Config,
        topics: &InternalTopics,
    ) -> Result<ChangelogReader, ChangelogError> {
        let mut consumer_config = consumer_config(&config.kafka);
        require(
            &mut consumer_config,
            &[
                ("group.id", &format!("{}-restore", config.kafka.group_id)),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                // Writes of aborted transactions never happened.
                ("isolation.level", "read_committed"),
                // The end of a partition is known only once a fetch comes
                // back empty, which the broker otherwise holds for 500 ms:
                // half a second per partition of every rebalance.
                ("fetch.wait.max.ms", "10"),
            ],
        );
        let consumer = consumer_config
            .create_with_context(ReaderContext)
            .map_err(kafka("creating the restore consumer"))?;
        Ok(ChangelogReader {
            consumer,
            topic: topics.changelog.clone(),
        })
    }

    /// Brings `store`, partition `partition`'s tree, up to the end of its
    /// changelog partition, as far as committed transactions go.
    pub fn restore(
        &self,
        partition: i32,
        store: &StateStore,
    ) -> Result<Restored, ChangelogError> {
        let store_error = |source| ChangelogError::Store { partition, source };
        let topic = self.topic.as_str();
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
            .map_err(kafka("reading changelog offsets"))?;
        let local = store.changelog_position().map_err(store_error)?;
        let now = super::now_ms();
        let cleared = local.is_some_and(|at| {
            at.next < low || at.next > high || now - at.synced_ms > MAX_TREE_IDLE_MS
        });
        if cleared {
            store.clear().map_err(store_error)?;
        }
        let from_offset = match local {
            Some(at) if !cleared => at.next,
            _ => low,
        };
        let mut restored = Restored {
            from_offset,
            writes: 0,
            cleared,
        };
        if from_offset >= high {
            let position = ChangelogPosition {
                next: from_offset,
                synced_ms: now,
            };
            store
                .apply_changelog(Vec::new(), position)
                .map_err(store_error)?;
            return Ok(restored);
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from_offset))
            .map_err(kafka("assigning the changelog"))?;
        self.consumer
            .assign(&assignment)
            .map_err(kafka("assigning the changelog"))?;
        let (writes, next) = read_to_end(&self.consumer, from_offset)?;
        restored.writes = writes.len() as u64;
        let position = ChangelogPosition {
            next,
            synced_ms: now,
        };
        store
            .apply_changelog(writes, position)
            .map_err(store_error)?;
        Ok(restored)
    }
}

/// Every write from the assigned changelog partition up to its end (for a
/// read_committed reader, the first offset of a transaction still open),
/// and the offset after the last one read.
fn read_to_end(
    consumer: &BaseConsumer<ReaderContext>,
    from_offset: i64,
) -> Result<(Vec<Write>, i64), ChangelogError> {
    let mut writes = Vec::new();
    let mut next = from_offset;
    let mut deadline = Instant::now() + BROKER_TIMEOUT;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None if Instant::now() >= deadline => {
                return Err(kafka("reading the changelog")(
                    KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
                ))
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok((writes, next)),
            Some(Err(error)) => return Err(kafka("reading the changelog")(error)),
            Some(Ok(message)) => {
                // Only a reader that makes no progress times out.
                deadline = Instant::now() + BROKER_TIMEOUT;
                next = message.offset() + 1;
                if let Some(key) = message.key() {
                    writes.push((key.to_vec(), message.payload().map(<[u8]>::to_vec)));
                }
            }
        }
    }
}

/// Reads every partition of the changelog into temporary stores, one per
/// partition: the whole deployment's state as committed, for
/// `baseline export --from-kafka`.
pub fn read_all(config: &Config) -> Result<Vec<StateStore>, ChangelogError> {
    let topics = InternalTopics::of(config);
    let consumer: BaseConsumer = consumer_config(&config.kafka)
        .create()
        .map_err(kafka("creating a changelog reader"))?;
    let partitions = partition_count(consumer.client(), &topics.changelog)?;
    if partitions == 0 {
        return Err(ChangelogError::NoChangelog(topics.changelog));
    }
    let reader = ChangelogReader::new(config, &topics)?;
    let mut stores = Vec::new();
    for partition in 0..partitions {
        let store = StateStore::temporary()
            .map_err(|source| ChangelogError::Store { partition, source })?;
        reader.restore(partition, &store)?;
        stores.push(store);
    }
    Ok(stores)
}
