//! The `Definitions` service: apply, get and list workflow definitions.

use super::*;

fn definition_pb(d: StoredDefinition) -> pb::Definition {
    pb::Definition {
        workflow: d.workflow,
        version: d.version,
        source: d.source,
        provenance: Some(pb::Provenance {
            repository: d.provenance.repository,
            commit: d.provenance.commit,
            path: d.provenance.path,
        }),
        applied_by: d.applied_by,
        applied_at: d.applied_at.to_string(),
    }
}

#[tonic::async_trait]
impl pb::definitions_server::Definitions for Api {
    async fn apply(
        &self,
        request: Request<pb::ApplyDefinitionRequest>,
    ) -> Result<Response<pb::ApplyDefinitionResponse>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let provenance = req
            .provenance
            .map(|p| Provenance {
                repository: p.repository,
                commit: p.commit,
                path: p.path,
            })
            .unwrap_or_default();
        // Validate before proposing, so a broken file costs no log entry and gets every
        // diagnostic; apply validates again, deterministically.
        if let Err(diagnostics) = compile(
            Some(&provenance.path),
            &req.source,
            &lockstep_raft::replicated::apply_limits(),
        ) {
            let text: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
            let refusal = lockstep_core::Refusal::new(
                lockstep_core::RefusalCode::DefinitionInvalid,
                format!(
                    "the definition has {} error(s):\n{}",
                    diagnostics.len(),
                    text.join("\n")
                ),
            );
            return Err(status::refusal(&refusal));
        }
        let answer = self
            .write(
                &metadata,
                &req.request_id,
                Body::ApplyDefinition {
                    source: req.source,
                    provenance,
                    actor,
                },
            )
            .await?;
        answer.respond(|applied| match applied {
            Applied::Definition {
                workflow,
                version,
                created,
            } => Ok(Response::new(pb::ApplyDefinitionResponse {
                workflow,
                version,
                created,
            })),
            Applied::Refused(r) => Err(status::refusal(&r)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        })
    }

    async fn get(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::Definition>, Status> {
        let req = request.into_inner();
        self.read_info(req.consistency).await?;
        let version = (!req.version.is_empty()).then_some(req.version.as_str());
        let d = read::definition(&*self.node.store, &req.workflow, version)
            .map_err(status::store_error)?;
        d.map(|d| Response::new(definition_pb(d))).ok_or_else(|| {
            Status::not_found(format!(
                "no definition of workflow `{}`{}",
                req.workflow,
                version
                    .map(|v| format!(" at version {v}"))
                    .unwrap_or_default()
            ))
        })
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListDefinitionVersionsRequest>,
    ) -> Result<Response<pb::ListDefinitionVersionsResponse>, Status> {
        let req = request.into_inner();
        self.read_info(req.consistency).await?;
        let versions = read::definition_versions(&*self.node.store, &req.workflow)
            .map_err(status::store_error)?;
        Ok(Response::new(pb::ListDefinitionVersionsResponse {
            versions: versions.into_iter().map(definition_pb).collect(),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListDefinitionsRequest>,
    ) -> Result<Response<pb::ListDefinitionsResponse>, Status> {
        let req = request.into_inner();
        let size = match req.page_size {
            0 => PAGE_SIZE_DEFAULT,
            n if n > PAGE_SIZE_MAX => {
                return Err(status::bad_request(format!(
                    "page_size {n} is more than {PAGE_SIZE_MAX}: page through with next_page_token"
                )));
            }
            n => n,
        } as usize;
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(
                hex::decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        status::bad_request(
                            "page_token is not one this server returned; pass next_page_token as it came",
                        )
                    })?,
            ),
        };
        self.read_info(req.consistency).await?;
        let store = &*self.node.store;
        let names = read::workflows(store, after.as_deref(), size).map_err(status::store_error)?;
        let mut workflows = Vec::with_capacity(names.len());
        for workflow in &names {
            let versions =
                read::definition_versions(store, workflow).map_err(status::store_error)?;
            let latest = read::definition(store, workflow, None)
                .map_err(status::store_error)?
                .map(|d| pb::Definition {
                    source: String::new(),
                    ..definition_pb(d)
                });
            workflows.push(pb::WorkflowSummary {
                workflow: workflow.clone(),
                latest,
                versions: u32::try_from(versions.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(Response::new(pb::ListDefinitionsResponse {
            next_page_token: match names.last() {
                Some(last) if names.len() == size => hex::encode(last),
                _ => String::new(),
            },
            workflows,
        }))
    }
}
