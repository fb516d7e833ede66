//! Tells clients where the leader is, so their writes stop taking the follower's detour.
//!
//! When a follower forwarded a write to the leader, the write's answer names the leader
//! (`cluster::Written::forwarded_to`) and the API notes it ([`note_forwarded`]);
//! [`LeaderHintLayer`] then puts it in the answer's `x-lockstep-leader` header. A client that
//! has that address among its endpoints sends its next requests there directly
//! (`lockstep_client` does), which saves the follower a proposal attempt, a forwarding round
//! trip and the re-encoding of request and answer. Forwarding itself stays: a client that can
//! only reach one node (behind a load balancer) keeps working through it.

use std::cell::RefCell;
use std::task::{Context, Poll};

/// A boxed, sendable future (the layer's answer).
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The response header naming the leader's address, on writes a follower forwarded.
pub const LEADER_HEADER: &str = lockstep_proto::names::LEADER_HEADER;

tokio::task_local! {
    static FORWARDED_TO: RefCell<Option<String>>;
}

/// Records, inside a call served through [`LeaderHintLayer`], that its write was forwarded to
/// the leader at `addr`. Outside such a call (e.g. the timer service) it does nothing.
pub fn note_forwarded(addr: &str) {
    let _ = FORWARDED_TO.try_with(|to| *to.borrow_mut() = Some(addr.to_string()));
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LeaderHintLayer;

impl<S> tower_layer::Layer<S> for LeaderHintLayer {
    type Service = LeaderHintService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LeaderHintService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct LeaderHintService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for LeaderHintService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(FORWARDED_TO.scope(RefCell::new(None), async move {
            let mut response = response.await?;
            let leader = FORWARDED_TO.with(|to| to.borrow_mut().take());
            if let Some(value) = leader.and_then(|a| http::HeaderValue::from_str(&a).ok()) {
                response.headers_mut().insert(LEADER_HEADER, value);
            }
            Ok(response)
        }))
    }
}
