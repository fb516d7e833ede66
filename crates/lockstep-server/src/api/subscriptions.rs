//! The `Subscriptions` service: webhook subscriptions (`webhooks.rs` delivers them). Every
//! call needs the policy's `manage_subscriptions`, checked by `AuthLayer`.

use lockstep_core::subscription::{Filter, Subscription, check_url};
use lockstep_raft::SubscriptionOp;

use super::*;

fn subscription_pb(s: Subscription, audit_head: u64) -> pb::Subscription {
    let paused = s.paused.as_ref();
    pb::Subscription {
        name: s.name,
        url: s.url,
        filter: Some(pb::SubscriptionFilter {
            workflows: s.filter.workflows,
            kinds: s.filter.kinds,
            events: s.filter.events,
        }),
        secret: s.secret,
        cursor: s.cursor,
        audit_head,
        paused: paused.is_some(),
        paused_by: paused.map(|p| p.by.clone()).unwrap_or_default(),
        paused_reason: paused.map(|p| p.reason.clone()).unwrap_or_default(),
        paused_at: paused.map(|p| p.at.to_string()).unwrap_or_default(),
        last_error: s.last_error.unwrap_or_default(),
        created_by: s.created_by,
        created_at: s.created_at.to_string(),
    }
}

impl Api {
    fn audit_head(&self) -> Result<u64, Status> {
        Ok(read::audit_head(&*self.node.store)
            .map_err(status::store_error)?
            .seq)
    }

    /// A subscription change through the log, answered with the subscription.
    fn require_webhooks_format(&self) -> Result<(), Status> {
        self.require_format(
            lockstep_raft::format::LOG_FORMAT_WEBHOOKS,
            "Subscriptions",
            "upgrade every member first",
        )
    }

    async fn change_subscription(
        &self,
        metadata: &MetadataMap,
        request_id: &str,
        op: SubscriptionOp,
    ) -> Result<Response<pb::Subscription>, Status> {
        self.require_webhooks_format()?;
        self.write(metadata, request_id, Body::Subscriptions(op))
            .await?
            .respond(|applied| match applied {
                Applied::Subscription(s) => {
                    // Read after the write: its own audit record is in the head (on a
                    // follower that forwarded it, the head may lag; never below the cursor).
                    let head = self.audit_head()?.max(s.cursor);
                    Ok(Response::new(subscription_pb(*s, head)))
                }
                Applied::Refused(r) => Err(status::refusal(&r)),
                other => Err(Status::internal(format!(
                    "unexpected outcome of a subscription change: {other:?}"
                ))),
            })
    }

    /// Checks that this node could deliver to `url` with `secret`: the secret is in its
    /// webhook settings, and the target's addresses are on its allow-list. (Every node checks
    /// again at connect time; nodes are expected to share the same settings.)
    async fn check_deliverable(&self, url: &str, secret: &str) -> Result<(), Status> {
        check_url(url).map_err(status::bad_request)?;
        let settings = &self.node.webhooks;
        if !settings.has_secret(secret) {
            return Err(status::bad_request(format!(
                "node {} has no signing secret named `{secret}`: add it under [secrets] in every node's --webhooks file, then create the subscription",
                self.node.id
            )));
        }
        settings
            .resolve(url)
            .await
            .map(|_| ())
            .map_err(|e| status::bad_request(format!("node {}: {e}", self.node.id)))
    }
}

#[tonic::async_trait]
impl pb::subscriptions_server::Subscriptions for Api {
    async fn create(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let actor = self.actor(request.extensions())?;
        self.require_webhooks_format()?;
        let (metadata, _, req) = request.into_parts();
        let filter = req.filter.unwrap_or_default();
        let filter = Filter {
            workflows: filter.workflows,
            kinds: filter.kinds,
            events: filter.events,
        };
        filter.check().map_err(status::bad_request)?;
        self.check_deliverable(&req.url, &req.secret).await?;
        let op = SubscriptionOp::Create {
            name: req.name,
            url: req.url,
            filter,
            secret: req.secret,
            start_after: req.start_after,
            actor,
        };
        self.change_subscription(&metadata, &req.request_id, op)
            .await
    }

    async fn list(
        &self,
        _request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        self.read_info(0).await?;
        let head = self.audit_head()?;
        let subscriptions = read::subscriptions(&*self.node.store)
            .map_err(status::store_error)?
            .into_iter()
            .map(|s| subscription_pb(s, head))
            .collect();
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let name = request.into_inner().name;
        self.read_info(0).await?;
        let head = self.audit_head()?;
        match read::subscription(&*self.node.store, &name).map_err(status::store_error)? {
            Some(s) => Ok(Response::new(subscription_pb(s, head))),
            None => Err(status::refusal(&lockstep_core::Refusal::new(
                RefusalCode::UnknownSubscription,
                format!(
                    "no subscription is named `{name}`; `lockstep subscriptions list` shows them"
                ),
            ))),
        }
    }

    async fn pause(
        &self,
        request: Request<pb::PauseSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let reason = if req.reason.is_empty() {
            format!("paused by {}", actor.id)
        } else {
            req.reason
        };
        let op = SubscriptionOp::Pause {
            name: req.name,
            reason,
            actor,
        };
        self.change_subscription(&metadata, &req.request_id, op)
            .await
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let op = SubscriptionOp::Resume {
            name: req.name,
            actor,
        };
        self.change_subscription(&metadata, &req.request_id, op)
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let op = SubscriptionOp::Delete {
            name: req.name,
            actor,
        };
        self.change_subscription(&metadata, &req.request_id, op)
            .await
    }
}
