//! `lockstep replay WORKFLOW --to NEW`: the dry run before `lockstep migrate`. Reads the
//! journals of WORKFLOW's instances from the cluster (read-only) and runs each through NEW
//! offline with the engine ([`lockstep_core::journal::replay`]), reporting per instance where
//! NEW would have differed: a refusal where the old version applied, another target state, a
//! timer fired on one side only, and SLA budgets and breach times under NEW's calendars.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lockstep_core::journal::{
    Difference, JournalEntry, JournalStep, NotReplayable, Replay, SlaOutlook, replay,
};
use lockstep_core::validate::CompiledDefinition;

use super::*;

/// Most instances one replay reads when none are named, so a replay over a huge workflow
/// stays bounded; the output says when it stopped there.
pub const REPLAY_SCAN_MAX: usize = 10_000;
/// Most records of one instance a replay reads (the node's history limit).
const REPLAY_HISTORY_MAX: u32 = 10_000;
/// Instances asked for per listing page.
const REPLAY_PAGE: u32 = 500;

/// What `lockstep replay` was asked.
pub struct ReplayArgs<'a> {
    pub workflow: &'a str,
    /// A definition file, or an applied version of the workflow (a version prefix,
    /// `latest`, or WORKFLOW@VERSION).
    pub to: &'a str,
    /// Only these instances (ids or workflow/key); every instance of the workflow if empty.
    pub instances: &'a [String],
    /// Only instances in this state (with no instances named).
    pub state: Option<&'a str>,
}

/// One instance's answer.
enum Verdict {
    Replayed(Replay),
    NotReplayable(String, NotReplayable),
    /// More records than one history read answers: replaying a prefix would mislead.
    TooLong(String),
}

impl Verdict {
    /// Why it was not replayed, if it was not.
    fn reason(&self) -> Option<String> {
        match self {
            Verdict::Replayed(_) => None,
            Verdict::NotReplayable(_, why) => Some(why.to_string()),
            Verdict::TooLong(_) => Some(format!(
                "its history has {REPLAY_HISTORY_MAX} records or more, more than one history read answers (REPLAY_HISTORY_MAX)"
            )),
        }
    }
}

/// Runs the replay and prints it; returns whether some instance differs under the new
/// version or could not be checked (not replayable, or beyond the scan's bound): a CI gate
/// must not pass on what it did not check.
pub async fn replay_to(
    conn: &Connection,
    output: Output,
    args: &ReplayArgs<'_>,
) -> anyhow::Result<bool> {
    let client = conn.client()?;
    let (to, origin) = new_version(&client, args.workflow, args.to).await?;
    if to.name() != args.workflow {
        bail!(
            "--to {} defines workflow `{}`, not `{}`: replay runs a workflow's instances through another version of the same workflow",
            args.to,
            to.name(),
            args.workflow
        );
    }
    let (ids, complete) = instance_ids(&client, args).await?;
    let mut versions: BTreeMap<String, CompiledDefinition> = BTreeMap::new();
    let mut verdicts = Vec::with_capacity(ids.len());
    for id in &ids {
        let records = client
            .history_with_commands(target(id), REPLAY_HISTORY_MAX)
            .await?;
        let id = records
            .first()
            .map(|r| r.record.instance_id.clone())
            .unwrap_or_else(|| id.clone());
        if records.len() >= REPLAY_HISTORY_MAX as usize {
            verdicts.push(Verdict::TooLong(id));
            continue;
        }
        let journal: Vec<(u64, JournalEntry)> = records
            .into_iter()
            .filter_map(|r| Some((r.instance_seq, r.journal?)))
            .collect();
        for (_, entry) in &journal {
            let mut named = vec![entry.definition_version.clone()];
            if let JournalStep::Migrate { plan, .. } = &entry.step {
                named.push(plan.from_version.clone());
            }
            for version in named {
                if let std::collections::btree_map::Entry::Vacant(slot) = versions.entry(version) {
                    let compiled = applied_version(&client, args.workflow, slot.key()).await?;
                    slot.insert(compiled);
                }
            }
        }
        verdicts.push(match replay(&journal, |v| versions.get(v), &to) {
            Ok(r) => Verdict::Replayed(r),
            Err(why) => Verdict::NotReplayable(id, why),
        });
    }
    let differs = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Replayed(r) if !r.same()))
        .count();
    let not_replayable = verdicts.iter().filter(|v| v.reason().is_some()).count();
    let same = verdicts.len() - differs - not_replayable;
    match output {
        Output::Json => {
            let instances: Vec<serde_json::Value> = verdicts
                .iter()
                .map(|v| match v {
                    Verdict::Replayed(r) => serde_json::json!({
                        "instance_id": r.instance_id,
                        "result": if r.same() { "same" } else { "differs" },
                        "replay": r,
                    }),
                    Verdict::NotReplayable(id, _) | Verdict::TooLong(id) => serde_json::json!({
                        "instance_id": id,
                        "result": "not_replayable",
                        "reason": v.reason(),
                    }),
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "workflow": args.workflow,
                    "to_version": to.version,
                    "to": origin,
                    "instances": instances,
                    "same": same,
                    "differs": differs,
                    "not_replayable": not_replayable,
                    "complete": complete,
                })
            );
        }
        Output::Table => {
            println!(
                "Replaying {} instance(s) of {} under {} ({origin}):",
                verdicts.len(),
                args.workflow,
                short(&to.version)
            );
            for v in &verdicts {
                print_verdict(v);
            }
            println!("{same} same, {differs} differ, {not_replayable} not replayable");
            if !complete {
                println!(
                    "stopped after reading {REPLAY_SCAN_MAX} instances (REPLAY_SCAN_MAX): name instances with --instance or narrow with --state"
                );
            }
        }
    }
    Ok(differs > 0 || not_replayable > 0 || !complete)
}

fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

fn print_verdict(verdict: &Verdict) {
    let r = match verdict {
        Verdict::NotReplayable(id, _) | Verdict::TooLong(id) => {
            println!(
                "  {id:<14} not replayable: {}",
                verdict.reason().unwrap_or_default()
            );
            return;
        }
        Verdict::Replayed(r) => r,
    };
    if r.same() {
        println!("  {:<14} same ({})", r.instance_id, r.old_state);
        return;
    }
    match &r.new_state {
        Some(new) if *new != r.old_state => println!(
            "  {:<14} {}, but {new} under the new version (history up to {})",
            r.instance_id, r.old_state, r.until
        ),
        Some(_) => println!(
            "  {:<14} {} under both versions, which differ in:",
            r.instance_id, r.old_state
        ),
        None => println!(
            "  {:<14} {}, but the new version would not have created it",
            r.instance_id, r.old_state
        ),
    }
    for d in &r.differences {
        match d {
            Difference::Refused {
                seq,
                at,
                command,
                old_state,
                code,
                message,
            } => println!(
                "      #{seq:<3} {at} {command}: refused {} ({message}); the old version went to {old_state}",
                code.as_str()
            ),
            Difference::OtherState {
                seq,
                at,
                command,
                old_state,
                new_state,
            } => println!("      #{seq:<3} {at} {command}: → {new_state}, not {old_state}"),
            Difference::OldTimerOnly {
                seq,
                at,
                timer_id,
                old_state,
            } => println!(
                "      #{seq:<3} {at} timer {timer_id} fired (→ {old_state}); the new version does not fire it then"
            ),
            Difference::NewTimerOnly {
                at,
                timer_id,
                new_state,
            } => println!(
                "           {at} timer {timer_id} would fire (→ {new_state}); the old version did not fire it then"
            ),
        }
    }
    for (name, sla) in &r.slas {
        println!(
            "      SLA {name}: {} → {}",
            outlook(sla.old.as_ref()),
            outlook(sla.new.as_ref())
        );
    }
}

/// An SLA's outlook as a person reads it: `budget 1d, breach due 2026-12-08T09:00:00Z`.
fn outlook(o: Option<&SlaOutlook>) -> String {
    let Some(o) = o else {
        return "not kept".into();
    };
    let budget = lockstep_core::duration::Duration::for_people(o.budget_ms);
    match (o.breached_at, o.breach_due) {
        (Some(at), _) => format!("budget {budget}, breached at {at}"),
        (None, Some(due)) => format!("budget {budget}, breach due {due}"),
        (None, None) => format!("budget {budget}, {:?}", o.status).to_lowercase(),
    }
}

/// The version to replay under: a definition file, or an applied version.
async fn new_version(
    client: &Client,
    workflow: &str,
    to: &str,
) -> anyhow::Result<(CompiledDefinition, String)> {
    let path = PathBuf::from(to);
    if path.is_file() {
        let compiled = crate::offline::load(&path)?;
        return Ok((compiled, path.display().to_string()));
    }
    let (named, version) = match crate::diff::applied(to) {
        Some((named, version)) => (named, version),
        None => (workflow, to),
    };
    let version_ok = version == "latest"
        || (!version.is_empty() && version.chars().all(|c| c.is_ascii_hexdigit()));
    if !version_ok {
        bail!(
            "--to `{to}` is neither a definition file nor an applied version (a version prefix, `latest`, or WORKFLOW@VERSION)"
        );
    }
    let (full, source) = crate::diff::applied_source(client, named, version).await?;
    let compiled = crate::offline::load_text(&format!("{named}@{}", short(&full)), &source)?;
    Ok((compiled, format!("applied {named}@{}", short(&full))))
}

/// An applied version of `workflow` by its full version, compiled.
async fn applied_version(
    client: &Client,
    workflow: &str,
    version: &str,
) -> anyhow::Result<CompiledDefinition> {
    let d = client.get_definition(workflow, Some(version)).await?;
    crate::offline::load_text(&format!("{workflow}@{}", short(version)), &d.source)
}

/// The instances to replay, and whether the listing was read to its end.
async fn instance_ids(
    client: &Client,
    args: &ReplayArgs<'_>,
) -> anyhow::Result<(Vec<String>, bool)> {
    if !args.instances.is_empty() {
        return Ok((args.instances.to_vec(), true));
    }
    let (mut ids, mut token) = (Vec::new(), None::<String>);
    let complete = loop {
        let page = client
            .list(pb::ListInstancesRequest {
                workflow: args.workflow.into(),
                state: args.state.unwrap_or_default().into(),
                page_size: REPLAY_PAGE,
                page_token: token.clone().unwrap_or_default(),
                ..Default::default()
            })
            .await?;
        ids.extend(page.instances.into_iter().map(|i| i.id));
        match page.next_page_token {
            Some(next) if ids.len() < REPLAY_SCAN_MAX => token = Some(next),
            Some(_) => break false,
            None => break true,
        }
    };
    ids.truncate(REPLAY_SCAN_MAX);
    Ok((ids, complete))
}
