//! The TCMU command ring: the mailbox, command entries and data area that the
//! kernel shares with us through `/dev/uioN` (DESIGN.md §1).
//!
//! All `unsafe` of the daemon lives in this module. The layering follows
//! io-uring's squeue/cqueue:
//!
//! - [`mapping`]: where the memory comes from ([`Region`]: a uio mmap or a
//!   heap buffer for the simulated kernel), mailbox validation, and bounds-
//!   checked volatile access by offset. Nothing above it touches pointers,
//!   except the data-area slices of an [`InFlightCmd`].
//! - [`entry`]: decoding one kernel-written entry into a command, a TMR or a
//!   named error, every offset and count checked.
//! - [`cmd`]: the owned, `Send` token for a command in flight and its
//!   [`Response`].
//! - [`queue`]: [`Ring`], which reads entries up to `cmd_head`, writes
//!   completions at `cmd_tail` and publishes them in batches.
//! - [`uring`]: READ/WRITE data moved by the kernel's io_uring straight
//!   between a command's data-area pages and the backing file, the command
//!   kept until its completion.
//! - `sim` (tests, feature `sim`): a simulated 6.1 kernel.
//!
//! # How the kernel consumes completions (6.1, `tcmu_handle_completions`)
//!
//! On every 4-byte `write()` to the uio fd the kernel walks its private
//! `cmdr_last_cleaned` forward until it equals `mailbox.cmd_tail`. At each
//! position it reads the entry header there: a PAD or TMR entry is skipped by
//! its own length; anything else is treated as a CMD, and the command it
//! completes is looked up by the entry's *current* `hdr.cmd_id`; it reads
//! `hdr.uflags`, `rsp.scsi_status`, `rsp.read_len` and `rsp.sense_buffer`
//! from that entry and then advances by the entry's *own* `len_op` length. An
//! unknown id marks the ring broken for good.
//!
//! So with OOOC a CMD slot is just a mailbox for "some" completion: we write
//! the finished command's id and response into the oldest unconsumed CMD slot
//! (never touching `len_op`), and move our tail over it and over any PAD/TMR
//! entries that follow. The number of CMD slots between tail and our read
//! position always equals the number of commands in flight, so a finished
//! command always finds a slot and the tail only stops at a CMD slot whose
//! command is still running. The tail never passes an entry we have not read.

pub mod cmd;
pub mod entry;
pub mod mapping;
pub mod queue;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;
pub mod uring;

pub use cmd::{InFlightCmd, Response};
pub use entry::{EntryError, TmrEvent, TmrType, cdb_len};
pub use mapping::{Doorbell, Flags, HeapRegion, Mapping, Region, StartState, UioFd};
pub use queue::{Event, HeadWatch, Ring};

/// SAM status codes the ring itself produces.
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION: sense data follows.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// BUSY: the initiator retries.
    pub const BUSY: u8 = 0x08;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Why the mapping or the ring cannot be used, or a completion was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `open`, `mmap`, `read` or `write` on the uio device failed.
    #[error("{what}")]
    Io {
        /// Which call on which object.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A mailbox field is not what a 6.1-style TCMU mailbox must hold.
    #[error("mailbox {field} = {value:#x}: {problem}")]
    Mailbox {
        /// The field, as named in `struct tcmu_mailbox`.
        field: &'static str,
        /// The value read.
        value: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The completion names a command that this ring does not have in flight.
    #[error("command {cmd_id} is not in flight on this ring")]
    NotInFlight {
        /// The command's id.
        cmd_id: u16,
    },
    /// No unconsumed CMD slot is left for a completion: an internal invariant
    /// failed (reported instead of corrupting the ring).
    #[error("no ring slot left for the completion of command {cmd_id}")]
    NoSlot {
        /// The command's id.
        cmd_id: u16,
    },
}
