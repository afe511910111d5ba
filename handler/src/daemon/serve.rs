//! `tcmu-prd run`: the event loop.
//!
//! One thread owns the netlink socket, the signal pipe and the control
//! queries, and waits on them with mio. The rings of each logical unit's
//! views are served by that LU's ring thread (`lu_thread.rs`), which runs
//! lone READ/WRITEs itself and hands the rest to the shared worker pool,
//! whose workers send results back to it for completion. The loop hears
//! from them only when a removal it waits for can be answered.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};

use super::control;
use super::device::Device;
use super::lu_thread::{LuThread, Notice, ThreadOpts};
use super::notify;
use super::pool::Pool;
use crate::config::{ClusterMode, Config};
use crate::configfs::ModuleParams;
use crate::lu::{Lus, Resolver, Sharing};
use crate::netlink::{EventKind, Received, TcmuNetlink};
use crate::uio::{self, TcmuName};

const NETLINK: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_DEVICE: usize = 16;

/// Our handler subtype: what `dev_config=<subtype>/...` names.
pub const SUBTYPE: &str = "dlmfile";

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// An OS call of the event loop failed.
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The TCM-USER netlink family is unusable.
    #[error("netlink: {0}")]
    Netlink(#[from] crate::netlink::NetlinkError),
    /// The configuration could not be loaded.
    #[error("{0}")]
    Config(String),
    /// The D-Bus service is required or its name is taken (tcmu-runner).
    #[error(transparent)]
    Dbus(#[from] crate::dbus::DbusError),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Io { op, source }
}

/// What `tcmu-prd run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The daemon config file, if any (reloaded on SIGHUP).
    pub config_path: Option<PathBuf>,
    /// The config as loaded at start.
    pub config: Config,
}

pub(super) struct Daemon {
    opts: RunOptions,
    poll: Poll,
    waker: Arc<Waker>,
    /// LU threads say here that a device may be removable.
    removable_tx: Sender<Token>,
    removable_rx: Receiver<Token>,
    netlink: TcmuNetlink,
    signals: Signals,
    pool: Arc<Pool>,
    /// Set once SIGTERM/SIGINT began the drain: ring threads stop reading.
    stop_reading: Arc<AtomicBool>,
    devices: HashMap<Token, Device>,
    /// The ring thread of each LU with a view served, by `Device::lu_key`.
    lu_threads: HashMap<usize, LuThread>,
    /// Numbers the LU threads' names.
    next_lu_thread: usize,
    lus: Lus,
    resolver: Resolver,
    /// Local state, or the cluster thread every LU's state goes through.
    sharing: Sharing,
    by_minor: HashMap<u32, Token>,
    next_token: usize,
    stopping: Option<Instant>,
    /// Held for its lifetime: dropping it releases the bus name.
    _dbus: Option<crate::dbus::Service>,
    /// `tcmu-prd status` asks for the device list here.
    control_rx: Receiver<control::Query>,
    /// Dropping it removes the control socket.
    _control: Option<control::Server>,
}

impl Daemon {
    fn serves(&self, id: &TcmuName) -> bool {
        id.subtype == SUBTYPE && self.opts.config.devices.matches(id)
    }

    fn start(opts: RunOptions) -> Result<Self, DaemonError> {
        // First: owning the bus name is how we learn that tcmu-runner runs,
        // and then we must not touch netlink (recovery would fail its
        // pending requests, and both would answer every event).
        let dbus = crate::dbus::start(crate::dbus::Mode::from_config(opts.config.daemon.dbus))?;
        let poll = Poll::new().map_err(io_err("creating the event loop"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("creating the waker"))?);
        let (removable_tx, removable_rx) = crossbeam_channel::unbounded();
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(io_err("installing signal handlers"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(io_err("registering signals"))?;

        let roots = opts.config.paths.roots();
        // Fail any netlink request a previous daemon left unanswered, so the
        // kernel (which waits without timeout) gets going again.
        match ModuleParams::new(&roots).recover_netlink() {
            Ok(true) => info!("netlink recovery done (block_netlink, reset_netlink)"),
            Ok(false) => debug!("netlink recovery not available on this kernel"),
            Err(e) => warn!("netlink recovery (block_netlink/reset_netlink) not done: {e}"),
        }
        let netlink = TcmuNetlink::open()?;
        poll.registry()
            .register(
                &mut SourceFd(&netlink.as_raw_fd()),
                NETLINK,
                Interest::READABLE,
            )
            .map_err(io_err("registering netlink"))?;

        let workers = opts.config.daemon.worker_threads.get();
        let pool =
            Arc::new(Pool::new(workers, "tcmu-prd-io").map_err(io_err("starting worker threads"))?);
        let cl = &opts.config.cluster;
        let sharing = match cl.mode {
            ClusterMode::Local => Sharing::Local,
            ClusterMode::Dlm => {
                let timeout = Duration::from_millis(cl.update_timeout_ms.get());
                info!(lockspace = %cl.lockspace.0, ?timeout, "PR state shared through the DLM");
                Sharing::dlm(&cl.lockspace.0, timeout, &opts.config.paths.sysfs)
                    .map_err(io_err("starting the cluster thread"))?
            }
        };
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let control = control::Server::start_logged(control::ctx(
            &opts.config,
            opts.config_path.clone(),
            control_tx,
            waker.clone(),
            sharing.clone(),
        ));
        let mut d = Daemon {
            opts,
            poll,
            waker,
            removable_tx,
            removable_rx,
            netlink,
            signals,
            pool,
            stop_reading: Arc::new(AtomicBool::new(false)),
            devices: HashMap::new(),
            lu_threads: HashMap::new(),
            next_lu_thread: 0,
            lus: Lus::default(),
            resolver: Resolver::spawn().map_err(io_err("starting the nexus resolver"))?,
            sharing,
            by_minor: HashMap::new(),
            next_token: FIRST_DEVICE,
            stopping: None,
            _dbus: dbus,
            control_rx,
            _control: control,
        };
        d.adopt_existing();
        Ok(d)
    }

    /// Devices enabled before we started: recover their rings and serve them.
    fn adopt_existing(&mut self) {
        let class = self.opts.config.paths.sysfs.join("class/uio");
        let (found, errors) = uio::discover(&class);
        for e in errors {
            warn!(device = %e.uio, "skipping unreadable uio device: {}", e.what);
        }
        for dev in found {
            if !self.serves(&dev.id) {
                debug!(device = %dev.id, "not ours (subtype or filter)");
                continue;
            }
            match Device::adopt(
                &dev,
                &self.opts.config,
                &self.lus,
                &self.resolver,
                &self.sharing,
            ) {
                Ok(device) => {
                    // A failure is logged; the device stays unserved.
                    let _ = self.insert(device);
                }
                Err(e) => error!(device = %dev.id, "cannot serve: {e}"),
            }
        }
    }

    /// Serves a device on its LU's ring thread. False (logged) if it cannot.
    #[must_use]
    fn insert(&mut self, device: Device) -> bool {
        let token = Token(self.next_token);
        self.next_token += 1;
        device.core().set_removal_notice(Notice {
            token,
            tx: self.removable_tx.clone(),
            waker: self.waker.clone(),
        });
        let key = device.lu_key();
        if !self.lu_threads.contains_key(&key) {
            let name = format!("tcmu-prd-lu{}", self.next_lu_thread);
            self.next_lu_thread += 1;
            match LuThread::spawn(
                device.lu_name(),
                name,
                self.pool.clone(),
                self.stop_reading.clone(),
                ThreadOpts {
                    uring: self.opts.config.daemon.io_uring,
                    poll: self.opts.config.daemon.poll(),
                },
            ) {
                Ok(t) => {
                    self.lu_threads.insert(key, t);
                }
                Err(e) => {
                    error!(device = %device.id(), "cannot start its LU's ring thread: {e}");
                    return false;
                }
            }
        }
        // Entries may already be waiting (adopted ring): the thread serves
        // them first.
        if let Some(t) = self.lu_threads.get(&key)
            && let Err(e) = t.join(token, device.core())
        {
            error!(device = %device.id(), "cannot watch its uio fd: {e}");
            if t.views() == 0 {
                self.lu_threads.remove(&key);
            }
            return false;
        }
        info!(device = %device.id(), uio = device.minor(), "serving");
        self.by_minor.insert(device.minor(), token);
        self.devices.insert(token, device);
        true
    }

    /// Forgets a device; the last view of an LU to go stops its ring thread.
    fn remove(&mut self, token: Token) -> Option<Device> {
        let device = self.devices.remove(&token)?;
        self.by_minor.remove(&device.minor());
        let key = device.lu_key();
        if let Some(t) = self.lu_threads.get(&key) {
            t.leave(token);
            if t.views() == 0 {
                self.lu_threads.remove(&key);
            }
        }
        Some(device)
    }

    /// Answers the removals whose last command has completed.
    fn answer_removals(&mut self) {
        while let Ok(token) = self.removable_rx.try_recv() {
            if let Some(reply) = self.devices.get_mut(&token).and_then(Device::removal_ready) {
                self.finish_removal(token, reply);
            }
        }
    }

    fn finish_removal(&mut self, token: Token, device_id: u32) {
        if let Some(dev) = self.remove(token) {
            info!(device = %dev.id(), "removed");
            drop(dev);
            self.reply(EventKind::Removed, device_id, 0, None);
        }
    }

    fn reply(&mut self, kind: EventKind, device_id: u32, status: i32, device: Option<&str>) {
        if let Err(e) = self.netlink.reply(kind, device_id, status) {
            error!(device = device.unwrap_or("?"), "replying to {kind:?}: {e}");
        }
    }

    fn on_netlink(&mut self) {
        let items = match self.netlink.recv() {
            Ok(items) => items,
            Err(e) => {
                error!("netlink receive: {e}");
                return;
            }
        };
        for item in items {
            match item {
                Received::Event(ev) => self.on_device_event(ev),
                Received::ReplyAck { reply, error } if error != 0 => {
                    warn!(
                        device_id = reply.device_id,
                        "kernel refused our {:?} reply: errno {}", reply.kind, -error
                    );
                }
                Received::ReplyAck { .. } => {}
                Received::Malformed(e) => error!("malformed netlink message: {e}"),
            }
        }
    }

    fn on_device_event(&mut self, ev: crate::netlink::Event) {
        let id = match TcmuName::parse(&ev.device) {
            Ok(id) => id,
            Err(e) => {
                debug!(device = %ev.device, "ignoring netlink event for a device we cannot name: {e}");
                return;
            }
        };
        if !self.serves(&id) {
            // Never answer for devices we do not serve: another daemon may.
            debug!(device = %id, "netlink {:?} for a device we do not serve", ev.kind);
            return;
        }
        let name = id.to_string();
        match ev.kind {
            EventKind::Added => {
                if let Some(t) = self.by_minor.get(&ev.minor).copied() {
                    warn!(device = %name, "ADDED for a device we already serve; replacing it");
                    self.remove(t);
                }
                let dev = uio::UioDevice {
                    uio: format!("uio{}", ev.minor),
                    minor: ev.minor,
                    map_size: 0,
                    id: id.clone(),
                };
                match Device::open_new(
                    &dev,
                    &self.opts.config,
                    &self.lus,
                    &self.resolver,
                    &self.sharing,
                ) {
                    Ok(device) => {
                        // Refused (the kernel fails the enable) if we cannot
                        // serve its ring after all.
                        let status = if self.insert(device) { 0 } else { -libc::EIO };
                        self.reply(EventKind::Added, ev.device_id, status, Some(&name));
                    }
                    Err(e) => {
                        error!(device = %name, "refusing to enable: {e}");
                        self.reply(EventKind::Added, ev.device_id, -e.errno(), Some(&name));
                    }
                }
            }
            EventKind::Removed => match self.by_minor.get(&ev.minor).copied() {
                Some(t) => {
                    let ready = self
                        .devices
                        .get_mut(&t)
                        .and_then(|d| d.begin_removal(ev.device_id));
                    if let Some(device_id) = ready {
                        self.finish_removal(t, device_id);
                    }
                }
                None => self.reply(EventKind::Removed, ev.device_id, 0, Some(&name)),
            },
            EventKind::Reconfig => {
                let status = match self
                    .by_minor
                    .get(&ev.minor)
                    .and_then(|t| self.devices.get_mut(t))
                {
                    Some(dev) => match dev.reconfigure(&ev.reconfig) {
                        Ok(()) => 0,
                        Err(e) => {
                            error!(device = %name, "refusing reconfiguration: {e}");
                            -e.errno()
                        }
                    },
                    None => {
                        error!(device = %name, "RECONFIG for a device we do not have open");
                        -libc::ENODEV
                    }
                };
                self.reply(EventKind::Reconfig, ev.device_id, status, Some(&name));
            }
        }
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGTERM | SIGINT if self.stopping.is_none() => {
                    let inflight: usize = self.devices.values().map(Device::in_flight).sum();
                    info!(inflight, "stopping: draining in-flight commands");
                    let _ = notify::notify("STOPPING=1");
                    self.stopping = Some(Instant::now());
                    self.stop_reading.store(true, Ordering::Release);
                }
                SIGHUP => self.reload(),
                _ => {}
            }
        }
    }

    fn reload(&mut self) {
        let Some(path) = self.opts.config_path.clone() else {
            info!("SIGHUP: no config file to reload");
            return;
        };
        match Config::load(&path) {
            Ok(c) => {
                let old_workers = self.opts.config.daemon.worker_threads;
                if !crate::logging::set_level(&c.daemon.log_level.0) {
                    warn!(config = %path.display(), "SIGHUP: log level {:?} not applied", c.daemon.log_level.0);
                }
                if c.daemon.worker_threads != old_workers {
                    warn!(config = %path.display(), "SIGHUP: worker count changes need a restart");
                }
                self.opts.config = c;
                info!(config = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                error!(config = %path.display(), "SIGHUP: keeping the old configuration: {e}")
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.devices.values().map(Device::in_flight).sum()
    }

    fn run(&mut self) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(256);
        let ready = format!("READY=1\nSTATUS=serving {} device(s)", self.devices.len());
        if let Err(e) = notify::notify(&ready) {
            warn!("sd_notify: {e}");
        }
        info!(
            devices = self.devices.len(),
            workers = self.pool.size(),
            "ready"
        );
        loop {
            if let Some(since) = self.stopping
                && self.in_flight() == 0
            {
                info!(after = ?since.elapsed(), "drained; exiting");
                return Ok(());
            }
            let timeout = self.stopping.map(|_| Duration::from_millis(200));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DaemonError::Io {
                    op: "poll",
                    source: e,
                });
            }
            for ev in &events {
                match ev.token() {
                    NETLINK => self.on_netlink(),
                    SIGNALS => self.on_signals(),
                    _ => {}
                }
            }
            self.answer_removals();
            control::answer(&self.control_rx, || control::LoopSnap {
                devices: self.devices.values().map(Device::snapshot).collect(),
                stopping: self.stopping.is_some(),
            });
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT and a full drain.
pub fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let mut d = Daemon::start(opts)?;
    let r = d.run();
    let devices: Vec<Token> = d.devices.keys().copied().collect();
    for t in devices {
        d.remove(t);
    }
    d.sharing.shutdown();
    r
}

/// Where the uio device node of minor `n` lives.
#[must_use]
pub fn uio_dev_path(dev_root: &Path, minor: u32) -> PathBuf {
    dev_root.join(format!("uio{minor}"))
}
