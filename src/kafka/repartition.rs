//! Scaled out, stage 1 of each instance: the input topic re-keyed by ARN.
//!
//! Producers rarely key CloudTrail by ARN, so one ARN's calls arrive on
//! every input partition. The repartitioner splits each message into its
//! records, screens them as the single-instance pipeline does (bad input
//! goes to the dead-letter topic here), and forwards every call, keyed by
//! its ARN, to the internal repartition topic, where all of one ARN's
//! calls meet in one partition and so in one instance.
//!
//! Watermarks: SPEC.md section 2 sets the watermark from the slowest input
//! partition. A repartition partition mixes calls of every input
//! partition, so each forwarded record names its input partition, and at
//! every checkpoint each input partition that moved sends a progress
//! marker, its highest event time so far, to every repartition partition.
//! Both come from one producer in order, so when a marker arrives every
//! record it covers has arrived before it; downstream keeps one clock per
//! input partition, exactly as the single-instance engine does. A quiet
//! input partition sends no markers and goes idle downstream after
//! `idle_timeout`, as it would upstream.

use std::collections::BTreeMap;

use crate::engine::{DeadLetter, Intake, Passed, Refusal, Screened};
use crate::metrics::Origin;

/// A call on its way to the repartition topic.
pub struct Forward<'a> {
    /// The ARN, after any session collapse: the partitioning key.
    pub arn: &'a str,
    /// The record's exact bytes.
    pub record: &'a [u8],
    pub record_index: Option<usize>,
}

/// One input partition's progress, for its markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InputClock {
    max_event_time: i64,
    moved: bool,
}

pub struct Repartitioner {
    intake: Intake,
    clocks: BTreeMap<i32, InputClock>,
}

impl Repartitioner {
    pub fn new(intake: Intake) -> Repartitioner {
        Repartitioner {
            intake,
            clocks: BTreeMap::new(),
        }
    }

    /// Splits one message of input partition `partition`: calls go to
    /// `forward`, bad input to `dead_letter`.
    pub fn split(
        &mut self,
        partition: i32,
        message: &[u8],
        arrival_unix: i64,
        origin: Origin<'_>,
        forward: &mut dyn FnMut(Forward<'_>),
        dead_letter: &mut dyn FnMut(DeadLetter<'_>),
    ) {
        self.intake.metrics().messages_consumed.inc();
        let clocks = &mut self.clocks;
        let mut accept = |passed: Passed<'_>| -> Refusal {
            let event_time = match &passed.screened {
                Screened::Call(call) => {
                    forward(Forward {
                        arn: &call.arn,
                        record: passed.raw,
                        record_index: passed.record_index,
                    });
                    call.event_time
                }
                Screened::Progress(event_time) => *event_time,
            };
            let clock = clocks.entry(partition).or_insert(InputClock {
                max_event_time: event_time,
                moved: true,
            });
            // Moved even without a newer time: the marker also tells
            // downstream that the partition is not idle.
            clock.max_event_time = clock.max_event_time.max(event_time);
            clock.moved = true;
            None
        };
        self.intake.process_message(
            message,
            arrival_unix,
            origin,
            &mut accept,
            dead_letter,
        );
    }

    /// The (input partition, highest event time) of every input partition
    /// that delivered a record since the last call.
    pub fn take_markers(&mut self) -> Vec<(i32, i64)> {
        self.clocks
            .iter_mut()
            .filter(|(_, clock)| clock.moved)
            .map(|(&partition, clock)| {
                clock.moved = false;
                (partition, clock.max_event_time)
            })
            .collect()
    }

    /// Stops tracking an input partition that moved to another instance;
    /// its new owner sends its markers from now on.
    pub fn forget(&mut self, partition: i32) {
        self.clocks.remove(&partition);
    }

    /// Stops tracking every input partition: they are read again from the
    /// last commit, and their markers follow from that.
    pub fn forget_all(&mut self) {
        self.clocks.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn repartitioner(toml: &str) -> Repartitioner {
        let config = Config::from_toml(toml).unwrap();
        Repartitioner::new(Intake::new(&config, Arc::new(Metrics::new())))
    }

    fn call(arn: &str, time: &str) -> String {
        format!(
            r#"{{"eventTime":"{time}","eventType":"AwsApiCall","eventName":"GetObject","userIdentity":{{"arn":"{arn}"}}}}"#
        )
    }

    /// A forwarded call: ARN, record, index in its batch.
    type Forwarded = (String, String, Option<usize>);

    /// Splits `message` and returns what was forwarded and the dead
    /// letters' reasons.
    fn split(
        repartitioner: &mut Repartitioner,
        partition: i32,
        message: &str,
    ) -> (Vec<Forwarded>, Vec<String>) {
        let mut forwarded = Vec::new();
        let mut dead = Vec::new();
        repartitioner.split(
            partition,
            message.as_bytes(),
            1_714_600_000,
            &"test",
            &mut |f| {
                let record = String::from_utf8(f.record.to_vec()).unwrap();
                forwarded.push((f.arn.to_string(), record, f.record_index));
            },
            &mut |letter| dead.push(letter.reason.as_str().to_string()),
        );
        (forwarded, dead)
    }

    #[test]
    fn a_records_batch_is_forwarded_record_by_record_keyed_by_arn() {
        let mut r = repartitioner("");
        let alice = call("arn:aws:iam::1:user/alice", "2024-05-01T13:07:42Z");
        let bob = call("arn:aws:iam::1:user/bob", "2024-05-01T13:08:00Z");
        let batch = format!(r#"{{"Records":[{alice},{bob}]}}"#);
        let (forwarded, dead) = split(&mut r, 0, &batch);
        assert!(dead.is_empty());
        assert_eq!(
            forwarded,
            vec![
                ("arn:aws:iam::1:user/alice".into(), alice, Some(0)),
                ("arn:aws:iam::1:user/bob".into(), bob, Some(1)),
            ]
        );
    }

    #[test]
    fn assumed_role_sessions_are_keyed_by_their_role_when_collapsed() {
        let mut r = repartitioner("[detection]\ncollapse_assumed_role_sessions = true\n");
        let session = "arn:aws:sts::1:assumed-role/deploy/job-42";
        let (forwarded, _) = split(&mut r, 0, &call(session, "2024-05-01T13:07:42Z"));
        assert_eq!(forwarded[0].0, "arn:aws:sts::1:assumed-role/deploy");
        assert!(forwarded[0].1.contains("job-42"), "the record is unchanged");
    }

    #[test]
    fn bad_input_is_dead_lettered_and_never_moves_a_marker() {
        let mut r = repartitioner("");
        let (forwarded, dead) = split(&mut r, 3, "not json");
        assert!(forwarded.is_empty());
        assert_eq!(dead, vec!["invalid_json".to_string()]);
        let future = call("arn:aws:iam::1:user/alice", "2030-01-01T00:00:00Z");
        let (forwarded, dead) = split(&mut r, 3, &future);
        assert!(forwarded.is_empty());
        assert_eq!(dead, vec!["future_skew".to_string()]);
        assert!(r.take_markers().is_empty());
    }

    #[test]
    fn markers_carry_each_moved_partitions_highest_event_time_once() {
        let mut r = repartitioner("");
        let arn = "arn:aws:iam::1:user/alice";
        split(&mut r, 0, &call(arn, "2024-05-01T13:00:10Z"));
        split(&mut r, 0, &call(arn, "2024-05-01T13:00:05Z"));
        let service =
            r#"{"eventTime":"2024-05-01T14:00:00Z","eventType":"AwsServiceEvent"}"#;
        split(&mut r, 1, service);
        assert_eq!(
            r.take_markers(),
            vec![(0, 1_714_568_410), (1, 1_714_572_000)],
            "a skipped record moves its partition too"
        );
        assert!(r.take_markers().is_empty(), "nothing moved since");
        split(&mut r, 0, &call(arn, "2024-05-01T12:00:00Z"));
        assert_eq!(
            r.take_markers(),
            vec![(0, 1_714_568_410)],
            "an older record keeps the partition alive, at its highest time"
        );
        r.forget(0);
        split(&mut r, 1, service);
        assert_eq!(r.take_markers(), vec![(1, 1_714_572_000)]);
    }
}
