//! Asynchronous file I/O for ring commands through io_uring: a READ's data
//! is read straight into its data-area pages, a WRITE's written from them,
//! with many commands outstanding on one thread and one system call per
//! batch (a worker thread per outstanding O_DIRECT I/O is what bounds the
//! queue depth otherwise).
//!
//! The unsafe part is the submission: the kernel writes (READ) or reads
//! (WRITE) the command's pages until the completion arrives, so the command
//! and its iovec array are kept here, untouched, until then, and the queue
//! waits for every outstanding operation before it is dropped.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use io_uring::{IoUring, opcode, types};

use super::cmd::InFlightCmd;

/// Most segments one operation takes (the kernel's UIO_MAXIOV).
pub const MAX_SEGMENTS: usize = 1024;

/// What to do with a command's data buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// Fill the first `len` bytes of the data buffer from the file.
    Read,
    /// Write the first `len` bytes of the data buffer to the file;
    /// `dsync`: durable on completion (RWF_DSYNC, as for FUA).
    Write { dsync: bool },
}

/// One operation to queue.
#[derive(Debug, Clone, Copy)]
pub struct IoRequest {
    /// The kind of transfer.
    pub kind: IoKind,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes to transfer (at most the command's data length).
    pub len: usize,
}

/// Why an operation was not queued; the command comes back untouched.
#[derive(Debug)]
pub enum Refused<T> {
    /// The submission queue is full (submit, reap, or run it elsewhere).
    Full(InFlightCmd, T),
    /// The command's buffer does not fit the request (shorter than `len`,
    /// or more than [`MAX_SEGMENTS`] segments).
    Unfit(InFlightCmd, T),
}

/// A finished operation: the command, the caller's tag, and the bytes
/// transferred or the error.
#[derive(Debug)]
pub struct Finished<T> {
    /// The command, to complete on its ring.
    pub cmd: InFlightCmd,
    /// What the caller queued with it.
    pub tag: T,
    /// The request as queued.
    pub req: IoRequest,
    /// Bytes transferred (may be short), or the error.
    pub result: io::Result<usize>,
}

struct Op<T> {
    cmd: InFlightCmd,
    /// Read by the kernel at submission; kept until completion all the same.
    iov: Vec<libc::iovec>,
    tag: T,
    req: IoRequest,
}

/// An io_uring instance and the operations outstanding on it. Not shared:
/// one thread queues, submits and reaps.
pub struct Uring<T> {
    /// Whose it is (an LU), for logs.
    name: String,
    ring: IoUring,
    ops: HashMap<u64, Op<T>>,
    next: u64,
    /// Queued since the last submit.
    unsubmitted: usize,
}

impl<T> std::fmt::Debug for Uring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("fd", &self.ring.as_raw_fd())
            .field("outstanding", &self.ops.len())
            .finish_non_exhaustive()
    }
}

impl<T> Uring<T> {
    /// A queue of `entries` submission slots (rounded up to a power of two
    /// by the kernel). Fails where io_uring is unavailable (old kernel,
    /// `kernel.io_uring_disabled`, a seccomp filter).
    /// `name`: whose it is (an LU), for logs.
    pub fn new(name: &str, entries: u32) -> io::Result<Self> {
        Ok(Uring {
            name: name.to_owned(),
            ring: IoUring::new(entries)?,
            ops: HashMap::new(),
            next: 0,
            unsubmitted: 0,
        })
    }

    /// The file descriptor to poll: readable while completions wait.
    #[must_use]
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// An eventfd the kernel signals on every completion, to poll (edge
    /// triggered: each completion is a new event, so it is never read).
    pub fn completion_signal(&self) -> io::Result<std::os::fd::OwnedFd> {
        use rustix::event::{EventfdFlags, eventfd};
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        self.ring.submitter().register_eventfd(fd.as_raw_fd())?;
        Ok(fd)
    }

    /// Operations queued since the last successful submit.
    #[must_use]
    pub fn unsubmitted(&self) -> usize {
        self.unsubmitted
    }

    /// Operations queued or in the kernel, not yet reaped.
    #[must_use]
    pub fn outstanding(&self) -> usize {
        self.ops.len()
    }

    /// Queues `req` on `file` with `cmd`'s data buffer; [`Uring::submit`]
    /// hands it to the kernel. `file` must stay open until then (the kernel
    /// takes its own reference to the file at submission). `align`: what
    /// the offset and every buffer's address and length must be a multiple
    /// of (O_DIRECT), else the command is refused as `Unfit`.
    // The refused command comes back by value (a move; boxing it would
    // allocate for nothing on the path that falls back to the pool).
    #[allow(clippy::result_large_err)]
    pub fn push(
        &mut self,
        file: BorrowedFd<'_>,
        align: usize,
        cmd: InFlightCmd,
        req: IoRequest,
        tag: T,
    ) -> Result<(), Refused<T>> {
        let Some(iov) = cmd.data_iovecs(req.len) else {
            return Err(Refused::Unfit(cmd, tag));
        };
        let align = align.max(1);
        let aligned = req.offset.is_multiple_of(align as u64)
            && iov.iter().all(|v| {
                (v.iov_base as usize).is_multiple_of(align) && v.iov_len.is_multiple_of(align)
            });
        if iov.len() > MAX_SEGMENTS || !aligned {
            return Err(Refused::Unfit(cmd, tag));
        }
        let key = self.next;
        let fd = types::Fd(file.as_raw_fd());
        // Both lengths were bounded just above.
        let n = u32::try_from(iov.len()).unwrap_or(0);
        let sqe = match req.kind {
            IoKind::Read => opcode::Readv::new(fd, iov.as_ptr(), n)
                .offset(req.offset)
                .build(),
            IoKind::Write { dsync } => opcode::Writev::new(fd, iov.as_ptr(), n)
                .offset(req.offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
        }
        .user_data(key);
        // SAFETY: the iovecs point into `cmd`'s data-area segments, which the
        // ring validated and reserved for this command alone and whose
        // mapping `cmd` keeps alive (see `InFlightCmd`); `cmd` and the iovec
        // array (a heap allocation that does not move with the Vec) are
        // stored in `self.ops` under `key` below and leave it only when the
        // kernel's completion for `key` is reaped (or, in `Drop`, after
        // every outstanding completion arrived), so neither is freed or
        // touched while the kernel may use them. Nothing else reads or
        // writes a command's buffer while it is in flight.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        if pushed.is_err() {
            return Err(Refused::Full(cmd, tag));
        }
        self.next = self.next.wrapping_add(1);
        self.ops.insert(key, Op { cmd, iov, tag, req });
        self.unsubmitted += 1;
        Ok(())
    }

    /// Hands every queued operation to the kernel (one system call), if any.
    pub fn submit(&mut self) -> io::Result<()> {
        while self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves every completion that arrived into `out`.
    pub fn reap(&mut self, out: &mut Vec<Finished<T>>) {
        let (ops, name) = (&mut self.ops, &self.name);
        for c in self.ring.completion() {
            let (key, res) = (c.user_data(), c.result());
            let Some(op) = ops.remove(&key) else {
                tracing::error!(lu = %name, key, "io_uring completion for no operation");
                continue;
            };
            let result = match usize::try_from(res) {
                Ok(n) => Ok(n),
                Err(_) => Err(io::Error::from_raw_os_error(-res)),
            };
            let Op { cmd, iov, tag, req } = op;
            drop(iov);
            out.push(Finished {
                cmd,
                tag,
                req,
                result,
            });
        }
    }

    /// Submits what is queued and waits until every outstanding operation
    /// completed; returns them all.
    pub fn wait_all(&mut self, out: &mut Vec<Finished<T>>) {
        while !self.ops.is_empty() {
            let _ = self.submit();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    // Nothing can be waited for any more: keep the buffers
                    // (leak them) rather than free pages the kernel may still use.
                    tracing::error!(lu = %self.name, "io_uring: waiting for outstanding I/O: {e}");
                    for (_, op) in self.ops.drain() {
                        std::mem::forget(op);
                    }
                    return;
                }
            }
            self.reap(out);
        }
    }
}

impl<T> Drop for Uring<T> {
    fn drop(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        // Unreaped commands are dropped afterwards (and logged by
        // `InFlightCmd`'s drop): their owner is going away without them.
        let mut left = Vec::new();
        self.wait_all(&mut left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::sim::{Dir, SimKernel};
    use crate::ring::{Event, Response, Ring};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];

    fn next_cmd(ring: &mut Ring) -> InFlightCmd {
        match ring.poll() {
            Some(Ok(Event::Command(c))) => c,
            other => panic!("expected a command, got {other:?}"),
        }
    }

    /// Queues a WRITE10 of `data` (its whole length) at `offset` and
    /// waits for it.
    fn write_at(
        sim: &mut SimKernel,
        ring: &mut Ring,
        u: &mut Uring<u32>,
        file: &std::fs::File,
        data: Vec<u8>,
        offset: u64,
        dsync: bool,
    ) -> Finished<u32> {
        let len = data.len();
        sim.submit(&WRITE10, Dir::ToDevice(data)).unwrap();
        let cmd = next_cmd(ring);
        let req = IoRequest {
            kind: IoKind::Write { dsync },
            offset,
            len,
        };
        u.push(file.as_fd(), 1, cmd, req, 7).unwrap();
        assert_eq!(u.outstanding(), 1);
        reap_one(u)
    }

    fn reap_one(u: &mut Uring<u32>) -> Finished<u32> {
        let mut out = Vec::new();
        while out.is_empty() {
            u.submit().unwrap();
            u.ring.submit_and_wait(1).unwrap();
            u.reap(&mut out);
        }
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    #[test]
    fn reads_into_and_writes_from_the_data_area() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 16).unwrap();
        let mut sim = SimKernel::new(64 * 1024, 64, 4096);
        let mut ring = sim.ring();
        let mut u = Uring::<u32>::new("t", 8).unwrap();
        let payload: Vec<u8> = (0..4096u32)
            .map(|i| u8::try_from(i * 13 % 251).unwrap())
            .collect();
        let f = write_at(
            &mut sim,
            &mut ring,
            &mut u,
            &file,
            payload.clone(),
            8192,
            true,
        );
        assert_eq!((f.tag, f.result.as_ref().ok().copied()), (7, Some(4096)));
        assert_eq!(u.outstanding(), 0);
        ring.complete(f.cmd, &Response::good()).unwrap();
        let mut on_disk = vec![0u8; 4096];
        file.read_exact_at(&mut on_disk, 8192).unwrap();
        assert_eq!(on_disk, payload);

        // A READ of the first 1000 bytes only fills those.
        sim.submit(&READ10, Dir::FromDevice(4096)).unwrap();
        let cmd = next_cmd(&mut ring);
        let req = IoRequest {
            kind: IoKind::Read,
            offset: 8192,
            len: 1000,
        };
        u.push(file.as_fd(), 1, cmd, req, 8).unwrap();
        let mut f = reap_one(&mut u);
        assert_eq!(f.result.as_ref().ok().copied(), Some(1000));
        let mut got = vec![0u8; 4096];
        let data = f.cmd.data_mut();
        let mut at = 0;
        for b in data {
            got[at..at + b.len()].copy_from_slice(&b);
            at += b.len();
        }
        assert_eq!(&got[..1000], &payload[..1000]);
        ring.complete(f.cmd, &Response::good().read_len(1000))
            .unwrap();
    }

    #[test]
    fn refuses_misaligned_or_too_long_requests_and_gives_the_command_back() {
        let file = tempfile::tempfile().unwrap();
        let mut sim = SimKernel::new(64 * 1024, 64, 4096);
        let mut ring = sim.ring();
        let mut u = Uring::<u32>::new("t", 8).unwrap();
        sim.submit(&READ10, Dir::FromDevice(4096)).unwrap();
        let mut cmd = next_cmd(&mut ring);
        for (offset, len, align) in [(512, 4096, 4096), (0, 1000, 512), (0, 8192, 1)] {
            let req = IoRequest {
                kind: IoKind::Read,
                offset,
                len,
            };
            match u.push(file.as_fd(), align, cmd, req, 1) {
                Err(Refused::Unfit(c, 1)) => cmd = c,
                other => panic!("{offset}/{len}/{align}: {other:?}"),
            }
        }
        assert_eq!(u.outstanding(), 0);
        ring.complete(cmd, &Response::good()).unwrap();
    }

    #[test]
    fn an_error_comes_back_as_the_errno() {
        // A read-only file: a write fails with EBADF.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ro");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let file = std::fs::File::open(&p).unwrap();
        let mut sim = SimKernel::new(64 * 1024, 64, 4096);
        let mut ring = sim.ring();
        let mut u = Uring::<u32>::new("t", 8).unwrap();
        let f = write_at(&mut sim, &mut ring, &mut u, &file, vec![1; 4096], 0, false);
        assert_eq!(
            f.result
                .as_ref()
                .map_err(std::io::Error::raw_os_error)
                .err(),
            Some(Some(libc::EBADF))
        );
        ring.complete(f.cmd, &Response::good()).unwrap();
    }
}
