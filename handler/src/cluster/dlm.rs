//! The `dlm` lock manager (the Linux DLM through dlm-sys) and the cluster
//! thread that runs the state cache for the daemon.
//!
//! Why a dedicated thread rather than the lockspace fd in the mio loop:
//! - libdlm calls are not all quick: `dlm_ls_lock` writes to the lockspace
//!   device, and the kernel holds user requests while the lockspace is in
//!   recovery (a node died, quorum is lost); joining a lockspace waits for
//!   quorum. None of that may stall the ring of every LU.
//! - Updates read and write the state store with O_DIRECT|O_DSYNC on shared
//!   storage, milliseconds or more; they run on this thread too.
//! - libdlm_lt is single-threaded (ASTs run in `dlm_dispatch` on the caller's
//!   thread; dlm-sys's `Lockspace`/`Lock` are neither Send nor Sync): one
//!   thread owns the lockspace and every lock, and no other thread touches them.
//!
//! The I/O path never talks to this thread in steady state: admission is the
//! shared [`LuHandle`]'s mutex and counter. The thread is woken by a Unix
//! socket pair (a byte per wake-up) when an admission waits, a drain
//! finishes or a request arrives, and by the lockspace fd for ASTs; it wakes
//! on its own every `TICK` for the timeouts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use dlm_sys::{Lock, Lockspace};
use tracing::{error, info, warn};

use super::cache::{
    Apply, Cluster, ClusterError, ClusterSnapshot, Config, Done, LuHandle, StateStore, Updated,
    Wake,
};
use super::lockmgr::{Event, Grant, LVB_LEN, LmError, LockFlags, LockId, LockManager, Mode};

/// Default lockspace name.
pub const DEFAULT_LOCKSPACE: &str = "tcmu-prd";
/// How often the cluster thread wakes up on its own (timeouts, rejoining).
const TICK: Duration = Duration::from_millis(100);
/// How long to wait between attempts to join the lockspace.
const REJOIN_EVERY: Duration = Duration::from_secs(2);

fn lm_error(e: dlm_sys::Error) -> LmError {
    match e {
        dlm_sys::Error::Cancelled => LmError::Cancelled,
        dlm_sys::Error::WouldBlock => LmError::WouldBlock,
        dlm_sys::Error::Unavailable(s) => LmError::Unavailable(s),
        dlm_sys::Error::Os { source, .. } if source.raw_os_error() == Some(libc::EDEADLK) => {
            LmError::Deadlock
        }
        dlm_sys::Error::Os { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            LmError::Busy
        }
        e => LmError::Other(e.to_string()),
    }
}

struct Slot {
    lock: Lock,
    pending: bool,
}

/// The Linux DLM as a [`LockManager`]: one lockspace, joined (and rejoined
/// after a loss) by name.
pub struct Dlm {
    name: String,
    ls: Option<Lockspace>,
    locks: HashMap<u64, Slot>,
    next: u64,
    events: Vec<Event>,
    rejoin_at: Instant,
}

impl std::fmt::Debug for Dlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlm")
            .field("name", &self.name)
            .field("joined", &self.ls.is_some())
            .field("locks", &self.locks.len())
            .finish()
    }
}

impl Dlm {
    /// Joins lockspace `name`; if that fails the manager starts out lost
    /// (every LU refuses I/O) and keeps trying to join.
    #[must_use]
    pub fn join(name: &str) -> Self {
        let mut d = Dlm {
            name: name.to_owned(),
            ls: None,
            locks: HashMap::new(),
            next: 0,
            events: Vec::new(),
            rejoin_at: Instant::now(),
        };
        if let Err(e) = d.try_join() {
            d.events.push(Event::Lost {
                reason: format!("joining lockspace {name}: {e}"),
            });
        }
        d
    }

    fn try_join(&mut self) -> Result<(), dlm_sys::Error> {
        self.rejoin_at = Instant::now() + REJOIN_EVERY;
        let ls = Lockspace::create(&self.name)?;
        info!(lockspace = %self.name, "joined the DLM lockspace");
        self.ls = Some(ls);
        Ok(())
    }

    fn lose(&mut self, reason: String) {
        error!(lockspace = %self.name, %reason, "DLM lockspace lost");
        // Unlocking each lock would wait on a lockspace that may not answer.
        // Abandon them instead: with the last reference to the lockspace
        // handle gone, its device is closed and the kernel releases every
        // lock this process holds in it, so no lock of ours outlives the
        // loss (a rejoin gets a new handle; a lock left on the old one would
        // block our own later EX requests, and other nodes', for ever).
        for (_, slot) in self.locks.drain() {
            slot.lock.abandon();
        }
        self.ls = None;
        self.events.push(Event::Lost { reason });
    }

    fn slot(&mut self, lock: LockId) -> Result<&mut Slot, LmError> {
        self.locks
            .get_mut(&lock.0)
            .ok_or(LmError::Invalid("no such lock"))
    }
}

impl LockManager for Dlm {
    fn open(&mut self, resource: &[u8]) -> Result<LockId, LmError> {
        let ls = self
            .ls
            .as_ref()
            .ok_or_else(|| LmError::Unavailable(format!("lockspace {} not joined", self.name)))?;
        let lock = ls.lock(resource).map_err(lm_error)?;
        self.next += 1;
        self.locks.insert(
            self.next,
            Slot {
                lock,
                pending: false,
            },
        );
        Ok(LockId(self.next))
    }

    fn request(
        &mut self,
        lock: LockId,
        mode: Mode,
        flags: LockFlags,
        lvb: Option<&[u8; LVB_LEN]>,
    ) -> Result<(), LmError> {
        let slot = self.slot(lock)?;
        if let Some(v) = lvb {
            slot.lock.set_lvb(v);
        }
        slot.lock.request(mode, flags).map_err(lm_error)?;
        slot.pending = true;
        Ok(())
    }

    fn cancel(&mut self, lock: LockId) -> Result<(), LmError> {
        self.slot(lock)?.lock.cancel().map_err(lm_error)
    }

    fn close(&mut self, lock: LockId) {
        // Dropping a dlm-sys lock converts to NL with VALBLK and unlocks.
        self.locks.remove(&lock.0);
    }

    fn poll(&mut self, events: &mut Vec<Event>) {
        events.append(&mut self.events);
        let Some(ls) = &self.ls else {
            if Instant::now() >= self.rejoin_at {
                match self.try_join() {
                    Ok(()) => events.push(Event::Restored),
                    Err(e) => {
                        warn!(lockspace = %self.name, error = %e, "lockspace still unavailable")
                    }
                }
            }
            return;
        };
        if let Err(e) = ls.poll_dispatch(Duration::ZERO) {
            self.lose(e.to_string());
            events.append(&mut self.events);
            return;
        }
        for (id, slot) in &mut self.locks {
            if slot.pending && !slot.lock.is_pending() {
                slot.pending = false;
                let result = slot
                    .lock
                    .complete()
                    .map(|mode| Grant {
                        mode,
                        lvb: slot.lock.lvb(),
                        lvb_invalid: slot.lock.lvb_invalid(),
                    })
                    .map_err(lm_error);
                events.push(Event::Completed {
                    lock: LockId(*id),
                    result,
                });
            }
            if slot.lock.take_blocking() {
                events.push(Event::Blocking {
                    lock: LockId(*id),
                    mode: None,
                });
            }
        }
    }

    fn wait(&mut self, wake: &UnixStream, timeout: Duration) {
        if !self.events.is_empty() {
            return;
        }
        match &self.ls {
            Some(ls) => {
                if let Err(e) = ls.wait_readable(wake.as_fd(), timeout) {
                    warn!(lockspace = %self.name, error = %e, "poll failed");
                }
            }
            None => {
                let _ = wake.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
                let _ = wake.set_nonblocking(false);
                let mut b = [0u8; 1];
                let _ = (&*wake).read(&mut b);
            }
        }
    }
}

enum Msg<R> {
    AddLu {
        id: String,
        store: Box<dyn StateStore + Send>,
        reply: Sender<LuHandle>,
    },
    Update {
        lu: String,
        apply: Apply<R>,
        reply: Sender<Result<Updated<R>, ClusterError>>,
    },
    CawAcquire {
        lu: String,
        reply: Sender<Result<u64, ClusterError>>,
    },
    CawRelease {
        lu: String,
        tag: u64,
    },
    Spc2Probe {
        lu: String,
        reply: Sender<Result<(), ClusterError>>,
    },
    Spc2Vouch {
        lu: String,
        on: bool,
    },
    Spc2Answer {
        lu: String,
        still_holder: bool,
    },
    Snapshot {
        reply: Sender<ClusterSnapshot>,
    },
    Shutdown,
}

impl StateStore for Box<dyn StateStore + Send> {
    fn read(&self) -> Result<Option<super::store::Snapshot>, super::store::StoreError> {
        (**self).read()
    }
    fn write(
        &self,
        current: Option<&super::store::Snapshot>,
        payload: &[u8],
    ) -> Result<super::store::Snapshot, super::store::StoreError> {
        (**self).write(current, payload)
    }
}

/// The cluster thread: owns a lock manager and every LU's cluster side.
/// Cloneable handle; requests are answered through channels, never by
/// blocking the caller (use `recv` only where waiting is fine, e.g. tests).
pub struct ClusterThread<R> {
    tx: Sender<Msg<R>>,
    wake: Arc<UnixStream>,
    join: Option<Arc<std::sync::Mutex<Option<JoinHandle<()>>>>>,
}

impl<R> Clone for ClusterThread<R> {
    fn clone(&self) -> Self {
        ClusterThread {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
            join: self.join.clone(),
        }
    }
}

impl<R> std::fmt::Debug for ClusterThread<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterThread").finish_non_exhaustive()
    }
}

fn kick(w: &UnixStream) {
    // A full socket buffer already means a wake-up is pending.
    let _ = (&*w).write(&[1]);
}

impl<R: Send + 'static> ClusterThread<R> {
    /// Starts the thread; `make` builds the lock manager on it (dlm-sys
    /// objects must be created on the thread that uses them).
    /// `on_lu_ready(lu)` is called (on any thread) when commands parked on
    /// an LU should be admitted again; `on_spc2_check(lu)` (on this thread,
    /// so it must not block) when another node probes the SPC-2 holder
    /// this node vouches for (answer with [`ClusterThread::spc2_answer`]).
    pub fn spawn<L, F>(
        make: F,
        cfg: Config,
        on_lu_ready: Arc<dyn Fn(&str) + Send + Sync>,
        on_spc2_check: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> std::io::Result<Self>
    where
        L: LockManager,
        F: FnOnce() -> L + Send + 'static,
    {
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        let wake_tx = Arc::new(wake_tx);
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = wake_tx.clone();
        let notify: super::cache::Notify = Arc::new(move |wk| match wk {
            Wake::Cluster => kick(&w),
            Wake::Lu(lu) => on_lu_ready(lu),
        });
        let join = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || run(make(), cfg, notify, &on_spc2_check, &rx, &wake_rx))?;
        Ok(ClusterThread {
            tx,
            wake: wake_tx,
            join: Some(Arc::new(std::sync::Mutex::new(Some(join)))),
        })
    }

    fn send(&self, m: Msg<R>) -> Result<(), ClusterError> {
        self.tx
            .send(m)
            .map_err(|_| ClusterError::Unavailable("cluster thread stopped".into()))?;
        kick(&self.wake);
        Ok(())
    }

    /// Adds an LU; the handle comes back on the returned channel.
    pub fn add_lu(
        &self,
        id: &str,
        store: Box<dyn StateStore + Send>,
    ) -> Result<Receiver<LuHandle>, ClusterError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::AddLu {
            id: id.into(),
            store,
            reply,
        })?;
        Ok(rx)
    }

    /// Queues an update; its outcome comes back on the returned channel.
    pub fn update(
        &self,
        lu: &str,
        apply: Apply<R>,
    ) -> Result<Receiver<Result<Updated<R>, ClusterError>>, ClusterError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Update {
            lu: lu.into(),
            apply,
            reply,
        })?;
        Ok(rx)
    }

    /// Asks for the LU's COMPARE AND WRITE lock; the token to release it
    /// with comes back on the returned channel.
    pub fn caw_acquire(
        &self,
        lu: &str,
    ) -> Result<Receiver<Result<u64, ClusterError>>, ClusterError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::CawAcquire {
            lu: lu.into(),
            reply,
        })?;
        Ok(rx)
    }

    /// Releases the COMPARE AND WRITE lock held with `token`.
    pub fn caw_release(&self, lu: &str, token: u64) -> Result<(), ClusterError> {
        self.send(Msg::CawRelease {
            lu: lu.into(),
            tag: token,
        })
    }

    /// Probes the liveness of the LU's SPC-2 holder (served by another
    /// node); `Ok` on the returned channel once the node vouching for it,
    /// if any, has answered.
    pub fn spc2_probe(&self, lu: &str) -> Result<Receiver<Result<(), ClusterError>>, ClusterError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Spc2Probe {
            lu: lu.into(),
            reply,
        })?;
        Ok(rx)
    }

    /// Whether a view of this node holds the LU's SPC-2 reservation.
    pub fn spc2_vouch(&self, lu: &str, on: bool) -> Result<(), ClusterError> {
        self.send(Msg::Spc2Vouch { lu: lu.into(), on })
    }

    /// Answers an `on_spc2_check(lu)`.
    pub fn spc2_answer(&self, lu: &str, still_holder: bool) -> Result<(), ClusterError> {
        self.send(Msg::Spc2Answer {
            lu: lu.into(),
            still_holder,
        })
    }

    /// Asks for a picture of the cluster side (`tcmu-prd status`); it comes
    /// back on the returned channel when the thread next runs its loop
    /// (not while it is inside a libdlm call).
    pub fn snapshot(&self) -> Result<Receiver<ClusterSnapshot>, ClusterError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Snapshot { reply })?;
        Ok(rx)
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(&self) {
        let _ = self.send(Msg::Shutdown);
        if let Some(j) = &self.join
            && let Some(h) = j.lock().ok().and_then(|mut g| g.take())
        {
            let _ = h.join();
        }
    }
}

type Replies<R> = (
    HashMap<u64, Sender<Result<Updated<R>, ClusterError>>>,
    HashMap<u64, Sender<Result<u64, ClusterError>>>,
    HashMap<u64, Sender<Result<(), ClusterError>>>,
);

fn run<L: LockManager, R>(
    lm: L,
    cfg: Config,
    notify: super::cache::Notify,
    on_spc2_check: &Arc<dyn Fn(&str) + Send + Sync>,
    rx: &Receiver<Msg<R>>,
    wake: &UnixStream,
) {
    let mut c: Cluster<L, Box<dyn StateStore + Send>, R> = Cluster::new(lm, cfg, notify);
    let mut next_tag = 0u64;
    let mut replies: Replies<R> = (HashMap::new(), HashMap::new(), HashMap::new());
    loop {
        c.lock_manager().wait(wake, TICK);
        let _ = wake.set_nonblocking(true);
        let mut sink = [0u8; 256];
        while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
        let now = Instant::now();
        while let Ok(m) = rx.try_recv() {
            next_tag += 1;
            match m {
                Msg::Shutdown => {
                    info!("cluster thread stopping");
                    return;
                }
                Msg::AddLu { id, store, reply } => {
                    let _ = reply.send(c.add_lu(&id, store));
                }
                Msg::Update { lu, apply, reply } => {
                    replies.0.insert(next_tag, reply);
                    c.update(&lu, next_tag, apply, now);
                }
                Msg::CawAcquire { lu, reply } => {
                    replies.1.insert(next_tag, reply);
                    c.caw_acquire(&lu, next_tag, now);
                }
                Msg::CawRelease { lu, tag } => c.caw_release(&lu, tag, now),
                Msg::Spc2Probe { lu, reply } => {
                    replies.2.insert(next_tag, reply);
                    c.spc2_probe(&lu, next_tag, now);
                }
                Msg::Spc2Vouch { lu, on } => c.spc2_vouch(&lu, on, now),
                Msg::Spc2Answer { lu, still_holder } => c.spc2_answer(&lu, still_holder, now),
                Msg::Snapshot { reply } => {
                    let _ = reply.send(c.snapshot());
                }
            }
        }
        c.step(now);
        for d in c.take_done() {
            match d {
                Done::Update { tag, result, .. } => {
                    if let Some(r) = replies.0.remove(&tag) {
                        let _ = r.send(result);
                    }
                }
                Done::Caw { lu, tag, result } => {
                    if let Some(r) = replies.1.remove(&tag) {
                        let ok = result.is_ok();
                        if r.send(result.map(|()| tag)).is_err() && ok {
                            // Nobody waits for it any more: give it back.
                            c.caw_release(&lu, tag, now);
                        }
                    }
                }
                Done::Spc2Probe { tag, result, .. } => {
                    if let Some(r) = replies.2.remove(&tag) {
                        let _ = r.send(result);
                    }
                }
                Done::Spc2Check { lu } => on_spc2_check(&lu),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cache::Admission;
    use super::super::local::Local;
    use super::super::store::Store;
    use super::*;

    #[test]
    fn local_cluster_thread_serves_updates_and_caw_with_a_real_store() {
        let path = std::env::temp_dir().join(format!("tcmu-prd-ct-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<String>();
        let ct: ClusterThread<usize> = ClusterThread::spawn(
            Local::new,
            Config::default(),
            Arc::new(move |lu: &str| {
                let _ = ready_tx.send(lu.to_owned());
            }),
            Arc::new(|_: &str| {}),
        )
        .unwrap();
        let store = Store::open(&path, true, false).unwrap();
        let h = ct
            .add_lu("vol1", Box::new(store))
            .unwrap()
            .recv_timeout(Duration::from_secs(5))
            .unwrap();
        assert!(matches!(h.admit(), Admission::Wait));
        assert_eq!(
            ready_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            "vol1"
        );
        let Admission::Serve(t) = h.admit() else {
            panic!("not served after the ready notification")
        };
        assert_eq!((t.seq(), t.state()), (0, &[][..]));
        // The update waits for this ticket: drop it from another thread later.
        let rx = ct
            .update(
                "vol1",
                Box::new(|old: &[u8]| (old.len(), Some(b"new state".to_vec()))),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "update must wait for the running command"
        );
        drop(t);
        let u = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(u, Updated { result: 0, seq: 1 });
        let Admission::Serve(t) = h.admit() else {
            panic!("serving again after the update")
        };
        assert_eq!((t.seq(), t.state()), (1, &b"new state"[..]));
        drop(t);
        let tok = ct
            .caw_acquire("vol1")
            .unwrap()
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .unwrap();
        ct.caw_release("vol1", tok).unwrap();
        // Durable: a fresh reader of the store sees it.
        let s = Store::open(&path, false, false)
            .unwrap()
            .read()
            .unwrap()
            .unwrap();
        assert_eq!((s.seq, s.payload.as_slice()), (1, &b"new state"[..]));
        let snap = ct
            .snapshot()
            .unwrap()
            .recv_timeout(Duration::from_secs(5))
            .unwrap();
        assert_eq!(snap.available, Ok(()));
        assert_eq!(snap.lus.len(), 1);
        assert_eq!(snap.lus[0].id, "vol1");
        assert_eq!(snap.lus[0].queued_updates, 0);
        assert_eq!(h.phase(), "serving");
        let reqs = h.dlm_requests();
        for _ in 0..100 {
            let Admission::Serve(_t) = h.admit() else {
                panic!()
            };
        }
        assert_eq!(h.dlm_requests(), reqs, "no lock traffic per command");
        ct.shutdown();
        std::fs::remove_file(&path).unwrap();
    }
}
