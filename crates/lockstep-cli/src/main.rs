//! `lockstep`: the command line for workflow authors and operators.

mod dev;
mod offline;
mod online;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Lockstep: workflows as declared state machines, with time and trust built in.
///
/// Offline (no cluster): write a workflow as YAML, check it with `validate`, draw it with
/// `graph`, unit-test it with `test`. Online: `dev` starts a local 3-node cluster; `apply`,
/// `create`, `transition`, `event`, `get`, `list`, `history`, `audit` and `cluster` talk to
/// one (any node; writes are routed to the leader).
///
/// Exit codes: 0 success; 1 errors in files, a failed test, or a refused request; 2 the
/// command line is wrong; 3 the cluster could not be reached.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, propagate_version = true)]
pub struct Cli {
    /// Output format for results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    connection: online::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable text for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check workflow definitions: syntax, states, transitions, CEL, SLAs, calendars.
    ///
    /// Takes files and folders (folders are searched for *.yaml and *.yml files that start
    /// with a `workflow:` key). Prints every problem with its file, line, column, code and a
    /// hint. Exits 1 if any file has an error; warnings alone exit 0.
    ///
    /// Example: lockstep validate examples/workflows
    Validate {
        /// Definition files or folders.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Draw a workflow as a state diagram (Mermaid or Graphviz DOT).
    ///
    /// Example: lockstep graph examples/workflows/purchase-order.yaml --format dot | dot -Tsvg > po.svg
    Graph {
        /// The definition file.
        file: std::path::PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Run scenario tests against the pure engine, offline.
    ///
    /// A scenario file names a workflow, declares actors and lists scenarios of steps:
    /// create, transition, event, advance (time travel that fires due timers), task steps,
    /// each with expectations (state, refusal code, SLA status, armed timers, tasks, data).
    /// Takes files and folders (*.yaml files with a `scenarios:` key).
    ///
    /// Example: lockstep test examples/scenarios
    Test {
        /// Scenario files or folders.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Print the JSON Schema of the definition format (for editors).
    Schema,
    /// Start a local cluster on loopback with the example workflows applied (Ctrl-C stops it).
    ///
    /// Example: lockstep dev --fresh
    Dev(dev::DevArgs),
    /// Apply workflow definitions to the cluster, recording where they came from.
    ///
    /// Example: lockstep apply examples/workflows/purchase-order.yaml --commit $(git rev-parse HEAD)
    Apply {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Repository the files come from (recorded with the definition).
        #[arg(long, default_value = "local")]
        repository: String,
        /// Commit the files come from (recorded with the definition).
        #[arg(long, default_value = "working-tree")]
        commit: String,
    },
    /// Create an instance of a workflow.
    ///
    /// Example: lockstep create purchase-order --key PO-1 --data '{"amount": 500, "requester": "alice"}' --as alice
    Create {
        workflow: String,
        /// A business key, unique per workflow; address the instance later as workflow/key.
        #[arg(long)]
        key: Option<String>,
        /// The instance data as a JSON object.
        #[arg(long)]
        data: Option<String>,
    },
    /// Take a transition. INSTANCE is an id (i-42) or workflow/key.
    ///
    /// Example: lockstep transition purchase-order/PO-1 approve --as bob --roles approver
    Transition {
        instance: String,
        transition: String,
        /// The payload as JSON; a `data` object in it is merged into the instance data.
        #[arg(long)]
        payload: Option<String>,
        /// Refuse unless the instance is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Send an event to an instance (it takes the transition declared with `on:`).
    ///
    /// Example: lockstep event purchase-order/PO-1 shipment.delivered --as carrier --kind service
    Event {
        instance: String,
        event: String,
        #[arg(long)]
        payload: Option<String>,
    },
    /// Show an instance: state, data, SLAs, armed timers.
    Get {
        instance: String,
        /// Read this node's replica without confirming with the leader (marked stale).
        #[arg(long)]
        stale: bool,
    },
    /// List the instances of a workflow.
    List {
        workflow: String,
        #[arg(long)]
        state: Option<String>,
        /// running, paused, stopped, warned or breached.
        #[arg(long)]
        sla: Option<String>,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// The audit records of an instance, oldest first.
    History { instance: String },
    /// The audit trail: verify its hash chains, or tail the change feed.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the global and per-instance hash chains on every endpoint; exit 1 if any is
    /// broken.
    Verify,
    /// Print audit records as JSON lines from a global sequence; --follow keeps streaming.
    Tail {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Each endpoint's role, term, log and applied index (and state digest with --digest).
    Status {
        #[arg(long)]
        digest: bool,
    },
    /// Add a node as a learner: lockstep cluster add 4 127.0.0.1:7104
    Add { id: u64, addr: String },
    /// Make learners voters: lockstep cluster promote 4
    Promote {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Remove a node: lockstep cluster remove 4
    Remove { id: u64 },
}

#[derive(Debug)]
pub enum MembershipChange {
    Add { id: u64, addr: String },
    Promote { ids: Vec<u64> },
    Remove { id: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if is_online(&cli.command) {
        return online_main(cli);
    }
    let result = match cli.command {
        Command::Validate {
            paths,
            deny_warnings,
        } => offline::validate(&paths, deny_warnings, cli.output),
        Command::Graph { file, format } => {
            let format = match format {
                GraphFormat::Mermaid => lockstep_core::graph::Format::Mermaid,
                GraphFormat::Dot => lockstep_core::graph::Format::Dot,
            };
            offline::graph(&file, format)
        }
        Command::Test { paths } => offline::test(&paths, cli.output),
        Command::Schema => {
            print!("{}", lockstep_core::schema::definition_schema());
            Ok(true)
        }
        _ => unreachable!("online commands are handled by online_main"),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_online(command: &Command) -> bool {
    !matches!(
        command,
        Command::Validate { .. } | Command::Graph { .. } | Command::Test { .. } | Command::Schema
    )
}

fn online_main(cli: Cli) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let conn = cli.connection;
    let output = cli.output;
    let result: anyhow::Result<bool> = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await.map(|_| true),
            Command::Apply {
                files,
                repository,
                commit,
            } => online::apply(&conn, output, &files, &repository, &commit)
                .await
                .map(|_| true),
            Command::Create {
                workflow,
                key,
                data,
            } => online::create(&conn, output, &workflow, key.as_deref(), data.as_deref())
                .await
                .map(|_| true),
            Command::Transition {
                instance,
                transition,
                payload,
                expected_version,
            } => online::transition(
                &conn,
                output,
                &instance,
                &transition,
                payload.as_deref(),
                expected_version,
            )
            .await
            .map(|_| true),
            Command::Event {
                instance,
                event,
                payload,
            } => online::event(&conn, output, &instance, &event, payload.as_deref())
                .await
                .map(|_| true),
            Command::Get { instance, stale } => online::get(&conn, output, &instance, stale)
                .await
                .map(|_| true),
            Command::List {
                workflow,
                state,
                sla,
                page_size,
                page_token,
            } => online::list(&conn, output, &workflow, state, sla, page_size, page_token)
                .await
                .map(|_| true),
            Command::History { instance } => online::history(&conn, output, &instance)
                .await
                .map(|_| true),
            Command::Audit(AuditCommand::Verify) => online::audit_verify(&conn, output).await,
            Command::Audit(AuditCommand::Tail { from, follow }) => {
                online::audit_tail(&conn, from, follow).await.map(|_| true)
            }
            Command::Cluster(ClusterCommand::Status { digest }) => {
                online::cluster_status(&conn, output, digest)
                    .await
                    .map(|_| true)
            }
            Command::Cluster(ClusterCommand::Add { id, addr }) => {
                online::membership(&conn, output, MembershipChange::Add { id, addr })
                    .await
                    .map(|_| true)
            }
            Command::Cluster(ClusterCommand::Promote { ids }) => {
                online::membership(&conn, output, MembershipChange::Promote { ids })
                    .await
                    .map(|_| true)
            }
            Command::Cluster(ClusterCommand::Remove { id }) => {
                online::membership(&conn, output, MembershipChange::Remove { id })
                    .await
                    .map(|_| true)
            }
            Command::Validate { .. }
            | Command::Graph { .. }
            | Command::Test { .. }
            | Command::Schema => unreachable!("offline commands"),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(online::exit_code(&e))
        }
    }
}
