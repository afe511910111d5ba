//! `tcmu-prd run`: the event loop.
//!
//! One thread owns the netlink socket, every ring and the signal pipe, and
//! waits on them with mio. Commands go to the worker pool; workers send the
//! finished command back through a channel and wake the loop, which writes
//! the completions into the ring and publishes each ring's batch with one
//! tail update and one uio write.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};

use super::control;
use super::device::Device;
use super::notify;
use super::pool::Pool;
use crate::config::{ClusterMode, Config};
use crate::configfs::ModuleParams;
use crate::lu::{Lus, Resolver, Sharing};
use crate::netlink::{EventKind, Received, TcmuNetlink};
use crate::ring::{Event as RingEvent, InFlightCmd, Response};
use crate::uio::{self, TcmuName};

const NETLINK: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_DEVICE: usize = 16;

/// Our handler subtype: what `dev_config=<subtype>/...` names.
pub const SUBTYPE: &str = "dlmfile";

/// A command finished by a worker.
pub(super) struct Done {
    pub token: Token,
    pub cmd: InFlightCmd,
    pub rsp: Response,
}

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
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    netlink: TcmuNetlink,
    signals: Signals,
    pool: Pool,
    devices: HashMap<Token, Device>,
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
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
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
        let pool = Pool::new(workers, "tcmu-prd-io").map_err(io_err("starting worker threads"))?;
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
            done_tx,
            done_rx,
            netlink,
            signals,
            pool,
            devices: HashMap::new(),
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
                Ok(device) => self.insert(device),
                Err(e) => error!(device = %dev.id, "cannot serve: {e}"),
            }
        }
    }

    fn insert(&mut self, device: Device) {
        let token = Token(self.next_token);
        self.next_token += 1;
        let fd = device.uio_fd();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            error!(device = %device.id(), "cannot watch its uio fd: {e}");
            return;
        }
        info!(device = %device.id(), uio = device.minor(), "serving");
        self.by_minor.insert(device.minor(), token);
        // Entries may already be waiting (adopted ring).
        self.devices.insert(token, device);
        self.drain_ring(token);
        if let Some(d) = self.devices.get_mut(&token) {
            d.flush();
        }
    }

    fn remove(&mut self, token: Token) -> Option<Device> {
        let device = self.devices.remove(&token)?;
        self.by_minor.remove(&device.minor());
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&device.uio_fd()));
        Some(device)
    }

    /// Reads every new ring entry of one device and dispatches it.
    fn drain_ring(&mut self, token: Token) {
        if self.stopping.is_some() {
            return; // left in the ring: the next start resets it (BUSY, retried)
        }
        let Some(dev) = self.devices.get_mut(&token) else {
            return;
        };
        dev.ack_wakeup();
        let mut n = 0usize;
        while let Some(ev) = dev.ring_mut().poll() {
            n += 1;
            match ev {
                Ok(RingEvent::Command(cmd)) => {
                    let job = dev.job(cmd, token, self.done_tx.clone(), self.waker.clone());
                    if self.pool.submit(job).is_err() {
                        error!(device = %dev.id(), "worker pool is gone; command left unanswered");
                    }
                }
                Ok(RingEvent::Tmr(tmr)) => {
                    if let Some(job) = dev.on_tmr(&tmr)
                        && self.pool.submit(job).is_err()
                    {
                        error!(device = %dev.id(), "worker pool is gone; reset not applied");
                    }
                }
                Err(e) => error!(device = %dev.id(), "bad ring entry: {e}"),
            }
        }
        tracing::trace!(device = %dev.id(), entries = n, "ring drained");
        if let Some(broken) = dev.ring_mut().broken().map(ToString::to_string) {
            error!(device = %dev.id(), "ring is broken, no longer reading it: {broken}");
        }
    }

    fn complete_done(&mut self) {
        let mut touched = Vec::new();
        while let Ok(done) = self.done_rx.try_recv() {
            let Some(dev) = self.devices.get_mut(&done.token) else {
                warn!("completion for a device that is gone");
                continue;
            };
            tracing::trace!(device = %dev.id(), cmd_id = done.cmd.cmd_id(), "completing");
            dev.complete(done.cmd, &done.rsp);
            touched.push(done.token);
        }
        touched.sort_unstable();
        touched.dedup();
        for t in touched {
            if let Some(dev) = self.devices.get_mut(&t) {
                dev.flush();
                if let Some(reply) = dev.removal_ready() {
                    self.finish_removal(t, reply);
                }
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
                        self.insert(device);
                        self.reply(EventKind::Added, ev.device_id, 0, Some(&name));
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
                    WAKER => {}
                    t => self.drain_ring(t),
                }
            }
            self.complete_done();
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
