//! One served TCMU device: its uio fd, ring, logical unit and lifecycle.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mio::Waker;
use tracing::{debug, error, info, warn};

use super::pool::Job;
use super::serve::uio_dev_path;
use crate::config::{Config, DeviceConfig};
use crate::configfs::{DeviceDir, ResetRing};
use crate::lu::{Lu, Lus, Resolver, Sharing, View};
use crate::netlink::Reconfig;
use crate::ring::{InFlightCmd, Response, Ring, TmrEvent, TmrType, UioFd};
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

/// The part of a device that worker threads use to complete commands.
///
/// Workers write their own completions into the ring and publish them: a
/// command costs one hand-off (event loop -> worker), not two. Completions
/// that finish together are combined: a worker publishes the tail (one
/// doorbell write for every completion so far) unless another worker is
/// completing at the same moment, which then publishes for both. A finished
/// command never waits for one that is still queued or running: that one
/// may take seconds (a PR OUT waiting for the cluster lock).
#[derive(Debug)]
struct Completer {
    id: String,
    ring: Mutex<Ring>,
    /// Workers between "about to complete" and "completed".
    completing: AtomicUsize,
    /// The event loop waits for this device to go idle (removal, shutdown):
    /// workers wake it after each completion.
    wake_when_idle: AtomicBool,
    waker: Arc<Waker>,
}

impl Completer {
    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave the ring half-updated
        // in a way a later user could make worse: keep serving.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes one command and, unless another worker is about to complete
    /// one too (and will publish both), publishes the tail.
    fn complete(&self, cmd: InFlightCmd, rsp: &Response) {
        self.completing.fetch_add(1, Ordering::SeqCst);
        let mut ring = self.ring();
        if let Err(e) = ring.complete(cmd, rsp) {
            error!(device = %self.id, "completing a command: {e}");
        }
        // Under the lock: the worker whose decrement reaches zero completed
        // last, after everyone counted before it (whoever counted itself
        // later completes, and decides, after us). So the last completion
        // always publishes, and none is left unpublished.
        let last = self.completing.fetch_sub(1, Ordering::SeqCst) == 1;
        if last && let Err(e) = ring.flush() {
            error!(device = %self.id, "waking the kernel for completions: {e}");
        }
        drop(ring);
        if self.wake_when_idle.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// A device we serve.
#[derive(Debug)]
pub struct Device {
    id: TcmuName,
    minor: u32,
    uio: Arc<UioFd>,
    completer: Arc<Completer>,
    view: Arc<View>,
    cfg: DeviceConfig,
    /// Set when the kernel asked to remove the device: the DEVICE_ID to answer
    /// once in-flight commands are done.
    removal: Option<u32>,
}

impl Device {
    /// Serves a device the kernel announced just now (ADDED_DEVICE): its ring is fresh.
    pub fn open_new(
        dev: &UioDevice,
        config: &Config,
        lus: &Lus,
        resolver: &Resolver,
        sharing: &Sharing,
        waker: Arc<Waker>,
    ) -> Result<Self, DeviceError> {
        Self::open(dev, config, lus, resolver, sharing, waker, false)
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
        waker: Arc<Waker>,
    ) -> Result<Self, DeviceError> {
        Self::open(dev, config, lus, resolver, sharing, waker, true)
    }

    fn open(
        dev: &UioDevice,
        config: &Config,
        lus: &Lus,
        resolver: &Resolver,
        sharing: &Sharing,
        waker: Arc<Waker>,
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
        Ok(Device {
            completer: Arc::new(Completer {
                id: id.to_string(),
                ring: Mutex::new(ring),
                completing: AtomicUsize::new(0),
                wake_when_idle: AtomicBool::new(false),
                waker,
            }),
            id,
            minor: dev.minor,
            uio,
            view,
            cfg,
            removal: None,
        })
    }

    pub fn id(&self) -> &TcmuName {
        &self.id
    }

    pub fn minor(&self) -> u32 {
        self.minor
    }

    pub fn uio_fd(&self) -> RawFd {
        self.uio.as_fd().as_raw_fd()
    }

    /// The ring, locked against completing workers (briefly: they only
    /// write a response and maybe the tail).
    pub fn ring(&self) -> MutexGuard<'_, Ring> {
        self.completer.ring()
    }

    pub fn in_flight(&self) -> usize {
        self.ring().in_flight()
    }

    /// From now on every completion wakes the event loop, which waits for
    /// this device to go idle (removal, shutdown).
    pub fn wake_when_idle(&self) {
        self.completer.wake_when_idle.store(true, Ordering::SeqCst);
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

    /// Consumes the uio wake-up count (exactly 4 bytes), if any is pending.
    pub fn ack_wakeup(&self) {
        match self.uio.wait() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => warn!(device = %self.id, "reading the uio event count: {e}"),
        }
    }

    /// The worker job for one command: execute, complete, publish.
    pub fn job(&self, cmd: InFlightCmd) -> Job {
        let view = self.view.clone();
        let completer = self.completer.clone();
        Box::new(move || {
            let mut cmd = cmd;
            let rsp = execute(&view, &mut cmd);
            tracing::trace!(device = %completer.id, cmd_id = cmd.cmd_id(), "completing");
            completer.complete(cmd, &rsp);
        })
    }

    /// Handles a TMR notification. A reset releases the SPC-2 reservation
    /// (SPC-4 5.13.1; PR survives): that is a durable state update, which in
    /// cluster mode waits for EX, so it is returned as a job for the worker
    /// pool rather than run on the event loop.
    pub fn on_tmr(&mut self, tmr: &TmrEvent) -> Option<Job> {
        info!(device = %self.id, tmr = ?tmr.tmr_type, aborted = tmr.cmd_ids.len(), "task management");
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

    /// Publishes completions the event loop itself made (malformed entries
    /// answered while reading the ring), if any: one tail update, one wake-up.
    pub fn flush(&self) {
        if let Err(e) = self.ring().flush() {
            error!(device = %self.id, "waking the kernel for completions: {e}");
        }
    }

    /// The kernel wants the device gone. Returns the DEVICE_ID to answer now,
    /// or None if commands are still in flight (answered by `removal_ready`).
    pub fn begin_removal(&mut self, device_id: u32) -> Option<u32> {
        self.removal = Some(device_id);
        // Before looking at the count: a completion after the look wakes us.
        self.wake_when_idle();
        self.removal_ready()
    }

    pub fn removal_ready(&mut self) -> Option<u32> {
        if self.removal.is_some() && self.in_flight() == 0 {
            self.removal.take()
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
    use crate::ring::sim::{Dir, SimKernel};
    use crate::ring::{Event, Response};
    use mio::{Poll, Token};

    /// Workers completing at the same moment: every completion reaches the
    /// kernel (nothing is left unpublished), each exactly once, and bursts
    /// share doorbell writes.
    #[test]
    fn concurrent_completions_are_all_published() {
        for round in 0..40 {
            let mut sim = SimKernel::new(16384, 128, 512);
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
            let completer = Arc::new(Completer {
                id: "user_1/test".into(),
                ring: Mutex::new(sim.ring()),
                completing: AtomicUsize::new(0),
                wake_when_idle: AtomicBool::new(round % 2 == 0),
                waker,
            });
            let n = 96;
            for _ in 0..n {
                sim.submit(&[0x00, 0, 0, 0, 0, 0], Dir::None).unwrap();
            }
            let mut cmds = Vec::new();
            while let Some(ev) = completer.ring().poll() {
                match ev {
                    Ok(Event::Command(c)) => cmds.push(c),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(cmds.len(), n);
            // Dealt out round-robin to six worker threads.
            let mut workers: Vec<Vec<InFlightCmd>> = (0..6).map(|_| Vec::new()).collect();
            for (i, c) in cmds.into_iter().enumerate() {
                workers[i % 6].push(c);
            }
            let handles: Vec<_> = workers
                .into_iter()
                .map(|mine| {
                    let completer = completer.clone();
                    std::thread::spawn(move || {
                        for c in mine {
                            completer.complete(c, &Response::with_status(0));
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(completer.completing.load(Ordering::SeqCst), 0);
            let mut ring = completer.ring();
            assert_eq!(ring.in_flight(), 0);
            // Nothing left to publish: the last completer flushed.
            assert!(
                !ring.flush().unwrap(),
                "round {round}: completions left unpublished"
            );
            drop(ring);
            assert_eq!(sim.handle_completions(), n, "round {round}");
            assert!(sim.broken().is_none(), "{:?}", sim.broken());
            let kicks = sim.kicks();
            assert!(
                (1..=n).contains(&kicks),
                "round {round}: {kicks} doorbell writes"
            );
        }
    }
}
