//! Corosync's quorum service (libquorum): whether this node belongs to the
//! partition of the cluster that has quorum.
//!
//! Hand-written declarations for the three calls we use (`quorum.h` of
//! corosync 3; `quorum_handle_t` is a `uint64_t`, `cs_error_t` an int enum
//! with `CS_OK = 1`). A handle is a plain number that libquorum looks up in
//! its own table on every call, so [`Quorum`] may move between threads.

use std::ffi::c_int;
use std::fmt;

/// `quorum_callbacks_t`: one notification function, unused (we poll).
#[repr(C)]
struct Callbacks {
    notify: Option<unsafe extern "C" fn()>,
}

#[link(name = "quorum")]
unsafe extern "C" {
    fn quorum_initialize(
        handle: *mut u64,
        callbacks: *mut Callbacks,
        quorum_type: *mut u32,
    ) -> c_int;
    fn quorum_getquorate(handle: u64, quorate: *mut c_int) -> c_int;
    fn quorum_finalize(handle: u64) -> c_int;
}

const CS_OK: c_int = 1;
const CS_ERR_TRY_AGAIN: c_int = 6;

/// A corosync error code (`cs_error_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsError(pub i32);

impl CsError {
    /// CS_ERR_TRY_AGAIN: corosync is busy (e.g. forming a membership).
    #[must_use]
    pub fn is_try_again(self) -> bool {
        self.0 == CS_ERR_TRY_AGAIN
    }
}

impl fmt::Display for CsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            2 => "CS_ERR_LIBRARY: corosync is not running or refuses the connection",
            6 => "CS_ERR_TRY_AGAIN",
            9 => "CS_ERR_BAD_HANDLE",
            11 => "CS_ERR_ACCESS",
            _ => "corosync error",
        };
        write!(f, "{name} ({})", self.0)
    }
}

impl std::error::Error for CsError {}

/// A connection to corosync's quorum service.
#[derive(Debug)]
pub struct Quorum {
    handle: u64,
    provider: bool,
}

impl Quorum {
    /// Connects to the local corosync.
    pub fn connect() -> Result<Self, CsError> {
        let mut handle = 0u64;
        let mut cb = Callbacks { notify: None };
        let mut kind = 0u32;
        // SAFETY: every pointer is to a live local of the declared type for
        // the whole call; libquorum copies the (empty) callbacks.
        let rc = unsafe { quorum_initialize(&raw mut handle, &raw mut cb, &raw mut kind) };
        if rc != CS_OK {
            return Err(CsError(rc));
        }
        Ok(Quorum {
            handle,
            provider: kind != 0,
        })
    }

    /// Whether a quorum provider (votequorum) is configured; without one
    /// corosync reports every partition quorate.
    #[must_use]
    pub fn has_provider(&self) -> bool {
        self.provider
    }

    /// Whether this node's partition is quorate now.
    pub fn quorate(&self) -> Result<bool, CsError> {
        let mut q: c_int = 0;
        // SAFETY: `self.handle` came from quorum_initialize and is finalized
        // only in Drop; `q` is a live local.
        let rc = unsafe { quorum_getquorate(self.handle, &raw mut q) };
        if rc != CS_OK {
            return Err(CsError(rc));
        }
        Ok(q != 0)
    }
}

impl Drop for Quorum {
    fn drop(&mut self) {
        // SAFETY: the handle is live and not used after this.
        unsafe { quorum_finalize(self.handle) };
    }
}
