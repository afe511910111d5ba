//! The sync layer over the fake DLM: several simulated nodes, each with its
//! own `Sharing`, driven by one harness thread (the fake is single-threaded).

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;

use crossbeam_channel::{Sender, unbounded};

use super::*;
use crate::cluster::cache::{Cluster, Done, Wake};
use crate::cluster::fake::{FakeDlm, FakeNode};
use crate::pr::TransportId;

enum Req {
    AddLu(String, Box<dyn StateStore + Send>, Sender<cache::LuHandle>),
    Update(
        String,
        Apply<Reply>,
        Sender<Result<Updated<Reply>, ClusterError>>,
    ),
    CawAcquire(String, Sender<Result<u64, ClusterError>>),
    CawRelease(String, u64),
    Spc2Probe(String, Sender<Result<(), ClusterError>>),
    Spc2Vouch(String, bool),
    Spc2Answer(String, bool),
}

#[derive(Debug)]
struct Node {
    n: usize,
    tx: Sender<(usize, Req)>,
}

fn gone<T>(_: T) -> ClusterError {
    ClusterError::Unavailable("harness stopped".into())
}

impl Backend for Node {
    fn add_lu(
        &self,
        id: &str,
        store: Box<dyn StateStore + Send>,
    ) -> Result<Receiver<cache::LuHandle>, ClusterError> {
        let (t, r) = unbounded();
        self.tx
            .send((self.n, Req::AddLu(id.into(), store, t)))
            .map_err(gone)?;
        Ok(r)
    }
    fn update(
        &self,
        lu: &str,
        apply: Apply<Reply>,
    ) -> Result<Receiver<Result<Updated<Reply>, ClusterError>>, ClusterError> {
        let (t, r) = unbounded();
        self.tx
            .send((self.n, Req::Update(lu.into(), apply, t)))
            .map_err(gone)?;
        Ok(r)
    }
    fn caw_acquire(&self, lu: &str) -> Result<Receiver<Result<u64, ClusterError>>, ClusterError> {
        let (t, r) = unbounded();
        self.tx
            .send((self.n, Req::CawAcquire(lu.into(), t)))
            .map_err(gone)?;
        Ok(r)
    }
    fn caw_release(&self, lu: &str, token: u64) -> Result<(), ClusterError> {
        self.tx
            .send((self.n, Req::CawRelease(lu.into(), token)))
            .map_err(gone)
    }
    fn spc2_probe(&self, lu: &str) -> Result<Receiver<Result<(), ClusterError>>, ClusterError> {
        let (t, r) = unbounded();
        self.tx
            .send((self.n, Req::Spc2Probe(lu.into(), t)))
            .map_err(gone)?;
        Ok(r)
    }
    fn spc2_vouch(&self, lu: &str, on: bool) -> Result<(), ClusterError> {
        self.tx
            .send((self.n, Req::Spc2Vouch(lu.into(), on)))
            .map_err(gone)
    }
    fn spc2_answer(&self, lu: &str, still_holder: bool) -> Result<(), ClusterError> {
        self.tx
            .send((self.n, Req::Spc2Answer(lu.into(), still_holder)))
            .map_err(gone)
    }
}

type Replies = (
    HashMap<(usize, u64), Sender<Result<Updated<Reply>, ClusterError>>>,
    HashMap<(usize, u64), Sender<Result<u64, ClusterError>>>,
    HashMap<(usize, u64), Sender<Result<(), ClusterError>>>,
);

/// `nodes` simulated nodes sharing one fake lockspace.
fn cluster(nodes: usize) -> Vec<Sharing> {
    cluster_with_health((0..nodes).map(|_| None).collect())
}

fn cluster_with_health(healths: Vec<Option<Arc<Health>>>) -> Vec<Sharing> {
    let nodes = healths.len();
    let (tx, rx) = unbounded::<(usize, Req)>();
    let readies: Vec<Arc<Ready>> = (0..nodes).map(|_| Arc::new(Ready::default())).collect();
    let rs = readies.clone();
    let holders: Vec<Spc2Holders> = (0..nodes).map(|_| Spc2Holders::default()).collect();
    let hs = holders.clone();
    let backends: Vec<Arc<dyn Backend>> = (0..nodes)
        .map(|n| Arc::new(Node { n, tx: tx.clone() }) as Arc<dyn Backend>)
        .collect();
    let bs = backends.clone();
    thread::spawn(move || {
        let dlm = FakeDlm::new(nodes);
        let cfg = cache::Config {
            update_timeout: Duration::from_secs(3),
            admit_timeout: Duration::from_secs(3),
            retry_after: Duration::from_millis(100),
        };
        let mut cs: Vec<Cluster<FakeNode, Box<dyn StateStore + Send>, Reply>> = (0..nodes)
            .map(|n| {
                let r = rs[n].clone();
                let notify: cache::Notify = Arc::new(move |w| {
                    if let Wake::Lu(_) = w {
                        r.bump();
                    }
                });
                Cluster::new(dlm.node(n), cfg.clone(), notify)
            })
            .collect();
        let mut replies: Replies = (HashMap::new(), HashMap::new(), HashMap::new());
        let mut tag = 0u64;
        loop {
            let now = Instant::now();
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok((n, req)) => {
                    tag += 1;
                    match req {
                        Req::AddLu(id, store, reply) => {
                            let _ = reply.send(cs[n].add_lu(&id, store));
                        }
                        Req::Update(lu, apply, reply) => {
                            replies.0.insert((n, tag), reply);
                            cs[n].update(&lu, tag, apply, now);
                        }
                        Req::CawAcquire(lu, reply) => {
                            replies.1.insert((n, tag), reply);
                            cs[n].caw_acquire(&lu, tag, now);
                        }
                        Req::CawRelease(lu, t) => cs[n].caw_release(&lu, t, now),
                        Req::Spc2Probe(lu, reply) => {
                            replies.2.insert((n, tag), reply);
                            cs[n].spc2_probe(&lu, tag, now);
                        }
                        Req::Spc2Vouch(lu, on) => cs[n].spc2_vouch(&lu, on, now),
                        Req::Spc2Answer(lu, still) => cs[n].spc2_answer(&lu, still, now),
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            for (n, c) in cs.iter_mut().enumerate() {
                c.step(now);
                for d in c.take_done() {
                    match d {
                        Done::Update { tag, result, .. } => {
                            if let Some(r) = replies.0.remove(&(n, tag)) {
                                let _ = r.send(result);
                            }
                        }
                        Done::Caw { tag, result, .. } => {
                            if let Some(r) = replies.1.remove(&(n, tag)) {
                                let _ = r.send(result.map(|()| tag));
                            }
                        }
                        Done::Spc2Probe { tag, result, .. } => {
                            if let Some(r) = replies.2.remove(&(n, tag)) {
                                let _ = r.send(result);
                            }
                        }
                        Done::Spc2Check { lu } => spawn_spc2_check(&hs[n], bs[n].clone(), &lu),
                    }
                }
            }
        }
    });
    readies
        .into_iter()
        .zip(healths)
        .zip(holders.into_iter().zip(backends))
        .map(|((ready, health), (holders, backend))| {
            Sharing::with_backend_and_holders(
                backend,
                holders,
                ready,
                Duration::from_secs(3),
                None,
                health,
            )
        })
        .collect()
}

fn device(dir: &Path) -> DeviceConfig {
    let img = dir.join("lu.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    DeviceConfig::parse_dev_config(&format!("dlmfile/{}", img.display())).unwrap()
}

fn nexus(i: u64) -> Nexus {
    Nexus {
        initiator: TransportId::Sas { address: i },
        rtpi: 1,
    }
}

fn bump_generation(s: &LuState) -> (u32, Option<LuState>, Vec<UnitAttention>) {
    let mut n = s.clone();
    n.pr.generation += 1;
    (n.pr.generation, Some(n), Vec::new())
}

#[test]
fn two_nodes_agree_on_identity_and_see_each_others_updates_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let nodes = cluster(2);
    // Both open a blank store at once: one identity wins, both report it.
    let (a, b) = thread::scope(|s| {
        let ha = s.spawn(|| StateSync::open(&cfg, &nodes[0]).unwrap());
        let hb = s.spawn(|| StateSync::open(&cfg, &nodes[1]).unwrap());
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let ((a, sa), (b, sb)) = (a, b);
    assert_eq!(sa.identity, sb.identity);
    for i in 1..=5 {
        let (node, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (g, local) = node.update(bump_generation).unwrap();
        assert_eq!(g, i);
        assert!(local.is_empty(), "cluster UAs go to the log");
        // No node can serve the old state once the update returned.
        assert_eq!(other.admit().unwrap().state().pr.generation, i);
        assert_eq!(node.admit().unwrap().state().pr.generation, i);
    }
    // Steady state: no lock traffic per command.
    let before = (a.dlm_requests(), b.dlm_requests());
    for _ in 0..100 {
        drop(a.admit().unwrap());
        drop(b.admit().unwrap());
    }
    assert_eq!((a.dlm_requests(), b.dlm_requests()), before);
    assert!(before.0.unwrap() > 0 && before.1.unwrap() > 0);
    // What `status` shows: serving the newest state, nothing running.
    let info = a.cluster_info().unwrap();
    assert_eq!((info.phase, info.tickets, info.seq), ("serving", 0, 6));
    assert_eq!(info.dlm_requests, before.0.unwrap());
    assert_eq!(info.refusal, None);
    assert_eq!(info.id, b.cluster_info().unwrap().id);
    // The fake harness has no cluster thread to ask.
    assert!(nodes[0].snapshot(Duration::from_millis(10)).is_none());
}

#[test]
fn an_update_waits_for_commands_in_flight_on_the_other_node() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let nodes = cluster(2);
    let (a, _) = StateSync::open(&cfg, &nodes[0]).unwrap();
    let (b, _) = StateSync::open(&cfg, &nodes[1]).unwrap();
    let running = b.admit().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| tx.send(a.update(bump_generation).map(|r| r.0)).unwrap());
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the update completed while a command of the old state ran"
        );
        assert_eq!(running.state().pr.generation, 0);
        drop(running);
        assert_eq!(rx.recv_timeout(Duration::from_secs(3)).unwrap().unwrap(), 1);
    });
    assert_eq!(b.admit().unwrap().state().pr.generation, 1);
}

/// Records REGISTRATIONS PREEMPTED for `target` through `node`'s update.
fn preempted_ua_for(node: &StateSync, target: &Nexus) {
    let target = target.clone();
    node.update(move |s| {
        let uas = vec![UnitAttention {
            nexus: target,
            ua: Ua::RegistrationsPreempted,
        }];
        ((), Some(s.clone()), uas)
    })
    .unwrap();
}

#[test]
fn unit_attentions_reach_the_node_serving_the_nexus_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let nodes = cluster(2);
    let (a, _) = StateSync::open(&cfg, &nodes[0]).unwrap();
    let (b, _) = StateSync::open(&cfg, &nodes[1]).unwrap();
    let (qa, qb) = (
        Mutex::new(UaQueues::default()),
        Mutex::new(UaQueues::default()),
    );
    let (x, y) = (nexus(0x10), nexus(0x20));
    // x is served by node b, y by node a (first command attaches).
    b.sync_uas(&x, &qb).unwrap();
    a.sync_uas(&y, &qa).unwrap();
    preempted_ua_for(&a, &x);
    a.sync_uas(&y, &qa).unwrap();
    assert!(!qa.lock().unwrap().has_pending(&x), "not a's nexus");
    b.sync_uas(&x, &qb).unwrap();
    assert_eq!(
        qb.lock().unwrap().take(&x),
        Some(Ua::RegistrationsPreempted)
    );
    b.sync_uas(&x, &qb).unwrap();
    assert_eq!(qb.lock().unwrap().take(&x), None, "delivered once");
}

#[test]
fn compare_and_write_is_exclusive_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let nodes = cluster(2);
    let (a, _) = StateSync::open(&cfg, &nodes[0]).unwrap();
    let (b, _) = StateSync::open(&cfg, &nodes[1]).unwrap();
    let (ha, hb) = (a.caw_hook().unwrap(), b.caw_hook().unwrap());
    let held = ha.enter(Lba(0), Blocks(1)).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            let g = hb.enter(Lba(0), Blocks(1)).unwrap();
            tx.send(()).unwrap();
            drop(g);
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(held);
        rx.recv_timeout(Duration::from_secs(3)).unwrap();
    });
}

#[test]
fn local_mode_keeps_the_in_memory_path_and_hands_uas_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let (l, st) = StateSync::open(&cfg, &Sharing::Local).unwrap();
    assert!(l.caw_hook().is_none() && l.dlm_requests().is_none());
    assert!(l.cluster_info().is_none());
    assert!(Sharing::Local.snapshot(Duration::from_millis(10)).is_none());
    let q = Mutex::new(UaQueues::default());
    l.sync_uas(&nexus(1), &q).unwrap();
    let (g, uas) = l
        .update(|s| {
            let (g, n, _) = bump_generation(s);
            let ua = UnitAttention {
                nexus: nexus(1),
                ua: Ua::ReservationsReleased,
            };
            (g, n, vec![ua])
        })
        .unwrap();
    assert_eq!((g, uas.len()), (1, 1));
    assert_eq!(l.admit().unwrap().state().pr.generation, 1);
    // Durable: reopening reads it back, same identity.
    let (_, again) = StateSync::open(&cfg, &Sharing::Local).unwrap();
    assert_eq!((again.pr.generation, again.identity), (1, st.identity));
}

#[test]
fn current_shows_the_state_an_update_wrote_and_no_change_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let nodes = cluster(2);
    let (a, _) = StateSync::open(&cfg, &nodes[0]).unwrap();
    let (b, _) = StateSync::open(&cfg, &nodes[1]).unwrap();
    // A port gets an RTPI through node A; without any command admitted
    // since, A's current state must already hold it (callers decide from
    // it whether to update again).
    let assign = |name: &'static str| {
        move |s: &LuState| {
            if let Some(r) = s.rtpi(name) {
                return (r, None, Vec::new());
            }
            let mut n = s.clone();
            let r = n.assign_rtpi(name).unwrap();
            (r, Some(n), Vec::new())
        }
    };
    let seq0 = a.cluster_info().unwrap().seq;
    let (r, _) = a.update(assign("iscsi/t1/tpgt_1")).unwrap();
    assert_eq!(a.current().rtpi("iscsi/t1/tpgt_1"), Some(r));
    let seq1 = a.cluster_info().unwrap().seq;
    assert_eq!(seq1, seq0 + 1);
    // Node B assigns its own port: A's next update sees it (read under EX).
    let (r2, _) = b.update(assign("iscsi/t2/tpgt_1")).unwrap();
    assert_ne!(r, r2);
    assert_eq!(a.update(assign("iscsi/t2/tpgt_1")).unwrap().0, r2);
    let info = a.cluster_info().unwrap();
    assert_eq!(
        info.seq,
        seq1 + 1,
        "an update that changes nothing writes nothing"
    );
    assert_eq!(a.current().rtpi("iscsi/t2/tpgt_1"), Some(r2));
}

#[test]
fn a_stopped_lockspace_refuses_commands_and_updates_without_dlm_calls_then_serves_again() {
    use crate::cluster::health::Probe;
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let health = Arc::new(Health::new("ls", Duration::from_millis(300)));
    let nodes = cluster_with_health(vec![Some(health.clone()), None]);
    let (a, _) = StateSync::open(&cfg, &nodes[0]).unwrap();
    let (b, _) = StateSync::open(&cfg, &nodes[1]).unwrap();
    drop(a.admit().unwrap());
    let before = a.dlm_requests();
    health.apply(&Probe::Stopped(0), Instant::now());
    // Short stop: BUSY; past the grace: NOT READY 04h/03h. No DLM request.
    assert_eq!(a.admit().unwrap_err(), ClusterError::Busy);
    assert!(matches!(
        a.update(bump_generation).unwrap_err(),
        SyncError::Cluster(ClusterError::Busy)
    ));
    thread::sleep(Duration::from_millis(350));
    let e = a.admit().unwrap_err();
    assert!(
        matches!(&e, ClusterError::Unavailable(w) if w.contains("stopped")),
        "{e}"
    );
    assert_eq!(a.dlm_requests(), before, "no DLM call while stopped");
    assert!(nodes[0].lockspace_stopped_for().is_some());
    // The other node (its lockspace runs) is not affected.
    assert_eq!(b.update(bump_generation).unwrap().0, 1);
    // Running again: A serves, and serves the newest state.
    health.apply(&Probe::Running, Instant::now());
    assert_eq!(a.admit().unwrap().state().pr.generation, 1);
    assert_eq!(a.update(bump_generation).unwrap().0, 2);
    assert_eq!(nodes[0].lockspace_stopped_for(), None);
}

/// An LU stand-in on the vouching node: its "session" is alive or not; a
/// check of a dead one releases the reservation through the cluster.
#[derive(Debug)]
struct TestHolder {
    sync: StateSync,
    alive: std::sync::atomic::AtomicBool,
    checks: std::sync::atomic::AtomicUsize,
    delay_ms: std::sync::atomic::AtomicU64,
}

impl Spc2Holder for TestHolder {
    fn check_spc2_holder(&self) -> bool {
        self.checks.fetch_add(1, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        if self.alive.load(Ordering::SeqCst) {
            return true;
        }
        self.sync
            .update(|s| {
                let mut n = s.clone();
                n.pr.spc2_holder = None;
                ((), Some(n), Vec::new())
            })
            .unwrap();
        false
    }
}

fn vouching_pair(dir: &Path, delay: Duration) -> (Arc<TestHolder>, StateSync) {
    let cfg = device(dir);
    let nodes = cluster(2);
    let (a, _) = StateSync::open(&cfg, &nodes[0]).unwrap();
    let (b, _) = StateSync::open(&cfg, &nodes[1]).unwrap();
    let holder = Arc::new(TestHolder {
        sync: a,
        alive: true.into(),
        checks: 0.into(),
        delay_ms: u64::try_from(delay.as_millis()).unwrap().into(),
    });
    let dyn_holder: Arc<dyn Spc2Holder> = holder.clone();
    holder
        .sync
        .register_spc2_holder(Arc::downgrade(&dyn_holder));
    holder
        .sync
        .update(|s| {
            let mut n = s.clone();
            n.pr.spc2_holder = Some(nexus(1));
            ((), Some(n), Vec::new())
        })
        .unwrap();
    holder.sync.spc2_vouch(true);
    (holder, b)
}

fn remote_holder(b: &StateSync) -> Option<Nexus> {
    b.admit().unwrap().state().pr.spc2_holder.clone()
}

#[test]
fn spc2_probe_asks_the_vouching_node_which_releases_a_lost_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (holder, b) = vouching_pair(dir.path(), Duration::ZERO);
    assert_eq!(remote_holder(&b), Some(nexus(1)));

    // Alive: the probe is answered, nothing changes, the node still vouches.
    b.spc2_probe().unwrap();
    assert_eq!(holder.checks.load(Ordering::SeqCst), 1);
    assert_eq!(remote_holder(&b), Some(nexus(1)));
    b.spc2_probe().unwrap();
    assert_eq!(
        holder.checks.load(Ordering::SeqCst),
        2,
        "vouching resumed after the answer"
    );

    // Gone: the release is published before the probe completes.
    holder.alive.store(false, Ordering::SeqCst);
    b.spc2_probe().unwrap();
    assert_eq!(holder.checks.load(Ordering::SeqCst), 3);
    assert_eq!(remote_holder(&b), None);

    // Nobody vouches any more: a probe is granted without asking.
    b.spc2_probe().unwrap();
    assert_eq!(holder.checks.load(Ordering::SeqCst), 3);
}

#[test]
fn spc2_probe_unanswered_in_time_is_busy_and_the_conflict_stands() {
    let dir = tempfile::tempdir().unwrap();
    // The check takes longer than the protocol's bound (3 s here).
    let (holder, b) = vouching_pair(dir.path(), Duration::from_secs(4));
    assert_eq!(b.spc2_probe(), Err(ClusterError::Busy));
    assert_eq!(holder.checks.load(Ordering::SeqCst), 1);
    assert_eq!(remote_holder(&b), Some(nexus(1)));
    // Once it has answered, probes work again.
    holder.delay_ms.store(0, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(1500));
    holder.alive.store(false, Ordering::SeqCst);
    b.spc2_probe().unwrap();
    assert_eq!(remote_holder(&b), None);
}

#[test]
fn try_admit_admits_without_waiting_or_says_none() {
    use crate::cluster::health::Probe;
    let dir = tempfile::tempdir().unwrap();
    let cfg = device(dir.path());
    let health = Arc::new(Health::new("ls", Duration::from_millis(300)));
    let nodes = cluster_with_health(vec![None, Some(health.clone())]);
    let (a, _) = StateSync::open(&cfg, &nodes[0]).unwrap();
    let (b, _) = StateSync::open(&cfg, &nodes[1]).unwrap();
    // Freshly opened, B holds no lock yet: only a blocking admission takes it.
    assert!(b.try_admit().is_none());
    drop(b.admit().unwrap());
    let running = b.try_admit().expect("serving: admitted at once");
    assert_eq!(running.state().pr.generation, 0);
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| tx.send(a.update(bump_generation).map(|r| r.0)).unwrap());
        // While A's update drains B, B admits nothing new without waiting.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match b.try_admit() {
                None => break,
                Some(t) => drop(t),
            }
            assert!(Instant::now() < deadline, "B never stopped admitting");
            thread::sleep(Duration::from_millis(5));
        }
        drop(running);
        assert_eq!(rx.recv_timeout(Duration::from_secs(3)).unwrap().unwrap(), 1);
    });
    // The state the update wrote, once B serves again (after a blocking
    // admission re-acquired its lock).
    drop(b.admit().unwrap());
    assert_eq!(b.try_admit().unwrap().state().pr.generation, 1);
    // Unit attentions come with the admission held.
    let q = Mutex::new(UaQueues::default());
    let x = nexus(0x30);
    b.sync_uas_admitted(&b.try_admit().unwrap(), &x, &q);
    preempted_ua_for(&a, &x);
    drop(b.admit().unwrap());
    b.sync_uas_admitted(&b.try_admit().unwrap(), &x, &q);
    assert_eq!(q.lock().unwrap().take(&x), Some(Ua::RegistrationsPreempted));
    // A stopped lockspace: none, and no DLM request.
    let before = b.dlm_requests();
    health.apply(&Probe::Stopped(0), Instant::now());
    assert!(b.try_admit().is_none());
    assert_eq!(b.dlm_requests(), before);
    health.apply(&Probe::Running, Instant::now());
    assert!(b.try_admit().is_some());
    // Local mode always admits.
    let local = tempfile::tempdir().unwrap();
    let (l, _) = StateSync::open(&device(local.path()), &Sharing::Local).unwrap();
    assert!(l.try_admit().is_some());
}
