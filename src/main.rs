//! The `switchboard` command: serve, demo, migrate, check-config, openapi.
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard::app::{Running, open_store};
use switchboard::config::{Config, ConfigError};

/// mimalloc instead of the system allocator: a request allocates and frees
/// hundreds of small strings, where glibc's malloc spent a fifth of the
/// server's CPU (benches/README.md, the My Sessions profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Email and instant-messaging task engine of a contact center"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker and the HTTP server until SIGINT/SIGTERM.
    Serve {
        #[arg(long, default_value = "switchboard.toml")]
        config: PathBuf,
    },
    /// Try it with no server installed: SQLite in ./data/, demo agents and sessions.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, default_value = "switchboard.toml")]
        config: PathBuf,
    },
    /// Validate the configuration; exit non-zero on error.
    CheckConfig {
        #[arg(long, default_value = "switchboard.toml")]
        config: PathBuf,
    },
    /// Print the HTTP API's OpenAPI document (as served at /api/v1/openapi.json).
    Openapi,
}

fn init_logging(config: Option<&Config>) {
    use tracing_subscriber::EnvFilter;
    let level = config
        .and_then(|c| c.log.level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = config.and_then(|c| c.log.format.as_deref()) == Some("json");
    // Colours for a terminal only: a file, a pipe or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads and checks the configuration (the adapters' checks too); the file must exist when given explicitly or present.
/// A missing default `switchboard.toml` means "defaults and environment only".
fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load_checked(
        path,
        path != Path::new(DEFAULT_CONFIG),
        switchboard::adapters::check,
    )
}

const DEFAULT_CONFIG: &str = "switchboard.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        // Needs no runtime, no configuration and no database.
        return match switchboard::http::doc::document().to_pretty_json() {
            Ok(json) => {
                use std::io::Write;
                // A reader that stops early (`| head`) is no error.
                match writeln!(std::io::stdout().lock(), "{json}") {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: cannot write the OpenAPI document: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("error: cannot write the OpenAPI document: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", causes(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error with its causes, each said once: a cause whose words the one
/// before it already holds (sqlx repeats its source in its own message) is
/// left out.
fn causes(e: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !said.last().is_some_and(|last| last.contains(&text)) {
            said.push(text);
        }
    }
    said.join(": ")
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} service(s), {} agent(s), {} mailbox(es))",
                    config.display(),
                    c.services.len(),
                    c.agents.len(),
                    c.mailboxes.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Migrate { config } => {
            // Only the database is needed: not the mail folders, CA files
            // or token programs (a migration job may not have them).
            let config =
                Config::load_checked(&config, config != Path::new(DEFAULT_CONFIG), |_| Vec::new())?;
            init_logging(Some(&config));
            let store = open_store(&config).await?;
            println!(
                "database is at schema version {}",
                store.schema_version().await?
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config: path } => {
            let config = load(&path)?;
            init_logging(Some(&config));
            // SIGHUP reads the file again: services, agents, integrations
            // (listened for before the server answers).
            let hangups = switchboard::app::Hangups::listen();
            let running = Running::start(&config).await.context("cannot start")?;
            running
                .run_until_signal_reloading(hangups, || Ok(load(&path)?))
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { bind, data } => {
            init_logging(None);
            switchboard::demo::run(&data, &bind).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => Ok(ExitCode::SUCCESS),
    }
}
