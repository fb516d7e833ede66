//! The node's TLS accept loop.
//!
//! tonic can terminate TLS itself, but it drops a connection whose handshake fails without a
//! trace outside its debug log. Lockstep accepts TLS here instead, with the same rustls
//! settings ([`crate::trust::Trust::tls_acceptor`]), so that every failed handshake (a peer
//! or client certificate from another CA, an expired certificate, a plain-text client) is a
//! `tls` entry in the security log with the caller's address. Successful connections go to
//! tonic as `tokio_rustls` streams, which tonic knows how to read peer certificates from.
//!
//! Handshakes run concurrently, each in its own task, bounded by [`HANDSHAKES_IN_FLIGHT_MAX`]
//! and [`HANDSHAKE_TIMEOUT`], so a slow or silent caller cannot hold up anyone else.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::security_log::{RefusalKind, SecurityLog};

/// Handshakes in progress at once; further connections wait in the listen backlog.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// A caller that has not finished its handshake by then is dropped (and logged).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Established connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What the security log says about a failed handshake; `None` when there is nothing to say
/// (the caller closed the connection before sending anything: a port probe).
fn refusal(error: &io::Error) -> Option<(&'static str, String)> {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        return None;
    }
    Some(("TLS_HANDSHAKE_FAILED", error.to_string()))
}

/// Accepts connections on `listener` and yields those whose TLS handshake succeeded; failed
/// handshakes are recorded in the node's security log. Stops when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    security: Arc<SecurityLog>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&handshakes).acquire_owned() => permit.expect("never closed"),
                _ = tx.closed() => return,
            };
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            // No Nagle delay on small responses (tonic sets this only on sockets it accepts).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let security = Arc::clone(&security);
            tokio::spawn(async move {
                let _permit = permit;
                let remote = remote.to_string();
                let (code, reason) = match tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                        return;
                    }
                    Ok(Err(e)) => match refusal(&e) {
                        Some(refused) => refused,
                        None => {
                            tracing::debug!(%remote, error = %e, "connection closed before a TLS handshake");
                            return;
                        }
                    },
                    Err(_) => (
                        "TLS_HANDSHAKE_TIMEOUT",
                        format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                    ),
                };
                security.record(
                    RefusalKind::Tls,
                    "TLS handshake",
                    "",
                    &remote,
                    code,
                    &reason,
                );
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_is_not_a_refusal_but_a_bad_certificate_is() {
        assert!(refusal(&io::Error::new(io::ErrorKind::UnexpectedEof, "eof")).is_none());
        let (code, reason) = refusal(&io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ))
        .unwrap();
        assert_eq!(code, "TLS_HANDSHAKE_FAILED");
        assert!(reason.contains("UnknownIssuer"));
    }
}
