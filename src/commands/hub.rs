//! `outpost hub`: the fleet hub (embedded broker, artifact store, admin API).

use std::path::Path;

use anyhow::Context;
use outpost_hub::config::{HubConfig, DEFAULT_TOML};

use crate::cli::HubArgs;
use crate::settings::BadConfig;

pub fn run(config_path: Option<&Path>, log_json: bool, args: HubArgs) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let mut config = match config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                BadConfig(format!("cannot read hub config {}: {e}", path.display()))
            })?;
            HubConfig::from_toml_str(&text)
                .map_err(|e| BadConfig(format!("{}: {e}", path.display())))?
        }
        None => HubConfig::default(),
    };
    if args.data_dir.is_some() {
        config.data_dir = args.data_dir;
    }
    if args.fleet.is_some() {
        config.fleet = args.fleet;
    }
    if args.device_bind.is_some() {
        config.http.device_bind = args.device_bind;
    }
    if args.operator_bind.is_some() {
        config.http.operator_bind = args.operator_bind;
    }
    if args.mqtt_listen.is_some() {
        config.broker.listen = args.mqtt_listen;
    }
    if args.admin_token.is_some() {
        config.admin_token = args.admin_token;
    }
    config
        .data_dir
        .get_or_insert_with(|| crate::settings::data_dir("hub"));
    config.fleet.get_or_insert_with(|| "default".into());
    let valid = config
        .validate()
        // ConfigError's text already says "invalid hub configuration".
        .map_err(|e| BadConfig(e.to_string()))?;
    crate::init_tracing("info", log_json);
    crate::runtime()?.block_on(async {
        let evaluator = crate::evaluator::ChildEvaluator::new(valid.evaluation.clone())
            .context("finding this binary for the hub's evaluator")?;
        let trainer = crate::trainer::ChildTrainer::new(valid.training.clone(), &valid.evaluation)
            .context("finding this binary for the hub's trainer")?;
        let hub = outpost_hub::Hub::start_with_workers(
            valid,
            Some(std::sync::Arc::new(evaluator)),
            Some(std::sync::Arc::new(trainer)),
        )
        .await
        .context("starting the hub")?;
        println!(
            "outpost hub: admin on http://{}, artifacts on http://{}, MQTT on {}, signing key {}",
            hub.operator_addr(),
            hub.device_addr(),
            hub.broker_addr()
                .map_or_else(|| "the external broker".to_string(), |a| a.to_string()),
            hub.public_key_hex()
        );
        crate::commands::serve::shutdown_signal().await;
        hub.shutdown().await.context("stopping the hub")?;
        Ok(())
    })
}
