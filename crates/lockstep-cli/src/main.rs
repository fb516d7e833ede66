//! `lockstep`: the command line for workflow authors and operators.

mod certs;
mod dev;
mod diff;
mod git;
mod offline;
mod online;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Lockstep: workflows as declared state machines, with time and trust built in.
///
/// Offline (no cluster): write a workflow as YAML, check it with `validate`, draw it with
/// `graph`, unit-test it with `test`. Online: `dev` starts a local 3-node cluster; `apply`,
/// `create`, `transition`, `event`, `get`, `list`, `history`, `audit` and `cluster` talk to
/// one (any node; writes are routed to the leader); `migrate` moves instances to a new
/// definition version.
#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    propagate_version = true,
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Output format for results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    connection: online::Connection,
    #[command(subcommand)]
    command: Command,
}

/// The exit codes of every command; scripts may rely on them (also in `lockstep --help`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The answer is no: the engine refused the request (the refusal code is printed), the
    /// node refused the caller, a definition has errors, a scenario test failed, or an audit
    /// chain is broken.
    pub const REFUSED: u8 = 1;
    /// The command line or a local input is wrong (clap errors, bad JSON, unreadable files),
    /// or the node rejected the request as malformed.
    pub const USAGE: u8 = 2;
    /// No node answered in time (for `cluster status` and `audit verify`: some endpoint did
    /// not answer). A write may or may not have been applied: retry it with `--request-id`.
    pub const UNAVAILABLE: u8 = 3;
    /// The named instance, workflow, definition or node does not exist.
    pub const NOT_FOUND: u8 = 4;
    /// `lockstep diff --exit-code`: the definitions differ; `lockstep replay --exit-code`:
    /// the new version treats some instance differently.
    pub const CHANGED: u8 = 5;

    /// A short name of a code, as in `--output json` errors.
    pub fn kind(code: u8) -> &'static str {
        match code {
            OK => "ok",
            REFUSED => "refused",
            USAGE => "usage",
            UNAVAILABLE => "unavailable",
            NOT_FOUND => "not_found",
            CHANGED => "changed",
            _ => "error",
        }
    }
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  refused: the engine refused the request (its code is printed, e.g. FORBIDDEN), the
     node refused the caller, a definition has errors, a scenario test failed, or an
     audit chain is broken
  2  usage: the command line or a local input is wrong (unknown flag, bad JSON in --data,
     unreadable file), or the node rejected the request as malformed
  3  unavailable: no node answered within --timeout (cluster status, audit verify: some
     endpoint did not answer); a write may or may not have been applied, so retry it
     with the same --request-id
  4  not found: the named instance, workflow, definition or node does not exist
  5  changed: `lockstep diff --exit-code` found a difference between the definitions, or
     `lockstep replay --exit-code` found an instance the new version treats differently
     (or one it could not check)

With --output json a failure is also one JSON object on stderr:
  {\"error\": {\"exit_code\": 1, \"kind\": \"refused\", \"code\": \"FORBIDDEN\", \"message\": \"...\"}}";

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
    /// What a change to definitions means, for review: states, transitions, SLAs and
    /// calendars added, removed or changed; who gains or loses which transition (per role and
    /// actor kind named in `allow`; any other change to a predicate is listed for review); and
    /// what changed in time (budgets, calendars, warnings, gates, expiries). OLD and NEW are
    /// definition files or folders, applied versions (WORKFLOW@VERSION) or git revisions;
    /// workflows are matched by name.
    ///
    /// Examples:
    ///   lockstep diff old/purchase-order.yaml examples/workflows/purchase-order.yaml --markdown
    ///   lockstep diff origin/main HEAD examples/workflows --exit-code
    ///   lockstep diff purchase-order@latest examples/workflows/purchase-order.yaml
    Diff {
        /// The definitions before: a file or a folder, an applied version
        /// (WORKFLOW@VERSION: a version prefix, or `latest`; read from the cluster), or a git
        /// revision (e.g. origin/main; the definition files under PATHS at that commit).
        old: String,
        /// The definitions after, as OLD.
        new: String,
        /// With git revisions: the folders or files to compare (default: the current folder).
        paths: Vec<std::path::PathBuf>,
        /// Print Markdown, to paste as a pull-request comment.
        #[arg(long)]
        markdown: bool,
        /// Exit 5 when the definitions differ (for CI that requires a review), 0 when not.
        #[arg(long)]
        exit_code: bool,
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
    /// Make a cluster CA and node and client certificates (PEM files), offline.
    ///
    /// A secure cluster needs one CA (`ca.pem`, given to every node and client as --tls-ca),
    /// one certificate per node with CN `node-<id>` and the names the node is dialled by
    /// (--node), and optionally client certificates whose CN is the actor id and whose URI
    /// subject alternative names `lockstep:kind:<kind>` and `lockstep:role:<role>` give its
    /// kind and roles (--client). If --out already holds ca.pem and ca-key.pem, that CA
    /// signs; keep ca-key.pem secret and offline. Files: ca.pem, ca-key.pem,
    /// node-<id>.pem, node-<id>-key.pem, client-<actor>.pem, client-<actor>-key.pem.
    ///
    /// Example: lockstep certs --out certs --node 1=n1.example,10.0.0.1 --node 2=n2.example
    ///   --node 3=n3.example --client alice::requester --client bob::approver --client erp:worker
    Certs(certs::CertsArgs),
    /// Start a local cluster on loopback with the example workflows applied (Ctrl-C stops it).
    ///
    /// Example: lockstep dev --fresh
    Dev(dev::DevArgs),
    /// Apply workflow definitions to the cluster, recording where they came from.
    ///
    /// FILES are definition files or folders of them (as `validate` takes them). Each file's
    /// provenance is read from its git work tree: the repository (its `origin` URL, else the
    /// work tree's root), the commit (HEAD) and the path in the repository. A file that
    /// differs from HEAD (or is not committed) is refused unless --allow-dirty, which records
    /// the commit as `<id>+dirty`; a file outside any git work tree is recorded as
    /// `local@not-in-git:<path>`.
    ///
    /// Example: lockstep apply examples/workflows
    Apply {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Apply files with uncommitted changes, recording the commit as `<id>+dirty`.
        #[arg(long)]
        allow_dirty: bool,
        /// Record this repository instead of the one git names (e.g. in CI without a clone).
        #[arg(long)]
        repository: Option<String>,
        /// Record this commit instead of the work tree's HEAD.
        #[arg(long)]
        commit: Option<String>,
    },
    /// The workflows that have a definition, with their latest version; with WORKFLOW, every
    /// version of it, oldest first, with who applied it and from which repository, commit and
    /// path.
    ///
    /// Example: lockstep definitions purchase-order
    Definitions { workflow: Option<String> },
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
    /// Erase data: replace the named data fields of an instance by digests of their values
    /// (`redacted:sha256:<hex>`), in its data and in the command journal the cluster keeps
    /// for `lockstep replay`. Audited as `redacted` (the audit chain, which holds digests,
    /// still verifies); needs the cluster policy's `redact_data` permission (role admin by
    /// default). The data schema is not checked against the digests: a later transition that
    /// validates a redacted field may be refused, so redact when the work is done.
    ///
    /// Example: lockstep redact customer-onboarding/C-7 --fields email,address.street
    Redact {
        instance: String,
        /// The fields to erase: dotted paths into the data, comma separated (at most 64).
        #[arg(long, value_delimiter = ',', required = true)]
        fields: Vec<String>,
    },
    /// Resolve an instance's open incident (needs the `operator` role), optionally making its
    /// task ready for a fresh attempt.
    ///
    /// Example: lockstep resolve purchase-order/PO-1 inc-1 --retry --as oscar --roles operator
    Resolve {
        instance: String,
        /// The incident id, as `lockstep get` shows it.
        incident: String,
        /// Retry the incident's task.
        #[arg(long)]
        retry: bool,
    },
    /// Move instances to another applied version of their workflow (needs the cluster
    /// policy's migrate_instances permission).
    ///
    /// A running instance stays on the definition version it started with until it is
    /// migrated. Name both versions (in full, or a prefix as `lockstep apply` prints it), map
    /// the states the new version renames or drops with --map OLD=NEW (every other state keeps
    /// its name and must exist in the new version; terminal states map to terminal states),
    /// and declare how state expiry and SLA timers are re-armed with --timers:
    /// `keep-deadline` keeps the absolute deadlines; `keep-remaining` keeps the remaining
    /// budgets, counted with the new version's calendars; `restart` re-arms as if the state
    /// was just entered (SLA clocks start over with the new budget).
    ///
    /// Select instances (ids like i-42, or workflow/key), or --all: every instance at the
    /// --from version, migrated in batches of 64 until none remain. Each migrated instance
    /// gets a `migration` audit record naming both versions, the mapping and you. A refusal
    /// (MIGRATION_INVALID naming an instance whose state has no counterpart, WRONG_WORKFLOW for
    /// one not at --from, UNKNOWN_VERSION) migrates nothing of its batch.
    ///
    /// Example: lockstep migrate purchase-order --from 3f2a9c1b04de --to 8b7e6d5c4a3f
    ///   --map submitted=in_review --timers keep-deadline --all
    Migrate(online::MigrateArgs),
    /// Show an instance: state, data, SLAs, armed timers, tasks and incidents.
    Get {
        instance: String,
        /// Read this node's replica without confirming with the leader (marked stale).
        #[arg(long)]
        stale: bool,
    },
    /// List the instances of a workflow.
    ///
    /// --where filters on data fields the definition declares under `index:` (e.g. `index: {
    /// customer_id: string, amount: number }`), answered from the index without a scan:
    /// FIELD=VALUE, FIELD<VALUE, <=, >, >=, and FIELD^=PREFIX for strings; repeat it, and
    /// combine it with --state, --sla and --incidents. Versions that do not index a filtered
    /// field are named (their instances cannot be listed so; migrate them to one that does).
    ///
    /// Example: lockstep list purchase-order --where customer_id=C-7 --where 'amount>=10000'
    List {
        workflow: String,
        /// A condition on an indexed data field: FIELD=VALUE, FIELD>=VALUE, FIELD^=PREFIX...
        /// (repeat; all must hold).
        #[arg(long = "where", value_name = "CONDITION")]
        conditions: Vec<String>,
        #[arg(long)]
        state: Option<String>,
        /// running, paused, stopped, warned or breached.
        #[arg(long)]
        sla: Option<String>,
        /// Only instances with an open incident (a task whose retries are exhausted and
        /// whose workflow declares no `on_exhausted`); resolve with `lockstep resolve`.
        #[arg(long)]
        incidents: bool,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// The audit records of an instance, oldest first.
    History { instance: String },
    /// Why an instance is where it is: every record of its history with the definition
    /// version that governed it, where that version came from (repository, commit, path) and
    /// the predicates evaluated with their results; then every transition out of its state
    /// and what it requires. INSTANCE is an id (i-42) or workflow/key.
    ///
    /// Example: lockstep explain purchase-order/PO-1
    Explain { instance: String },
    /// The dry run before `lockstep migrate`: how version --to would have treated the
    /// instances of WORKFLOW that already ran. Reads each instance's command journal from
    /// the cluster (read-only; instances created before log format 5 have none and are
    /// reported as not replayable) and runs it through --to offline: per instance, the
    /// commands it would refuse where the old version applied them, other target states,
    /// timers fired on one side only, and SLA budgets and breach times under --to's
    /// calendars. Exact: evaluation depends only on the definition, the instance, the
    /// command and the cluster time it was applied at.
    ///
    /// Examples:
    ///   lockstep replay purchase-order --to examples/workflows/purchase-order.yaml
    ///   lockstep replay purchase-order --to 5e1f2a3b --state submitted --exit-code
    Replay {
        workflow: String,
        /// The version to replay under: a definition file (not yet applied), or an applied
        /// version (a version prefix, `latest`, or WORKFLOW@VERSION).
        #[arg(long)]
        to: String,
        /// Replay only this instance (an id, or workflow/key; repeat for several).
        #[arg(long = "instance")]
        instances: Vec<String>,
        /// Replay only the instances in this state.
        #[arg(long, conflicts_with = "instances")]
        state: Option<String>,
        /// Exit 5 when the new version differs for some instance, or some instance could not
        /// be checked (not replayable, or beyond the scan's bound); 0 when every one is the
        /// same (for CI).
        #[arg(long)]
        exit_code: bool,
    },
    /// What you may do with an instance now: the transitions you may take, and the gated
    /// ones with the time they open (decided by the engine with you as actor, by the rules
    /// that enforce an attempt). INSTANCE is an id (i-42) or workflow/key.
    ///
    /// Example: lockstep actions purchase-order/PO-1 --as bob --roles approver
    Actions { instance: String },
    /// Your inbox: the instances of WORKFLOW… on which you may take some transition now, or
    /// once a gate opens, with those transitions.
    ///
    /// Example: lockstep inbox purchase-order --state submitted --as bob --roles approver
    Inbox {
        /// The workflows to look in (at most 16).
        #[arg(required = true)]
        workflows: Vec<String>,
        /// Only instances in this state (repeat for several, at most 32).
        #[arg(long = "state")]
        states: Vec<String>,
        /// Instances per page (at most 100).
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        /// Continue from the `--page-token` the previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// The audit trail: verify its hash chains, or tail the change feed.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Service levels: what will warn or breach.
    #[command(subcommand)]
    Sla(SlaCommand),
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Webhook subscriptions: the leader POSTs each matching audit record, signed, at least
    /// once and in order, to the subscription's URL.
    ///
    /// Each node's --webhooks file must allow the target and hold the named secret. Needs
    /// the cluster policy's manage_subscriptions permission (role admin by default).
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// Schedules: instances created by the cluster itself on a cron expression in a time
    /// zone (the quarterly access review, the nightly reconciliation).
    ///
    /// The leader fires each tick once, even across a failover; each created instance is
    /// audited as created by system:schedule with the schedule and the tick in its note.
    /// Needs the cluster policy's manage_schedules permission (role admin by default).
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Ask nodes for their grpc.health.v1 status; exit 0 when every one is SERVING.
    ///
    /// For container health checks and probes: exit 1 when a node answers anything but
    /// SERVING, 3 when one does not answer within --timeout. A node whose space alarm is
    /// raised still serves reads, so it stays SERVING, and its alarm is printed under it
    /// (`space_alarm` with --output json): it refuses client writes with NO_SPACE.
    ///
    /// Example: lockstep health --endpoint 127.0.0.1:7101 --timeout 3s
    Health {
        /// Check this one endpoint instead of --endpoints.
        #[arg(long)]
        endpoint: Option<String>,
        /// The service to ask about; empty: the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Debug, Subcommand)]
enum SlaCommand {
    /// The SLA warnings and breaches of WORKFLOW's instances due before --until if nothing
    /// moves, soonest first, from their armed SLA timers (due times are in each SLA's
    /// business calendar and time zone).
    ///
    /// Example: lockstep sla forecast purchase-order --until 8h
    Forecast {
        workflow: String,
        /// A time (RFC 3339, e.g. 2026-12-24T17:00:00Z) or a duration from now (8h, 2d).
        #[arg(long)]
        until: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the global and per-instance hash chains on every endpoint, then compare the
    /// nodes' chain hashes at the highest record every one of them has; exit 1 if a chain is
    /// broken, the nodes differ or the anchor does not match, 3 if none of that but some
    /// endpoint did not answer.
    ///
    /// A node whose audit log was edited, reordered or cut short on its own disk fails its own
    /// check or differs from the others; a rewrite of every node's history is caught by an
    /// anchor printed earlier by `lockstep audit anchor` and kept elsewhere.
    ///
    /// Example: lockstep audit verify --anchor 1042:3f9c…e1
    Verify {
        /// A checkpoint `SEQ:HASH` from `lockstep audit anchor`: every node's chain must hold
        /// record SEQ with that hash.
        #[arg(long, value_parser = online::parse_anchor)]
        anchor: Option<(u64, String)>,
    },
    /// Print a checkpoint of the audit chain, `SEQ:HASH` (the head record's sequence and
    /// global chain hash, from a node whose chain verifies), to keep outside the cluster and
    /// check later with `lockstep audit verify --anchor`.
    ///
    /// Example: lockstep audit anchor >> audit-anchors.txt
    Anchor,
    /// Print audit records from a global sequence, oldest first (a table, or one JSON
    /// record per line with --output json); --follow keeps streaming.
    ///
    /// Example: lockstep audit tail --from 1 --output json | jq .record.kind
    Tail {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        follow: bool,
    },
    /// Print each endpoint's security log: refused attempts (authentication, authorization
    /// and policy, engine FORBIDDEN and gate refusals, peers) the node saw, oldest first.
    /// Needs the read_audit permission.
    ///
    /// Example: lockstep audit security --endpoints 127.0.0.1:7101 --output json
    Security {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries per endpoint (0: all the node keeps).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Each endpoint's role, term, log and applied index (and state digest with --digest);
    /// exit 3 if some endpoint did not answer.
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
    /// Write a backup checkpoint on a running node, under its data directory
    /// (<data-dir>/backups/NAME), holding every write acknowledged before the request; the
    /// answer names the node and the path. `lockstepd restore` turns it into a new cluster.
    ///
    /// Example: lockstep cluster backup --name nightly-2026-11-25 --endpoints 127.0.0.1:7101
    Backup {
        /// The checkpoint's directory name; default: backup-<UTC time>-<node id>.
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SubscriptionsCommand {
    /// Create a subscription; it is sent the records written from now on (or after
    /// --start-after SEQ), those its filters match (every filter empty: all of them).
    ///
    /// Each request is a POST of {"type": "lockstep.<kind>", "timestamp", "data": {"record",
    /// "emitted", "global_seq", "subscription"}} with Standard Webhooks headers: webhook-id
    /// (the record's global sequence: drop repeats with it), webhook-timestamp and
    /// webhook-signature (v1,<base64 HMAC-SHA256 of "id.timestamp.body">).
    ///
    /// Example: lockstep subscriptions create pager --url https://hooks.example/lockstep \
    ///   --secret pager --workflow incident --record-kind sla_breach --event incident.page_secondary
    Create {
        /// The subscription's name: a-z, 0-9, `-`, `_`, `.`.
        name: String,
        /// The target: http:// or https://, on every node's webhook allow-list.
        #[arg(long)]
        url: String,
        /// The name of the signing secret in every node's --webhooks file.
        #[arg(long)]
        secret: String,
        /// Only records of this workflow (repeat for several).
        #[arg(long = "workflow")]
        workflows: Vec<String>,
        /// Only records of this kind (repeat): created, transition, event_ignored, timer,
        /// sla_warning, sla_breach, task, incident, migration, redacted, definition,
        /// subscription.
        /// (`--kind` is the acting actor's kind.)
        #[arg(long = "record-kind")]
        kinds: Vec<String>,
        /// Only records whose change emitted this event (repeat), e.g. incident.page_secondary.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Deliver the records after this global sequence too (0: from the first record).
        #[arg(long)]
        start_after: Option<u64>,
    },
    /// Every subscription: state, lag (records behind the audit head), URL, filter and the
    /// last error or pause reason.
    List,
    /// One subscription in full.
    Get { name: String },
    /// Stop delivering; the cursor stays, so `resume` loses and reorders nothing.
    Pause {
        name: String,
        /// Why, shown by `list` (default: paused by <you>).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deliver again from the cursor (after a pause by an operator or by delivery giving up).
    Resume { name: String },
    /// Delete a subscription.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum SchedulesCommand {
    /// Create a schedule; its first tick is the first match after now.
    ///
    /// CRON has five fields (minute hour day-of-month month day-of-week), six with seconds
    /// first, or seven with a year last; nicknames (@hourly, @daily, @weekly, @monthly,
    /// @yearly) too. It is read in --time-zone: a local time that does not exist (the clock
    /// springs forward) fires at the first valid instant after the gap; one that occurs twice
    /// (the clock falls back) fires once.
    ///
    /// Strings in --data and --key may hold placeholders, filled per tick: {tick} (local RFC
    /// 3339), {tick_utc}, {date}, {time}, {year}, {month}, {day}, {quarter}, {week} (ISO),
    /// {schedule}; {{ and }} are literal braces.
    ///
    /// Example: lockstep schedules create access-review --workflow access-review \
    ///   --cron '0 9 1 1,4,7,10 *' --time-zone Europe/Berlin --calendar berlin-office \
    ///   --key 'review-{year}-Q{quarter}' --data '{"period": "{year}-Q{quarter}"}'
    Create {
        /// The schedule's name: a-z, 0-9, `-`, `_`, `.`.
        name: String,
        /// The workflow whose latest definition each tick creates an instance of.
        #[arg(long)]
        workflow: String,
        /// The cron expression, e.g. '0 9 * * MON-FRI' (quote it).
        #[arg(long)]
        cron: String,
        /// The IANA time zone CRON is read in.
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Skip ticks on the closed days (no working hours, holidays) of this calendar of
        /// the workflow's definition.
        #[arg(long)]
        calendar: Option<String>,
        /// The new instance's data, a JSON object template.
        #[arg(long, default_value = "{}")]
        data: String,
        /// The business-key template, e.g. 'review-{date}' (a key taken by an earlier tick's
        /// instance makes the create refused ALREADY_EXISTS, so a tick never creates twice).
        #[arg(long)]
        key: Option<String>,
        /// While the previous tick's instance is still open: `skip` the tick, or `allow` a
        /// new instance beside it.
        #[arg(long, default_value = "skip")]
        overlap: String,
        /// Ticks missed by more than --catch-up-window (no leader, cluster down): `skip`
        /// them, fire `one` (the latest), or fire `all` (at most --catch-up-max, the latest).
        #[arg(long, default_value = "one")]
        catch_up: String,
        /// For --catch-up all: the most missed ticks fired, 1 to 100.
        #[arg(long, default_value_t = 10)]
        catch_up_max: u32,
        /// How late a tick may fire and still count as on time, e.g. 1m, 15m.
        #[arg(long, default_value = "1m")]
        catch_up_window: String,
    },
    /// Every schedule: state, next tick (local time, and how soon), expression, and what the
    /// last tick did.
    List,
    /// One schedule in full.
    Get { name: String },
    /// Stop firing; ticks that fall while paused are not caught up after a resume.
    Pause {
        name: String,
        /// Why, shown by `list` (default: paused by <you>).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Fire again, from the first tick after now.
    Resume { name: String },
    /// Delete a schedule (the instances it created stay).
    Delete { name: String },
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
        Command::Diff {
            old,
            new,
            paths,
            markdown,
            exit_code,
        } => {
            return match diff::run(&old, &new, &paths, &cli.connection, cli.output, markdown) {
                Ok(true) if exit_code => ExitCode::from(exit::CHANGED),
                Ok(_) => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(exit::USAGE)
                }
            };
        }
        Command::Schema => {
            print!("{}", lockstep_core::schema::definition_schema());
            Ok(true)
        }
        Command::Certs(args) => certs::run(&args).map(|files| {
            for f in files {
                println!("wrote {}", f.display());
            }
            true
        }),
        _ => unreachable!("online commands are handled by online_main"),
    };
    match result {
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => ExitCode::from(exit::REFUSED),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::USAGE)
        }
    }
}

fn is_online(command: &Command) -> bool {
    !matches!(
        command,
        Command::Validate { .. }
            | Command::Diff { .. }
            | Command::Graph { .. }
            | Command::Test { .. }
            | Command::Schema
            | Command::Certs(_)
    )
}

fn online_main(cli: Cli) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let conn = cli.connection;
    let output = cli.output;
    // Set by `replay --exit-code` when the new version differs (exit 5).
    let changed = std::cell::Cell::new(false);
    let changed = &changed;
    let result: anyhow::Result<bool> = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await.map(|_| true),
            Command::Apply {
                files,
                allow_dirty,
                repository,
                commit,
            } => online::apply(
                &conn,
                output,
                &files,
                allow_dirty,
                repository.as_deref(),
                commit.as_deref(),
            )
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
            Command::Redact { instance, fields } => {
                online::redact(&conn, output, &instance, &fields)
                    .await
                    .map(|_| true)
            }
            Command::Resolve {
                instance,
                incident,
                retry,
            } => online::resolve(&conn, output, &instance, &incident, retry)
                .await
                .map(|_| true),
            Command::Migrate(args) => online::migrate(&conn, output, &args).await.map(|_| true),
            Command::Get { instance, stale } => online::get(&conn, output, &instance, stale)
                .await
                .map(|_| true),
            Command::List {
                workflow,
                conditions,
                state,
                sla,
                incidents,
                page_size,
                page_token,
            } => online::list(
                &conn,
                output,
                &workflow,
                online::ListFilter {
                    state,
                    sla,
                    incidents,
                    conditions,
                },
                page_size,
                page_token,
            )
            .await
            .map(|_| true),
            Command::History { instance } => online::history(&conn, output, &instance)
                .await
                .map(|_| true),
            Command::Definitions { workflow } => {
                online::definitions(&conn, output, workflow.as_deref())
                    .await
                    .map(|_| true)
            }
            Command::Explain { instance } => online::explain(&conn, output, &instance)
                .await
                .map(|_| true),
            Command::Replay {
                workflow,
                to,
                instances,
                state,
                exit_code,
            } => {
                let args = online::ReplayArgs {
                    workflow: &workflow,
                    to: &to,
                    instances: &instances,
                    state: state.as_deref(),
                };
                let differs = online::replay_to(&conn, output, &args).await?;
                changed.set(differs && exit_code);
                Ok(true)
            }
            Command::Actions { instance } => online::actions(&conn, output, &instance)
                .await
                .map(|_| true),
            Command::Inbox {
                workflows,
                states,
                page_size,
                page_token,
            } => online::inbox(
                &conn,
                output,
                online::InboxQuery {
                    workflows: &workflows,
                    states: &states,
                    page_size,
                    page_token: page_token.as_deref(),
                },
            )
            .await
            .map(|_| true),
            Command::Sla(SlaCommand::Forecast { workflow, until }) => {
                online::sla_forecast(&conn, output, &workflow, &until)
                    .await
                    .map(|_| true)
            }
            Command::Audit(AuditCommand::Verify { anchor }) => {
                online::audit_verify(&conn, output, anchor).await
            }
            Command::Audit(AuditCommand::Anchor) => online::audit_anchor(&conn, output).await,
            Command::Audit(AuditCommand::Security { after, limit }) => {
                online::audit_security(&conn, output, after, limit).await
            }
            Command::Audit(AuditCommand::Tail { from, follow }) => {
                online::audit_tail(&conn, output, from, follow)
                    .await
                    .map(|_| true)
            }
            Command::Subscriptions(command) => match command {
                SubscriptionsCommand::Create {
                    name,
                    url,
                    secret,
                    workflows,
                    kinds,
                    events,
                    start_after,
                } => {
                    let new = online::NewSubscription {
                        name,
                        url,
                        secret,
                        workflows,
                        kinds,
                        events,
                        start_after,
                    };
                    online::subscription_create(&conn, output, new).await
                }
                SubscriptionsCommand::List => online::subscription_list(&conn, output).await,
                SubscriptionsCommand::Get { name } => {
                    online::subscription_get(&conn, output, &name).await
                }
                SubscriptionsCommand::Pause { name, reason } => {
                    online::subscription_pause(&conn, output, &name, &reason).await
                }
                SubscriptionsCommand::Resume { name } => {
                    online::subscription_resume(&conn, output, &name).await
                }
                SubscriptionsCommand::Delete { name } => {
                    online::subscription_delete(&conn, output, &name).await
                }
            }
            .map(|_| true),
            Command::Schedules(command) => match command {
                SchedulesCommand::Create {
                    name,
                    workflow,
                    cron,
                    time_zone,
                    calendar,
                    data,
                    key,
                    overlap,
                    catch_up,
                    catch_up_max,
                    catch_up_window,
                } => {
                    let new = online::NewSchedule {
                        name,
                        workflow,
                        cron,
                        time_zone,
                        calendar,
                        data,
                        key,
                        overlap,
                        catch_up,
                        catch_up_max,
                        catch_up_window,
                    };
                    online::schedule_create(&conn, output, new).await
                }
                SchedulesCommand::List => online::schedule_list(&conn, output).await,
                SchedulesCommand::Get { name } => online::schedule_get(&conn, output, &name).await,
                SchedulesCommand::Pause { name, reason } => {
                    online::schedule_pause(&conn, output, &name, &reason).await
                }
                SchedulesCommand::Resume { name } => {
                    online::schedule_resume(&conn, output, &name).await
                }
                SchedulesCommand::Delete { name } => {
                    online::schedule_delete(&conn, output, &name).await
                }
            }
            .map(|_| true),
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
            Command::Cluster(ClusterCommand::Backup { name }) => {
                online::backup(&conn, output, &name).await.map(|_| true)
            }
            Command::Health { endpoint, service } => {
                online::health(&conn, output, endpoint, &service).await
            }
            Command::Validate { .. }
            | Command::Diff { .. }
            | Command::Graph { .. }
            | Command::Test { .. }
            | Command::Schema
            | Command::Certs(_) => unreachable!("offline commands"),
        }
    });
    match result {
        Ok(true) if changed.get() => ExitCode::from(exit::CHANGED),
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => ExitCode::from(exit::REFUSED),
        Err(e) => {
            let code = online::exit_code(&e);
            online::report_error(output, &e, code);
            ExitCode::from(code)
        }
    }
}
