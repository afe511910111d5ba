//! A DLM test double: several simulated nodes sharing one lockspace in one
//! process, deterministic (nothing happens unless a test calls in), keeping
//! the Linux DLM's semantics (fs/dlm/lock.c) where our protocol depends on
//! them:
//!
//! - the mode compatibility matrix (`Mode::compatible`);
//! - grant, convert and wait queues: a conversion compatible with every
//!   granted mode is granted at once unless QUECVT is set and conversions
//!   are waiting; a new request only if nothing waits; once queued,
//!   conversions are granted first-in-first-out, before any new request;
//! - blocking ASTs to holders whose granted mode is incompatible with a
//!   request that has to wait, and, after grants, to holders incompatible
//!   with the highest mode still waiting (once per grant and mode);
//! - the LVB operations table: read on a grant that is not a down-conversion
//!   from PW/EX, written by a down-conversion (or unlock) from PW/EX, both
//!   only with VALBLK; a holder dying in PW/EX sets VALNOTVALID until the
//!   next write;
//! - NOQUEUE (EAGAIN), cancel (ECANCEL, the conversion keeps its granted
//!   mode), QUECVT only on up-conversions, conversion deadlock (EDEADLK);
//! - node death: the node's locks vanish, waiting requests are reconsidered.
//!
//! ASTs queue per node and are delivered when that node calls `poll`, so a
//! test chooses the interleaving by choosing which node runs next.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use super::lockmgr::{
    Event, Grant, LVB_LEN, LmError, LockFlags, LockId, LockManager, Mode, lvb_op,
};

#[derive(Debug)]
struct LockRec {
    node: usize,
    res: Vec<u8>,
    granted: Option<Mode>,
    requested: Option<(Mode, LockFlags)>,
    lvb: [u8; LVB_LEN],
    highbast: Option<Mode>,
    open: bool,
}

#[derive(Debug, Default)]
struct Res {
    lvb: [u8; LVB_LEN],
    valnotvalid: bool,
    /// Granted locks without a pending conversion.
    grant: Vec<u64>,
    /// Granted locks waiting for a conversion, in arrival order.
    convert: Vec<u64>,
    /// New requests waiting, in arrival order.
    wait: Vec<u64>,
}

#[derive(Debug, Default)]
struct NodeRec {
    alive: bool,
    asts: VecDeque<Event>,
    requests: u64,
}

#[derive(Debug, Default)]
struct Inner {
    locks: BTreeMap<u64, LockRec>,
    next: u64,
    res: BTreeMap<Vec<u8>, Res>,
    nodes: Vec<NodeRec>,
}

/// The simulated cluster: one lockspace shared by `nodes` nodes.
#[derive(Debug, Clone)]
pub struct FakeDlm {
    inner: Rc<RefCell<Inner>>,
}

/// One node's view of the lockspace; implements [`LockManager`].
#[derive(Debug, Clone)]
pub struct FakeNode {
    inner: Rc<RefCell<Inner>>,
    node: usize,
}

impl FakeDlm {
    /// A lockspace joined by `nodes` live nodes.
    #[must_use]
    pub fn new(nodes: usize) -> Self {
        let mut inner = Inner::default();
        for _ in 0..nodes {
            inner.nodes.push(NodeRec {
                alive: true,
                ..NodeRec::default()
            });
        }
        FakeDlm {
            inner: Rc::new(RefCell::new(inner)),
        }
    }

    /// Node `n`'s lock manager.
    #[must_use]
    pub fn node(&self, n: usize) -> FakeNode {
        FakeNode {
            inner: self.inner.clone(),
            node: n,
        }
    }

    /// Node `n` dies (or leaves the lockspace: dlm_controld/corosync gone,
    /// quorum lost): after recovery its locks are gone on every other node,
    /// VALNOTVALID is set where it held PW/EX, and the node itself is told
    /// `Lost` (a process that outlives its lockspace).
    pub fn kill(&self, n: usize) {
        let mut g = self.inner.borrow_mut();
        g.nodes[n].alive = false;
        g.nodes[n].asts.clear();
        let ids: Vec<u64> = g
            .locks
            .iter()
            .filter(|(_, l)| l.node == n)
            .map(|(id, _)| *id)
            .collect();
        let mut touched = Vec::new();
        for id in ids {
            let l = g.locks.remove(&id).expect("listed above");
            let r = g.res.get_mut(&l.res).expect("lock's resource exists");
            if matches!(l.granted, Some(Mode::Pw | Mode::Ex)) {
                r.valnotvalid = true;
            }
            r.grant.retain(|x| *x != id);
            r.convert.retain(|x| *x != id);
            r.wait.retain(|x| *x != id);
            touched.push(l.res);
        }
        touched.dedup();
        for res in touched {
            g.grant_pending(&res);
        }
        g.nodes[n].asts.push_back(Event::Lost {
            reason: format!("node {n} left the lockspace"),
        });
    }

    /// Node `n` rejoins; it is told `Restored` and must reopen its locks.
    pub fn revive(&self, n: usize) {
        let mut g = self.inner.borrow_mut();
        g.nodes[n].alive = true;
        g.nodes[n].asts.push_back(Event::Restored);
    }

    /// Whether node `n` has undelivered ASTs.
    #[must_use]
    pub fn has_asts(&self, n: usize) -> bool {
        !self.inner.borrow().nodes[n].asts.is_empty()
    }

    /// The resource's LVB and VALNOTVALID flag (for tests of the double).
    #[must_use]
    pub fn resource_lvb(&self, res: &[u8]) -> Option<([u8; LVB_LEN], bool)> {
        self.inner
            .borrow()
            .res
            .get(res)
            .map(|r| (r.lvb, r.valnotvalid))
    }

    /// The granted mode of a lock.
    #[must_use]
    pub fn granted(&self, lock: LockId) -> Option<Mode> {
        self.inner
            .borrow()
            .locks
            .get(&lock.0)
            .and_then(|l| l.granted)
    }

    /// Requests (and cancels) node `n` has made.
    #[must_use]
    pub fn requests(&self, n: usize) -> u64 {
        self.inner.borrow().nodes[n].requests
    }
}

impl Inner {
    fn ast(&mut self, id: u64, ev: Event) {
        let node = self.locks[&id].node;
        if self.nodes[node].alive {
            self.nodes[node].asts.push_back(ev);
        }
    }

    /// Whether `id`'s requested mode is compatible with every other lock's
    /// granted mode on its resource (the grant and convert queues).
    fn compatible_with_granted(&self, id: u64, mode: Mode) -> bool {
        let r = &self.res[&self.locks[&id].res];
        r.grant
            .iter()
            .chain(r.convert.iter())
            .filter(|x| **x != id)
            .all(|x| self.locks[x].granted.is_none_or(|g| g.compatible(mode)))
    }

    fn grant(&mut self, id: u64) {
        let l = self.locks.get_mut(&id).expect("granting a live lock");
        let (mode, flags) = l.requested.take().expect("granting a request");
        let res_name = l.res.clone();
        let prev = l.granted;
        let r = self.res.get_mut(&res_name).expect("resource exists");
        let mut invalid = false;
        if flags.valblk {
            match lvb_op(prev, mode) {
                Some(true) => {
                    l.lvb = r.lvb;
                    invalid = r.valnotvalid;
                }
                Some(false) => {
                    r.lvb = l.lvb;
                    r.valnotvalid = false;
                }
                None => {}
            }
        }
        l.granted = Some(mode);
        l.highbast = None;
        r.convert.retain(|x| *x != id);
        r.wait.retain(|x| *x != id);
        if !r.grant.contains(&id) {
            r.grant.push(id);
        }
        let lvb = l.lvb;
        self.ast(
            id,
            Event::Completed {
                lock: LockId(id),
                result: Ok(Grant {
                    mode,
                    lvb,
                    lvb_invalid: invalid,
                }),
            },
        );
    }

    fn send_basts(&mut self, waiter: u64, mode: Mode) {
        let r = &self.res[&self.locks[&waiter].res];
        let holders: Vec<u64> = r
            .grant
            .iter()
            .chain(r.convert.iter())
            .copied()
            .filter(|x| *x != waiter && self.locks[x].granted.is_some_and(|g| !g.compatible(mode)))
            .collect();
        for h in holders {
            self.ast(
                h,
                Event::Blocking {
                    lock: LockId(h),
                    mode: Some(mode),
                },
            );
        }
    }

    /// `grant_pending_locks`: conversions in order, then new requests in
    /// order, then blocking ASTs for the highest mode still waiting.
    fn grant_pending(&mut self, res: &[u8]) {
        loop {
            let Some(r) = self.res.get(res) else { return };
            if let Some(&first) = r.convert.first() {
                let mode = self.locks[&first].requested.expect("converting").0;
                if self.compatible_with_granted(first, mode) {
                    self.grant(first);
                    continue;
                }
            } else if let Some(&first) = r.wait.first() {
                let mode = self.locks[&first].requested.expect("waiting").0;
                if self.compatible_with_granted(first, mode) {
                    self.grant(first);
                    continue;
                }
            }
            break;
        }
        let r = &self.res[res];
        let high = r
            .convert
            .iter()
            .chain(r.wait.iter())
            .filter_map(|x| self.locks[x].requested.map(|q| q.0))
            .max();
        let Some(high) = high else { return };
        let holders: Vec<u64> = r.grant.iter().chain(r.convert.iter()).copied().collect();
        for h in holders {
            let l = &self.locks[&h];
            let Some(g) = l.granted else { continue };
            if !g.compatible(high) && l.highbast.is_none_or(|b| b < high) {
                self.locks.get_mut(&h).expect("holder").highbast = Some(high);
                self.ast(
                    h,
                    Event::Blocking {
                        lock: LockId(h),
                        mode: Some(high),
                    },
                );
            }
        }
    }

    fn request(
        &mut self,
        node: usize,
        id: u64,
        mode: Mode,
        flags: LockFlags,
        lvb: Option<&[u8; LVB_LEN]>,
    ) -> Result<(), LmError> {
        if !self.nodes[node].alive {
            return Err(LmError::Unavailable(format!(
                "node {node} is not in the lockspace"
            )));
        }
        let l = self
            .locks
            .get(&id)
            .filter(|l| l.open && l.node == node)
            .ok_or(LmError::Invalid("no such lock"))?;
        if l.requested.is_some() {
            return Err(LmError::Busy);
        }
        let conv = l.granted;
        if flags.quecvt {
            match conv {
                None => return Err(LmError::Invalid("QUECVT on a new request")),
                Some(g) if mode <= g => {
                    return Err(LmError::Invalid("QUECVT on a down-conversion"));
                }
                Some(_) => {}
            }
        }
        self.nodes[node].requests += 1;
        let res_name = l.res.clone();
        let l = self.locks.get_mut(&id).expect("checked");
        if let Some(v) = lvb {
            l.lvb = *v;
        }
        l.requested = Some((mode, flags));
        let r = self.res.entry(res_name.clone()).or_default();
        let queues_empty = r.convert.is_empty() && r.wait.is_empty();
        let convert_empty = r.convert.is_empty();
        let compatible = self.compatible_with_granted(id, mode);
        let now = if conv.is_some() {
            compatible && (!flags.quecvt || convert_empty)
        } else {
            compatible && queues_empty
        };
        if now {
            self.grant(id);
            if conv.is_some() {
                // A down-conversion may let waiters in.
                self.grant_pending(&res_name);
            }
            return Ok(());
        }
        let fail = |inner: &mut Inner, e: LmError| {
            inner.locks.get_mut(&id).expect("checked").requested = None;
            inner.ast(
                id,
                Event::Completed {
                    lock: LockId(id),
                    result: Err(e),
                },
            );
        };
        if flags.noqueue {
            fail(self, LmError::WouldBlock);
            return Ok(());
        }
        if let Some(g) = conv {
            // Conversion deadlock: another waiting conversion holds a mode
            // we need while we hold one it needs.
            let r = &self.res[&res_name];
            let deadlock = r.convert.iter().any(|x| {
                let o = &self.locks[x];
                let (om, _) = o.requested.expect("converting");
                o.granted.is_some_and(|og| !og.compatible(mode)) && !g.compatible(om)
            });
            if deadlock {
                fail(self, LmError::Deadlock);
                return Ok(());
            }
            let r = self.res.get_mut(&res_name).expect("exists");
            r.grant.retain(|x| *x != id);
            r.convert.push(id);
        } else {
            self.res.get_mut(&res_name).expect("exists").wait.push(id);
        }
        self.send_basts(id, mode);
        Ok(())
    }

    fn cancel(&mut self, node: usize, id: u64) -> Result<(), LmError> {
        if !self.nodes[node].alive {
            return Err(LmError::Unavailable(format!(
                "node {node} is not in the lockspace"
            )));
        }
        let Some(l) = self.locks.get_mut(&id).filter(|l| l.node == node) else {
            return Err(LmError::Invalid("no such lock"));
        };
        if l.requested.is_none() {
            return Ok(()); // already granted (its AST may be undelivered) or idle
        }
        self.nodes[node].requests += 1;
        l.requested = None;
        let res_name = l.res.clone();
        let granted = l.granted.is_some();
        let r = self.res.get_mut(&res_name).expect("exists");
        r.convert.retain(|x| *x != id);
        r.wait.retain(|x| *x != id);
        if granted {
            r.grant.push(id);
        }
        self.ast(
            id,
            Event::Completed {
                lock: LockId(id),
                result: Err(LmError::Cancelled),
            },
        );
        self.grant_pending(&res_name);
        Ok(())
    }

    fn close(&mut self, node: usize, id: u64) {
        if self.locks.get(&id).is_none_or(|l| l.node != node) {
            return;
        }
        let l = self.locks.remove(&id).expect("checked");
        let Some(r) = self.res.get_mut(&l.res) else {
            return;
        };
        r.grant.retain(|x| *x != id);
        r.convert.retain(|x| *x != id);
        r.wait.retain(|x| *x != id);
        // set_lvb_unlock: an unlock from PW/EX writes the lock's LVB buffer
        // (dlm-sys converts to NL with VALBLK first, which does the same).
        if matches!(l.granted, Some(Mode::Pw | Mode::Ex)) {
            r.lvb = l.lvb;
            r.valnotvalid = false;
        }
        self.grant_pending(&l.res);
    }
}

impl LockManager for FakeNode {
    fn open(&mut self, resource: &[u8]) -> Result<LockId, LmError> {
        let mut g = self.inner.borrow_mut();
        if !g.nodes[self.node].alive {
            return Err(LmError::Unavailable(format!(
                "node {} is not in the lockspace",
                self.node
            )));
        }
        if resource.is_empty() || resource.len() > dlm_sys::RESOURCE_NAME_MAX {
            return Err(LmError::Invalid("resource name length"));
        }
        g.next += 1;
        let id = g.next;
        g.res.entry(resource.to_vec()).or_default();
        g.locks.insert(
            id,
            LockRec {
                node: self.node,
                res: resource.to_vec(),
                granted: None,
                requested: None,
                lvb: [0; LVB_LEN],
                highbast: None,
                open: true,
            },
        );
        Ok(LockId(id))
    }

    fn request(
        &mut self,
        lock: LockId,
        mode: Mode,
        flags: LockFlags,
        lvb: Option<&[u8; LVB_LEN]>,
    ) -> Result<(), LmError> {
        self.inner
            .borrow_mut()
            .request(self.node, lock.0, mode, flags, lvb)
    }

    fn cancel(&mut self, lock: LockId) -> Result<(), LmError> {
        self.inner.borrow_mut().cancel(self.node, lock.0)
    }

    fn close(&mut self, lock: LockId) {
        self.inner.borrow_mut().close(self.node, lock.0);
    }

    fn poll(&mut self, events: &mut Vec<Event>) {
        events.extend(self.inner.borrow_mut().nodes[self.node].asts.drain(..));
    }

    fn wait(&mut self, _wake: &UnixStream, _timeout: Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::*;

    const VAL: LockFlags = LockFlags {
        noqueue: false,
        valblk: true,
        quecvt: false,
    };
    const QVAL: LockFlags = LockFlags {
        noqueue: false,
        valblk: true,
        quecvt: true,
    };
    const NOQ: LockFlags = LockFlags {
        noqueue: true,
        valblk: false,
        quecvt: false,
    };

    fn events(n: &mut FakeNode) -> Vec<Event> {
        let mut v = Vec::new();
        n.poll(&mut v);
        v
    }

    fn granted(ev: &[Event], lock: LockId) -> Option<Grant> {
        ev.iter().find_map(|e| match e {
            Event::Completed {
                lock: l,
                result: Ok(g),
            } if *l == lock => Some(*g),
            _ => None,
        })
    }

    fn failed(ev: &[Event], lock: LockId) -> Option<LmError> {
        ev.iter().find_map(|e| match e {
            Event::Completed {
                lock: l,
                result: Err(e),
            } if *l == lock => Some(e.clone()),
            _ => None,
        })
    }

    fn blocked(ev: &[Event], lock: LockId) -> bool {
        ev.iter()
            .any(|e| matches!(e, Event::Blocking { lock: l, .. } if *l == lock))
    }

    #[test]
    fn grants_follow_the_mode_matrix() {
        let all = [Nl, Cr, Cw, Pr, Pw, Ex];
        for a in all {
            for b in all {
                let dlm = FakeDlm::new(2);
                let (mut n0, mut n1) = (dlm.node(0), dlm.node(1));
                let l0 = n0.open(b"r").unwrap();
                let l1 = n1.open(b"r").unwrap();
                n0.request(l0, a, LockFlags::default(), None).unwrap();
                assert!(granted(&events(&mut n0), l0).is_some());
                n1.request(l1, b, NOQ, None).unwrap();
                let ev = events(&mut n1);
                assert_eq!(granted(&ev, l1).is_some(), a.compatible(b), "{a} then {b}");
                if !a.compatible(b) {
                    assert_eq!(failed(&ev, l1), Some(LmError::WouldBlock));
                }
            }
        }
    }

    #[test]
    fn waiting_request_sends_blocking_asts_and_is_granted_when_holders_step_down() {
        let dlm = FakeDlm::new(3);
        let (mut a, mut b, mut c) = (dlm.node(0), dlm.node(1), dlm.node(2));
        let (la, lb, lc) = (
            a.open(b"r").unwrap(),
            b.open(b"r").unwrap(),
            c.open(b"r").unwrap(),
        );
        a.request(la, Pr, VAL, None).unwrap();
        b.request(lb, Pr, VAL, None).unwrap();
        events(&mut a);
        events(&mut b);
        c.request(lc, Ex, VAL, None).unwrap();
        assert!(events(&mut c).is_empty());
        assert!(blocked(&events(&mut a), la));
        assert!(blocked(&events(&mut b), lb));
        a.request(la, Nl, VAL, None).unwrap();
        assert!(events(&mut c).is_empty(), "b still holds PR");
        b.request(lb, Nl, VAL, None).unwrap();
        assert_eq!(granted(&events(&mut c), lc).map(|g| g.mode), Some(Ex));
    }

    #[test]
    fn conversions_go_before_new_requests_and_in_order() {
        let dlm = FakeDlm::new(4);
        let mut n: Vec<FakeNode> = (0..4).map(|i| dlm.node(i)).collect();
        let l: Vec<LockId> = n.iter_mut().map(|x| x.open(b"r").unwrap()).collect();
        n[0].request(l[0], Ex, VAL, None).unwrap();
        n[1].request(l[1], Nl, VAL, None).unwrap();
        n[2].request(l[2], Nl, VAL, None).unwrap();
        for x in n.iter_mut().take(3) {
            events(x);
        }
        // A new PR request waits; then two conversions queue behind EX.
        n[3].request(l[3], Pr, VAL, None).unwrap();
        n[1].request(l[1], Ex, QVAL, None).unwrap();
        n[2].request(l[2], Pr, QVAL, None).unwrap();
        // EX holder steps down: the first conversion (EX) goes first, even
        // though the new PR request arrived earlier.
        n[0].request(l[0], Nl, VAL, None).unwrap();
        assert_eq!(granted(&events(&mut n[1]), l[1]).map(|g| g.mode), Some(Ex));
        assert!(events(&mut n[2]).is_empty());
        assert!(events(&mut n[3]).is_empty());
        n[1].request(l[1], Nl, VAL, None).unwrap();
        assert_eq!(granted(&events(&mut n[2]), l[2]).map(|g| g.mode), Some(Pr));
        assert_eq!(granted(&events(&mut n[3]), l[3]).map(|g| g.mode), Some(Pr));
    }

    #[test]
    fn a_compatible_conversion_jumps_the_queue_unless_quecvt() {
        let dlm = FakeDlm::new(3);
        let mut n: Vec<FakeNode> = (0..3).map(|i| dlm.node(i)).collect();
        let l: Vec<LockId> = n.iter_mut().map(|x| x.open(b"r").unwrap()).collect();
        n[0].request(l[0], Pr, VAL, None).unwrap();
        n[1].request(l[1], Nl, VAL, None).unwrap();
        n[2].request(l[2], Nl, VAL, None).unwrap();
        for x in &mut n {
            events(x);
        }
        n[1].request(l[1], Ex, QVAL, None).unwrap(); // waits for node 0's PR
        n[2].request(l[2], Pr, VAL, None).unwrap(); // no QUECVT: granted at once
        let ev = events(&mut n[2]);
        assert_eq!(granted(&ev, l[2]).map(|g| g.mode), Some(Pr));
        n[2].request(l[2], Nl, VAL, None).unwrap();
        events(&mut n[2]);
        n[2].request(l[2], Pr, QVAL, None).unwrap(); // QUECVT: behind the EX
        assert!(granted(&events(&mut n[2]), l[2]).is_none());
        assert_eq!(
            n[2].request(l[2], Pr, QVAL, None),
            Err(LmError::Busy),
            "one request at a time"
        );
        assert_eq!(
            n[0].request(l[0], Nl, QVAL, None),
            Err(LmError::Invalid("QUECVT on a down-conversion"))
        );
    }

    #[test]
    fn lvb_is_written_only_from_pw_ex_with_valblk_and_read_on_grant() {
        let dlm = FakeDlm::new(2);
        let (mut a, mut b) = (dlm.node(0), dlm.node(1));
        let (la, lb) = (a.open(b"r").unwrap(), b.open(b"r").unwrap());
        let one = [1u8; LVB_LEN];
        let two = [2u8; LVB_LEN];
        // PR -> NL with an LVB set: no write.
        a.request(la, Pr, VAL, None).unwrap();
        a.request(la, Nl, VAL, Some(&one)).unwrap();
        assert_eq!(dlm.resource_lvb(b"r"), Some(([0; LVB_LEN], false)));
        // EX -> NL without VALBLK: no write.
        a.request(la, Ex, VAL, None).unwrap();
        a.request(la, Nl, LockFlags::default(), Some(&one)).unwrap();
        assert_eq!(dlm.resource_lvb(b"r").unwrap().0, [0; LVB_LEN]);
        // EX -> PR with VALBLK: written.
        a.request(la, Ex, VAL, None).unwrap();
        a.request(la, Pr, VAL, Some(&two)).unwrap();
        assert_eq!(dlm.resource_lvb(b"r").unwrap().0, two);
        events(&mut a);
        // New PR with VALBLK reads it; without VALBLK the buffer is untouched.
        b.request(lb, Pr, VAL, None).unwrap();
        assert_eq!(granted(&events(&mut b), lb).unwrap().lvb, two);
    }

    #[test]
    fn death_in_ex_makes_the_lvb_invalid_until_rewritten() {
        let dlm = FakeDlm::new(3);
        let (mut a, mut b) = (dlm.node(0), dlm.node(1));
        let (la, lb) = (a.open(b"r").unwrap(), b.open(b"r").unwrap());
        a.request(la, Ex, VAL, None).unwrap();
        a.request(la, Pr, VAL, Some(&[7; LVB_LEN])).unwrap();
        a.request(la, Nl, VAL, None).unwrap();
        a.request(la, Ex, QVAL, Some(&[9; LVB_LEN])).unwrap();
        b.request(lb, Pr, VAL, None).unwrap(); // waits for a's EX
        assert!(events(&mut b).is_empty());
        dlm.kill(0);
        assert!(matches!(events(&mut a).last(), Some(Event::Lost { .. })));
        let g = granted(&events(&mut b), lb).unwrap();
        assert!(g.lvb_invalid);
        assert_eq!(
            g.lvb, [7; LVB_LEN],
            "the dead holder's unpublished LVB never lands"
        );
        assert_eq!(
            a.request(la, Pr, VAL, None)
                .map_err(|e| matches!(e, LmError::Unavailable(_))),
            Err(true)
        );
        // Still invalid for the next reader, until a PW/EX holder writes.
        b.request(lb, Ex, QVAL, None).unwrap();
        assert!(granted(&events(&mut b), lb).unwrap().lvb_invalid);
        b.request(lb, Pr, VAL, Some(&[8; LVB_LEN])).unwrap();
        assert_eq!(dlm.resource_lvb(b"r"), Some(([8; LVB_LEN], false)));
        // Death in PR does not invalidate.
        dlm.kill(1);
        assert_eq!(dlm.resource_lvb(b"r"), Some(([8; LVB_LEN], false)));
    }

    #[test]
    fn cancel_keeps_the_granted_mode_and_lets_others_in() {
        let dlm = FakeDlm::new(3);
        let mut n: Vec<FakeNode> = (0..3).map(|i| dlm.node(i)).collect();
        let l: Vec<LockId> = n.iter_mut().map(|x| x.open(b"r").unwrap()).collect();
        n[0].request(l[0], Pr, VAL, None).unwrap();
        n[1].request(l[1], Nl, VAL, None).unwrap();
        events(&mut n[1]);
        n[1].request(l[1], Ex, QVAL, None).unwrap();
        n[2].request(l[2], Pr, VAL, None).unwrap(); // new: waits behind the EX conversion
        assert!(events(&mut n[2]).is_empty());
        n[1].cancel(l[1]).unwrap();
        assert_eq!(failed(&events(&mut n[1]), l[1]), Some(LmError::Cancelled));
        assert_eq!(dlm.granted(l[1]), Some(Nl));
        assert_eq!(granted(&events(&mut n[2]), l[2]).map(|g| g.mode), Some(Pr));
    }

    #[test]
    fn crossing_up_conversions_deadlock() {
        let dlm = FakeDlm::new(2);
        let (mut a, mut b) = (dlm.node(0), dlm.node(1));
        let (la, lb) = (a.open(b"r").unwrap(), b.open(b"r").unwrap());
        a.request(la, Pr, VAL, None).unwrap();
        b.request(lb, Pr, VAL, None).unwrap();
        a.request(la, Ex, VAL, None).unwrap();
        b.request(lb, Ex, VAL, None).unwrap();
        assert_eq!(failed(&events(&mut b), lb), Some(LmError::Deadlock));
        assert_eq!(dlm.granted(lb), Some(Pr));
    }

    #[test]
    fn a_holder_granted_while_others_wait_gets_a_blocking_ast() {
        let dlm = FakeDlm::new(3);
        let mut n: Vec<FakeNode> = (0..3).map(|i| dlm.node(i)).collect();
        let l: Vec<LockId> = n.iter_mut().map(|x| x.open(b"r").unwrap()).collect();
        n[0].request(l[0], Ex, VAL, None).unwrap();
        n[1].request(l[1], Pr, VAL, None).unwrap();
        n[2].request(l[2], Ex, VAL, None).unwrap();
        events(&mut n[0]);
        n[0].request(l[0], Nl, VAL, None).unwrap();
        let ev = events(&mut n[1]);
        assert!(granted(&ev, l[1]).is_some());
        assert!(
            blocked(&ev, l[1]),
            "PR granted with an EX waiting must be told"
        );
    }
}
