//! `outpost config`: print the commented defaults, or check a configuration.

use outpost_runtime::config::{DeviceConfig, DEFAULT_TOML};

pub fn print_default() {
    print!("{DEFAULT_TOML}");
}

pub fn check(config: &DeviceConfig) {
    println!("configuration is valid:\n{config:#?}");
}
