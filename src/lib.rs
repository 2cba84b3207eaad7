//! trailspike: streaming detection of spikes in AWS API activity.
pub mod baseline;
pub mod detect;
pub mod generate;
pub mod parse;
pub mod window;
