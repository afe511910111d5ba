//! The durable state store (DESIGN.md §4): the LU's identity and PR state on
//! the shared storage, in two checksummed slots.
//!
//! A writer writes the slot that does not hold the newest valid state, with
//! O_DIRECT and O_DSYNC, so a crash mid-write leaves the previous state
//! intact; a reader takes the valid slot with the highest sequence number. A
//! torn write therefore falls back to the state before it, which is correct:
//! the command that wrote it was never acknowledged.
//!
//! The payload is opaque bytes; the PR layer serializes its state into it.
//! A store that holds data we cannot read (a corrupt pair of slots, or a
//! newer format) is refused and never overwritten.
//!
//! Slot layout (little endian), `SLOT_SIZE` bytes each, slot 0 at offset 0:
//! `magic[8] = "TCMUPRD\0" | format u32 | header_len u32 | seq u64 |
//!  payload_len u32 | crc32c u32 | payload...`, the CRC covering the header
//! (with the CRC field zero) and the payload.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Identifies a slot of ours.
pub const MAGIC: [u8; 8] = *b"TCMUPRD\0";
/// The slot format this build reads and writes.
pub const FORMAT: u32 = 1;
/// Bytes per slot: room for the identity and a few thousand registrations.
pub const SLOT_SIZE: usize = 256 * 1024;
const HEADER_LEN_U32: u32 = 32;
const HEADER_LEN: usize = HEADER_LEN_U32 as usize;
/// Largest payload a slot holds.
pub const MAX_PAYLOAD: usize = SLOT_SIZE - HEADER_LEN;
/// O_DIRECT needs buffers, offsets and lengths aligned to the logical block
/// size; 4096 covers every device we meet.
const ALIGN: usize = 4096;

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on the store file failed.
    #[error("state store {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Neither slot is valid although the store is not empty.
    #[error("state store {path} is corrupt ({detail}); refusing to use or overwrite it")]
    Corrupt { path: PathBuf, detail: String },
    /// A slot was written by a newer tcmu-prd.
    #[error(
        "state store {path} has format {found}, newer than this build's {FORMAT}; refusing to use or overwrite it"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    /// The payload does not fit in a slot.
    #[error("state of {len} bytes does not fit in a {MAX_PAYLOAD}-byte slot")]
    TooLarge { len: usize },
}

/// The newest valid state in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Sequence number: increases by one with every write.
    pub seq: u64,
    /// The state bytes.
    pub payload: Vec<u8>,
    /// Which slot holds it (0 or 1).
    pub slot: usize,
}

/// What one slot's bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// All zero or never written.
    Blank,
    /// A valid state.
    Valid { seq: u64, payload: Vec<u8> },
    /// Ours, from a newer format.
    Newer(u32),
    /// Anything else (torn write, foreign data); the string says what.
    Invalid(String),
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&header[..HEADER_LEN]);
    h[28..32].fill(0);
    crc32c::crc32c_append(crc32c::crc32c(&h), payload)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Decodes one slot as [`Store::read`] does; for the fuzz target (whether
/// the bytes hold a valid slot, and its sequence number).
#[doc(hidden)]
#[must_use]
pub fn fuzz_decode_slot(b: &[u8]) -> Option<u64> {
    match decode(b) {
        Slot::Valid { seq, .. } => Some(seq),
        _ => None,
    }
}

/// Decodes one slot. Never panics, whatever the bytes.
fn decode(b: &[u8]) -> Slot {
    if b.len() < HEADER_LEN {
        return if b.iter().all(|&x| x == 0) {
            Slot::Blank
        } else {
            Slot::Invalid("short slot".into())
        };
    }
    if b[..8] != MAGIC {
        return if b[..HEADER_LEN].iter().all(|&x| x == 0) {
            Slot::Blank
        } else {
            Slot::Invalid("no tcmu-prd magic".into())
        };
    }
    let format = u32_at(b, 8);
    let header_len = u32_at(b, 12) as usize;
    let seq = u64_at(b, 16);
    let len = u32_at(b, 24) as usize;
    let stored_crc = u32_at(b, 28);
    if format > FORMAT {
        return Slot::Newer(format);
    }
    if format != FORMAT || header_len != HEADER_LEN {
        return Slot::Invalid(format!("format {format} header length {header_len}"));
    }
    if len > b.len() - HEADER_LEN || len > MAX_PAYLOAD {
        return Slot::Invalid(format!("payload length {len} exceeds the slot"));
    }
    let payload = &b[HEADER_LEN..HEADER_LEN + len];
    if crc(b, payload) != stored_crc {
        return Slot::Invalid(format!("checksum mismatch in seq {seq}"));
    }
    Slot::Valid {
        seq,
        payload: payload.to_vec(),
    }
}

fn encode(seq: u64, payload: &[u8], out: &mut [u8]) {
    out.fill(0);
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    out[12..16].copy_from_slice(&HEADER_LEN_U32.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..28].copy_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let c = crc(out, payload);
    out[28..32].copy_from_slice(&c.to_le_bytes());
}

/// Picks the newest valid state from both slots, or says why there is none.
fn choose(path: &Path, slots: [Slot; 2]) -> Result<Option<Snapshot>, StoreError> {
    for s in &slots {
        if let Slot::Newer(found) = s {
            return Err(StoreError::NewerFormat {
                path: path.into(),
                found: *found,
            });
        }
    }
    let mut best: Option<Snapshot> = None;
    for (i, s) in slots.iter().enumerate() {
        if let Slot::Valid { seq, payload } = s
            && best.as_ref().is_none_or(|b| *seq > b.seq)
        {
            best = Some(Snapshot {
                seq: *seq,
                payload: payload.clone(),
                slot: i,
            });
        }
    }
    if best.is_some() {
        return Ok(best);
    }
    match slots {
        [Slot::Blank, Slot::Blank] => Ok(None),
        [a, b] => Err(StoreError::Corrupt {
            path: path.into(),
            detail: format!("slot 0: {}; slot 1: {}", describe(&a), describe(&b)),
        }),
    }
}

fn describe(s: &Slot) -> String {
    match s {
        Slot::Blank => "blank".into(),
        Slot::Valid { seq, .. } => format!("valid seq {seq}"),
        Slot::Newer(f) => format!("format {f}"),
        Slot::Invalid(why) => why.clone(),
    }
}

/// A page-aligned buffer without unsafe: a larger Vec, used from its first
/// aligned byte.
struct Aligned {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + ALIGN];
        let off = buf.as_ptr().align_offset(ALIGN);
        Aligned { buf, off, len }
    }
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// An open state store file.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    file: File,
}

impl Store {
    /// Opens (creating if `create`) the store at `path`. With `direct`,
    /// reads and writes bypass the page cache (O_DIRECT) and writes are
    /// durable on return (O_DSYNC) — required on shared storage so that
    /// another node reads what we wrote. Without it (tests on tmpfs, which
    /// has no O_DIRECT), writes are still O_DSYNC.
    pub fn open(path: &Path, create: bool, direct: bool) -> Result<Self, StoreError> {
        let mut flags = libc::O_DSYNC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
            .map_err(|source| StoreError::Io {
                path: path.into(),
                op: "open",
                source,
            })?;
        Ok(Store {
            path: path.into(),
            file,
        })
    }

    /// The store's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_slot(&self, i: usize) -> Result<Slot, StoreError> {
        let mut buf = Aligned::new(SLOT_SIZE);
        let mut done = 0;
        while done < SLOT_SIZE {
            let n = self
                .file
                .read_at(&mut buf.as_mut()[done..], (i * SLOT_SIZE + done) as u64)
                .map_err(|source| StoreError::Io {
                    path: self.path.clone(),
                    op: "read",
                    source,
                })?;
            if n == 0 {
                break; // short file: the rest reads as zeros
            }
            done += n;
        }
        Ok(decode(buf.as_slice()))
    }

    /// The newest valid state, `None` for a new (blank) store.
    pub fn read(&self) -> Result<Option<Snapshot>, StoreError> {
        let slots = [self.read_slot(0)?, self.read_slot(1)?];
        choose(&self.path, slots)
    }

    /// Writes `payload` as the state after `current` (the snapshot returned
    /// by the last `read`, `None` for a blank store): seq + 1, into the other
    /// slot. Returns the new snapshot. Re-read before writing if another
    /// node may have written meanwhile — the cluster layer holds EX for that.
    pub fn write(
        &self,
        current: Option<&Snapshot>,
        payload: &[u8],
    ) -> Result<Snapshot, StoreError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(StoreError::TooLarge { len: payload.len() });
        }
        let (seq, slot) = match current {
            Some(s) => (s.seq + 1, 1 - s.slot),
            None => (1, 0),
        };
        let mut buf = Aligned::new(SLOT_SIZE);
        encode(seq, payload, buf.as_mut());
        let crash = crash_point(seq);
        let at = (slot * SLOT_SIZE) as u64;
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            op: "write",
            source,
        };
        match crash {
            Some(CrashPoint::Before) => crash_now("before the state write"),
            Some(CrashPoint::Mid) => {
                // A torn write: the first half of the new record (header and
                // half the payload) over what the slot held before, then the
                // process is gone.
                let mut torn = Aligned::new(SLOT_SIZE);
                let mut done = 0;
                while done < SLOT_SIZE {
                    match self
                        .file
                        .read_at(&mut torn.as_mut()[done..], at + done as u64)
                    {
                        Ok(0) | Err(_) => break,
                        Ok(n) => done += n,
                    }
                }
                let cut = HEADER_LEN + payload.len() / 2;
                torn.as_mut()[..cut].copy_from_slice(&buf.as_slice()[..cut]);
                self.file.write_all_at(torn.as_slice(), at).map_err(io)?;
                crash_now("in the middle of the state write");
            }
            _ => {}
        }
        self.file.write_all_at(buf.as_slice(), at).map_err(io)?;
        if crash == Some(CrashPoint::After) {
            crash_now("after the state write, before the command completes");
        }
        Ok(Snapshot {
            seq,
            payload: payload.to_vec(),
            slot,
        })
    }
}

/// Where the VM tier's crash tests stop the process during a state write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    Before,
    Mid,
    After,
}

/// The environment variable that arms a crash point: `before@SEQ`,
/// `mid@SEQ` or `after@SEQ` aborts the process (no clean-up, like kill -9)
/// at that point of the write of state sequence number SEQ. For the VM
/// tier's "kill -9 in the middle of a PR OUT" checks; unset in production.
pub const CRASH_ENV: &str = "TCMU_PRD_CRASH_AT";

fn crash_point(seq: u64) -> Option<CrashPoint> {
    static ARMED: std::sync::OnceLock<Option<(CrashPoint, u64)>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| parse_crash(&std::env::var(CRASH_ENV).ok()?));
    armed.and_then(|(p, s)| (s == seq).then_some(p))
}

fn parse_crash(v: &str) -> Option<(CrashPoint, u64)> {
    let (point, seq) = v.split_once('@')?;
    let point = match point {
        "before" => CrashPoint::Before,
        "mid" => CrashPoint::Mid,
        "after" => CrashPoint::After,
        _ => return None,
    };
    Some((point, seq.parse().ok()?))
}

fn crash_now(when: &str) -> ! {
    tracing::error!("{CRASH_ENV}: aborting {when}");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_points_parse_strictly() {
        assert_eq!(parse_crash("mid@7"), Some((CrashPoint::Mid, 7)));
        assert_eq!(parse_crash("before@1"), Some((CrashPoint::Before, 1)));
        assert_eq!(parse_crash("after@12"), Some((CrashPoint::After, 12)));
        for bad in ["", "mid", "mid@", "mid@x", "middle@3", "@3", "mid@-1"] {
            assert_eq!(parse_crash(bad), None, "{bad}");
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tcmu-prd-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn blank_store_reads_none_then_alternates_slots() {
        let p = tmp("alt");
        let s = Store::open(&p, true, false).unwrap();
        assert_eq!(s.read().unwrap(), None);
        let a = s.write(None, b"one").unwrap();
        assert_eq!((a.seq, a.slot), (1, 0));
        let b = s.write(Some(&a), b"two").unwrap();
        assert_eq!((b.seq, b.slot), (2, 1));
        let c = s.write(Some(&b), b"three").unwrap();
        assert_eq!((c.seq, c.slot), (3, 0));
        assert_eq!(s.read().unwrap(), Some(c));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_state() {
        let p = tmp("torn");
        let s = Store::open(&p, true, false).unwrap();
        let a = s.write(None, b"acknowledged").unwrap();
        let b = s.write(Some(&a), b"in flight").unwrap();
        // Tear slot 1: half of its payload never reached the disk.
        s.file
            .write_all_at(&[0xAA; 4], (b.slot * SLOT_SIZE + HEADER_LEN + 2) as u64)
            .unwrap();
        let got = s.read().unwrap().unwrap();
        assert_eq!((got.seq, got.payload.as_slice()), (1, &b"acknowledged"[..]));
        // The next write goes to the torn slot, not over the good one.
        let c = s.write(Some(&got), b"next").unwrap();
        assert_eq!((c.seq, c.slot), (2, 1));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn corrupt_and_newer_stores_are_refused() {
        let p = tmp("corrupt");
        std::fs::write(&p, vec![0x5Au8; 2 * SLOT_SIZE]).unwrap();
        let s = Store::open(&p, false, false).unwrap();
        let e = s.read().unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("no tcmu-prd magic"), "{e}");

        let mut slot = vec![0u8; SLOT_SIZE];
        encode(7, b"future", &mut slot);
        slot[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        std::fs::write(&p, &slot).unwrap();
        let e = s.read().unwrap_err();
        assert!(
            matches!(e, StoreError::NewerFormat { found, .. } if found == FORMAT + 1),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let p = tmp("big");
        let s = Store::open(&p, true, false).unwrap();
        assert!(matches!(
            s.write(None, &vec![0; MAX_PAYLOAD + 1]),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(
            s.write(None, &vec![7; MAX_PAYLOAD]).unwrap().payload.len(),
            MAX_PAYLOAD
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        let mut seed = 0x1234_5678u64;
        for len in [0, 1, 31, 32, 33, 100, 4096] {
            for _ in 0..200 {
                let mut b: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed.to_le_bytes()[0]
                    })
                    .collect();
                if len >= 8 {
                    b[..8].copy_from_slice(&MAGIC);
                }
                let _ = decode(&b);
            }
        }
    }
}
