//! [`Ring`]: reading entries up to `cmd_head`, completing at `cmd_tail`.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::mem::offset_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tcmu_sys::{
    TCMU_CMD_ENTRY_SIZE, TCMU_UFLAG_READ_LEN, tcmu_cmd_entry_hdr, tcmu_cmd_entry_rsp,
    tcmu_hdr_get_len, tcmu_hdr_get_op, tcmu_opcode,
};

use super::Error;
use super::cmd::{AbortTable, InFlightCmd, Response, SENSE_LEN};
use super::entry::{At, CMD_ID_OFF, EntryError, Outcome, TmrEvent};
use super::mapping::{Doorbell, Mapping};

/// What the kernel sent.
#[derive(Debug)]
// Commands are the common case; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A SCSI command to execute and complete.
    Command(InFlightCmd),
    /// A task management notification (`tmr_notification=1`).
    Tmr(TmrEvent),
}

/// An entry between our tail and our read position.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Offset in the command ring.
    off: u32,
    len: u32,
    /// A CMD slot takes one completion; other slots are just stepped over.
    takes_completion: bool,
}

/// `TCMU_UFLAG_READ_LEN` for the u8 `hdr.uflags` field.
#[allow(clippy::cast_possible_truncation)] // Checked just below.
const UFLAG_READ_LEN: u8 = TCMU_UFLAG_READ_LEN as u8;
const _: () = assert!(UFLAG_READ_LEN as u32 == TCMU_UFLAG_READ_LEN);

/// Whether the kernel's `cmd_head` is past `next`.
fn head_moved(map: &Mapping, next: u32) -> bool {
    // Acquire, as in `Ring::poll`, which reads the entries if this says so.
    map.cmd_head().load(Ordering::Acquire) != next
}

/// Where a ring's reading stopped, to watch `cmd_head` move past it (see
/// [`Ring::head_watch`]).
#[derive(Debug)]
pub struct HeadWatch {
    map: Arc<Mapping>,
    /// `None` for a broken ring: it is not read again.
    next: Option<u32>,
}

impl HeadWatch {
    /// Whether the kernel queued entries since the watch was taken.
    #[must_use]
    pub fn moved(&self) -> bool {
        self.next.is_some_and(|n| head_moved(&self.map, n))
    }
}

/// Distinguishes rings so a command cannot be completed on the wrong one.
static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);

/// The user-space side of one TCMU command ring.
///
/// Single-threaded: the event loop owns it, reads events with [`Ring::poll`],
/// hands commands to workers, completes them with [`Ring::complete`] and
/// publishes a batch with [`Ring::flush`].
#[derive(Debug)]
pub struct Ring {
    map: Arc<Mapping>,
    doorbell: Box<dyn Doorbell>,
    id: u64,
    size: u32,
    /// Next entry to read.
    next: u32,
    /// Our tail: every entry before it is consumed.
    tail: u32,
    /// The tail the kernel has been told about.
    published: u32,
    /// Entries in [tail, next), oldest first.
    slots: VecDeque<Slot>,
    /// One bit per command id handed out and not completed.
    inflight: Vec<u64>,
    /// Data-area ranges (start -> end) of in-flight commands.
    data_ranges: BTreeMap<usize, usize>,
    aborts: Arc<AbortTable>,
    /// Set once the ring structure is found broken: reading stops.
    broken: Option<EntryError>,
}

impl Ring {
    /// Starts a ring at the mailbox's `cmd_tail` (see
    /// [`Mapping::start_state`] for the start-up sequence).
    ///
    /// # Errors
    ///
    /// A head or tail out of range.
    pub fn new(map: Arc<Mapping>, doorbell: Box<dyn Doorbell>) -> Result<Self, Error> {
        let start = map.start_state()?;
        if !start.is_clean() {
            tracing::warn!(
                tail = start.tail,
                head = start.head,
                "ring holds entries from a previous owner; reset_ring was not done"
            );
        }
        Ok(Ring {
            size: map.cmdr_size(),
            map,
            doorbell,
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            next: start.tail,
            tail: start.tail,
            published: start.tail,
            slots: VecDeque::new(),
            inflight: vec![0; 1024],
            data_ranges: BTreeMap::new(),
            aborts: AbortTable::new(),
            broken: None,
        })
    }

    /// The mapping this ring works on.
    #[must_use]
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// Our tail (consumed up to here; maybe not yet published).
    #[must_use]
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Number of commands handed out and not completed.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inflight.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the kernel queued entries that [`Ring::poll`] has not read
    /// yet: one load of `cmd_head`, no system call (for polling before
    /// sleeping on the uio fd).
    #[must_use]
    pub fn has_new(&self) -> bool {
        self.broken.is_none() && head_moved(&self.map, self.next)
    }

    /// [`Ring::has_new`] for a thread that watches the ring without its
    /// lock: valid until the ring is next read, which only its reader does.
    #[must_use]
    pub fn head_watch(&self) -> HeadWatch {
        HeadWatch {
            map: self.map.clone(),
            next: self.broken.is_none().then_some(self.next),
        }
    }

    /// Why reading stopped, if the ring structure was found broken.
    #[must_use]
    pub fn broken(&self) -> Option<&EntryError> {
        self.broken.as_ref()
    }

    fn is_inflight(&self, id: u16) -> bool {
        self.inflight[usize::from(id) / 64] & (1 << (id % 64)) != 0
    }

    fn set_inflight(&mut self, id: u16, on: bool) {
        let (w, b) = (usize::from(id) / 64, 1u64 << (id % 64));
        if on {
            self.inflight[w] |= b;
        } else {
            self.inflight[w] &= !b;
        }
    }

    /// The next event, or `None` when we caught up with `cmd_head` (or the
    /// ring is broken). Call until `None` after each wake-up.
    ///
    /// A bad entry yields `Err` naming the field; a bad command has already
    /// been completed with CHECK CONDITION (sent with the next [`Ring::flush`]),
    /// an unidentifiable entry skipped, and a broken ring structure stops
    /// reading (see [`Ring::broken`]).
    pub fn poll(&mut self) -> Option<Result<Event, EntryError>> {
        loop {
            if self.broken.is_some() {
                return None;
            }
            // Acquire: pairs with the kernel's smp_store_release of cmd_head, so the
            // entry bytes (and data-out) written before it are visible to our reads.
            let head = self.map.cmd_head().load(Ordering::Acquire);
            if head == self.next {
                return None;
            }
            let at = self.next;
            if self.map.check_index("cmd_head", head).is_err() {
                return Some(Err(self.stop(
                    at,
                    "mailbox.cmd_head",
                    head.into(),
                    "is outside the ring or not 8-aligned",
                )));
            }
            let abs = self.map.cmdr_off() + at as usize;
            let len_op = self.map.read_u32(abs).unwrap_or(0);
            let (op, len) = (tcmu_hdr_get_op(len_op), tcmu_hdr_get_len(len_op));
            let avail = (head + self.size - at) % self.size;
            let problem = if len == 0 {
                Some("length is zero")
            } else if len > self.size - at {
                Some("entry runs past the end of the ring")
            } else if len > avail {
                Some("entry runs past cmd_head")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Some(Err(self.stop(at, "hdr.len_op", len_op.into(), problem)));
            }
            self.next = (at + len) % self.size;
            // A second handle, so decoding can borrow it while `self` changes.
            let map = Arc::clone(&self.map);
            let entry = At {
                map: &map,
                ring_off: at,
                abs,
                len: len as usize,
            };
            match op {
                tcmu_opcode::TCMU_OP_PAD => {
                    self.push_slot(at, len, false);
                    self.step_over_skips();
                }
                tcmu_opcode::TCMU_OP_TMR => {
                    let res = entry.decode_tmr();
                    self.push_slot(at, len, false);
                    self.step_over_skips();
                    return Some(res.map(|t| {
                        for &id in &t.cmd_ids {
                            if self.is_inflight(id) {
                                self.aborts.set(id, true);
                            }
                        }
                        Event::Tmr(t)
                    }));
                }
                tcmu_opcode::TCMU_OP_CMD => return Some(self.take_cmd(&entry)),
                _ => {
                    // A future kernel's entry type: 6.1 steps over non-CMD entries it
                    // does not know as it does over PAD and TMR, so do the same.
                    let e = EntryError {
                        offset: at,
                        cmd_id: None,
                        field: "hdr.len_op",
                        index: None,
                        value: op.into(),
                        problem: "has an unknown opcode",
                        outcome: Outcome::Skipped,
                    };
                    self.push_slot(at, len, false);
                    self.step_over_skips();
                    return Some(Err(e));
                }
            }
        }
    }

    fn take_cmd(&mut self, entry: &At<'_>) -> Result<Event, EntryError> {
        let (at, len) = (entry.ring_off, u32::try_from(entry.len).unwrap_or(u32::MAX));
        let cmd_id = entry.cmd_id();
        let unusable = |field, value: u16, problem, outcome| EntryError {
            offset: at,
            cmd_id: Some(cmd_id),
            field,
            index: None,
            value: value.into(),
            problem,
            outcome,
        };
        if cmd_id == 0 {
            // The kernel allocates ids from 1; with no id we cannot complete it.
            self.push_slot(at, len, false);
            self.step_over_skips();
            return Err(unusable("hdr.cmd_id", 0, "is zero", Outcome::Skipped));
        }
        if self.is_inflight(cmd_id) {
            // Completing either would end the other: no safe way forward.
            let e = unusable(
                "hdr.cmd_id",
                cmd_id,
                "is already in flight",
                Outcome::RingStopped,
            );
            self.push_slot(at, len, true);
            self.broken = Some(e.clone());
            return Err(e);
        }
        self.push_slot(at, len, true);
        match entry.decode_cmd(cmd_id, &self.data_ranges) {
            Ok(d) => {
                self.set_inflight(cmd_id, true);
                self.aborts.set(cmd_id, false);
                for s in d.segs.iter().filter(|s| s.len > 0) {
                    self.data_ranges.insert(s.off, s.off + s.len);
                }
                Ok(Event::Command(InFlightCmd {
                    cmd_id,
                    cdb: d.cdb,
                    cdb_len: d.cdb_len,
                    segs: d.segs,
                    n_data: d.n_data,
                    map: Arc::clone(&self.map),
                    aborts: Arc::clone(&self.aborts),
                    ring_id: self.id,
                    completed: false,
                }))
            }
            Err(e) => {
                // The slot just pushed (or an older one) takes this completion.
                if let Err(err) =
                    self.write_completion(cmd_id, &Response::internal_target_failure(), 0)
                {
                    tracing::error!(%err, "cannot complete a malformed command");
                }
                Err(e)
            }
        }
    }

    /// Records a structural error: reading stops for good.
    fn stop(
        &mut self,
        at: u32,
        field: &'static str,
        value: u64,
        problem: &'static str,
    ) -> EntryError {
        let e = EntryError {
            offset: at,
            cmd_id: None,
            field,
            index: None,
            value,
            problem,
            outcome: Outcome::RingStopped,
        };
        self.broken = Some(e.clone());
        e
    }

    fn push_slot(&mut self, off: u32, len: u32, takes_completion: bool) {
        self.slots.push_back(Slot {
            off,
            len,
            takes_completion,
        });
    }

    /// Moves the tail over PAD/TMR/skipped entries at its front.
    fn step_over_skips(&mut self) {
        while let Some(s) = self.slots.front().copied().filter(|s| !s.takes_completion) {
            self.slots.pop_front();
            self.tail = (s.off + s.len) % self.size;
        }
    }

    /// Completes `cmd` (not yet visible to the kernel: see [`Ring::flush`]).
    ///
    /// The response goes into the oldest unconsumed CMD entry, whose
    /// `hdr.cmd_id` becomes this command's id (OOOC, module docs).
    ///
    /// # Errors
    ///
    /// [`Error::NotInFlight`] if the command does not belong to this ring;
    /// the token is consumed either way, so it can never complete twice.
    pub fn complete(&mut self, mut cmd: InFlightCmd, rsp: &Response) -> Result<(), Error> {
        cmd.completed = true;
        let id = cmd.cmd_id;
        if cmd.ring_id != self.id || !self.is_inflight(id) {
            return Err(Error::NotInFlight { cmd_id: id });
        }
        let data_in = cmd.data_in_len();
        for s in cmd.segs.iter().filter(|s| s.len > 0) {
            self.data_ranges.remove(&s.off);
        }
        self.set_inflight(id, false);
        self.aborts.set(id, false);
        self.write_completion(id, rsp, data_in)
    }

    /// Writes a response into the oldest CMD slot and moves the tail past it.
    fn write_completion(&mut self, id: u16, rsp: &Response, data_in: usize) -> Result<(), Error> {
        self.step_over_skips();
        let Some(slot) = self.slots.pop_front() else {
            return Err(Error::NoSlot { cmd_id: id });
        };
        let base = self.map.cmdr_off() + slot.off as usize;
        let len = slot.len as usize;
        let short = rsp.read_len.filter(|&n| (n as usize) < data_in && n > 0);
        let mut uflags = 0u8;
        if short.is_some() && self.map.flags().read_len() {
            uflags |= UFLAG_READ_LEN;
        }
        // Every write stays inside the slot: a malformed short CMD entry keeps
        // what fits (the header always does: lengths are at least 8).
        let fits = |off: usize, n: usize| off + n <= len;
        let m = &self.map;
        m.write_u16(base + CMD_ID_OFF, id);
        m.write_u8(base + offset_of!(tcmu_cmd_entry_hdr, uflags), uflags);
        let status_off = offset_of!(tcmu_cmd_entry_rsp, scsi_status);
        if fits(status_off, 1) {
            m.write_u8(base + status_off, rsp.status);
        }
        let read_len_off = offset_of!(tcmu_cmd_entry_rsp, read_len);
        if fits(read_len_off, 4) {
            m.write_u32(base + read_len_off, short.unwrap_or(0));
        }
        let sense_off = offset_of!(tcmu_cmd_entry_rsp, sense_buffer);
        let n = len.saturating_sub(sense_off).min(SENSE_LEN);
        m.write_bytes(base + sense_off, &rsp.sense[..n]);
        debug_assert!(len >= TCMU_CMD_ENTRY_SIZE || n < SENSE_LEN);
        self.tail = (slot.off + slot.len) % self.size;
        self.step_over_skips();
        Ok(())
    }

    /// Publishes the tail (one Release store) and, if it moved, wakes the
    /// kernel with one doorbell write, however many completions the batch
    /// holds. Returns whether the kernel was notified.
    ///
    /// # Errors
    ///
    /// The doorbell's write error (the tail is published regardless; the
    /// kernel also consumes it on the next notification).
    pub fn flush(&mut self) -> io::Result<bool> {
        if self.tail == self.published {
            return Ok(false);
        }
        // Release: the response bytes written into the entries, and data-in the
        // workers wrote (ordered before us by the channel that returned the
        // command), must be visible before the kernel sees the new tail.
        self.map.cmd_tail().store(self.tail, Ordering::Release);
        self.published = self.tail;
        self.doorbell.notify()?;
        Ok(true)
    }
}
