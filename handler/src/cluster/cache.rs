//! The per-LU state cache and its cluster protocol (DESIGN.md §4), generic
//! over the lock manager and the state store, and sans-I/O about time: every
//! entry point takes `now`.
//!
//! Two halves:
//! - [`LuHandle`], shared with the event loop and the workers: admission of
//!   a command ([`LuHandle::admit`]) is a mutex and a counter, never a DLM
//!   call. A [`Ticket`] is the right to run one command against one cached
//!   state; dropping it ends the command.
//! - [`Cluster`], owned by one thread (the cluster thread, see `dlm`): it
//!   owns the lock manager and the stores, handles ASTs and runs updates.
//!
//! Protocol per LU, on its state lock (resource `tcmu-prd:s:<lu>`):
//! - Serving: the lock is held in PR and the cache is trusted.
//! - Blocking AST: stop admitting, wait for in-flight tickets, PR -> NL
//!   (NL keeps the LVB alive), cache untrusted. The next admission asks for
//!   PR again (QUECVT, so readers cannot starve a waiting writer) and
//!   revalidates: an LVB naming the cached seq and checksum keeps the cache;
//!   otherwise the store is read and must agree with the LVB; VALNOTVALID,
//!   or a blank or foreign LVB, means "the store is the truth".
//! - Update: stop admitting, drain local tickets, PR -> NL -> EX, read the
//!   store (checked against the LVB), apply the queued commands' closures in
//!   order, write each new state (seq + 1), then EX -> PR (or NL if another
//!   node waits) with VALBLK, which publishes the LVB; the commands complete
//!   only when that down-conversion is granted.
//!
//!   Change to DESIGN.md §4: the update goes PR -> NL -> EX, not PR -> EX.
//!   Two nodes converting PR -> EX at once is a conversion deadlock, which
//!   the DLM breaks by failing one with EDEADLK (fs/dlm/lock.c; the fake DLM
//!   models it, see its `crossing_up_conversions_deadlock` test). From NL
//!   the conversions simply queue. The cost is one immediate down-conversion
//!   per update, and local I/O waits during the update (it would have to
//!   drain before the state changes anyway).
//! - A stuck peer: an update whose EX is not granted within
//!   [`Config::update_timeout`] is cancelled and fails with
//!   [`ClusterError::Busy`]; admissions waiting longer than
//!   [`Config::admit_timeout`] for PR are refused the same way until PR comes.
//! - Lockspace lost: every LU refuses I/O with [`ClusterError::Unavailable`]
//!   until the lock manager reports it restored; then the next admission
//!   re-acquires and revalidates as after a blocking AST.
//!
//! COMPARE AND WRITE: [`Cluster::caw_acquire`] / [`Cluster::caw_release`]
//! take a second per-LU lock (`tcmu-prd:c:<lu>`) in EX, kept cached until
//! another node asks for it. Callers take it BEFORE admitting the command:
//! a worker holding a ticket while waiting for the CAW lock could deadlock
//! with an update that waits for that ticket to drain.
//!
//! SPC-2 reservation liveness: a third per-LU lock (`tcmu-prd:r:<lu>`).
//! TCMU never says that an I_T nexus ended, so only the node that serves
//! the SPC-2 reservation holder's view can tell (from configfs) whether its
//! session is still there. That node *vouches* for the holder by holding
//! this lock in PR ([`Cluster::spc2_vouch`]). A node whose command conflicts
//! with a holder it does not serve *probes* ([`Cluster::spc2_probe`]): it
//! converts its own lock NL -> EX. The blocking AST reaches the vouching
//! node, which reports [`Done::Spc2Check`]; its daemon checks the session,
//! releases the reservation through a normal update if the session is gone,
//! and answers ([`Cluster::spc2_answer`]); only then does it convert PR ->
//! NL, which grants the probe. So when a probe completes, any release is
//! already durable and published, and the prober's next admission sees it.
//! The prober converts straight back to NL; a node still vouching asks for
//! PR again (queued behind the probe: conversions are granted in order,
//! which is why the prober always converts from NL rather than asking anew).
//! Nobody vouching (a daemon restarted since the reservation, a dead node)
//! grants the probe at once and nothing is released: the conflict stands.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::lockmgr::{
    Event, Grant, LVB_LEN, LmError, LockFlags, LockId, LockManager, Mode, resource_name,
};
use super::lvb::{Lvb, LvbError};
use super::store::{Snapshot, Store, StoreError};

/// What the cache needs from a state store (`store::Store` on shared storage).
pub trait StateStore {
    /// The newest valid state, `None` for a blank store.
    fn read(&self) -> Result<Option<Snapshot>, StoreError>;
    /// Writes `payload` as the state after `current`.
    fn write(&self, current: Option<&Snapshot>, payload: &[u8]) -> Result<Snapshot, StoreError>;
}

impl StateStore for Store {
    fn read(&self) -> Result<Option<Snapshot>, StoreError> {
        Store::read(self)
    }
    fn write(&self, current: Option<&Snapshot>, payload: &[u8]) -> Result<Snapshot, StoreError> {
        Store::write(self, current, payload)
    }
}

/// Bounds of the protocol.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long an update may wait for EX before it fails with `Busy`. Well
    /// below the kernel's 30 s TCMU cmd_time_out, so that we, not the
    /// kernel's abort, answer the command.
    pub update_timeout: Duration,
    /// How long admissions may wait for PR before they are refused with `Busy`.
    pub admit_timeout: Duration,
    /// After a refusal for an inconsistent or unreadable state, when to try again.
    pub retry_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            update_timeout: Duration::from_secs(20),
            admit_timeout: Duration::from_secs(20),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Why a command cannot be served or an update did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// This node is not in the lockspace (dlm_controld or corosync down,
    /// quorum lost, lockspace not joined yet): the state may be stale.
    #[error("cluster lockspace unavailable: {0}")]
    Unavailable(String),
    /// The lock was not granted in time: a peer does not answer.
    #[error("timed out waiting for the cluster lock (a peer is not answering)")]
    Busy,
    /// The store and the LVB disagree in a way no protocol step explains,
    /// or a newer tcmu-prd wrote the LVB.
    #[error("cluster state is inconsistent: {0}")]
    Inconsistent(String),
    /// The state store could not be read or written.
    #[error("state store: {0}")]
    Store(String),
    /// No such LU.
    #[error("unknown LU {0}")]
    UnknownLu(String),
}

/// How the SCSI layer reports a [`ClusterError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScsiFailure {
    /// Status BUSY (08h), no sense.
    Busy,
    /// CHECK CONDITION, sense key NOT READY (02h), with this ASC/ASCQ.
    NotReady { asc: u8, ascq: u8 },
}

impl ClusterError {
    /// The SCSI answer for a command refused or failed with this error.
    ///
    /// - `Busy` (a peer does not answer a blocking AST; it will be fenced or
    ///   come back): status BUSY. The condition is transient and not the
    ///   LU's fault; every initiator retries BUSY on the same path (Linux
    ///   requeues it within the command's retry budget, Windows' classpnp
    ///   and ESXi retry after a delay), and it says nothing about the
    ///   medium, so multipath does not fail the path.
    /// - `Unavailable`, `Inconsistent`, `Store` (we cannot know the current
    ///   PR state): NOT READY, 04h/03h LOGICAL UNIT NOT READY, MANUAL
    ///   INTERVENTION REQUIRED. It is not retried on the same path (Linux
    ///   fails it at once and dm-multipath retries on another path, i.e.
    ///   another node; the tur path checker keeps this path down until TUR
    ///   succeeds again; Windows classpnp does not retry it), which is what
    ///   we want while this node is out of the cluster. Not 04h/01h
    ///   (BECOMING READY): Linux and Windows retry that on the same path for
    ///   the whole command timeout, holding I/O on a node about to be fenced.
    ///   Not an ALUA state (04h/0Ah-0Ch): we report no ALUA transitions.
    #[must_use]
    pub fn scsi(&self) -> ScsiFailure {
        match self {
            ClusterError::Busy => ScsiFailure::Busy,
            _ => ScsiFailure::NotReady {
                asc: 0x04,
                ascq: 0x03,
            },
        }
    }
}

/// A cached, validated state.
#[derive(Debug, Clone)]
struct Cached {
    seq: u64,
    state: Arc<[u8]>,
    crc: u32,
}

impl Cached {
    fn from_snapshot(s: Option<&Snapshot>) -> Self {
        match s {
            Some(s) => Cached {
                seq: s.seq,
                crc: crc32c::crc32c(&s.payload),
                state: s.payload.clone().into(),
            },
            None => Cached {
                seq: 0,
                crc: crc32c::crc32c(&[]),
                state: Arc::from(&[][..]),
            },
        }
    }
}

/// Who to tell when something changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake<'a> {
    /// The cluster thread has work (an admission waits, a drain finished).
    Cluster,
    /// Commands parked on this LU should call `admit` again.
    Lu(&'a str),
}

/// The notification callback, called without locks held.
pub type Notify = Arc<dyn Fn(Wake<'_>) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Serving,
    Closed,
    Refused(ClusterError),
}

#[derive(Debug)]
struct Shared {
    phase: Phase,
    cache: Option<Cached>,
    inflight: usize,
    waiting: bool,
}

struct LuShared {
    id: String,
    st: Mutex<Shared>,
    dlm_requests: AtomicU64,
    notify: Notify,
}

impl std::fmt::Debug for LuShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuShared")
            .field("id", &self.id)
            .field("st", &self.st)
            .finish_non_exhaustive()
    }
}

impl LuShared {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere while holding this lock leaves plain data behind.
        self.st
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_phase(&self, phase: Phase, cache: Option<Cached>) {
        let wake = {
            let mut s = self.lock();
            if let Some(c) = cache {
                s.cache = Some(c);
            }
            let changed = s.phase != phase;
            s.phase = phase;
            changed && s.phase != Phase::Closed
        };
        if wake {
            (self.notify)(Wake::Lu(&self.id));
        }
    }
}

/// The shared face of one LU: admission without DLM calls.
#[derive(Debug, Clone)]
pub struct LuHandle {
    inner: Arc<LuShared>,
}

/// The outcome of [`LuHandle::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Run the command against this state.
    Serve(Ticket),
    /// Park the command; a `Wake::Lu` for this LU says when to retry.
    Wait,
    /// Fail the command (see [`ClusterError::scsi`]).
    Refused(ClusterError),
}

/// The right to run one command against one cached state. Dropping it ends
/// the command (updates wait for every ticket of every node to end).
#[derive(Debug)]
pub struct Ticket {
    lu: Arc<LuShared>,
    seq: u64,
    state: Arc<[u8]>,
}

impl Ticket {
    /// Sequence number of the state this command runs against.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The state bytes (opaque here; the PR engine's serialization).
    #[must_use]
    pub fn state(&self) -> &[u8] {
        &self.state
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let wake = {
            let mut s = self.lu.lock();
            s.inflight -= 1;
            s.inflight == 0 && s.phase != Phase::Serving
        };
        if wake {
            (self.lu.notify)(Wake::Cluster);
        }
    }
}

impl LuHandle {
    /// The LU's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Admits a command: in steady state a mutex and a counter.
    #[must_use]
    pub fn admit(&self) -> Admission {
        let mut s = self.inner.lock();
        match &s.phase {
            Phase::Serving => {
                let c = s.cache.clone().expect("serving implies a cache");
                s.inflight += 1;
                Admission::Serve(Ticket {
                    lu: self.inner.clone(),
                    seq: c.seq,
                    state: c.state,
                })
            }
            Phase::Refused(e) => Admission::Refused(e.clone()),
            Phase::Closed => {
                let first = !s.waiting;
                s.waiting = true;
                drop(s);
                if first {
                    (self.inner.notify)(Wake::Cluster);
                }
                Admission::Wait
            }
        }
    }

    /// DLM requests (and cancels) made for this LU so far: constant while
    /// the LU serves I/O in steady state.
    #[must_use]
    pub fn dlm_requests(&self) -> u64 {
        self.inner.dlm_requests.load(Ordering::Relaxed)
    }

    /// Commands running now.
    #[must_use]
    pub fn inflight(&self) -> usize {
        self.inner.lock().inflight
    }

    /// `serving`, `closed` (its lock is being (re)acquired or drained) or
    /// `refused`, for `tcmu-prd status`.
    #[must_use]
    pub fn phase(&self) -> &'static str {
        match &self.inner.lock().phase {
            Phase::Serving => "serving",
            Phase::Closed => "closed",
            Phase::Refused(_) => "refused",
        }
    }

    /// Why the LU refuses commands, if it does.
    #[must_use]
    pub fn refusal(&self) -> Option<ClusterError> {
        match &self.inner.lock().phase {
            Phase::Refused(e) => Some(e.clone()),
            _ => None,
        }
    }
}

/// An update's closure: pure, old state bytes -> (result, new state bytes
/// or `None` for no change).
pub type Apply<R> = Box<dyn FnOnce(&[u8]) -> (R, Option<Vec<u8>>) + Send>;

/// A finished update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated<R> {
    /// What the closure returned.
    pub result: R,
    /// Sequence number of the state after the update.
    pub seq: u64,
}

/// Something that finished, to hand back to whoever asked.
#[derive(Debug)]
pub enum Done<R> {
    /// An update, identified by the caller's tag.
    Update {
        lu: String,
        tag: u64,
        result: Result<Updated<R>, ClusterError>,
    },
    /// A COMPARE AND WRITE lock acquisition.
    Caw {
        lu: String,
        tag: u64,
        result: Result<(), ClusterError>,
    },
    /// A probe of the SPC-2 holder's liveness finished: `Ok` means the
    /// vouching node (if any) has answered and any release it made is
    /// published.
    Spc2Probe {
        lu: String,
        tag: u64,
        result: Result<(), ClusterError>,
    },
    /// Another node probes the SPC-2 holder this node vouches for: check
    /// its session, release the reservation if it is gone, then answer with
    /// [`Cluster::spc2_answer`].
    Spc2Check { lu: String },
}

#[derive(Debug, Clone, Copy)]
struct Req {
    mode: Mode,
    since: Instant,
    cancelling: bool,
}

struct PendingUpdate<R> {
    tag: u64,
    since: Instant,
    apply: Apply<R>,
}

#[derive(Debug, Default)]
struct Caw {
    lock: Option<LockId>,
    held: Option<Mode>,
    pending: Option<Req>,
    blocked: bool,
    owner: Option<u64>,
    queue: VecDeque<(u64, Instant)>,
}

/// The SPC-2 liveness lock of one LU (see the module docs).
#[derive(Debug, Default)]
struct Spc2 {
    lock: Option<LockId>,
    held: Option<Mode>,
    pending: Option<Req>,
    /// A blocking AST arrived while PR was held: a probe waits.
    blocked: bool,
    /// A local view holds the SPC-2 reservation: keep PR.
    vouch: bool,
    /// `Done::Spc2Check` was reported for the current blocking AST.
    asked: bool,
    /// ... and answered: give the lock up.
    answered: bool,
    /// Probes waiting for EX: tag and start.
    probes: VecDeque<(u64, Instant)>,
}

struct Lu<S, R> {
    shared: Arc<LuShared>,
    store: S,
    lock: Option<LockId>,
    held: Option<Mode>,
    pending: Option<Req>,
    blocked: bool,
    want_pr: bool,
    cache: Option<Cached>,
    updates: VecDeque<PendingUpdate<R>>,
    publishing: Vec<(u64, Result<Updated<R>, ClusterError>)>,
    retry_at: Option<Instant>,
    stalled: bool,
    caw: Caw,
    spc2: Spc2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    State,
    Caw,
    Spc2,
}

/// A read-only picture of the cluster side, for `tcmu-prd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// `Err(why)` while the lockspace is lost (or not joined yet).
    pub available: Result<(), String>,
    /// Every LU, by id.
    pub lus: Vec<LuLocks>,
}

/// One LU's locks as the cluster thread holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuLocks {
    pub id: String,
    /// State lock mode granted.
    pub held: Option<Mode>,
    /// Mode of the request in progress.
    pub pending: Option<Mode>,
    /// COMPARE AND WRITE lock mode granted.
    pub caw_held: Option<Mode>,
    /// Updates waiting for EX.
    pub queued_updates: usize,
}

/// The cluster side of every LU of one lock manager (one lockspace, one node).
pub struct Cluster<L, S, R> {
    lm: L,
    cfg: Config,
    notify: Notify,
    lus: BTreeMap<String, Lu<S, R>>,
    locks: HashMap<LockId, (String, Which)>,
    available: Result<(), String>,
    done: Vec<Done<R>>,
}

impl<L, S, R> std::fmt::Debug for Cluster<L, S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("lus", &self.lus.keys().collect::<Vec<_>>())
            .field("available", &self.available)
            .finish_non_exhaustive()
    }
}

/// Everything an LU's state machine touches besides the LU itself.
struct Ctx<'a, L, R> {
    lm: &'a mut L,
    locks: &'a mut HashMap<LockId, (String, Which)>,
    cfg: &'a Config,
    now: Instant,
    done: &'a mut Vec<Done<R>>,
}

impl<L: LockManager, S: StateStore, R> Cluster<L, S, R> {
    /// A cluster side over `lm`; `notify` wakes the event loop and this
    /// side's own thread.
    pub fn new(lm: L, cfg: Config, notify: Notify) -> Self {
        Cluster {
            lm,
            cfg,
            notify,
            lus: BTreeMap::new(),
            locks: HashMap::new(),
            available: Ok(()),
            done: Vec::new(),
        }
    }

    /// What `tcmu-prd status` shows; reads only.
    #[must_use]
    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            available: self.available.clone(),
            lus: self
                .lus
                .iter()
                .map(|(id, lu)| LuLocks {
                    id: id.clone(),
                    held: lu.held,
                    pending: lu.pending.map(|r| r.mode),
                    caw_held: lu.caw.held,
                    queued_updates: lu.updates.len(),
                })
                .collect(),
        }
    }

    /// The lock manager (for its owner's polling).
    pub fn lock_manager(&mut self) -> &mut L {
        &mut self.lm
    }

    /// Adds an LU (its first admission takes the lock).
    pub fn add_lu(&mut self, id: &str, store: S) -> LuHandle {
        let phase = match &self.available {
            Ok(()) => Phase::Closed,
            Err(why) => Phase::Refused(ClusterError::Unavailable(why.clone())),
        };
        let shared = Arc::new(LuShared {
            id: id.to_owned(),
            st: Mutex::new(Shared {
                phase,
                cache: None,
                inflight: 0,
                waiting: false,
            }),
            dlm_requests: AtomicU64::new(0),
            notify: self.notify.clone(),
        });
        self.lus.insert(
            id.to_owned(),
            Lu {
                shared: shared.clone(),
                store,
                lock: None,
                held: None,
                pending: None,
                blocked: false,
                want_pr: false,
                cache: None,
                updates: VecDeque::new(),
                publishing: Vec::new(),
                retry_at: None,
                stalled: false,
                caw: Caw::default(),
                spc2: Spc2::default(),
            },
        );
        info!(lu = id, "LU added to the cluster state cache");
        LuHandle { inner: shared }
    }

    /// Queues an update of LU `lu`; its outcome comes back from
    /// [`Cluster::take_done`] with `tag`.
    pub fn update(&mut self, lu: &str, tag: u64, apply: Apply<R>, now: Instant) {
        let Some(l) = self.lus.get_mut(lu) else {
            self.done.push(Done::Update {
                lu: lu.into(),
                tag,
                result: Err(ClusterError::UnknownLu(lu.into())),
            });
            return;
        };
        l.updates.push_back(PendingUpdate {
            tag,
            since: now,
            apply,
        });
        self.step(now);
    }

    /// Asks for LU `lu`'s COMPARE AND WRITE lock; `Done::Caw` with `tag`
    /// says when it is held (or why not). Release with [`Cluster::caw_release`].
    pub fn caw_acquire(&mut self, lu: &str, tag: u64, now: Instant) {
        let err = match self.lus.get_mut(lu) {
            None => Some(ClusterError::UnknownLu(lu.into())),
            Some(l) => {
                l.caw.queue.push_back((tag, now));
                None
            }
        };
        match err {
            Some(e) => self.done.push(Done::Caw {
                lu: lu.into(),
                tag,
                result: Err(e),
            }),
            None => self.step(now),
        }
    }

    /// Releases the COMPARE AND WRITE lock taken for `tag`.
    pub fn caw_release(&mut self, lu: &str, tag: u64, now: Instant) {
        if let Some(l) = self.lus.get_mut(lu)
            && l.caw.owner == Some(tag)
        {
            l.caw.owner = None;
        }
        self.step(now);
    }

    /// Probes the liveness of LU `lu`'s SPC-2 reservation holder, which a
    /// view of another node serves; `Done::Spc2Probe` with `tag` says when
    /// the node vouching for it (if any) has answered.
    pub fn spc2_probe(&mut self, lu: &str, tag: u64, now: Instant) {
        match self.lus.get_mut(lu) {
            None => self.done.push(Done::Spc2Probe {
                lu: lu.into(),
                tag,
                result: Err(ClusterError::UnknownLu(lu.into())),
            }),
            Some(l) => {
                l.spc2.probes.push_back((tag, now));
                self.step(now);
            }
        }
    }

    /// Whether a view of this node holds LU `lu`'s SPC-2 reservation (and
    /// so this node vouches for it).
    pub fn spc2_vouch(&mut self, lu: &str, on: bool, now: Instant) {
        if let Some(l) = self.lus.get_mut(lu) {
            l.spc2.vouch = on;
            self.step(now);
        }
    }

    /// The answer to a `Done::Spc2Check`: whether a view of this node still
    /// holds the reservation (its session is alive).
    pub fn spc2_answer(&mut self, lu: &str, still_holder: bool, now: Instant) {
        if let Some(l) = self.lus.get_mut(lu) {
            l.spc2.vouch = still_holder;
            if l.spc2.asked {
                l.spc2.answered = true;
            }
            self.step(now);
        }
    }

    /// Finished updates and CAW acquisitions since the last call.
    pub fn take_done(&mut self) -> Vec<Done<R>> {
        std::mem::take(&mut self.done)
    }

    /// Handles what the lock manager reported and moves every LU on.
    pub fn step(&mut self, now: Instant) {
        let mut events = Vec::new();
        self.lm.poll(&mut events);
        for ev in events {
            self.handle(ev, now);
        }
        let mut ctx = Ctx {
            lm: &mut self.lm,
            locks: &mut self.locks,
            cfg: &self.cfg,
            now,
            done: &mut self.done,
        };
        match &self.available {
            Ok(()) => {
                for (id, lu) in &mut self.lus {
                    drive(id, lu, &mut ctx);
                    drive_caw(id, lu, &mut ctx);
                    drive_spc2(id, lu, &mut ctx);
                }
            }
            Err(why) => {
                // Asked for while the lockspace is gone: fail at once, clearly.
                let err = ClusterError::Unavailable(why.clone());
                for (id, lu) in &mut self.lus {
                    fail_updates(id, lu, ctx.done, &err, None);
                    fail_probes(id, &mut lu.spc2, ctx.done, &err);
                    for (tag, _) in lu.caw.queue.drain(..) {
                        ctx.done.push(Done::Caw {
                            lu: id.clone(),
                            tag,
                            result: Err(err.clone()),
                        });
                    }
                }
            }
        }
    }

    fn handle(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Lost { reason } => self.lost(&reason),
            Event::Restored => {
                info!("cluster lockspace usable again; LUs will re-acquire their locks");
                self.available = Ok(());
                for lu in self.lus.values() {
                    let refused = matches!(
                        lu.shared.lock().phase,
                        Phase::Refused(ClusterError::Unavailable(_))
                    );
                    if refused {
                        lu.shared.set_phase(Phase::Closed, None);
                        (self.notify)(Wake::Lu(&lu.shared.id));
                    }
                }
            }
            Event::Blocking { lock, .. } => {
                let Some((id, which)) = self.locks.get(&lock) else {
                    return;
                };
                let Some(lu) = self.lus.get_mut(id) else {
                    return;
                };
                match which {
                    Which::State => {
                        if matches!(lu.held, Some(Mode::Pr | Mode::Ex)) {
                            debug!(lu = %id, "blocking AST: quiescing");
                            lu.blocked = true;
                            if lu.shared.lock().phase == Phase::Serving {
                                lu.shared.set_phase(Phase::Closed, None);
                            }
                        }
                    }
                    Which::Caw => {
                        if lu.caw.held == Some(Mode::Ex) {
                            lu.caw.blocked = true;
                        }
                    }
                    Which::Spc2 => {
                        if lu.spc2.held == Some(Mode::Pr) {
                            lu.spc2.blocked = true;
                        }
                    }
                }
            }
            Event::Completed { lock, result } => {
                let Some((id, which)) = self.locks.get(&lock).cloned() else {
                    return;
                };
                if let Err(LmError::Unavailable(why)) = &result {
                    self.lost(why);
                    return;
                }
                let Some(lu) = self.lus.get_mut(&id) else {
                    return;
                };
                let mut ctx = Ctx {
                    lm: &mut self.lm,
                    locks: &mut self.locks,
                    cfg: &self.cfg,
                    now,
                    done: &mut self.done,
                };
                match which {
                    Which::State => completed(&id, lu, result, &mut ctx),
                    Which::Caw => caw_completed(&id, lu, result, &mut ctx),
                    Which::Spc2 => spc2_completed(&id, lu, result, &mut ctx),
                }
            }
        }
    }

    fn lost(&mut self, why: &str) {
        if self.available.is_ok() {
            error!(
                reason = why,
                "cluster lockspace lost: refusing I/O on every LU"
            );
        }
        self.available = Err(why.to_owned());
        self.locks.clear();
        let err = ClusterError::Unavailable(why.to_owned());
        for (id, lu) in &mut self.lus {
            warn!(lu = %id, reason = why, "lockspace lost: LU refuses I/O (NOT READY)");
            lu.lock = None;
            lu.held = None;
            lu.pending = None;
            lu.blocked = false;
            lu.want_pr = false;
            lu.stalled = false;
            for u in lu.updates.drain(..) {
                self.done.push(Done::Update {
                    lu: id.clone(),
                    tag: u.tag,
                    result: Err(err.clone()),
                });
            }
            for (tag, r) in lu.publishing.drain(..) {
                // The store may hold the new state; the command's outcome is
                // unknown to the initiator either way, so report failure.
                let result = r.and(Err(err.clone()));
                self.done.push(Done::Update {
                    lu: id.clone(),
                    tag,
                    result,
                });
            }
            for (tag, _) in lu.caw.queue.drain(..) {
                self.done.push(Done::Caw {
                    lu: id.clone(),
                    tag,
                    result: Err(err.clone()),
                });
            }
            lu.caw = Caw::default();
            fail_probes(id, &mut lu.spc2, &mut self.done, &err);
            // Vouching resumes once the lockspace is back.
            lu.spc2 = Spc2 {
                vouch: lu.spc2.vouch,
                ..Spc2::default()
            };
            lu.shared.lock().waiting = false;
            lu.shared.set_phase(Phase::Refused(err.clone()), None);
        }
    }
}

fn request<L: LockManager, R>(
    id: &str,
    lock: LockId,
    shared: &LuShared,
    ctx: &mut Ctx<'_, L, R>,
    mode: Mode,
    flags: LockFlags,
    lvb: Option<&[u8; LVB_LEN]>,
) -> Result<Req, LmError> {
    shared.dlm_requests.fetch_add(1, Ordering::Relaxed);
    ctx.lm.request(lock, mode, flags, lvb).map_err(|e| {
        warn!(lu = id, %mode, error = %e, "lock request refused");
        e
    })?;
    Ok(Req {
        mode,
        since: ctx.now,
        cancelling: false,
    })
}

/// Flags for a request from `held`: VALBLK always (reads on up-conversion,
/// writes on down-conversion from EX), QUECVT on up-conversions so that a
/// stream of readers cannot starve a waiting writer.
fn flags_from(held: Option<Mode>, to: Mode, valblk: bool) -> LockFlags {
    LockFlags {
        noqueue: false,
        valblk,
        quecvt: held.is_some_and(|h| to > h),
    }
}

fn fail_updates<S, R>(
    id: &str,
    lu: &mut Lu<S, R>,
    done: &mut Vec<Done<R>>,
    e: &ClusterError,
    expired_before: Option<Instant>,
) {
    while let Some(u) = lu.updates.front() {
        if expired_before.is_some_and(|t| u.since > t) {
            break;
        }
        let u = lu.updates.pop_front().expect("front exists");
        warn!(lu = id, tag = u.tag, error = %e, "update failed");
        done.push(Done::Update {
            lu: id.into(),
            tag: u.tag,
            result: Err(e.clone()),
        });
    }
}

fn drive<L: LockManager, S: StateStore, R>(id: &str, lu: &mut Lu<S, R>, ctx: &mut Ctx<'_, L, R>) {
    let now = ctx.now;
    if lu.retry_at.is_some_and(|t| now >= t) {
        lu.retry_at = None;
        lu.shared.set_phase(Phase::Closed, None);
        (lu.shared.notify)(Wake::Lu(id));
    }
    let expired = now.checked_sub(ctx.cfg.update_timeout);
    let any_expired = lu
        .updates
        .front()
        .is_some_and(|u| expired.is_some_and(|t| u.since <= t));
    if any_expired {
        match &mut lu.pending {
            Some(req) if req.mode == Mode::Ex => {
                if !req.cancelling {
                    warn!(
                        lu = id,
                        "update waited too long for EX (stuck peer?): cancelling"
                    );
                    req.cancelling = true;
                    lu.shared.dlm_requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(lock) = lu.lock
                        && let Err(e) = ctx.lm.cancel(lock)
                    {
                        warn!(lu = id, error = %e, "cancel failed");
                    }
                }
            }
            _ => fail_updates(id, lu, ctx.done, &ClusterError::Busy, expired),
        }
    }
    let lock = match lu.lock {
        Some(l) => l,
        None => match ctx.lm.open(&resource_name(b's', id)) {
            Ok(l) => {
                ctx.locks.insert(l, (id.to_owned(), Which::State));
                lu.lock = Some(l);
                l
            }
            Err(e) => {
                warn!(lu = id, error = %e, "cannot open the state lock");
                return;
            }
        },
    };
    if let Some(req) = lu.pending {
        if req.mode == Mode::Pr
            && !lu.stalled
            && now.saturating_duration_since(req.since) >= ctx.cfg.admit_timeout
        {
            warn!(
                lu = id,
                "PR not granted in time (stuck peer?): refusing I/O with BUSY until it is"
            );
            lu.stalled = true;
            lu.shared
                .set_phase(Phase::Refused(ClusterError::Busy), None);
        }
        return;
    }
    let (inflight, waiting) = {
        let mut s = lu.shared.lock();
        let w = std::mem::take(&mut s.waiting);
        (s.inflight, w)
    };
    lu.want_pr |= waiting;
    let need_ex = !lu.updates.is_empty();
    if need_ex || lu.blocked {
        let serving = lu.shared.lock().phase == Phase::Serving;
        if serving {
            lu.shared.set_phase(Phase::Closed, None);
        }
    }
    let target = match lu.held {
        Some(Mode::Pr | Mode::Ex) if need_ex || lu.blocked => {
            if inflight > 0 {
                return; // the last ticket's drop wakes us
            }
            Mode::Nl
        }
        None | Some(Mode::Nl) if need_ex => Mode::Ex,
        None | Some(Mode::Nl) if lu.want_pr => Mode::Pr,
        _ => return,
    };
    if lu.held == Some(Mode::Nl) || lu.held.is_none() {
        lu.blocked = false;
    }
    match request(
        id,
        lock,
        &lu.shared,
        ctx,
        target,
        flags_from(lu.held, target, true),
        None,
    ) {
        Ok(r) => lu.pending = Some(r),
        Err(e) => fail_updates(
            id,
            lu,
            ctx.done,
            &ClusterError::Inconsistent(e.to_string()),
            None,
        ),
    }
}

/// Checks a store read against the LVB that came with a grant.
fn validate(
    id: &str,
    grant: &Grant,
    cache: Option<&Cached>,
    store: &impl StateStore,
    always_read: bool,
) -> Result<(Cached, Option<Snapshot>), ClusterError> {
    let lvb = if grant.lvb_invalid {
        info!(
            lu = id,
            "LVB not valid (a holder died in EX): re-reading the state store"
        );
        None
    } else {
        match Lvb::decode(&grant.lvb) {
            Ok(l) => l,
            Err(LvbError::NewerFormat(f)) => {
                return Err(ClusterError::Inconsistent(format!(
                    "a newer tcmu-prd (LVB format {f}) shares this LU; upgrade this node"
                )));
            }
            Err(e) => {
                warn!(lu = id, error = %e, "unusable LVB: re-reading the state store");
                None
            }
        }
    };
    if !always_read
        && let (Some(l), Some(c)) = (lvb, cache)
        && l.seq == c.seq
        && l.state_crc == c.crc
    {
        return Ok((c.clone(), None));
    }
    let snap = store
        .read()
        .map_err(|e| ClusterError::Store(e.to_string()))?;
    if let Some(l) = lvb {
        let have = snap.as_ref().map_or(0, |s| s.seq);
        if have < l.seq {
            return Err(ClusterError::Inconsistent(format!(
                "the store's newest state is seq {have} but the LVB names seq {}: stale read of the shared storage?",
                l.seq
            )));
        }
        if let Some(s) = &snap
            && s.seq == l.seq
            && crc32c::crc32c(&s.payload) != l.state_crc
        {
            return Err(ClusterError::Inconsistent(format!(
                "the store's seq {} does not match the LVB's checksum",
                s.seq
            )));
        }
    }
    Ok((Cached::from_snapshot(snap.as_ref()), snap))
}

fn completed<L: LockManager, S: StateStore, R>(
    id: &str,
    lu: &mut Lu<S, R>,
    result: Result<Grant, LmError>,
    ctx: &mut Ctx<'_, L, R>,
) {
    let Some(req) = lu.pending.take() else {
        debug!(lu = id, ?result, "completion without a request");
        return;
    };
    let grant = match result {
        Ok(g) => g,
        Err(e) => {
            if req.mode == Mode::Ex {
                let expired = ctx.now.checked_sub(ctx.cfg.update_timeout);
                let err = if matches!(e, LmError::Cancelled | LmError::WouldBlock) {
                    ClusterError::Busy
                } else {
                    ClusterError::Inconsistent(e.to_string())
                };
                fail_updates(
                    id,
                    lu,
                    ctx.done,
                    &err,
                    if err == ClusterError::Busy {
                        expired
                    } else {
                        None
                    },
                );
            } else {
                warn!(lu = id, mode = %req.mode, error = %e, "lock request failed");
            }
            return;
        }
    };
    let from = lu.held;
    lu.held = Some(grant.mode);
    match grant.mode {
        Mode::Ex => run_updates(id, lu, &grant, ctx),
        Mode::Pr if from == Some(Mode::Ex) => {
            finish_publishing(id, lu, ctx);
            lu.want_pr = false;
            lu.stalled = false;
            lu.shared.set_phase(Phase::Serving, lu.cache.clone());
        }
        Mode::Pr => {
            lu.stalled = false;
            match validate(id, &grant, lu.cache.as_ref(), &lu.store, false) {
                Ok((c, read)) => {
                    if read.is_some() {
                        debug!(lu = id, seq = c.seq, "re-read the state store");
                    }
                    lu.cache = Some(c.clone());
                    lu.want_pr = false;
                    lu.shared.set_phase(Phase::Serving, Some(c));
                }
                Err(e) => {
                    error!(lu = id, error = %e, "cannot validate the cached state: refusing I/O");
                    lu.want_pr = false;
                    // Step down to NL so that the retry re-reads under a fresh PR.
                    lu.blocked = true;
                    lu.retry_at = Some(ctx.now + ctx.cfg.retry_after);
                    lu.shared.set_phase(Phase::Refused(e), None);
                }
            }
        }
        _ => {
            lu.blocked = false;
            if from == Some(Mode::Ex) {
                finish_publishing(id, lu, ctx);
            }
        }
    }
}

fn finish_publishing<L, S, R>(id: &str, lu: &mut Lu<S, R>, ctx: &mut Ctx<'_, L, R>) {
    for (tag, result) in lu.publishing.drain(..) {
        ctx.done.push(Done::Update {
            lu: id.into(),
            tag,
            result,
        });
    }
}

fn run_updates<L: LockManager, S: StateStore, R>(
    id: &str,
    lu: &mut Lu<S, R>,
    grant: &Grant,
    ctx: &mut Ctx<'_, L, R>,
) {
    let updates: Vec<PendingUpdate<R>> = lu.updates.drain(..).collect();
    let mut publish = true;
    let mut left_err = ClusterError::Store("state store unreadable".into());
    let mut cur = match validate(id, grant, None, &lu.store, true) {
        Ok((_, snap)) => snap,
        Err(e) => {
            error!(lu = id, error = %e, "cannot read the current state under EX: failing updates");
            left_err = e;
            publish = false;
            None
        }
    };
    let mut todo = updates.into_iter();
    if publish {
        for u in todo.by_ref() {
            let before = cur.as_ref().map_or(&[][..], |s| s.payload.as_slice());
            let (result, new) = (u.apply)(before);
            let Some(bytes) = new else {
                let seq = cur.as_ref().map_or(0, |s| s.seq);
                lu.publishing.push((u.tag, Ok(Updated { result, seq })));
                continue;
            };
            match lu.store.write(cur.as_ref(), &bytes) {
                Ok(s) => {
                    info!(lu = id, seq = s.seq, tag = u.tag, "state updated");
                    lu.publishing
                        .push((u.tag, Ok(Updated { result, seq: s.seq })));
                    cur = Some(s);
                }
                Err(e) => {
                    error!(lu = id, error = %e, "state store write failed");
                    lu.publishing
                        .push((u.tag, Err(ClusterError::Store(e.to_string()))));
                    // The write may or may not have landed: publish what is there.
                    match lu.store.read() {
                        Ok(s) => cur = s,
                        Err(e) => {
                            error!(lu = id, error = %e, "state store unreadable after a failed write");
                            publish = false;
                        }
                    }
                }
            }
            if !publish {
                break;
            }
        }
    }
    // Whatever the loop did not reach fails (empty unless `publish` turned false).
    for u in todo {
        lu.publishing.push((u.tag, Err(left_err.clone())));
    }
    let lvb = cur.as_ref().filter(|_| publish).map(|s| {
        Lvb {
            seq: s.seq,
            state_crc: crc32c::crc32c(&s.payload),
        }
        .encode()
    });
    if publish {
        lu.cache = Some(Cached::from_snapshot(cur.as_ref()));
    } else {
        lu.cache = None;
    }
    let to = if lu.blocked || !publish {
        Mode::Nl
    } else {
        Mode::Pr
    };
    let Some(lock) = lu.lock else { return };
    match request(
        id,
        lock,
        &lu.shared,
        ctx,
        to,
        flags_from(lu.held, to, lvb.is_some()),
        lvb.as_ref(),
    ) {
        Ok(r) => lu.pending = Some(r),
        Err(e) => {
            for (tag, r) in lu.publishing.drain(..) {
                let result = r.and(Err(ClusterError::Inconsistent(e.to_string())));
                ctx.done.push(Done::Update {
                    lu: id.into(),
                    tag,
                    result,
                });
            }
        }
    }
}

fn drive_caw<L: LockManager, S, R>(id: &str, lu: &mut Lu<S, R>, ctx: &mut Ctx<'_, L, R>) {
    let now = ctx.now;
    let expired = now.checked_sub(ctx.cfg.update_timeout);
    let c = &mut lu.caw;
    if c.queue
        .front()
        .is_some_and(|(_, t)| expired.is_some_and(|e| *t <= e))
    {
        match &mut c.pending {
            Some(req) if req.mode == Mode::Ex => {
                if !req.cancelling {
                    req.cancelling = true;
                    lu.shared.dlm_requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(l) = c.lock {
                        let _ = ctx.lm.cancel(l);
                    }
                }
            }
            _ => expire_caw(id, c, ctx.done, expired),
        }
    }
    if c.pending.is_some() || c.owner.is_some() {
        return;
    }
    if c.queue.is_empty() && !c.blocked {
        return;
    }
    let lock = match c.lock {
        Some(l) => l,
        None => match ctx.lm.open(&resource_name(b'c', id)) {
            Ok(l) => {
                ctx.locks.insert(l, (id.to_owned(), Which::Caw));
                c.lock = Some(l);
                l
            }
            Err(e) => {
                warn!(lu = id, error = %e, "cannot open the COMPARE AND WRITE lock");
                return;
            }
        },
    };
    let to = if c.held == Some(Mode::Ex) {
        if c.blocked {
            Mode::Nl // another node waits: let it in, then queue again
        } else {
            let (tag, _) = c.queue.pop_front().expect("queue not empty");
            c.owner = Some(tag);
            ctx.done.push(Done::Caw {
                lu: id.into(),
                tag,
                result: Ok(()),
            });
            return;
        }
    } else if c.queue.is_empty() {
        c.blocked = false;
        return;
    } else {
        Mode::Ex
    };
    let flags = flags_from(c.held, to, false);
    match request(id, lock, &lu.shared, ctx, to, flags, None) {
        Ok(r) => lu.caw.pending = Some(r),
        Err(e) => {
            for (tag, _) in lu.caw.queue.drain(..) {
                ctx.done.push(Done::Caw {
                    lu: id.into(),
                    tag,
                    result: Err(ClusterError::Inconsistent(e.to_string())),
                });
            }
        }
    }
}

fn expire_caw<R>(id: &str, c: &mut Caw, done: &mut Vec<Done<R>>, expired: Option<Instant>) {
    while c
        .queue
        .front()
        .is_some_and(|(_, t)| expired.is_some_and(|e| *t <= e))
    {
        let (tag, _) = c.queue.pop_front().expect("front exists");
        warn!(lu = id, tag, "COMPARE AND WRITE lock not granted in time");
        done.push(Done::Caw {
            lu: id.into(),
            tag,
            result: Err(ClusterError::Busy),
        });
    }
}

fn caw_completed<L, S, R>(
    id: &str,
    lu: &mut Lu<S, R>,
    result: Result<Grant, LmError>,
    ctx: &mut Ctx<'_, L, R>,
) {
    let c = &mut lu.caw;
    c.pending = None;
    match result {
        Ok(g) => {
            c.held = Some(g.mode);
            if g.mode == Mode::Nl {
                c.blocked = false;
            }
        }
        Err(e) => {
            debug!(lu = id, error = %e, "COMPARE AND WRITE lock request failed");
            let expired = ctx.now.checked_sub(ctx.cfg.update_timeout);
            expire_caw(id, c, ctx.done, expired);
        }
    }
}

fn drive_spc2<L: LockManager, S, R>(id: &str, lu: &mut Lu<S, R>, ctx: &mut Ctx<'_, L, R>) {
    let expired = ctx.now.checked_sub(ctx.cfg.update_timeout);
    let s = &mut lu.spc2;
    if s.probes
        .front()
        .is_some_and(|(_, t)| expired.is_some_and(|e| *t <= e))
    {
        match &mut s.pending {
            Some(req) if req.mode == Mode::Ex => {
                if !req.cancelling {
                    req.cancelling = true;
                    lu.shared.dlm_requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(l) = s.lock {
                        let _ = ctx.lm.cancel(l);
                    }
                }
            }
            _ => expire_probes(id, s, ctx.done, expired),
        }
    }
    if s.pending.is_some() {
        return;
    }
    let to = match s.held {
        Some(Mode::Ex) => {
            // Granted: whoever vouched has answered.
            for (tag, _) in s.probes.drain(..) {
                ctx.done.push(Done::Spc2Probe {
                    lu: id.into(),
                    tag,
                    result: Ok(()),
                });
            }
            Mode::Nl
        }
        Some(Mode::Pr) if s.blocked && s.vouch && !s.answered => {
            if !s.asked {
                s.asked = true;
                debug!(
                    lu = id,
                    "another node probes the SPC-2 holder this node vouches for"
                );
                ctx.done.push(Done::Spc2Check { lu: id.into() });
            }
            return;
        }
        Some(Mode::Pr) if s.blocked || !s.vouch || !s.probes.is_empty() => Mode::Nl,
        Some(Mode::Pr) => return,
        held => {
            if !s.probes.is_empty() {
                // From NL, so that the probe queues as a conversion: ahead
                // of the vouching node's own PR request that follows its
                // answer.
                if held.is_none() { Mode::Nl } else { Mode::Ex }
            } else if s.vouch {
                Mode::Pr
            } else {
                return;
            }
        }
    };
    let lock = match s.lock {
        Some(l) => l,
        None => match ctx.lm.open(&resource_name(b'r', id)) {
            Ok(l) => {
                ctx.locks.insert(l, (id.to_owned(), Which::Spc2));
                s.lock = Some(l);
                l
            }
            Err(e) => {
                warn!(lu = id, error = %e, "cannot open the SPC-2 liveness lock");
                fail_probes(id, s, ctx.done, &ClusterError::Busy);
                return;
            }
        },
    };
    let flags = flags_from(s.held, to, false);
    match request(id, lock, &lu.shared, ctx, to, flags, None) {
        Ok(r) => lu.spc2.pending = Some(r),
        Err(e) => fail_probes(
            id,
            &mut lu.spc2,
            ctx.done,
            &ClusterError::Inconsistent(e.to_string()),
        ),
    }
}

fn fail_probes<R>(id: &str, s: &mut Spc2, done: &mut Vec<Done<R>>, e: &ClusterError) {
    for (tag, _) in s.probes.drain(..) {
        done.push(Done::Spc2Probe {
            lu: id.into(),
            tag,
            result: Err(e.clone()),
        });
    }
}

fn expire_probes<R>(id: &str, s: &mut Spc2, done: &mut Vec<Done<R>>, expired: Option<Instant>) {
    while s
        .probes
        .front()
        .is_some_and(|(_, t)| expired.is_some_and(|e| *t <= e))
    {
        let (tag, _) = s.probes.pop_front().expect("front exists");
        warn!(lu = id, tag, "SPC-2 holder probe not answered in time");
        done.push(Done::Spc2Probe {
            lu: id.into(),
            tag,
            result: Err(ClusterError::Busy),
        });
    }
}

fn spc2_completed<L, S, R>(
    id: &str,
    lu: &mut Lu<S, R>,
    result: Result<Grant, LmError>,
    ctx: &mut Ctx<'_, L, R>,
) {
    let s = &mut lu.spc2;
    s.pending = None;
    match result {
        Ok(g) => {
            s.held = Some(g.mode);
            if g.mode == Mode::Nl {
                s.blocked = false;
                s.asked = false;
                s.answered = false;
            }
        }
        Err(LmError::Cancelled) => {
            let expired = ctx.now.checked_sub(ctx.cfg.update_timeout);
            expire_probes(id, s, ctx.done, expired);
        }
        Err(e) => {
            warn!(lu = id, error = %e, "SPC-2 liveness lock request failed");
            fail_probes(id, s, ctx.done, &ClusterError::Busy);
        }
    }
}
