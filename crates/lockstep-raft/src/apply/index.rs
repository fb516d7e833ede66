//! The list indexes of log format 4: instances by flag (each SLA status they have, an SLA
//! warned or breached, an open incident; family `IndexFlags`) and counts per (workflow,
//! state) and per (workflow, flag) in `Meta`, so that the console's filtered lists and the
//! definition graph's counts are answered without scanning instances.
//!
//! Every write of an instance goes through [`Applier::reindex`] (from `projection.rs`), which
//! moves the instance between index entries and counts by what changed. The entry that raises
//! the format to 4 builds them for the instances already stored ([`Applier::build_indexes`]),
//! at the same log index on every replica, so every replica holds the same indexes.

use std::collections::{BTreeMap, BTreeSet};

use lockstep_core::engine::Instance;
use lockstep_core::sla::SlaStatus;
use lockstep_store::schema::key;
use lockstep_store::{Family, Result as StoreResult, Store, envelope};

use super::Applier;

/// Instances read per step while the indexes are built.
const BUILD_CHUNK: usize = 10_000;
/// List counts the apply cache keeps between runs (each workflow's states and flags).
pub const COUNTS_CACHED_MAX: usize = 65_536;

/// The flags an instance carries; [`crate::read::FLAGS`] lists every one.
pub fn flags(i: &Instance) -> BTreeSet<&'static str> {
    let mut flags = BTreeSet::new();
    for clock in i.slas.values() {
        flags.insert(match clock.status {
            SlaStatus::Running => "sla:running",
            SlaStatus::Paused => "sla:paused",
            SlaStatus::Stopped => "sla:stopped",
        });
        if clock.breached_at.is_some() {
            flags.insert("sla:breached");
        } else if !clock.warned.is_empty() {
            flags.insert("sla:warned");
        }
    }
    if i.incidents.values().any(|x| x.resolved_at.is_none()) {
        flags.insert("incident:open");
    }
    flags
}

/// The count key of a state.
pub fn state_count(workflow: &str, state: &str) -> Vec<u8> {
    key::count(workflow, &format!("state:{state}"))
}

impl<S: Store> Applier<'_, S> {
    /// Adds `delta` to the count at `k` (family `Meta`); a count at 0 is removed. The count
    /// is this run's pending one, else the cache's, else the store's.
    fn count(&mut self, k: Vec<u8>, delta: i64) -> StoreResult<()> {
        let now = match self.overlay.counts.get(&k) {
            Some(n) => *n,
            None => match self.cache.counts.get(&k) {
                Some(n) if self.pending(Family::Meta, &k).is_none() => *n,
                _ => self.get::<u64>(Family::Meta, &k)?.unwrap_or(0),
            },
        };
        let next = now.saturating_add_signed(delta);
        self.overlay.counts.insert(k.clone(), next);
        if next == 0 {
            self.delete(Family::Meta, k);
        } else {
            self.put(Family::Meta, k, &next);
        }
        Ok(())
    }

    /// Moves an instance between the entries of indexed data fields (log format 11): the
    /// fields `before`'s version declares against those `after`'s (`decided`) declares,
    /// each with the value the instance holds; only entries that differ are written.
    pub(super) fn index_data(
        &mut self,
        decided: &lockstep_core::validate::CompiledDefinition,
        before: Option<&Instance>,
        after: &Instance,
    ) -> StoreResult<()> {
        use lockstep_core::search::entries;
        // Most writes (timers, leases, transitions without a payload) leave the data and the
        // version as they were: nothing to move.
        if before.is_some_and(|b| {
            b.definition_version == after.definition_version && b.data == after.data
        }) {
            return Ok(());
        }
        let old: BTreeSet<(String, Vec<u8>)> = match before {
            Some(b) => {
                let definition = if b.definition_version == decided.version {
                    None
                } else {
                    self.definition(&b.workflow, &b.definition_version)?
                };
                let index = &definition.as_deref().unwrap_or(decided).definition.index;
                entries(index, &b.data)
                    .map(|(f, v)| (f.to_string(), v))
                    .collect()
            }
            None => BTreeSet::new(),
        };
        let new: BTreeSet<(String, Vec<u8>)> = entries(&decided.definition.index, &after.data)
            .map(|(f, v)| (f.to_string(), v))
            .collect();
        for (field, value) in old.difference(&new) {
            let k = key::data_index(&after.workflow, field, value, &after.id);
            self.delete(Family::IndexData, k);
        }
        for (field, value) in new.difference(&old) {
            let k = key::data_index(&after.workflow, field, value, &after.id);
            self.put(Family::IndexData, k, &());
        }
        Ok(())
    }

    /// Moves an instance between index entries and counts: `before` is what was stored
    /// (`None` for a new instance), `after` what is written.
    pub(super) fn reindex(
        &mut self,
        before: Option<&Instance>,
        after: &Instance,
    ) -> StoreResult<()> {
        let old_state = before.map(|b| b.state.as_str());
        if old_state != Some(after.state.as_str()) {
            if let Some(old) = old_state {
                self.count(state_count(&after.workflow, old), -1)?;
            }
            self.count(state_count(&after.workflow, &after.state), 1)?;
        }
        let old = before.map(flags).unwrap_or_default();
        let new = flags(after);
        for gone in old.difference(&new) {
            self.delete(
                Family::IndexFlags,
                key::flag(&after.workflow, gone, &after.id),
            );
            self.count(key::count(&after.workflow, gone), -1)?;
        }
        for added in new.difference(&old) {
            self.put(
                Family::IndexFlags,
                key::flag(&after.workflow, added, &after.id),
                &(),
            );
            self.count(key::count(&after.workflow, added), 1)?;
        }
        Ok(())
    }

    /// Builds the indexes and counts of every stored instance (when the format reaches 4).
    pub(super) fn build_indexes(&mut self) -> StoreResult<()> {
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut start = Vec::new();
        loop {
            let rows = self.range(Family::Instances, &start, None, BUILD_CHUNK)?;
            let Some((last, _)) = rows.last() else { break };
            start = last.clone();
            start.push(0);
            for (k, bytes) in &rows {
                let i: Instance = envelope::decode(Family::Instances, k, bytes)?;
                *counts
                    .entry(state_count(&i.workflow, &i.state))
                    .or_default() += 1;
                for flag in flags(&i) {
                    self.put(Family::IndexFlags, key::flag(&i.workflow, flag, &i.id), &());
                    *counts.entry(key::count(&i.workflow, flag)).or_default() += 1;
                }
            }
            if rows.len() < BUILD_CHUNK {
                break;
            }
        }
        for (k, n) in counts {
            self.put(Family::Meta, k, &n);
        }
        Ok(())
    }
}
