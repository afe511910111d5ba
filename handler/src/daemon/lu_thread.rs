//! The ring thread of one logical unit: it serves the rings of every view of
//! that LU (every TCMU device on the same image, one per I_T nexus).
//!
//! It sleeps on the uio fds of those views, reads every new entry, and runs
//! a lone READ/WRITE (nothing else of the LU at the worker pool, and no
//! entry arrived while the last such command ran: the iodepth-1 case)
//! itself, so that command costs no thread hand-off at all.
//! Anything else (more commands in flight, PR OUT and the other commands that
//! may wait for the cluster) goes to the shared worker pool, whose workers
//! send the results back; the thread completes everything it has with one
//! tail update and one uio write per ring.
//!
//! Why one thread per LU and not per device: a task management function on
//! one view changes what the LU's other views must answer next (a LUN RESET
//! queues BUS DEVICE RESET FUNCTION OCCURRED for every other nexus, SAM-5
//! 6.3.3), and the kernel puts the TMR entry in the first view's ring before
//! it answers the TMR. Each round the thread reads every view's ring, again
//! and again until one pass over all of them finds nothing new, before it
//! runs or hands off any command it read: a command the initiator sent on
//! another view after the TMR was answered is seen only after the TMR entry
//! was published, so the pass after the one that read the command finds the
//! TMR, and its unit attentions are queued before that command runs
//! (libiscsi's MultipathIO.Reset). Threads per device could serve the other
//! view first. The passes end: no command is completed while they run, so
//! a ring cannot take more commands than it holds; TMR entries free their
//! space at once, so a flood of them is cut off after [`MAX_PASSES`].
//! A backing file that hangs blocks its own LU, never another LU or netlink.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tracing::{error, info, warn};

use super::pool::{Job, Pool};
use crate::backing::iov;
use crate::lu::{RwIo, View};
use crate::ring::uring::{Finished, IoKind, IoRequest, Refused, Uring};
use crate::ring::{
    Event as RingEvent, HeadWatch, InFlightCmd, Response, Ring, TmrEvent, TmrType, UioFd,
};
use crate::scsi::opcode::{Direction, direction};

/// Where a ring thread sleeps for one view: its uio fd (a socket in unit tests).
pub(super) trait Wakeups: AsFd + Send + Sync + std::fmt::Debug {
    /// Consumes the pending wake-up, if any, without blocking.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if none is pending; any other read error.
    fn ack(&self) -> std::io::Result<()>;
}

impl Wakeups for UioFd {
    fn ack(&self) -> std::io::Result<()> {
        self.wait().map(|_| ())
    }
}

/// One view's ring, as the LU thread, the workers and the event loop share it.
#[derive(Debug)]
pub(super) struct Core {
    /// The device's name, for logs.
    name: String,
    /// Readable when the kernel queued entries (the uio fd).
    wakeups: Arc<dyn Wakeups>,
    view: Arc<View>,
    state: Mutex<RingState>,
    /// Commands that went to the file through the LU thread's io_uring.
    via_uring: std::sync::atomic::AtomicU64,
    /// Times the LU thread found new entries by watching the ring.
    polled: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct RingState {
    ring: Ring,
    /// Set when the kernel asked to remove the device: the DEVICE_ID to answer
    /// once in-flight commands are done.
    removal: Option<u32>,
    /// Where to say that `removal` can be answered now.
    removal_notice: Option<Notice>,
}

/// Tells the event loop that a device may be ready for removal.
#[derive(Debug, Clone)]
pub(super) struct Notice {
    pub token: Token,
    pub tx: Sender<Token>,
    pub waker: Arc<Waker>,
}

impl Notice {
    fn send(&self) {
        if self.tx.send(self.token).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// The thread's waker (mio allows one per poll, so it serves every purpose):
/// a worker sent a result back, a view joined, or the thread is to stop.
const WAKE: Token = Token(0);

/// The thread's io_uring completion signal.
const URING: Token = Token(usize::MAX);

/// Submission slots of an LU thread's io_uring (more commands than this in
/// one drain go to the pool).
const URING_ENTRIES: u32 = 256;

/// A finished command on its way back to the LU thread.
type Returned = (Arc<Core>, InFlightCmd, Response);

/// What the LU thread and the event loop share.
#[derive(Debug)]
struct Shared {
    /// The views served, by the event loop's token for each.
    members: Mutex<HashMap<Token, Arc<Core>>>,
    /// Views that joined since the thread last looked: served once at once
    /// (an adopted ring may hold entries already).
    joined: Mutex<Vec<Token>>,
    /// Set by [`LuThread::drop`]: complete what is in flight, then exit.
    stop: AtomicBool,
}

/// How workers hand finished commands back to the LU thread.
#[derive(Debug)]
struct Returns {
    tx: Sender<Returned>,
    waker: Arc<Waker>,
    /// Set by the first return since the LU thread last took them: only
    /// that one wakes it (a waker write is a syscall, and each one makes the
    /// thread's next poll return).
    wake_sent: AtomicBool,
}

impl Returns {
    fn send(&self, core: Arc<Core>, cmd: InFlightCmd, rsp: Response) {
        // The name is needed only on an error; clone the Arc, not the name.
        let c = core.clone();
        if self.tx.send((core, cmd, rsp)).is_err() {
            error!(device = %c.name, "ring thread is gone; command left unanswered");
            return;
        }
        // Pairs with the swap in `take_all` (both read-modify-writes of one
        // flag): if this one comes first, the thread's swap reads it and
        // so sees this send when it drains; if it comes after, it reads the
        // cleared flag and wakes the thread.
        if !self.wake_sent.swap(true, Ordering::AcqRel)
            && let Err(e) = self.waker.wake()
        {
            error!(device = %c.name, "waking the ring thread for a completion: {e}");
        }
    }

    /// On the LU thread: takes every return sent so far.
    fn take_all(&self, done: &Receiver<Returned>, into: &mut Vec<Returned>) {
        self.wake_sent.swap(false, Ordering::AcqRel);
        into.extend(done.try_iter());
    }
}

/// How an LU thread works (from `[daemon]`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ThreadOpts {
    /// READs and WRITEs at depth go to the file through the thread's own
    /// io_uring (where the kernel offers one) instead of the pool.
    pub uring: bool,
    /// How long the thread, with nothing outstanding, watches its rings
    /// before it sleeps (zero: it sleeps at once).
    pub poll: Duration,
}

/// The running ring thread of one LU (the event loop's handle on it).
/// Dropping it stops the thread.
#[derive(Debug)]
pub(super) struct LuThread {
    /// The LU's name, for logs.
    lu: String,
    shared: Arc<Shared>,
    registry: Registry,
    waker: Arc<Waker>,
    handle: Option<JoinHandle<()>>,
}

impl LuThread {
    /// Starts a thread named `thread` (at most 15 bytes are kept) for the LU
    /// `lu`, with no views yet. While `stopping` is set (the daemon drains
    /// before exiting) it reads no new entries.
    pub fn spawn(
        lu: String,
        thread: String,
        pool: Arc<Pool>,
        stopping: Arc<AtomicBool>,
        opts: ThreadOpts,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, done) = crossbeam_channel::unbounded();
        let back = Arc::new(Returns {
            tx,
            waker: waker.clone(),
            wake_sent: AtomicBool::new(false),
        });
        let shared = Arc::new(Shared {
            members: Mutex::new(HashMap::new()),
            joined: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let (sh, name) = (shared.clone(), lu.clone());
        let registry_t = registry.try_clone()?;
        let handle = std::thread::Builder::new().name(thread).spawn(move || {
            let aio = opts.uring.then(|| Aio::new(&name, &registry_t)).flatten();
            let ends = Ends {
                lu: &name,
                shared: &sh,
                pool: &pool,
                back: &back,
                done: &done,
                stopping: &stopping,
            };
            lu_thread(poll, &ends, aio, opts.poll);
        })?;
        Ok(LuThread {
            lu,
            shared,
            registry,
            waker,
            handle: Some(handle),
        })
    }

    /// Serves one more view of the LU, under the event loop's `token` for it
    /// (never [`WAKE`]). Its ring is served once at once, then on every
    /// wake-up of its fd.
    pub fn join(&self, token: Token, core: &Arc<Core>) -> std::io::Result<()> {
        if token == WAKE || token == URING {
            return Err(std::io::Error::other(format!(
                "token {} is the ring thread's own",
                token.0
            )));
        }
        lock(&self.shared.members).insert(token, core.clone());
        let fd = core.wakeups.as_fd().as_raw_fd();
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            lock(&self.shared.members).remove(&token);
            return Err(e);
        }
        lock(&self.shared.joined).push(token);
        self.waker.wake()
    }

    /// Stops serving a view: its fd is no longer watched. Commands of it
    /// still at the pool are completed when they come back.
    pub fn leave(&self, token: Token) {
        if let Some(core) = lock(&self.shared.members).remove(&token) {
            let fd = core.wakeups.as_fd().as_raw_fd();
            if let Err(e) = self.registry.deregister(&mut SourceFd(&fd)) {
                warn!(device = %core.name, "no longer watching its uio fd: {e}");
            }
        }
    }

    /// How many views it serves.
    pub fn views(&self) -> usize {
        lock(&self.shared.members).len()
    }
}

impl Drop for LuThread {
    /// Stops the thread. It completes what is in flight first; this waits for
    /// it unless a view still has commands in flight (one may be stuck in the
    /// backing file: then the thread is left to exit on its own once that
    /// returns).
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            error!(lu = %self.lu, "waking the ring thread to stop: {e}");
            return;
        }
        let Some(handle) = self.handle.take() else {
            return;
        };
        let in_flight: usize = lock(&self.shared.members)
            .values()
            .map(|c| c.lock().ring.in_flight())
            .sum();
        if in_flight == 0 {
            if handle.join().is_err() {
                error!(lu = %self.lu, "the ring thread panicked");
            }
        } else {
            warn!(lu = %self.lu, in_flight, "not waiting for the ring thread: commands still in flight");
        }
    }
}

/// A lock whose holder panicked is still used: the ring indices and member
/// maps are only ever updated whole under it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    pub(super) fn new(
        name: String,
        wakeups: Arc<dyn Wakeups>,
        view: Arc<View>,
        ring: Ring,
    ) -> Self {
        Core {
            name,
            wakeups,
            view,
            state: Mutex::new(RingState {
                ring,
                removal: None,
                removal_notice: None,
            }),
            via_uring: std::sync::atomic::AtomicU64::new(0),
            polled: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Times the LU thread found new entries of this view by watching the ring.
    pub(super) fn polled(&self) -> u64 {
        self.polled.load(Ordering::Relaxed)
    }

    /// Commands of this view that went through the LU thread's io_uring.
    pub(super) fn uring_commands(&self) -> u64 {
        self.via_uring.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, RingState> {
        lock(&self.state)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.lock().ring.in_flight()
    }

    pub(super) fn set_removal_notice(&self, notice: Notice) {
        self.lock().removal_notice = Some(notice);
    }

    /// Records the DEVICE_ID the kernel's removal is to be answered with.
    /// Returns it if nothing is in flight (answer now), else None: the
    /// removal notice says when.
    pub(super) fn begin_removal(&self, device_id: u32) -> Option<u32> {
        self.lock().removal = Some(device_id);
        self.removal_ready()
    }

    pub(super) fn removal_ready(&self) -> Option<u32> {
        let mut st = self.lock();
        if st.ring.in_flight() == 0 {
            st.removal.take()
        } else {
            None
        }
    }

    /// Consumes the uio wake-up count (exactly 4 bytes), if any is pending.
    fn ack_wakeup(&self) {
        match self.wakeups.ack() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => warn!(device = %self.name, "reading the uio event count: {e}"),
        }
    }

    /// Whether the kernel queued entries not read yet (no system call).
    fn has_new(&self) -> bool {
        self.lock().ring.has_new()
    }

    /// Gives every new command of the ring to `take` and acts on TMRs.
    fn drain(&self, st: &mut RingState, pool: &Pool, mut take: impl FnMut(InFlightCmd)) {
        let mut n = 0usize;
        while let Some(ev) = st.ring.poll() {
            n += 1;
            match ev {
                Ok(RingEvent::Command(cmd)) => take(cmd),
                Ok(RingEvent::Tmr(tmr)) => {
                    if let Some(job) = self.on_tmr(&tmr)
                        && pool.submit(job).is_err()
                    {
                        error!(device = %self.name, "worker pool is gone; reset not applied");
                    }
                }
                Err(e) => error!(device = %self.name, "bad ring entry: {e}"),
            }
        }
        tracing::trace!(device = %self.name, entries = n, "ring drained");
        if let Some(broken) = st.ring.broken() {
            error!(device = %self.name, "ring is broken, no longer reading it: {broken}");
        }
        // Bad entries were answered CHECK CONDITION by poll.
        if let Err(e) = st.ring.flush() {
            error!(device = %self.name, "waking the kernel for completions: {e}");
        }
    }

    /// Completes finished commands and wakes the kernel once for all of them.
    fn complete(&self, done: impl Iterator<Item = (InFlightCmd, Response)>) {
        let mut st = self.lock();
        self.complete_locked(&mut st, done);
    }

    fn complete_locked(
        &self,
        st: &mut RingState,
        done: impl Iterator<Item = (InFlightCmd, Response)>,
    ) {
        let mut n = 0usize;
        for (cmd, rsp) in done {
            n += 1;
            tracing::trace!(device = %self.name, cmd_id = cmd.cmd_id(), "completing");
            if let Err(e) = st.ring.complete(cmd, &rsp) {
                error!(device = %self.name, "completing a command: {e}");
            }
        }
        if n > 0
            && let Err(e) = st.ring.flush()
        {
            error!(device = %self.name, "waking the kernel for completions: {e}");
        }
        if n > 0
            && st.ring.in_flight() == 0
            && st.removal.is_some()
            && let Some(notice) = &st.removal_notice
        {
            notice.send();
        }
    }

    /// Handles a TMR notification. A reset queues BUS DEVICE RESET for the
    /// LU's other nexuses at once (before any later entry of any view of
    /// this LU is read) and releases the SPC-2 reservation (SPC-4 5.13.1;
    /// PR survives): that is a durable state update, which in cluster mode
    /// waits for EX, so it is returned as a job for the worker pool.
    fn on_tmr(&self, tmr: &TmrEvent) -> Option<Job> {
        info!(device = %self.name, tmr = ?tmr.tmr_type, aborted = tmr.cmd_ids.len(), "task management");
        if matches!(
            tmr.tmr_type,
            TmrType::LunReset | TmrType::TargetWarmReset | TmrType::TargetColdReset
        ) {
            let view = self.view.clone();
            let issuer = view.nexus();
            view.lu().reset_unit_attentions(issuer.as_ref());
            return Some(Box::new(move || view.lu().reset(issuer.as_ref())));
        }
        None
    }
}

/// What the LU thread knows of its recent load, to decide whether a lone
/// READ/WRITE runs on the thread itself (no hand-off: the iodepth-1 case).
#[derive(Debug, Default)]
struct Load {
    /// Commands handed to the pool and not yet back.
    at_pool: usize,
    /// Commands to hand to the pool before one runs inline again. Set when
    /// entries arrived while one ran inline: the initiator keeps several
    /// outstanding, and a batch that happens to hold one command is then
    /// not iodepth 1; running those one by one here would serialize them.
    no_inline_for: usize,
}

/// How many commands go to the pool after entries arrived during an inline
/// one, before the thread tries inline again (one probe per this many
/// commands costs little at depth).
const NO_INLINE_AFTER_ARRIVALS: usize = 256;

impl Load {
    /// `elsewhere`: commands of the LU on the thread's io_uring.
    fn inline_ok(&self, elsewhere: usize) -> bool {
        self.at_pool == 0 && elsewhere == 0 && self.no_inline_for == 0
    }

    fn arrived_during_inline(&mut self) {
        self.no_inline_for = NO_INLINE_AFTER_ARRIVALS;
    }

    fn handed_to_pool(&mut self) {
        self.at_pool += 1;
        self.handed_off();
    }

    /// A command went elsewhere than the thread (the pool, the io_uring).
    fn handed_off(&mut self) {
        self.no_inline_for = self.no_inline_for.saturating_sub(1);
    }

    fn returned(&mut self, n: usize) {
        self.at_pool = self.at_pool.saturating_sub(n);
    }
}

/// What the LU thread works with.
struct Ends<'a> {
    lu: &'a str,
    shared: &'a Shared,
    pool: &'a Pool,
    back: &'a Arc<Returns>,
    done: &'a Receiver<Returned>,
    /// Set while the daemon drains before exiting.
    stopping: &'a AtomicBool,
}

/// Most passes over an LU's views in one read (see the module doc): only a
/// flood of TMR entries, which free their ring space at once, needs more.
const MAX_PASSES: usize = 16;

/// What one round of the LU thread reads and hands out; kept from round to
/// round for its allocations.
#[derive(Default)]
struct Round {
    /// The LU's views as `members` held them when the round began (emptied
    /// when it ends: a view that left is not kept alive here).
    cores: Vec<(Token, Arc<Core>)>,
    /// Per view: its uio wake-up count is to be read once the round is
    /// done (its fd was reported, or entries of it were read).
    touched: Vec<bool>,
    /// The commands read, each with its view's index in `cores`.
    batch: Vec<(usize, InFlightCmd)>,
}

impl Round {
    /// Starts a round over the LU's views; `ready` (drained): the views
    /// reported or joined since the last one.
    fn begin(&mut self, shared: &Shared, ready: &mut Vec<Token>) {
        self.cores.clear();
        self.cores
            .extend(lock(&shared.members).iter().map(|(t, c)| (*t, c.clone())));
        self.touched.clear();
        self.touched.resize(self.cores.len(), false);
        for t in ready.drain(..) {
            if let Some(i) = self.cores.iter().position(|(c, _)| *c == t) {
                self.touched[i] = true;
            }
        }
    }

    /// Reads every view's new entries into `batch`, pass after pass until
    /// one finds none (at most [`MAX_PASSES`]), acting on TMRs as they come:
    /// a TMR published before a command read here is acted on before that
    /// command runs, whichever views they are on (the module doc).
    ///
    /// Returns the commands of the LU in flight as its last pass saw them
    /// (those just read included).
    fn read_all(&mut self, pool: &Pool) -> usize {
        let mut in_flight = 0;
        for _ in 0..MAX_PASSES {
            let mut any = false;
            in_flight = 0;
            for (i, (_, core)) in self.cores.iter().enumerate() {
                let mut st = core.lock();
                if st.ring.has_new() {
                    let batch = &mut self.batch;
                    core.drain(&mut st, pool, |cmd| batch.push((i, cmd)));
                    self.touched[i] = true;
                    any = true;
                }
                in_flight += st.ring.in_flight();
            }
            // One view: nothing to order it against.
            if !any || self.cores.len() == 1 {
                break;
            }
        }
        in_flight
    }
}

/// Serves one round of the LU: reads every view's new entries, runs a lone
/// READ/WRITE here when the LU is at iodepth 1 (see [`Load`]), starts the
/// other READs/WRITEs on the io_uring and hands the rest to the pool, whose
/// workers send the results back.
///
/// The uio wake-up counts are read after that, not before, so those system
/// calls are off the commands' path; returns whether entries came meanwhile
/// (serve again: the fds will not say so). No wake-up is lost: an entry
/// queued before a count was read is seen by the `has_new` after it (the
/// kernel moves `cmd_head` before it counts the wake-up), one queued after
/// makes the fd readable again.
fn serve(ends: &Ends<'_>, r: &mut Round, load: &mut Load, mut aio: Option<&mut Aio>) -> bool {
    let (pool, back) = (ends.pool, ends.back);
    let on_uring = aio.as_ref().map_or(0, |a| a.ring.outstanding());
    let in_flight = r.read_all(pool);
    let alone = load.inline_ok(on_uring)
        && r.batch.len() == 1
        && in_flight == 1
        && runs_inline(r.batch[0].1.cdb());
    if alone && let Some((i, mut cmd)) = r.batch.pop() {
        let core = r.cores[i].1.clone();
        let rsp = execute(&core.view, &mut cmd);
        // Entries that came while it ran: the initiator keeps more than
        // one command outstanding, so stop running them one by one here.
        r.read_all(pool);
        core.complete(std::iter::once((cmd, rsp)));
        if !r.batch.is_empty() {
            load.arrived_during_inline();
        }
    }
    for (i, cmd) in r.batch.drain(..) {
        let core = &r.cores[i].1;
        let cmd = match aio.as_deref_mut() {
            Some(a) if runs_inline(cmd.cdb()) && !cmd.is_aborted() => match a.start(core, cmd) {
                Some(cmd) => cmd,
                None => {
                    load.handed_off();
                    continue;
                }
            },
            _ => cmd,
        };
        let (c, back) = (core.clone(), back.clone());
        let job: Job = Box::new(move || {
            let mut cmd = cmd;
            let rsp = execute(&c.view, &mut cmd);
            back.send(c, cmd, rsp);
        });
        match pool.submit(job) {
            Ok(()) => load.handed_to_pool(),
            Err(_) => {
                error!(device = %core.name, "worker pool is gone; command left unanswered");
            }
        }
    }
    if let Some(a) = aio {
        a.submit(ends.lu);
    }
    for ((_, core), touched) in r.cores.iter().zip(&r.touched) {
        if *touched {
            core.ack_wakeup();
        }
    }
    let again = r.cores.iter().any(|(_, c)| c.has_new());
    r.cores.clear();
    again
}

/// When the idle LU thread watches its rings (`poll_us`): only while that
/// pays. A watch that runs out its budget disarms it (the initiator has
/// more than one command outstanding, or paused); a command that arrives
/// within the budget of the thread going idle re-arms it, a watch would
/// have seen that one. So an LU that sees a command now and then (a path
/// checker's TEST UNIT READY) costs one budget, not one per command.
#[derive(Debug)]
struct Poller {
    budget: Duration,
    armed: bool,
    /// When the thread, disarmed, went idle (nothing outstanding).
    idle_since: Option<Instant>,
}

impl Poller {
    fn new(budget: Duration) -> Self {
        Poller {
            budget,
            armed: !budget.is_zero(),
            idle_since: None,
        }
    }

    /// The thread is about to sleep with nothing outstanding; returns the
    /// time it went idle if it is to watch first.
    fn idle(&mut self) -> Option<Instant> {
        if self.armed {
            return Some(Instant::now());
        }
        if !self.budget.is_zero() && self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
        None
    }

    /// The watch begun at `since` ran out its budget.
    fn missed(&mut self, since: Instant) {
        self.armed = false;
        self.idle_since = Some(since);
    }

    /// New entries woke the thread.
    fn arrived(&mut self) {
        if let Some(since) = self.idle_since.take()
            && since.elapsed() <= self.budget
        {
            self.armed = true;
        }
    }

    /// Work is outstanding: a gap measured across it says nothing.
    fn busy(&mut self) {
        self.idle_since = None;
    }
}

/// The LU thread: serves a view's ring when it joins (entries may be
/// waiting) and after every wake-up of a view's fd, all the LU's views in
/// one round (see [`serve`]), and completes what the workers send back.
/// While the daemon is stopping, new entries stay in the ring (the next
/// start resets it: BUSY, retried). Told to stop, it still completes the
/// commands at the pool before it exits.
///
/// With a poll time ([`ThreadOpts::poll`]), the thread, once nothing of its
/// LU is outstanding, watches the heads of its views' rings for up to that
/// long before it sleeps: an initiator at iodepth 1 sends its next command
/// soon after the last completion, and seeing it in the mapping saves the
/// uio wake-up and the switch to this thread (see BENCHMARKS.md). It never
/// polls while I/O is outstanding (its completion wakes the thread), nor
/// after the budget, nor while watching does not pay (see [`Poller`]).
fn lu_thread(mut poll: Poll, ends: &Ends<'_>, mut aio: Option<Aio>, poll_for: Duration) {
    let mut events = Events::with_capacity(16);
    let mut ready: Vec<Token> = Vec::with_capacity(16);
    // Entries came after the wake-up counts were read: serve again.
    let mut again = false;
    let mut round = Round::default();
    let mut watched: Vec<(Token, Arc<Core>, HeadWatch)> = Vec::new();
    let mut returned: Vec<Returned> = Vec::with_capacity(64);
    let mut load = Load::default();
    let mut poller = Poller::new(poll_for);
    loop {
        let stop = ends.shared.stop.load(Ordering::Acquire);
        let reading = !stop && !ends.stopping.load(Ordering::Acquire);
        // New commands first: dispatching them keeps the workers busy while
        // the uio writes below (which, for reads, have the kernel copy the
        // data out) run.
        if reading {
            ready.append(&mut lock(&ends.shared.joined));
            ready.extend(
                events
                    .iter()
                    .map(|e| e.token())
                    .filter(|t| *t != WAKE && *t != URING),
            );
            if !ready.is_empty() {
                poller.arrived();
            }
            if again || !ready.is_empty() {
                round.begin(ends.shared, &mut ready);
                again = serve(ends, &mut round, &mut load, aio.as_mut());
            }
        } else {
            again = false;
            ready.clear();
        }
        events.clear();
        ends.back.take_all(ends.done, &mut returned);
        load.returned(returned.len());
        if let Some(a) = aio.as_mut() {
            a.reap(&mut returned);
        }
        complete_returned(&mut returned);
        let on_uring = aio.as_ref().map_or(0, |a| a.ring.outstanding());
        if stop && load.at_pool == 0 && on_uring == 0 {
            return;
        }
        // A failed submit (the kernel short of resources) is retried soon,
        // not only when the next entry arrives.
        let mut timeout = None;
        if let Some(a) = aio.as_mut().filter(|a| a.ring.unsubmitted() > 0) {
            a.submit(ends.lu);
            if a.ring.unsubmitted() > 0 {
                timeout = Some(Duration::from_millis(10));
            }
        }
        if again {
            timeout = Some(Duration::ZERO);
        } else if reading && timeout.is_none() && load.at_pool == 0 && on_uring == 0 {
            if let Some(since) = poller.idle() {
                if watch(ends, since + poll_for, &mut watched, &mut ready) {
                    continue;
                }
                poller.missed(since);
            }
        } else {
            poller.busy();
        }
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                events.clear();
                continue;
            }
            error!(lu = %ends.lu, "ring thread cannot wait on its uio fds, no longer serving them: {e}");
            return;
        }
    }
}

/// Watches, until `deadline`, the heads of the LU's rings, the workers'
/// returns and the thread's own signals (a view joined, stop), without a
/// system call. Returns whether one came; the views with new entries are in
/// `ready`. `heads`: scratch space, left empty.
fn watch(
    ends: &Ends<'_>,
    deadline: Instant,
    heads: &mut Vec<(Token, Arc<Core>, HeadWatch)>,
    ready: &mut Vec<Token>,
) -> bool {
    // The ring locks are taken under the members' one, as `LuThread::drop`
    // does; none is held while spinning: the event loop (status, removal)
    // and the workers share them, and only this thread reads the rings.
    heads.extend(lock(&ends.shared.members).iter().map(|(t, c)| {
        let h = c.lock().ring.head_watch();
        (*t, c.clone(), h)
    }));
    let came = loop {
        for (token, core, head) in heads.iter() {
            if head.moved() {
                core.polled.fetch_add(1, Ordering::Relaxed);
                ready.push(*token);
            }
        }
        if !ready.is_empty()
            || !ends.done.is_empty()
            || ends.shared.stop.load(Ordering::Acquire)
            || ends.stopping.load(Ordering::Acquire)
            || ends.shared.joined.try_lock().is_ok_and(|j| !j.is_empty())
        {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::hint::spin_loop();
    };
    heads.clear();
    came
}

/// Completes returned commands, one batch (one tail update, one uio write)
/// per ring. Leaves `returned` empty (its allocation is kept).
fn complete_returned(returned: &mut Vec<Returned>) {
    returned.sort_unstable_by_key(|(core, ..)| Arc::as_ptr(core) as usize);
    let mut it = returned.drain(..).peekable();
    while let Some((core, cmd, rsp)) = it.next() {
        let same = std::iter::from_fn(|| {
            it.next_if(|(c, ..)| Arc::ptr_eq(c, &core))
                .map(|(_, cmd, rsp)| (cmd, rsp))
        });
        core.complete(std::iter::once((cmd, rsp)).chain(same));
    }
}

/// Whether a command may run on the ring thread: the data path only. The
/// rest (PR OUT, COMPARE AND WRITE, copies, ...) may wait on the cluster or
/// take long, and must not hold up the LU's rings (TMRs, other initiators).
fn runs_inline(cdb: &[u8]) -> bool {
    matches!(
        cdb.first(),
        Some(0x08 | 0x0a | 0x28 | 0x2a | 0x88 | 0x8a | 0xa8 | 0xaa)
    )
}

/// Runs one command of a view: its one scatter list goes to the emulation as
/// data-out or data-in according to the CDB, never as both.
fn execute(view: &View, cmd: &mut InFlightCmd) -> Response {
    if cmd.is_aborted() {
        // A TMR aborted it before it started: it never touches the medium.
        return Response::task_aborted();
    }
    // The CDB is borrowed from the ring entry while the data buffers need
    // `&mut cmd`: copy it to the stack (at most 260 bytes), not the heap.
    let mut buf = [0u8; 260];
    let n = cmd.cdb().len().min(buf.len());
    buf[..n].copy_from_slice(&cmd.cdb()[..n]);
    let cdb = &buf[..n];
    let dir = direction(cdb);
    let r = match dir {
        Direction::FromDevice => {
            let mut din = cmd.data_mut();
            view.execute(cdb, &[], &mut din)
        }
        Direction::ToDevice => {
            let dout = cmd.data();
            view.execute(cdb, &dout, &mut [])
        }
        Direction::None => view.execute(cdb, &[], &mut []),
    };
    ring_response(&r, dir == Direction::FromDevice)
}

/// The ring's response for the emulation's, with the data-in length when
/// the command read.
fn ring_response(r: &crate::scsi::Response, reads: bool) -> Response {
    let rsp = match &r.sense {
        Some(sense) => Response::check_condition(sense.as_bytes()),
        None => Response::with_status(r.status),
    };
    if reads {
        rsp.read_len(r.data_in_len)
    } else {
        rsp
    }
}

/// An LU thread's io_uring: READs and WRITEs go to the file from here, many
/// outstanding at once and one system call per drain, instead of a worker
/// blocking on each. Each holds what `View::execute` would hold while it
/// touches the medium (the I/O gate, the admission, a WRITE's range lock)
/// until its completion is reaped; the thread only ever tries those
/// (a wait on them is left to the pool), so it never blocks on a gate
/// whose writer waits for the thread's own I/O.
struct Aio {
    ring: Uring<(Arc<Core>, RwIo)>,
    /// Registered with the thread's poll under [`URING`]; kept open.
    _signal: std::os::fd::OwnedFd,
    finished: Vec<Finished<(Arc<Core>, RwIo)>>,
}

impl Aio {
    /// The thread's io_uring, or `None` (logged) where the kernel refuses one.
    fn new(lu: &str, registry: &Registry) -> Option<Aio> {
        let made = Uring::new(lu, URING_ENTRIES).and_then(|ring| {
            let signal = ring.completion_signal()?;
            registry.register(
                &mut SourceFd(&signal.as_raw_fd()),
                URING,
                Interest::READABLE,
            )?;
            Ok((ring, signal))
        });
        match made {
            Ok((ring, signal)) => Some(Aio {
                ring,
                _signal: signal,
                finished: Vec::new(),
            }),
            Err(e) => {
                warn!(lu = %lu, "io_uring unavailable, file I/O stays on the worker pool: {e}");
                None
            }
        }
    }

    /// Starts `cmd` (a READ/WRITE) on the io_uring, or answers it at once
    /// (a unit attention, a reservation conflict); gives it back if it is
    /// for the pool.
    fn start(&mut self, core: &Arc<Core>, cmd: InFlightCmd) -> Option<InFlightCmd> {
        let io = match core.view.start_rw(cmd.cdb(), cmd.data_len()) {
            Err(r) => {
                let reads = direction(cmd.cdb()) == Direction::FromDevice;
                core.complete(std::iter::once((cmd, ring_response(&r, reads))));
                return None;
            }
            Ok(None) => return Some(cmd),
            Ok(Some(io)) => io,
        };
        let Some((file, align)) = core.view.backing().async_file() else {
            return Some(cmd);
        };
        let p = &io.plan;
        let req = IoRequest {
            kind: if p.write {
                IoKind::Write { dsync: p.dsync }
            } else {
                IoKind::Read
            },
            offset: p.offset,
            len: p.len,
        };
        match self.ring.push(file, align, cmd, req, (core.clone(), io)) {
            Ok(()) => {
                core.via_uring.fetch_add(1, Ordering::Relaxed);
                None
            }
            // What it held is released with the tag.
            Err(Refused::Full(cmd, _) | Refused::Unfit(cmd, _)) => Some(cmd),
        }
    }

    /// Hands what `start` queued to the kernel. `device`: the device (or
    /// LU) to name in the log.
    fn submit(&mut self, device: &str) {
        if let Err(e) = self.ring.submit() {
            // The queued operations stay queued: the thread retries.
            error!(device = %device, "io_uring submit: {e}");
        }
    }

    /// Moves every finished I/O, with its response, into `out`.
    fn reap(&mut self, out: &mut Vec<Returned>) {
        self.ring.reap(&mut self.finished);
        for f in self.finished.drain(..) {
            let Finished {
                mut cmd,
                tag: (core, io),
                req,
                result,
            } = f;
            let result = match result {
                Ok(n) if n >= req.len => Ok(()),
                // Short (end of file, a signal): the rest the plain way.
                Ok(n) => rest_of(&core.view, &mut cmd, &io, n),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {
                    rest_of(&core.view, &mut cmd, &io, 0)
                }
                Err(e) => Err(e),
            };
            let reads = !io.plan.write;
            let r = core.view.finish_rw(io, result);
            out.push((core, cmd, ring_response(&r, reads)));
        }
    }
}

/// Moves the bytes of `io` from `done` on synchronously.
fn rest_of(view: &View, cmd: &mut InFlightCmd, io: &RwIo, done: usize) -> std::io::Result<()> {
    let p = &io.plan;
    let (left, at) = (p.len.saturating_sub(done), p.offset + done as u64);
    if p.write {
        let bufs = cmd.data();
        view.backing()
            .write_vectored_at(&iov::sub_slices(&bufs, done, left), at, p.dsync)
    } else {
        let mut bufs = cmd.data_mut();
        view.backing()
            .read_vectored_at(&mut iov::sub_slices_mut(&mut bufs, done, left), at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lu::Lu;
    use crate::lu::state::{Identity, LuState};
    use crate::pr::{self, TransportId};
    use crate::ring::sim::{Completion, Dir, SimKernel};
    use crate::scsi::{self, LuConfig};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::sync::mpsc;

    /// The uio fd's stand-in: the test writes 4 bytes to the peer where the
    /// kernel would raise the uio interrupt.
    #[derive(Debug)]
    struct Sock(UnixStream);

    impl AsFd for Sock {
        fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.0.as_fd()
        }
    }

    impl Wakeups for Sock {
        fn ack(&self) -> std::io::Result<()> {
            let mut buf = [0u8; 64];
            (&self.0).read(&mut buf).map(|_| ())
        }
    }

    /// One view of the test LU: its simulated kernel ring and uio fd.
    struct Side {
        sim: SimKernel,
        core: Arc<Core>,
        irq: UnixStream,
        done: Vec<Completion>,
    }

    impl Side {
        fn submit(&mut self, cdb: &[u8], dir: Dir) -> u16 {
            let id = self.sim.submit(cdb, dir).unwrap();
            self.irq.write_all(&[0; 4]).unwrap();
            id
        }

        /// Waits (bounded, for a hung thread not to hang the test) until the
        /// kernel side has consumed a completion for every id.
        fn wait_for(&mut self, ids: &[u16]) -> Vec<Completion> {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                self.sim.handle_completions();
                self.done.extend(self.sim.take_completions());
                if ids
                    .iter()
                    .all(|id| self.done.iter().any(|c| c.cmd_id == *id))
                {
                    let (got, rest) = self.done.drain(..).partition(|c| ids.contains(&c.cmd_id));
                    self.done = rest;
                    return got;
                }
                assert!(Instant::now() < deadline, "no completion for {ids:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        /// The completions so far, without waiting.
        fn completed(&mut self) -> Vec<u16> {
            self.sim.handle_completions();
            self.done.extend(self.sim.take_completions());
            self.done.iter().map(|c| c.cmd_id).collect()
        }
    }

    /// An LU on memory with `n` views, each on its own nexus (SAS address
    /// 1..=n) and simulated ring.
    fn lu_with_views(n: u64) -> (Vec<Side>, tempfile::TempDir) {
        lu_on(n, Arc::new(crate::backing::MemBacking::new(1 << 20, 4096)))
    }

    /// Memory whose next read, once armed, says it started and waits to be
    /// let go (a slow medium, at a moment the test chooses).
    #[derive(Debug)]
    struct Gated {
        mem: crate::backing::MemBacking,
        gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    impl Gated {
        /// Arms the gate: returns (started, let go).
        fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (started_tx, started) = mpsc::channel();
            let (go, go_rx) = mpsc::channel();
            *lock(&self.gate) = Some((started_tx, go_rx));
            (started, go)
        }
    }

    impl crate::backing::Backing for Gated {
        fn len(&self) -> u64 {
            self.mem.len()
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn read_vectored_at(
            &self,
            bufs: &mut [std::io::IoSliceMut<'_>],
            offset: u64,
        ) -> std::io::Result<()> {
            let armed = lock(&self.gate).take();
            if let Some((started, go)) = armed {
                started.send(()).unwrap();
                go.recv().unwrap();
            }
            self.mem.read_vectored_at(bufs, offset)
        }
        fn write_vectored_at(
            &self,
            bufs: &[std::io::IoSlice<'_>],
            offset: u64,
            fua: bool,
        ) -> std::io::Result<()> {
            self.mem.write_vectored_at(bufs, offset, fua)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.mem.sync()
        }
        fn supports_discard(&self) -> bool {
            false
        }
        fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.mem.discard(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.mem.write_zeroes(offset, len)
        }
    }

    fn lu_on(n: u64, backing: Arc<dyn crate::backing::Backing>) -> (Vec<Side>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::from_random(&[7; 13]);
        let identity = id.lu_identity(None).unwrap();
        let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).unwrap();
        let lu = Arc::new(Lu::for_tests(scsi, LuState::new(id), &dir.path().join("s")).unwrap());
        let sides = (1..=n)
            .map(|a| {
                let name = format!("user_1/v{a}");
                let view = Arc::new(View::new(
                    lu.clone(),
                    name.clone(),
                    PathBuf::new(),
                    PathBuf::new(),
                ));
                let nexus = pr::Nexus {
                    initiator: TransportId::Sas { address: a },
                    rtpi: 1,
                };
                view.set_nexus_for_tests(nexus, scsi::TargetPort::default());
                lu.add_view(&view);
                let sim = SimKernel::new(64 * 1024, 64, 4096);
                let (ours, irq) = UnixStream::pair().unwrap();
                ours.set_nonblocking(true).unwrap();
                let core = Arc::new(Core::new(name, Arc::new(Sock(ours)), view, sim.ring()));
                Side {
                    sim,
                    core,
                    irq,
                    done: Vec::new(),
                }
            })
            .collect();
        (sides, dir)
    }

    /// A thread serving every side, side i under token 16 + i.
    fn serve(sides: &[Side], pool: &Arc<Pool>, stopping: bool) -> LuThread {
        serve_with(sides, pool, stopping, URING_NO_POLL)
    }

    /// The daemon's defaults: io_uring on, no polling.
    const URING_NO_POLL: ThreadOpts = ThreadOpts {
        uring: true,
        poll: Duration::ZERO,
    };

    fn serve_with(sides: &[Side], pool: &Arc<Pool>, stopping: bool, opts: ThreadOpts) -> LuThread {
        let t = LuThread::spawn(
            "test-lu".into(),
            "t-lu".into(),
            pool.clone(),
            Arc::new(AtomicBool::new(stopping)),
            opts,
        )
        .unwrap();
        for (i, s) in sides.iter().enumerate() {
            t.join(Token(16 + i), &s.core).unwrap();
        }
        t
    }

    fn write10(lba: u8, blocks: u8) -> [u8; 10] {
        [0x2a, 0, 0, 0, 0, lba, 0, 0, blocks, 0]
    }

    fn read10(lba: u8, blocks: u8) -> [u8; 10] {
        [0x28, 0, 0, 0, 0, lba, 0, 0, blocks, 0]
    }

    const PR_IN: [u8; 10] = [0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0];

    /// A pool whose only worker is held until the returned sender is used.
    fn held_pool() -> (Arc<Pool>, mpsc::Sender<()>) {
        let pool = Arc::new(Pool::new(1, "t-held").unwrap());
        let release = hold(&pool);
        (pool, release)
    }

    /// Occupies one worker of `pool` until the returned sender is used.
    fn hold(pool: &Pool) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel::<()>();
        pool.submit(Box::new(move || {
            let _ = rx.recv();
        }))
        .unwrap_or_else(|_| panic!("submit refused"));
        tx
    }

    /// An LU with `n` views on a file (page cache: the test directory's
    /// file system may refuse O_DIRECT).
    fn lu_on_file(n: u64) -> (Vec<Side>, tempfile::TempDir, tempfile::NamedTempFile) {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        let file = crate::backing::FileBacking::open(
            img.path(),
            &crate::backing::FileOptions {
                direct: false,
                ..Default::default()
            },
        )
        .unwrap();
        let (sides, dir) = lu_on(n, Arc::new(file));
        (sides, dir, img)
    }

    /// Queues every command before one wake-up: the thread drains them as
    /// one batch (iodepth > 1).
    fn submit_batch(s: &mut Side, cmds: Vec<([u8; 10], Dir)>) -> Vec<u16> {
        let ids = cmds
            .into_iter()
            .map(|(cdb, dir)| s.sim.submit(&cdb, dir).unwrap())
            .collect();
        s.irq.write_all(&[0; 4]).unwrap();
        ids
    }

    #[test]
    fn reads_and_writes_at_depth_go_through_io_uring_with_their_data() {
        assert!(
            Uring::<()>::new("t", 8).is_ok(),
            "io_uring is unavailable here (kernel.io_uring_disabled?)"
        );
        let (mut sides, _dir, _img) = lu_on_file(1);
        // The pool's only worker is busy throughout: everything below
        // completes only because it went through the thread's io_uring.
        let (pool, release) = held_pool();
        let t = serve(std::slice::from_ref(&sides[0]), &pool, false);
        let s = &mut sides[0];
        let writes = (0..24u8)
            .map(|i| (write10(i * 2, 2), Dir::ToDevice(vec![i + 1; 1024])))
            .collect();
        let ids = submit_batch(s, writes);
        assert!(s.wait_for(&ids).iter().all(|c| c.status == 0));
        let reads = (0..24u8)
            .map(|i| (read10(i * 2, 2), Dir::FromDevice(1024)))
            .collect();
        let ids = submit_batch(s, reads);
        let done = s.wait_for(&ids);
        for (i, id) in ids.iter().enumerate() {
            let c = done.iter().find(|c| c.cmd_id == *id).unwrap();
            assert_eq!(c.status, 0);
            assert_eq!(
                c.data_in,
                vec![u8::try_from(i).unwrap() + 1; 1024],
                "read {i}"
            );
        }
        // A READ past the end is the emulation's to answer (ILLEGAL
        // REQUEST, LBA out of range): at the pool, so it waits for it.
        let ids = submit_batch(
            s,
            vec![
                ([0x28, 0, 0, 0, 0x08, 0, 0, 0, 1, 0], Dir::FromDevice(512)),
                (read10(0, 1), Dir::FromDevice(512)),
            ],
        );
        let c = &s.wait_for(&ids[1..])[0];
        assert_eq!((c.status, c.data_in[0]), (0, 1));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !s.completed().contains(&ids[0]),
            "an error case skipped the pool"
        );
        release.send(()).unwrap();
        let c = &s.wait_for(&ids[..1])[0];
        assert_eq!((c.status, c.sense[2] & 0xf, c.sense[12]), (2, 0x5, 0x21));
        assert_eq!(s.core.in_flight(), 0);
        drop(t);
        assert!(s.sim.broken().is_none(), "{:?}", s.sim.broken());
    }

    #[test]
    fn on_io_uring_a_unit_attention_and_a_conflict_are_answered_without_io() {
        let (mut sides, _dir, _img) = lu_on_file(2);
        let (pool, release) = held_pool();
        let t = serve(&sides, &pool, false);
        let (a, b) = sides.split_at_mut(1);
        let (a, b) = (&mut a[0], &mut b[0]);
        // A LUN RESET on A: B's next command reports it, the one after runs.
        a.sim
            .submit_tmr(u8::try_from(tcmu_sys::TCMU_TMR_LUN_RESET).unwrap(), &[])
            .unwrap();
        a.irq.write_all(&[0; 4]).unwrap();
        // The reset's SPC-2 release is a job for the (held) pool; the unit
        // attention was queued before it.
        std::thread::sleep(Duration::from_millis(30));
        let ids = submit_batch(
            b,
            vec![
                (read10(0, 1), Dir::FromDevice(512)),
                (read10(0, 1), Dir::FromDevice(512)),
            ],
        );
        let done = b.wait_for(&ids);
        let first = done.iter().find(|c| c.cmd_id == ids[0]).unwrap();
        assert_eq!(
            (first.status, first.sense[12], first.sense[13]),
            (2, 0x29, 0x03)
        );
        assert_eq!(done.iter().find(|c| c.cmd_id == ids[1]).unwrap().status, 0);
        // A registers key 0xa and reserves Write Exclusive (PR OUT runs at
        // the pool): B's writes conflict, its reads run.
        release.send(()).unwrap();
        let pr_out = |sa: u8, key_at: usize| {
            let mut params = vec![0u8; 24];
            params[key_at + 7] = 0xa;
            (
                [0x5f, sa, 0x01, 0, 0, 0, 0, 0, 24, 0],
                Dir::ToDevice(params),
            )
        };
        for (cdb, dir) in [pr_out(0, 8), pr_out(1, 0)] {
            let id = a.submit(&cdb, dir);
            assert_eq!(a.wait_for(&[id])[0].status, 0);
        }
        let _held = hold(&pool);
        let ids = submit_batch(
            b,
            vec![
                (write10(0, 1), Dir::ToDevice(vec![9; 512])),
                (read10(0, 1), Dir::FromDevice(512)),
            ],
        );
        let done = b.wait_for(&ids);
        let status = |id: u16| done.iter().find(|c| c.cmd_id == id).unwrap().status;
        assert_eq!(status(ids[0]), scsi::sense::status::RESERVATION_CONFLICT);
        assert_eq!(status(ids[1]), 0);
        // A's own I/O runs.
        let ids = submit_batch(
            a,
            vec![
                (write10(0, 1), Dir::ToDevice(vec![7; 512])),
                (read10(1, 1), Dir::FromDevice(512)),
            ],
        );
        assert!(a.wait_for(&ids).iter().all(|c| c.status == 0));
        drop(_held);
        drop(t);
    }

    #[test]
    fn lone_reads_and_writes_run_on_the_ring_thread_the_rest_on_the_pool() {
        let (mut sides, _dir) = lu_with_views(2);
        let (pool, release) = held_pool();
        let t = serve(&sides, &pool, false);
        let (a, b) = sides.split_at_mut(1);
        let (a, b) = (&mut a[0], &mut b[0]);

        // The pool's only worker is busy: these complete only because the
        // ring thread runs them itself.
        let w = a.submit(&write10(3, 1), Dir::ToDevice(vec![0xab; 512]));
        assert_eq!(a.wait_for(&[w])[0].status, 0);
        let r = b.submit(&read10(3, 1), Dir::FromDevice(512));
        let c = &b.wait_for(&[r])[0];
        assert_eq!((c.status, &c.data_in[..]), (0, &[0xab; 512][..]));

        // PERSISTENT RESERVE IN may wait on the cluster: never inline.
        let pr = a.submit(&PR_IN, Dir::FromDevice(8));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!a.completed().contains(&pr), "PR IN ran on the ring thread");
        // With a command of the LU at the pool, a READ on the other view is
        // not run inline either: it queues behind the held worker.
        let r2 = b.submit(&read10(3, 1), Dir::FromDevice(512));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!b.completed().contains(&r2), "a second command ran inline");
        release.send(()).unwrap();
        assert_eq!(a.wait_for(&[pr]).len(), 1);
        let c2 = &b.wait_for(&[r2])[0];
        assert_eq!((c2.status, c2.data_in[0]), (0, 0xab));
        assert_eq!(a.core.in_flight() + b.core.in_flight(), 0);
        drop(t);
        assert!(a.sim.broken().is_none(), "{:?}", a.sim.broken());
        assert!(b.sim.broken().is_none(), "{:?}", b.sim.broken());
    }

    /// Entries that arrive while a lone command runs on the thread show the
    /// initiator is not at iodepth 1: they go to the pool, and so do the
    /// next lone commands, until NO_INLINE_AFTER_ARRIVALS have gone there.
    #[test]
    fn entries_arriving_during_an_inline_command_stop_inlining() {
        let gated = Arc::new(Gated {
            mem: crate::backing::MemBacking::new(1 << 20, 4096),
            gate: Mutex::new(None),
        });
        let (mut sides, _dir) = lu_on(1, gated.clone());
        let s = &mut sides[0];
        let pool = Arc::new(Pool::new(1, "t-pool").unwrap());
        let t = serve(std::slice::from_ref(s), &pool, false);
        let (started, go) = gated.arm();
        let first = s.submit(&read10(0, 1), Dir::FromDevice(512));
        started.recv_timeout(Duration::from_secs(20)).unwrap();
        // The thread is inside the first read: two more come meanwhile.
        let more = [
            s.submit(&read10(1, 1), Dir::FromDevice(512)),
            s.submit(&read10(2, 1), Dir::FromDevice(512)),
        ];
        go.send(()).unwrap();
        assert!(
            s.wait_for(&[first, more[0], more[1]])
                .iter()
                .all(|c| c.status == 0)
        );
        // A lone READ now queues behind the held worker instead of running
        // on the thread.
        let release = hold(&pool);
        let lone = s.submit(&read10(3, 1), Dir::FromDevice(512));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!s.completed().contains(&lone), "ran inline at depth");
        release.send(()).unwrap();
        assert_eq!(s.wait_for(&[lone])[0].status, 0);
        drop(t);
    }

    #[test]
    fn load_allows_inline_again_after_enough_commands_went_to_the_pool() {
        let mut load = Load::default();
        assert!(load.inline_ok(0));
        load.arrived_during_inline();
        for _ in 0..NO_INLINE_AFTER_ARRIVALS - 1 {
            load.handed_to_pool();
            load.returned(1);
            assert!(!load.inline_ok(0));
        }
        load.handed_to_pool();
        assert!(!load.inline_ok(0), "one is still at the pool");
        load.returned(1);
        assert!(load.inline_ok(0));
        // Commands on the io_uring count down too, and hold inline off
        // while they are outstanding.
        load.arrived_during_inline();
        for _ in 0..NO_INLINE_AFTER_ARRIVALS {
            assert!(!load.inline_ok(0));
            load.handed_off();
        }
        assert!(!load.inline_ok(1), "one is still on the io_uring");
        assert!(load.inline_ok(0));
    }

    #[test]
    fn a_batch_goes_to_the_pool_and_every_command_completes_with_its_data() {
        let (mut sides, _dir) = lu_with_views(1);
        let s = &mut sides[0];
        let pool = Arc::new(Pool::new(3, "t-pool").unwrap());
        // Queue a batch before the view joins: it serves waiting entries at
        // once (an adopted ring).
        let mut ids = Vec::new();
        for i in 0..8u8 {
            ids.push(
                s.sim
                    .submit(&write10(i, 1), Dir::ToDevice(vec![i; 512]))
                    .unwrap(),
            );
        }
        let t = serve(std::slice::from_ref(s), &pool, false);
        assert!(s.wait_for(&ids).iter().all(|c| c.status == 0));
        let reads: Vec<u16> = (0..8u8)
            .map(|i| s.sim.submit(&read10(i, 1), Dir::FromDevice(512)).unwrap())
            .collect();
        s.irq.write_all(&[0; 4]).unwrap();
        let got = s.wait_for(&reads);
        for (i, id) in (0..8u8).zip(&reads) {
            let c = got.iter().find(|c| c.cmd_id == *id).unwrap();
            assert_eq!((c.status, c.data_in[0], c.data_in.len()), (0, i, 512));
        }
        drop(t);
        assert!(s.sim.broken().is_none(), "{:?}", s.sim.broken());
    }

    /// Workers returning while the thread drains must never be left
    /// unwoken (only the first return since the last drain wakes it).
    #[test]
    fn no_return_is_left_waiting_when_workers_race_the_thread() {
        let (mut sides, _dir) = lu_with_views(2);
        let pool = Arc::new(Pool::new(3, "t-pool").unwrap());
        let t = serve(&sides, &pool, false);
        for round in 0..600u32 {
            let mut ids = [Vec::new(), Vec::new()];
            for (s, ids) in sides.iter_mut().zip(&mut ids) {
                for i in 0..12u8 {
                    ids.push(s.sim.submit(&read10(i, 1), Dir::FromDevice(512)).unwrap());
                }
                s.irq.write_all(&[0; 4]).unwrap();
            }
            for (s, ids) in sides.iter_mut().zip(&ids) {
                let got = s.wait_for(ids);
                assert!(got.iter().all(|c| c.status == 0), "round {round}");
            }
        }
        drop(t);
    }

    /// `rounds` times: a LUN RESET on view A (its wake-up written only if
    /// `wake`), then, as the initiator goes on once the kernel answered it,
    /// a TEST UNIT READY on view B: it must get BUS DEVICE RESET FUNCTION
    /// OCCURRED (29/03), once, and never the issuer.
    fn lun_reset_rounds(rounds: usize, wake: bool) {
        let (mut sides, _dir) = lu_with_views(2);
        let pool = Arc::new(Pool::new(2, "t-pool").unwrap());
        let t = serve(&sides, &pool, false);
        let (a, b) = sides.split_at_mut(1);
        let (a, b) = (&mut a[0], &mut b[0]);
        let tur = [0u8; 6];
        for round in 0..rounds {
            a.sim
                .submit_tmr(u8::try_from(tcmu_sys::TCMU_TMR_LUN_RESET).unwrap(), &[])
                .unwrap();
            if wake {
                a.irq.write_all(&[0; 4]).unwrap();
            }
            let id = b.submit(&tur, Dir::None);
            let c = &b.wait_for(&[id])[0];
            assert_eq!(
                c.status,
                scsi::sense::status::CHECK_CONDITION,
                "round {round}"
            );
            assert_eq!(
                (c.sense[2] & 0xf, c.sense[12], c.sense[13]),
                (0x6, 0x29, 0x03),
                "round {round}: {:02x?}",
                c.sense
            );
            // Reported once; and never to the issuer.
            let id = b.submit(&tur, Dir::None);
            assert_eq!(b.wait_for(&[id])[0].status, 0, "round {round}");
            let id = a.submit(&tur, Dir::None);
            assert_eq!(a.wait_for(&[id])[0].status, 0, "round {round}");
        }
        drop(t);
    }

    /// SAM-5 6.3.3, even when the initiator sends the next command at once
    /// on another path. Repeated: with a thread per view, the other view's
    /// command could be served first.
    #[test]
    fn a_lun_reset_on_one_view_is_seen_by_the_next_command_on_another() {
        lun_reset_rounds(200, true);
    }

    /// The TMR entry is in A's ring before the initiator goes on to B, but
    /// A's wake-up has not come yet (here: never comes) when B's does: the
    /// thread reads every view before it runs B's command, so that command
    /// still sees the reset. Reading only the views whose fd was reported
    /// would run it first.
    #[test]
    fn a_reset_whose_wake_up_is_late_is_still_seen_by_the_next_command_on_another_view() {
        lun_reset_rounds(20, false);
    }

    #[test]
    fn removal_is_announced_when_the_last_command_completes() {
        let (mut sides, _dir) = lu_with_views(1);
        let s = &mut sides[0];
        let (pool, release) = held_pool();
        let waker_poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(waker_poll.registry(), Token(9)).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        s.core.set_removal_notice(Notice {
            token: Token(42),
            tx,
            waker,
        });
        let t = serve(std::slice::from_ref(s), &pool, false);
        let pr = s.submit(&PR_IN, Dir::FromDevice(8));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            s.core.begin_removal(5),
            None,
            "answered with a command in flight"
        );
        assert!(rx.try_recv().is_err(), "announced with a command in flight");
        release.send(()).unwrap();
        s.wait_for(&[pr]);
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Token(42));
        assert_eq!(s.core.removal_ready(), Some(5));
        drop(t);
    }

    #[test]
    fn a_stopped_ring_thread_still_completes_what_is_in_flight() {
        let (mut sides, _dir) = lu_with_views(1);
        let s = &mut sides[0];
        let (pool, release) = held_pool();
        let t = serve(std::slice::from_ref(s), &pool, false);
        let pr = s.submit(&PR_IN, Dir::FromDevice(8));
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.core.in_flight() == 0 {
            assert!(Instant::now() < deadline, "never read");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(t); // not joined: a command is in flight
        release.send(()).unwrap();
        s.wait_for(&[pr]);
        assert_eq!(s.core.in_flight(), 0);
    }

    #[test]
    fn a_view_that_left_is_no_longer_read_the_others_are() {
        let (mut sides, _dir) = lu_with_views(2);
        let pool = Arc::new(Pool::new(1, "t-pool").unwrap());
        let t = serve(&sides, &pool, false);
        t.leave(Token(16));
        assert_eq!(t.views(), 1);
        let (a, b) = sides.split_at_mut(1);
        let (a, b) = (&mut a[0], &mut b[0]);
        let ra = a.submit(&read10(0, 1), Dir::FromDevice(512));
        let rb = b.submit(&read10(0, 1), Dir::FromDevice(512));
        assert_eq!(b.wait_for(&[rb])[0].status, 0);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!a.completed().contains(&ra));
        assert_eq!(a.core.in_flight(), 0, "the left view's entry was read");
        drop(t);
    }

    #[test]
    fn while_the_daemon_stops_new_entries_stay_in_the_ring() {
        let (mut sides, _dir) = lu_with_views(1);
        let s = &mut sides[0];
        let pool = Arc::new(Pool::new(1, "t-pool").unwrap());
        let t = serve(std::slice::from_ref(s), &pool, true);
        let r = s.submit(&read10(0, 1), Dir::FromDevice(512));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!s.completed().contains(&r));
        assert_eq!(s.sim.in_flight(), 1);
        assert_eq!(s.core.in_flight(), 0, "the entry was read");
        drop(t);
    }

    /// `rounds` times: a READ with its wake-up on the first view, waited
    /// for, then at once one on the last view (the same one if there is
    /// one) whose wake-up is withheld; counts those completed within 200 ms
    /// without it (a late one is woken, so the next round starts clean).
    fn quiet_rounds(sides: &mut [Side], rounds: usize) -> usize {
        let last = sides.len() - 1;
        let mut served = 0;
        for _ in 0..rounds {
            let id = sides[0].submit(&read10(0, 1), Dir::FromDevice(512));
            sides[0].wait_for(&[id]);
            // No irq write: only a thread watching the ring can see it.
            let s = &mut sides[last];
            let polled = s.core.polled();
            let quiet = s.sim.submit(&read10(1, 1), Dir::FromDevice(512)).unwrap();
            let deadline = Instant::now() + Duration::from_millis(200);
            while !s.completed().contains(&quiet) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if s.completed().contains(&quiet) {
                served += 1;
                assert!(s.core.polled() > polled, "counted in the status");
            } else {
                s.irq.write_all(&[0; 4]).unwrap();
            }
            let got = s.wait_for(&[quiet]);
            assert_eq!(got[0].status, 0);
        }
        served
    }

    /// [`quiet_rounds`] on a new LU with `views` views.
    fn served_without_wake_up(poll: Duration, rounds: usize, views: u64) -> usize {
        let (mut sides, _dir) = lu_with_views(views);
        let pool = Arc::new(Pool::new(1, "t-pool").unwrap());
        let opts = ThreadOpts { uring: true, poll };
        let t = serve_with(&sides, &pool, false, opts);
        let served = quiet_rounds(&mut sides, rounds);
        drop(t);
        served
    }

    #[test]
    fn a_polling_thread_sees_the_next_command_without_a_wake_up() {
        // The thread watches for 10 ms after each command; the test's
        // next entry comes well within that unless this machine stalls,
        // so most rounds, and surely one of 20, are served unwoken.
        let served = served_without_wake_up(Duration::from_millis(10), 20, 1);
        assert!(served > 0, "none of 20 served without its wake-up");
        // Without polling the thread sleeps until the fd says so.
        assert_eq!(served_without_wake_up(Duration::ZERO, 3, 1), 0);
    }

    /// An LU with several views (one per initiator, or multipath) is
    /// watched too: every view's ring, here the one that did not just
    /// complete a command.
    #[test]
    fn a_polling_thread_watches_every_view_of_its_lu() {
        let served = served_without_wake_up(Duration::from_millis(10), 20, 2);
        assert!(served > 0, "none of 20 served without its wake-up");
        assert_eq!(served_without_wake_up(Duration::ZERO, 3, 2), 0);
    }

    #[test]
    fn a_watch_that_runs_out_disarms_polling_until_a_command_comes_within_the_budget() {
        let budget = Duration::from_secs(1);
        let long_ago = Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        let mut p = Poller::new(budget);
        assert!(p.idle().is_some(), "armed at first");
        p.arrived();
        assert!(p.idle().is_some(), "a hit keeps it armed");
        p.missed(long_ago);
        assert!(p.idle().is_none(), "a miss disarms it");
        p.arrived();
        assert!(p.idle().is_none(), "a command long after going idle");
        p.busy();
        p.arrived();
        assert!(p.idle().is_none(), "a gap across outstanding work");
        // Went idle just now (the last `idle`): the next command is within
        // the budget, as a watch would have seen it.
        p.arrived();
        assert!(p.idle().is_some(), "re-armed");
        let mut off = Poller::new(Duration::ZERO);
        assert!(off.idle().is_none());
        off.arrived();
        assert!(off.idle().is_none(), "poll_us = 0 never watches");
    }

    /// Over the thread: after a watch ran out, a command that came late
    /// does not re-arm it (the next one, unwoken, waits for its wake-up);
    /// commands sent right after a completion do.
    #[test]
    fn a_thread_whose_watch_ran_out_sleeps_until_commands_come_quickly_again() {
        let (mut sides, _dir) = lu_with_views(1);
        let pool = Arc::new(Pool::new(1, "t-pool").unwrap());
        let opts = ThreadOpts {
            uring: true,
            poll: Duration::from_millis(20),
        };
        let t = serve_with(&sides, &pool, false, opts);
        let s = &mut sides[0];
        let id = s.submit(&read10(0, 1), Dir::FromDevice(512));
        s.wait_for(&[id]);
        // Far longer than the watch: it runs out.
        std::thread::sleep(Duration::from_millis(500));
        let id = s.submit(&read10(0, 1), Dir::FromDevice(512));
        s.wait_for(&[id]);
        let polled = s.core.polled();
        let quiet = s.sim.submit(&read10(1, 1), Dir::FromDevice(512)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!s.completed().contains(&quiet), "watched while disarmed");
        assert_eq!(s.core.polled(), polled);
        s.irq.write_all(&[0; 4]).unwrap();
        s.wait_for(&[quiet]);
        // Each woken command comes right after the last completion (well
        // within 20 ms unless this machine stalls), so the thread re-arms
        // and sees the unwoken one after it by watching.
        let served = quiet_rounds(&mut sides, 20);
        assert!(served > 0, "never re-armed");
        drop(t);
    }

    #[test]
    fn the_waker_token_is_refused_for_a_view() {
        let (sides, _dir) = lu_with_views(1);
        let pool = Arc::new(Pool::new(1, "t-pool").unwrap());
        let t = LuThread::spawn(
            "test-lu".into(),
            "t-lu".into(),
            pool,
            Arc::new(AtomicBool::new(false)),
            URING_NO_POLL,
        )
        .unwrap();
        assert!(t.join(WAKE, &sides[0].core).is_err());
        assert!(t.join(URING, &sides[0].core).is_err());
        assert_eq!(t.views(), 0);
    }
}
