//! trailspike: streaming detection of spikes in AWS API activity, from
//! CloudTrail on Kafka. SPEC.md is the contract for what it computes.
//!
//! One module per stage of the pipeline:
//!
//! - [`parse`]: message bytes to the few CloudTrail fields used;
//! - [`window`]: per-ARN counts in tumbling event-time windows, watermarks;
//! - [`baseline`]: the running mean and deviation of each ARN;
//! - [`detect`]: the spike rule, and closing a window into verdicts;
//! - [`summary`]: fixed-size summaries that explain an alert;
//! - [`alert`]: the alert schema, its id, incidents, and suppression rules;
//! - [`tuning`]: overrides, suppression and throttling, reloadable;
//! - [`ocsf`]: the alert as an OCSF Detection Finding;
//! - [`store`]: state in sled, committed in atomic checkpoints;
//! - [`spill`]: open windows past the memory bound, on disk;
//! - [`engine`]: the stages above as one unit that drivers feed;
//! - [`replay`]: the driver for files (`replay`, `backfill`);
//! - [`kafka`]: the driver for Kafka (`run`), with its delivery guarantees;
//! - [`server`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`demo`]: the zero-setup demo on an in-process Kafka;
//! - [`config`], [`metrics`]: configuration and operational events;
//! - [`generate`]: synthetic CloudTrail for tests, demo and benchmarks.
pub mod alert;
pub mod baseline;
pub mod config;
pub mod demo;
pub mod detect;
pub mod engine;
pub mod generate;
pub mod kafka;
pub mod metrics;
pub mod ocsf;
pub mod parse;
pub mod replay;
pub mod server;
pub mod spill;
pub mod store;
pub mod summary;
pub mod tuning;
pub mod window;
