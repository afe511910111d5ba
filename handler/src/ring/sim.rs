//! A simulated 6.1 kernel (the "driver side" of the ring, like rust-vmm's
//! `mock.rs`): it lays out CMD, PAD and TMR entries and data blocks in a heap
//! mapping exactly as `queue_cmd_ring`/`queue_tmr_ring` do, and consumes
//! completions from `cmd_tail` like `tcmu_handle_completions`, checking the
//! protocol as it goes (unknown ids, tail beyond head, zero lengths).

// Simulated geometries are small (ring and data area far below 4 GiB); the
// casts mirror the kernel's C arithmetic.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::io;
use std::mem::{offset_of, size_of};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tcmu_sys::{
    TCMU_CMD_ENTRY_IOV_OFFSET, TCMU_CMD_ENTRY_SIZE, TCMU_MAILBOX_FLAG_CAP_KEEP_BUF,
    TCMU_MAILBOX_FLAG_CAP_OOOC, TCMU_MAILBOX_FLAG_CAP_READ_LEN, TCMU_MAILBOX_FLAG_CAP_TMR,
    TCMU_OP_ALIGN, TCMU_TMR_ENTRY_CMD_IDS_OFFSET, TCMU_UFLAG_READ_LEN, tcmu_cmd_entry_hdr,
    tcmu_cmd_entry_req, tcmu_cmd_entry_rsp, tcmu_hdr_get_len, tcmu_hdr_get_op, tcmu_iovec,
    tcmu_mailbox, tcmu_opcode, tcmu_tmr_entry,
};

use super::cmd::SENSE_LEN;
use super::mapping::{Doorbell, HeapRegion, Mapping};
use super::queue::Ring;
use super::status;

/// Offset of the command ring (`CMDR_OFF` in the kernel).
pub const CMDR_OFF: u32 = 128;

/// Data transfer of a simulated command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dir {
    /// No data.
    None,
    /// Data-out (a write): these bytes are in the data area.
    ToDevice(Vec<u8>),
    /// Data-in (a read) of this many bytes.
    FromDevice(usize),
    /// Bidirectional: data-out bytes and a separate data-in length.
    Bidi(Vec<u8>, usize),
}

/// Why the simulated kernel could not queue an entry (the real one would
/// put it on its qfull queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// No room in the command ring.
    RingFull,
    /// No free data blocks.
    DataFull,
    /// Larger than half the ring (the kernel fails such commands).
    TooBig,
    /// All 65535 ids are in use.
    NoId,
}

/// A completion as the kernel consumed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The completed command.
    pub cmd_id: u16,
    /// SAM status.
    pub status: u8,
    /// The sense buffer.
    pub sense: Vec<u8>,
    /// `rsp.read_len` if `TCMU_UFLAG_READ_LEN` was set and it was non-zero.
    pub read_len: Option<u32>,
    /// Data-in gathered from the data area (up to read_len), as the kernel
    /// would pass it to the initiator.
    pub data_in: Vec<u8>,
}

#[derive(Debug)]
struct SimCmd {
    dir: Dir,
    /// Data-out blocks first, then data-in (bidi) blocks.
    blocks: Vec<usize>,
    out_blocks: usize,
}

/// Counts doorbell writes.
#[derive(Debug, Clone, Default)]
pub struct SimDoorbell(Arc<AtomicUsize>);

impl Doorbell for SimDoorbell {
    fn notify(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The simulated kernel side of one TCMU device.
#[derive(Debug)]
pub struct SimKernel {
    map: Arc<Mapping>,
    size: u32,
    blk: usize,
    used_blocks: Vec<bool>,
    head: u32,
    last_cleaned: u32,
    cmds: BTreeMap<u16, SimCmd>,
    done: Vec<Completion>,
    broken: Option<String>,
    doorbell: SimDoorbell,
    pads: usize,
}

/// Builds a heap mapping with a 6.1 mailbox (version 2, flags 0xf).
#[must_use]
pub fn fake_mapping(cmdr_size: u32, data_size: usize) -> HeapRegion {
    let len = CMDR_OFF as usize + cmdr_size as usize + data_size;
    let mut mb = [0u8; size_of::<tcmu_mailbox>()];
    let flags = TCMU_MAILBOX_FLAG_CAP_OOOC
        | TCMU_MAILBOX_FLAG_CAP_READ_LEN
        | TCMU_MAILBOX_FLAG_CAP_TMR
        | TCMU_MAILBOX_FLAG_CAP_KEEP_BUF;
    mb[offset_of!(tcmu_mailbox, version)..][..2].copy_from_slice(&2u16.to_ne_bytes());
    mb[offset_of!(tcmu_mailbox, flags)..][..2].copy_from_slice(&(flags as u16).to_ne_bytes());
    mb[offset_of!(tcmu_mailbox, cmdr_off)..][..4].copy_from_slice(&CMDR_OFF.to_ne_bytes());
    mb[offset_of!(tcmu_mailbox, cmdr_size)..][..4].copy_from_slice(&cmdr_size.to_ne_bytes());
    let mut bytes = vec![0u8; len];
    bytes[..mb.len()].copy_from_slice(&mb);
    HeapRegion::from_bytes(&bytes)
}

const fn round_up8(n: usize) -> usize {
    (n + TCMU_OP_ALIGN - 1) & !(TCMU_OP_ALIGN - 1)
}

impl SimKernel {
    /// A device with a `cmdr_size`-byte ring (a multiple of 8) and
    /// `blocks` data blocks of `blk_size` bytes.
    ///
    /// # Panics
    ///
    /// If the geometry is invalid (test set-up error).
    #[must_use]
    pub fn new(cmdr_size: u32, blocks: usize, blk_size: usize) -> Self {
        let region = fake_mapping(cmdr_size, blocks * blk_size);
        let map = Arc::new(Mapping::new(Box::new(region)).expect("valid simulated mailbox"));
        SimKernel {
            map,
            size: cmdr_size,
            blk: blk_size,
            used_blocks: vec![false; blocks],
            head: 0,
            last_cleaned: 0,
            cmds: BTreeMap::new(),
            done: Vec::new(),
            broken: None,
            doorbell: SimDoorbell::default(),
            pads: 0,
        }
    }

    /// The shared mapping.
    #[must_use]
    pub fn mapping(&self) -> Arc<Mapping> {
        Arc::clone(&self.map)
    }

    /// A user-space ring on this device, ringing this kernel's doorbell.
    ///
    /// # Panics
    ///
    /// If the mailbox indices are invalid (cannot happen for the simulator).
    #[must_use]
    pub fn ring(&self) -> Ring {
        Ring::new(self.mapping(), Box::new(self.doorbell.clone())).expect("valid ring indices")
    }

    /// Doorbell writes so far.
    #[must_use]
    pub fn kicks(&self) -> usize {
        self.doorbell.0.load(Ordering::SeqCst)
    }

    /// Commands queued and not yet completed.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.cmds.len()
    }

    /// PAD entries inserted at the ring's end so far.
    #[must_use]
    pub fn pads(&self) -> usize {
        self.pads
    }

    /// The first protocol violation seen, if any (the real kernel would mark
    /// the ring broken).
    #[must_use]
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// `cmd_head` and the kernel's `cmdr_last_cleaned`.
    #[must_use]
    pub fn indices(&self) -> (u32, u32) {
        (self.head, self.last_cleaned)
    }

    fn used(&self) -> usize {
        ((self.head + self.size - self.last_cleaned) % self.size) as usize
    }

    /// `is_ring_space_avail`: room for `n` bytes, plus a PAD if they do not
    /// fit before the end; one byte always stays free.
    fn room_for(&self, n: usize) -> bool {
        let to_end = (self.size - self.head) as usize;
        let needed = if to_end >= n { n } else { n + to_end };
        // The kernel's spc_free keeps one byte unused.
        self.size as usize - self.used() > needed
    }

    /// `ring_insert_padding`: a PAD to the end of the ring if `n` does not fit.
    fn insert_padding(&mut self, n: usize) {
        let to_end = self.size - self.head;
        if (to_end as usize) < n {
            let abs = CMDR_OFF as usize + self.head as usize;
            self.map.write_u32(abs, to_end | tcmu_opcode::TCMU_OP_PAD);
            self.map
                .write_u16(abs + offset_of!(tcmu_cmd_entry_hdr, cmd_id), 0);
            self.map
                .write_u16(abs + offset_of!(tcmu_cmd_entry_hdr, kflags), 0);
            self.publish_head((self.head + to_end) % self.size);
            self.pads += 1;
        }
    }

    fn publish_head(&mut self, head: u32) {
        self.head = head;
        // Release: like UPDATE_HEAD's smp_store_release, entry bytes first.
        self.map.cmd_head().store(head, Ordering::Release);
    }

    fn alloc_blocks(&mut self, n: usize) -> Option<Vec<usize>> {
        let free: Vec<usize> = (0..self.used_blocks.len())
            .filter(|&i| !self.used_blocks[i])
            .take(n)
            .collect();
        if free.len() < n {
            return None;
        }
        for &b in &free {
            self.used_blocks[b] = true;
        }
        Some(free)
    }

    /// iovecs for `len` bytes in `blocks`, merging adjacent blocks as
    /// `new_block_to_iov` does.
    fn iovs(&self, blocks: &[usize], mut len: usize) -> Vec<(u64, u64)> {
        let data_off = self.map.data_off();
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut prev: Option<usize> = None;
        for &b in blocks {
            let n = len.min(self.blk);
            if prev.is_some_and(|p| p + 1 == b) {
                out.last_mut().expect("previous iov").1 += n as u64;
            } else {
                out.push(((data_off + b * self.blk) as u64, n as u64));
            }
            prev = Some(b);
            len -= n;
        }
        out
    }

    /// Queues a command like `queue_cmd_ring`; returns its id.
    ///
    /// # Errors
    ///
    /// When the real kernel would not put it on the ring now.
    pub fn submit(&mut self, cdb: &[u8], dir: Dir) -> Result<u16, SubmitError> {
        self.submit_with(cdb, dir, |_| {})
    }

    /// Like [`SimKernel::submit`], but `corrupt` may change the entry's bytes
    /// (length from `len_op` included) before the head is published.
    ///
    /// # Errors
    ///
    /// As for `submit`.
    pub fn submit_with(
        &mut self,
        cdb: &[u8],
        dir: Dir,
        corrupt: impl FnOnce(&mut [u8]),
    ) -> Result<u16, SubmitError> {
        let (out, in_len) = match &dir {
            Dir::None => (&[][..], 0),
            Dir::ToDevice(d) => (&d[..], 0),
            Dir::FromDevice(n) => (&[][..], *n),
            Dir::Bidi(d, n) => (&d[..], *n),
        };
        let bidi = matches!(dir, Dir::Bidi(..));
        let primary_len = if bidi || !out.is_empty() {
            out.len()
        } else {
            in_len
        };
        let out_blocks = primary_len.div_ceil(self.blk);
        let in_blocks = if bidi { in_len.div_ceil(self.blk) } else { 0 };
        // Count iovs the way the kernel does, before checking ring space.
        let free_total = self.used_blocks.iter().filter(|u| !**u).count();
        if free_total < out_blocks + in_blocks {
            return Err(SubmitError::DataFull);
        }
        let blocks = self
            .alloc_blocks(out_blocks + in_blocks)
            .ok_or(SubmitError::DataFull)?;
        let mut iovs = self.iovs(&blocks[..out_blocks], primary_len);
        let iov_cnt = iovs.len();
        if bidi {
            iovs.extend(self.iovs(&blocks[out_blocks..], in_len));
        }
        let base = (TCMU_CMD_ENTRY_IOV_OFFSET + iovs.len() * size_of::<tcmu_iovec>())
            .max(TCMU_CMD_ENTRY_SIZE);
        let size = base + round_up8(cdb.len());
        let release = |s: &mut Self| blocks.iter().for_each(|&b| s.used_blocks[b] = false);
        if size > self.size as usize / 2 {
            release(self);
            return Err(SubmitError::TooBig);
        }
        if !self.room_for(size) {
            release(self);
            return Err(SubmitError::RingFull);
        }
        let Some(id) = (1..=u16::MAX).find(|id| !self.cmds.contains_key(id)) else {
            release(self);
            return Err(SubmitError::NoId);
        };
        // Data-out goes into its blocks before the entry is published.
        for (i, chunk) in out.chunks(self.blk).enumerate() {
            let at = self.map.data_off() + blocks[i] * self.blk;
            self.map.write_bytes(at, chunk);
        }
        self.insert_padding(size);
        let at = self.head as usize;
        let mut e = vec![0u8; size];
        let put = |e: &mut [u8], off: usize, b: &[u8]| e[off..off + b.len()].copy_from_slice(b);
        put(
            &mut e,
            0,
            &(size as u32 | tcmu_opcode::TCMU_OP_CMD).to_ne_bytes(),
        );
        put(
            &mut e,
            offset_of!(tcmu_cmd_entry_hdr, cmd_id),
            &id.to_ne_bytes(),
        );
        put(
            &mut e,
            offset_of!(tcmu_cmd_entry_req, iov_cnt),
            &(iov_cnt as u32).to_ne_bytes(),
        );
        let bidi_cnt = (iovs.len() - iov_cnt) as u32;
        put(
            &mut e,
            offset_of!(tcmu_cmd_entry_req, iov_bidi_cnt),
            &bidi_cnt.to_ne_bytes(),
        );
        for (i, (b, l)) in iovs.iter().enumerate() {
            let o = TCMU_CMD_ENTRY_IOV_OFFSET + i * size_of::<tcmu_iovec>();
            put(
                &mut e,
                o + offset_of!(tcmu_iovec, iov_base),
                &b.to_ne_bytes(),
            );
            put(
                &mut e,
                o + offset_of!(tcmu_iovec, iov_len),
                &l.to_ne_bytes(),
            );
        }
        // "All offsets relative to mb_addr, not start of entry!"
        let cdb_off = (CMDR_OFF as usize + at + base) as u64;
        put(
            &mut e,
            offset_of!(tcmu_cmd_entry_req, cdb_off),
            &cdb_off.to_ne_bytes(),
        );
        put(&mut e, base, cdb);
        corrupt(&mut e);
        self.map.write_bytes(CMDR_OFF as usize + at, &e);
        self.cmds.insert(
            id,
            SimCmd {
                dir,
                blocks,
                out_blocks,
            },
        );
        self.publish_head((self.head + size as u32) % self.size);
        Ok(id)
    }

    /// Queues a TMR notification like `queue_tmr_ring`.
    ///
    /// # Errors
    ///
    /// [`SubmitError::RingFull`] (the kernel would queue it for later).
    pub fn submit_tmr(&mut self, tmr_type: u8, ids: &[u16]) -> Result<(), SubmitError> {
        let size = round_up8(TCMU_TMR_ENTRY_CMD_IDS_OFFSET + 2 * ids.len());
        if !self.room_for(size) {
            return Err(SubmitError::RingFull);
        }
        self.insert_padding(size);
        let mut e = vec![0u8; size];
        e[..4].copy_from_slice(&(size as u32 | tcmu_opcode::TCMU_OP_TMR).to_ne_bytes());
        e[offset_of!(tcmu_tmr_entry, tmr_type)] = tmr_type;
        let cnt = offset_of!(tcmu_tmr_entry, cmd_cnt);
        e[cnt..cnt + 4].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
        for (i, id) in ids.iter().enumerate() {
            let o = TCMU_TMR_ENTRY_CMD_IDS_OFFSET + 2 * i;
            e[o..o + 2].copy_from_slice(&id.to_ne_bytes());
        }
        self.map
            .write_bytes(CMDR_OFF as usize + self.head as usize, &e);
        self.publish_head((self.head + size as u32) % self.size);
        Ok(())
    }

    /// Writes raw bytes at the head and advances it by `advance` (for
    /// entries no kernel would write). No PAD, no bookkeeping.
    pub fn inject_raw(&mut self, bytes: &[u8], advance: u32) {
        self.map
            .write_bytes(CMDR_OFF as usize + self.head as usize, bytes);
        self.publish_head((self.head + advance) % self.size);
    }

    /// Sets `cmd_head` to any value (for invalid-head tests).
    pub fn force_head(&mut self, head: u32) {
        self.map.cmd_head().store(head, Ordering::Release);
    }

    fn fail(&mut self, why: String) {
        if self.broken.is_none() {
            self.broken = Some(why);
        }
    }

    /// What a doorbell write makes the kernel do (`tcmu_handle_completions`).
    /// Returns the number of commands completed.
    pub fn handle_completions(&mut self) -> usize {
        if self.broken.is_some() {
            return 0;
        }
        let tail = self.map.cmd_tail().load(Ordering::Acquire);
        let dist = |a: u32, b: u32| (b + self.size - a) % self.size;
        if tail >= self.size || !(tail as usize).is_multiple_of(TCMU_OP_ALIGN) {
            self.fail(format!("cmd_tail {tail:#x} outside the ring"));
            return 0;
        }
        if dist(self.last_cleaned, tail) > dist(self.last_cleaned, self.head) {
            self.fail(format!(
                "cmd_tail {tail:#x} passed cmd_head {:#x}",
                self.head
            ));
            return 0;
        }
        let mut n = 0;
        while self.last_cleaned != tail {
            let abs = CMDR_OFF as usize + self.last_cleaned as usize;
            let len_op = self.map.read_u32(abs).unwrap_or(0);
            let len = tcmu_hdr_get_len(len_op);
            if len == 0 {
                self.fail(format!("zero-length entry at {:#x}", self.last_cleaned));
                return n;
            }
            let op = tcmu_hdr_get_op(len_op);
            if op == tcmu_opcode::TCMU_OP_PAD || op == tcmu_opcode::TCMU_OP_TMR {
                self.last_cleaned = (self.last_cleaned + len) % self.size;
                continue;
            }
            let id = self
                .map
                .read_u16(abs + offset_of!(tcmu_cmd_entry_hdr, cmd_id))
                .unwrap_or(0);
            let Some(cmd) = self.cmds.remove(&id) else {
                self.fail(format!("cmd_id {id} not found, ring is broken"));
                return n;
            };
            let uflags = self
                .map
                .read_u8(abs + offset_of!(tcmu_cmd_entry_hdr, uflags))
                .unwrap_or(0);
            let st = self
                .map
                .read_u8(abs + offset_of!(tcmu_cmd_entry_rsp, scsi_status))
                .unwrap_or(0);
            let rl = self
                .map
                .read_u32(abs + offset_of!(tcmu_cmd_entry_rsp, read_len))
                .unwrap_or(0);
            let mut sense = vec![0u8; SENSE_LEN];
            self.map.read_bytes(
                abs + offset_of!(tcmu_cmd_entry_rsp, sense_buffer),
                &mut sense,
            );
            let (in_len, in_blocks) = match &cmd.dir {
                Dir::FromDevice(n) => (*n, &cmd.blocks[..]),
                Dir::Bidi(_, n) => (*n, &cmd.blocks[cmd.out_blocks..]),
                _ => (0, &cmd.blocks[..0]),
            };
            let read_len = (in_len > 0 && u32::from(uflags) & TCMU_UFLAG_READ_LEN != 0 && rl != 0)
                .then_some(rl);
            let mut data_in = Vec::new();
            if in_len > 0 && (st != status::CHECK_CONDITION || read_len.is_some()) {
                let want = read_len.map_or(in_len, |r| in_len.min(r as usize));
                data_in = vec![0u8; want];
                for (i, chunk) in data_in.chunks_mut(self.blk).enumerate() {
                    self.map
                        .read_bytes(self.map.data_off() + in_blocks[i] * self.blk, chunk);
                }
            }
            for &b in &cmd.blocks {
                self.used_blocks[b] = false;
            }
            self.done.push(Completion {
                cmd_id: id,
                status: st,
                sense,
                read_len,
                data_in,
            });
            n += 1;
            self.last_cleaned = (self.last_cleaned + len) % self.size;
        }
        n
    }

    /// The completions consumed so far, in the order the kernel saw them.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.done)
    }

    /// `action/reset_ring` with 1: every queued command is failed with BUSY
    /// and forgotten, head = tail = 0. Returns the ids failed.
    pub fn reset_ring(&mut self) -> Vec<u16> {
        let ids: Vec<u16> = self.cmds.keys().copied().collect();
        self.cmds.clear();
        self.used_blocks.iter_mut().for_each(|u| *u = false);
        self.last_cleaned = 0;
        self.map.cmd_tail().store(0, Ordering::Release);
        self.publish_head(0);
        self.broken = None;
        ids
    }
}
