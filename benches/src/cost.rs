//! The cost of one operation: CPU time and context switches of each process (from /proc), and
//! the fsyncs, Raft entries, proposed requests and AppendEntries RPCs of each node (from its
//! Prometheus endpoint), as deltas over a measured window divided by the window's operations.
//!
//! The drivers take a [`Sample`] right before and right after each measured window (after the
//! warm-up, so the warm-up is excluded), and [`Cost::between`] divides the deltas. Whatever
//! cannot be read is absent (`None`, `-` in the table), never an error: a remote node's /proc,
//! a node without a metrics endpoint (etcd is probed through /proc only), a counter an older
//! lockstepd does not export (e.g. the binaries of commit 4410ace, for A/B runs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Clock ticks per second of utime and stime in /proc/<pid>/stat. This is
/// sysconf(_SC_CLK_TCK); it is assumed to be 100, its value on Linux for x86-64 and arm64,
/// rather than read, so that the bench needs no libc binding.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// Longest wait for one node's /metrics: a node too stalled to answer is reported absent
/// rather than hold up the run.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Synced RocksDB writes: each is one WAL fsync (log appends, votes, purges).
const SYNCED_WRITES: &str = "lockstep_store_synced_writes_total";
/// Raft entries this node proposed: only the leader proposes.
const ENTRIES_PROPOSED: &str = "lockstep_raft_entries_proposed_total";
/// Client requests this node proposed, alone or in group-commit batches.
const REQUESTS_PROPOSED: &str = "lockstep_requests_proposed_total";
/// AppendEntries RPCs this node sent, heartbeats included.
const APPEND_ENTRIES_SENT: &str = "lockstep_raft_append_entries_sent_total";

/// The processes and metrics endpoints a [`Sample`] reads, one [`Target`] per node.
#[derive(Clone, Debug, Default)]
pub(crate) struct Probe {
    pub(crate) nodes: Vec<Target>,
}

/// One node: its process id when it runs on this machine, its `/metrics` address when known.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub(crate) pid: Option<u32>,
    pub(crate) metrics: Option<SocketAddr>,
}

/// CPU time and context switches of one process at one moment.
#[derive(Clone, Debug, Default)]
struct Process {
    /// utime + stime of all its threads, exited ones included, in clock ticks.
    cpu_ticks: Option<u64>,
    /// Voluntary + involuntary context switches of each live thread, by thread id.
    /// /proc/<pid>/status counts the main thread only, and a tokio server's main thread
    /// mostly sleeps: every thread's own status is read instead.
    switches: Option<BTreeMap<u32, u64>>,
}

impl Process {
    /// Reads /proc/<pid>; `pid` is a process id or `self`.
    fn read(pid: &str) -> Process {
        Process {
            cpu_ticks: std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| cpu_ticks(&stat)),
            switches: thread_switches(pid),
        }
    }

    fn cpu_us_until(&self, later: &Process) -> Option<f64> {
        let ticks = later.cpu_ticks?.checked_sub(self.cpu_ticks?)?;
        Some(ticks as f64 * 1e6 / CLOCK_TICKS_PER_SECOND)
    }

    /// Switches of the threads alive at `later`, counted from zero for those started since.
    /// A thread that exited in between takes its switches with it (undercounted).
    fn switches_until(&self, later: &Process) -> Option<f64> {
        let (before, after) = (self.switches.as_ref()?, later.switches.as_ref()?);
        let switches: u64 = after
            .iter()
            .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
            .sum();
        Some(switches as f64)
    }
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // Field 2, the command name, is in parentheses and may hold spaces: count from after it.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// voluntary_ctxt_switches + nonvoluntary_ctxt_switches of a /proc/.../status file.
fn switches(status: &str) -> Option<u64> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

/// The context switches of every thread of `pid`, from /proc/<pid>/task/<tid>/status.
fn thread_switches(pid: &str) -> Option<BTreeMap<u32, u64>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut by_thread = BTreeMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread that exits between the listing and the read is left out.
        if let Some(n) = std::fs::read_to_string(task.path().join("status"))
            .ok()
            .and_then(|status| switches(&status))
        {
            by_thread.insert(tid, n);
        }
    }
    // No thread read: the process is gone.
    (!by_thread.is_empty()).then_some(by_thread)
}

/// The counters of one node's `/metrics`; each is absent when not exported.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    synced_writes: Option<f64>,
    entries_proposed: Option<f64>,
    requests_proposed: Option<f64>,
    append_entries_sent: Option<f64>,
}

impl Counters {
    fn parse(text: &str) -> Counters {
        Counters {
            synced_writes: counter(text, SYNCED_WRITES),
            entries_proposed: counter(text, ENTRIES_PROPOSED),
            requests_proposed: counter(text, REQUESTS_PROPOSED),
            append_entries_sent: counter(text, APPEND_ENTRIES_SENT),
        }
    }
}

/// The value of the unlabelled sample `name value` in Prometheus text format.
fn counter(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        // The name exactly: not a longer name that starts with it, nor a labelled sample.
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// `GET /metrics` over a plain HTTP/1.1 connection; None unless the node answers 200 within
/// [`SCRAPE_TIMEOUT`].
async fn scrape(addr: SocketAddr) -> Option<String> {
    let raw = tokio::time::timeout(SCRAPE_TIMEOUT, fetch(addr))
        .await
        .ok()??;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    if chunked {
        dechunk(body)
    } else {
        Some(body.to_string())
    }
}

async fn fetch(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    Some(raw)
}

/// Decodes an HTTP/1.1 chunked body; None if it is truncated or malformed.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// One node at one moment.
#[derive(Clone, Debug, Default)]
struct NodeSample {
    process: Process,
    counters: Counters,
}

/// The counters of every node of a [`Probe`], and of the bench process, at one moment.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    at: Instant,
    nodes: Vec<NodeSample>,
    bench: Process,
}

impl Sample {
    pub(crate) async fn take(probe: &Probe) -> Sample {
        // Every node is scraped at once, so that their counters are read at nearly the same
        // moment and one slow node delays the sample by at most SCRAPE_TIMEOUT.
        let scrapes: Vec<_> = probe
            .nodes
            .iter()
            .map(|t| t.metrics.map(|addr| tokio::spawn(scrape(addr))))
            .collect();
        let at = Instant::now();
        let bench = Process::read("self");
        let mut nodes = Vec::with_capacity(probe.nodes.len());
        for (target, scraped) in probe.nodes.iter().zip(scrapes) {
            let process = target
                .pid
                .map(|pid| Process::read(&pid.to_string()))
                .unwrap_or_default();
            let body = match scraped {
                Some(handle) => handle.await.ok().flatten(),
                None => None,
            };
            nodes.push(NodeSample {
                process,
                counters: body.map(|b| Counters::parse(&b)).unwrap_or_default(),
            });
        }
        Sample { at, nodes, bench }
    }
}

/// One node's cost per operation over a measured window.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct NodeCost {
    /// The node's number, from 1.
    pub(crate) node: usize,
    pub(crate) cpu_us_per_op: Option<f64>,
    pub(crate) context_switches_per_op: Option<f64>,
    pub(crate) fsyncs_per_op: Option<f64>,
    pub(crate) raft_entries_per_op: Option<f64>,
    pub(crate) requests_proposed_per_op: Option<f64>,
    pub(crate) append_entries_per_op: Option<f64>,
}

/// The cost per operation of one level of a sweep. Sums and maxima over nodes are absent
/// unless every node has the figure, so that a sum over some nodes never passes for a sum
/// over all.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct Cost {
    /// The divisor: the level's successful operations.
    pub(crate) operations: u64,
    /// Time between the two samples.
    pub(crate) seconds: f64,
    /// CPU time (user + system) of every node process together, µs per operation.
    pub(crate) cpu_us_per_op: Option<f64>,
    /// Context switches (voluntary + involuntary) of every node process together.
    pub(crate) context_switches_per_op: Option<f64>,
    /// WAL fsyncs per operation of the node that did the most.
    pub(crate) fsyncs_per_op_max: Option<f64>,
    /// WAL fsyncs per operation of the leader.
    pub(crate) fsyncs_per_op_leader: Option<f64>,
    /// The leader's number (from 1): the node that proposed the most entries in the window,
    /// as only the leader proposes. Absent when no node proposed or the counter is missing.
    pub(crate) leader: Option<usize>,
    /// Raft entries proposed, summed over nodes.
    pub(crate) raft_entries_per_op: Option<f64>,
    /// Requests proposed, summed over nodes.
    pub(crate) requests_proposed_per_op: Option<f64>,
    /// AppendEntries RPCs sent, summed over nodes.
    pub(crate) append_entries_per_op: Option<f64>,
    /// The bench process itself (the clients).
    pub(crate) bench_cpu_us_per_op: Option<f64>,
    pub(crate) bench_context_switches_per_op: Option<f64>,
    pub(crate) nodes: Vec<NodeCost>,
}

/// A counter's increase; None when either reading is missing, or when it went down (the node
/// restarted and its counters began again).
fn increase(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?).filter(|d| *d >= 0.0)
}

/// The values of every node, or None when any node lacks its value (or there are no nodes).
fn every(values: impl Iterator<Item = Option<f64>>) -> Option<Vec<f64>> {
    let all: Vec<f64> = values.collect::<Option<_>>()?;
    (!all.is_empty()).then_some(all)
}

impl Cost {
    pub(crate) fn between(before: &Sample, after: &Sample, operations: u64) -> Cost {
        let per_op = |total: Option<f64>| {
            total
                .filter(|_| operations > 0)
                .map(|t| t / operations as f64)
        };
        let mut entries_proposed = Vec::new();
        let nodes: Vec<NodeCost> = before
            .nodes
            .iter()
            .zip(&after.nodes)
            .enumerate()
            .map(|(i, (b, a))| {
                let (bc, ac) = (&b.counters, &a.counters);
                let entries = increase(bc.entries_proposed, ac.entries_proposed);
                entries_proposed.push(entries);
                NodeCost {
                    node: i + 1,
                    cpu_us_per_op: per_op(b.process.cpu_us_until(&a.process)),
                    context_switches_per_op: per_op(b.process.switches_until(&a.process)),
                    fsyncs_per_op: per_op(increase(bc.synced_writes, ac.synced_writes)),
                    raft_entries_per_op: per_op(entries),
                    requests_proposed_per_op: per_op(increase(
                        bc.requests_proposed,
                        ac.requests_proposed,
                    )),
                    append_entries_per_op: per_op(increase(
                        bc.append_entries_sent,
                        ac.append_entries_sent,
                    )),
                }
            })
            .collect();
        let leader = entries_proposed
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, (*e)?)))
            .filter(|(_, e)| *e > 0.0)
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(i, _)| i);
        let sum = |f: fn(&NodeCost) -> Option<f64>| {
            every(nodes.iter().map(f)).map(|v| v.iter().sum::<f64>())
        };
        let fsyncs_per_op_max =
            every(nodes.iter().map(|n| n.fsyncs_per_op)).map(|v| v.into_iter().fold(0.0, f64::max));
        Cost {
            operations,
            seconds: after.at.saturating_duration_since(before.at).as_secs_f64(),
            cpu_us_per_op: sum(|n| n.cpu_us_per_op),
            context_switches_per_op: sum(|n| n.context_switches_per_op),
            fsyncs_per_op_max,
            fsyncs_per_op_leader: leader.and_then(|i| nodes[i].fsyncs_per_op),
            leader: leader.map(|i| i + 1),
            raft_entries_per_op: sum(|n| n.raft_entries_per_op),
            requests_proposed_per_op: sum(|n| n.requests_proposed_per_op),
            append_entries_per_op: sum(|n| n.append_entries_per_op),
            bench_cpu_us_per_op: per_op(before.bench.cpu_us_until(&after.bench)),
            bench_context_switches_per_op: per_op(before.bench.switches_until(&after.bench)),
            nodes,
        }
    }
}

/// The cost columns of the Markdown table, after the latency columns.
pub(crate) const TABLE_HEADER: &str =
    " fsync/op max | fsync/op leader | entries/op | AE/op | cpu µs/op | cs/op | bench cpu µs/op |";
/// The alignment row of [`TABLE_HEADER`].
pub(crate) const TABLE_ALIGN: &str = "---:|---:|---:|---:|---:|---:|---:|";

/// The cells of [`TABLE_HEADER`] for one level; `-` where a figure is absent.
pub(crate) fn table_cells(cost: Option<&Cost>) -> String {
    let cell = |value: Option<f64>, decimals: usize| match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".to_string(),
    };
    let Some(c) = cost else {
        return " - |".repeat(7);
    };
    format!(
        " {} | {} | {} | {} | {} | {} | {} |",
        cell(c.fsyncs_per_op_max, 2),
        cell(c.fsyncs_per_op_leader, 2),
        cell(c.raft_entries_per_op, 2),
        cell(c.append_entries_per_op, 2),
        cell(c.cpu_us_per_op, 0),
        cell(c.context_switches_per_op, 1),
        cell(c.bench_cpu_us_per_op, 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250, stime 50.
        let stat = "4242 (lock step) d) S 1 4242 4242 0 -1 4194304 900 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn switches_add_voluntary_and_involuntary() {
        let status =
            "Name:\tlockstepd\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(switches(status), Some(127));
        assert_eq!(switches("Name:\tlockstepd\n"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = Process::read("self");
        assert!(me.cpu_ticks.is_some());
        assert!(me.switches.is_some_and(|s| !s.is_empty()));
    }

    #[test]
    fn counters_match_the_exact_unlabelled_name() {
        let text = "# TYPE lockstep_raft_entries_proposed counter\n\
                    lockstep_raft_entries_proposed_total 1234\n\
                    lockstep_requests_proposed_total{x=\"y\"} 9\n\
                    lockstep_store_synced_writes_total_extra 5\n";
        let c = Counters::parse(text);
        assert_eq!(c.entries_proposed, Some(1234.0));
        assert_eq!(c.requests_proposed, None);
        assert_eq!(c.synced_writes, None);
        assert_eq!(c.append_entries_sent, None);
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
        assert_eq!(dechunk("5\r\nhel"), None);
    }

    fn node(cpu_ticks: u64, synced: f64, entries: Option<f64>) -> NodeSample {
        NodeSample {
            process: Process {
                cpu_ticks: Some(cpu_ticks),
                switches: Some(BTreeMap::from([(1, cpu_ticks * 2)])),
            },
            counters: Counters {
                synced_writes: Some(synced),
                entries_proposed: entries,
                requests_proposed: entries,
                append_entries_sent: None,
            },
        }
    }

    #[test]
    fn cost_divides_deltas_and_finds_the_leader() {
        let at = Instant::now();
        let before = Sample {
            at,
            nodes: vec![node(100, 10.0, Some(0.0)), node(100, 10.0, Some(50.0))],
            bench: Process::default(),
        };
        let after = Sample {
            at,
            nodes: vec![node(110, 60.0, Some(0.0)), node(130, 110.0, Some(100.0))],
            bench: Process::default(),
        };
        let c = Cost::between(&before, &after, 100);
        assert_eq!(c.leader, Some(2));
        assert_eq!(c.fsyncs_per_op_leader, Some(1.0));
        assert_eq!(c.fsyncs_per_op_max, Some(1.0));
        assert_eq!(c.raft_entries_per_op, Some(0.5));
        // 40 ticks of 10 ms over 100 operations.
        assert_eq!(c.cpu_us_per_op, Some(4000.0));
        assert_eq!(c.context_switches_per_op, Some(0.8));
        // Missing on every node, and for the bench: absent, not zero.
        assert_eq!(c.append_entries_per_op, None);
        assert_eq!(c.bench_cpu_us_per_op, None);
        assert!(Cost::between(&before, &after, 0).cpu_us_per_op.is_none());
    }
}
