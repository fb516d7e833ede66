//! `Instances/List` with `where`: filters on the data fields definitions declare under
//! `index:` (log format 11), answered by walking the index of the first filter's field and
//! checking every candidate against all the filters (the index may hold more than matches:
//! long strings are cut), bounded per page.

use std::collections::BTreeSet;

use lockstep_core::definition::IndexType;
use lockstep_core::search::{DATA_FILTERS_MAX, DataFilter, Op};

use super::*;

/// The page tokens of listings walked by a data index start with this.
const DATA_TOKEN: &str = "d.";
/// Index entries one page may examine; past it the page ends early, with a token.
pub const SEARCH_SCAN_MAX: usize = 10_000;
/// Index entries read per step of a walk.
const SCAN_CHUNK: usize = 256;

/// The other filters of a listing, checked on every candidate.
pub(super) struct Rest<'a> {
    pub state: Option<&'a str>,
    pub since: Option<Timestamp>,
    pub open_incidents: bool,
    pub sla: Option<&'a str>,
}

impl Api {
    pub(super) fn list_where(
        &self,
        req: &pb::ListInstancesRequest,
        size: usize,
        rest: Rest<'_>,
        info: pb::ReadInfo,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        if req.r#where.len() > DATA_FILTERS_MAX {
            return Err(status::bad_request(format!(
                "{} data filters, more than DATA_FILTERS_MAX ({DATA_FILTERS_MAX})",
                req.r#where.len()
            )));
        }
        let store = &*self.node.store;
        let versions =
            read::definition_versions(store, &req.workflow).map_err(status::store_error)?;
        if versions.is_empty() {
            return Err(status::refusal(&lockstep_core::Refusal::new(
                RefusalCode::UnknownWorkflow,
                format!(
                    "no definition of workflow `{}` has been applied",
                    req.workflow
                ),
            )));
        }
        let mut indexes = Vec::new();
        for v in &versions {
            if let Some(c) = self.compiled(&req.workflow, &v.version)? {
                indexes.push((v.version.clone(), c.definition.index.clone()));
            }
        }
        let mut filters = Vec::new();
        for f in &req.r#where {
            // The type the latest version that indexes the field gives it.
            let Some(ty) = indexes
                .iter()
                .rev()
                .find_map(|(_, index)| index.get(&f.field).copied())
            else {
                let known: BTreeSet<String> = indexes
                    .iter()
                    .flat_map(|(_, index)| index.iter().map(|(k, t)| format!("{k} ({})", t.name())))
                    .collect();
                return Err(status::bad_request(format!(
                    "`{}` is not indexed by any version of workflow `{}` (indexed: {}); declare it under `index:` in the definition, e.g. `index: {{ {}: string }}`, and apply it",
                    f.field,
                    req.workflow,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    },
                    f.field
                )));
            };
            let op = Op::parse(&f.op).map_err(status::bad_request)?;
            filters.push(
                DataFilter::new(&f.field, ty, op, &f.value_json).map_err(status::bad_request)?,
            );
        }
        // A version covers the listing when it indexes every filtered field with its type.
        let covers = |index: &std::collections::BTreeMap<String, IndexType>| {
            filters.iter().all(|f| index.get(&f.field) == Some(&f.ty))
        };
        let covered: BTreeSet<&str> = indexes
            .iter()
            .filter(|(_, index)| covers(index))
            .map(|(v, _)| v.as_str())
            .collect();
        let uncovered_versions = indexes
            .iter()
            .filter(|(v, _)| !covered.contains(v.as_str()))
            .map(|(v, _)| v.clone())
            .collect();
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .strip_prefix(DATA_TOKEN)
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| {
                        status::bad_request(
                            "page_token is not one this server returned for these filters: pass next_page_token as it came, with the same filters",
                        )
                    })?,
            ),
        };
        let driving = &filters[0];
        let (start, end) = driving.bounds();
        let mut cursor = after;
        let mut examined = 0;
        let mut instances = Vec::new();
        let mut done = false;
        while instances.len() < size && examined < SEARCH_SCAN_MAX {
            let chunk = read::data_index_entries(
                store,
                &req.workflow,
                &driving.field,
                &start,
                end.as_deref(),
                cursor.as_deref(),
                SCAN_CHUNK.min(SEARCH_SCAN_MAX - examined),
            )
            .map_err(status::store_error)?;
            if chunk.is_empty() {
                done = true;
                break;
            }
            for (k, id) in chunk {
                examined += 1;
                cursor = Some(k);
                let Some(i) = read::instance(store, &id).map_err(status::store_error)? else {
                    continue;
                };
                if !covered.contains(i.definition_version.as_str())
                    || !filters.iter().all(|f| f.matches(&i.data))
                    || rest.state.is_some_and(|s| s != i.state)
                    || rest.since.is_some_and(|s| i.updated_at < s)
                    || (rest.open_incidents
                        && !i.incidents.values().any(|x| x.resolved_at.is_none()))
                {
                    continue;
                }
                let pbi = self.instance_pb(&i)?;
                if rest
                    .sla
                    .is_some_and(|want| !super::instances::sla_matches(&pbi, want))
                {
                    continue;
                }
                instances.push(pbi);
                if instances.len() == size {
                    break;
                }
            }
        }
        let next_page_token = match cursor {
            Some(k) if !done => format!("{DATA_TOKEN}{}", hex::encode(k)),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListInstancesResponse {
            instances,
            next_page_token,
            read: Some(info),
            total: None,
            uncovered_versions,
        }))
    }
}
