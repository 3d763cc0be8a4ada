//! One module per subcommand; each takes parsed flags and does the job.

pub mod ask;
pub mod bench;
pub mod config;
pub mod fleet;
pub mod hub;
pub mod models;
pub mod quant;
pub mod serve;
