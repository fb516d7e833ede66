//! `Instances/Actions` and `Instances/Inbox`: what the caller may do now, decided read-only by
//! the engine (`lockstep_core::engine::actions`) with the caller as actor, at the read's
//! cluster time.

use lockstep_core::engine::{Action, Availability, actions};

use super::*;

/// Most workflows one inbox request may name.
pub const INBOX_WORKFLOWS_MAX: usize = 16;
/// Most states one inbox request may name.
pub const INBOX_STATES_MAX: usize = 32;
/// Most instances one inbox call reads; an answer that stopped here says `truncated`.
pub const INBOX_SCAN_MAX: usize = 2_000;
/// Largest inbox page, and the page when the request says 0.
pub const INBOX_PAGE_MAX: u32 = 100;
pub const INBOX_PAGE_DEFAULT: u32 = 20;
/// Instances read from the index at a time while scanning.
const INBOX_SCAN_CHUNK: usize = 200;

fn action_pb(action: Action) -> pb::Action {
    pb::Action {
        transition: action.transition,
        to: action.to,
        opens_at: match action.availability {
            Availability::Now => String::new(),
            Availability::Gated { opens_at } => opens_at.to_string(),
        },
        depends_on_payload: action.depends_on_payload,
    }
}

/// Where an inbox scan stands: the index of the (workflow, state) source it is reading, and
/// the last index key it returned there.
#[derive(Debug, Default, PartialEq)]
struct InboxCursor {
    source: usize,
    after: Option<String>,
}

impl InboxCursor {
    fn token(&self) -> String {
        hex::encode(format!(
            "{}\n{}",
            self.source,
            self.after.as_deref().unwrap_or("")
        ))
    }

    fn parse(token: &str) -> Result<InboxCursor, Status> {
        if token.is_empty() {
            return Ok(InboxCursor::default());
        }
        let invalid = || {
            status::bad_request(
                "page_token is not one this server returned for an inbox; pass next_page_token as it came, with the same workflows and states",
            )
        };
        let text = hex::decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(invalid)?;
        let (source, after) = text.split_once('\n').ok_or_else(invalid)?;
        Ok(InboxCursor {
            source: source.parse().map_err(|_| invalid())?,
            after: (!after.is_empty()).then(|| after.to_string()),
        })
    }
}

impl Api {
    /// The cluster time a read decides actions at: this node's clock, never behind the time
    /// of the last applied write (cluster time never runs backwards).
    fn read_time(&self) -> Result<Timestamp, Status> {
        let applied = read::cluster_time(&*self.node.store).map_err(status::store_error)?;
        Ok(applied.map_or(wall_clock(), |t| t.max(wall_clock())))
    }

    /// The actions `actor` may take on `instance` at `at`.
    fn actions_of(
        &self,
        instance: &Instance,
        actor: &Actor,
        at: Timestamp,
    ) -> Result<Vec<pb::Action>, Status> {
        let definition = self
            .compiled(&instance.workflow, &instance.definition_version)?
            .ok_or_else(|| {
                Status::internal(format!(
                    "instance `{}` pins a definition that is not stored",
                    instance.id
                ))
            })?;
        Ok(actions(&definition, instance, actor, at)
            .into_iter()
            .map(action_pb)
            .collect())
    }

    pub(super) async fn actions_for(
        &self,
        request: Request<pb::ActionsRequest>,
    ) -> Result<Response<pb::ActionsResponse>, Status> {
        let actor = self.actor(request.extensions())?;
        let (_, extensions, req) = request.into_parts();
        let target = self.resolve(req.instance)?;
        let info = self.read_info(req.consistency).await?;
        let instance = self.load(&target)?;
        self.check_read(
            &extensions,
            &instance.workflow,
            "/lockstep.v1.Instances/Actions",
        )?;
        let at = self.read_time()?;
        Ok(Response::new(pb::ActionsResponse {
            actions: self.actions_of(&instance, &actor, at)?,
            instance_id: instance.id,
            workflow: instance.workflow,
            state: instance.state,
            version: instance.version,
            at: at.to_string(),
            read: Some(info),
        }))
    }

    pub(super) async fn inbox_for(
        &self,
        request: Request<pb::InboxRequest>,
    ) -> Result<Response<pb::InboxResponse>, Status> {
        let actor = self.actor(request.extensions())?;
        let (_, extensions, req) = request.into_parts();
        let sources = inbox_sources(&req)?;
        for workflow in &req.workflows {
            self.check_read(&extensions, workflow, "/lockstep.v1.Instances/Inbox")?;
        }
        let size = match req.page_size {
            0 => INBOX_PAGE_DEFAULT,
            n if n > INBOX_PAGE_MAX => {
                return Err(status::bad_request(format!(
                    "page_size {n} is more than {INBOX_PAGE_MAX}: page through the inbox with next_page_token"
                )));
            }
            n => n,
        } as usize;
        let mut cursor = InboxCursor::parse(&req.page_token)?;
        if cursor.source > sources.len() {
            return Err(status::bad_request(
                "page_token does not fit this request's workflows and states: pass the same ones as the call that returned it",
            ));
        }
        let info = self.read_info(req.consistency).await?;
        let at = self.read_time()?;
        let mut items = Vec::new();
        let mut scanned = 0usize;
        while cursor.source < sources.len() && items.len() < size && scanned < INBOX_SCAN_MAX {
            let (workflow, state) = &sources[cursor.source];
            let chunk = INBOX_SCAN_CHUNK.min(INBOX_SCAN_MAX - scanned);
            let ids = read::instance_ids(
                &*self.node.store,
                workflow,
                state.as_deref(),
                cursor.after.as_deref(),
                chunk,
            )
            .map_err(status::store_error)?;
            if ids.is_empty() {
                cursor = InboxCursor {
                    source: cursor.source + 1,
                    after: None,
                };
                continue;
            }
            for id in ids {
                scanned += 1;
                let instance = read::instance(&*self.node.store, &id)
                    .map_err(status::store_error)?
                    .ok_or_else(|| {
                        Status::internal(format!(
                            "the state index names `{id}`, which is not stored"
                        ))
                    })?;
                cursor.after = Some(index_key(&instance));
                let actions = self.actions_of(&instance, &actor, at)?;
                if !actions.is_empty() {
                    items.push(inbox_item(instance, actions));
                    if items.len() == size {
                        break;
                    }
                }
            }
        }
        // A full page: skip the sources the scan ended, so that a page whose last instance
        // was the last one gets no token (which would lead to an empty page).
        if items.len() == size {
            while let Some((workflow, state)) = sources.get(cursor.source) {
                let more = read::instance_ids(
                    &*self.node.store,
                    workflow,
                    state.as_deref(),
                    cursor.after.as_deref(),
                    1,
                )
                .map_err(status::store_error)?;
                if !more.is_empty() {
                    break;
                }
                cursor = InboxCursor {
                    source: cursor.source + 1,
                    after: None,
                };
            }
        }
        let finished = cursor.source >= sources.len();
        Ok(Response::new(pb::InboxResponse {
            truncated: !finished && items.len() < size,
            next_page_token: if finished {
                String::new()
            } else {
                cursor.token()
            },
            items,
            scanned: u32::try_from(scanned).unwrap_or(u32::MAX),
            at: at.to_string(),
            read: Some(info),
        }))
    }
}

/// The (workflow, state) pairs an inbox request reads, in order; a `None` state reads every
/// state of the workflow.
fn inbox_sources(req: &pb::InboxRequest) -> Result<Vec<(String, Option<String>)>, Status> {
    if req.workflows.is_empty() {
        return Err(status::bad_request(
            "workflows is empty: name the workflows whose instances the inbox should look at",
        ));
    }
    if req.workflows.len() > INBOX_WORKFLOWS_MAX {
        return Err(status::bad_request(format!(
            "{} workflows named, more than {INBOX_WORKFLOWS_MAX}: ask for fewer at a time",
            req.workflows.len()
        )));
    }
    if req.states.len() > INBOX_STATES_MAX {
        return Err(status::bad_request(format!(
            "{} states named, more than {INBOX_STATES_MAX}: ask for fewer at a time",
            req.states.len()
        )));
    }
    if req
        .workflows
        .iter()
        .chain(&req.states)
        .any(String::is_empty)
    {
        return Err(status::bad_request(
            "a workflow or state name is empty: leave states out to read every state",
        ));
    }
    Ok(req
        .workflows
        .iter()
        .flat_map(|workflow| {
            let states: Vec<Option<String>> = if req.states.is_empty() {
                vec![None]
            } else {
                req.states.iter().cloned().map(Some).collect()
            };
            states.into_iter().map(move |s| (workflow.clone(), s))
        })
        .collect())
}

/// The state index key of `instance` (workflow, state, id), after which
/// `read::instance_ids` resumes, whether it reads one state or all of them.
pub(super) fn index_key(instance: &Instance) -> String {
    format!(
        "{}\0{}\0{}\0",
        instance.workflow, instance.state, instance.id
    )
}

fn inbox_item(instance: Instance, actions: Vec<pb::Action>) -> pb::InboxItem {
    pb::InboxItem {
        instance_id: instance.id,
        workflow: instance.workflow,
        key: instance.key.unwrap_or_default(),
        state: instance.state,
        version: instance.version,
        updated_at: instance.updated_at.to_string(),
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_cursor_survives_its_token() {
        for cursor in [
            InboxCursor::default(),
            InboxCursor {
                source: 3,
                after: Some("purchase-order\0submitted\0i-42\0".into()),
            },
        ] {
            assert_eq!(InboxCursor::parse(&cursor.token()).unwrap(), cursor);
        }
        assert!(InboxCursor::parse("zz").is_err());
        assert!(InboxCursor::parse(&hex::encode("x\ny")).is_err());
    }

    #[test]
    fn inbox_requests_are_bounded_and_named() {
        let request = |workflows: Vec<&str>, states: Vec<&str>| pb::InboxRequest {
            workflows: workflows.into_iter().map(String::from).collect(),
            states: states.into_iter().map(String::from).collect(),
            ..Default::default()
        };
        let err = inbox_sources(&request(vec![], vec![])).unwrap_err();
        assert!(err.message().starts_with("workflows is empty"), "{err:?}");
        let many = vec!["w"; INBOX_WORKFLOWS_MAX + 1];
        assert!(inbox_sources(&request(many, vec![])).is_err());
        assert!(inbox_sources(&request(vec!["w", ""], vec![])).is_err());
        assert_eq!(
            inbox_sources(&request(vec!["a", "b"], vec!["s", "t"])).unwrap(),
            vec![
                ("a".into(), Some("s".into())),
                ("a".into(), Some("t".into())),
                ("b".into(), Some("s".into())),
                ("b".into(), Some("t".into())),
            ]
        );
        assert_eq!(
            inbox_sources(&request(vec!["a"], vec![])).unwrap(),
            vec![("a".into(), None)]
        );
    }
}
