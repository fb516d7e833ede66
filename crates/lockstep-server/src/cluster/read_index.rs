//! Linearizable reads share read indexes. A read index costs the leader a quorum round
//! (openraft's `ensure_linearizable` sends a heartbeat to every follower and waits for a
//! majority), so concurrent reads ask for one together: every read that arrives while a
//! round is running waits for the *next* round, which starts after it arrived, and is
//! answered by it. A round that started before a read arrived never answers it: its index
//! could miss a write acknowledged just before the read.
//!
//! Each round runs the round of the latest read to arrive: on a follower a round asks the
//! leader a read arrived knowing of, and after a leader change the next round must ask the
//! new one, even while reads keep arriving (any leader's confirmed index serves a read that
//! arrived before the round started).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The answer of one round, given to every read it serves.
pub type RoundResult<E> = Result<u64, E>;

type Waiter<E> = oneshot::Sender<RoundResult<E>>;

/// One round: asks for a read index.
type Round<E> = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = RoundResult<E>> + Send>> + Send + Sync>;

/// Reads waiting for the next round, the round the latest of them brought, and whether a
/// round is running.
struct Queue<E> {
    waiting: Vec<Waiter<E>>,
    round: Option<Round<E>>,
    running: bool,
}

/// Shares rounds of `round` among concurrent callers. Rounds run one at a time in a task of
/// their own, so a caller that gives up (a cancelled RPC) never strands the others.
pub struct SharedReadIndex<E> {
    queue: Arc<Mutex<Queue<E>>>,
    /// Rounds run so far and reads they answered (for tests and metrics).
    pub stats: Arc<RoundStats>,
}

/// Rounds run and reads they answered since start.
#[derive(Debug, Default)]
pub struct RoundStats {
    pub rounds: std::sync::atomic::AtomicU64,
    pub reads: std::sync::atomic::AtomicU64,
}

impl<E> std::fmt::Debug for SharedReadIndex<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReadIndex")
            .field("stats", &self.stats)
            .finish()
    }
}

impl<E> Default for SharedReadIndex<E> {
    fn default() -> Self {
        SharedReadIndex {
            queue: Arc::new(Mutex::new(Queue {
                waiting: Vec::new(),
                round: None,
                running: false,
            })),
            stats: Arc::default(),
        }
    }
}

impl<E: Clone + Send + 'static> SharedReadIndex<E> {
    /// A read index from a round that started after this call: a round runs now if none is
    /// running, and the next one after it otherwise, each the `round` of the latest caller;
    /// `gone` answers when the round task was dropped without an answer (the runtime
    /// shutting down).
    pub async fn get<F, Fut>(&self, round: F, gone: E) -> RoundResult<E>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RoundResult<E>> + Send + 'static,
    {
        let round: Round<E> = Arc::new(move || Box::pin(round()));
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.waiting.push(tx);
            q.round = Some(round);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let queue = Arc::clone(&self.queue);
            let stats = Arc::clone(&self.stats);
            tokio::spawn(async move {
                loop {
                    // Everyone taken here arrived before this round starts.
                    let (waiting, round) = {
                        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                        if q.waiting.is_empty() {
                            q.running = false;
                            q.round = None;
                            return;
                        }
                        let round = q.round.clone().expect("a waiting read brought its round");
                        (std::mem::take(&mut q.waiting), round)
                    };
                    let answer = round().await;
                    stats
                        .rounds
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stats
                        .reads
                        .fetch_add(waiting.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    for w in waiting {
                        let _ = w.send(answer.clone());
                    }
                }
            });
        }
        rx.await.unwrap_or(Err(gone))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// Reads arriving during a round are answered by the next round, never by the one that
    /// was already running; many concurrent reads share few rounds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_is_answered_only_by_a_round_that_started_after_it() {
        let shared: Arc<SharedReadIndex<String>> = Arc::new(SharedReadIndex::default());
        // Each round returns the number of rounds started before it (its "index") and
        // takes 20 ms, like a quorum round.
        let started = Arc::new(AtomicU64::new(0));
        let round = {
            let started = Arc::clone(&started);
            move || {
                let started = Arc::clone(&started);
                async move {
                    let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<u64, String>(n)
                }
            }
        };
        let round = Arc::new(round);
        let mut reads = Vec::new();
        for _ in 0..50 {
            let shared = Arc::clone(&shared);
            let started = Arc::clone(&started);
            let round = Arc::clone(&round);
            reads.push(tokio::spawn(async move {
                let before = started.load(Ordering::SeqCst);
                let got = shared.get(move || round(), "gone".into()).await.unwrap();
                (before, got)
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for r in reads {
            let (before, got) = r.await.unwrap();
            assert!(
                got > before,
                "answered by round {got}, but {before} rounds had started before the read"
            );
        }
        let rounds = shared.stats.rounds.load(Ordering::SeqCst);
        assert_eq!(shared.stats.reads.load(Ordering::SeqCst), 50);
        assert!(
            rounds < 50 / 2,
            "50 reads over ~50 ms shared {rounds} rounds"
        );
    }

    /// After a leader change the next round asks the new leader, even while reads keep
    /// arriving: a round is the round of the latest read to arrive, not of the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_follow_the_latest_read_not_the_first() {
        let shared: Arc<SharedReadIndex<String>> = Arc::new(SharedReadIndex::default());
        // A read that knows only the old leader: its round fails after 20 ms.
        let started = Arc::new(tokio::sync::Notify::new());
        let stale = {
            let (shared, started) = (Arc::clone(&shared), Arc::clone(&started));
            tokio::spawn(async move {
                let old_leader = move || {
                    let started = Arc::clone(&started);
                    async move {
                        started.notify_one();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Err::<u64, String>("not leader".into())
                    }
                };
                shared.get(old_leader, "gone".into()).await
            })
        };
        started.notified().await;
        // Reads keep arriving while it runs, now knowing the new leader, whose rounds answer 7.
        let mut fresh = Vec::new();
        for _ in 0..20 {
            let shared = Arc::clone(&shared);
            fresh.push(tokio::spawn(async move {
                let new_leader = || async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<u64, String>(7)
                };
                shared.get(new_leader, "gone".into()).await
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for r in fresh {
            assert_eq!(
                r.await.unwrap(),
                Ok(7),
                "a read that knew the new leader was answered by a round of the old one"
            );
        }
        assert_eq!(stale.await.unwrap(), Err("not leader".to_string()));
    }

    /// An error of a round reaches every read it served.
    #[tokio::test]
    async fn a_failed_round_fails_its_reads() {
        let shared: SharedReadIndex<String> = SharedReadIndex::default();
        let got = shared
            .get(|| async { Err("not leader".to_string()) }, "gone".into())
            .await;
        assert_eq!(got, Err("not leader".to_string()));
    }
}
