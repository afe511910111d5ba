//! The daemon side of the control socket (protocol: [`crate::control`]).
//!
//! One thread, `tcmu-prd-ctl`, accepts connections and answers one request
//! each, with read and write timeouts: a client that sends nothing or reads
//! slowly delays other control clients by at most those bounds, never I/O.
//! What only the event loop knows (its devices and their in-flight counts)
//! is asked for through a channel plus the loop's waker; the loop answers
//! with a list of cheap clones on its next turn ([`answer`]). The rest comes
//! from read-only snapshots under short locks (views' resolved nexuses,
//! LU states, the cluster handles) and, in cluster mode, one message to the
//! cluster thread. Nothing here reads configfs except the DLM's member
//! list, and that from this thread.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use tracing::{debug, error, info, warn};

use crate::config::{ClusterMode, Config};
use crate::control::status::{
    ClusterStatus, DaemonStatus, LuClusterStatus, LuStatus, NexusStatus, PortStatus, PrStatus,
    ViewStatus,
};
use crate::control::{MAX_REQUEST, Reply, Request, Status};
use crate::lu::{Lu, NexusInfo, Sharing, View};

/// How long one client may take to send its request or read the answer.
const CLIENT_IO: Duration = Duration::from_secs(2);
/// The most unread request bytes swallowed before closing.
const DRAIN_MAX: u64 = 64 << 10;
/// How long to wait for the event loop's list of devices.
const LOOP_BOUND: Duration = Duration::from_secs(2);
/// How long to wait for the cluster thread's picture.
const CLUSTER_BOUND: Duration = Duration::from_secs(1);

/// One device as the event loop sees it.
#[derive(Debug, Clone)]
pub(super) struct DeviceSnap {
    pub name: String,
    pub minor: u32,
    pub in_flight: usize,
    pub uring_commands: u64,
    pub polled: u64,
    pub view: Arc<View>,
}

/// The event loop's answer to a [`Query`].
#[derive(Debug)]
pub(super) struct LoopSnap {
    pub devices: Vec<DeviceSnap>,
    pub stopping: bool,
}

/// A question for the event loop.
#[derive(Debug)]
pub(super) struct Query {
    reply: Sender<LoopSnap>,
}

/// The event loop's side: answers every pending query with `snap()`. Never
/// blocks (the reply channel has room for the one answer).
pub(super) fn answer(rx: &Receiver<Query>, mut snap: impl FnMut() -> LoopSnap) {
    while let Ok(q) = rx.try_recv() {
        let _ = q.reply.try_send(snap());
    }
}

/// What the server needs from the daemon, fixed at start.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    pub to_loop: Sender<Query>,
    pub waker: Arc<Waker>,
    pub sharing: Sharing,
    pub mode: ClusterMode,
    pub lockspace: String,
    pub configfs: PathBuf,
    pub config_path: Option<PathBuf>,
    pub socket: PathBuf,
    pub started: Instant,
}

/// The listening socket and its thread; dropping it stops the thread and
/// removes the socket (if it is still ours).
#[derive(Debug)]
pub(super) struct Server {
    path: PathBuf,
    /// (st_dev, st_ino) of the socket we bound, so we never remove one a
    /// later daemon bound at the same path.
    ident: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(super) enum BindError {
    #[error("another daemon answers on {0}: give each daemon its own [paths] control_socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; not removing it")]
    NotSocket(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |op, source| BindError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating the directory of", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            // Left by a daemon that was killed: nobody answers on it.
            std::fs::remove_file(path).map_err(|e| io_err("removing the stale socket", e))?;
        }
        Ok(_) => return Err(BindError::NotSocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking", e)),
    }
    let l = UnixListener::bind(path).map_err(|e| io_err("binding", e))?;
    // Root only: `log-level` changes the daemon, `status` names initiators.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("chmod 0600", e))?;
    Ok(l)
}

impl Server {
    /// Binds the socket and starts the thread.
    pub fn start(ctx: Ctx) -> Result<Server, BindError> {
        let path = ctx.socket.clone();
        let listener = bind(&path)?;
        let m = std::fs::metadata(&path).map_err(|source| BindError::Io {
            op: "stat",
            path: path.clone(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tcmu-prd-ctl".into())
            .spawn(move || serve(&listener, &ctx, &s))
            .map_err(|source| BindError::Io {
                op: "starting the control thread for",
                path: path.clone(),
                source,
            })?;
        Ok(Server {
            path,
            ident: (m.dev(), m.ino()),
            stop,
            thread: Some(thread),
        })
    }

    /// Starts the server as the daemon wants it: on failure, logs why and
    /// runs without it (I/O matters more than `status`).
    pub fn start_logged(ctx: Ctx) -> Option<Server> {
        let path = ctx.socket.clone();
        match Server::start(ctx) {
            Ok(s) => {
                info!(socket = %path.display(), "control socket up (tcmu-prd status, log-level)");
                Some(s)
            }
            Err(e) => {
                error!("no control socket, `tcmu-prd status` will not reach this daemon: {e}");
                None
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept() with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ident);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn serve(listener: &UnixListener, ctx: &Ctx, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = handle(stream, ctx) {
                    debug!("control client: {e}");
                }
            }
            Err(e) => {
                warn!(socket = %ctx.socket.display(), "control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request line: at most `MAX_REQUEST` bytes, up to a newline or
/// the end of the stream, within `CLIENT_IO` in all (a client trickling
/// bytes cannot stretch it).
fn read_request(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + CLIENT_IO;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(i + 1);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(buf); // Request::parse refuses it
        }
    }
}

fn handle(mut stream: UnixStream, ctx: &Ctx) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_IO))?;
    stream.set_write_timeout(Some(CLIENT_IO))?;
    let raw = read_request(&mut stream)?;
    let reply = match Request::parse(&raw) {
        Ok(req) => {
            debug!(request = %req.line().trim_end(), "control request");
            execute(&req, ctx)
        }
        Err(why) => {
            debug!("refused control request: {why}");
            Reply::error(why)
        }
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|e| {
        format!(r#"{{"ok":false,"error":"cannot encode the reply: {e}"}}"#).into_bytes()
    });
    out.push(b'\n');
    stream.write_all(&out)?;
    // Closing with unread input (an oversized request) would reset the
    // connection and could discard the reply before the client reads it:
    // end our side, then drain a bounded amount until the client closes.
    stream.shutdown(std::net::Shutdown::Write)?;
    let deadline = Instant::now() + CLIENT_IO;
    let (mut chunk, mut drained) = ([0u8; 4096], 0u64);
    while drained < DRAIN_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n as u64,
        }
    }
    Ok(())
}

fn execute(req: &Request, ctx: &Ctx) -> Reply {
    match req {
        Request::LogLevel(f) => match crate::logging::set_filter(f) {
            Ok(now) => {
                info!(filter = %now, "log filter changed (tcmu-prd log-level)");
                Reply {
                    ok: true,
                    error: None,
                    status: None,
                    log_filter: Some(now),
                }
            }
            Err(e) => Reply::error(e),
        },
        Request::Status => Reply {
            ok: true,
            error: None,
            status: Some(Box::new(status(ctx))),
            log_filter: None,
        },
    }
}

fn ask_loop(ctx: &Ctx) -> Result<LoopSnap, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    ctx.to_loop
        .send(Query { reply: tx })
        .map_err(|_| "the event loop has stopped".to_owned())?;
    ctx.waker
        .wake()
        .map_err(|e| format!("waking the event loop: {e}"))?;
    rx.recv_timeout(LOOP_BOUND).map_err(|_| {
        format!(
            "the event loop did not answer within {} s: devices not listed",
            LOOP_BOUND.as_secs()
        )
    })
}

/// Builds the whole answer.
fn status(ctx: &Ctx) -> Status {
    let mut warnings = Vec::new();
    let snap = ask_loop(ctx).unwrap_or_else(|e| {
        warnings.push(e);
        LoopSnap {
            devices: Vec::new(),
            stopping: false,
        }
    });
    let cluster_snap = match ctx.sharing.snapshot(CLUSTER_BOUND) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            warnings.push(e);
            None
        }
    };
    let cluster = cluster_status(ctx, cluster_snap.as_ref());
    let locks: HashMap<&str, &crate::cluster::cache::LuLocks> = cluster_snap
        .as_ref()
        .map(|s| s.lus.iter().map(|l| (l.id.as_str(), l)).collect())
        .unwrap_or_default();
    let lus = lus(&snap.devices, &locks);
    Status {
        daemon: DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            config: ctx.config_path.as_ref().map(|p| p.display().to_string()),
            socket: ctx.socket.display().to_string(),
            log_filter: crate::logging::current(),
            uptime_s: ctx.started.elapsed().as_secs(),
            stopping: snap.stopping,
            devices: snap.devices.len(),
        },
        cluster,
        lus,
        warnings,
    }
}

fn cluster_status(
    ctx: &Ctx,
    snap: Option<&crate::cluster::cache::ClusterSnapshot>,
) -> ClusterStatus {
    match ctx.mode {
        ClusterMode::Local => ClusterStatus {
            mode: "local".into(),
            lockspace: None,
            state: "local".into(),
            reason: None,
            local_node: None,
            members: None,
        },
        ClusterMode::Dlm => {
            let (state, reason) = match (
                snap.map(|s| &s.available),
                ctx.sharing.lockspace_stopped_for(),
            ) {
                (Some(Err(why)), _) => ("lost", Some(why.clone())),
                (_, Some((d, why))) => (
                    "stopped",
                    Some(format!("{why}, for {}s: I/O refused", d.as_secs())),
                ),
                (Some(Ok(())), None) => ("joined", None),
                (None, None) => ("unknown", None),
            };
            ClusterStatus {
                mode: "dlm".into(),
                lockspace: Some(ctx.lockspace.clone()),
                state: state.into(),
                reason,
                local_node: local_node(&ctx.configfs),
                members: members(&ctx.configfs, &ctx.lockspace),
            }
        }
    }
}

/// This node's id: the `comms/<id>` entry dlm_controld marked `local`.
fn local_node(configfs: &Path) -> Option<u32> {
    let comms = configfs.join("dlm/cluster/comms");
    std::fs::read_dir(comms).ok()?.flatten().find_map(|e| {
        let local = std::fs::read_to_string(e.path().join("local")).ok()?;
        (local.trim() == "1")
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// The lockspace's members: dlm_controld keeps `spaces/<ls>/nodes/<id>`.
fn members(configfs: &Path, lockspace: &str) -> Option<Vec<u32>> {
    let dir = configfs
        .join("dlm/cluster/spaces")
        .join(lockspace)
        .join("nodes");
    let mut ids: Vec<u32> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    Some(ids)
}

/// Groups devices by the LU they are views of.
fn lus(
    devices: &[DeviceSnap],
    locks: &HashMap<&str, &crate::cluster::cache::LuLocks>,
) -> Vec<LuStatus> {
    let mut groups: Vec<(Arc<Lu>, Vec<&DeviceSnap>)> = Vec::new();
    for d in devices {
        let lu = d.view.lu();
        match groups.iter_mut().find(|(l, _)| Arc::ptr_eq(l, lu)) {
            Some((_, v)) => v.push(d),
            None => groups.push((lu.clone(), vec![d])),
        }
    }
    let mut out: Vec<LuStatus> = groups
        .into_iter()
        .map(|(lu, mut views)| {
            views.sort_by(|a, b| a.name.cmp(&b.name));
            lu_status(&lu, &views, locks)
        })
        .collect();
    out.sort_by(|a, b| a.image.cmp(&b.image));
    out
}

fn mode_name(m: Option<crate::cluster::lockmgr::Mode>) -> Option<String> {
    m.map(|m| m.to_string())
}

fn lu_status(
    lu: &Lu,
    views: &[&DeviceSnap],
    locks: &HashMap<&str, &crate::cluster::cache::LuLocks>,
) -> LuStatus {
    let state = lu.state();
    let ports: Vec<PortStatus> = state
        .ports
        .iter()
        .map(|(name, &rtpi)| PortStatus {
            name: name.clone(),
            rtpi,
        })
        .collect();
    let cfg = lu.scsi().config();
    let views = views
        .iter()
        .map(|d| {
            let (nexus, nexus_problem) = match d.view.nexus_info() {
                NexusInfo::One(n) => (Some(NexusStatus::of(&n, &ports)), None),
                NexusInfo::Missing(why) => (None, Some(why)),
            };
            ViewStatus {
                device: d.name.clone(),
                uio: format!("uio{}", d.minor),
                in_flight: d.in_flight,
                io_uring_commands: d.uring_commands,
                polled: d.polled,
                nexus,
                nexus_problem,
            }
        })
        .collect();
    let cluster = lu.sync().cluster_info().map(|c| {
        let l = locks.get(c.id.as_str());
        LuClusterStatus {
            phase: c.phase.into(),
            refusal: c.refusal,
            lock: l.and_then(|l| mode_name(l.held)),
            lock_pending: l.and_then(|l| mode_name(l.pending)),
            caw_lock: l.and_then(|l| mode_name(l.caw_held)),
            queued_updates: l.map(|l| l.queued_updates),
            tickets: c.tickets,
            dlm_requests: c.dlm_requests,
            state_seq: c.seq,
            lu_id: c.id,
        }
    });
    let block_size = cfg.block_size;
    LuStatus {
        image: lu.image().display().to_string(),
        serial: cfg.identity.serial.clone(),
        naa: cfg
            .identity
            .naa
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        size_bytes: lu.scsi().backing().len(),
        block_size,
        views,
        target_ports: ports.clone(),
        cluster,
        pr: PrStatus::of(&state.pr, &ports),
    }
}

/// Context for the daemon: everything but the loop channel from the config.
pub(super) fn ctx(
    config: &Config,
    config_path: Option<PathBuf>,
    to_loop: Sender<Query>,
    waker: Arc<Waker>,
    sharing: Sharing,
) -> Ctx {
    Ctx {
        to_loop,
        waker,
        sharing,
        mode: config.cluster.mode,
        lockspace: config.cluster.lockspace.0.clone(),
        configfs: config.paths.configfs.clone(),
        config_path,
        socket: config.paths.control_socket.clone(),
        started: Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ClientError, call};
    use crate::lu::state::{Identity, LuState};
    use crate::pr::{self, Registration, TransportId};
    use crate::scsi::{self, LuConfig};

    /// A test LU with one registration, and a view of it.
    fn lu(dir: &Path, name: &str) -> Arc<Lu> {
        let id = Identity::from_random(&[3; 13]);
        let identity = id.lu_identity(None).unwrap();
        let backing = Arc::new(crate::backing::MemBacking::new(1 << 20, 4096));
        let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).unwrap();
        let mut state = LuState::new(id);
        state
            .assign_rtpi("loopback/naa.5001405000000101/tpgt_1")
            .unwrap();
        state.pr.generation = 1;
        state.pr.registrations.push(Registration {
            nexus: nexus(0xa001),
            key: 0xa,
            all_tg_pt: false,
        });
        Arc::new(Lu::for_tests(scsi, state, &dir.join(name)).unwrap())
    }

    fn nexus(a: u64) -> pr::Nexus {
        pr::Nexus {
            initiator: TransportId::Sas {
                address: 0x5001_4050_0000_0000 | a,
            },
            rtpi: 1,
        }
    }

    fn device(lu: &Arc<Lu>, name: &str, minor: u32) -> DeviceSnap {
        let view = Arc::new(View::new(
            lu.clone(),
            name.into(),
            PathBuf::new(),
            PathBuf::new(),
        ));
        DeviceSnap {
            name: name.into(),
            minor,
            in_flight: minor as usize,
            uring_commands: 0,
            polled: 0,
            view,
        }
    }

    #[test]
    fn views_are_grouped_by_lu_with_nexus_and_pr_state() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (lu(dir.path(), "a"), lu(dir.path(), "b"));
        let devs = vec![
            device(&a, "user_1/a-2", 2),
            device(&b, "user_1/b-1", 3),
            device(&a, "user_1/a-1", 1),
        ];
        devs[2]
            .view
            .set_nexus_for_tests(nexus(0xa001), scsi::TargetPort::default());
        let out = lus(&devs, &HashMap::new());
        assert_eq!(out.len(), 2, "two LUs");
        let la = out.iter().find(|l| l.views.len() == 2).unwrap();
        assert_eq!(la.views[0].device, "user_1/a-1", "views sorted by name");
        assert_eq!(la.views[0].uio, "uio1");
        let n = la.views[0].nexus.as_ref().unwrap();
        assert_eq!(n.initiator.name, "naa.500140500000a001");
        assert_eq!(
            n.target_port.as_deref(),
            Some("loopback/naa.5001405000000101/tpgt_1")
        );
        assert_eq!(la.views[1].nexus, None);
        assert_eq!(
            la.views[1].nexus_problem.as_deref(),
            Some("I_T nexus not resolved yet")
        );
        assert_eq!(la.pr.registrations[0].key, "0xa");
        assert_eq!((la.size_bytes, la.block_size), (1 << 20, 512));
        assert!(la.cluster.is_none(), "local mode");
    }

    /// A server on a temporary socket, with a stand-in event loop.
    fn server(dir: &Path) -> (Server, PathBuf) {
        let path = dir.join("run/ctl.sock");
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded::<Query>();
        std::thread::spawn(move || {
            let _poll = poll;
            while let Ok(q) = rx.recv() {
                let _ = q.reply.send(LoopSnap {
                    devices: Vec::new(),
                    stopping: false,
                });
            }
        });
        let mut cfg = Config::default();
        cfg.paths.control_socket = path.clone();
        let s = Server::start(ctx(&cfg, None, tx, waker, Sharing::Local)).unwrap();
        (s, path)
    }

    fn raw(path: &Path, bytes: &[u8]) -> Reply {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        serde_json::from_str(&out).unwrap()
    }

    #[test]
    fn serves_status_refuses_garbage_and_survives_silent_clients() {
        let dir = tempfile::tempdir().unwrap();
        let (server, path) = server(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let r = call(&path, &Request::Status).unwrap();
        let st = r.status.unwrap();
        assert_eq!(st.daemon.pid, std::process::id());
        assert_eq!(st.daemon.devices, 0);
        assert_eq!(st.cluster.mode, "local");
        assert!(st.warnings.is_empty(), "{:?}", st.warnings);
        for garbage in [&b"\x00\x01\x02\n"[..], b"rm -rf /\n", b"", &[b'x'; 10_000]] {
            let r = raw(&path, garbage);
            assert!(!r.ok && r.error.is_some(), "{garbage:?}");
        }
        // A client that connects and says nothing holds the server for at
        // most CLIENT_IO; the next one is answered.
        let _silent = UnixStream::connect(&path).unwrap();
        let t = Instant::now();
        assert!(call(&path, &Request::Status).unwrap().ok);
        assert!(t.elapsed() < CLIENT_IO + Duration::from_secs(2));
        drop(server);
        assert!(!path.exists(), "socket removed on exit");
        assert!(matches!(
            call(&path, &Request::Status),
            Err(ClientError::NotRunning { .. })
        ));
    }

    #[test]
    fn binding_replaces_stale_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        // Stale: bound, then its listener gone.
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(bind(&stale).is_ok());
        // Live: someone answers on it.
        let live = dir.path().join("live.sock");
        let _l = UnixListener::bind(&live).unwrap();
        assert!(matches!(bind(&live), Err(BindError::InUse(_))));
        // Not a socket: left alone.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(bind(&file), Err(BindError::NotSocket(_))));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }

    #[test]
    fn dlm_membership_from_configfs() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path();
        for (id, local) in [("1", "0"), ("2", "1")] {
            std::fs::create_dir_all(c.join("dlm/cluster/comms").join(id)).unwrap();
            std::fs::write(c.join("dlm/cluster/comms").join(id).join("local"), local).unwrap();
        }
        for id in ["2", "1", "junk"] {
            std::fs::create_dir_all(c.join("dlm/cluster/spaces/ls1/nodes").join(id)).unwrap();
        }
        assert_eq!(local_node(c), Some(2));
        assert_eq!(members(c, "ls1"), Some(vec![1, 2]));
        assert_eq!(members(c, "other"), None);
        assert_eq!(local_node(&c.join("none")), None);
    }
}
