//! Views and the LUs they share (DESIGN.md §2).
//!
//! An [`Lu`] is one backing store with one identity and one PR state; a
//! [`View`] is one TCMU device of it, serving one I_T nexus. Every command of
//! a view goes: unit attention -> PR command or conflict check -> SCSI
//! emulation. Data commands run under the LU's I/O gate in shared mode; PR
//! OUT and SPC-2 RESERVE/RELEASE take it exclusively, so when a PREEMPT (AND
//! ABORT) completes no command that was checked against the old state is
//! still running, and none that starts later can see the old state.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use tracing::{error, info, warn};

use super::gate::Gate;
use super::state::{LuState, StateError};
use super::sync::{Sharing, Spc2Holder, StateSync, SyncError};
use crate::backing::Backing;
use crate::backing::{FileBacking, FileOptions};
use crate::cluster::store::StoreError;
use crate::config::DeviceConfig;
use crate::nexus::{self, ViewNexus};
use crate::pr::{self, TransportId, UaQueues};
use crate::scsi::{self, LuConfig, SenseCode, SenseInfo};

/// Why an LU or view cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The image could not be opened.
    #[error("image {path}: {source}")]
    Backing {
        path: PathBuf,
        #[source]
        source: crate::backing::OpenError,
        errno: i32,
    },
    /// The state store is unusable (corrupt, newer format, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state in the store does not decode.
    #[error("state store {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: StateError,
    },
    /// O_DIRECT on this image needs a larger alignment than the block size.
    #[error(
        "image {path} needs {align}-byte aligned O_DIRECT I/O but the LU block size is {block_size}: set attrib/hw_block_size={align} before enabling, or direct=0"
    )]
    Misaligned {
        path: PathBuf,
        align: usize,
        block_size: u32,
    },
    /// The LU configuration is invalid.
    #[error("LU configuration: {0}")]
    Config(#[from] scsi::ConfigError),
}

impl OpenError {
    /// The errno for a netlink refusal.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            OpenError::Backing { errno, .. } if *errno != 0 => *errno,
            OpenError::Config(_) | OpenError::Misaligned { .. } => libc::EINVAL,
            _ => libc::EIO,
        }
    }
}

/// A READ/WRITE in flight outside [`View::execute`] (see
/// [`View::start_rw`]): where its bytes go, and the I/O gate and admission
/// it holds until [`View::finish_rw`].
#[derive(Debug)]
pub struct RwIo {
    /// Where the bytes go.
    pub plan: scsi::RwPlan,
    _admitted: super::sync::Admitted,
    _gate: super::gate::OwnedReadGuard,
}

/// One logical unit, shared by its views on this node.
#[derive(Debug)]
pub struct Lu {
    image: PathBuf,
    /// The medium, typed, for live resizing (`None`: an in-memory test LU).
    file: Option<Arc<FileBacking>>,
    scsi: scsi::Lu,
    /// Where the state lives: this node's store, or the cluster protocol.
    sync: StateSync,
    /// Data commands: shared; PR changes: exclusive.
    gate: Arc<Gate>,
    uas: Mutex<UaQueues>,
    /// This node's views of the LU, to find a nexus's session.
    views: Mutex<Vec<Weak<View>>>,
    /// The session of the SPC-2 reservation holder when it reserved: the
    /// reservation ends with that I_T nexus (logout, connection loss).
    spc2_session: Mutex<Option<(pr::Nexus, Option<String>)>>,
}

impl Lu {
    /// Opens the LU of `cfg`'s image: its backing, its state store (creating
    /// the identity on first use), and the SCSI emulation over both;
    /// `sharing` says whether the state is this node's alone or the cluster's.
    pub fn open(
        cfg: &DeviceConfig,
        sharing: &Sharing,
        block_size: u32,
        hw_max_sectors: u32,
        dev_size: u64,
        write_cache: bool,
    ) -> Result<Lu, OpenError> {
        let opts = FileOptions {
            direct: cfg.direct,
            read_only: cfg.read_only,
            size: Some(dev_size),
            grow: cfg.grow,
            ..FileOptions::default()
        };
        let backing = FileBacking::open(&cfg.image, &opts).map_err(|source| {
            let errno = match &source {
                crate::backing::OpenError::Open { source, .. } => {
                    source.raw_os_error().unwrap_or(libc::EIO)
                }
                crate::backing::OpenError::TooSmall { .. } => libc::ENOSPC,
                crate::backing::OpenError::BadType(_)
                | crate::backing::OpenError::NoDirectIo { .. } => libc::EINVAL,
                _ => libc::EIO,
            };
            OpenError::Backing {
                path: cfg.image.clone(),
                source,
                errno,
            }
        })?;
        if backing.is_direct() && (block_size as usize) < backing.dio_align() {
            return Err(OpenError::Misaligned {
                path: cfg.image.clone(),
                align: backing.dio_align(),
                block_size,
            });
        }
        let (sync, state) = StateSync::open(cfg, sharing)?;
        let identity = state.identity.lu_identity(cfg.serial.as_deref())?;
        let mut lc = LuConfig::new(block_size, identity);
        lc.hw_max_sectors = hw_max_sectors;
        lc.write_cache = write_cache;
        lc.read_only = cfg.read_only;
        lc.lbppbe = lbppbe(backing.physical_block_size(), block_size);
        lc.report_pr_commands = true;
        // Implicit ALUA: we answer REPORT TARGET PORT GROUPS ourselves.
        lc.tpgs = 1;
        let file = Arc::new(backing);
        let backing: Arc<dyn Backing> = file.clone();
        let mut scsi = scsi::Lu::new(lc, backing)?;
        if let Some(hook) = sync.caw_hook() {
            scsi.set_caw_hook(hook);
        }
        Ok(Lu::assemble(cfg.image.clone(), Some(file), scsi, sync))
    }

    /// An LU from its parts, with no views, no pending UAs, no SPC-2 session.
    fn assemble(
        image: PathBuf,
        file: Option<Arc<FileBacking>>,
        scsi: scsi::Lu,
        sync: StateSync,
    ) -> Lu {
        Lu {
            image,
            file,
            scsi,
            sync,
            gate: Arc::default(),
            uas: Mutex::new(UaQueues::default()),
            views: Mutex::new(Vec::new()),
            spc2_session: Mutex::new(None),
        }
    }

    /// The image path.
    #[must_use]
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Changes the exposed size (TCMU `dev_size` reconfiguration); growing
    /// a file past its end only if `grow`.
    pub fn resize(&self, size: u64, grow: bool) -> std::io::Result<()> {
        match &self.file {
            Some(file) => file.resize(size, grow),
            None => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }

    /// Test and benchmark use only: an LU over any SCSI emulation (e.g. a
    /// `MemBacking`) starting in `state`, keeping its state in a store at
    /// `store` (created). Not resizable.
    #[doc(hidden)]
    pub fn for_tests(scsi: scsi::Lu, state: LuState, store: &Path) -> Result<Lu, OpenError> {
        let sync = StateSync::local_for_tests(store, state)?;
        Ok(Lu::assemble(PathBuf::from("(test)"), None, scsi, sync))
    }

    /// The SCSI emulation.
    #[must_use]
    pub fn scsi(&self) -> &scsi::Lu {
        &self.scsi
    }

    /// The last known state (may lag the cluster's newest by the commands
    /// not yet admitted here; commands use `sync().admit()`).
    #[must_use]
    pub fn state(&self) -> Arc<LuState> {
        self.sync.current()
    }

    /// How the state is kept (admission, updates, cluster counters).
    #[must_use]
    pub fn sync(&self) -> &StateSync {
        &self.sync
    }

    /// LOGICAL UNIT RESET through the view of `issuer` (if its nexus is
    /// known), the durable half: releases the SPC-2 reservation (SPC-4
    /// 5.13.1; PR survives) and, in cluster mode, records BUS DEVICE RESET
    /// FUNCTION OCCURRED for every other I_T nexus of the LU (SAM-5 6.6; the
    /// kernel reports it to the issuer only) in the state's UA log, so that
    /// every node's views hear of it. Local mode: see
    /// [`Lu::reset_unit_attentions`].
    pub fn reset(&self, issuer: Option<&pr::Nexus>) {
        let cluster = matches!(self.sync, StateSync::Cluster(_));
        let for_log = issuer.filter(|_| cluster).cloned();
        let r = self.sync.update(move |st| {
            let released = pr::lu_reset(&st.pr);
            let changed = released.is_some() || for_log.is_some();
            let mut new = LuState {
                pr: released.clone().unwrap_or_else(|| st.pr.clone()),
                ..st.clone()
            };
            if let Some(i) = for_log {
                new.uas.record_others(i, 0x29, 0x03);
                new.uas.trim(super::sync::UA_LOG_KEEP);
            }
            (released.is_some(), changed.then_some(new), Vec::new())
        });
        let r = r.map(|(released, _)| released);
        match r {
            Ok(true) => {
                info!(image = %self.image.display(), "LU reset released the SPC-2 reservation")
            }
            Ok(false) => {}
            Err(e) => error!(image = %self.image.display(), "LU reset: state not saved: {e}"),
        }
    }

    /// The local half of a LOGICAL UNIT RESET: in local mode, establishes
    /// BUS DEVICE RESET FUNCTION OCCURRED for this LU's views other than the
    /// issuer's, in memory. Called on the LU's ring thread as the TMR
    /// notification arrives — before the initiator can send its next command on another
    /// path — while [`Lu::reset`] does the durable part on a worker. (In
    /// cluster mode the UA goes through the state's log in `reset`.)
    pub fn reset_unit_attentions(&self, issuer: Option<&pr::Nexus>) {
        if matches!(self.sync, StateSync::Cluster(_)) {
            return;
        }
        let others: Vec<pr::UnitAttention> = self
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|v| match v.cached_who().as_deref() {
                Some(Who::One { nexus, .. }) if issuer.is_none_or(|i| !nexus.matches(i)) => {
                    Some(pr::UnitAttention {
                        nexus: nexus.clone(),
                        ua: pr::Ua::ResetOccurred,
                    })
                }
                _ => None,
            })
            .collect();
        if !others.is_empty() {
            self.uas
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .establish(&others);
        }
    }

    /// The LU (re)appears with no view left from before: a power on to its
    /// initiators (SPC-4, persist through power loss): registrations and the reservation
    /// survive only if the last PR OUT set APTPL; SPC-2 reservations never.
    /// A daemon restart that adopts live views is not a power on, and in
    /// cluster mode neither is one node's restart (other nodes may be
    /// serving the LU), so there the state is kept; a whole-cluster power
    /// cycle therefore keeps non-APTPL state too (the conservative side).
    pub fn power_on(&self) {
        if matches!(self.sync, StateSync::Cluster(_)) {
            return;
        }
        match self.update_pr(|s| {
            let n = s.power_on();
            (n != *s).then_some(n)
        }) {
            Ok(true) => info!(
                image = %self.image.display(),
                "LU powered on: registrations and reservation without APTPL dropped (SPC-4)"
            ),
            Ok(false) => {}
            Err(e) => error!(image = %self.image.display(), "LU power on: state not saved: {e}"),
        }
    }

    /// Changes the PR state durably (through the cluster when clustered)
    /// with `f`, which returns the new PR state if anything changes.
    fn update_pr(
        &self,
        f: impl FnOnce(&pr::PrState) -> Option<pr::PrState> + Send + 'static,
    ) -> Result<bool, SyncError> {
        let (changed, _) = self.sync.update(move |st| {
            let new = f(&st.pr).map(|pr| LuState { pr, ..st.clone() });
            (new.is_some(), new, Vec::new())
        })?;
        Ok(changed)
    }

    /// Registers a view of this LU on this node.
    pub fn add_view(&self, view: &Arc<View>) {
        let mut v = self
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(view));
    }

    fn view_of(&self, nexus: &pr::Nexus) -> Option<Arc<View>> {
        let v = self
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.iter()
            .filter_map(Weak::upgrade)
            .find(|view| match view.cached_who().as_deref() {
                Some(Who::One { nexus: n, .. }) => n.matches(nexus),
                _ => false,
            })
    }

    /// If the SPC-2 reservation's I_T nexus is gone (its session ended or
    /// changed since it reserved), releases the reservation durably and
    /// returns true. A holder served by another node is asked about through
    /// the cluster (`cache` module docs: SPC-2 reservation liveness).
    fn release_lost_spc2(&self) -> bool {
        let state = self.state();
        let Some(holder) = state.pr.spc2_holder.clone() else {
            return false;
        };
        if self.view_of(&holder).is_none() {
            return self.probe_remote_spc2(&holder);
        }
        self.release_local_spc2(&holder)
    }

    /// Cluster mode, the holder on another node: waits for that node to
    /// check its session, then says whether the reservation is gone.
    fn probe_remote_spc2(&self, holder: &pr::Nexus) -> bool {
        if !matches!(self.sync, StateSync::Cluster(_)) {
            return false;
        }
        if let Err(e) = self.sync.spc2_probe() {
            warn!(image = %self.image.display(), error = %e, "SPC-2 holder on another node not probed; the conflict stands");
            return false;
        }
        let Ok(admitted) = self.sync.admit() else {
            return false;
        };
        let gone = !admitted
            .state()
            .pr
            .spc2_holder
            .as_ref()
            .is_some_and(|h| h.matches(holder));
        if gone {
            info!(image = %self.image.display(), holder = ?holder.initiator, "SPC-2 reservation released by the node that served its I_T nexus");
        }
        gone
    }

    /// The holder is a view of this node: releases the reservation if its
    /// session is gone.
    fn release_local_spc2(&self, holder: &pr::Nexus) -> bool {
        let holder = holder.clone();
        let recorded = self.spc2_session.lock().ok().and_then(|s| s.clone());
        let Some(view) = self.view_of(&holder) else {
            return false;
        };
        let now = view.session_token();
        let lost = match (&recorded, &now) {
            (_, None) => true,
            (Some((n, Some(then))), Some(now)) if n.matches(&holder) => then != now,
            _ => false,
        };
        if !lost {
            return false;
        }
        let h = holder.clone();
        let r = self.update_pr(move |pr| pr::nexus_lost(pr, &h));
        if matches!(r, Ok(true)) {
            info!(image = %self.image.display(), holder = ?holder.initiator, "SPC-2 reservation released: its I_T nexus is gone");
            if let Ok(mut s) = self.spc2_session.lock() {
                *s = None;
            }
            return true;
        }
        false
    }

    /// The RTPI of target port `name`, assigning one (durably) if new.
    pub fn rtpi_for(&self, name: &str) -> Result<u16, SyncError> {
        if let Some(r) = self.state().rtpi(name) {
            return Ok(r);
        }
        let owned = name.to_owned();
        let (r, _) = self.sync.update(move |s| {
            // Another view or node may have assigned it meanwhile: then
            // nothing changes and nothing is written.
            if let Some(r) = s.rtpi(&owned) {
                return (Some(r), None, Vec::new());
            }
            let mut n = s.clone();
            match n.assign_rtpi(&owned) {
                Ok(r) => (Some(r), Some(n), Vec::new()),
                Err(_) => (None, None, Vec::new()),
            }
        })?;
        r.ok_or_else(|| {
            SyncError::Store(StoreError::Corrupt {
                path: self.image.clone(),
                detail: "no RTPI left".into(),
            })
        })
    }
}

fn target_ports(state: &LuState) -> Vec<pr::TargetPort> {
    state
        .ports
        .iter()
        .map(|(name, &rtpi)| pr::TargetPort {
            rtpi,
            name: name.clone(),
        })
        .collect()
}

impl Spc2Holder for Lu {
    fn check_spc2_holder(&self) -> bool {
        let Some(holder) = self.state().pr.spc2_holder.clone() else {
            return false;
        };
        if self.view_of(&holder).is_none() {
            return false;
        }
        !self.release_local_spc2(&holder)
    }
}

/// All LUs of this node, by image path, shared by their views.
#[derive(Debug, Default)]
pub struct Lus {
    map: Mutex<HashMap<PathBuf, Weak<Lu>>>,
}

impl Lus {
    /// The LU of `cfg.image`, opening it if no view has it open.
    pub fn get_or_open(
        &self,
        cfg: &DeviceConfig,
        open: impl FnOnce() -> Result<Lu, OpenError>,
    ) -> Result<Arc<Lu>, OpenError> {
        let key = std::fs::canonicalize(&cfg.image).unwrap_or_else(|_| cfg.image.clone());
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lu) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(lu);
        }
        let lu = Arc::new(open()?);
        let holder: Arc<dyn Spc2Holder> = lu.clone();
        lu.sync.register_spc2_holder(Arc::downgrade(&holder));
        map.insert(key, Arc::downgrade(&lu));
        map.retain(|_, w| w.strong_count() > 0);
        Ok(lu)
    }
}

/// The nexus of a view as last resolved.
#[derive(Debug, Clone)]
enum Who {
    /// One I_T nexus, its target port and RTPI.
    One {
        nexus: pr::Nexus,
        port: scsi::TargetPort,
        /// What shows the initiator's current session: the ACL's `info`
        /// (iSCSI), or the TPG's `nexus` (tcm_loop).
        session_file: PathBuf,
    },
    /// Zero or several initiators: the reason, for logs and refusals.
    Ambiguous(String),
}

/// A view's I_T nexus as `tcmu-prd status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NexusInfo {
    /// The one I_T nexus the view serves.
    One(pr::Nexus),
    /// No single nexus (unresolved, not exported, several initiators): why.
    Missing(String),
}

/// One TCMU device of an LU.
#[derive(Debug)]
pub struct View {
    lu: Arc<Lu>,
    /// For logs: `user_<hba>/<name>`.
    name: String,
    target_root: PathBuf,
    backstore: PathBuf,
    /// Shared so that each command takes it with a reference count, not a
    /// copy of the initiator name.
    who: RwLock<Option<Arc<Who>>>,
    /// Bumped after every resolution, so a waiter knows a fresh one happened.
    resolutions: std::sync::atomic::AtomicU64,
    resolver: Mutex<Option<super::Resolver>>,
    /// Whether this view's nexus is registered, remembered for one state and
    /// one resolution (both only change on updates and ACL changes): a
    /// reservation with many registrants then costs one pointer compare per
    /// command, not a scan of every registration.
    registered: Mutex<Option<RegisteredIn>>,
}

/// See [`View::registered`]. Holds the state and the resolution it answers
/// for, so their addresses cannot be reused by newer ones while cached.
#[derive(Debug)]
struct RegisteredIn {
    state: Arc<LuState>,
    who: Arc<Who>,
    registered: bool,
}

/// A stand-in nexus for ambiguous views: registered nowhere, so reservations
/// apply to it as to any unregistered initiator (fails safe).
fn anonymous() -> pr::Nexus {
    pr::Nexus {
        initiator: TransportId::Iscsi {
            name: "tcmu-prd.ambiguous-view".into(),
            isid: Some(0),
        },
        rtpi: 0,
    }
}

/// The TransportID LIO's initiator name maps to.
fn transport_id(fabric: &str, initiator: &str) -> TransportId {
    let hex = |s: &str| u64::from_str_radix(&s.replace(':', ""), 16).ok();
    match fabric {
        "iscsi" => TransportId::Iscsi {
            name: initiator.to_owned(),
            isid: None,
        },
        // tcm_loop's initiator is an naa. name: reported as a SAS address.
        "loopback" | "sas" => match initiator.strip_prefix("naa.").and_then(hex) {
            Some(address) => TransportId::Sas { address },
            None => TransportId::Iscsi {
                name: initiator.to_owned(),
                isid: None,
            },
        },
        _ => match hex(initiator.trim_start_matches("naa.")) {
            Some(wwpn) => TransportId::Fc { wwpn },
            None => TransportId::Iscsi {
                name: initiator.to_owned(),
                isid: None,
            },
        },
    }
}

fn to_scsi_sense(s: &pr::SenseInfo) -> SenseInfo {
    SenseInfo {
        code: SenseCode {
            key: s.key,
            asc: s.asc,
            ascq: s.ascq,
        },
        information: None,
        field: s.field.map(|f| scsi::FieldPointer {
            in_cdb: f.in_cdb,
            byte: f.byte,
            bit: f.bit,
        }),
    }
}

/// Commands a pending unit attention does not block (SAM-5 5.14).
fn ua_exempt(cdb: &[u8]) -> bool {
    matches!(cdb.first(), Some(0x12 | 0xa0 | 0x03))
}

impl View {
    /// A view of `lu` whose backstore is `backstore` under `target_root`.
    #[must_use]
    pub fn new(lu: Arc<Lu>, name: String, target_root: PathBuf, backstore: PathBuf) -> View {
        View {
            lu,
            name,
            target_root,
            backstore,
            who: RwLock::new(None),
            resolutions: std::sync::atomic::AtomicU64::new(0),
            resolver: Mutex::new(None),
            registered: Mutex::new(None),
        }
    }

    /// The LU.
    #[must_use]
    pub fn lu(&self) -> &Arc<Lu> {
        &self.lu
    }

    /// Re-reads the view's nexus from configfs (on first use, on PR commands,
    /// and periodically: ACLs change without notice).
    pub fn refresh_nexus(&self) {
        let who = match nexus::discover(&self.target_root, &self.backstore) {
            ViewNexus::One(n) => {
                let port_name = n.target.to_string();
                match self.lu.rtpi_for(&port_name) {
                    Ok(rtpi) => Who::One {
                        nexus: pr::Nexus {
                            initiator: transport_id(&n.target.fabric, &n.initiator),
                            rtpi,
                        },
                        port: scsi::TargetPort {
                            rtpi,
                            tpg: rtpi,
                            protocol_id: protocol_id(&n.target.fabric),
                        },
                        session_file: session_file(&self.target_root, &n),
                    },
                    Err(e) => {
                        Who::Ambiguous(format!("cannot assign a relative target port id: {e}"))
                    }
                }
            }
            ViewNexus::NotExported => {
                Who::Ambiguous("not exported through any target port yet".into())
            }
            ViewNexus::Ambiguous(why) => Who::Ambiguous(why),
        };
        let mut cur = self
            .who
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = match (&*cur, &who) {
            (Some(old), new) => match (&**old, new) {
                (Who::One { nexus: a, .. }, Who::One { nexus: b, .. }) => a != b,
                (Who::Ambiguous(a), Who::Ambiguous(b)) => a != b,
                _ => true,
            },
            _ => true,
        };
        if changed {
            match &who {
                Who::One { nexus, .. } => info!(view = %self.name, ?nexus, "serves one I_T nexus"),
                Who::Ambiguous(why) if why.starts_with("not exported") => {
                    info!(view = %self.name, "{why}")
                }
                Who::Ambiguous(why) => {
                    warn!(view = %self.name, "ambiguous I_T nexus, PR OUT and RESERVE refused: {why}")
                }
            }
        }
        *cur = Some(Arc::new(who));
        self.resolutions
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Test and benchmark use only: sets the resolved nexus directly, as
    /// [`View::refresh_nexus`] would from configfs.
    #[doc(hidden)]
    pub fn set_nexus_for_tests(&self, nexus: pr::Nexus, port: scsi::TargetPort) {
        *self
            .who
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(Who::One {
            nexus,
            port,
            session_file: PathBuf::new(),
        }));
    }

    pub(super) fn set_resolver(&self, r: super::Resolver) {
        *self
            .resolver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
    }

    /// Asks the resolver for a fresh look at configfs and waits for it, at
    /// most `bound` (the resolver may itself be waiting on configfs).
    fn fresh_who(&self, bound: std::time::Duration) -> Arc<Who> {
        use std::sync::atomic::Ordering;
        let resolver = self.resolver.lock().ok().and_then(|r| r.clone());
        let Some(resolver) = resolver else {
            return self.who();
        };
        let before = self.resolutions.load(Ordering::Acquire);
        resolver.kick();
        let deadline = std::time::Instant::now() + bound;
        while self.resolutions.load(Ordering::Acquire) == before
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.who()
    }

    /// The nexus as last resolved; `None` until the resolver has run once.
    /// Never touches configfs: a command may be issued by the kernel while a
    /// configfs operation on this very LUN waits for it (tcm_loop's LUN link
    /// scans the LUN synchronously), so reading configfs here would deadlock
    /// until the command times out.
    fn cached_who(&self) -> Option<Arc<Who>> {
        self.who.read().ok().and_then(|w| w.clone())
    }

    fn who(&self) -> Arc<Who> {
        self.cached_who()
            .unwrap_or_else(|| Arc::new(Who::Ambiguous("I_T nexus not resolved yet".into())))
    }

    /// The I_T nexus this view serves, if resolved and unambiguous.
    #[must_use]
    pub fn nexus(&self) -> Option<pr::Nexus> {
        match self.cached_who().as_deref() {
            Some(Who::One { nexus, .. }) => Some(nexus.clone()),
            _ => None,
        }
    }

    /// Whether the nexus has been resolved at least once.
    #[must_use]
    pub fn resolved(&self) -> bool {
        self.cached_who().is_some()
    }

    /// The initiator's current session as configfs shows it, read on a
    /// helper thread with a bound (configfs can block behind LIO's own
    /// operations): `None` when there is no session.
    fn session_token(&self) -> Option<String> {
        let who = self.cached_who();
        let Some(Who::One { session_file, .. }) = who.as_deref() else {
            return None;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let f = session_file.clone();
        let _ = std::thread::Builder::new()
            .name("tcmu-prd-session".into())
            .spawn(move || {
                let _ = tx.send(std::fs::read_to_string(&f).ok());
            });
        let text = match rx.recv_timeout(std::time::Duration::from_secs(2)) {
            Ok(t) => t?,
            // Unknown: treat the session as alive rather than drop a reservation.
            Err(_) => return Some("unknown".into()),
        };
        session_of(session_file, &text)
    }

    /// For `status`: the nexus as last resolved, or why there is none.
    /// Never touches configfs (a read lock and a clone).
    #[must_use]
    pub fn nexus_info(&self) -> NexusInfo {
        match &*self.who() {
            Who::One { nexus, .. } => NexusInfo::One(nexus.clone()),
            Who::Ambiguous(why) => NexusInfo::Missing(why.clone()),
        }
    }

    /// `user_<hba>/<name>`, as logs name the view.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, info: &SenseInfo) -> scsi::Response {
        scsi::Response {
            status: scsi::sense::status::CHECK_CONDITION,
            sense: Some(self.lu.scsi.encode_sense(info)),
            data_in_len: 0,
        }
    }

    fn status_only(status: u8) -> scsi::Response {
        scsi::Response {
            status,
            sense: None,
            data_in_len: 0,
        }
    }

    /// Executes one command from this view's initiator.
    pub fn execute(
        &self,
        cdb: &[u8],
        data_out: &[IoSlice<'_>],
        data_in: &mut [IoSliceMut<'_>],
    ) -> scsi::Response {
        let Some(&op) = cdb.first() else {
            return self.check(&SenseInfo::new(scsi::sense::INVALID_COMMAND_OPERATION_CODE));
        };
        let is_pr = pr::is_pr_command(op);
        let mut who = self.who();
        if is_pr && !matches!(*who, Who::One { .. }) {
            // ACLs may have changed since the last look: look again, briefly.
            who = self.fresh_who(std::time::Duration::from_millis(1500));
            if !self.resolved() {
                // Reservations need to know who is asking: let the initiator retry.
                warn!(view = %self.name, "reservation command before the I_T nexus is known: BUSY");
                return Self::status_only(scsi::sense::status::BUSY);
            }
        }
        // Borrowed: no copy of the initiator name per command.
        let anon;
        let (nexus, port) = match &*who {
            Who::One { nexus, port, .. } => (nexus, *port),
            Who::Ambiguous(_) => {
                anon = anonymous();
                (&anon, scsi::TargetPort::default())
            }
        };
        if let Err(e) = self.lu.sync.sync_uas(nexus, &self.lu.uas) {
            return super::sync::refusal(&self.lu.scsi, &e);
        }
        if !ua_exempt(cdb) {
            let ua = self.lu.uas.lock().ok().and_then(|mut q| q.take(nexus));
            if let Some(ua) = ua {
                return self.check(&to_scsi_sense(&ua.sense()));
            }
        }
        if is_pr {
            return self.execute_pr(&who, nexus, cdb, data_out, data_in);
        }
        if op == 0xa3 && cdb.get(1).map(|b| b & 0x1f) == Some(0x0a) {
            return self.report_target_port_groups(cdb, data_in);
        }
        let _gate = self.lu.gate.read();
        // Held until the command ends: a cluster update drains it first.
        let admitted = match self.lu.sync.admit() {
            Ok(a) => a,
            Err(e) => return super::sync::refusal(&self.lu.scsi, &e),
        };
        if let Some(spc2_other) = self.conflict(&admitted, &who, nexus, cdb) {
            drop(admitted);
            drop(_gate);
            if !(spc2_other && self.lu.release_lost_spc2()) {
                return Self::status_only(scsi::sense::status::RESERVATION_CONFLICT);
            }
            return self.execute(cdb, data_out, data_in);
        }
        self.lu.scsi.execute(&port, cdb, data_out, data_in)
    }

    /// `Some(spc2_other)` if the data command `cdb` of `nexus` conflicts
    /// with the reservation of the admitted state; `spc2_other`: an SPC-2
    /// reservation of another nexus is (part of) why, which may be released
    /// if its holder is gone.
    fn conflict(
        &self,
        admitted: &super::sync::Admitted,
        who: &Arc<Who>,
        nexus: &pr::Nexus,
        cdb: &[u8],
    ) -> Option<bool> {
        let access = pr::check_access_with(&admitted.state().pr, nexus, cdb, || {
            self.registered_in(admitted.state_arc(), who, nexus)
        });
        (access == pr::Access::Conflict).then(|| {
            admitted
                .state()
                .pr
                .spc2_holder
                .as_ref()
                .is_some_and(|h| !h.matches(nexus))
        })
    }

    /// A READ/WRITE of this view's initiator ready for asynchronous I/O:
    /// the same checks as [`View::execute`] (unit attention, reservation
    /// access, then the SCSI checks), with the I/O gate and admission held
    /// until the returned I/O is finished ([`View::finish_rw`]).
    /// `Err(response)`: the command is answered without I/O (a unit
    /// attention, a reservation conflict). `Ok(None)`: run it through
    /// `execute` (anything that may wait: the gate, a cluster admission, a
    /// range lock, an SPC-2 holder that left; a refusing cluster; an
    /// ambiguous nexus; an error the SCSI layer reports).
    pub fn start_rw(&self, cdb: &[u8], data_len: usize) -> Result<Option<RwIo>, scsi::Response> {
        let who = self.who();
        let Who::One { nexus, .. } = &*who else {
            return Ok(None);
        };
        // One admission for the unit attentions and the access check: the
        // command runs against the state it was checked against.
        let Some(admitted) = self.lu.sync.try_admit() else {
            return Ok(None);
        };
        self.lu
            .sync
            .sync_uas_admitted(&admitted, nexus, &self.lu.uas);
        if !ua_exempt(cdb) {
            let ua = self.lu.uas.lock().ok().and_then(|mut q| q.take(nexus));
            if let Some(ua) = ua {
                return Err(self.check(&to_scsi_sense(&ua.sense())));
            }
        }
        let Some(gate) = self.lu.gate.try_read_owned() else {
            return Ok(None);
        };
        if let Some(spc2_other) = self.conflict(&admitted, &who, nexus, cdb) {
            if spc2_other {
                return Ok(None);
            }
            return Err(Self::status_only(scsi::sense::status::RESERVATION_CONFLICT));
        }
        Ok(self.lu.scsi.start_rw(cdb, data_len).map(|plan| RwIo {
            plan,
            _admitted: admitted,
            _gate: gate,
        }))
    }

    /// The response to a READ/WRITE started by [`View::start_rw`] whose I/O
    /// ended with `result`; releases what it held.
    pub fn finish_rw(&self, io: RwIo, result: std::io::Result<()>) -> scsi::Response {
        let RwIo {
            plan,
            _admitted,
            _gate,
        } = io;
        self.lu.scsi.finish_rw(plan, result)
    }

    /// The medium, for I/O that [`View::start_rw`] planned.
    pub fn backing(&self) -> &Arc<dyn Backing> {
        self.lu.scsi.backing()
    }

    /// Whether `nexus` (this view's, from `who`) is registered in `state`,
    /// from the cache when it answers for the same state and resolution.
    fn registered_in(&self, state: &Arc<LuState>, who: &Arc<Who>, nexus: &pr::Nexus) -> bool {
        let mut c = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = &*c
            && Arc::ptr_eq(&r.state, state)
            && Arc::ptr_eq(&r.who, who)
        {
            return r.registered;
        }
        let registered = state
            .pr
            .registrations
            .iter()
            .any(|r| r.nexus.matches(nexus));
        *c = Some(RegisteredIn {
            state: state.clone(),
            who: who.clone(),
            registered,
        });
        registered
    }

    fn execute_pr(
        &self,
        who: &Who,
        nexus: &pr::Nexus,
        cdb: &[u8],
        data_out: &[IoSlice<'_>],
        data_in: &mut [IoSliceMut<'_>],
    ) -> scsi::Response {
        let changes = cdb[0] != pr::PERSISTENT_RESERVE_IN;
        if let (true, Who::Ambiguous(why)) = (changes, who) {
            error!(view = %self.name, "refusing a reservation command: this view's I_T nexus is ambiguous: {why}");
            return self.check(&SenseInfo::new(scsi::sense::INVALID_COMMAND_OPERATION_CODE));
        }
        let mut params = vec![0u8; data_out.iter().map(|s| s.len()).sum()];
        crate::backing::iov::gather(data_out, 0, &mut params);
        // Exclusive: no data command of this LU runs while the state changes.
        let gate = || changes.then(|| self.lu.gate.write());
        let mut held_gate = gate();
        let (nexus, cdb_owned) = (nexus.clone(), cdb.to_vec());
        let make_run = || {
            let (nexus, cdb_owned, params) = (nexus.clone(), cdb_owned.clone(), params.clone());
            move |st: &LuState| {
                let out = pr::execute(&st.pr, &target_ports(st), &nexus, &cdb_owned, &params);
                let new = out.new_state.clone().map(|pr| LuState { pr, ..st.clone() });
                let uas = out.unit_attentions.clone();
                (out, new, uas)
            }
        };
        let exec = || {
            if changes {
                self.lu.sync.update(make_run())
            } else {
                // PR IN: a read of the admitted state, no cluster update.
                self.lu
                    .sync
                    .admit()
                    .map(|a| {
                        let (out, _, _) = make_run()(a.state());
                        (out, Vec::new())
                    })
                    .map_err(SyncError::from)
            }
        };
        let mut result = exec();
        // A conflict with an SPC-2 reservation whose I_T nexus is gone
        // (logout, connection loss): release it and try once more. Data
        // commands may run meanwhile (the check may wait for another node).
        if matches!(&result, Ok((o, _)) if o.status == pr::Status::ReservationConflict)
            && self
                .lu
                .state()
                .pr
                .spc2_holder
                .as_ref()
                .is_some_and(|h| !h.matches(&nexus))
        {
            drop(held_gate.take());
            if self.lu.release_lost_spc2() {
                let _again = gate();
                result = exec();
            }
        }
        let reserved = matches!(cdb[0], 0x16 | 0x56)
            && matches!(&result, Ok((o, _)) if o.status == pr::Status::Good);
        if reserved {
            if let Ok(mut s) = self.lu.spc2_session.lock() {
                *s = Some((nexus.clone(), self.session_token()));
            }
            self.lu.sync.spc2_vouch(true);
        }
        let (out, local_uas) = match result {
            Ok(r) => r,
            Err(e) => {
                error!(view = %self.name, "reservation command failed, state unchanged: {e}");
                return e.response(&self.lu.scsi);
            }
        };
        if !local_uas.is_empty()
            && let Ok(mut q) = self.lu.uas.lock()
        {
            q.establish(&local_uas);
        }
        if !out.abort.is_empty() {
            info!(view = %self.name, preempted = out.abort.len(), "PREEMPT AND ABORT: commands of preempted nexuses drained before completion");
        }
        match out.status {
            pr::Status::Good => {
                let n = crate::backing::iov::scatter(data_in, 0, &out.data_in);
                scsi::Response::good(n)
            }
            pr::Status::ReservationConflict => {
                Self::status_only(scsi::sense::status::RESERVATION_CONFLICT)
            }
            pr::Status::CheckCondition(s) => self.check(&to_scsi_sense(&s)),
        }
    }

    /// REPORT TARGET PORT GROUPS (SPC-4 6.36), from the cluster-wide RTPIs:
    /// one group per target port, each active/optimized, group id = RTPI, so
    /// that it matches VPD 0x83's target port group designator.
    fn report_target_port_groups(
        &self,
        cdb: &[u8],
        data_in: &mut [IoSliceMut<'_>],
    ) -> scsi::Response {
        if cdb.len() < 12 {
            return self.check(&SenseInfo::new(scsi::sense::INVALID_FIELD_IN_CDB));
        }
        let extended = (cdb[1] >> 5) & 0x7 == 1;
        let alloc = usize::try_from(u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]))
            .unwrap_or(usize::MAX);
        let ports: Vec<u16> = self.lu.state().ports.values().copied().collect();
        let mut body = Vec::new();
        for rtpi in ports {
            // AAS 0 = active/optimized; supported states: AO only (bit 0).
            body.extend_from_slice(&[0x80, 0x01]);
            body.extend_from_slice(&rtpi.to_be_bytes());
            body.extend_from_slice(&[0, 0, 0, 1]); // status, vendor, port count
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&rtpi.to_be_bytes());
        }
        let mut data = Vec::new();
        let len = u32::try_from(body.len() + if extended { 4 } else { 0 }).unwrap_or(u32::MAX);
        data.extend_from_slice(&len.to_be_bytes());
        if extended {
            data.extend_from_slice(&[0x10, 0, 0, 0]); // format 1, no implicit transition time
        }
        data.extend_from_slice(&body);
        data.truncate(alloc);
        let n = crate::backing::iov::scatter(data_in, 0, &data);
        scsi::Response::good(n)
    }
}

/// Where configfs shows the session of `n`'s initiator.
fn session_file(target_root: &Path, n: &nexus::Nexus) -> PathBuf {
    let tpg = target_root
        .join(&n.target.fabric)
        .join(&n.target.wwn)
        .join(format!("tpgt_{}", n.target.tpgt));
    if n.target.fabric == "loopback" {
        tpg.join("nexus")
    } else {
        tpg.join("acls").join(&n.initiator).join("info")
    }
}

/// The session identity in a session file's text; `None` when there is no
/// session. iSCSI's ACL info has a "LIO Session ID" line per session.
fn session_of(file: &Path, text: &str) -> Option<String> {
    if file.ends_with("nexus") {
        let t = text.trim();
        return if t.is_empty() || t == "null" {
            None
        } else {
            Some(t.to_owned())
        };
    }
    text.lines()
        .find(|l| l.contains("LIO Session ID"))
        .map(|l| l.trim().to_owned())
}

fn protocol_id(fabric: &str) -> Option<u8> {
    match fabric {
        "iscsi" => Some(5),
        "loopback" | "sas" => Some(6),
        "qla2xxx" | "tcm_fc" | "lpfc" => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test-only constructors give a working view: the conflict check
    /// sees the nexus that was set and the state the LU was built with.
    #[test]
    fn test_view_over_mem_backing() {
        use crate::pr::{Holder, PrType, Registration, Reservation};
        let dir = tempfile::tempdir().unwrap();
        let id = crate::lu::state::Identity::from_random(&[1; 13]);
        let identity = id.lu_identity(None).unwrap();
        let backing = Arc::new(crate::backing::MemBacking::new(1 << 20, 4096));
        let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).unwrap();
        let holder = pr::Nexus {
            initiator: TransportId::Sas { address: 1 },
            rtpi: 1,
        };
        let mut state = LuState::new(id);
        state.pr.registrations.push(Registration {
            nexus: holder.clone(),
            key: 1,
            all_tg_pt: false,
        });
        state.pr.reservation = Some(Reservation {
            holder: Holder::Nexus(holder.clone()),
            kind: PrType::WriteExclusive,
        });
        let lu = Arc::new(Lu::for_tests(scsi, state, &dir.path().join("state")).unwrap());
        assert!(lu.resize(1 << 21, true).is_err());
        let view = View::new(lu, "test".into(), PathBuf::new(), PathBuf::new());
        let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let block = [0u8; 512];
        let out = [IoSlice::new(&block)];
        // Not resolved yet: the anonymous nexus, which does not hold it.
        let r = view.execute(&write, &out, &mut []);
        assert_eq!(r.status, scsi::sense::status::RESERVATION_CONFLICT);
        assert_eq!(
            view.nexus_info(),
            NexusInfo::Missing("I_T nexus not resolved yet".into())
        );
        view.set_nexus_for_tests(holder.clone(), scsi::TargetPort::default());
        assert!(view.resolved());
        assert_eq!(view.nexus_info(), NexusInfo::One(holder));
        assert_eq!(view.name(), "test");
        let r = view.execute(&write, &out, &mut []);
        assert_eq!(r.status, scsi::sense::status::GOOD);
    }

    /// The per-view "am I registered" answer is remembered per state: it
    /// must follow every registration change and a change of the view's
    /// nexus, with many registrants as with one.
    #[test]
    fn registration_answer_follows_state_and_nexus_changes() {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::lu::state::Identity::from_random(&[3; 13]);
        let identity = id.lu_identity(None).unwrap();
        let backing = Arc::new(crate::backing::MemBacking::new(1 << 20, 4096));
        let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).unwrap();
        let lu =
            Arc::new(Lu::for_tests(scsi, LuState::new(id), &dir.path().join("state")).unwrap());
        let nexus = |a| pr::Nexus {
            initiator: TransportId::Sas { address: a },
            rtpi: 1,
        };
        let view = |a: u64| {
            let v = Arc::new(View::new(
                lu.clone(),
                format!("v{a}"),
                PathBuf::new(),
                PathBuf::new(),
            ));
            v.set_nexus_for_tests(nexus(a), scsi::TargetPort::default());
            lu.add_view(&v);
            v
        };
        let prout = |v: &View, sa: u8, kind: u8, rk: u64, sark: u64| {
            let mut p = [0u8; 24];
            p[..8].copy_from_slice(&rk.to_be_bytes());
            p[8..16].copy_from_slice(&sark.to_be_bytes());
            let cdb = [0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
            let r = v.execute(&cdb, &[IoSlice::new(&p)], &mut []);
            // Consume unit attentions (bounded: a UA is reported once).
            for _ in 0..4 {
                if v.execute(&[0u8; 6], &[], &mut []).status == scsi::sense::status::GOOD {
                    break;
                }
            }
            r.status
        };
        let block = [0u8; 512];
        let write = |v: &View| {
            let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
            let mut st = v.execute(&cdb, &[IoSlice::new(&block)], &mut []).status;
            for _ in 0..4 {
                if st != scsi::sense::status::CHECK_CONDITION {
                    break;
                }
                st = v.execute(&cdb, &[IoSlice::new(&block)], &mut []).status;
            }
            st
        };
        let (good, conflict) = (
            scsi::sense::status::GOOD,
            scsi::sense::status::RESERVATION_CONFLICT,
        );
        let a = view(1);
        let b = view(2);
        // 100 registrants besides A and B, then A holds WERO.
        for n in 10..110 {
            let v = view(n);
            assert_eq!(prout(&v, 0, 0, 0, n), good);
        }
        assert_eq!(prout(&a, 0, 0, 0, 1), good);
        assert_eq!(prout(&a, 1, 5, 1, 0), good, "RESERVE WERO");
        assert_eq!(write(&b), conflict, "B unregistered");
        assert_eq!(write(&b), conflict, "again, from the cache");
        assert_eq!(prout(&b, 0, 0, 0, 2), good, "B registers");
        assert_eq!(write(&b), good);
        assert_eq!(write(&b), good);
        assert_eq!(prout(&a, 4, 5, 1, 2), good, "A preempts B");
        assert_eq!(write(&b), conflict, "B preempted");
        assert_eq!(prout(&b, 0, 0, 0, 3), good, "B registers again");
        assert_eq!(write(&b), good);
        // The view now serves another, unregistered initiator.
        b.set_nexus_for_tests(nexus(999), scsi::TargetPort::default());
        assert_eq!(write(&b), conflict, "a new nexus, same state");
        b.set_nexus_for_tests(nexus(2), scsi::TargetPort::default());
        assert_eq!(write(&b), good, "back to the registered one");
    }

    /// A LOGICAL UNIT RESET through one view: every other view's nexus
    /// gets BUS DEVICE RESET FUNCTION OCCURRED once, the issuer none (LIO
    /// reports it to the issuer), and the SPC-2 reservation is released.
    #[test]
    fn lu_reset_tells_the_other_nexuses() {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::lu::state::Identity::from_random(&[2; 13]);
        let identity = id.lu_identity(None).unwrap();
        let backing = Arc::new(crate::backing::MemBacking::new(1 << 20, 4096));
        let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).unwrap();
        let nexus = |a| pr::Nexus {
            initiator: TransportId::Sas { address: a },
            rtpi: 1,
        };
        let mut state = LuState::new(id);
        state.pr.spc2_holder = Some(nexus(1));
        let lu = Arc::new(Lu::for_tests(scsi, state, &dir.path().join("state")).unwrap());
        let views: Vec<Arc<View>> = (1..=3)
            .map(|a| {
                let v = Arc::new(View::new(
                    lu.clone(),
                    format!("v{a}"),
                    PathBuf::new(),
                    PathBuf::new(),
                ));
                v.set_nexus_for_tests(nexus(a), scsi::TargetPort::default());
                lu.add_view(&v);
                v
            })
            .collect();
        lu.reset_unit_attentions(views[0].nexus().as_ref());
        lu.reset(views[0].nexus().as_ref());
        assert!(lu.state().pr.spc2_holder.is_none());
        let tur = [0u8; 6];
        let r = views[0].execute(&tur, &[], &mut []);
        assert_eq!(r.status, scsi::sense::status::GOOD, "the issuer");
        for v in &views[1..] {
            let r = v.execute(&tur, &[], &mut []);
            assert_eq!(r.status, scsi::sense::status::CHECK_CONDITION);
            let s = r.sense.unwrap();
            assert_eq!((s.code().key, s.code().asc, s.code().ascq), (6, 0x29, 0x03));
            let r = v.execute(&tur, &[], &mut []);
            assert_eq!(r.status, scsi::sense::status::GOOD, "reported once");
        }
    }

    /// Power on: without APTPL the registrations and the reservation go,
    /// with APTPL they stay; SPC-2 reservations go either way.
    #[test]
    fn power_on_keeps_only_aptpl_state() {
        use crate::pr::{Holder, PrType, Registration, Reservation};
        for aptpl in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let id = crate::lu::state::Identity::from_random(&[3; 13]);
            let identity = id.lu_identity(None).unwrap();
            let backing = Arc::new(crate::backing::MemBacking::new(1 << 20, 4096));
            let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).unwrap();
            let n = pr::Nexus {
                initiator: TransportId::Sas { address: 9 },
                rtpi: 1,
            };
            let mut state = LuState::new(id);
            state.pr.registrations.push(Registration {
                nexus: n.clone(),
                key: 7,
                all_tg_pt: false,
            });
            state.pr.reservation = Some(Reservation {
                holder: Holder::Nexus(n.clone()),
                kind: PrType::WriteExclusive,
            });
            state.pr.spc2_holder = Some(n);
            state.pr.aptpl = aptpl;
            let store = dir.path().join("state");
            let lu = Lu::for_tests(scsi, state, &store).unwrap();
            lu.power_on();
            let st = lu.state();
            assert_eq!(
                st.pr.registrations.len(),
                usize::from(aptpl),
                "aptpl={aptpl}"
            );
            assert_eq!(st.pr.reservation.is_some(), aptpl);
            assert!(st.pr.spc2_holder.is_none());
        }
    }

    #[test]
    fn transport_ids_per_fabric() {
        assert_eq!(
            transport_id("iscsi", "iqn.x:y"),
            TransportId::Iscsi {
                name: "iqn.x:y".into(),
                isid: None
            }
        );
        assert_eq!(
            transport_id("loopback", "naa.5001405000000002"),
            TransportId::Sas {
                address: 0x5001_4050_0000_0002
            }
        );
        assert_eq!(
            transport_id("qla2xxx", "21:00:00:24:ff:31:4c:48"),
            TransportId::Fc {
                wwpn: 0x2100_0024_ff31_4c48
            }
        );
    }
}

/// READ CAPACITY(16)'s LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT for a
/// medium whose physical unit is `physical` bytes: initiators then align
/// their I/O to it (a 512-byte write into a 4 KiB file system block costs
/// the file system a read-modify-write).
fn lbppbe(physical: Option<u32>, block_size: u32) -> u8 {
    match physical {
        Some(p) if p > block_size && p.is_power_of_two() && block_size.is_power_of_two() => {
            u8::try_from(p.trailing_zeros() - block_size.trailing_zeros())
                .unwrap_or(0)
                .min(15)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod lbppbe_tests {
    use super::lbppbe;

    #[test]
    fn exponent_of_physical_over_logical() {
        assert_eq!(lbppbe(Some(4096), 512), 3);
        assert_eq!(lbppbe(Some(4096), 4096), 0);
        assert_eq!(lbppbe(Some(512), 4096), 0);
        assert_eq!(lbppbe(None, 512), 0);
        assert_eq!(lbppbe(Some(3000), 512), 0);
        assert_eq!(lbppbe(Some(1 << 30), 512), 15);
    }
}
