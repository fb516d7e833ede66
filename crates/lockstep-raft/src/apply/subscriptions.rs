//! Webhook subscriptions (`Body::Subscriptions`, log format 8): created, paused, resumed
//! and deleted by operators; moved along by the leader's delivery (`Progress`). Every check
//! here is a refusal, never an error: a bad subscription must not stop the node. Each change
//! of a subscription's life (create, pause, resume, delete, and a pause by delivery) writes a
//! `subscription_changed` record to the global audit chain; cursor moves do not.

use lockstep_core::subscription::{
    Filter, Paused, SUBSCRIPTIONS_MAX, Subscription, bounded_error, changed, check_name, check_url,
};

use super::*;
use crate::types::{DeliveryProgress, SubscriptionOp};

/// The actor id a pause by the delivery itself is recorded under.
pub const DELIVERY_ACTOR: &str = "system:webhooks";

impl<S: Store> Applier<'_, S> {
    pub(super) fn subscriptions(
        &mut self,
        log_id: LogId<NodeId>,
        op: &SubscriptionOp,
        at: Timestamp,
    ) -> StoreResult<Response> {
        match op {
            SubscriptionOp::Create {
                name,
                url,
                filter,
                secret,
                start_after,
                actor,
            } => {
                let response =
                    self.create_subscription(name, url, filter, secret, *start_after, actor, at)?;
                if let Response::Subscription(s) = &response {
                    self.append_audit(log_id, changed("create", s, actor, at), None)?;
                }
                Ok(response)
            }
            SubscriptionOp::Pause {
                name,
                reason,
                actor,
            } => self.change_subscription(log_id, "pause", actor, at, name, |s| {
                if s.paused.is_some() {
                    return false;
                }
                s.paused = Some(Paused {
                    at,
                    by: actor.id.clone(),
                    reason: bounded_error(reason),
                });
                true
            }),
            SubscriptionOp::Resume { name, actor } => {
                self.change_subscription(log_id, "resume", actor, at, name, |s| {
                    let was_paused = s.paused.take().is_some();
                    if was_paused {
                        // A new life: progress a task of the paused one still proposes is
                        // ignored.
                        s.generation = at.as_micros();
                    }
                    s.last_error = None;
                    was_paused
                })
            }
            SubscriptionOp::Delete { name, actor } => {
                let Some(s) = self.subscription(name)? else {
                    return Ok(unknown(name));
                };
                self.delete(Family::Subscriptions, key::subscription(name));
                self.append_audit(log_id, changed("delete", &s, actor, at), None)?;
                Ok(Response::Subscription(Box::new(s)))
            }
            SubscriptionOp::Progress { updates } => {
                for update in updates {
                    self.progress(log_id, update, at)?;
                }
                Ok(Response::Empty)
            }
        }
    }

    fn subscription(&self, name: &str) -> StoreResult<Option<Subscription>> {
        self.get(Family::Subscriptions, &key::subscription(name))
    }

    #[allow(clippy::too_many_arguments)]
    fn create_subscription(
        &mut self,
        name: &str,
        url: &str,
        filter: &Filter,
        secret: &str,
        start_after: Option<u64>,
        actor: &Actor,
        at: Timestamp,
    ) -> StoreResult<Response> {
        let checked = check_name("subscription name", name)
            .and_then(|()| check_name("secret name", secret))
            .and_then(|()| check_url(url))
            .and_then(|()| filter.check());
        if let Err(message) = checked {
            return Ok(refused(RefusalCode::PayloadInvalid, message));
        }
        if self.subscription(name)?.is_some() {
            return Ok(refused(
                RefusalCode::AlreadyExists,
                format!(
                    "a subscription named `{name}` exists; delete it first or pick another name"
                ),
            ));
        }
        let count = self
            .range(Family::Subscriptions, &[], None, SUBSCRIPTIONS_MAX)?
            .len();
        if count >= SUBSCRIPTIONS_MAX {
            return Ok(refused(
                RefusalCode::LimitExceeded,
                format!(
                    "the cluster holds SUBSCRIPTIONS_MAX ({SUBSCRIPTIONS_MAX}) subscriptions; delete one, or widen an existing one's filter"
                ),
            ));
        }
        let head: AuditHead = self
            .get(Family::Meta, meta::AUDIT_HEAD)?
            .unwrap_or_default();
        let subscription = Subscription {
            name: name.to_string(),
            url: url.to_string(),
            filter: filter.clone(),
            secret: secret.to_string(),
            cursor: start_after.map_or(head.seq, |s| s.min(head.seq)),
            paused: None,
            last_error: None,
            created_by: actor.id.clone(),
            created_at: at,
            generation: at.as_micros(),
        };
        self.put(
            Family::Subscriptions,
            key::subscription(name),
            &subscription,
        );
        Ok(Response::Subscription(Box::new(subscription)))
    }

    /// Applies `change` to subscription `name`; when it says it changed the subscription's
    /// life, the change is audited as `what` by `actor`.
    fn change_subscription(
        &mut self,
        log_id: LogId<NodeId>,
        what: &str,
        actor: &Actor,
        at: Timestamp,
        name: &str,
        change: impl FnOnce(&mut Subscription) -> bool,
    ) -> StoreResult<Response> {
        let Some(mut s) = self.subscription(name)? else {
            return Ok(unknown(name));
        };
        if change(&mut s) {
            self.append_audit(log_id, changed(what, &s, actor, at), None)?;
        }
        self.put(Family::Subscriptions, key::subscription(name), &s);
        Ok(Response::Subscription(Box::new(s)))
    }

    /// A cursor only moves forward; a pause by an operator is kept (delivery never resumes
    /// a subscription); an update for a deleted subscription, or of another generation (a
    /// deleted namesake's, or from before a resume), changes nothing.
    fn progress(
        &mut self,
        log_id: LogId<NodeId>,
        update: &DeliveryProgress,
        at: Timestamp,
    ) -> StoreResult<()> {
        let Some(mut s) = self.subscription(&update.name)? else {
            return Ok(());
        };
        if s.generation != update.generation {
            return Ok(());
        }
        s.cursor = s.cursor.max(update.cursor);
        s.last_error = update.error.as_deref().map(bounded_error);
        if update.pause && s.paused.is_none() {
            s.paused = Some(Paused {
                at,
                by: DELIVERY_ACTOR.to_string(),
                reason: bounded_error(update.error.as_deref().unwrap_or("delivery gave up")),
            });
            let record = changed("pause", &s, &Actor::system("webhooks"), at);
            self.append_audit(log_id, record, None)?;
        }
        self.put(Family::Subscriptions, key::subscription(&update.name), &s);
        Ok(())
    }
}

fn unknown(name: &str) -> Response {
    refused(
        RefusalCode::UnknownSubscription,
        format!("no subscription is named `{name}`; `lockstep subscriptions list` shows them"),
    )
}
