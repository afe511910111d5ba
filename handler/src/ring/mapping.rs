//! The memory shared with the kernel: its source ([`Region`]), the validated
//! mailbox ([`Mapping`]) and bounds-checked volatile access by offset.

use std::alloc::{self, Layout};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use tcmu_sys::{
    TCMU_CMD_ENTRY_SIZE, TCMU_MAILBOX_FLAG_CAP_KEEP_BUF, TCMU_MAILBOX_FLAG_CAP_OOOC,
    TCMU_MAILBOX_FLAG_CAP_READ_LEN, TCMU_MAILBOX_FLAG_CAP_TMR, TCMU_MAILBOX_VERSION, TCMU_OP_ALIGN,
    tcmu_mailbox,
};

use super::Error;

/// Memory that holds a TCMU mapping.
///
/// # Safety
///
/// `as_ptr()` must be non-null, 64-byte aligned and valid for reads and
/// writes of `len()` bytes for as long as the value lives, and both must
/// return the same values on every call. The memory may be written
/// concurrently by the kernel; it is only ever accessed through raw pointers,
/// atomics and volatile operations, plus the data-area slices whose
/// exclusivity [`InFlightCmd`](super::InFlightCmd) argues.
pub unsafe trait Region: Send + Sync + fmt::Debug {
    /// Start of the memory.
    fn as_ptr(&self) -> *mut u8;
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty (never true for a usable mapping).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A zeroed, 64-byte-aligned heap buffer standing in for the uio mapping
/// (simulated kernel, fuzzing).
#[derive(Debug)]
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl HeapRegion {
    /// Allocates `len` zeroed bytes aligned to 64 (the mailbox alignment).
    ///
    /// # Panics
    ///
    /// If `len` is 0 or too large for a `Layout` (a test-setup error).
    #[must_use]
    pub fn zeroed(len: usize) -> Self {
        assert!(len > 0, "a mapping cannot be empty");
        let layout = Layout::from_size_align(len, 64).expect("mapping size fits a Layout");
        // SAFETY: the layout has a non-zero size, checked just above.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        HeapRegion { ptr, layout }
    }

    /// A region holding a copy of `bytes`.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let r = HeapRegion::zeroed(bytes.len());
        // SAFETY: the fresh allocation is `bytes.len()` long and cannot overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), r.ptr.as_ptr(), bytes.len()) };
        r
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: the allocation is owned by this value and only accessed through
// raw pointers, atomics and volatile operations, like kernel-shared memory.
unsafe impl Send for HeapRegion {}
// SAFETY: as for Send: no `&`/`&mut` to the bytes is handed out by the region itself.
unsafe impl Sync for HeapRegion {}

// SAFETY: the allocation is 64-aligned, `layout.size()` long and lives until drop.
unsafe impl Region for HeapRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

/// A `MAP_SHARED` mapping of a uio device's map0, unmapped on drop.
#[derive(Debug)]
struct UioMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for UioMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing refers to the
        // mapping any more: Mapping, Ring and every InFlightCmd hold it through an Arc.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is process-wide memory; access goes through raw pointers only.
unsafe impl Send for UioMap {}
// SAFETY: as for Send.
unsafe impl Sync for UioMap {}

// SAFETY: mmap returns page-aligned memory of `len` bytes that stays mapped until drop.
unsafe impl Region for UioMap {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// How the ring tells the kernel that `cmd_tail` moved.
pub trait Doorbell: Send + fmt::Debug {
    /// Wakes the kernel so it consumes completions (one call per batch).
    ///
    /// # Errors
    ///
    /// The OS error of the notification.
    fn notify(&self) -> io::Result<()>;
}

impl<T: Doorbell + Sync + ?Sized> Doorbell for Arc<T> {
    fn notify(&self) -> io::Result<()> {
        (**self).notify()
    }
}

/// An open `/dev/uioN`: source of the mapping, of wake-ups (readable when new
/// entries arrive) and the doorbell for completions. Only one process may
/// have a TCMU uio device open.
#[derive(Debug)]
pub struct UioFd {
    file: File,
}

impl UioFd {
    /// Opens the device read-write (close-on-exec).
    ///
    /// # Errors
    ///
    /// The open error (EBUSY when another process has it open).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Io {
                what: "opening the uio device",
                source,
            })?;
        Ok(UioFd { file })
    }

    /// Maps exactly `len` bytes (`maps/map0/size`) at offset 0, shared and
    /// read-write, and validates the mailbox.
    ///
    /// # Errors
    ///
    /// mmap failure or an invalid mailbox.
    pub fn map(&self, len: usize) -> Result<Mapping, Error> {
        // SAFETY: a fresh shared mapping at a kernel-chosen address cannot alias any Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Io {
                what: "mapping the uio device",
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Mailbox {
            field: "mmap address",
            value: 0,
            problem: "mmap returned NULL",
        })?;
        Mapping::new(Box::new(UioMap { ptr, len }))
    }

    /// Makes `wait` return `WouldBlock` instead of sleeping, for an event
    /// loop that reads the fd only when it polls readable.
    ///
    /// # Errors
    ///
    /// The fcntl error.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(&self.file)?;
        rustix::fs::fcntl_setfl(&self.file, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(())
    }

    /// Consumes one wake-up: reads exactly 4 bytes (the uio event count).
    /// Returns `WouldBlock` on a non-blocking fd with nothing pending.
    ///
    /// # Errors
    ///
    /// The read error, or a short read.
    pub fn wait(&self) -> io::Result<u32> {
        let mut buf = [0u8; 4];
        let n = (&self.file).read(&mut buf)?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("uio read returned {n} bytes, expected 4"),
            ));
        }
        Ok(u32::from_ne_bytes(buf))
    }
}

impl AsFd for UioFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Doorbell for UioFd {
    /// Writes 4 bytes: the kernel's `irqcontrol` then runs `tcmu_handle_completions`.
    fn notify(&self) -> io::Result<()> {
        let n = (&self.file).write(&1u32.to_ne_bytes())?;
        if n == 4 {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("uio write took {n} bytes, expected 4"),
            ))
        }
    }
}

/// The mailbox capability flags (DESIGN.md §1: 0xf on 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags(pub u16);

impl Flags {
    fn has(self, bit: u32) -> bool {
        u32::from(self.0) & bit != 0
    }
    /// Out-of-order completion: required by this ring.
    #[must_use]
    pub fn oooc(self) -> bool {
        self.has(TCMU_MAILBOX_FLAG_CAP_OOOC)
    }
    /// The kernel honours `rsp.read_len` with `TCMU_UFLAG_READ_LEN`.
    #[must_use]
    pub fn read_len(self) -> bool {
        self.has(TCMU_MAILBOX_FLAG_CAP_READ_LEN)
    }
    /// The kernel can send TMR entries (if `tmr_notification=1`).
    #[must_use]
    pub fn tmr(self) -> bool {
        self.has(TCMU_MAILBOX_FLAG_CAP_TMR)
    }
    /// The kernel supports `TCMU_UFLAG_KEEP_BUF` (unused by us).
    #[must_use]
    pub fn keep_buf(self) -> bool {
        self.has(TCMU_MAILBOX_FLAG_CAP_KEEP_BUF)
    }
}

/// Ring indices found at start-up (see [`Mapping::start_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartState {
    /// `cmd_tail`: where our reading and completing starts.
    pub tail: u32,
    /// `cmd_head`.
    pub head: u32,
}

impl StartState {
    /// True when no entry waits between tail and head: what `reset_ring`
    /// leaves (both 0).
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.tail == self.head
    }
}

/// A validated TCMU mapping: mailbox, command ring, data area.
pub struct Mapping {
    region: Box<dyn Region>,
    len: usize,
    cmdr_off: usize,
    cmdr_size: u32,
    data_off: usize,
    flags: Flags,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.len)
            .field("cmdr_off", &self.cmdr_off)
            .field("cmdr_size", &self.cmdr_size)
            .field("data_off", &self.data_off)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

const MAILBOX_SIZE: usize = size_of::<tcmu_mailbox>();

impl Mapping {
    /// Validates the mailbox of `region`: version 2, OOOC, the command ring
    /// 8-aligned after the mailbox and inside the mapping, room for entries.
    /// The data area is everything after the command ring (as in 6.1).
    ///
    /// # Errors
    ///
    /// [`Error::Mailbox`] naming the first bad field.
    pub fn new(region: Box<dyn Region>) -> Result<Self, Error> {
        let len = region.len();
        let bad = |field, value: u64, problem| Error::Mailbox {
            field,
            value,
            problem,
        };
        if len < MAILBOX_SIZE || region.as_ptr().align_offset(64) != 0 {
            return Err(bad(
                "mapping size",
                len as u64,
                "smaller than the mailbox or not 64-aligned",
            ));
        }
        let mut m = Mapping {
            region,
            len,
            cmdr_off: 0,
            cmdr_size: 0,
            data_off: len,
            flags: Flags(0),
        };
        let version = m.read_u16(offset_of!(tcmu_mailbox, version)).unwrap_or(0);
        if u32::from(version) != TCMU_MAILBOX_VERSION {
            return Err(bad("version", version.into(), "expected 2"));
        }
        let flags = Flags(m.read_u16(offset_of!(tcmu_mailbox, flags)).unwrap_or(0));
        if !flags.oooc() {
            return Err(bad(
                "flags",
                flags.0.into(),
                "no OOOC: in-order-only completion is not supported",
            ));
        }
        let cmdr_off = m.read_u32(offset_of!(tcmu_mailbox, cmdr_off)).unwrap_or(0);
        let cmdr_size = m.read_u32(offset_of!(tcmu_mailbox, cmdr_size)).unwrap_or(0);
        let off = usize::try_from(cmdr_off).unwrap_or(usize::MAX);
        if off < MAILBOX_SIZE || !off.is_multiple_of(TCMU_OP_ALIGN) {
            return Err(bad(
                "cmdr_off",
                cmdr_off.into(),
                "overlaps the mailbox or is not 8-aligned",
            ));
        }
        // Two minimal entries: the kernel refuses commands larger than half the ring.
        let min_ring = 2 * TCMU_CMD_ENTRY_SIZE;
        let size = usize::try_from(cmdr_size).unwrap_or(usize::MAX);
        if size < min_ring || !size.is_multiple_of(TCMU_OP_ALIGN) {
            return Err(bad(
                "cmdr_size",
                cmdr_size.into(),
                "too small for two entries or not 8-aligned",
            ));
        }
        let end = off.checked_add(size).filter(|&e| e <= len).ok_or(bad(
            "cmdr_size",
            cmdr_size.into(),
            "command ring runs past the mapping",
        ))?;
        m.cmdr_off = off;
        m.cmdr_size = cmdr_size;
        m.data_off = end;
        m.flags = flags;
        Ok(m)
    }

    /// The capability flags.
    #[must_use]
    pub fn flags(&self) -> Flags {
        self.flags
    }

    /// Size of the whole mapping.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false for a validated mapping.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the command ring in the mapping.
    #[must_use]
    pub fn cmdr_off(&self) -> usize {
        self.cmdr_off
    }

    /// Size of the command ring in bytes.
    #[must_use]
    pub fn cmdr_size(&self) -> u32 {
        self.cmdr_size
    }

    /// Offset of the data area (it runs to the end of the mapping).
    #[must_use]
    pub fn data_off(&self) -> usize {
        self.data_off
    }

    /// Reads the ring indices for start-up (recovery).
    ///
    /// The daemon's sequence (DESIGN.md §1) is: `action/block_dev`=1,
    /// `action/reset_ring`=1 (the kernel fails every in-flight command with
    /// BUSY, frees their data and sets `cmd_head` = `cmd_tail` = 0), map,
    /// build the [`Ring`](super::Ring) from this tail, then `block_dev`=0.
    /// After that the ring needs nothing else: no command is in flight, the
    /// whole data area is free and reading starts at the tail.
    ///
    /// Without the reset, entries between tail and head cannot be trusted: a
    /// previous owner may already have written completions into them (with
    /// OOOC, other commands' ids over their headers) without publishing the
    /// tail. A non-clean state is reported for the caller to log; the ring
    /// will still read those entries, bound-checked like any other.
    ///
    /// # Errors
    ///
    /// A head or tail outside the ring or not 8-aligned.
    pub fn start_state(&self) -> Result<StartState, Error> {
        let head = self.check_index(
            "cmd_head",
            self.cmd_head().load(std::sync::atomic::Ordering::Acquire),
        )?;
        let tail = self.check_index(
            "cmd_tail",
            self.cmd_tail().load(std::sync::atomic::Ordering::Acquire),
        )?;
        Ok(StartState { tail, head })
    }

    pub(super) fn check_index(&self, field: &'static str, v: u32) -> Result<u32, Error> {
        if v >= self.cmdr_size || !(v as usize).is_multiple_of(TCMU_OP_ALIGN) {
            return Err(Error::Mailbox {
                field,
                value: v.into(),
                problem: "outside the command ring or not 8-aligned",
            });
        }
        Ok(v)
    }

    fn mailbox(&self) -> *mut tcmu_mailbox {
        self.region.as_ptr().cast()
    }

    /// `cmd_head`, written by the kernel (read it with Acquire).
    pub(super) fn cmd_head(&self) -> &AtomicU32 {
        // SAFETY: the mailbox is inside the (64-aligned) mapping, cmd_head is a 4-aligned u32
        // at offset 12, AtomicU32 has u32's layout, and concurrent kernel writes are allowed
        // through an atomic.
        unsafe { &*(&raw mut (*self.mailbox()).cmd_head).cast::<AtomicU32>() }
    }

    /// `cmd_tail`, written by us (publish with Release).
    pub(super) fn cmd_tail(&self) -> &AtomicU32 {
        // SAFETY: as for cmd_head: an aligned u32 at offset 64 of the live mailbox.
        unsafe { &*(&raw mut (*self.mailbox()).cmd_tail).cast::<AtomicU32>() }
    }

    /// A pointer `off` bytes into the mapping if `off + n` is within it and
    /// `off` is `align`-aligned.
    fn at(&self, off: usize, n: usize, align: usize) -> Option<*mut u8> {
        let end = off.checked_add(n)?;
        if end > self.len || !off.is_multiple_of(align) {
            return None;
        }
        // SAFETY: off <= len, so the result stays inside (or one past) the allocation.
        Some(unsafe { self.region.as_ptr().add(off) })
    }
}

macro_rules! volatile_access {
    ($read:ident, $write:ident, $t:ty) => {
        impl Mapping {
            /// Volatile read at `off`; `None` if out of bounds or misaligned.
            pub(super) fn $read(&self, off: usize) -> Option<$t> {
                let p = self.at(off, size_of::<$t>(), size_of::<$t>())?;
                // SAFETY: `at` checked bounds and alignment (the base is 64-aligned); volatile
                // because the kernel may write the memory at any time.
                Some(unsafe { p.cast::<$t>().read_volatile() })
            }
            /// Volatile write at `off`; `false` if out of bounds or misaligned.
            #[allow(dead_code)] // Generated for every width; not all are written.
            pub(super) fn $write(&self, off: usize, v: $t) -> bool {
                let Some(p) = self.at(off, size_of::<$t>(), size_of::<$t>()) else {
                    return false;
                };
                // SAFETY: bounds and alignment checked by `at`; only entries we own are written.
                unsafe { p.cast::<$t>().write_volatile(v) };
                true
            }
        }
    };
}
volatile_access!(read_u8, write_u8, u8);
volatile_access!(read_u16, write_u16, u16);
volatile_access!(read_u32, write_u32, u32);
volatile_access!(read_u64, write_u64, u64);

impl Mapping {
    /// Copies `dst.len()` bytes from `off` with volatile reads; `false` if out
    /// of bounds.
    pub(super) fn read_bytes(&self, off: usize, dst: &mut [u8]) -> bool {
        let Some(p) = self.at(off, dst.len(), 1) else {
            return false;
        };
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: i < dst.len(), and `at` checked off + dst.len() <= len.
            *b = unsafe { p.add(i).read_volatile() };
        }
        true
    }

    /// Copies `src` to `off` with volatile writes; `false` if out of bounds.
    pub(super) fn write_bytes(&self, off: usize, src: &[u8]) -> bool {
        let Some(p) = self.at(off, src.len(), 1) else {
            return false;
        };
        for (i, b) in src.iter().enumerate() {
            // SAFETY: i < src.len(), and `at` checked off + src.len() <= len.
            unsafe { p.add(i).write_volatile(*b) };
        }
        true
    }

    /// Raw pointer to `off..off + n` of the data area, for the slices of an
    /// in-flight command; `None` unless the range lies in the data area.
    pub(super) fn data_ptr(&self, off: usize, n: usize) -> Option<*mut u8> {
        if off < self.data_off {
            return None;
        }
        self.at(off, n, 1)
    }
}
