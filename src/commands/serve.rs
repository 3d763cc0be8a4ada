//! `outpost serve`: the device API over the engine.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use outpost_runtime::config::{DeviceConfig, RawDeviceConfig};
use outpost_runtime::engine::EngineHandle;
use outpost_runtime::http::openai::RequestDefaults;
use outpost_runtime::http::{self, ApiConfig, AppState};
use outpost_runtime::metrics::Metrics;

use crate::cli::ServeArgs;
use crate::settings;

pub fn flags(args: &ServeArgs) -> RawDeviceConfig {
    let mut raw = settings::engine_flags(&args.engine);
    raw.server.host = args.host.clone();
    raw.server.port = args.port;
    raw.server.api_key = args.api_key.clone();
    raw.engine.queue_capacity = args.queue_capacity;
    raw
}

pub async fn run(config: DeviceConfig) -> anyhow::Result<()> {
    let model = settings::model_path(&config)?;
    let addr = SocketAddr::new(config.server.host, config.server.port);
    // Bind before loading so /health answers 503 while the model loads.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another server using the port?"))?;
    let bound = listener.local_addr()?;
    let engine = EngineHandle::spawn(
        config
            .engine
            .engine_config(model.clone(), config.lora.clone()),
    );
    let state = AppState::new(
        engine.clone(),
        Arc::new(Metrics::new()),
        ApiConfig {
            api_key: config.server.api_key.clone(),
            max_body_bytes: config.server.max_body_bytes,
            defaults: RequestDefaults {
                max_tokens: config.server.default_max_tokens,
                sampling: config.sampling.clone(),
            },
        },
    );
    // Printed on stdout so scripts can find a port chosen with --port 0.
    println!("outpost listening on http://{bound}");
    let load_watch = engine.clone();
    tokio::spawn(async move {
        if let Err(e) = load_watch.ready().await {
            tracing::error!(error = %e, "the model failed to load; /health reports it");
        }
    });
    http::serve(listener, state, shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
