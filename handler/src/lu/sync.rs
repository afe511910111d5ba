//! How an LU reads and changes its durable state: alone (`[cluster] mode =
//! "local"`) or through the cluster protocol (`mode = "dlm"`, DESIGN.md §4).
//!
//! [`StateSync`] is the one place `Lu` goes for its state:
//! - `admit`: the state a command runs against. Local: the in-memory copy
//!   (a read lock and an `Arc` clone, as before). Cluster: a
//!   [`Ticket`](crate::cluster::cache::Ticket) from the LU's state cache,
//!   held until the command ends so that a blocking AST or an update drains
//!   it; if the cache must first re-acquire its lock, the worker thread
//!   waits for it, bounded (never the event loop: commands run on workers).
//! - `update`: the read-modify-write of the state. Local: under a mutex,
//!   store write, then the in-memory copy. Cluster: the closure runs on the
//!   cluster thread under EX against the newest stored state; the command
//!   completes after the store write and the LVB publish.
//! - Unit attentions: local mode hands them back to the caller's queue;
//!   cluster mode records them in the state's `UaLog` (they may be for a
//!   nexus another node serves) and each node moves those of its own views
//!   into its queue (`sync_uas`), remembering what it moved in `Delivered`.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tracing::{info, warn};

use super::state::{Identity, LuState};
use super::view::OpenError;
use crate::cluster::cache::{
    self, Admission, Apply, ClusterError, ScsiFailure, StateStore, Ticket, Updated,
};
use crate::cluster::dlm::{ClusterThread, Dlm};
use crate::cluster::health::Health;
use crate::cluster::lockmgr::LockManager;
use crate::cluster::store::{Snapshot, Store, StoreError};
use crate::cluster::ua::Delivered;
use crate::config::DeviceConfig;
use crate::pr::{Nexus, Ua, UaQueues, UnitAttention};
use crate::scsi::{self, Blocks, CawHook, HookRefusal, Lba, SenseCode, SenseInfo};

/// What an update closure returns through the cluster thread (one type for
/// every kind of update; downcast by the caller that queued it).
pub type Reply = Box<dyn Any + Send>;

/// Unit-attention records kept in the state: enough for every nexus to be
/// told of the last few changes; older ones are dropped (SPC-4 allows a UA
/// overflow to lose conditions).
pub(crate) const UA_LOG_KEEP: usize = 256;

/// The cluster side an LU talks to: the cluster thread in the daemon, a
/// fake-DLM harness in tests.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Adds an LU; its handle comes back on the channel.
    fn add_lu(
        &self,
        id: &str,
        store: Box<dyn StateStore + Send>,
    ) -> Result<Receiver<cache::LuHandle>, ClusterError>;
    /// Queues an update; its outcome comes back on the channel.
    fn update(
        &self,
        lu: &str,
        apply: Apply<Reply>,
    ) -> Result<Receiver<Result<Updated<Reply>, ClusterError>>, ClusterError>;
    /// Asks for the LU's COMPARE AND WRITE lock.
    fn caw_acquire(&self, lu: &str) -> Result<Receiver<Result<u64, ClusterError>>, ClusterError>;
    /// Releases it.
    fn caw_release(&self, lu: &str, token: u64) -> Result<(), ClusterError>;
    /// Probes the liveness of the LU's SPC-2 holder served by another node
    /// (`cache` module docs); `Ok` once whoever vouches for it answered.
    fn spc2_probe(&self, lu: &str) -> Result<Receiver<Result<(), ClusterError>>, ClusterError>;
    /// Whether a view of this node holds the LU's SPC-2 reservation.
    fn spc2_vouch(&self, lu: &str, on: bool) -> Result<(), ClusterError>;
    /// Answers a check asked through `Spc2Holders`.
    fn spc2_answer(&self, lu: &str, still_holder: bool) -> Result<(), ClusterError>;
}

/// What checks an SPC-2 holder's session when another node probes it: the
/// LU (`view::Lu`).
pub trait Spc2Holder: Send + Sync {
    /// Releases the SPC-2 reservation if its holder is a view of this node
    /// whose session is gone; returns whether a view of this node still
    /// holds it.
    fn check_spc2_holder(&self) -> bool;
}

/// The LUs that may vouch for an SPC-2 holder, by LU id.
pub type Spc2Holders = Arc<Mutex<HashMap<String, std::sync::Weak<dyn Spc2Holder>>>>;

/// Runs the check for `lu` on its own thread (it reads configfs and may
/// update the state: neither may happen on the cluster thread) and answers.
pub fn spawn_spc2_check(holders: &Spc2Holders, backend: Arc<dyn Backend>, lu: &str) {
    let who = holders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(lu)
        .and_then(std::sync::Weak::upgrade);
    let id = lu.to_owned();
    let run = move || {
        let still = who.is_some_and(|w| w.check_spc2_holder());
        if let Err(e) = backend.spc2_answer(&id, still) {
            warn!(lu = %id, error = %e, "answering an SPC-2 holder probe");
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("spc2-check".into())
        .spawn(run)
    {
        warn!(lu, error = %e, "cannot start the SPC-2 holder check");
    }
}

impl Backend for ClusterThread<Reply> {
    fn add_lu(
        &self,
        id: &str,
        store: Box<dyn StateStore + Send>,
    ) -> Result<Receiver<cache::LuHandle>, ClusterError> {
        ClusterThread::add_lu(self, id, store)
    }
    fn update(
        &self,
        lu: &str,
        apply: Apply<Reply>,
    ) -> Result<Receiver<Result<Updated<Reply>, ClusterError>>, ClusterError> {
        ClusterThread::update(self, lu, apply)
    }
    fn caw_acquire(&self, lu: &str) -> Result<Receiver<Result<u64, ClusterError>>, ClusterError> {
        ClusterThread::caw_acquire(self, lu)
    }
    fn caw_release(&self, lu: &str, token: u64) -> Result<(), ClusterError> {
        ClusterThread::caw_release(self, lu, token)
    }
    fn spc2_probe(&self, lu: &str) -> Result<Receiver<Result<(), ClusterError>>, ClusterError> {
        ClusterThread::spc2_probe(self, lu)
    }
    fn spc2_vouch(&self, lu: &str, on: bool) -> Result<(), ClusterError> {
        ClusterThread::spc2_vouch(self, lu, on)
    }
    fn spc2_answer(&self, lu: &str, still_holder: bool) -> Result<(), ClusterError> {
        ClusterThread::spc2_answer(self, lu, still_holder)
    }
}

/// Wakes workers parked on an admission: one generation counter for every
/// LU (a spurious wake-up costs one `admit`).
#[derive(Debug, Default)]
pub struct Ready {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Ready {
    /// Something changed: parked admissions retry.
    pub fn bump(&self) {
        *self
            .generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        self.cv.notify_all();
    }

    fn generation(&self) -> u64 {
        *self
            .generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the generation moves past `seen`, at most `timeout`.
    fn wait(&self, seen: u64, timeout: Duration) {
        let g = self
            .generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self
            .cv
            .wait_timeout_while(g, timeout, |g| *g == seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

/// The daemon's cluster side, shared by every LU it opens.
#[derive(Debug)]
pub struct ClusterCtx {
    backend: Arc<dyn Backend>,
    /// LUs that answer SPC-2 holder probes from other nodes.
    spc2_holders: Spc2Holders,
    ready: Arc<Ready>,
    /// How long a worker waits for an admission, an update or the CAW lock
    /// (the protocol's own bounds are below it; this one only guards
    /// against a cluster thread that stopped answering).
    bound: Duration,
    /// One cache entry per LU id for the life of the process: a reopened
    /// LU must not add a second lock on the same resource.
    handles: Mutex<HashMap<String, cache::LuHandle>>,
    thread: Option<ClusterThread<Reply>>,
    /// Whether the kernel runs the lockspace (`cluster::health`); `None`
    /// where nothing watches it (test harnesses).
    health: Option<Arc<Health>>,
}

/// How this daemon's LUs keep their state.
#[derive(Debug, Clone, Default)]
pub enum Sharing {
    /// One node: the store alone (`[cluster] mode = "local"`).
    #[default]
    Local,
    /// Through a lock manager (`mode = "dlm"`).
    Cluster(Arc<ClusterCtx>),
}

impl Sharing {
    /// The real DLM: joins `lockspace` on a cluster thread. Updates give up
    /// after `update_timeout` (BUSY), as do admissions waiting for PR.
    ///
    /// Returns once the first join attempt has finished (or after
    /// `JOIN_WAIT`), so that a daemon that reports ready to systemd has
    /// either joined or logged why not: portals ordered after it do not open
    /// onto LUs still waiting for their lockspace.
    pub fn dlm(
        lockspace: &str,
        update_timeout: Duration,
        sysfs: &Path,
    ) -> std::io::Result<Sharing> {
        const JOIN_WAIT: Duration = Duration::from_secs(30);
        let name = lockspace.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let health = Arc::new(Health::new(lockspace, update_timeout));
        crate::cluster::health::watch(&health, sysfs.to_owned())?;
        let sharing = Self::spawn_with(
            move || {
                let dlm = Dlm::join(&name);
                let _ = tx.send(());
                dlm
            },
            update_timeout,
            Some(health),
        )?;
        if rx.recv_timeout(JOIN_WAIT).is_err() {
            tracing::warn!(
                lockspace,
                "still joining the DLM lockspace after {}s; serving NOT READY until it is joined",
                JOIN_WAIT.as_secs()
            );
        }
        Ok(sharing)
    }

    /// Any lock manager, built on the cluster thread by `make`.
    pub fn spawn<L, F>(make: F, update_timeout: Duration) -> std::io::Result<Sharing>
    where
        L: LockManager,
        F: FnOnce() -> L + Send + 'static,
    {
        Self::spawn_with(make, update_timeout, None)
    }

    fn spawn_with<L, F>(
        make: F,
        update_timeout: Duration,
        health: Option<Arc<Health>>,
    ) -> std::io::Result<Sharing>
    where
        L: LockManager,
        F: FnOnce() -> L + Send + 'static,
    {
        let ready = Arc::new(Ready::default());
        let r = ready.clone();
        let cfg = cache::Config {
            update_timeout,
            admit_timeout: update_timeout,
            ..cache::Config::default()
        };
        let holders = Spc2Holders::default();
        let h = holders.clone();
        let me: Arc<std::sync::OnceLock<Arc<dyn Backend>>> = Arc::default();
        let m = me.clone();
        let thread = ClusterThread::spawn(
            make,
            cfg,
            Arc::new(move |_lu: &str| r.bump()),
            Arc::new(move |lu: &str| {
                if let Some(b) = m.get() {
                    spawn_spc2_check(&h, b.clone(), lu);
                }
            }),
        )?;
        let backend: Arc<dyn Backend> = Arc::new(thread.clone());
        let _ = me.set(backend.clone());
        Ok(Self::with_backend_and_holders(
            backend,
            holders,
            ready,
            update_timeout,
            Some(thread),
            health,
        ))
    }

    /// Over any backend (tests: the fake DLM harness); `ready` must be
    /// bumped whenever the backend says an LU's parked commands may retry.
    #[must_use]
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        ready: Arc<Ready>,
        update_timeout: Duration,
        thread: Option<ClusterThread<Reply>>,
        health: Option<Arc<Health>>,
    ) -> Sharing {
        Self::with_backend_and_holders(
            backend,
            Spc2Holders::default(),
            ready,
            update_timeout,
            thread,
            health,
        )
    }

    /// [`Sharing::with_backend`], with the registry through which the
    /// backend's SPC-2 holder checks find their LUs.
    #[must_use]
    pub fn with_backend_and_holders(
        backend: Arc<dyn Backend>,
        spc2_holders: Spc2Holders,
        ready: Arc<Ready>,
        update_timeout: Duration,
        thread: Option<ClusterThread<Reply>>,
        health: Option<Arc<Health>>,
    ) -> Sharing {
        Sharing::Cluster(Arc::new(ClusterCtx {
            backend,
            spc2_holders,
            ready,
            bound: update_timeout + Duration::from_secs(2),
            handles: Mutex::new(HashMap::new()),
            thread,
            health,
        }))
    }

    /// How long the kernel has kept the lockspace stopped (`None`: running,
    /// unwatched, or local mode), for `status`.
    #[must_use]
    pub fn lockspace_stopped_for(&self) -> Option<(Duration, String)> {
        let Sharing::Cluster(c) = self else {
            return None;
        };
        c.health.as_ref()?.stopped_for()
    }

    /// The cluster thread's picture of every LU's locks and of the
    /// lockspace (`tcmu-prd status`): `None` in local mode or without a
    /// cluster thread, `Err` if it does not answer within `bound` (it may
    /// be inside a libdlm call that waits for lockspace recovery).
    #[must_use]
    pub fn snapshot(&self, bound: Duration) -> Option<Result<cache::ClusterSnapshot, String>> {
        let Sharing::Cluster(c) = self else {
            return None;
        };
        let t = c.thread.as_ref()?;
        Some(match t.snapshot() {
            Ok(rx) => rx.recv_timeout(bound).map_err(|_| {
                format!(
                    "the cluster thread did not answer within {} ms (busy in a DLM call?)",
                    bound.as_millis()
                )
            }),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Stops the cluster thread, if any (daemon exit).
    pub fn shutdown(&self) {
        if let Sharing::Cluster(c) = self
            && let Some(t) = &c.thread
        {
            t.shutdown();
        }
    }
}

/// An LU's cluster side as this node sees it (`tcmu-prd status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLuInfo {
    /// The LU's cluster-wide id (`serial:<serial>` or the store path).
    pub id: String,
    /// `serving`, `closed` or `refused`.
    pub phase: &'static str,
    /// Why commands are refused.
    pub refusal: Option<String>,
    /// Commands admitted and running.
    pub tickets: usize,
    /// DLM requests made for the LU.
    pub dlm_requests: u64,
    /// Sequence number of the state last decoded here.
    pub seq: u64,
}

/// The state a command runs against; for cluster LUs also the right to run
/// (dropping it ends the command for the protocol).
#[derive(Debug)]
pub struct Admitted {
    state: Arc<LuState>,
    _ticket: Option<Ticket>,
}

impl Admitted {
    /// The state.
    #[must_use]
    pub fn state(&self) -> &LuState {
        &self.state
    }

    /// The state, shared: its identity (`Arc::ptr_eq`) changes with every
    /// state change, so per-state answers can be remembered against it.
    #[must_use]
    pub fn state_arc(&self) -> &Arc<LuState> {
        &self.state
    }
}

/// Why an update did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The local store write failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster protocol refused or failed it.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl SyncError {
    /// The SCSI answer for a command that failed with this error: store
    /// failures are target failures, cluster ones as `ClusterError::scsi`.
    #[must_use]
    pub fn response(&self, lu: &scsi::Lu) -> scsi::Response {
        match self {
            SyncError::Store(_) => check(lu, SenseInfo::new(scsi::sense::INTERNAL_TARGET_FAILURE)),
            SyncError::Cluster(e) => refusal(lu, e),
        }
    }
}

fn check(lu: &scsi::Lu, info: SenseInfo) -> scsi::Response {
    scsi::Response {
        status: scsi::sense::status::CHECK_CONDITION,
        sense: Some(lu.encode_sense(&info)),
        data_in_len: 0,
    }
}

/// The SCSI answer for a command the cluster protocol refused.
#[must_use]
pub fn refusal(lu: &scsi::Lu, e: &ClusterError) -> scsi::Response {
    match e.scsi() {
        ScsiFailure::Busy => scsi::Response {
            status: scsi::sense::status::BUSY,
            sense: None,
            data_in_len: 0,
        },
        ScsiFailure::NotReady { asc, ascq } => check(
            lu,
            SenseInfo::new(SenseCode {
                key: scsi::sense::key::NOT_READY,
                asc,
                ascq,
            }),
        ),
    }
}

/// The single-node synchroniser: the store and the state it last held.
#[derive(Debug)]
pub struct LocalSync {
    store: Mutex<(Store, Option<Snapshot>)>,
    state: RwLock<Arc<LuState>>,
}

/// The cluster synchroniser of one LU.
#[derive(Debug)]
pub struct ClusterSync {
    ctx: Arc<ClusterCtx>,
    id: String,
    handle: cache::LuHandle,
    /// The last state decoded from a ticket, by sequence number: a ticket
    /// for the same seq reuses it (no JSON per command).
    decoded: Mutex<(u64, Arc<LuState>)>,
    delivered: Mutex<Delivered<Nexus>>,
    /// Whether the last admission was refused (to log transitions once).
    refusing: AtomicBool,
}

/// How one LU reads and changes its state.
#[derive(Debug)]
pub enum StateSync {
    /// `mode = "local"`.
    Local(LocalSync),
    /// `mode = "dlm"`.
    Cluster(ClusterSync),
}

/// Whether the store may use O_DIRECT: tmpfs (tests) has none. A block
/// device always does (and must: its page cache would hide other nodes'
/// writes), though its node lives on devtmpfs.
fn store_direct(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
        return true;
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    rustix::fs::statfs(dir)
        .map(|s| s.f_type != 0x0102_1994)
        .unwrap_or(true)
}

fn new_identity(state: &Path) -> Result<Identity, StoreError> {
    Identity::generate().map_err(|e| StoreError::Io {
        path: state.to_path_buf(),
        op: "reading /dev/urandom",
        source: e,
    })
}

fn decode(path: &Path, bytes: &[u8]) -> Result<LuState, OpenError> {
    LuState::decode(bytes).map_err(|source| OpenError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// The cluster-wide name of an LU: its configured serial, or else the
/// state store's path (which every node must then spell the same way).
fn lu_id(cfg: &DeviceConfig) -> String {
    match &cfg.serial {
        Some(s) => format!("serial:{s}"),
        None => {
            let p: PathBuf =
                std::fs::canonicalize(&cfg.state).unwrap_or_else(|_| cfg.state.clone());
            p.display().to_string()
        }
    }
}

/// Downcasts an update's reply to what its closure returned.
fn take<R: 'static>(r: Reply) -> Result<R, ClusterError> {
    r.downcast::<R>()
        .map(|b| *b)
        .map_err(|_| ClusterError::Inconsistent("update reply of an unexpected type".into()))
}

impl StateSync {
    /// Opens the LU's state: the store (creating the identity on first
    /// use) and, in cluster mode, the LU's entry in the state cache.
    /// Test and benchmark use only: local state in a new store at `path`.
    #[doc(hidden)]
    pub fn local_for_tests(path: &std::path::Path, state: LuState) -> Result<StateSync, OpenError> {
        let store = Store::open(path, true, false)?;
        let snap = store.write(None, &state.encode())?;
        Ok(StateSync::Local(LocalSync {
            store: Mutex::new((store, Some(snap))),
            state: RwLock::new(Arc::new(state)),
        }))
    }

    pub fn open(cfg: &DeviceConfig, sharing: &Sharing) -> Result<(StateSync, LuState), OpenError> {
        let store = Store::open(&cfg.state, true, store_direct(&cfg.state))?;
        match sharing {
            Sharing::Local => {
                let (snap, state) = match store.read()? {
                    Some(snap) => {
                        let st = decode(&cfg.state, &snap.payload)?;
                        (Some(snap), st)
                    }
                    None => {
                        let st = LuState::new(new_identity(&cfg.state)?);
                        let snap = store.write(None, &st.encode())?;
                        info!(image = %cfg.image.display(), serial = %st.identity.serial, "created LU identity");
                        (Some(snap), st)
                    }
                };
                let sync = LocalSync {
                    store: Mutex::new((store, snap)),
                    state: RwLock::new(Arc::new(state.clone())),
                };
                Ok((StateSync::Local(sync), state))
            }
            Sharing::Cluster(ctx) => Self::open_cluster(cfg, ctx, store),
        }
    }

    fn open_cluster(
        cfg: &DeviceConfig,
        ctx: &Arc<ClusterCtx>,
        store: Store,
    ) -> Result<(StateSync, LuState), OpenError> {
        let id = lu_id(cfg);
        // The identity never changes once written, so an unlocked read of
        // any valid slot is enough to know it.
        let existing = store.read()?;
        let handle = {
            let mut handles = ctx
                .handles
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match handles.get(&id) {
                Some(h) => h.clone(),
                None => {
                    let cache_store = Store::open(&cfg.state, false, store_direct(&cfg.state))?;
                    let h = ctx
                        .backend
                        .add_lu(&id, Box::new(cache_store))
                        .and_then(|rx| {
                            rx.recv_timeout(ctx.bound).map_err(|_| {
                                ClusterError::Unavailable("cluster thread not answering".into())
                            })
                        })
                        .map_err(|e| cluster_open_error(&cfg.state, &e))?;
                    handles.insert(id.clone(), h.clone());
                    h
                }
            }
        };
        let (seq, state) = match existing {
            Some(snap) => (snap.seq, decode(&cfg.state, &snap.payload)?),
            None => {
                // First use anywhere (as far as we can see): create it under
                // EX, so that two nodes racing here agree on one identity.
                let fresh = LuState::new(new_identity(&cfg.state)?);
                let image = cfg.image.clone();
                let apply: Apply<Reply> = Box::new(move |old: &[u8]| {
                    if old.is_empty() {
                        info!(image = %image.display(), serial = %fresh.identity.serial, "created LU identity");
                        let bytes = fresh.encode();
                        (Box::new(fresh) as Reply, Some(bytes))
                    } else {
                        match LuState::decode(old) {
                            Ok(st) => (Box::new(st) as Reply, None),
                            Err(e) => (Box::new(e.to_string()) as Reply, None),
                        }
                    }
                });
                let done = ctx
                    .backend
                    .update(&id, apply)
                    .and_then(|rx| {
                        rx.recv_timeout(ctx.bound)
                            .map_err(|_| ClusterError::Busy)
                            .and_then(|r| r)
                    })
                    .map_err(|e| cluster_open_error(&cfg.state, &e))?;
                let seq = done.seq;
                match done.result.downcast::<LuState>() {
                    Ok(st) => (seq, *st),
                    Err(other) => {
                        let why = other
                            .downcast::<String>()
                            .map_or_else(|_| "unexpected reply".to_owned(), |s| *s);
                        return Err(cluster_open_error(
                            &cfg.state,
                            &ClusterError::Inconsistent(why),
                        ));
                    }
                }
            }
        };
        info!(lu = %id, image = %cfg.image.display(), seq, "LU state shared through the cluster lock manager");
        let sync = ClusterSync {
            ctx: ctx.clone(),
            id,
            handle,
            decoded: Mutex::new((seq, Arc::new(state.clone()))),
            delivered: Mutex::new(Delivered::default()),
            refusing: AtomicBool::new(false),
        };
        Ok((StateSync::Cluster(sync), state))
    }

    /// The last known state, without admission: for answers that tolerate a
    /// slightly old state (target port lists only grow).
    #[must_use]
    pub fn current(&self) -> Arc<LuState> {
        match self {
            StateSync::Local(l) => l
                .state
                .read()
                .map(|s| s.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
            StateSync::Cluster(c) => c
                .decoded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .1
                .clone(),
        }
    }

    /// The state a command runs against, held until the `Admitted` drops.
    pub fn admit(&self) -> Result<Admitted, ClusterError> {
        match self {
            StateSync::Local(_) => Ok(Admitted {
                state: self.current(),
                _ticket: None,
            }),
            StateSync::Cluster(c) => c.admit(),
        }
    }

    /// Applies `f` to the newest state and makes the result durable (and,
    /// in cluster mode, visible to every node) before returning. `f` returns
    /// its result, the new state if it changed, and unit attentions for
    /// other nexuses; the unit attentions this node must queue itself come
    /// back with the result.
    pub fn update<R, F>(&self, f: F) -> Result<(R, Vec<UnitAttention>), SyncError>
    where
        R: Send + 'static,
        F: FnOnce(&LuState) -> (R, Option<LuState>, Vec<UnitAttention>) + Send + 'static,
    {
        match self {
            StateSync::Local(l) => {
                let mut guard = l
                    .store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let current = self.current();
                let (r, new, uas) = f(&current);
                if let Some(new) = new {
                    let (store, snap) = &mut *guard;
                    *snap = Some(store.write(snap.as_ref(), &new.encode())?);
                    *l.state
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
                }
                Ok((r, uas))
            }
            StateSync::Cluster(c) => Ok((c.update(f)?, Vec::new())),
        }
    }

    /// Cluster mode: moves the unit attentions recorded for `nexus` since
    /// this node last looked into `queue`. Admits (and releases at once) to
    /// see the newest state. Local mode: nothing to do.
    pub fn sync_uas(&self, nexus: &Nexus, queue: &Mutex<UaQueues>) -> Result<(), ClusterError> {
        let StateSync::Cluster(_) = self else {
            return Ok(());
        };
        let adm = self.admit()?;
        self.sync_uas_admitted(&adm, nexus, queue);
        Ok(())
    }

    /// An admission that needs no wait, or `None`: in cluster mode while the
    /// LU's lock is being (re)acquired or drained, or while it refuses
    /// commands (the blocking [`StateSync::admit`] then waits, or answers
    /// with the reason). Local mode always admits.
    pub fn try_admit(&self) -> Option<Admitted> {
        match self {
            StateSync::Local(_) => Some(Admitted {
                state: self.current(),
                _ticket: None,
            }),
            StateSync::Cluster(c) => c.try_admit(),
        }
    }

    /// [`StateSync::sync_uas`] against an admission the caller holds (the
    /// same state its command then runs against).
    pub fn sync_uas_admitted(&self, adm: &Admitted, nexus: &Nexus, queue: &Mutex<UaQueues>) {
        let StateSync::Cluster(c) = self else {
            return;
        };
        let log = &adm.state().uas;
        let mut d = c
            .delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !d.is_attached(nexus) {
            // A view we have not seen a command from: it starts after the
            // log's end (its power-on UA supersedes older conditions).
            d.attach(nexus.clone(), log);
            return;
        }
        let pending: Vec<(u64, Ua)> = d
            .pending(nexus, log)
            .filter_map(|r| ua_of(r.asc, r.ascq).map(|u| (r.seq, u)))
            .collect();
        if let Some(&(last, _)) = pending.last() {
            let uas: Vec<UnitAttention> = pending
                .iter()
                .map(|&(_, ua)| UnitAttention {
                    nexus: nexus.clone(),
                    ua,
                })
                .collect();
            info!(lu = %c.id, ?nexus, uas = ?pending, "unit attentions recorded by the cluster queued for this node's view");
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .establish(&uas);
            d.delivered(nexus, last);
        }
    }

    /// A COMPARE AND WRITE hook taking the LU's cluster CAW lock (cluster
    /// mode only).
    #[must_use]
    pub fn caw_hook(&self) -> Option<Arc<dyn CawHook>> {
        match self {
            StateSync::Local(_) => None,
            StateSync::Cluster(c) => Some(Arc::new(ClusterCaw {
                ctx: c.ctx.clone(),
                id: c.id.clone(),
            })),
        }
    }

    /// Cluster mode: lets `holder` (this LU) answer other nodes' probes of
    /// the SPC-2 holders it serves.
    pub fn register_spc2_holder(&self, holder: std::sync::Weak<dyn Spc2Holder>) {
        if let StateSync::Cluster(c) = self {
            c.ctx
                .spc2_holders
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(c.id.clone(), holder);
        }
    }

    /// Cluster mode: a view of this node now holds (or no longer holds)
    /// the SPC-2 reservation, so this node vouches for it.
    pub fn spc2_vouch(&self, on: bool) {
        if let StateSync::Cluster(c) = self
            && let Err(e) = c.ctx.backend.spc2_vouch(&c.id, on)
        {
            warn!(lu = %c.id, error = %e, "cannot vouch for the SPC-2 holder");
        }
    }

    /// Cluster mode: waits until the node vouching for the SPC-2 holder
    /// (if any) has checked its session and, if it is gone, released the
    /// reservation. Local mode: nothing to ask.
    pub fn spc2_probe(&self) -> Result<(), ClusterError> {
        let StateSync::Cluster(c) = self else {
            return Ok(());
        };
        c.ctx.backend.spc2_probe(&c.id).and_then(|rx| {
            rx.recv_timeout(c.ctx.bound)
                .map_err(|_| ClusterError::Busy)
                .and_then(|r| r)
        })
    }

    /// Cluster mode: the LU's side of the protocol as this node sees it,
    /// for `tcmu-prd status` (short locks, no DLM call).
    #[must_use]
    pub fn cluster_info(&self) -> Option<ClusterLuInfo> {
        let StateSync::Cluster(c) = self else {
            return None;
        };
        let seq = c
            .decoded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
        Some(ClusterLuInfo {
            id: c.id.clone(),
            phase: c.handle.phase(),
            refusal: c.handle.refusal().map(|e| e.to_string()),
            tickets: c.handle.inflight(),
            dlm_requests: c.handle.dlm_requests(),
            seq,
        })
    }

    /// DLM requests made for this LU so far (cluster mode): constant while
    /// the LU serves I/O in steady state.
    #[must_use]
    pub fn dlm_requests(&self) -> Option<u64> {
        match self {
            StateSync::Local(_) => None,
            StateSync::Cluster(c) => Some(c.handle.dlm_requests()),
        }
    }
}

fn cluster_open_error(state: &Path, e: &ClusterError) -> OpenError {
    OpenError::Store(StoreError::Io {
        path: state.to_path_buf(),
        op: "joining the LU's cluster state",
        source: std::io::Error::other(e.to_string()),
    })
}

/// The PR engine's unit attention for a recorded ASC/ASCQ.
fn ua_of(asc: u8, ascq: u8) -> Option<Ua> {
    [
        Ua::ReservationsPreempted,
        Ua::ReservationsReleased,
        Ua::RegistrationsPreempted,
        Ua::CommandsCleared,
        Ua::ResetOccurred,
    ]
    .into_iter()
    .find(|u| {
        let s = u.sense();
        (s.asc, s.ascq) == (asc, ascq)
    })
}

impl ClusterSync {
    fn admit(&self) -> Result<Admitted, ClusterError> {
        if let Some(h) = &self.ctx.health {
            h.check().inspect_err(|e| self.refused(e))?;
        }
        // Read the clock only when a command has to wait: in steady state
        // admission is a mutex and a counter, and a clock read is not free
        // everywhere (a syscall plus an HPET read in the VM tier's guests).
        let mut deadline = None;
        loop {
            let seen = self.ctx.ready.generation();
            match self.handle.admit() {
                Admission::Serve(t) => {
                    let state = self.decoded(&t).inspect_err(|e| self.refused(e))?;
                    self.serving(&t);
                    return Ok(Admitted {
                        state,
                        _ticket: Some(t),
                    });
                }
                Admission::Refused(e) => {
                    self.refused(&e);
                    return Err(e);
                }
                Admission::Wait => {
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + self.ctx.bound);
                    if now >= deadline {
                        let e = ClusterError::Busy;
                        self.refused(&e);
                        return Err(e);
                    }
                    self.ctx
                        .ready
                        .wait(seen, (deadline - now).min(Duration::from_millis(200)));
                }
            }
        }
    }

    fn try_admit(&self) -> Option<Admitted> {
        if let Some(h) = &self.ctx.health {
            h.check().ok()?;
        }
        match self.handle.admit() {
            Admission::Serve(t) => {
                let state = self.decoded(&t).ok()?;
                self.serving(&t);
                Some(Admitted {
                    state,
                    _ticket: Some(t),
                })
            }
            Admission::Refused(_) | Admission::Wait => None,
        }
    }

    /// Logs the end of a refusal, once.
    fn serving(&self, t: &Ticket) {
        if self.refusing.swap(false, Ordering::Relaxed) {
            info!(lu = %self.id, seq = t.seq(), "serving again");
        }
    }

    fn refused(&self, e: &ClusterError) {
        if !self.refusing.swap(true, Ordering::Relaxed) {
            warn!(lu = %self.id, error = %e, "refusing commands");
        }
    }

    fn decoded(&self, t: &Ticket) -> Result<Arc<LuState>, ClusterError> {
        let mut d = self
            .decoded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if d.0 != t.seq() {
            let st = LuState::decode(t.state()).map_err(|e| {
                ClusterError::Inconsistent(format!("state seq {} does not decode: {e}", t.seq()))
            })?;
            *d = (t.seq(), Arc::new(st));
        }
        Ok(d.1.clone())
    }

    fn update<R, F>(&self, f: F) -> Result<R, ClusterError>
    where
        R: Send + 'static,
        F: FnOnce(&LuState) -> (R, Option<LuState>, Vec<UnitAttention>) + Send + 'static,
    {
        // A stopped lockspace grants nothing and blocks even a cancel: do
        // not ask (cluster::health).
        if let Some(h) = &self.ctx.health {
            h.check()?;
        }
        let apply: Apply<Reply> = Box::new(move |old: &[u8]| {
            let current = match LuState::decode(old) {
                Ok(s) => s,
                Err(e) => {
                    let err =
                        ClusterError::Inconsistent(format!("stored state does not decode: {e}"));
                    return (Box::new(Err::<(R, LuState), _>(err)) as Reply, None);
                }
            };
            let (r, new, uas) = f(&current);
            let new = if uas.is_empty() {
                new
            } else {
                let mut n = new.unwrap_or_else(|| current.clone());
                for u in &uas {
                    let s = u.ua.sense();
                    n.uas.record(u.nexus.clone(), s.asc, s.ascq);
                }
                n.uas.trim(UA_LOG_KEEP);
                Some(n)
            };
            let encoded = new.as_ref().map(LuState::encode);
            // The state at the sequence number the update ends with: the new
            // one, or the newest read under EX when nothing changed.
            let after = new.unwrap_or(current);
            (
                Box::new(Ok::<(R, LuState), ClusterError>((r, after))) as Reply,
                encoded,
            )
        });
        let rx = self.ctx.backend.update(&self.id, apply)?;
        let done = rx
            .recv_timeout(self.ctx.bound)
            .map_err(|_| ClusterError::Busy)??;
        let (r, after) = take::<Result<(R, LuState), ClusterError>>(done.result)??;
        // Keep what this node just wrote (or read under EX) as its decoded
        // state: otherwise `current()` would show the state of the last
        // command admitted here, and a caller deciding from it whether to
        // update (an RTPI for a target port) would update again and again.
        let mut d = self
            .decoded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if done.seq >= d.0 {
            *d = (done.seq, Arc::new(after));
        }
        Ok(r)
    }
}

/// COMPARE AND WRITE across nodes: the LU's cluster CAW lock (EX) around
/// the compare and the write. Entered with the command's ticket held, which
/// cannot deadlock: the holder of the CAW lock is a running command that
/// waits for nothing but its own I/O; a wait longer than the bound is BUSY.
#[derive(Debug)]
struct ClusterCaw {
    ctx: Arc<ClusterCtx>,
    id: String,
}

struct CawGuard {
    ctx: Arc<ClusterCtx>,
    id: String,
    token: u64,
}

impl Drop for CawGuard {
    fn drop(&mut self) {
        if let Err(e) = self.ctx.backend.caw_release(&self.id, self.token) {
            warn!(lu = %self.id, error = %e, "releasing the COMPARE AND WRITE lock");
        }
    }
}

impl CawHook for ClusterCaw {
    fn enter(&self, _lba: Lba, _blocks: Blocks) -> Result<Box<dyn Send>, HookRefusal> {
        let got = self.ctx.backend.caw_acquire(&self.id).and_then(|rx| {
            rx.recv_timeout(self.ctx.bound)
                .map_err(|_| ClusterError::Busy)
                .and_then(|r| r)
        });
        match got {
            Ok(token) => Ok(Box::new(CawGuard {
                ctx: self.ctx.clone(),
                id: self.id.clone(),
                token,
            })),
            Err(e) => {
                warn!(lu = %self.id, error = %e, "COMPARE AND WRITE lock not taken: BUSY");
                Err(HookRefusal::Busy)
            }
        }
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
