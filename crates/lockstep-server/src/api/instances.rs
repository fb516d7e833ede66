//! The `Instances` service: create, transition, send events, get, list, history and migrate.

use super::*;

#[tonic::async_trait]
impl pb::instances_server::Instances for Api {
    async fn create(
        &self,
        request: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        if req.workflow.is_empty() {
            return Err(status::bad_request(
                "workflow is empty: name the workflow to create an instance of",
            ));
        }
        let data = match json(&req.data_json, "data_json")? {
            serde_json::Value::Null => serde_json::json!({}),
            d => d,
        };
        let key = (!req.key.is_empty()).then_some(req.key);
        let body = Body::Create {
            workflow: req.workflow,
            key,
            data,
            actor,
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }

    async fn transition(
        &self,
        request: Request<pb::TransitionRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let target = self.resolve(req.instance)?;
        let payload = json(&req.payload_json, "payload_json")?;
        let body = Body::Transition {
            target,
            transition: req.transition,
            payload,
            actor,
            expected_version: req.expected_version,
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }

    async fn redact(
        &self,
        request: Request<pb::RedactInstanceRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        // The policy's redact_data permission was checked by `AuthLayer`.
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        lockstep_core::redact::check_fields(&req.fields).map_err(status::bad_request)?;
        let target = self.resolve(req.instance)?;
        self.require_format(
            lockstep_raft::format::LOG_FORMAT_REDACT,
            "Instances/Redact",
            "upgrade every member first",
        )?;
        let body = Body::Redact {
            target,
            fields: req.fields,
            actor,
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }

    async fn send_event(
        &self,
        request: Request<pb::SendEventRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let target = self.resolve(req.instance)?;
        let payload = json(&req.payload_json, "payload_json")?;
        let body = Body::Event {
            target,
            event: req.event,
            payload,
            actor,
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }

    async fn get(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::GetInstanceResponse>, Status> {
        let (_, extensions, req) = request.into_parts();
        let target = self.resolve(req.instance)?;
        let info = self.read_info(req.consistency).await?;
        let instance = self.load(&target)?;
        self.check_read(
            &extensions,
            &instance.workflow,
            "/lockstep.v1.Instances/Get",
        )?;
        Ok(Response::new(pb::GetInstanceResponse {
            instance: Some(self.instance_pb(&instance)?),
            read: Some(info),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let (_, extensions, req) = request.into_parts();
        if req.workflow.is_empty() {
            return Err(status::bad_request(
                "workflow is empty: listing is per workflow",
            ));
        }
        self.check_read(&extensions, &req.workflow, "/lockstep.v1.Instances/List")?;
        if req.page_size > PAGE_SIZE_MAX {
            return Err(status::bad_request(format!(
                "page_size {} is more than {PAGE_SIZE_MAX}",
                req.page_size
            )));
        }
        let size = if req.page_size == 0 {
            PAGE_SIZE_DEFAULT
        } else {
            req.page_size
        } as usize;
        let since = if req.updated_since.is_empty() {
            None
        } else {
            Some(
                Timestamp::parse_rfc3339(&req.updated_since)
                    .map_err(|e| status::bad_request(e.to_string()))?,
            )
        };
        let sla_filter = match req.sla_status.as_str() {
            "" => None,
            s @ ("running" | "paused" | "stopped" | "warned" | "breached") => Some(s.to_string()),
            other => {
                return Err(status::bad_request(format!(
                    "sla_status `{other}` is not running, paused, stopped, warned or breached"
                )));
            }
        };
        let info = self.read_info(req.consistency).await?;
        let state = (!req.state.is_empty()).then_some(req.state.as_str());
        if !req.r#where.is_empty() {
            let rest = super::search::Rest {
                state,
                since,
                open_incidents: req.open_incidents,
                sla: sla_filter.as_deref(),
            };
            return self.list_where(&req, size, rest, info);
        }
        let store = &*self.node.store;
        let indexed = read::indexes_kept(store).map_err(status::store_error)?;
        // With the list indexes (log format 4), an SLA-status or incident filter walks its
        // index instead of filtering a page of the state index.
        let flag = if indexed {
            sla_filter
                .as_ref()
                .map(|s| format!("sla:{s}"))
                .or_else(|| req.open_incidents.then(|| "incident:open".to_string()))
        } else {
            None
        };
        let total = if !indexed || since.is_some() {
            None
        } else {
            let filters = usize::from(state.is_some())
                + usize::from(sla_filter.is_some())
                + usize::from(req.open_incidents);
            match (filters, state, &flag) {
                (0, _, _) => Some(
                    read::state_counts(store, &req.workflow)
                        .map_err(status::store_error)?
                        .values()
                        .sum(),
                ),
                (1, Some(s), _) => {
                    Some(read::state_count(store, &req.workflow, s).map_err(status::store_error)?)
                }
                (1, None, Some(f)) => {
                    Some(read::flag_count(store, &req.workflow, f).map_err(status::store_error)?)
                }
                _ => None,
            }
        };
        let after =
            // The flag index's walk reads its own token (below).
            if flag.is_some() || req.page_token.is_empty() {
                None
            } else {
                let bytes = hex::decode(&req.page_token).map_err(|_| {
                status::bad_request(
                    "page_token is not one this server returned; pass next_page_token as it came",
                )
            })?;
                Some(String::from_utf8(bytes).map_err(|_| {
                    status::bad_request("page_token is not one this server returned")
                })?)
            };
        let (ids, next_page_token) = match &flag {
            Some(flag) => {
                let after = match req.page_token.as_str() {
                    "" => None,
                    token => Some(
                        token
                            .strip_prefix(FLAG_TOKEN)
                            .and_then(|h| hex::decode(h).ok())
                            .and_then(|b| String::from_utf8(b).ok())
                            .ok_or_else(|| {
                                status::bad_request(
                                    "page_token is not one this server returned for these filters: pass next_page_token as it came, with the same filters",
                                )
                            })?,
                    ),
                };
                let ids = read::flagged_ids(store, &req.workflow, flag, after.as_deref(), size)
                    .map_err(status::store_error)?;
                let next = match ids.last() {
                    Some(last) if ids.len() == size => format!("{FLAG_TOKEN}{}", hex::encode(last)),
                    _ => String::new(),
                };
                (ids, next)
            }
            None => {
                let ids = read::instance_ids(store, &req.workflow, state, after.as_deref(), size)
                    .map_err(status::store_error)?;
                let next = if ids.len() == size {
                    ids.last()
                        .and_then(|id| read::instance(store, id).ok().flatten())
                        .map(|i| page_token(state, &i))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                (ids, next)
            }
        };
        let mut instances = Vec::new();
        for id in &ids {
            let Some(i) = read::instance(&*self.node.store, id).map_err(status::store_error)?
            else {
                continue;
            };
            if since.is_some_and(|s| i.updated_at < s) {
                continue;
            }
            if state.is_some_and(|s| s != i.state) {
                continue;
            }
            if req.open_incidents && !i.incidents.values().any(|x| x.resolved_at.is_none()) {
                continue;
            }
            let pbi = self.instance_pb(&i)?;
            if sla_filter
                .as_deref()
                .is_some_and(|want| !sla_matches(&pbi, want))
            {
                continue;
            }
            instances.push(pbi);
        }
        Ok(Response::new(pb::ListInstancesResponse {
            instances,
            next_page_token,
            read: Some(info),
            total,
            uncovered_versions: Vec::new(),
        }))
    }

    async fn actions(
        &self,
        request: Request<pb::ActionsRequest>,
    ) -> Result<Response<pb::ActionsResponse>, Status> {
        self.actions_for(request).await
    }

    async fn inbox(
        &self,
        request: Request<pb::InboxRequest>,
    ) -> Result<Response<pb::InboxResponse>, Status> {
        self.inbox_for(request).await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let (_, extensions, req) = request.into_parts();
        if req.limit > HISTORY_LIMIT_MAX {
            return Err(status::bad_request(format!(
                "limit {} is more than {HISTORY_LIMIT_MAX}",
                req.limit
            )));
        }
        let target = self.resolve(req.instance)?;
        self.read_info(req.consistency).await?;
        let instance = self.load(&target)?;
        self.check_read(
            &extensions,
            &instance.workflow,
            "/lockstep.v1.Instances/History",
        )?;
        if req.commands {
            self.check_journal_read(&extensions, "/lockstep.v1.Instances/History")?;
        }
        let limit = if req.limit == 0 { 1000 } else { req.limit } as usize;
        let store = &*self.node.store;
        let records = read::history(store, &instance.id, limit).map_err(status::store_error)?;
        let mut out = Vec::with_capacity(records.len());
        for record in &records {
            let mut wire = audit_pb(record);
            if req.commands
                && let Some(entry) = read::journal_entry(store, &instance.id, record.instance_seq)
                    .map_err(status::store_error)?
            {
                wire.journal_json = serde_json::to_string(&entry).unwrap_or_default();
            }
            out.push(wire);
        }
        Ok(Response::new(pb::HistoryResponse { records: out }))
    }

    async fn migrate(
        &self,
        request: Request<pb::MigrateInstancesRequest>,
    ) -> Result<Response<pb::MigrateInstancesResponse>, Status> {
        // The policy's migrate_instances permission was checked by `AuthLayer`.
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let request_id = req.request_id.clone();
        let (plan, selection) = self.migrate_request(req).await?;
        let (from_version, to_version) = (plan.from_version.clone(), plan.to_version.clone());
        let body = Body::Migrate {
            plan,
            selection,
            actor,
        };
        let answer = self.write(&metadata, &request_id, body).await?;
        answer.respond(|applied| match applied {
            Applied::Migrated { instances, next } => {
                Ok(Response::new(pb::MigrateInstancesResponse {
                    migrated: u32::try_from(instances.len()).unwrap_or(u32::MAX),
                    instances: instances
                        .into_iter()
                        .map(|m| pb::MigratedInstance {
                            instance_id: m.instance_id,
                            from_state: m.from_state,
                            to_state: m.to_state,
                            version: m.version,
                            audit_seq: m.global_seq,
                        })
                        .collect(),
                    more: next.is_some(),
                    next_page_token: next.as_ref().map(cursor_token).unwrap_or_default(),
                    from_version,
                    to_version,
                }))
            }
            Applied::Refused(r) => Err(status::refusal(&r)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        })
    }
}

impl Api {
    /// A full version of `workflow` from a full version or a unique prefix. A prefix that
    /// matches nothing is passed on as given, so apply refuses it with UNKNOWN_VERSION.
    async fn full_version(
        &self,
        workflow: &str,
        version: &str,
        what: &str,
    ) -> Result<String, Status> {
        if version.is_empty() {
            return Err(status::bad_request(format!(
                "{what} is empty: name a version of `{workflow}` (a prefix as `lockstep apply` prints it is enough)"
            )));
        }
        if version.len() >= 64 {
            return Ok(version.to_string());
        }
        // Versions are never removed, but a lagging replica may not have one yet.
        self.read_info(pb::ReadConsistency::Linearizable as i32)
            .await?;
        let versions =
            read::definition_versions(&*self.node.store, workflow).map_err(status::store_error)?;
        let matching: Vec<&str> = versions
            .iter()
            .map(|d| d.version.as_str())
            .filter(|v| v.starts_with(version))
            .collect();
        match matching.as_slice() {
            [one] => Ok((*one).to_string()),
            [] => Ok(version.to_string()),
            several => Err(status::bad_request(format!(
                "{what} `{version}` matches {} versions of `{workflow}`: give more of it",
                several.len()
            ))),
        }
    }

    async fn migrate_request(
        &self,
        req: pb::MigrateInstancesRequest,
    ) -> Result<(Migration, Selection), Status> {
        if req.workflow.is_empty() {
            return Err(status::bad_request(
                "workflow is empty: name the workflow whose instances to migrate",
            ));
        }
        let timers = match pb::TimerPolicy::try_from(req.timer_policy) {
            Ok(pb::TimerPolicy::KeepDeadline) => TimerPolicy::KeepDeadline,
            Ok(pb::TimerPolicy::KeepRemaining) => TimerPolicy::KeepRemaining,
            Ok(pb::TimerPolicy::Restart) => TimerPolicy::Restart,
            Ok(pb::TimerPolicy::Unspecified) | Err(_) => {
                return Err(status::bad_request(
                    "timer_policy is missing: declare how timers are re-armed (keep-deadline, keep-remaining or restart)",
                ));
            }
        };
        if req.state_mapping.len() > MIGRATION_MAPPING_ENTRIES_MAX {
            return Err(status::bad_request(format!(
                "state_mapping has {} entries, more than {MIGRATION_MAPPING_ENTRIES_MAX}",
                req.state_mapping.len()
            )));
        }
        if let Some((from, to)) = req
            .state_mapping
            .iter()
            .find(|(from, to)| from.is_empty() || to.is_empty())
        {
            return Err(status::bad_request(format!(
                "state_mapping has an empty state name (`{from}` -> `{to}`)"
            )));
        }
        let selection = match (req.all, req.instances.is_empty()) {
            (true, true) => Selection::All {
                after: cursor(&req.page_token)?,
            },
            (false, false) => {
                if !req.page_token.is_empty() {
                    return Err(status::bad_request(
                        "page_token goes with `all`, not with a list of instances",
                    ));
                }
                Selection::Instances(
                    req.instances
                        .into_iter()
                        .map(|r| self.resolve(Some(r)))
                        .collect::<Result<_, _>>()?,
                )
            }
            (true, false) => {
                return Err(status::bad_request(
                    "give either instances or `all`, not both",
                ));
            }
            (false, true) => {
                return Err(status::bad_request(
                    "no instances selected: list instances, or set `all` to migrate every instance at from_version",
                ));
            }
        };
        let plan = Migration {
            from_version: self
                .full_version(&req.workflow, &req.from_version, "from_version")
                .await?,
            to_version: self
                .full_version(&req.workflow, &req.to_version, "to_version")
                .await?,
            workflow: req.workflow,
            mapping: req.state_mapping.into_iter().collect(),
            timers,
        };
        Ok((plan, selection))
    }
}

/// The resume point of an all-instances migration, from its page token.
fn cursor(token: &str) -> Result<Option<MigrationCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        status::bad_request(
            "page_token is not one this server returned; pass next_page_token as it came",
        )
    };
    let text = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (state, instance_id) = text.split_once('\0').ok_or_else(bad)?;
    Ok(Some(MigrationCursor {
        state: state.to_string(),
        instance_id: instance_id.to_string(),
    }))
}

/// Whether one of the instance's SLAs (as answered) has status `want`: running, paused,
/// stopped, warned (and not breached) or breached.
pub(super) fn sla_matches(pbi: &pb::Instance, want: &str) -> bool {
    pbi.slas.iter().any(|s| match want {
        "breached" => s.breached,
        "warned" => s.warned_percent > 0 && !s.breached,
        status => s.status == status,
    })
}

fn cursor_token(cursor: &MigrationCursor) -> String {
    hex::encode(format!("{}\0{}", cursor.state, cursor.instance_id))
}

/// The resume point of a listing: the index key (workflow, state, id) after which the next
/// page starts, hex-encoded so that it is an opaque, printable token.
/// The page tokens of listings walked by the flag index start with this.
const FLAG_TOKEN: &str = "f.";

fn page_token(_state: Option<&str>, i: &Instance) -> String {
    hex::encode(super::actions::index_key(i))
}
