//! The crate's one integration-test binary.

mod compat;
mod corpus;
mod fixtures;
mod fuzz_props;
mod gen;
mod independent;
mod redact_props;
mod wire_props;
