//! The `local` lock manager: the same protocol in one process, for a single
//! node without corosync (the default when no cluster is configured).
//!
//! The state cache opens one lock per resource and serializes its local
//! users itself, so nothing here ever waits: every request is granted at
//! once. LVBs still follow the DLM's rules (see `lockmgr::lvb_op`), so the
//! cache runs exactly the code it runs on the DLM.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::lockmgr::{
    Event, Grant, LVB_LEN, LmError, LockFlags, LockId, LockManager, Mode, lvb_op,
};

#[derive(Debug)]
struct LocalLock {
    res: Vec<u8>,
    granted: Option<Mode>,
    lvb: [u8; LVB_LEN],
}

/// A lock manager for one process.
#[derive(Debug, Default)]
pub struct Local {
    locks: HashMap<u64, LocalLock>,
    lvbs: HashMap<Vec<u8>, [u8; LVB_LEN]>,
    next: u64,
    events: Vec<Event>,
}

impl Local {
    /// A new, empty lock manager.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl LockManager for Local {
    fn open(&mut self, resource: &[u8]) -> Result<LockId, LmError> {
        if resource.is_empty() || resource.len() > dlm_sys::RESOURCE_NAME_MAX {
            return Err(LmError::Invalid("resource name length"));
        }
        self.next += 1;
        self.locks.insert(
            self.next,
            LocalLock {
                res: resource.to_vec(),
                granted: None,
                lvb: [0; LVB_LEN],
            },
        );
        Ok(LockId(self.next))
    }

    fn request(
        &mut self,
        lock: LockId,
        mode: Mode,
        flags: LockFlags,
        lvb: Option<&[u8; LVB_LEN]>,
    ) -> Result<(), LmError> {
        let l = self
            .locks
            .get_mut(&lock.0)
            .ok_or(LmError::Invalid("no such lock"))?;
        if let Some(v) = lvb {
            l.lvb = *v;
        }
        let res = self.lvbs.entry(l.res.clone()).or_insert([0; LVB_LEN]);
        if flags.valblk {
            match lvb_op(l.granted, mode) {
                Some(true) => l.lvb = *res,
                Some(false) => *res = l.lvb,
                None => {}
            }
        }
        l.granted = Some(mode);
        self.events.push(Event::Completed {
            lock,
            result: Ok(Grant {
                mode,
                lvb: l.lvb,
                lvb_invalid: false,
            }),
        });
        Ok(())
    }

    fn cancel(&mut self, _lock: LockId) -> Result<(), LmError> {
        Ok(()) // nothing is ever pending
    }

    fn close(&mut self, lock: LockId) {
        if let Some(l) = self.locks.remove(&lock.0)
            && matches!(l.granted, Some(Mode::Pw | Mode::Ex))
        {
            self.lvbs.insert(l.res, l.lvb);
        }
    }

    fn poll(&mut self, events: &mut Vec<Event>) {
        events.append(&mut self.events);
    }

    fn wait(&mut self, wake: &UnixStream, timeout: Duration) {
        if !self.events.is_empty() {
            return;
        }
        let _ = wake.set_nonblocking(false);
        let _ = wake.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        let mut b = [0u8; 64];
        let _ = (&*wake).read(&mut b);
    }
}
