//! The web console (`--console-listen`): server-rendered pages for requesters, approvers,
//! operators and auditors, over the same trust as the gRPC API.
//!
//! **Trust is the API's.** Every page authenticates the browser's request with
//! [`Trust::admit`](crate::trust::Trust) — the function the gRPC [`AuthLayer`] runs, with the
//! gRPC method the page stands for, so the cluster policy and the security log see a console
//! call exactly as they see a gRPC one — and then calls the gRPC handler itself on [`Api`]
//! with the authenticated actor. Nothing here reads instances around the API: `allow`,
//! guards, gates and read rules are decided where they are for every client.
//!
//! Who the browser is:
//! - secure node: a bearer JWT in `Authorization` (set by an SSO proxy such as oauth2-proxy),
//!   else the token pasted into the sign-in form and kept in an HttpOnly, Secure,
//!   SameSite=Strict cookie, else the client certificate of the TLS connection;
//! - development node: the actor picked on the sign-in page (id, roles, kind), kept in
//!   cookies and turned into the `x-lockstep-actor` headers a development gRPC call carries.
//!
//! Every state-changing request is a POST carrying the CSRF token of its form, which must
//! match the `lockstep_csrf` cookie (double submit, SameSite=Strict). Every value from
//! instance data, payloads and definitions is escaped by maud; responses carry a
//! Content-Security-Policy that allows only this origin's script and style ([`assets`]), so
//! even an unescaped value could not run a script.
//!
//! [`AuthLayer`]: crate::trust::AuthLayer

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use lockstep_core::Actor;
use tokio::sync::{Semaphore, watch};

use crate::api::Api;
use crate::trust::{Authenticated, PeerCerts};

mod assets;
mod graph;
mod live;
mod pages;
mod view;

/// Connections the console serves at once; more wait in the listen queue.
pub const CONSOLE_CONNECTIONS_MAX: usize = 1024;
/// Live feeds (server-sent events) open at once; more are answered 503 and the page retries.
pub const CONSOLE_LIVE_STREAMS_MAX: usize = 256;
/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest token the sign-in form keeps in its cookie (browsers keep cookies up to 4 KiB).
pub const SIGNIN_TOKEN_BYTES_MAX: usize = 3800;

/// The cookies the console sets.
const CSRF_COOKIE: &str = "lockstep_csrf";
const TOKEN_COOKIE: &str = "lockstep_token";
const ACTOR_COOKIE: &str = "lockstep_actor";
const ROLES_COOKIE: &str = "lockstep_roles";
const KIND_COOKIE: &str = "lockstep_kind";

/// Every response's security headers: only this origin's script, style and connections; no
/// framing; nothing cached (pages hold instance data).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What every console handler shares.
#[derive(Clone)]
pub(crate) struct Console {
    pub(crate) api: Api,
    /// Served over TLS (cookies are then `Secure`).
    pub(crate) tls: bool,
    pub(crate) live: Arc<Semaphore>,
}

/// The TLS connection a request came over (its client certificate, if any) and the peer.
#[derive(Clone, Default)]
struct Connection {
    peer_certs: PeerCerts,
    remote: String,
}

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{addr} is already in use: choose another --console-listen")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr} (--console-listen): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS settings for the console (--tls-cert, --tls-key, --tls-ca): {0}")]
    Tls(#[from] crate::trust::TrustSetupError),
}

/// Binds the console's port (a start-up error when taken, before any state is touched).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ConsoleError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => ConsoleError::InUse { addr },
            _ => ConsoleError::Listen { addr, source },
        })
}

/// Serves the console on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsoleError> {
    let acceptor = api.node.trust.tls_acceptor_for(&[b"http/1.1"])?;
    let console = Console {
        tls: acceptor.is_some(),
        api,
        live: Arc::new(Semaphore::new(CONSOLE_LIVE_STREAMS_MAX)),
    };
    let router = router(console);
    let connections = Arc::new(Semaphore::new(CONSOLE_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("never closed"),
            _ = shutdown.changed() => return Ok(()),
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "console: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let remote = remote.to_string();
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, remote, "console: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let peer_certs = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                    let connection = Connection { peer_certs, remote };
                    serve_connection(TokioIo::new(tls), router, connection).await;
                }
                None => {
                    let connection = Connection {
                        peer_certs: None,
                        remote,
                    };
                    serve_connection(TokioIo::new(stream), router, connection).await;
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, router: Router, connection: Connection)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = router.layer(axum::Extension(connection));
    let service = TowerToHyperService::new(service);
    let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .http1_only()
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "console: connection ended with an error");
    }
}

fn router(console: Console) -> Router {
    pages::routes()
        .merge(live::routes())
        .merge(assets::routes())
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

/// Adds the security headers to every response, and `Server-Timing: render;dur=MS`: how long
/// the node took to answer (what the console benchmark measures).
async fn security_headers(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("render;dur={took:.2}")) {
        headers.insert(HeaderName::from_static("server-timing"), v);
    }
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// One browser request: its credentials as the gRPC layer would see them, and its CSRF token.
pub(crate) struct Caller {
    /// `authorization` or the development `x-lockstep-actor` headers, as a gRPC call carries.
    headers: HeaderMap,
    connection: Connection,
    /// The CSRF token forms carry; `fresh` when this request had none and the response must
    /// set the cookie.
    pub(crate) csrf: String,
    csrf_fresh: bool,
    /// What the caller sent in the cookie, compared with a form's token.
    csrf_cookie: Option<String>,
    /// Whether the request carries any credentials at all.
    pub(crate) signed_in: bool,
    /// Who the request is, once the first call of the page authenticated it (`None` inside:
    /// a development caller who named no actor); later calls are only authorized.
    authenticated: std::sync::OnceLock<Option<Actor>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Self::Rejection> {
        let cookies = Cookies::parse(&parts.headers);
        let connection = parts
            .extensions
            .get::<Connection>()
            .cloned()
            .unwrap_or_default();
        let mut headers = HeaderMap::new();
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            headers.insert(header::AUTHORIZATION, auth.clone());
        } else if let Some(token) = cookies.get(TOKEN_COOKIE)
            && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(header::AUTHORIZATION, value);
        }
        let names = [
            (ACTOR_COOKIE, lockstep_proto::names::ACTOR_HEADER),
            (ROLES_COOKIE, lockstep_proto::names::ROLES_HEADER),
            (KIND_COOKIE, lockstep_proto::names::ACTOR_KIND_HEADER),
        ];
        for (cookie, name) in names {
            if let Some(value) = cookies.get(cookie).map(|v| view::query_text(&v))
                && let Ok(value) = HeaderValue::from_str(&value)
            {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        let csrf_cookie = cookies
            .get(CSRF_COOKIE)
            .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        let (csrf, csrf_fresh) = match &csrf_cookie {
            Some(t) => (t.clone(), false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        let signed_in = headers.contains_key(header::AUTHORIZATION)
            || headers.contains_key(lockstep_proto::names::ACTOR_HEADER)
            || connection.peer_certs.is_some();
        Ok(Caller {
            headers,
            connection,
            csrf,
            csrf_fresh,
            csrf_cookie,
            signed_in,
            authenticated: std::sync::OnceLock::new(),
        })
    }
}

impl Caller {
    /// Admits this request as a call of the gRPC `method`, as the gRPC layer does: the first
    /// call of a page authenticates it (once: a JWT is verified once per page), every call is
    /// authorized for its method, and a refusal is in the security log.
    pub(crate) fn admit(&self, console: &Console, method: &str) -> Result<Option<Actor>, Refused> {
        let node = &console.api.node;
        let remote = &self.connection.remote;
        let actor = match self.authenticated.get() {
            Some(actor) => actor.clone(),
            None => {
                let actor = node
                    .trust
                    .authenticate_logged(
                        &node.security,
                        method,
                        &self.headers,
                        self.connection.peer_certs.as_deref().map(|c| c.as_slice()),
                        remote,
                    )
                    .map_err(Refused::from)?;
                self.authenticated.get_or_init(|| actor).clone()
            }
        };
        node.trust
            .authorize(&node.security, method, actor.as_ref(), remote)
            .map_err(Refused::from)?;
        Ok(actor)
    }

    /// The authenticated actor, once a call of this page admitted the request.
    pub(crate) fn actor(&self) -> Option<&Actor> {
        self.authenticated.get().and_then(Option::as_ref)
    }

    /// A gRPC request carrying this caller's actor, for `method`.
    pub(crate) fn request<T>(
        &self,
        console: &Console,
        method: &str,
        message: T,
    ) -> Result<tonic::Request<T>, Refused> {
        let actor = self.admit(console, method)?;
        let mut request = tonic::Request::new(message);
        if let Some(actor) = actor {
            request.extensions_mut().insert(Authenticated(actor));
        }
        Ok(request)
    }

    /// Refuses a form whose CSRF token is not this browser's.
    pub(crate) fn check_csrf(&self, submitted: &str) -> Result<(), Refused> {
        let matches = self.csrf_cookie.as_deref().is_some_and(|cookie| {
            cookie.len() == submitted.len()
                && cookie
                    .bytes()
                    .zip(submitted.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if matches {
            Ok(())
        } else {
            Err(Refused {
                status: StatusCode::FORBIDDEN,
                code: "CSRF".into(),
                message: "the form's CSRF token does not match this browser's: reload the page and submit it again".into(),
                earliest_at: None,
            })
        }
    }

    /// Sets the CSRF cookie on `response` when this request came without one.
    pub(crate) fn finish(&self, console: &Console, mut response: Response) -> Response {
        if self.csrf_fresh {
            let cookie = cookie(console, CSRF_COOKIE, &self.csrf, true);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        response
    }
}

/// A `Set-Cookie` value: path `/`, SameSite=Strict, HttpOnly, and Secure over TLS.
fn cookie(console: &Console, name: &str, value: &str, keep: bool) -> String {
    let secure = if console.tls { "; Secure" } else { "" };
    let age = if keep { "" } else { "; Max-Age=0" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}")
}

/// A refusal or error shown to the person: its code, what was wrong, and when a gate opens.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) earliest_at: Option<String>,
}

impl From<tonic::Status> for Refused {
    fn from(status: tonic::Status) -> Refused {
        use tonic_types::StatusExt;
        let info = status.get_details_error_info();
        let code = info
            .as_ref()
            .map(|i| i.reason.clone())
            .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase());
        let earliest_at =
            info.and_then(|i| i.metadata.get(lockstep_proto::names::EARLIEST_AT).cloned());
        let http = match status.code() {
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => {
                StatusCode::CONFLICT
            }
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refused {
            status: http,
            code,
            message: status.message().to_string(),
            earliest_at,
        }
    }
}

impl Refused {
    pub(crate) fn bad_request(message: impl Into<String>) -> Refused {
        Refused {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_REQUEST".into(),
            message: message.into(),
            earliest_at: None,
        }
    }

    /// Whether the caller must sign in (or sign in again) first.
    fn needs_signin(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED
    }

    /// The refusal as a page, or a trip to the sign-in page when no one is signed in.
    pub(crate) fn page(self, caller: &Caller, console: &Console) -> Response {
        if self.needs_signin() && !caller.signed_in {
            return Redirect::to("/signin").into_response();
        }
        let status = self.status;
        let body = view::layout("Refused", caller, None, view::refusal(&self));
        let mut response = view::page(body);
        *response.status_mut() = status;
        caller.finish(console, response)
    }
}

/// The request's cookies (the few the console sets).
struct Cookies(Vec<(String, String)>);

impl Cookies {
    fn parse(headers: &HeaderMap) -> Cookies {
        let mut all = Vec::new();
        for value in headers.get_all(header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for pair in text.split(';') {
                if let Some((name, value)) = pair.trim().split_once('=') {
                    all.push((name.trim().to_string(), value.trim().to_string()));
                }
            }
        }
        Cookies(all)
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_round_trip_through_percent_encoding() {
        for text in ["alice", "approver,finance", "a b;c=d%", "ünï"] {
            let encoded = view::query_value(text);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b','),
                "{encoded}"
            );
            assert_eq!(view::query_text(&encoded), text);
        }
    }

    #[test]
    fn refusals_keep_their_code_and_gate() {
        let refusal = lockstep_core::Refusal {
            code: lockstep_core::RefusalCode::GateNotYetOpen,
            message: "not before".into(),
            predicate: None,
            earliest_at: Some(lockstep_core::Timestamp::from_millis(1_000)),
        };
        let refused = Refused::from(crate::status::refusal(&refusal));
        assert_eq!(refused.code, "GATE_NOT_YET_OPEN");
        assert_eq!(refused.message, "not before");
        assert!(refused.earliest_at.is_some());
        assert_eq!(refused.status, StatusCode::CONFLICT);
    }
}
