//! trailspike: streaming detection of spikes in AWS API activity.
pub mod generate;
