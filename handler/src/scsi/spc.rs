//! SPC commands and block-device reports: REQUEST SENSE, INQUIRY and its
//! VPD pages, MODE SENSE/SELECT, READ CAPACITY, REPORT SUPPORTED OPERATION
//! CODES.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering;

use super::error::ScsiError;
use super::opcode::{self, Avail, OPCODES, OpInfo};
use super::sense::{self, FieldPointer, Sense, SenseInfo};
use super::{Lu, TargetPort, high_bit, put_data_in, sat_u8, sat_u16};
use crate::backing::iov;

/// VPD pages we serve, in order (VPD 0x00 lists them).
const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// Mode pages we serve, in order.
const MODE_PAGES: [u8; 4] = [0x01, 0x08, 0x0a, 0x1c];

/// RSOC recommended timeout for every command, seconds: the kernel's
/// default TCMU cmd_time_out.
const RECOMMENDED_TIMEOUT_S: u32 = 30;

/// Mode page control (MODE SENSE PC field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

fn pad(s: &str, n: usize) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(n, b' ');
    v
}

fn u16_be(v: usize) -> [u8; 2] {
    u16::try_from(v).unwrap_or(u16::MAX).to_be_bytes()
}

fn u32_be(v: u64) -> [u8; 4] {
    u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes()
}

impl Lu {
    pub(super) fn request_sense(
        &self,
        desc: bool,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> usize {
        // No deferred errors or unit attentions are kept here (the caller's
        // PR layer owns unit attentions), so the answer is NO SENSE.
        let s = Sense::encode(&SenseInfo::new(sense::NO_ADDITIONAL_SENSE), desc);
        put_data_in(s.as_bytes(), alloc, din)
    }

    pub(super) fn inquiry(
        &self,
        port: &TargetPort,
        evpd: bool,
        page: u8,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> Result<usize, ScsiError> {
        let data = if evpd {
            self.vpd(port, page)?
        } else if page != 0 {
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb_byte(2)));
        } else {
            self.standard_inquiry()
        };
        Ok(put_data_in(&data, alloc, din))
    }

    fn standard_inquiry(&self) -> Vec<u8> {
        let id = &self.cfg.identity;
        let mut d = vec![0u8; 8];
        d[2] = 0x06; // SPC-4
        d[3] = 0x12; // HISUP, response data format 2
        d[5] = (self.cfg.tpgs & 3) << 4;
        d[7] = 0x02; // CMDQUE
        d.extend(pad(&id.vendor, 8));
        d.extend(pad(&id.product, 16));
        d.extend(pad(&id.revision, 4));
        d.resize(58, 0);
        // Version descriptors: SAM-5, SPC-4, SBC-3.
        for v in [0x00a0u16, 0x0460, 0x04c0] {
            d.extend(v.to_be_bytes());
        }
        d[4] = sat_u8(d.len() - 5);
        d
    }

    fn vpd(&self, port: &TargetPort, page: u8) -> Result<Vec<u8>, ScsiError> {
        let body = match page {
            0x00 => VPD_PAGES.to_vec(),
            0x80 => self.cfg.identity.serial.as_bytes().to_vec(),
            0x83 => self.vpd_device_id(port),
            0xb0 => self.vpd_block_limits(),
            0xb1 => {
                let mut b = vec![0u8; 0x3c];
                b[0..2].copy_from_slice(&self.cfg.rotation_rate.to_be_bytes());
                b
            }
            0xb2 => {
                let mut b = vec![0u8; 4];
                if self.lbp() {
                    // LBPU, LBPWS, LBPWS10; LBPRZ=001b: unmapped blocks read zero.
                    b[1] = 0x80 | 0x40 | 0x20 | (1 << 2);
                    b[2] = 0x02; // thin provisioned
                }
                b
            }
            _ => return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb_byte(2))),
        };
        let mut d = vec![0x00, page];
        d.extend(u16_be(body.len()));
        d.extend(body);
        Ok(d)
    }

    fn vpd_device_id(&self, port: &TargetPort) -> Vec<u8> {
        let id = &self.cfg.identity;
        let mut d = Vec::new();
        let designator = |d: &mut Vec<u8>, code_set: u8, piv_assoc_type: u8, body: &[u8]| {
            let proto = match (piv_assoc_type & 0x80, port.protocol_id) {
                (0x80, Some(p)) => p << 4,
                _ => 0,
            };
            d.extend([proto | code_set, piv_assoc_type, 0, sat_u8(body.len())]);
            d.extend(body);
        };
        // NAA, binary, associated with the LU.
        designator(&mut d, 1, 0x03, id.naa.as_bytes());
        // T10 vendor ID, ASCII: vendor padded to 8, then the unit serial.
        let mut t10 = pad(&id.vendor, 8);
        t10.extend(id.serial.as_bytes());
        designator(&mut d, 2, 0x01, &t10);
        // Relative target port and target port group, associated with the
        // target port (PIV only when we know the protocol).
        let piv = if port.protocol_id.is_some() { 0x80 } else { 0 };
        let mut rtp = [0u8; 4];
        rtp[2..].copy_from_slice(&port.rtpi.to_be_bytes());
        designator(&mut d, 1, piv | 0x10 | 0x04, &rtp);
        let mut tpg = [0u8; 4];
        tpg[2..].copy_from_slice(&port.tpg.to_be_bytes());
        designator(&mut d, 1, piv | 0x10 | 0x05, &tpg);
        d
    }

    fn vpd_block_limits(&self) -> Vec<u8> {
        let c = &self.cfg;
        let mut b = vec![0u8; 0x3c];
        // WSNZ=0: WRITE SAME with zero blocks writes to the end of the medium.
        b[1] = c
            .max_compare_write_len
            .min(u8::try_from(c.hw_max_sectors).unwrap_or(u8::MAX));
        b[2..4].copy_from_slice(&1u16.to_be_bytes()); // optimal transfer granularity
        b[4..8].copy_from_slice(&c.hw_max_sectors.to_be_bytes());
        b[8..12].copy_from_slice(&c.hw_max_sectors.to_be_bytes());
        if self.lbp() {
            b[16..20].copy_from_slice(&c.max_unmap_lba_count.to_be_bytes());
            b[20..24].copy_from_slice(&c.max_unmap_descriptors.to_be_bytes());
            b[24..28].copy_from_slice(&c.unmap_granularity.to_be_bytes());
        }
        b[32..40].copy_from_slice(&c.max_write_same_len.to_be_bytes());
        b
    }

    pub(super) fn read_capacity10(&self, din: &mut [IoSliceMut<'_>]) -> usize {
        let last = self.capacity().0.saturating_sub(1);
        let mut d = [0u8; 8];
        d[..4].copy_from_slice(&u32_be(last));
        d[4..].copy_from_slice(&self.cfg.block_size.to_be_bytes());
        put_data_in(&d, d.len(), din)
    }

    pub(super) fn read_capacity16(&self, alloc: usize, din: &mut [IoSliceMut<'_>]) -> usize {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&self.capacity().0.saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&self.cfg.block_size.to_be_bytes());
        d[13] = self.cfg.lbppbe & 0x0f;
        if self.lbp() {
            d[14] = 0x80 | 0x40; // LBPME, LBPRZ
        }
        put_data_in(&d, alloc, din)
    }

    /// A mode page (header included) for page control `pc`.
    fn mode_page(&self, page: u8, pc: PageControl) -> Vec<u8> {
        let m = &self.mode;
        let (len, mut p) = match page {
            0x01 | 0x1c => (0x0a, vec![0u8; 12]),
            0x08 => (0x12, vec![0u8; 20]),
            _ => (0x0a, vec![0u8; 12]), // 0x0a
        };
        p[0] = page;
        p[1] = len;
        let pick = |cur: bool, def: bool| match pc {
            PageControl::Current => cur,
            PageControl::Changeable => true,
            PageControl::Default => def,
        };
        match (page, pc) {
            (0x08, _) if pick(m.wce.load(Ordering::Relaxed), self.cfg.write_cache) => p[2] |= 0x04,
            (0x0a, PageControl::Changeable) => {
                p[2] = 0x04; // D_SENSE
                p[4] = 0x08; // SWP
            }
            (0x0a, _) => {
                if pick(m.d_sense.load(Ordering::Relaxed), false) {
                    p[2] |= 0x04;
                }
                p[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
                if pick(m.swp.load(Ordering::Relaxed), false) {
                    p[4] |= 0x08;
                }
                p[5] = 0x40; // TAS: aborted commands get TASK ABORTED
                p[8..10].copy_from_slice(&[0xff, 0xff]); // busy timeout: unlimited
            }
            _ => {}
        }
        p
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mode_sense(
        &self,
        long: bool,
        dbd: bool,
        llbaa: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> Result<usize, ScsiError> {
        let pc = match pc {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => return Err(ScsiError::SavingNotSupported(FieldPointer::cdb(2, 7))),
        };
        // Subpage 0xff asks for "all subpages"; we have only subpage 0.
        if subpage != 0 && subpage != 0xff {
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb_byte(3)));
        }
        let pages: Vec<u8> = if page == 0x3f {
            MODE_PAGES.to_vec()
        } else if MODE_PAGES.contains(&page) {
            vec![page]
        } else {
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(2, 5)));
        };
        let blocks = self.capacity().0;
        let bd: Vec<u8> = match (dbd, long && llbaa) {
            (true, _) => Vec::new(),
            (false, true) => {
                let mut b = vec![0u8; 16];
                b[..8].copy_from_slice(&blocks.to_be_bytes());
                b[12..].copy_from_slice(&self.cfg.block_size.to_be_bytes());
                b
            }
            (false, false) => {
                let mut b = vec![0u8; 8];
                b[..4].copy_from_slice(&u32_be(blocks));
                b[4..].copy_from_slice(&self.cfg.block_size.to_be_bytes());
                b[4] = 0;
                b
            }
        };
        // Device-specific parameter: WP, DPOFUA.
        let dsp = if self.write_protected() { 0x80 } else { 0 } | 0x10;
        let mut d = if long {
            let mut h = vec![0u8; 8];
            h[3] = dsp;
            h[4] = u8::from(bd.len() == 16);
            h[6..8].copy_from_slice(&u16_be(bd.len()));
            h
        } else {
            vec![0, 0, dsp, sat_u8(bd.len())]
        };
        d.extend(bd);
        for p in pages {
            d.extend(self.mode_page(p, pc));
        }
        if long {
            let l = u16_be(d.len() - 2);
            d[..2].copy_from_slice(&l);
        } else {
            d[0] = u8::try_from(d.len() - 1).unwrap_or(u8::MAX);
        }
        Ok(put_data_in(&d, alloc, din))
    }

    pub(super) fn mode_select(
        &self,
        long: bool,
        pf: bool,
        sp: bool,
        plen: usize,
        out: &[IoSlice<'_>],
    ) -> Result<usize, ScsiError> {
        if sp {
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 0)));
        }
        if !pf {
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 4)));
        }
        if plen == 0 {
            return Ok(0);
        }
        let hdr = if long { 8 } else { 4 };
        if plen < hdr || iov::total_len(out) < plen {
            return Err(ScsiError::ParameterListLength);
        }
        let mut p = vec![0u8; plen];
        iov::gather(out, 0, &mut p);
        let bad = |byte: usize, bit: u8| {
            ScsiError::InvalidFieldInParam(FieldPointer::param(sat_u16(byte), bit))
        };
        let (bdl, longlba) = if long {
            (usize::from(u16::from_be_bytes([p[6], p[7]])), p[4] & 1 != 0)
        } else {
            (usize::from(p[3]), false)
        };
        let bd_len = if longlba { 16 } else { 8 };
        if bdl != 0 && bdl != bd_len {
            return Err(bad(if long { 6 } else { 3 }, 7));
        }
        if hdr + bdl > plen {
            return Err(ScsiError::ParameterListLength);
        }
        if bdl != 0 {
            // Only the current geometry (or "no change") is accepted.
            let b = &p[hdr..hdr + bdl];
            let (nblocks, blen_at, blen) = if longlba {
                let n = u64::from_be_bytes(b[..8].try_into().unwrap_or_default());
                (n, 12, u32::from_be_bytes([b[12], b[13], b[14], b[15]]))
            } else {
                let n = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                (n, 5, u32::from_be_bytes([0, b[5], b[6], b[7]]))
            };
            let cap = self.capacity().0;
            let shown = if longlba {
                cap
            } else {
                cap.min(u64::from(u32::MAX))
            };
            if nblocks != 0 && nblocks != shown {
                return Err(bad(hdr, 7));
            }
            if blen != self.cfg.block_size {
                return Err(bad(hdr + blen_at, 7));
            }
        }
        // Validate every page before applying any.
        let mut updates = Vec::new();
        let mut at = hdr + bdl;
        while at < plen {
            if at + 2 > plen {
                return Err(ScsiError::ParameterListLength);
            }
            if p[at] & 0x40 != 0 {
                return Err(bad(at, 6)); // SPF: we have no subpages
            }
            let code = p[at] & 0x3f;
            if !MODE_PAGES.contains(&code) {
                return Err(bad(at, 5));
            }
            let cur = self.mode_page(code, PageControl::Current);
            let chg = self.mode_page(code, PageControl::Changeable);
            if usize::from(p[at + 1]) != cur.len() - 2 {
                return Err(bad(at + 1, 7));
            }
            if at + cur.len() > plen {
                return Err(ScsiError::ParameterListLength);
            }
            let new = &p[at..at + cur.len()];
            for i in 2..cur.len() {
                let fixed = (new[i] ^ cur[i]) & !chg[i];
                if fixed != 0 {
                    return Err(bad(at + i, high_bit(fixed)));
                }
            }
            updates.push((code, new[2], new[4]));
            at += cur.len();
        }
        let _g = self.mode.select.lock().unwrap_or_else(|e| e.into_inner());
        for (code, b2, b4) in updates {
            match code {
                0x08 => self.mode.wce.store(b2 & 0x04 != 0, Ordering::Relaxed),
                0x0a => {
                    self.mode.d_sense.store(b2 & 0x04 != 0, Ordering::Relaxed);
                    self.mode.swp.store(b4 & 0x08 != 0, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        Ok(0)
    }

    fn offered(&self, o: &OpInfo) -> bool {
        match o.avail {
            Avail::Always | Avail::Kernel => true,
            Avail::Lbp => self.lbp(),
            Avail::Caller => self.cfg.report_pr_commands,
        }
    }

    pub(super) fn report_opcodes(
        &self,
        rctd: bool,
        options: u8,
        op: u8,
        sa: u16,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> Result<usize, ScsiError> {
        let mut timeouts = vec![0x00, 0x0a, 0, 0, 0, 0, 0, 0];
        timeouts.extend(RECOMMENDED_TIMEOUT_S.to_be_bytes());
        let bad_ro = ScsiError::InvalidFieldInCdb(FieldPointer::cdb(2, 2));
        let has_sa = opcode::has_service_action(op);
        let want_sa = match options {
            0 => {
                let mut d = vec![0u8; 4];
                for o in OPCODES.iter().filter(|o| self.offered(o)) {
                    d.extend([o.opcode, 0]);
                    d.extend(u16::from(o.service_action.unwrap_or(0)).to_be_bytes());
                    d.push(0);
                    d.push(if rctd { 0x02 } else { 0 } | u8::from(o.service_action.is_some()));
                    d.extend(u16_be(o.cdb_len()));
                    if rctd {
                        d.extend(&timeouts);
                    }
                }
                let l = u32_be((d.len() - 4) as u64);
                d[..4].copy_from_slice(&l);
                return Ok(put_data_in(&d, alloc, din));
            }
            1 if has_sa => return Err(bad_ro),
            1 => None,
            2 if !has_sa => return Err(bad_ro),
            2 | 3 if has_sa => Some(sa),
            3 => None,
            _ => return Err(bad_ro),
        };
        let found = OPCODES.iter().find(|o| {
            o.opcode == op && o.service_action.map(u16::from) == want_sa && self.offered(o)
        });
        let mut d = vec![0u8; 4];
        match found {
            Some(o) => {
                d[1] = if rctd { 0x80 } else { 0 } | 0x03; // supported per standard
                d[2..4].copy_from_slice(&u16_be(o.cdb_len()));
                d.extend(o.usage);
                if rctd {
                    d.extend(&timeouts);
                }
            }
            None => d[1] = 0x01, // not supported
        }
        Ok(put_data_in(&d, alloc, din))
    }
}
