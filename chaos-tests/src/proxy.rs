//! A TCP proxy for one directed peer link: node A dials node B through it (`--peer-via`), so
//! it carries A's requests to B and B's answers. It passes bytes, holds them (a blackhole: the
//! connection stays open and nothing gets through, like dropped packets; held bytes are
//! delivered if the link heals before either side gives up), delays them, or resets the
//! link (every connection closed at once and new ones closed as soon as they arrive, as a
//! firewall that rejects, or a middlebox that drops its connection state, does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    /// Nothing gets through; connections are accepted but held.
    Drop,
    /// Every chunk is delivered this much later (order kept).
    Delay(Duration),
    /// Every open connection is closed at once, and new ones as soon as they are accepted:
    /// both ends see the connection end instead of a silent peer.
    Reset,
}

#[derive(Debug)]
pub struct Proxy {
    pub listen: SocketAddr,
    mode: watch::Sender<LinkMode>,
    task: JoinHandle<()>,
    /// Bytes delivered, both directions.
    bytes: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let (mode, rx) = watch::channel(LinkMode::Pass);
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&bytes);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(connection(inbound, upstream, rx, Arc::clone(&counter)));
            }
        });
        Ok(Proxy {
            listen,
            mode,
            task,
            bytes,
        })
    }

    /// Bytes delivered so far (both directions): proof that the link is used.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the link drops everything. Returns false if the proxy is gone.
async fn wait_open(rx: &mut watch::Receiver<LinkMode>) -> bool {
    loop {
        if *rx.borrow_and_update() != LinkMode::Drop {
            return true;
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

async fn connection(
    inbound: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<LinkMode>,
    bytes: Arc<AtomicU64>,
) {
    // A new connection during a partition is held, not refused: to the dialer the peer is
    // silent, as behind a firewall that drops packets.
    if !wait_open(&mut rx).await || *rx.borrow() == LinkMode::Reset {
        // Dropping `inbound` closes it.
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let mut reset = rx.clone();
    let a = tokio::spawn(pump(ir, ow, rx.clone(), Arc::clone(&bytes)));
    let b = tokio::spawn(pump(or, iw, rx, bytes));
    let (stop_a, stop_b) = (a.abort_handle(), b.abort_handle());
    // When one direction ends, end the other: the connection is gone. A reset ends both.
    tokio::select! {
        _ = a => {}
        _ = b => {}
        _ = reset.wait_for(|m| *m == LinkMode::Reset) => {}
    }
    // Aborting drops the halves, which closes both sockets.
    stop_a.abort();
    stop_b.abort();
}

/// One direction: a reader stamps chunks, a writer delivers them when the link allows.
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    rx: watch::Receiver<LinkMode>,
    bytes_out: Arc<AtomicU64>,
) where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let (tx, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let read = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut rx = rx;
    while let Some((at, bytes)) = chunks.recv().await {
        if !wait_open(&mut rx).await {
            break;
        }
        let mode = *rx.borrow();
        if let LinkMode::Delay(d) = mode {
            tokio::time::sleep_until(at + d).await;
        }
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
        bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    read.abort();
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut got)).await {
            Ok(Ok(_)) => {
                assert_eq!(got, msg);
                Some(started.elapsed())
            }
            _ => None,
        }
    }

    #[tokio::test]
    async fn passes_drops_and_delays() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.listen).await.unwrap();
        let fast = round_trip(&mut s, b"hello", Duration::from_secs(2)).await;
        assert!(
            fast.is_some_and(|d| d < Duration::from_millis(200)),
            "{fast:?}"
        );

        proxy.set(LinkMode::Drop);
        assert_eq!(proxy.mode(), LinkMode::Drop);
        assert!(
            round_trip(&mut s, b"lost?", Duration::from_millis(300))
                .await
                .is_none()
        );
        // A new connection in a partition is held too.
        let mut s2 = TcpStream::connect(proxy.listen).await.unwrap();
        assert!(
            round_trip(&mut s2, b"new", Duration::from_millis(300))
                .await
                .is_none()
        );

        // Healing delivers what was held.
        proxy.set(LinkMode::Pass);
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"lost?");
        let mut got = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(2), s2.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"new");

        // Delay applies in each direction.
        proxy.set(LinkMode::Delay(Duration::from_millis(150)));
        let slow = round_trip(&mut s, b"slow", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(slow >= Duration::from_millis(300), "{slow:?}");
        assert!(slow < Duration::from_secs(1), "{slow:?}");
    }

    #[tokio::test]
    async fn a_reset_closes_open_and_new_connections_until_it_heals() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.listen).await.unwrap();
        assert!(
            round_trip(&mut s, b"hi", Duration::from_secs(2))
                .await
                .is_some()
        );
        proxy.set(LinkMode::Reset);
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the open connection is closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut s2 = TcpStream::connect(proxy.listen).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(2), s2.read(&mut buf))
            .await
            .expect("a new connection is closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        proxy.set(LinkMode::Pass);
        let mut s3 = TcpStream::connect(proxy.listen).await.unwrap();
        assert!(
            round_trip(&mut s3, b"back", Duration::from_secs(2))
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_dead_upstream_closes_the_connection() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxy = Proxy::start(port).await.unwrap();
        let mut s = TcpStream::connect(proxy.listen).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
    }
}
