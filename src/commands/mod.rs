//! One module per subcommand; each takes parsed flags and does the job.

pub mod ask;
pub mod bench;
pub mod bundle;
pub mod config;
pub mod eval;
pub mod fleet;
pub mod hub;
pub mod kb;
pub mod models;
pub mod prompts;
pub mod quant;
pub mod roi;
pub mod serve;
pub mod tune;
pub mod tune_train;
