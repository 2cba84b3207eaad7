//! Scaled out, stage 1: the input partitions this instance holds, split
//! into records and forwarded by ARN onto the repartition topic, with a
//! progress marker per moved input partition at every checkpoint
//! ([`crate::kafka::repartition`] says why).

use std::cell::Cell;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};

use crate::config::Config;
use crate::engine::{DeadLetter, Intake};
use crate::kafka::changelog::InternalTopics;
use crate::kafka::repartition::{Forward, Repartitioner};
use crate::kafka::sink::{
    header, Delivered, Outgoing, SourceRef, HEADER_OFFSET, HEADER_PARTITION,
    HEADER_PROGRESS, HEADER_RECORD_INDEX,
};
use crate::kafka::{now_ms, KafkaOrigin};

use super::{kafka, ScaledError, Stage, Transaction};

pub(super) struct Split {
    transaction: Transaction,
    repartitioner: Repartitioner,
    repartition_topic: String,
    /// Partitions of the repartition topic, each of which gets every
    /// marker.
    repartition_partitions: i32,
    checkpoint_interval: Duration,
}

impl Split {
    pub(super) fn new(
        config: &Config,
        topics: &InternalTopics,
        transaction: Transaction,
    ) -> Split {
        let metrics = transaction.metrics.clone();
        Split {
            transaction,
            repartitioner: Repartitioner::new(Intake::new(config, metrics)),
            repartition_topic: topics.repartition.clone(),
            repartition_partitions: config.scale_out.partitions,
            checkpoint_interval: config.state.checkpoint_interval,
        }
    }

    /// Every moved input partition's progress, to every repartition
    /// partition.
    fn send_markers(&mut self) -> Result<(), ScaledError> {
        for (source, event_time) in self.repartitioner.take_markers() {
            let source = source.to_string();
            let event_time = event_time.to_string();
            for partition in 0..self.repartition_partitions {
                let headers = OwnedHeaders::new()
                    .insert(header(HEADER_PARTITION, &source))
                    .insert(header(HEADER_PROGRESS, &event_time));
                let outgoing = Outgoing {
                    topic: &self.repartition_topic,
                    partition: Some(partition),
                    key: None,
                    payload: None,
                    timestamp_ms: None,
                    headers: Some(headers),
                    what: Delivered::InTransaction,
                };
                self.transaction
                    .sink
                    .send_to(outgoing)
                    .map_err(kafka("queueing a progress marker"))?;
            }
        }
        Ok(())
    }
}

impl Stage for Split {
    const NAME: &'static str = "split";

    fn transaction(&mut self) -> &mut Transaction {
        &mut self.transaction
    }

    fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ScaledError> {
        let arrival_ms = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let from = SourceRef {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
        };
        let origin = KafkaOrigin {
            topic: from.topic,
            partition: from.partition,
            offset: from.offset,
        };
        let (sink, metrics) = (&self.transaction.sink, &self.transaction.metrics);
        let repartition_topic = self.repartition_topic.as_str();
        let failure = Cell::new(None);
        let mut forward = |call: Forward<'_>| {
            let outgoing = Outgoing {
                topic: repartition_topic,
                partition: None,
                key: Some(call.arn.as_bytes()),
                payload: Some(call.record),
                timestamp_ms: Some(arrival_ms),
                headers: Some(origin_headers(&from, call.record_index)),
                what: Delivered::InTransaction,
            };
            if let Err(error) = sink.send_to(outgoing) {
                failure.set(Some(error));
            }
        };
        let mut dead_letter = |letter: DeadLetter<'_>| match sink.send_dead_letter_as(
            Delivered::InTransaction,
            &letter,
            &from,
        ) {
            Ok(()) => metrics.dead_lettered(letter.reason),
            Err(error) => failure.set(Some(error)),
        };
        self.repartitioner.split(
            from.partition,
            message.payload().unwrap_or_default(),
            arrival_ms / 1000,
            &origin,
            &mut forward,
            &mut dead_letter,
        );
        match failure.into_inner() {
            Some(error) => Err(kafka("queueing a repartitioned record")(error)),
            None => Ok(()),
        }
    }

    fn checkpoint_due(&mut self) -> bool {
        self.transaction.pending()
            && self.transaction.last_commit.elapsed() >= self.checkpoint_interval
    }

    fn commit(&mut self, group: &ConsumerGroupMetadata) -> Result<(), ScaledError> {
        if !self.transaction.pending() {
            return Ok(());
        }
        self.transaction.begin()?;
        self.send_markers()?;
        self.transaction.commit(group)
    }

    fn assigned(&mut self, _partitions: &[i32]) -> Result<(), ScaledError> {
        Ok(())
    }

    /// Their new owner sends their markers from now on.
    fn revoked(&mut self, partitions: &[i32]) {
        for &partition in partitions {
            self.repartitioner.forget(partition);
        }
    }

    /// The input is read again from the last commit, and its markers
    /// follow from that.
    fn rebuild(&mut self) -> Result<(), ScaledError> {
        self.repartitioner.forget_all();
        Ok(())
    }
}

/// Where a repartitioned record came from, in its headers, so that a late
/// record's dead letter names its input message.
fn origin_headers(from: &SourceRef<'_>, record_index: Option<usize>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(3)
        .insert(header(HEADER_PARTITION, &from.partition.to_string()))
        .insert(header(HEADER_OFFSET, &from.offset.to_string()));
    if let Some(index) = record_index {
        headers = headers.insert(header(HEADER_RECORD_INDEX, &index.to_string()));
    }
    headers
}
