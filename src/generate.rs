//! Synthetic CloudTrail (being written).
