//! `tcmu-prd check-dlm`: proves the DLM works for us on this node.
//!
//! Joins a lockspace, then on one resource: takes EX and writes an LVB,
//! down-converts to NL (which publishes the LVB), reads it back through a
//! second lock in PR, checks that a queued EX request raises a blocking AST
//! on the PR holder, and that the EX is granted once the holder steps down.
//! Two locks in one process are two holders to the DLM, as two nodes are.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dlm_sys::{LVB_LEN, LockFlags, Lockspace, Mode};
use tracing::info;

/// What the self-check found.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A step failed; `step` says which.
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: dlm_sys::Error,
    },
    /// The LVB read back differs from the one written.
    #[error(
        "LVB read back in PR differs from the one written in EX (wrote {wrote:02x?}, read {read:02x?})"
    )]
    LvbMismatch {
        wrote: [u8; LVB_LEN],
        read: [u8; LVB_LEN],
    },
    /// Something the DLM must do did not happen.
    #[error("{0}")]
    Semantics(String),
    /// The whole check ran past its bound (for example: waiting for quorum).
    #[error(
        "no answer within {0:?} (joining a lockspace waits for quorum: check `corosync-quorumtool` and `dlm_tool status`)"
    )]
    TimedOut(Duration),
}

const FLAGS_VAL: LockFlags = LockFlags {
    noqueue: false,
    valblk: true,
    quecvt: false,
};

/// Runs the check against lockspace `lockspace`, bounded by `timeout`. The
/// work runs on its own thread so that a DLM that never answers (no quorum)
/// still ends in a clear error.
pub fn check_dlm(configfs: &Path, lockspace: &str, timeout: Duration) -> Result<(), CheckError> {
    dlm_sys::check_node(configfs).map_err(|source| CheckError::Step {
        step: "node prerequisites",
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    let name = lockspace.to_owned();
    let step_timeout = timeout;
    std::thread::Builder::new()
        .name("dlm-selftest".into())
        .spawn(move || {
            let _ = tx.send(run(&name, step_timeout));
        })
        .map_err(|e| CheckError::Semantics(format!("spawning the check thread: {e}")))?;
    // Allow the steps their own bound plus the lockspace join.
    match rx.recv_timeout(timeout * 2) {
        Ok(r) => r,
        Err(_) => Err(CheckError::TimedOut(timeout * 2)),
    }
}

fn step<T>(step: &'static str, r: Result<T, dlm_sys::Error>) -> Result<T, CheckError> {
    r.map_err(|source| CheckError::Step { step, source })
}

fn pattern() -> [u8; LVB_LEN] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut lvb = [0u8; LVB_LEN];
    lvb[..16].copy_from_slice(&nanos.to_le_bytes());
    lvb[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    lvb[20..].copy_from_slice(b"tcmu-prd-lvb");
    lvb
}

fn run(lockspace: &str, t: Duration) -> Result<(), CheckError> {
    let start = Instant::now();
    let ls = step("creating lockspace", Lockspace::create(lockspace))?;
    info!(lockspace, fd = ls.fd(), elapsed = ?start.elapsed(), "joined lockspace");

    // Per process, so that checks running at once on other nodes do not
    // overwrite each other's LVB.
    let resource = format!("tcmu-prd:selftest:{}:{}", hostname(), std::process::id());
    let mut writer = step("new lock", ls.lock(resource.as_bytes()))?;
    step("EX lock", writer.wait(Mode::Ex, FLAGS_VAL, t))?;
    let wrote = pattern();
    writer.set_lvb(&wrote);
    step(
        "EX -> NL down-conversion (writes the LVB)",
        writer.wait(Mode::Nl, FLAGS_VAL, t),
    )?;
    info!(
        lockspace,
        "wrote LVB under EX and published it by converting to NL"
    );

    let mut reader = step("new lock", ls.lock(resource.as_bytes()))?;
    step("PR lock", reader.wait(Mode::Pr, FLAGS_VAL, t))?;
    let read = reader.lvb();
    if read != wrote {
        return Err(CheckError::LvbMismatch { wrote, read });
    }
    if reader.lvb_invalid() {
        return Err(CheckError::Semantics(
            "LVB flagged VALNOTVALID though its writer is alive".into(),
        ));
    }
    info!(lockspace, "read the LVB back under PR");

    // EX with NOQUEUE must be refused while PR is held.
    match writer.wait(
        Mode::Ex,
        LockFlags {
            noqueue: true,
            ..FLAGS_VAL
        },
        t,
    ) {
        Err(dlm_sys::Error::WouldBlock) => {}
        Ok(_) => {
            return Err(CheckError::Semantics(
                "EX granted while another holder has PR".into(),
            ));
        }
        Err(e) => {
            return Err(CheckError::Step {
                step: "EX NOQUEUE conversion",
                source: e,
            });
        }
    }
    // A queued EX must raise a blocking AST on the PR holder, and be granted
    // once it converts down.
    step("queue EX conversion", writer.request(Mode::Ex, FLAGS_VAL))?;
    let deadline = Instant::now() + t;
    while !reader.take_blocking() {
        if Instant::now() >= deadline {
            return Err(CheckError::Semantics(
                "no blocking AST reached the PR holder".into(),
            ));
        }
        step("dispatch", ls.poll_dispatch(Duration::from_millis(100)))?;
    }
    if !writer.is_pending() {
        return Err(CheckError::Semantics(
            "EX granted before the PR holder stepped down".into(),
        ));
    }
    step(
        "PR -> NL after blocking AST",
        reader.wait(Mode::Nl, FLAGS_VAL, t),
    )?;
    while writer.is_pending() {
        if Instant::now() >= deadline {
            return Err(CheckError::Semantics(
                "queued EX not granted after the PR holder stepped down".into(),
            ));
        }
        step("dispatch", ls.poll_dispatch(Duration::from_millis(100)))?;
    }
    step("queued EX grant", writer.complete())?;
    info!(
        lockspace,
        "blocking AST delivered; queued EX granted after PR -> NL"
    );

    step("unlock", writer.unlock(t))?;
    step("unlock", reader.unlock(t))?;
    drop((writer, reader));
    step("leaving lockspace", ls.release(false))?;
    info!(lockspace, elapsed = ?start.elapsed(), "DLM self-check passed");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
