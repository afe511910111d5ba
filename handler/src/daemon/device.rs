//! One served TCMU device: its uio fd, ring, logical unit and lifecycle.
//!
//! Each device has its own ring thread. It sleeps on the uio fd, reads every
//! new entry, and runs a lone READ/WRITE (the only command in flight: the
//! iodepth-1 case) itself, so that command costs no thread hand-off at all.
//! Anything else (more commands in flight, PR OUT and the other commands that
//! may wait for the cluster) goes to the shared worker pool, whose workers
//! send the results back; the ring thread completes everything it has with
//! one tail update and one uio write. The event loop is only told when a
//! pending removal can be answered. A backing file that hangs blocks its own
//! device's thread, never another device or netlink.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, error, info, warn};

use super::pool::{Job, Pool};
use super::serve::uio_dev_path;
use crate::config::{Config, DeviceConfig};
use crate::configfs::{DeviceDir, ResetRing};
use crate::lu::{Lu, Lus, Resolver, Sharing, View};
use crate::netlink::Reconfig;
use crate::ring::{Event as RingEvent, InFlightCmd, Response, Ring, TmrEvent, TmrType, UioFd};
use crate::scsi::opcode::{Direction, direction};
use crate::uio::{TcmuName, UioDevice, parse_map_size};

/// Why a device cannot be served or reconfigured.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The cfgstring is not valid for us.
    #[error("config string: {0}")]
    Config(String),
    /// The backing file could not be opened.
    #[error("backing store: {0}")]
    Backing(String, i32),
    /// The uio device or ring could not be set up.
    #[error("ring: {0}")]
    Ring(String),
    /// configfs refused a recovery step.
    #[error("configfs: {0}")]
    Configfs(String),
    /// A reconfiguration we cannot apply.
    #[error("{0}")]
    Unsupported(String),
}

impl DeviceError {
    /// The errno the kernel gets in our netlink reply.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Config(_) | DeviceError::Unsupported(_) => libc::EINVAL,
            DeviceError::Backing(_, e) if *e != 0 => *e,
            DeviceError::Backing(..) | DeviceError::Ring(_) | DeviceError::Configfs(_) => libc::EIO,
        }
    }
}

/// A device we serve (the event loop's handle on it).
#[derive(Debug)]
pub struct Device {
    id: TcmuName,
    minor: u32,
    core: Arc<Core>,
    view: Arc<View>,
    cfg: DeviceConfig,
    /// The ring thread, once started.
    thread: Option<RingThread>,
}

/// What the ring thread, the workers and the event loop share.
#[derive(Debug)]
pub(super) struct Core {
    /// The device's name, for logs.
    name: String,
    /// Readable when the kernel queued entries (the uio fd).
    wakeups: Arc<dyn Wakeups>,
    view: Arc<View>,
    state: Mutex<RingState>,
}

/// Where a ring thread sleeps: the uio fd (a socket in unit tests).
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

/// The running ring thread of a device.
#[derive(Debug)]
struct RingThread {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    handle: JoinHandle<()>,
}

const RING_FD: Token = Token(0);
/// The ring thread's waker (mio allows one per poll): a worker sent a result
/// back, or the thread is asked to stop.
const RING_WAKE: Token = Token(1);

/// How workers hand finished commands back to the ring thread, which
/// completes each batch of them with one tail update and one uio write.
#[derive(Debug)]
struct Returns {
    tx: Sender<(InFlightCmd, Response)>,
    waker: Arc<Waker>,
    /// The device's name, for logs.
    name: String,
}

impl Returns {
    fn send(&self, cmd: InFlightCmd, rsp: Response) {
        if self.tx.send((cmd, rsp)).is_err() {
            error!(device = %self.name, "ring thread is gone; command left unanswered");
        } else if let Err(e) = self.waker.wake() {
            error!(device = %self.name, "waking the ring thread for a completion: {e}");
        }
    }
}

impl Device {
    /// Serves a device the kernel announced just now (ADDED_DEVICE): its ring is fresh.
    pub fn open_new(
        dev: &UioDevice,
        config: &Config,
        lus: &Lus,
        resolver: &Resolver,
        sharing: &Sharing,
    ) -> Result<Self, DeviceError> {
        Self::open(dev, config, lus, resolver, sharing, false)
    }

    /// Serves a device enabled before we started: its ring may hold entries a
    /// previous daemon never completed, so block it, reset the ring (those
    /// commands end BUSY and are retried), map, and unblock.
    pub fn adopt(
        dev: &UioDevice,
        config: &Config,
        lus: &Lus,
        resolver: &Resolver,
        sharing: &Sharing,
    ) -> Result<Self, DeviceError> {
        Self::open(dev, config, lus, resolver, sharing, true)
    }

    fn open(
        dev: &UioDevice,
        config: &Config,
        lus: &Lus,
        resolver: &Resolver,
        sharing: &Sharing,
        recover: bool,
    ) -> Result<Self, DeviceError> {
        let id = dev.id.clone();
        let cfg =
            DeviceConfig::parse(&id.cfgstring).map_err(|e| DeviceError::Config(e.to_string()))?;
        crate::config::check(&cfg).map_err(DeviceError::Config)?;
        let roots = config.paths.roots();
        let dir = DeviceDir::new(&roots, &id);
        let attribs = dir
            .attribs()
            .map_err(|e| DeviceError::Configfs(e.to_string()))?;
        let mut fresh = false;
        let lu = lus
            .get_or_open(&cfg, || {
                fresh = true;
                Lu::open(
                    &cfg,
                    sharing,
                    attribs.hw_block_size,
                    attribs.hw_max_sectors,
                    attribs.dev_size,
                    attribs.emulate_write_cache,
                )
            })
            .map_err(|e| DeviceError::Backing(e.to_string(), e.errno()))?;
        if fresh && !recover {
            // The LU's first view, new in the kernel (not adopted from a
            // previous daemon): to its initiators the LU has just powered on.
            lu.power_on();
        }
        let target_root = roots.configfs.join("target");
        let view = Arc::new(View::new(
            lu,
            id.to_string(),
            target_root,
            dir.path().to_path_buf(),
        ));
        view.lu().add_view(&view);
        resolver.add(&view);

        let sysfs_uio = roots
            .sysfs
            .join("class/uio")
            .join(format!("uio{}", dev.minor));
        let size = std::fs::read_to_string(sysfs_uio.join("maps/map0/size"))
            .ok()
            .and_then(|s| parse_map_size(&s))
            .ok_or_else(|| {
                DeviceError::Ring(format!("cannot read maps/map0/size of uio{}", dev.minor))
            })?;
        let size = usize::try_from(size)
            .map_err(|_| DeviceError::Ring("map size exceeds the address space".into()))?;

        if recover {
            dir.block(true)
                .map_err(|e| DeviceError::Configfs(e.to_string()))?;
            dir.reset_ring(ResetRing::Busy)
                .map_err(|e| DeviceError::Configfs(e.to_string()))?;
        }
        let opened = (|| {
            let uio = UioFd::open(&uio_dev_path(Path::new("/dev"), dev.minor))
                .map_err(|e| DeviceError::Ring(e.to_string()))?;
            uio.set_nonblocking()
                .map_err(|e| DeviceError::Ring(format!("uio nonblocking: {e}")))?;
            let map = uio
                .map(size)
                .map_err(|e| DeviceError::Ring(e.to_string()))?;
            let uio = Arc::new(uio);
            let ring = Ring::new(Arc::new(map), Box::new(uio.clone()))
                .map_err(|e| DeviceError::Ring(e.to_string()))?;
            Ok::<_, DeviceError>((uio, ring))
        })();
        if recover && let Err(e) = dir.block(false) {
            error!(device = %id, "unblocking after ring recovery: {e}");
        }
        let (uio, ring) = opened?;
        let flags = ring.mapping().flags();
        if !flags.oooc() {
            warn!(device = %id, "kernel ring lacks out-of-order completion; completions will be slower");
        }
        info!(device = %id, uio = dev.minor, map_size = size, recovered = recover, cfg = %id.cfgstring, "opened");
        let core = Arc::new(Core::new(id.to_string(), uio, view.clone(), ring));
        Ok(Device {
            id,
            minor: dev.minor,
            core,
            view,
            cfg,
            thread: None,
        })
    }

    /// Starts the ring thread: it serves entries already waiting (an
    /// adopted ring), then every wake-up, until [`Device::stop`].
    pub fn start(
        &mut self,
        pool: Arc<Pool>,
        stopping: Arc<AtomicBool>,
        notice: Notice,
    ) -> std::io::Result<()> {
        self.core.lock().removal_notice = Some(notice);
        let name = format!("tcmu-prd-uio{}", self.minor);
        self.thread = Some(RingThread::spawn(&self.core, name, pool, stopping)?);
        Ok(())
    }

    /// Stops the ring thread (see [`RingThread::stop`]).
    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop(&self.core);
        }
    }

    pub fn id(&self) -> &TcmuName {
        &self.id
    }

    pub fn minor(&self) -> u32 {
        self.minor
    }

    pub fn in_flight(&self) -> usize {
        self.core.lock().ring.in_flight()
    }

    /// For `tcmu-prd status` (cheap: a name, counters and an `Arc`).
    pub fn snapshot(&self) -> super::control::DeviceSnap {
        super::control::DeviceSnap {
            name: self.id.to_string(),
            minor: self.minor,
            in_flight: self.in_flight(),
            view: self.view.clone(),
        }
    }

    /// The kernel wants the device gone. Returns the DEVICE_ID to answer now,
    /// or None if commands are still in flight (answered by `removal_ready`).
    pub fn begin_removal(&mut self, device_id: u32) -> Option<u32> {
        self.core.lock().removal = Some(device_id);
        self.removal_ready()
    }

    pub fn removal_ready(&mut self) -> Option<u32> {
        let mut st = self.core.lock();
        if st.ring.in_flight() == 0 {
            st.removal.take()
        } else {
            None
        }
    }

    /// Applies a RECONFIG_DEVICE.
    pub fn reconfigure(&mut self, rc: &Reconfig) -> Result<(), DeviceError> {
        if let Some(cfg) = &rc.dev_cfg {
            let parsed = DeviceConfig::parse_dev_config(cfg)
                .map_err(|e| DeviceError::Config(e.to_string()))?;
            if parsed != self.cfg {
                return Err(DeviceError::Unsupported(format!(
                    "changing the config string of an enabled device ({:?} -> {cfg:?}) is not supported: disable and re-create the backstore",
                    self.id.cfgstring
                )));
            }
        }
        if let Some(size) = rc.dev_size {
            self.view.lu().resize(size, self.cfg.grow).map_err(|e| {
                DeviceError::Backing(
                    format!("resizing {} to {size} bytes: {e}", self.cfg.image.display()),
                    libc::EINVAL,
                )
            })?;
            info!(device = %self.id, dev_size = size, "capacity changed");
        }
        if let Some(wc) = rc.write_cache {
            self.view.lu().scsi().set_write_cache(wc);
            info!(device = %self.id, write_cache = wc, "write cache setting changed");
        }
        debug!(device = %self.id, "reconfigured");
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RingThread {
    /// Starts a thread serving `core`'s ring: once at start (entries may be
    /// waiting), then on every wake-up.
    fn spawn(
        core: &Arc<Core>,
        name: String,
        pool: Arc<Pool>,
        stopping: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let fd = core.wakeups.as_fd().as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), RING_FD, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), RING_WAKE)?);
        let (tx, done) = crossbeam_channel::unbounded();
        let back = Arc::new(Returns {
            tx,
            waker: waker.clone(),
            name: core.name.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (core.clone(), stop.clone());
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let ends = RingEnds {
                pool: &pool,
                back: &back,
                done: &done,
                stop: &st,
                stopping: &stopping,
            };
            ring_thread(&c, poll, &ends);
        })?;
        Ok(RingThread {
            stop,
            waker,
            handle,
        })
    }

    /// Stops the thread. Waits for it unless a command is still in flight
    /// (it may be stuck in the backing file: then it is left to exit on its
    /// own once that returns).
    fn stop(self, core: &Core) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            error!(device = %core.name, "waking the ring thread to stop: {e}");
            return;
        }
        let in_flight = core.lock().ring.in_flight();
        if in_flight == 0 {
            if self.handle.join().is_err() {
                error!(device = %core.name, "the ring thread panicked");
            }
        } else {
            warn!(device = %core.name, in_flight, "not waiting for the ring thread: commands still in flight");
        }
    }
}

impl Core {
    fn new(name: String, wakeups: Arc<dyn Wakeups>, view: Arc<View>, ring: Ring) -> Self {
        Core {
            name,
            wakeups,
            view,
            state: Mutex::new(RingState {
                ring,
                removal: None,
                removal_notice: None,
            }),
        }
    }

    /// The ring state (a panic elsewhere does not stop the device: the ring
    /// indices are only ever updated whole, under this lock).
    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Consumes the uio wake-up count (exactly 4 bytes), if any is pending.
    fn ack_wakeup(&self) {
        match self.wakeups.ack() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => warn!(device = %self.name, "reading the uio event count: {e}"),
        }
    }

    /// Reads every new ring entry; runs a lone READ/WRITE here, hands the
    /// rest to the pool, whose workers send the results back through `back`.
    fn serve(self: &Arc<Self>, pool: &Pool, back: &Arc<Returns>, batch: &mut Vec<InFlightCmd>) {
        self.ack_wakeup();
        let alone = {
            let mut st = self.lock();
            let mut n = 0usize;
            while let Some(ev) = st.ring.poll() {
                n += 1;
                match ev {
                    Ok(RingEvent::Command(cmd)) => batch.push(cmd),
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
            batch.len() == 1 && st.ring.in_flight() == 1 && runs_inline(batch[0].cdb())
        };
        if alone && let Some(mut cmd) = batch.pop() {
            let rsp = execute(&self.view, &mut cmd);
            self.complete([(cmd, rsp)].into_iter());
            return;
        }
        for cmd in batch.drain(..) {
            let (view, back) = (self.view.clone(), back.clone());
            let job: Job = Box::new(move || {
                let mut cmd = cmd;
                let rsp = execute(&view, &mut cmd);
                back.send(cmd, rsp);
            });
            if pool.submit(job).is_err() {
                error!(device = %self.name, "worker pool is gone; command left unanswered");
            }
        }
    }

    /// Completes finished commands and wakes the kernel once for all of them.
    /// Returns how many commands are still in flight.
    fn complete(&self, done: impl Iterator<Item = (InFlightCmd, Response)>) -> usize {
        let mut st = self.lock();
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
        let in_flight = st.ring.in_flight();
        if n > 0
            && in_flight == 0
            && st.removal.is_some()
            && let Some(notice) = &st.removal_notice
        {
            notice.send();
        }
        in_flight
    }

    /// Handles a TMR notification. A reset releases the SPC-2 reservation
    /// (SPC-4 5.13.1; PR survives): that is a durable state update, which in
    /// cluster mode waits for EX, so it is returned as a job for the worker
    /// pool rather than run on the ring thread.
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

/// What a ring thread works with besides its device.
struct RingEnds<'a> {
    pool: &'a Pool,
    back: &'a Arc<Returns>,
    done: &'a Receiver<(InFlightCmd, Response)>,
    /// Set by [`RingThread::stop`].
    stop: &'a AtomicBool,
    /// Set while the daemon drains before exiting.
    stopping: &'a AtomicBool,
}

/// The ring thread: serves the ring at start (entries may be waiting) and
/// after every uio wake-up, and completes what the workers send back. While
/// the daemon is stopping, new entries stay in the ring (the next start
/// resets it: BUSY, retried). Told to stop, it still completes the commands
/// in flight before it exits.
fn ring_thread(core: &Arc<Core>, mut poll: Poll, ends: &RingEnds<'_>) {
    let mut events = Events::with_capacity(4);
    let mut batch = Vec::with_capacity(64);
    let mut first = true;
    loop {
        let stop = ends.stop.load(Ordering::Acquire);
        // New commands first: dispatching them keeps the workers busy while
        // the uio write below (which, for reads, has the kernel copy the data
        // out) runs.
        if !stop
            && !ends.stopping.load(Ordering::Acquire)
            && (first || events.iter().any(|e| e.token() == RING_FD))
        {
            core.serve(ends.pool, ends.back, &mut batch);
        }
        let in_flight = core.complete(ends.done.try_iter());
        if stop && in_flight == 0 {
            return;
        }
        first = false;
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                events.clear();
                continue;
            }
            error!(device = %core.name, "ring thread cannot wait on its uio fd, no longer serving it: {e}");
            return;
        }
    }
}

/// Whether a command may run on the ring thread: the data path only. The
/// rest (PR OUT, COMPARE AND WRITE, copies, ...) may wait on the cluster or
/// take long, and must not hold up the ring (TMRs, other initiators).
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
    let rsp = match r.sense {
        Some(sense) => Response::check_condition(sense.as_bytes()),
        None => Response::with_status(r.status),
    };
    if dir == Direction::FromDevice {
        rsp.read_len(r.data_in_len)
    } else {
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lu::state::{Identity, LuState};
    use crate::ring::sim::{Completion, Dir, SimKernel};
    use crate::scsi::{self, LuConfig, LuIdentity, NaaId};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

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

    struct Rig {
        sim: SimKernel,
        core: Arc<Core>,
        irq: UnixStream,
        done: Vec<Completion>,
        _dir: tempfile::TempDir,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let id = Identity::from_random(&[7; 13]);
            let identity = LuIdentity {
                naa: NaaId::new(&id.naa).unwrap(),
                serial: id.serial.clone(),
                vendor: "LIO-ORG".into(),
                product: "tcmu-prd".into(),
                revision: "0001".into(),
            };
            let backing = Arc::new(crate::backing::MemBacking::new(1 << 20, 4096));
            let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).unwrap();
            let lu =
                Arc::new(Lu::for_tests(scsi, LuState::new(id), &dir.path().join("s")).unwrap());
            let view = Arc::new(View::new(
                lu,
                "user_1/t".into(),
                PathBuf::new(),
                PathBuf::new(),
            ));
            let sim = SimKernel::new(64 * 1024, 64, 4096);
            let (ours, irq) = UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            let core = Arc::new(Core::new(
                "user_1/t".into(),
                Arc::new(Sock(ours)),
                view,
                sim.ring(),
            ));
            Rig {
                sim,
                core,
                irq,
                done: Vec::new(),
                _dir: dir,
            }
        }

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

    fn write10(lba: u8, blocks: u8) -> [u8; 10] {
        [0x2a, 0, 0, 0, 0, lba, 0, 0, blocks, 0]
    }

    fn read10(lba: u8, blocks: u8) -> [u8; 10] {
        [0x28, 0, 0, 0, 0, lba, 0, 0, blocks, 0]
    }

    /// A pool whose only worker is held until the returned sender is used.
    fn held_pool() -> (Arc<Pool>, mpsc::Sender<()>) {
        let pool = Arc::new(Pool::new(1, "t-held").unwrap());
        let (tx, rx) = mpsc::channel::<()>();
        pool.submit(Box::new(move || {
            let _ = rx.recv();
        }))
        .unwrap_or_else(|_| panic!("submit refused"));
        (pool, tx)
    }

    #[test]
    fn lone_reads_and_writes_run_on_the_ring_thread_the_rest_on_the_pool() {
        let mut rig = Rig::new();
        let (pool, release) = held_pool();
        let stopping = Arc::new(AtomicBool::new(false));
        let t = RingThread::spawn(&rig.core, "t-ring".into(), pool.clone(), stopping).unwrap();

        // The pool's only worker is busy: these complete only because the
        // ring thread runs them itself.
        let w = rig.submit(&write10(3, 1), Dir::ToDevice(vec![0xab; 512]));
        assert_eq!(rig.wait_for(&[w])[0].status, 0);
        let r = rig.submit(&read10(3, 1), Dir::FromDevice(512));
        let c = &rig.wait_for(&[r])[0];
        assert_eq!((c.status, &c.data_in[..]), (0, &[0xab; 512][..]));

        // PERSISTENT RESERVE IN may wait on the cluster: never inline.
        let pr = rig.submit(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], Dir::FromDevice(8));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !rig.completed().contains(&pr),
            "PR IN ran on the ring thread"
        );
        // And with a command in flight, a READ is not run inline either: it
        // queues behind the held worker.
        let r2 = rig.submit(&read10(3, 1), Dir::FromDevice(512));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !rig.completed().contains(&r2),
            "a second command ran inline"
        );
        release.send(()).unwrap();
        let got = rig.wait_for(&[pr, r2]);
        // (PR IN itself answers BUSY here: the view's nexus is unresolved.)
        let c2 = got.iter().find(|c| c.cmd_id == r2).unwrap();
        assert_eq!((c2.status, c2.data_in[0]), (0, 0xab));
        assert_eq!(rig.core.lock().ring.in_flight(), 0);
        t.stop(&rig.core);
        assert!(rig.sim.broken().is_none(), "{:?}", rig.sim.broken());
    }

    #[test]
    fn a_batch_goes_to_the_pool_and_every_command_completes_with_its_data() {
        let mut rig = Rig::new();
        let pool = Arc::new(Pool::new(3, "t-pool").unwrap());
        // Queue a batch before the thread starts: it serves waiting entries
        // at once (an adopted ring).
        let mut ids = Vec::new();
        for i in 0..8u8 {
            ids.push(
                rig.sim
                    .submit(&write10(i, 1), Dir::ToDevice(vec![i; 512]))
                    .unwrap(),
            );
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let t = RingThread::spawn(&rig.core, "t-ring".into(), pool, stopping).unwrap();
        assert!(rig.wait_for(&ids).iter().all(|c| c.status == 0));
        let reads: Vec<u16> = (0..8u8)
            .map(|i| rig.sim.submit(&read10(i, 1), Dir::FromDevice(512)).unwrap())
            .collect();
        rig.irq.write_all(&[0; 4]).unwrap();
        let got = rig.wait_for(&reads);
        for (i, id) in (0..8u8).zip(&reads) {
            let c = got.iter().find(|c| c.cmd_id == *id).unwrap();
            assert_eq!((c.status, c.data_in[0], c.data_in.len()), (0, i, 512));
        }
        t.stop(&rig.core);
        assert!(rig.sim.broken().is_none(), "{:?}", rig.sim.broken());
    }

    #[test]
    fn removal_is_announced_when_the_last_command_completes() {
        let mut rig = Rig::new();
        let (pool, release) = held_pool();
        let waker_poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(waker_poll.registry(), Token(9)).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        rig.core.lock().removal_notice = Some(Notice {
            token: Token(42),
            tx,
            waker,
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let t = RingThread::spawn(&rig.core, "t-ring".into(), pool, stopping).unwrap();
        let pr = rig.submit(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], Dir::FromDevice(8));
        std::thread::sleep(Duration::from_millis(20));
        rig.core.lock().removal = Some(5);
        assert!(rx.try_recv().is_err(), "announced with a command in flight");
        release.send(()).unwrap();
        rig.wait_for(&[pr]);
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Token(42));
        t.stop(&rig.core);
    }

    #[test]
    fn a_stopped_ring_thread_still_completes_what_is_in_flight() {
        let mut rig = Rig::new();
        let (pool, release) = held_pool();
        let stopping = Arc::new(AtomicBool::new(false));
        let t = RingThread::spawn(&rig.core, "t-ring".into(), pool, stopping).unwrap();
        let pr = rig.submit(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], Dir::FromDevice(8));
        let deadline = Instant::now() + Duration::from_secs(20);
        while rig.core.lock().ring.in_flight() == 0 {
            assert!(Instant::now() < deadline, "never read");
            std::thread::sleep(Duration::from_millis(1));
        }
        t.stop(&rig.core); // not joined: a command is in flight
        release.send(()).unwrap();
        rig.wait_for(&[pr]);
        assert_eq!(rig.core.lock().ring.in_flight(), 0);
    }

    #[test]
    fn while_the_daemon_stops_new_entries_stay_in_the_ring() {
        let mut rig = Rig::new();
        let pool = Arc::new(Pool::new(1, "t-pool").unwrap());
        let stopping = Arc::new(AtomicBool::new(true));
        let t = RingThread::spawn(&rig.core, "t-ring".into(), pool, stopping).unwrap();
        let r = rig.submit(&read10(0, 1), Dir::FromDevice(512));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!rig.completed().contains(&r));
        assert_eq!(rig.sim.in_flight(), 1);
        assert_eq!(rig.core.lock().ring.in_flight(), 0, "the entry was read");
        t.stop(&rig.core);
    }
}
