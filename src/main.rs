//! `outpost`: the one binary. Parses flags, loads and validates the
//! configuration, runs the subcommand, and maps failures to exit codes:
//! 64 for a bad configuration, 1 for any other failure, 0 on a broken pipe.

mod answering;
mod child;
mod cli;
mod commands;
mod evaluator;
mod fleet;
mod judge;
mod prompt_renderer;
mod responder;
mod settings;
mod trainer;
mod tune_cli;

use std::process::ExitCode;

use clap::Parser;
use outpost_runtime::config::{DeviceConfig, LogFormat, RawDeviceConfig};
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, ConfigCommand};
use settings::BadConfig;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit_code(&e),
    }
}

fn exit_code(e: &anyhow::Error) -> ExitCode {
    let broken_pipe = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {e:#}");
    if e.downcast_ref::<BadConfig>().is_some() {
        ExitCode::from(64)
    } else if e.downcast_ref::<commands::eval::GateFailed>().is_some() {
        ExitCode::from(2)
    } else if e
        .downcast_ref::<commands::bundle::BundleRefused>()
        .is_some()
    {
        // Refused before anything changed, as a failed gate is.
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let flags = match &cli.command {
        Command::Serve(args) => commands::serve::flags(args),
        Command::Ask(args) => commands::ask::flags(args),
        Command::Bench(args) => settings::engine_flags(&args.engine),
        Command::Config(ConfigCommand::Check(args)) => commands::serve::flags(args),
        Command::Kb(command) => commands::kb::flags(command),
        Command::Eval(command) => commands::eval::flags(command),
        Command::Prompts(command) => commands::prompts::flags(command),
        Command::Bundle(command) => commands::bundle::flags(command),
        Command::Tune(command) => commands::tune::flags(command),
        Command::Config(_)
        | Command::Models(_)
        | Command::Hub(_)
        | Command::Fleet(_)
        | Command::Roi(_)
        | Command::Quant(_) => RawDeviceConfig::default(),
    };
    if let Command::Quant(command) = cli.command {
        // The progress bar has stderr: warnings only unless asked.
        init_tracing(cli.log.as_deref().unwrap_or("warn"), cli.log_json);
        return commands::quant::run(command);
    }
    if let Command::Fleet(args) = cli.command {
        return commands::fleet::run(args);
    }
    if let Command::Bundle(cli::BundleCommand::Export(args)) = cli.command {
        return commands::bundle::export(args);
    }
    if let Command::Roi(args) = cli.command {
        return commands::roi::run(args);
    }
    if let Command::Hub(args) = cli.command {
        return commands::hub::run(cli.config.as_deref(), cli.log_json, args);
    }
    if let Command::Config(ConfigCommand::PrintDefault) = cli.command {
        commands::config::print_default();
        return Ok(());
    }
    let config = settings::load(&cli, flags)?;
    // `ask` keeps the terminal for the answer: only warnings unless asked.
    let quiet = matches!(
        cli.command,
        Command::Ask(_)
            | Command::Kb(_)
            | Command::Eval(_)
            | Command::Prompts(_)
            | Command::Tune(_)
    ) && cli.log.is_none();
    init_logging(&config, quiet);
    match cli.command {
        Command::Serve(_) => runtime()?.block_on(commands::serve::run(config)),
        Command::Ask(args) => runtime()?.block_on(commands::ask::run(config, args)),
        Command::Bench(args) => runtime()?.block_on(commands::bench::run(config, args)),
        Command::Models(command) => commands::models::run(command),
        Command::Kb(command) => commands::kb::run(config, command),
        Command::Eval(command) => commands::eval::run(config, command),
        Command::Prompts(command) => commands::prompts::run(config, command),
        Command::Tune(command) => commands::tune::run(config, command),
        Command::Bundle(cli::BundleCommand::Import(args)) => {
            runtime()?.block_on(commands::bundle::import(config, *args))
        }
        Command::Config(ConfigCommand::Check(_)) => {
            commands::config::check(&config);
            Ok(())
        }
        Command::Config(ConfigCommand::PrintDefault)
        | Command::Hub(_)
        | Command::Fleet(_)
        | Command::Roi(_)
        | Command::Bundle(cli::BundleCommand::Export(_))
        | Command::Quant(_) => Ok(()),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn init_logging(config: &DeviceConfig, quiet: bool) {
    // A foreground command keeps the terminal for its output: warnings only,
    // and not llama.cpp's (it warns about context rounding on every call).
    let level = if quiet {
        "warn"
    } else {
        config.log_level.as_str()
    };
    init_tracing(level, config.log_format == LogFormat::Json);
}

/// Text or JSON logs to stderr; llama.cpp is chatty at info, its warnings
/// show at the info level and below, not when only warnings were asked for.
pub(crate) fn init_tracing(level: &str, json: bool) {
    let llama = if level.starts_with("warn") || level.starts_with("error") {
        "error"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_new(format!(
        "{level},llama-cpp-2={llama},llama_cpp_2=error,rumqttd=warn"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
