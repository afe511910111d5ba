//! SCSI emulation (SBC-4/SPC-4 subset) for one logical unit over a
//! [`Backing`]. Transport-independent: it takes a CDB, a data-out scatter
//! list and a data-in scatter list and returns status, sense and the data-in
//! length. It knows nothing of rings, sockets or the DLM; PERSISTENT
//! RESERVE and RESERVE/RELEASE are intercepted by the caller.
//!
//! Layout: [`opcode`] (the one opcode table and CDB parsers), [`sense`]
//! (the one sense table and encodings), [`error`] (errors and their one
//! mapping to status/sense), `spc` (INQUIRY, MODE, RSOC, ...), `sbc` (block
//! I/O), [`lock`] (COMPARE AND WRITE atomicity), [`xcopy`] (EXTENDED COPY
//! and RECEIVE COPY RESULTS).

pub mod error;
pub mod lock;
pub mod opcode;
pub mod sense;
pub mod xcopy;

mod rw_async;
mod sbc;
mod spc;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::backing::Backing;
use crate::backing::iov;

pub use error::ScsiError;
pub use lock::{CawHook, HookRefusal, LockMode, RangeLock};
pub use rw_async::RwPlan;
pub use sense::{FieldPointer, Sense, SenseCode, SenseInfo};

use opcode::{Avail, Command};

/// A logical block address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lba(pub u64);

/// A number of logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blocks(pub u64);

/// What the caller gets back for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// SAM status ([`sense::status`]).
    pub status: u8,
    /// Sense data, fixed or descriptor format per the control page D_SENSE.
    pub sense: Option<Sense>,
    /// Bytes of data-in produced (always <= the data-in buffer).
    pub data_in_len: usize,
}

impl Response {
    /// GOOD with `data_in_len` bytes.
    pub fn good(data_in_len: usize) -> Self {
        Self {
            status: sense::status::GOOD,
            sense: None,
            data_in_len,
        }
    }
}

/// The identity the initiator sees: the same on every view and node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuIdentity {
    /// NAA designator for VPD 0x83.
    pub naa: NaaId,
    /// Unit serial number (VPD 0x80), printable ASCII.
    pub serial: String,
    /// T10 vendor identification, at most 8 printable ASCII characters.
    pub vendor: String,
    /// Product identification, at most 16 characters.
    pub product: String,
    /// Product revision level, at most 4 characters.
    pub revision: String,
}

/// An NAA designator: 8 bytes (NAA 2, 3 or 5) or 16 bytes (NAA 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NaaId {
    bytes: [u8; 16],
    len: u8,
}

impl NaaId {
    /// Validate length against the NAA field (top nibble).
    pub fn new(bytes: &[u8]) -> Result<Self, ConfigError> {
        let naa = bytes.first().map(|b| b >> 4);
        let ok = matches!((naa, bytes.len()), (Some(2 | 3 | 5), 8) | (Some(6), 16));
        if !ok {
            return Err(ConfigError::BadNaa);
        }
        let mut b = [0u8; 16];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            bytes: b,
            len: sat_u8(bytes.len()),
        })
    }

    /// The designator bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Per-view target port identifiers (DESIGN.md §2), given on each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetPort {
    /// Relative target port identifier.
    pub rtpi: u16,
    /// Target port group.
    pub tpg: u16,
    /// SCSI transport protocol identifier (SPC-4 7.6.1, e.g. 5 = iSCSI),
    /// if known: then the port designators carry PIV=1.
    pub protocol_id: Option<u8>,
}

/// Static configuration of a logical unit.
#[derive(Debug, Clone)]
pub struct LuConfig {
    /// Logical block size in bytes (a power of two, 512..=65536).
    pub block_size: u32,
    /// What INQUIRY reports.
    pub identity: LuIdentity,
    /// Maximum transfer length in blocks (hw_max_sectors).
    pub hw_max_sectors: u32,
    /// Initial (and default) write cache enable.
    pub write_cache: bool,
    /// Refuse writes even if the backing allows them.
    pub read_only: bool,
    /// Logical block provisioning: UNMAP, WRITE SAME with UNMAP, GET LBA
    /// STATUS, LBPME. Only honoured if the backing supports discard.
    pub thin_provisioning: bool,
    /// VPD 0xB0 MAXIMUM UNMAP LBA COUNT.
    pub max_unmap_lba_count: u32,
    /// VPD 0xB0 MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub max_unmap_descriptors: u32,
    /// VPD 0xB0 OPTIMAL UNMAP GRANULARITY (blocks).
    pub unmap_granularity: u32,
    /// VPD 0xB0 MAXIMUM WRITE SAME LENGTH (blocks).
    pub max_write_same_len: u64,
    /// VPD 0xB0 MAXIMUM COMPARE AND WRITE LENGTH (blocks).
    pub max_compare_write_len: u8,
    /// READ CAPACITY(16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (e.g.
    /// 3 for 512-byte blocks on a 4 KiB-block filesystem), 0..=15.
    pub lbppbe: u8,
    /// VPD 0xB1 MEDIUM ROTATION RATE (0 = not reported, 1 = non-rotating).
    pub rotation_rate: u16,
    /// INQUIRY TPGS field (0 = no ALUA; 1 = implicit, answered by caller).
    pub tpgs: u8,
    /// List the caller-served PR and RESERVE/RELEASE commands in REPORT
    /// SUPPORTED OPERATION CODES.
    pub report_pr_commands: bool,
}

impl LuConfig {
    /// Defaults matching LIO's TCMU attributes.
    pub fn new(block_size: u32, identity: LuIdentity) -> Self {
        Self {
            block_size,
            identity,
            hw_max_sectors: 128,
            write_cache: true,
            read_only: false,
            thin_provisioning: true,
            // Hole punching is cheap, so let initiators discard in big
            // pieces; 2^20 is the most libiscsi's conformance suite accepts
            // as sane (and 512 MiB per descriptor at 512-byte blocks).
            max_unmap_lba_count: 1 << 20,
            max_unmap_descriptors: 256,
            unmap_granularity: 1,
            max_write_same_len: 0xffff,
            max_compare_write_len: 1,
            lbppbe: 0,
            rotation_rate: 0,
            tpgs: 0,
            report_pr_commands: false,
        }
    }
}

/// Invalid LU configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Block size not a power of two in 512..=65536.
    #[error("block size {0} must be a power of two between 512 and 65536")]
    BlockSize(u32),
    /// NAA designator malformed.
    #[error("NAA designator must be 8 bytes (NAA 2/3/5) or 16 bytes (NAA 6)")]
    BadNaa,
    /// An INQUIRY string is too long or not printable ASCII.
    #[error("{field} must be at most {max} printable ASCII characters")]
    BadString {
        /// Which field.
        field: &'static str,
        /// Its limit.
        max: usize,
    },
    /// The physical block exponent does not fit its 4-bit field.
    #[error("logical blocks per physical block exponent {0} exceeds 15")]
    Exponent(u8),
    /// hw_max_sectors is zero.
    #[error("hw_max_sectors must be at least 1")]
    MaxSectors,
}

/// Mode parameters the initiator can change (MODE SELECT).
#[derive(Debug)]
struct ModeState {
    wce: AtomicBool,
    d_sense: AtomicBool,
    swp: AtomicBool,
    /// Serialises MODE SELECT so a parameter list applies as a whole.
    select: Mutex<()>,
}

/// One logical unit: identity, configuration, mode state and its medium.
/// `execute` may be called concurrently from any number of threads.
#[derive(Debug)]
pub struct Lu {
    cfg: LuConfig,
    backing: Arc<dyn Backing>,
    mode: ModeState,
    ranges: std::sync::Arc<RangeLock>,
    caw_hook: Option<Arc<dyn CawHook>>,
    /// EXTENDED COPY status kept for RECEIVE COPY RESULTS.
    copies: xcopy::CopyManager,
}

fn check_string(field: &'static str, s: &str, max: usize) -> Result<(), ConfigError> {
    if s.len() > max || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ConfigError::BadString { field, max });
    }
    Ok(())
}

impl Lu {
    /// A logical unit over `backing`.
    pub fn new(cfg: LuConfig, backing: Arc<dyn Backing>) -> Result<Self, ConfigError> {
        if !cfg.block_size.is_power_of_two() || !(512..=65536).contains(&cfg.block_size) {
            return Err(ConfigError::BlockSize(cfg.block_size));
        }
        if cfg.lbppbe > 15 {
            return Err(ConfigError::Exponent(cfg.lbppbe));
        }
        if cfg.hw_max_sectors == 0 {
            return Err(ConfigError::MaxSectors);
        }
        let id = &cfg.identity;
        check_string("vendor", &id.vendor, 8)?;
        check_string("product", &id.product, 16)?;
        check_string("revision", &id.revision, 4)?;
        // The T10 vendor ID designator holds 8 vendor bytes + the serial in a
        // one-byte length.
        check_string("serial", &id.serial, 247)?;
        Ok(Self {
            mode: ModeState {
                wce: AtomicBool::new(cfg.write_cache),
                d_sense: AtomicBool::new(false),
                swp: AtomicBool::new(false),
                select: Mutex::new(()),
            },
            cfg,
            backing,
            ranges: std::sync::Arc::default(),
            caw_hook: None,
            copies: xcopy::CopyManager::default(),
        })
    }

    /// Wrap every COMPARE AND WRITE in `hook` (e.g. a cluster-wide lock).
    pub fn set_caw_hook(&mut self, hook: Arc<dyn CawHook>) {
        self.caw_hook = Some(hook);
    }

    /// The range lock writes and COMPARE AND WRITE use; callers that write
    /// to the medium outside `execute` must take it too.
    pub fn range_lock(&self) -> &RangeLock {
        &self.ranges
    }

    /// The configuration.
    pub fn config(&self) -> &LuConfig {
        &self.cfg
    }

    /// The medium.
    pub fn backing(&self) -> &Arc<dyn Backing> {
        &self.backing
    }

    /// Capacity in logical blocks.
    pub fn capacity(&self) -> Blocks {
        Blocks(self.backing.len() / u64::from(self.cfg.block_size))
    }

    /// Current write cache enable (caching page WCE).
    pub fn write_cache_enabled(&self) -> bool {
        self.mode.wce.load(Ordering::Relaxed)
    }

    /// Set WCE, e.g. from a TCMU write-cache reconfiguration.
    pub fn set_write_cache(&self, on: bool) {
        self.mode.wce.store(on, Ordering::Relaxed);
    }

    /// Current D_SENSE: sense data in descriptor format.
    pub fn descriptor_sense(&self) -> bool {
        self.mode.d_sense.load(Ordering::Relaxed)
    }

    /// True if writes are refused (read-only config or image, or SWP).
    pub fn write_protected(&self) -> bool {
        self.cfg.read_only || self.backing.is_read_only() || self.mode.swp.load(Ordering::Relaxed)
    }

    /// True if logical block provisioning is offered.
    pub fn lbp(&self) -> bool {
        self.cfg.thin_provisioning && self.backing.supports_discard()
    }

    /// Encode `info` per the current D_SENSE (for callers that build their
    /// own CHECK CONDITIONs, e.g. the PR engine).
    pub fn encode_sense(&self, info: &SenseInfo) -> Sense {
        Sense::encode(info, self.descriptor_sense())
    }

    /// Execute one command. Never panics, whatever the input.
    pub fn execute(
        &self,
        port: &TargetPort,
        cdb: &[u8],
        data_out: &[IoSlice<'_>],
        data_in: &mut [IoSliceMut<'_>],
    ) -> Response {
        match self.dispatch(port, cdb, data_out, data_in) {
            Ok(r) => r,
            Err(e) => e.to_response(self.descriptor_sense()),
        }
    }

    fn dispatch(
        &self,
        port: &TargetPort,
        cdb: &[u8],
        out: &[IoSlice<'_>],
        din: &mut [IoSliceMut<'_>],
    ) -> Result<Response, ScsiError> {
        let info = opcode::lookup(cdb)?;
        match info.avail {
            Avail::Always => {}
            Avail::Lbp if self.lbp() => {}
            Avail::Lbp | Avail::Kernel | Avail::Caller => return Err(ScsiError::InvalidOpcode),
        }
        let cmd = opcode::parse(info, cdb)?;
        let len = match cmd {
            Command::TestUnitReady | Command::PreventAllow => 0,
            Command::Copy(c) => self.copy_command(c, out, din)?,
            Command::RequestSense { desc, alloc } => self.request_sense(desc, alloc, din),
            Command::Inquiry { evpd, page, alloc } => self.inquiry(port, evpd, page, alloc, din)?,
            Command::ModeSense {
                long,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => self.mode_sense(long, dbd, llbaa, pc, page, subpage, alloc, din)?,
            Command::ModeSelect { long, pf, sp, plen } => {
                self.mode_select(long, pf, sp, plen, out)?
            }
            Command::StartStop { start, no_flush } => {
                // Stopping a disk writes its cache back first unless told not to.
                if !start && !no_flush {
                    self.backing.sync().map_err(ScsiError::Sync)?;
                }
                0
            }
            Command::ReadCapacity10 => self.read_capacity10(din),
            Command::ReadCapacity16 { alloc } => self.read_capacity16(alloc, din),
            Command::GetLbaStatus { lba, alloc } => self.get_lba_status(lba, alloc, din)?,
            Command::Read(rw) => self.read(&rw, din)?,
            Command::Write(rw) => self.write(&rw, out)?,
            Command::WriteVerify { rw, bytchk } => self.write_verify(&rw, bytchk, out)?,
            Command::Verify { rw, bytchk } => self.verify(&rw, bytchk, out)?,
            Command::SyncCache { lba, blocks } => self.sync_cache(lba, blocks)?,
            Command::WriteSame {
                rw,
                unmap,
                anchor,
                ndob,
            } => self.write_same(&rw, unmap, anchor, ndob, out)?,
            Command::Unmap { anchor, plen } => self.unmap(anchor, plen, out)?,
            Command::CompareAndWrite { rw } => self.compare_and_write(&rw, out)?,
            Command::OrWrite(rw) => self.or_write(&rw, out)?,
            Command::PreFetch { lba, blocks } => self.pre_fetch(lba, blocks)?,
            Command::ReadDefectData {
                long,
                plist,
                glist,
                format,
                alloc,
            } => self.read_defect_data(long, plist, glist, format, alloc, din),
            Command::ReportOpcodes {
                rctd,
                options,
                opcode,
                sa,
                alloc,
            } => self.report_opcodes(rctd, options, opcode, sa, alloc, din)?,
        };
        Ok(Response::good(len))
    }
}

/// `v` as a u8, saturating (for lengths the layout already bounds).
pub(crate) fn sat_u8(v: usize) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// `v` as a u16, saturating.
pub(crate) fn sat_u16(v: usize) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Position of the highest set bit of a non-zero byte.
pub(crate) fn high_bit(b: u8) -> u8 {
    (0..8u8).rev().find(|i| b & (1 << i) != 0).unwrap_or(0)
}

/// Copy control data to data-in, truncated to the allocation length and the
/// buffer: returns min(alloc, data, buffer).
fn put_data_in(data: &[u8], alloc: usize, din: &mut [IoSliceMut<'_>]) -> usize {
    let n = data.len().min(alloc);
    iov::scatter(din, 0, &data[..n])
}
