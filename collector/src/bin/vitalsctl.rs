//! `vitalsctl`: the support specialist's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vitals_collector::ctl::{self, Client, CtlError, Profile};

#[derive(Parser)]
#[command(name = "vitalsctl", version, about = "Vitals for support specialists")]
struct Cli {
    /// Profile file with connection settings [default: ./vitals-data/vitalsctl.toml,
    /// then ~/.config/vitals/vitalsctl.toml]
    #[arg(long, global = true, env = "VITALS_PROFILE")]
    profile: Option<PathBuf>,
    /// Collector address, https://HOST:PORT.
    #[arg(long, global = true, env = "VITALS_COLLECTOR")]
    collector: Option<String>,
    /// TLS name on the collector's certificate [default: the address's host].
    #[arg(long, global = true, env = "VITALS_SERVER_NAME")]
    server_name: Option<String>,
    /// Fleet CA certificate (PEM).
    #[arg(long, global = true, env = "VITALS_CA")]
    ca: Option<PathBuf>,
    /// Your specialist certificate (PEM).
    #[arg(long, global = true, env = "VITALS_CERT")]
    cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, global = true, env = "VITALS_KEY")]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Workstations known to the collector.
    #[command(subcommand)]
    Endpoints(EndpointsCmd),
    /// The help desk's ticket queue.
    #[command(subcommand)]
    Tickets(TicketsCmd),
    /// Live diagnostics from a workstation's agent.
    #[command(subcommand)]
    Diag(DiagCmd),
    /// Who ran which diagnostic where.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// This specialist's own certificate.
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Subcommand)]
enum DiagCmd {
    /// Run a diagnostic from the catalog (network, printer, disk, os,
    /// snapshot, full) and show it live.
    Run {
        endpoint: String,
        kind: String,
        /// A parameter, `KEY=VALUE` (repeat): network names=a,b targets=h:p
        /// count=N; printer name=Q; disk root=/home top=N.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Attach the result to this ticket's timeline.
        #[arg(long)]
        ticket: Option<u64>,
        /// The whole run's deadline (default 30s, at most 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
        /// If the endpoint is offline, wait this long for it.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// The audit log, newest first.
    List {
        #[arg(long, default_value = "")]
        endpoint: String,
        #[arg(long, default_value = "")]
        who: String,
        #[arg(long, default_value = "")]
        kind: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum TicketsCmd {
    /// List tickets, most urgent and newest first.
    List {
        /// Resolved and closed ones too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        status: Option<String>,
        /// p1 to p4.
        #[arg(long)]
        priority: Option<String>,
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        check: Option<String>,
        #[arg(long)]
        assignee: Option<String>,
        #[arg(long)]
        incident: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One ticket with its timeline.
    Show { id: u64 },
    /// Assign a ticket to a specialist.
    Assign {
        id: u64,
        #[arg(long)]
        to: String,
    },
    /// Add a comment to a ticket's timeline.
    Comment { id: u64, text: String },
    /// Change a ticket's status (new, assigned, in_progress, waiting_on_user,
    /// waiting_on_vendor, escalated, resolved, closed).
    Status { id: u64, status: String },
    /// Resolve a ticket with resolution notes.
    Resolve { id: u64, notes: String },
    /// Escalate a ticket one tier.
    Escalate { id: u64 },
    /// Reopen a resolved or closed ticket.
    Reopen {
        id: u64,
        #[arg(default_value = "")]
        reason: String,
    },
    /// Open a ticket by hand against an endpoint.
    Open {
        endpoint: String,
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        /// info, warning or critical.
        #[arg(long, default_value = "warning")]
        severity: String,
    },
    /// Print ticket changes as they happen, until interrupted.
    Watch,
}

#[derive(Subcommand)]
enum EndpointsCmd {
    /// List endpoints, most recently seen first.
    List {
        /// Only endpoints connected now.
        #[arg(long)]
        online: bool,
    },
    /// Show one endpoint with its latest snapshot.
    Show {
        /// Endpoint ID.
        id: String,
        /// Also list this many of its stored snapshots.
        #[arg(long, default_value_t = 0)]
        history: u32,
    },
    /// Fault events an endpoint reported, newest first.
    Faults {
        /// Endpoint ID.
        id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Revoke an endpoint (admin): its stream is cut now and every
    /// certificate it holds refused; it must enroll again.
    Revoke {
        id: String,
        /// Why (shown with the endpoint and in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Resolve a cloned-image flag (admin): bind the endpoint to this
    /// machine; the other is refused.
    Bind {
        id: String,
        #[arg(long)]
        machine: String,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Renew this specialist's own certificate: a new key made here, the
    /// profile's certificate and key files replaced.
    Renew,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Profile, CtlError> {
    let flags = Profile {
        collector: cli.collector.clone(),
        server_name: cli.server_name.clone(),
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let file = match &cli.profile {
        Some(p) => Profile::load(p)?,
        None => match ctl::default_profile_paths()
            .into_iter()
            .find(|p| p.exists())
        {
            Some(p) => Profile::load(&p)?,
            None => Profile::default(),
        },
    };
    Ok(flags.or(file))
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let profile = settings(&cli)?;
    let mut client = Client::connect(&profile).await?;
    let now = vitals_proto::now_ms();
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Endpoints(EndpointsCmd::List { online }) => {
            let list = client.list_endpoints(online).await?;
            if json {
                print_json(&list);
            } else if list.is_empty() {
                println!("No endpoints yet.");
            } else {
                print!("{}", ctl::endpoints_table(&list, now));
            }
        }
        Command::Endpoints(EndpointsCmd::Faults { id, limit }) => {
            let faults = client.faults(&id, limit).await?;
            if json {
                print_json(&faults);
            } else if faults.is_empty() {
                println!("No fault events from {id}.");
            } else {
                print!("{}", ctl::faults_table(&faults));
            }
        }
        Command::Tickets(cmd) => tickets(&mut client, cmd, json, now).await?,
        Command::Diag(DiagCmd::Run {
            endpoint,
            kind,
            params,
            ticket,
            deadline,
            wait,
        }) => {
            let mut map = std::collections::BTreeMap::new();
            for p in params {
                let (k, v) = p.split_once('=').ok_or_else(|| {
                    CtlError::Settings(format!("--param \"{p}\": write KEY=VALUE"))
                })?;
                map.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            let mut stream = client
                .run_diagnostic(ctl::DiagQuery {
                    endpoint,
                    kind,
                    params: map,
                    deadline: deadline.unwrap_or_default(),
                    wait_offline: wait.unwrap_or_default(),
                    ticket,
                })
                .await?;
            while let Some(e) = stream.message().await? {
                use vitals_proto::wire::diagnostic_event::Body;
                match e.body {
                    Some(Body::Progress(text)) if !json => {
                        eprintln!("[{:>6} ms] {text}", e.elapsed_ms);
                    }
                    Some(Body::Progress(_)) => {}
                    Some(Body::Result(r)) => {
                        let r = vitals_proto::diag::DiagnosticResult::from(r);
                        if json {
                            print_json(&r);
                        } else if r.ok {
                            print!("{}", r.text);
                            eprintln!(
                                "[{:>6} ms] done ({} ms on the agent)",
                                e.elapsed_ms, r.run_ms
                            );
                        } else {
                            return Err(CtlError::Failed(format!(
                                "diagnostic failed: {}",
                                r.error
                            )));
                        }
                    }
                    None => {}
                }
            }
        }
        Command::Audit(AuditCmd::List {
            endpoint,
            who,
            kind,
            limit,
        }) => {
            let entries = client.audit(&endpoint, &who, &kind, limit).await?;
            if json {
                print_json(&entries);
            } else if entries.is_empty() {
                println!("No audit entries.");
            } else {
                print!("{}", ctl::audit_table(&entries));
            }
        }
        Command::Endpoints(EndpointsCmd::Revoke { id, reason }) => {
            let detail = client.revoke_endpoint(&id, &reason).await?;
            if json {
                print_json(&detail);
            } else {
                println!("{id} revoked: its stream is cut and it must enroll again");
            }
        }
        Command::Endpoints(EndpointsCmd::Bind { id, machine }) => {
            let detail = client.bind_endpoint(&id, &machine).await?;
            if json {
                print_json(&detail);
            } else {
                println!("{id} is bound to machine {machine}; any other is refused");
            }
        }
        Command::Cert(CertCmd::Renew) => {
            let not_after = client.renew_own(&profile).await?;
            println!(
                "certificate renewed, valid until {}",
                vitals_proto::rfc3339_seconds(not_after)
            );
        }
        Command::Endpoints(EndpointsCmd::Show { id, history }) => {
            let detail = client.endpoint(&id).await?;
            let entries = if history > 0 {
                client.history(&id, history).await?
            } else {
                Vec::new()
            };
            if json {
                if history > 0 {
                    print_json(&serde_json::json!({ "endpoint": detail, "history": entries }));
                } else {
                    print_json(&detail);
                }
            } else {
                print!("{}", ctl::endpoint_text(&detail, now));
                if !entries.is_empty() {
                    let rows: Vec<Vec<String>> = entries
                        .iter()
                        .map(|h| {
                            vec![
                                h.seq.to_string(),
                                ctl::timestamp(h.snapshot.taken_at_ms),
                                format!("{:.0}%", h.snapshot.cpu.usage_percent),
                                format!("{:.0}%", h.snapshot.memory.used_percent()),
                                format!("{:.0}%", h.snapshot.fullest_disk_percent()),
                            ]
                        })
                        .collect();
                    print!(
                        "\n{}",
                        ctl::table(&["SEQ", "TAKEN", "CPU", "MEM", "DISK"], &rows)
                    );
                }
            }
        }
    }
    Ok(())
}

async fn tickets(
    client: &mut Client,
    cmd: TicketsCmd,
    json: bool,
    now: i64,
) -> Result<(), CtlError> {
    use ctl::TicketChange as C;
    let change = match cmd {
        TicketsCmd::List {
            all,
            status,
            priority,
            endpoint,
            check,
            assignee,
            incident,
            limit,
        } => {
            let list = client
                .tickets(ctl::TicketQuery {
                    open_only: !all,
                    endpoint: endpoint.unwrap_or_default(),
                    check: check.unwrap_or_default(),
                    incident,
                    status: status.unwrap_or_default(),
                    priority: priority.unwrap_or_default(),
                    assignee: assignee.unwrap_or_default(),
                    limit,
                })
                .await?;
            if json {
                print_json(&list);
            } else if list.is_empty() {
                println!("No tickets.");
            } else {
                print!("{}", ctl::tickets_table(&list, now));
            }
            return Ok(());
        }
        TicketsCmd::Show { id } => {
            let view = client.ticket(id).await?;
            show(&view, json, now);
            return Ok(());
        }
        TicketsCmd::Watch => {
            let mut stream = client.watch_tickets().await?;
            while let Some(e) = stream.message().await? {
                let e = vitals_proto::tickets::Entry::from(e);
                if json {
                    match serde_json::to_string(&e) {
                        Ok(line) => println!("{line}"),
                        Err(err) => eprintln!("error: {err}"),
                    }
                } else {
                    let on = match (e.ticket, e.incident) {
                        (Some(t), _) => format!("ticket {t}"),
                        (None, Some(i)) => format!("incident {i}"),
                        (None, None) => "-".into(),
                    };
                    println!(
                        "{}  {on}  {}  {}: {}",
                        ctl::timestamp(e.at_ms),
                        e.who,
                        e.kind.as_str().to_owned(),
                        e.text
                    );
                }
            }
            return Ok(());
        }
        TicketsCmd::Open {
            endpoint,
            title,
            description,
            severity,
        } => {
            let severity = severity.parse().map_err(|_: vitals_proto::UnknownName| {
                CtlError::Settings(format!(
                    "severity \"{severity}\": use info, warning or critical"
                ))
            })?;
            let view = client
                .open_ticket(&endpoint, &title, &description, severity)
                .await?;
            show(&view, json, now);
            return Ok(());
        }
        TicketsCmd::Assign { id, to } => (id, C::Assign(to)),
        TicketsCmd::Comment { id, text } => (id, C::Comment(text)),
        TicketsCmd::Status { id, status } => (id, C::Status(status)),
        TicketsCmd::Resolve { id, notes } => (id, C::Resolve(notes)),
        TicketsCmd::Escalate { id } => (id, C::Escalate),
        TicketsCmd::Reopen { id, reason } => (id, C::Reopen(reason)),
    };
    let view = client.change_ticket(change.0, change.1).await?;
    show(&view, json, now);
    Ok(())
}

fn show(view: &ctl::TicketView, json: bool, now: i64) {
    if json {
        print_json(view);
    } else {
        print!("{}", ctl::ticket_text(view, now));
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: {e}"),
    }
}
