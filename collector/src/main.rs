//! `vitals-collector`: run the collector, manage the fleet PKI, or start the
//! whole system locally with `quickstart`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vitals_collector::config::CollectorConfig;
use vitals_collector::pki::{self, Ca, PkiPaths};
use vitals_collector::{Collector, Listeners, quickstart, shutdown_signal};
use vitals_proto::identity::{Identity, IdentityError, Role};
use vitals_proto::logging::{LogFormat, init_stderr};

#[derive(Parser)]
#[command(name = "vitals-collector", version, about = "Vitals collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or `json` (one object per line); for `run`,
    /// overrides `[log] format` in collector.toml.
    #[arg(long, global = true, env = "VITALS_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector.
    Run {
        #[arg(
            long,
            env = "VITALS_COLLECTOR_CONFIG",
            default_value = "/etc/vitals/collector.toml"
        )]
        config: PathBuf,
    },
    /// Check a configuration, its certificates and its database, then exit.
    CheckConfig {
        #[arg(
            long,
            env = "VITALS_COLLECTOR_CONFIG",
            default_value = "/etc/vitals/collector.toml"
        )]
        config: PathBuf,
    },
    /// Move an installation's database from SQLite to an empty PostgreSQL
    /// database: everything, in one transaction, each table's rows counted
    /// against the source. Stop the collector first; then point its
    /// `storage.url` at the new database.
    Migrate {
        /// The SQLite database: sqlite://PATH or a path.
        #[arg(long)]
        from: String,
        /// The PostgreSQL database: postgres://USER@HOST:PORT/DATABASE.
        #[arg(long)]
        to: String,
        /// A file holding the PostgreSQL password (else
        /// VITALS_STORAGE_PASSWORD).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The CA (PEM) of the PostgreSQL server's certificate, for
        /// sslmode=require.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Write a consistent backup of the database (SQLite, taken while the
    /// collector runs), the fleet PKI and the rest of the data directory
    /// to one file (gzip-compressed tar, private). On PostgreSQL the file
    /// holds the data directory only: back the database up with pg_dump.
    Backup {
        #[arg(
            long,
            env = "VITALS_COLLECTOR_CONFIG",
            default_value = "/etc/vitals/collector.toml"
        )]
        config: PathBuf,
        /// The backup file to write (replaced whole once complete).
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup file into a new data directory, every file checked
    /// against the backup's manifest and the database's integrity first.
    /// Point `data_dir` in collector.toml at it and start the collector:
    /// each agent then sends again what it holds raised.
    Restore {
        #[arg(long)]
        from: PathBuf,
        /// Must not exist yet, or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Start a collector and an agent for this machine, on loopback, with a
    /// fresh (or re-used) PKI in the data directory.
    Quickstart {
        #[arg(long, default_value = "vitals-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: SocketAddr,
        /// The web console (plain HTTP, so only a loopback address).
        #[arg(long, default_value = "127.0.0.1:8480")]
        console_listen: SocketAddr,
        /// Do not send echo probes to this machine's default gateway.
        #[arg(long)]
        no_gateway_probe: bool,
    },
    /// Ask a running collector's gRPC health service (no client
    /// certificate needed); exit 0 when it is serving. For container and
    /// load-balancer health checks.
    Health {
        #[arg(
            long,
            env = "VITALS_COLLECTOR_CONFIG",
            default_value = "/etc/vitals/collector.toml"
        )]
        config: PathBuf,
        /// The name on the collector's certificate to check.
        #[arg(long, default_value = "localhost")]
        server_name: String,
    },
    /// Manage the fleet's certificates.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Manage the web console's local accounts (in the collector's database).
    Users {
        #[arg(
            long,
            global = true,
            env = "VITALS_COLLECTOR_CONFIG",
            default_value = "/etc/vitals/collector.toml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        action: UsersCmd,
    },
    /// Manage enrollment tokens (in the collector's database): what lets a
    /// desk join the fleet.
    Tokens {
        #[arg(
            long,
            global = true,
            env = "VITALS_COLLECTOR_CONFIG",
            default_value = "/etc/vitals/collector.toml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        action: TokensCmd,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a token and print it (the only time its secret is shown).
    Create {
        /// How many desks it may enroll; 0: any number (an image rollout).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
        /// The site the desks it enrolls are placed in.
        #[arg(long)]
        site: Option<String>,
        /// A tag for the desks it enrolls (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Only endpoint IDs matching this (`*` wildcards), such as 'disp-*'.
        #[arg(long)]
        id_pattern: Option<String>,
        /// May take over the ID of a desk already enrolled (a reinstall).
        #[arg(long)]
        reenroll: bool,
    },
    /// List the tokens: uses left, expiry, last use and by whom.
    List,
    /// Revoke a token by its ID (the part before the first dot).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add an account; prints its one-time password, to be changed at the
    /// first login.
    Add {
        name: String,
        /// viewer, specialist or admin.
        #[arg(long)]
        role: String,
        /// A site it is limited to (repeat for more); none: every site.
        #[arg(long = "site")]
        sites: Vec<String>,
    },
    /// List the accounts.
    List,
    /// Disable an account (`--enable` to undo).
    Disable {
        name: String,
        #[arg(long)]
        enable: bool,
    },
    /// Give an account a new one-time password.
    ResetPassword { name: String },
    /// Change an account's role, and its sites when given.
    SetRole {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Remove every site limit.
        #[arg(long, conflicts_with = "sites")]
        all_sites: bool,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create the fleet CA and the collector's server certificate.
    Init {
        #[arg(long, env = "VITALS_DATA_DIR", default_value = "vitals-data")]
        data_dir: PathBuf,
        /// Host names and IP addresses agents use to reach the collector.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Issue an agent certificate for an endpoint ID.
    IssueAgent {
        id: String,
        #[arg(long, env = "VITALS_DATA_DIR", default_value = "vitals-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = pki::AGENT_DAYS)]
        days: i64,
    },
    /// Replace the collector's server certificate (same names unless
    /// --host is given). A running collector picks it up within seconds;
    /// agents keep their streams.
    RotateServer {
        #[arg(long, env = "VITALS_DATA_DIR", default_value = "vitals-data")]
        data_dir: PathBuf,
        /// Host names and IP addresses; the current certificate's when absent.
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = pki::SERVER_DAYS)]
        days: i64,
    },
    /// Roll the fleet CA over in three steps, each a command: `start` makes
    /// the next CA and trusts it beside the current one (agents receive
    /// both); `finish` makes it the signer and re-issues the server
    /// certificate; `retire`, once every desk renewed (a certificate
    /// lifetime later), stops trusting the old one.
    RolloverCa {
        #[arg(value_parser = ["start", "finish", "retire"])]
        step: String,
        #[arg(long, env = "VITALS_DATA_DIR", default_value = "vitals-data")]
        data_dir: PathBuf,
    },
    /// Revoke a specialist: every certificate of theirs issued until now is
    /// refused (a running collector notices within seconds). Endpoints are
    /// revoked with `vitalsctl endpoints revoke`.
    RevokeSpecialist {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(
            long,
            env = "VITALS_COLLECTOR_CONFIG",
            default_value = "/etc/vitals/collector.toml"
        )]
        config: PathBuf,
    },
    /// Issue a specialist certificate with a role.
    IssueSpecialist {
        name: String,
        /// viewer, specialist or admin.
        #[arg(long)]
        role: String,
        #[arg(long, env = "VITALS_DATA_DIR", default_value = "vitals-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = pki::SPECIALIST_DAYS)]
        days: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    // `run` logs as its configuration says, once that is read.
    if !matches!(cli.command, Command::Run { .. }) {
        init_stderr(log_format.unwrap_or_default());
    }
    match cli.command {
        Command::Pki(PkiCmd::RevokeSpecialist {
            name,
            reason,
            config,
        }) => with_runtime(async move {
            let c = load(&config)?;
            revoke_specialist(&c, &name, &reason).await.map_err(fail(2))
        }),
        Command::Pki(cmd) => pki_command(cmd),
        Command::Users { config, action } => with_runtime(async move {
            let c = load(&config)?;
            users_command(&c, action).await.map_err(fail(2))
        }),
        Command::Health {
            config,
            server_name,
        } => with_runtime(async move {
            let c = load(&config)?;
            health(&c, &server_name).await.map_err(fail(1))
        }),
        Command::Tokens { config, action } => with_runtime(async move {
            let c = load(&config)?;
            tokens_command(&c, action).await.map_err(fail(2))
        }),
        Command::Run { config } => with_runtime(async move {
            let config = load(&config)?;
            init_stderr(log_format.unwrap_or(config.log.format));
            let collector = Collector::open(config.clone()).await.map_err(fail(2))?;
            let listeners = Listeners::bind(&config).await.map_err(fail(1))?;
            collector
                .serve(listeners, shutdown_signal())
                .await
                .map_err(fail(1))
        }),
        Command::Backup { config, to } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match vitals_collector::backup::backup(&c, &to) {
                Ok(r) => {
                    println!(
                        "{}: {} files, {} bytes ({} storage{})",
                        to.display(),
                        r.manifest.files.len(),
                        r.bytes,
                        r.manifest.storage,
                        if r.manifest.storage == "postgres" {
                            "; the database is not in it: back it up with pg_dump"
                        } else {
                            ", database included"
                        }
                    );
                    for p in r.outside {
                        println!("not included (outside the data directory): {}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1)(e),
            }
        }
        Command::Restore { from, data_dir } => {
            match vitals_collector::backup::restore(&from, &data_dir) {
                Ok(m) => {
                    println!(
                        "{} restored into {} ({} files, taken {}); set data_dir = {:?} in \
                         collector.toml and start the collector",
                        from.display(),
                        data_dir.display(),
                        m.files.len(),
                        vitals_proto::rfc3339_seconds(m.created_ms),
                        data_dir.display().to_string()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1)(e),
            }
        }
        Command::CheckConfig { config } => with_runtime(async move {
            let c = load(&config)?;
            Collector::check_files(&c).map_err(fail(2))?;
            let url = c.storage_url();
            let opts = c.store_options().map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(2)
            })?;
            let status = vitals_collector::store::migration_status(&url, &opts)
                .await
                .map_err(fail(2))?;
            println!(
                "storage {}: {status}",
                vitals_collector::store::postgres::redact(&url)
            );
            if status.applied > status.known {
                return Err(ExitCode::from(2));
            }
            println!("{}: ok", config.display());
            Ok(())
        }),
        Command::Migrate {
            from,
            to,
            password_file,
            ca_file,
        } => with_runtime(async move {
            use vitals_collector::store::{self, Backend};
            let (Ok(Backend::Sqlite(path)), Ok(Backend::Postgres(url))) =
                (Backend::of(&from), Backend::of(&to))
            else {
                eprintln!("error: migrate moves --from sqlite://PATH --to postgres://…");
                return Err(ExitCode::from(2));
            };
            let mut opts = store::StoreOptions::new(1440, std::time::Duration::from_secs(60));
            opts.ca_file = ca_file;
            opts.password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .map_err(|e| {
                            eprintln!("error: --password-file {}: {e}", f.display());
                            ExitCode::from(2)
                        })?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => std::env::var("VITALS_STORAGE_PASSWORD").ok(),
            };
            let moved = store::migrate::sqlite_to_postgres(std::path::Path::new(path), url, &opts)
                .await
                .map_err(fail(1))?;
            println!(
                "moved {} into {} (each table's rows counted against the source):\n{moved}",
                path,
                store::postgres::redact(url)
            );
            Ok(())
        }),
        Command::Quickstart {
            data_dir,
            listen,
            metrics_listen,
            console_listen,
            no_gateway_probe,
        } => with_runtime(async move {
            quickstart::run(
                quickstart::Options {
                    data_dir,
                    listen,
                    metrics_listen,
                    console_listen,
                    probe_gateway: !no_gateway_probe,
                },
                shutdown_signal(),
            )
            .await
            .map_err(|e| {
                eprintln!("error: {}", vitals_proto::error_chain(e.as_ref()));
                ExitCode::FAILURE
            })
        }),
    }
}

async fn users_command(config: &CollectorConfig, action: UsersCmd) -> Result<(), String> {
    use vitals_collector::console::accounts::Accounts;
    let role = |r: &str| {
        r.parse::<vitals_proto::identity::Role>()
            .map_err(|_| format!("--role {r}: one of viewer, specialist, admin"))
    };
    let store = vitals_collector::store::open_with(&config.storage_url(), &config.store_options()?)
        .await
        .map_err(|e| e.to_string())?;
    let accounts = Accounts::new(store);
    let scope = |sites: &[String]| {
        if sites.is_empty() {
            "all sites".to_owned()
        } else {
            sites.join(", ")
        }
    };
    match action {
        UsersCmd::Add {
            name,
            role: r,
            sites,
        } => {
            let r = role(&r)?;
            let password = accounts
                .add(&name, r, sites.clone())
                .await
                .map_err(|e| e.to_string())?;
            println!("added {name} ({r}, {})", scope(&sites));
            println!("one-time password: {password}");
            println!("it must be changed at the first login");
        }
        UsersCmd::List => {
            let list = accounts.list().await.map_err(|e| e.to_string())?;
            if list.is_empty() {
                println!("No accounts.");
                return Ok(());
            }
            println!(
                "{:<24} {:<11} {:<9} {:<10} SITES",
                "NAME", "ROLE", "STATE", "PASSWORD"
            );
            for a in list {
                println!(
                    "{:<24} {:<11} {:<9} {:<10} {}",
                    a.name,
                    a.role.as_str(),
                    if a.disabled { "disabled" } else { "active" },
                    if a.must_change_password {
                        "one-time"
                    } else {
                        "set"
                    },
                    scope(&a.sites)
                );
            }
        }
        UsersCmd::Disable { name, enable } => {
            accounts
                .set_disabled(&name, !enable)
                .await
                .map_err(|e| e.to_string())?;
            println!("{name} {}", if enable { "enabled" } else { "disabled" });
        }
        UsersCmd::ResetPassword { name } => {
            let password = accounts
                .reset_password(&name)
                .await
                .map_err(|e| e.to_string())?;
            println!("one-time password for {name}: {password}");
            println!("it must be changed at the next login");
        }
        UsersCmd::SetRole {
            name,
            role: r,
            sites,
            all_sites,
        } => {
            let r = role(&r)?;
            let sites = if all_sites {
                Some(Vec::new())
            } else if sites.is_empty() {
                None
            } else {
                Some(sites)
            };
            let a = accounts
                .set_role(&name, r, sites)
                .await
                .map_err(|e| e.to_string())?;
            println!("{name}: {} ({})", a.role, scope(&a.sites));
        }
    }
    Ok(())
}

fn load(path: &std::path::Path) -> Result<CollectorConfig, ExitCode> {
    CollectorConfig::load(path).map_err(fail(2))
}

fn fail<E: std::fmt::Display>(code: u8) -> impl Fn(E) -> ExitCode {
    move |e| {
        eprintln!("error: {e}");
        ExitCode::from(code)
    }
}

fn with_runtime(f: impl std::future::Future<Output = Result<(), ExitCode>>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f).err().unwrap_or(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pki_command(cmd: PkiCmd) -> ExitCode {
    let result = (|| -> Result<String, Box<dyn std::error::Error>> {
        match cmd {
            PkiCmd::Init { data_dir, hosts } => {
                pki::init(&data_dir, &hosts)?;
                let p = PkiPaths::new(&data_dir);
                Ok(format!(
                    "fleet CA: {}\ncollector certificate: {} (for {})",
                    p.ca_cert().display(),
                    p.server_cert().display(),
                    hosts.join(", ")
                ))
            }
            PkiCmd::RotateServer {
                data_dir,
                hosts,
                days,
            } => {
                let paths = PkiPaths::new(&data_dir);
                let hosts = pki::rotate_server(&paths, &hosts, days)?;
                Ok(format!(
                    "collector certificate {} replaced (for {}, valid {days} days); a running \
                     collector uses it from its next handshake",
                    paths.server_cert().display(),
                    hosts.join(", ")
                ))
            }
            PkiCmd::RolloverCa { step, data_dir } => {
                let paths = PkiPaths::new(&data_dir);
                Ok(match step.as_str() {
                    "start" => {
                        pki::rollover_start(&paths)?;
                        format!(
                            "next CA {} made and trusted; agents receive it in their welcome and \
                             renewals. Then: pki rollover-ca finish",
                            paths.ca_next_cert().display()
                        )
                    }
                    "finish" => {
                        pki::rollover_finish(&paths)?;
                        "the new CA signs from now on and the server certificate was re-issued by \
                         it; the old CA stays trusted. After one agent certificate lifetime: pki \
                         rollover-ca retire"
                            .to_owned()
                    }
                    _ => {
                        pki::rollover_retire(&paths)?;
                        "the old CA is no longer trusted".to_owned()
                    }
                })
            }
            PkiCmd::RevokeSpecialist { .. } => Err("handled above".into()),
            PkiCmd::IssueAgent { id, data_dir, days } => {
                issue(&data_dir, Identity::Endpoint(id.parse()?), days)
            }
            PkiCmd::IssueSpecialist {
                name,
                role,
                data_dir,
                days,
            } => issue(
                &data_dir,
                Identity::specialist(
                    &name,
                    role.parse::<Role>()
                        .map_err(|e| IdentityError::BadRole(e.name))?,
                )?,
                days,
            ),
        }
    })();
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn health(config: &CollectorConfig, server_name: &str) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let ca = std::fs::read(config.ca_path())
        .map_err(|e| format!("{}: {e}", config.ca_path().display()))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name(server_name)
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{addr}: {}", vitals_proto::error_chain(&e)))?;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map_err(|e| format!("{addr}: {}", e.message()))?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        println!("{addr}: serving");
        Ok(())
    } else {
        Err(format!("{addr}: {status:?}"))
    }
}

async fn revoke_specialist(
    config: &CollectorConfig,
    name: &str,
    reason: &str,
) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("--reason must say why".into());
    }
    let store = vitals_collector::store::open_with(&config.storage_url(), &config.store_options()?)
        .await
        .map_err(|e| e.to_string())?;
    let now = vitals_proto::now_ms();
    let recorded = store
        .revoke_specialist(name, reason.trim(), now)
        .await
        .map_err(|e| e.to_string())?;
    store
        .audit_append(vitals_proto::diag::AuditEntry {
            at_ms: now,
            who: std::env::var("USER").unwrap_or_else(|_| "vitals-collector".into()),
            kind: "specialist.revoke".into(),
            params: [("name".to_owned(), name.to_owned())].into(),
            outcome: "ok".into(),
            detail: reason.trim().to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "specialist {name} revoked ({recorded} renewed certificate(s) listed in the CRL); every \
         certificate issued until now is refused"
    );
    Ok(())
}

async fn tokens_command(config: &CollectorConfig, action: TokensCmd) -> Result<(), String> {
    use vitals_collector::store::EnrollToken;
    let store = vitals_collector::store::open_with(&config.storage_url(), &config.store_options()?)
        .await
        .map_err(|e| e.to_string())?;
    let now = vitals_proto::now_ms();
    let when = |ms: i64| {
        if ms == 0 {
            "-".to_owned()
        } else {
            vitals_proto::rfc3339_seconds(ms)
        }
    };
    match action {
        TokensCmd::Create {
            uses,
            expires,
            site,
            tags,
            id_pattern,
            reenroll,
        } => {
            let ca =
                vitals_collector::tls::read_certs(&config.ca_path()).map_err(|e| e.to_string())?;
            let fingerprint = pki::fingerprint(ca[0].as_ref());
            let stored = EnrollToken {
                max_uses: uses,
                expires_ms: now + expires.as_millis() as i64,
                site: site.unwrap_or_default(),
                tags,
                id_pattern: id_pattern.unwrap_or_default(),
                reenroll,
                created_ms: now,
                created_by: std::env::var("USER").unwrap_or_else(|_| "vitals-collector".into()),
                ..Default::default()
            };
            let token = vitals_collector::enrollment::Enrollment::create_token(
                store.as_ref(),
                fingerprint,
                stored.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
            println!("{token}");
            eprintln!(
                "token {}: {}, valid until {}{}{}{}",
                token.id,
                if uses == 0 {
                    "any number of desks".to_owned()
                } else {
                    format!("{uses} desk(s)")
                },
                when(stored.expires_ms),
                if stored.site.is_empty() {
                    String::new()
                } else {
                    format!(", site {}", stored.site)
                },
                if stored.tags.is_empty() {
                    String::new()
                } else {
                    format!(", tags {}", stored.tags.join(", "))
                },
                if stored.id_pattern.is_empty() {
                    String::new()
                } else {
                    format!(", IDs {}", stored.id_pattern)
                },
            );
            eprintln!(
                "on a desk: vitals-agent enroll --collector https://HOST:PORT --token {token}"
            );
            eprintln!("the fleet CA: sha256:{}", pki::hex(&fingerprint));
        }
        TokensCmd::List => {
            let list = store.tokens().await.map_err(|e| e.to_string())?;
            if list.is_empty() {
                println!("No tokens.");
                return Ok(());
            }
            println!(
                "{:<9} {:<8} {:<9} {:<20} {:<12} {:<16} {:<20} LAST USED BY",
                "ID", "STATE", "USES", "EXPIRES", "SITE", "IDS", "LAST USED"
            );
            for t in list {
                let state = if t.revoked_ms > 0 {
                    "revoked"
                } else if t.expires_ms <= now {
                    "expired"
                } else if t.max_uses > 0 && t.used >= t.max_uses {
                    "used up"
                } else {
                    "active"
                };
                let uses = if t.max_uses == 0 {
                    format!("{}/any", t.used)
                } else {
                    format!("{}/{}", t.used, t.max_uses)
                };
                println!(
                    "{:<9} {:<8} {:<9} {:<20} {:<12} {:<16} {:<20} {}",
                    t.id,
                    state,
                    uses,
                    when(t.expires_ms),
                    if t.site.is_empty() { "-" } else { &t.site },
                    if t.id_pattern.is_empty() {
                        "any"
                    } else {
                        &t.id_pattern
                    },
                    when(t.last_used_ms),
                    if t.last_used_by.is_empty() {
                        "-"
                    } else {
                        &t.last_used_by
                    },
                );
            }
        }
        TokensCmd::Revoke { id } => {
            if !store
                .revoke_token(&id, now)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no token {id}"));
            }
            println!("token {id} revoked: it enrolls no more desks");
        }
    }
    Ok(())
}

fn issue(
    data_dir: &std::path::Path,
    identity: Identity,
    days: i64,
) -> Result<String, Box<dyn std::error::Error>> {
    let paths = PkiPaths::new(data_dir);
    let ca = Ca::load(&paths)?;
    let (cert, key) = paths.client(&identity);
    ca.issue_client(&identity, days)?.write(&cert, &key)?;
    Ok(format!(
        "{identity}: certificate {} and key {} (valid {days} days)",
        cert.display(),
        key.display()
    ))
}
