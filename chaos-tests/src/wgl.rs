//! A Wing–Gong linearizability checker with Lowe's memoization (the algorithm of Knossos'
//! `wgl` and of porcupine; no maintained Rust crate implements it).
//!
//! A history is a set of operations with a call and a return time. It is linearizable against
//! a sequential [`Model`] if every operation can be placed at one instant between its call
//! and its return so that the sequence of placed operations is legal for the model. An
//! operation whose outcome is unknown is given a return time of [`u64::MAX`] (it may take
//! effect at any time after its call); one that may also not have happened at all is simply
//! left out by the caller when nothing else depends on it.
//!
//! The search walks a list of call and return entries ordered by time: at a call it tries to
//! linearize that operation now (if the model accepts it and the resulting (set of linearized
//! operations, state) pair is new), at a return of an operation not yet linearized it
//! backtracks. It is exponential in the worst case and fast on realistic per-key histories.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Op: Debug;
    fn init(&self) -> Self::State;
    /// The state after `op` (which carries its own observed output), or `None` if `op` cannot
    /// happen in `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// An operation of the history.
#[derive(Clone, Debug)]
pub struct Entry<O> {
    pub call: u64,
    /// [`u64::MAX`]: never returned (may take effect at any time after `call`).
    pub ret: u64,
    pub op: O,
}

/// Why a history is not linearizable: the longest legal prefix the search found, and the
/// operations that could not be placed after it.
#[derive(Clone, Debug)]
pub struct Counterexample<S> {
    /// Indexes (into the input) of the longest linearized prefix, in order.
    pub prefix: Vec<usize>,
    /// The model state after that prefix.
    pub state: S,
    /// Operations not linearized at that point whose calls had happened.
    pub pending: Vec<usize>,
}

#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return node.
    ret: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// Checks a history against a model. `Ok(order)` is a linearization (indexes into `ops`).
pub fn check<M: Model>(
    model: &M,
    ops: &[Entry<M::Op>],
) -> Result<Vec<usize>, Counterexample<M::State>> {
    let n = ops.len();
    // Events: (time, is_return, op). At equal times calls come first, so operations that touch
    // at an instant count as concurrent (the permissive reading).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in ops.iter().enumerate() {
        events.push((e.call, false, i));
        events.push((e.ret.max(e.call), true, i));
    }
    events.sort();
    // Node 0 is the head sentinel.
    let mut nodes: Vec<Node> = Vec::with_capacity(2 * n + 1);
    nodes.push(Node {
        op: NIL,
        is_call: false,
        ret: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut ret_node = vec![NIL; n];
    let mut call_node = vec![NIL; n];
    for (k, &(_, is_ret, op)) in events.iter().enumerate() {
        let idx = k + 1;
        nodes.push(Node {
            op,
            is_call: !is_ret,
            ret: NIL,
            prev: idx - 1,
            next: if k + 1 < events.len() { idx + 1 } else { NIL },
        });
        if is_ret {
            ret_node[op] = idx;
        } else {
            call_node[op] = idx;
        }
    }
    if !events.is_empty() {
        nodes[0].next = 1;
    }
    for op in 0..n {
        let c = call_node[op];
        nodes[c].ret = ret_node[op];
    }

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut best: Option<(Vec<usize>, M::State)> = None;
    let mut entry = nodes[0].next;

    let lift = |nodes: &mut Vec<Node>, c: usize| {
        for x in [c, nodes[c].ret] {
            let (p, nx) = (nodes[x].prev, nodes[x].next);
            nodes[p].next = nx;
            if nx != NIL {
                nodes[nx].prev = p;
            }
        }
    };
    let unlift = |nodes: &mut Vec<Node>, c: usize| {
        for x in [nodes[c].ret, c] {
            let (p, nx) = (nodes[x].prev, nodes[x].next);
            nodes[p].next = x;
            if nx != NIL {
                nodes[nx].prev = x;
            }
        }
    };

    while nodes[0].next != NIL {
        if entry != NIL && nodes[entry].is_call {
            let op = nodes[entry].op;
            let mut placed = false;
            if let Some(next_state) = model.step(&state, &ops[op].op) {
                let mut bits = linearized.clone();
                bits[op / 64] |= 1 << (op % 64);
                if cache.insert((bits.clone(), next_state.clone())) {
                    stack.push((entry, state.clone()));
                    state = next_state;
                    linearized = bits;
                    lift(&mut nodes, entry);
                    placed = true;
                }
            }
            if placed {
                if best.as_ref().is_none_or(|(p, _)| stack.len() > p.len()) {
                    best = Some((
                        stack.iter().map(|(c, _)| nodes[*c].op).collect(),
                        state.clone(),
                    ));
                }
                entry = nodes[0].next;
            } else {
                entry = nodes[entry].next;
            }
        } else {
            // A return whose operation is not linearized yet (or the end): backtrack.
            let Some((c, previous)) = stack.pop() else {
                let (prefix, st) = best.unwrap_or_else(|| (Vec::new(), model.init()));
                let done: HashSet<usize> = prefix.iter().copied().collect();
                let pending = (0..n).filter(|i| !done.contains(i)).collect();
                return Err(Counterexample {
                    prefix,
                    state: st,
                    pending,
                });
            };
            let op = nodes[c].op;
            state = previous;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut nodes, c);
            entry = nodes[c].next;
        }
    }
    Ok(stack.iter().map(|(c, _)| nodes[*c].op).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: write(v) sets it, read(v) observes it.
    struct Register;
    #[derive(Debug, Clone)]
    enum R {
        W(u32),
        Rd(u32),
    }
    impl Model for Register {
        type State = u32;
        type Op = R;
        fn init(&self) -> u32 {
            0
        }
        fn step(&self, s: &u32, op: &R) -> Option<u32> {
            match op {
                R::W(v) => Some(*v),
                R::Rd(v) => (v == s).then_some(*s),
            }
        }
    }

    fn e(call: u64, ret: u64, op: R) -> Entry<R> {
        Entry { call, ret, op }
    }

    #[test]
    fn sequential_history_passes() {
        let h = vec![
            e(0, 1, R::W(1)),
            e(2, 3, R::Rd(1)),
            e(4, 5, R::W(2)),
            e(6, 7, R::Rd(2)),
        ];
        assert_eq!(check(&Register, &h).unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        // The write overlaps both reads: one sees the old value, the other the new.
        let h = vec![e(0, 10, R::W(1)), e(1, 2, R::Rd(0)), e(3, 4, R::Rd(1))];
        assert!(check(&Register, &h).is_ok());
    }

    #[test]
    fn stale_read_fails() {
        // The write completed before the read began, yet the read saw the old value.
        let h = vec![e(0, 1, R::W(1)), e(2, 3, R::Rd(0))];
        let cx = check(&Register, &h).unwrap_err();
        assert_eq!(cx.prefix, vec![0]);
        assert_eq!(cx.pending, vec![1]);
    }

    #[test]
    fn new_then_old_read_fails() {
        // Two sequential reads during one long write: once the new value was seen, the old
        // one cannot come back.
        let h = vec![e(0, 10, R::W(1)), e(1, 2, R::Rd(1)), e(3, 4, R::Rd(0))];
        assert!(check(&Register, &h).is_err());
    }

    #[test]
    fn unknown_write_may_take_effect_late() {
        // A write that never returned may linearize after later operations.
        let h = vec![
            e(0, u64::MAX, R::W(1)),
            e(5, 6, R::Rd(0)),
            e(7, 8, R::W(2)),
            e(9, 10, R::Rd(1)),
        ];
        assert_eq!(check(&Register, &h).unwrap(), vec![1, 2, 0, 3]);
    }

    #[test]
    fn lost_write_fails() {
        // Two acknowledged writes in real-time order; a later read sees neither.
        let h = vec![e(0, 1, R::W(1)), e(2, 3, R::W(2)), e(4, 5, R::Rd(1))];
        assert!(check(&Register, &h).is_err());
    }

    #[test]
    fn empty_history_passes() {
        assert!(check(&Register, &[]).unwrap().is_empty());
    }

    #[test]
    fn many_concurrent_operations_stay_fast() {
        // 12 overlapping writes of distinct values and a final read of one of them: the
        // search must find an order that ends with that write (memoization keeps it small).
        let mut h: Vec<Entry<R>> = (0..12)
            .map(|i| e(i, 1000 + i, R::W(i as u32 + 1)))
            .collect();
        h.push(e(2000, 2001, R::Rd(7)));
        let started = std::time::Instant::now();
        assert!(check(&Register, &h).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A value nobody wrote cannot be read.
        h.pop();
        h.push(e(2000, 2001, R::Rd(99)));
        assert!(check(&Register, &h).is_err());
    }
}
