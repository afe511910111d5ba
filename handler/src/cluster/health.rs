//! Whether the kernel's lockspace is running, watched from sysfs.
//!
//! When dlm_controld dies, the kernel stops every lockspace ("dlm: <ls>: no
//! userland control daemon, stopping lockspace"); dlm_controld also stops a
//! lockspace while cluster membership changes and keeps it stopped until
//! recovery can run (quorum regained, failed nodes fenced). A stopped
//! lockspace grants nothing and blocks even cancels, but the locks this node
//! holds stay granted, so a node serving from its cached state would keep
//! serving while nobody can tell whether the rest of the cluster has moved
//! on. `/sys/kernel/dlm/<lockspace>/recover_status` shows it: the kernel
//! clears it when it stops the lockspace (`dlm_ls_stop`) and sets
//! `DLM_RS_DONE` (0x40) once this node's part of recovery has finished.
//! The `*_ALL` bits (`DLM_RS_DONE_ALL`, 0x80) are set only on the node with
//! the lowest node id (fs/dlm/recover.c `wait_status`; the others poll that
//! node instead), so they must not be what "running" means. (The two-guest
//! VM tier records both nodes' values: node 1, the lowest, shows `ff`; `0`
//! after dlm_controld was killed.)
//!
//! A watchdog thread reads that file every [`EVERY`] and keeps a [`Health`]
//! every command checks with one atomic load. A stop shorter than the grace
//! (the update timeout) answers BUSY, like a slow peer: an ordinary
//! membership change should not fail paths. A longer one answers NOT READY
//! 04h/03h, like a lost lockspace: this node is out of the cluster and
//! multipath should use another. Once the lockspace runs again, the locks
//! this node kept are still valid (no other node can have changed the state
//! while we held PR), so serving resumes without a restart.
//!
//! The same thread asks corosync's quorum service whether this node's
//! partition is quorate. dlm_controld stops lockspaces on membership
//! changes, not on a loss of quorum alone (expected votes raised, or a
//! partition that keeps its members but not the majority); a node without
//! quorum must not serve from state it cannot prove current, so an
//! inquorate partition, or a corosync that does not answer, counts as a
//! stop too (same grace, same answers), with its own reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::cache::ClusterError;

/// How often the watchdog reads `recover_status`.
pub const EVERY: Duration = Duration::from_millis(500);
/// `DLM_RS_DONE`: this node finished recovery; the lockspace runs (or is
/// about to, once every node is done).
pub const DONE: u32 = 0x40;

/// What `recover_status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Recovery done: the lockspace runs.
    Running,
    /// Stopped or recovering, with the raw status.
    Stopped(u32),
    /// No such lockspace in the kernel (not joined yet, or left): the
    /// cluster thread's own join/loss handling covers it.
    Absent,
    /// The file exists but does not read as a hex number.
    Unreadable(String),
    /// The lockspace runs (or is absent) but this node's partition has no
    /// quorum, or corosync does not answer; the reason says which.
    Inquorate(String),
}

impl Probe {
    fn stop_reason(&self, lockspace: &str) -> Option<String> {
        match self {
            Probe::Stopped(_) => Some(format!(
                "lockspace {lockspace} stopped by the kernel (dlm_controld gone, or quorum or \
                 fencing awaited)"
            )),
            Probe::Inquorate(why) => Some(why.clone()),
            _ => None,
        }
    }
}

/// What corosync's quorum service says, for [`Probe::Inquorate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumSeen {
    /// Quorate (or no quorum provider configured).
    Quorate,
    /// Not quorate, or corosync unreachable: why.
    Not(String),
    /// No answer this time (corosync busy): keep what was known.
    Unknown,
}

/// Asks corosync, connecting first if needed (a failed call drops the
/// connection so that the next one reconnects after a corosync restart).
pub fn quorum(conn: &mut Option<dlm_sys::quorum::Quorum>) -> QuorumSeen {
    if conn.is_none() {
        match dlm_sys::quorum::Quorum::connect() {
            Ok(q) => *conn = Some(q),
            Err(e) if e.is_try_again() => return QuorumSeen::Unknown,
            Err(e) => return QuorumSeen::Not(format!("corosync does not answer ({e})")),
        }
    }
    let Some(q) = conn.as_ref() else {
        return QuorumSeen::Unknown;
    };
    match q.quorate() {
        Ok(true) => QuorumSeen::Quorate,
        Ok(false) => QuorumSeen::Not(
            "this node's cluster partition has no quorum (corosync votequorum)".into(),
        ),
        Err(e) if e.is_try_again() => QuorumSeen::Unknown,
        Err(e) => {
            *conn = None;
            QuorumSeen::Not(format!("corosync does not answer ({e})"))
        }
    }
}

/// Combines the lockspace's probe with what corosync says: a stopped
/// lockspace first, then quorum. `None`: no new information.
#[must_use]
pub fn combine(p: Probe, q: &QuorumSeen) -> Option<Probe> {
    match (p, q) {
        (p @ (Probe::Stopped(_) | Probe::Unreadable(_)), _) => Some(p),
        (_, QuorumSeen::Not(why)) => Some(Probe::Inquorate(why.clone())),
        (_, QuorumSeen::Unknown) => None,
        (p, QuorumSeen::Quorate) => Some(p),
    }
}

/// Parses the file's text (`ff\n`, hex without prefix).
pub fn parse(text: &str) -> Result<u32, String> {
    let t = text.trim();
    u32::from_str_radix(t, 16).map_err(|_| format!("recover_status {t:?} is not a hex number"))
}

/// Reads `<sysfs>/kernel/dlm/<lockspace>/recover_status`.
#[must_use]
pub fn probe(sysfs: &Path, lockspace: &str) -> Probe {
    let f = sysfs
        .join("kernel/dlm")
        .join(lockspace)
        .join("recover_status");
    match std::fs::read_to_string(&f) {
        Ok(t) => match parse(&t) {
            Ok(s) if s & DONE != 0 => Probe::Running,
            Ok(s) => Probe::Stopped(s),
            Err(e) => Probe::Unreadable(format!("{}: {e}", f.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::Absent,
        Err(e) => Probe::Unreadable(format!("{}: {e}", f.display())),
    }
}

/// The lockspace's health as commands see it.
#[derive(Debug)]
pub struct Health {
    stopped: AtomicBool,
    /// Since when, and why, while stopped.
    since: Mutex<Option<(Instant, String)>>,
    grace: Duration,
    lockspace: String,
}

impl Health {
    /// Healthy, with `grace` before a stop counts as leaving the cluster.
    #[must_use]
    pub fn new(lockspace: &str, grace: Duration) -> Self {
        Health {
            stopped: AtomicBool::new(false),
            since: Mutex::new(None),
            grace,
            lockspace: lockspace.to_owned(),
        }
    }

    /// For a command: `Ok` while the lockspace runs; BUSY during a short
    /// stop, NOT READY (`Unavailable`) once it has lasted the grace.
    pub fn check(&self) -> Result<(), ClusterError> {
        if !self.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), ClusterError> {
        let since = self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*since {
            None => Ok(()),
            Some((t, _)) if now.duration_since(*t) < self.grace => Err(ClusterError::Busy),
            Some((t, why)) => Err(ClusterError::Unavailable(format!(
                "{why}, for {}s",
                now.duration_since(*t).as_secs()
            ))),
        }
    }

    /// `None` while running, else how long it has been stopped and why.
    #[must_use]
    pub fn stopped_for(&self) -> Option<(Duration, String)> {
        self.since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(t, why)| (t.elapsed(), why.clone()))
    }

    /// Applies a probe; returns the transition, if any, for the log.
    pub fn apply(&self, p: &Probe, now: Instant) -> Option<bool> {
        let mut since = self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reason = p.stop_reason(&self.lockspace);
        let stopped = reason.is_some();
        let was = since.is_some();
        match (reason, since.as_mut()) {
            (Some(why), None) => *since = Some((now, why)),
            // Still stopped, perhaps for another reason now: keep the start.
            (Some(why), Some((_, old))) => *old = why,
            (None, _) => *since = None,
        }
        self.stopped.store(stopped, Ordering::Release);
        (stopped != was).then_some(stopped)
    }
}

/// Starts the watchdog: reads `recover_status` every [`EVERY`] until the
/// health is dropped.
pub fn watch(health: &Arc<Health>, sysfs: PathBuf) -> std::io::Result<()> {
    let weak: Weak<Health> = Arc::downgrade(health);
    std::thread::Builder::new()
        .name("tcmu-prd-dlmwatch".into())
        .spawn(move || {
            let mut unreadable_logged = false;
            let mut corosync = None;
            loop {
                std::thread::sleep(EVERY);
                let Some(h) = weak.upgrade() else { return };
                let Some(p) = combine(probe(&sysfs, &h.lockspace), &quorum(&mut corosync)) else {
                    continue;
                };
                if let Probe::Unreadable(why) = &p {
                    if !unreadable_logged {
                        warn!(lockspace = %h.lockspace, "cannot watch the lockspace's recovery state: {why}");
                        unreadable_logged = true;
                    }
                    continue;
                }
                match (h.apply(&p, Instant::now()), &p) {
                    (Some(true), Probe::Stopped(s)) => error!(
                        lockspace = %h.lockspace,
                        recover_status = format!("{s:#x}"),
                        grace_ms = u64::try_from(h.grace.as_millis()).unwrap_or(u64::MAX),
                        "DLM lockspace stopped by the kernel (dlm_controld gone, or membership \
                         changing): commands get BUSY, then NOT READY after the grace"
                    ),
                    (Some(true), Probe::Inquorate(why)) => error!(
                        lockspace = %h.lockspace,
                        reason = %why,
                        grace_ms = u64::try_from(h.grace.as_millis()).unwrap_or(u64::MAX),
                        "no cluster quorum: commands get BUSY, then NOT READY after the grace"
                    ),
                    (Some(false), _) => info!(
                        lockspace = %h.lockspace,
                        "DLM lockspace running again: serving"
                    ),
                    _ => {}
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_status_parses_and_garbage_is_an_error() {
        assert_eq!(parse("ff\n"), Ok(0xff));
        assert_eq!(parse("0"), Ok(0));
        for bad in ["", "zz", "0x80", "-1", "ffffffffff"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn probe_reads_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let ls = dir.path().join("kernel/dlm/tcmu-prd");
        assert_eq!(probe(dir.path(), "tcmu-prd"), Probe::Absent);
        std::fs::create_dir_all(&ls).unwrap();
        std::fs::write(ls.join("recover_status"), "ff\n").unwrap();
        assert_eq!(probe(dir.path(), "tcmu-prd"), Probe::Running);
        std::fs::write(ls.join("recover_status"), "0\n").unwrap();
        assert_eq!(probe(dir.path(), "tcmu-prd"), Probe::Stopped(0));
        // A node other than the lowest id never sets the *_ALL bits.
        std::fs::write(ls.join("recover_status"), "55\n").unwrap();
        assert_eq!(probe(dir.path(), "tcmu-prd"), Probe::Running);
        // Recovery under way: directory done, locks not yet.
        std::fs::write(ls.join("recover_status"), "f\n").unwrap();
        assert_eq!(probe(dir.path(), "tcmu-prd"), Probe::Stopped(0xf));
        std::fs::write(ls.join("recover_status"), "what\n").unwrap();
        assert!(matches!(
            probe(dir.path(), "tcmu-prd"),
            Probe::Unreadable(_)
        ));
    }

    #[test]
    fn quorum_combines_with_the_lockspace_probe() {
        let not = QuorumSeen::Not("no quorum".into());
        // A stopped lockspace says more than quorum does.
        assert_eq!(combine(Probe::Stopped(0), &not), Some(Probe::Stopped(0)));
        assert_eq!(
            combine(Probe::Running, &not),
            Some(Probe::Inquorate("no quorum".into()))
        );
        assert_eq!(
            combine(Probe::Absent, &not),
            Some(Probe::Inquorate("no quorum".into()))
        );
        assert_eq!(
            combine(Probe::Running, &QuorumSeen::Quorate),
            Some(Probe::Running)
        );
        // No answer from corosync: nothing new.
        assert_eq!(combine(Probe::Running, &QuorumSeen::Unknown), None);
        assert_eq!(
            combine(Probe::Stopped(1), &QuorumSeen::Unknown),
            Some(Probe::Stopped(1))
        );
    }

    #[test]
    fn quorum_loss_is_a_stop_with_its_own_reason_and_keeps_its_start() {
        let h = Health::new("ls", Duration::from_secs(10));
        let t0 = Instant::now();
        let q = Probe::Inquorate("this node's cluster partition has no quorum".into());
        assert_eq!(h.apply(&q, t0), Some(true));
        assert_eq!(
            h.check_at(t0 + Duration::from_secs(1)),
            Err(ClusterError::Busy)
        );
        // The lockspace stops too: same stop, new reason, same start.
        assert_eq!(
            h.apply(&Probe::Stopped(0), t0 + Duration::from_secs(5)),
            None
        );
        let e = h.check_at(t0 + Duration::from_secs(11)).unwrap_err();
        assert!(
            matches!(&e, ClusterError::Unavailable(w) if w.contains("lockspace ls stopped") && w.contains("for 11s")),
            "{e}"
        );
        assert_eq!(h.apply(&q, t0 + Duration::from_secs(12)), None);
        let e = h.check_at(t0 + Duration::from_secs(12)).unwrap_err();
        assert!(
            matches!(&e, ClusterError::Unavailable(w) if w.contains("no quorum")),
            "{e}"
        );
        assert!(h.stopped_for().unwrap().1.contains("no quorum"));
        assert_eq!(
            h.apply(&Probe::Running, t0 + Duration::from_secs(13)),
            Some(false)
        );
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn a_short_stop_is_busy_a_long_one_not_ready_and_running_again_serves() {
        let h = Health::new("ls", Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(h.check(), Ok(()));
        assert_eq!(h.apply(&Probe::Running, t0), None);
        assert_eq!(h.apply(&Probe::Stopped(0), t0), Some(true));
        assert_eq!(
            h.apply(&Probe::Stopped(0), t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            h.check_at(t0 + Duration::from_secs(3)),
            Err(ClusterError::Busy)
        );
        let e = h.check_at(t0 + Duration::from_secs(11)).unwrap_err();
        assert!(
            matches!(&e, ClusterError::Unavailable(w) if w.contains("lockspace ls stopped")),
            "{e}"
        );
        assert_eq!(
            e.scsi(),
            super::super::cache::ScsiFailure::NotReady { asc: 4, ascq: 3 }
        );
        // Absent (the cluster thread's business) and running both clear it.
        assert_eq!(
            h.apply(&Probe::Absent, t0 + Duration::from_secs(12)),
            Some(false)
        );
        assert_eq!(h.check(), Ok(()));
        assert_eq!(h.stopped_for(), None);
    }
}
