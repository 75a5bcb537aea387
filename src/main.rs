//! The `switchyard` command: `serve` runs the proxy, `check` validates a config.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible LLM routing proxy"
)]
struct Cli {
    /// Log format (default: text on a terminal, json otherwise).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "profiles.yaml")]
        config: PathBuf,
        /// Listen address (overrides server.listen).
        #[arg(long, env = "SWITCHYARD_LISTEN")]
        listen: Option<SocketAddr>,
        /// Data directory for the sled store (overrides server.data_dir).
        #[arg(long, env = "SWITCHYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// HTTP worker threads (default: one per core).
        #[arg(long, env = "SWITCHYARD_WORKERS")]
        workers: Option<usize>,
        /// How long in-flight requests and streams may take to finish after SIGTERM.
        #[arg(long, env = "SWITCHYARD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
        shutdown_timeout: std::time::Duration,
        /// Do not reload when the config file changes (SIGHUP and POST /admin/reload still work).
        #[arg(long, env = "SWITCHYARD_NO_WATCH")]
        no_watch: bool,
    },
    /// Validate a configuration file without starting anything.
    Check {
        /// The configuration file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "profiles.yaml")]
        config: PathBuf,
    },
}

fn init_tracing(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load_file(&config) {
            Ok(c) => {
                println!(
                    "OK: {}: {} profiles, {} models",
                    config.display(),
                    c.profiles.len(),
                    c.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            data_dir,
            workers,
            shutdown_timeout,
            no_watch,
        } => {
            init_tracing(cli.log_format);
            let cfg = match config::load_file(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!("{e}");
                        eprintln!("{e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let opts = switchyard::ServeOptions {
                listen: listen.unwrap_or(cfg.server.listen),
                data_dir: data_dir.unwrap_or_else(|| cfg.server.data_dir.clone()),
                workers,
                shutdown_timeout,
                watch_config: !no_watch,
            };
            let result = actix_web::rt::System::new().block_on(switchyard::serve(cfg, opts));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "switchyard stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
