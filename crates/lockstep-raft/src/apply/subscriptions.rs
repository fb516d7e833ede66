//! Webhook subscriptions (`Body::Subscriptions`, log format 8): created, paused, resumed
//! and deleted by operators; moved along by the leader's delivery (`Progress`). Every check
//! here is a refusal, never an error: a bad subscription must not stop the node.

use lockstep_core::subscription::{
    Filter, Paused, SUBSCRIPTIONS_MAX, Subscription, bounded_error, check_name, check_url,
};

use super::*;
use crate::types::{DeliveryProgress, SubscriptionOp};

/// The actor id a pause by the delivery itself is recorded under.
pub const DELIVERY_ACTOR: &str = "system:webhooks";

impl<S: Store> Applier<'_, S> {
    pub(super) fn subscriptions(
        &mut self,
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
            } => self.create_subscription(name, url, filter, secret, *start_after, actor, at),
            SubscriptionOp::Pause {
                name,
                reason,
                actor,
            } => self.change_subscription(name, |s| {
                if s.paused.is_none() {
                    s.paused = Some(Paused {
                        at,
                        by: actor.id.clone(),
                        reason: bounded_error(reason),
                    });
                }
            }),
            SubscriptionOp::Resume { name, .. } => self.change_subscription(name, |s| {
                if s.paused.take().is_some() {
                    // A new life: progress a task of the paused one still proposes is ignored.
                    s.generation = at.as_micros();
                }
                s.last_error = None;
            }),
            SubscriptionOp::Delete { name, .. } => {
                let Some(s) = self.subscription(name)? else {
                    return Ok(unknown(name));
                };
                self.delete(Family::Subscriptions, key::subscription(name));
                Ok(Response::Subscription(Box::new(s)))
            }
            SubscriptionOp::Progress { updates } => {
                for update in updates {
                    self.progress(update, at)?;
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

    fn change_subscription(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut Subscription),
    ) -> StoreResult<Response> {
        let Some(mut s) = self.subscription(name)? else {
            return Ok(unknown(name));
        };
        change(&mut s);
        self.put(Family::Subscriptions, key::subscription(name), &s);
        Ok(Response::Subscription(Box::new(s)))
    }

    /// A cursor only moves forward; a pause by an operator is kept (delivery never resumes
    /// a subscription); an update for a deleted subscription, or of another generation (a
    /// deleted namesake's, or from before a resume), changes nothing.
    fn progress(&mut self, update: &DeliveryProgress, at: Timestamp) -> StoreResult<()> {
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
