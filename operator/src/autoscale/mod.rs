//! The built-in autoscaler (being written).

pub mod algorithm;
