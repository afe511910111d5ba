//! One served TCMU device: its uio fd, ring, logical unit and lifecycle.

use std::path::Path;
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use super::lu_thread::Core;
use super::serve::uio_dev_path;
use crate::config::{Config, DeviceConfig};
use crate::configfs::{DeviceDir, ResetRing};
use crate::lu::{Lu, Lus, Resolver, Sharing, View};
use crate::netlink::Reconfig;
use crate::ring::{Ring, UioFd};
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

/// A device we serve.
#[derive(Debug)]
pub struct Device {
    id: TcmuName,
    minor: u32,
    core: Arc<Core>,
    view: Arc<View>,
    cfg: DeviceConfig,
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
        })
    }

    pub fn id(&self) -> &TcmuName {
        &self.id
    }

    pub fn minor(&self) -> u32 {
        self.minor
    }

    /// The ring, as its LU's ring thread serves it.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Which LU it is a view of: devices with the same key share one ring
    /// thread (see `lu_thread.rs`).
    pub fn lu_key(&self) -> usize {
        Arc::as_ptr(self.view.lu()) as usize
    }

    /// The LU's name, for logs: its image.
    pub fn lu_name(&self) -> String {
        self.view.lu().image().display().to_string()
    }

    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// For `tcmu-prd status` (cheap: a name, counters and an `Arc`).
    pub fn snapshot(&self) -> super::control::DeviceSnap {
        super::control::DeviceSnap {
            name: self.id.to_string(),
            minor: self.minor,
            in_flight: self.in_flight(),
            uring_commands: self.core.uring_commands(),
            polled: self.core.polled(),
            view: self.view.clone(),
        }
    }

    /// The kernel wants the device gone. Returns the DEVICE_ID to answer now,
    /// or None if commands are still in flight (answered by `removal_ready`).
    pub fn begin_removal(&mut self, device_id: u32) -> Option<u32> {
        self.core.begin_removal(device_id)
    }

    pub fn removal_ready(&mut self) -> Option<u32> {
        self.core.removal_ready()
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
