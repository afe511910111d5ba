//! The 32-byte lock value block of an LU's state lock (DESIGN.md §4): which
//! store sequence number is newest, and the checksum of that state, so a
//! node can tell from the LVB alone whether its cached state is current.
//!
//! Layout (little endian): `magic[4] = "TPRL" | format u16 | reserved u16 |
//! seq u64 | state_crc u32 | reserved[8] | lvb_crc u32`, the last field a
//! CRC32C of the 28 bytes before it.

/// Identifies an LVB written by tcmu-prd.
pub const MAGIC: [u8; 4] = *b"TPRL";
/// The LVB format this build writes.
pub const FORMAT: u16 = 1;
/// Size of a user-space LVB.
pub const LEN: usize = 32;

/// What an LVB says about the newest state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lvb {
    /// Store sequence number of the newest state.
    pub seq: u64,
    /// CRC32C of that state's payload.
    pub state_crc: u32,
}

/// An LVB that is neither blank nor valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LvbError {
    /// Not written by us (or overwritten).
    #[error("lock value block has no tcmu-prd magic")]
    Foreign,
    /// Written by a newer tcmu-prd.
    #[error("lock value block has format {0}, newer than this build's {FORMAT}")]
    NewerFormat(u16),
    /// Damaged.
    #[error("lock value block checksum mismatch")]
    Checksum,
}

impl Lvb {
    /// Encodes to the 32 bytes the DLM carries.
    #[must_use]
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&FORMAT.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.state_crc.to_le_bytes());
        let c = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes; `Ok(None)` for an all-zero LVB (the resource's LVB was never
    /// written, e.g. the first holder after every node left).
    pub fn decode(b: &[u8; LEN]) -> Result<Option<Lvb>, LvbError> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[..4] != MAGIC {
            return Err(LvbError::Foreign);
        }
        let format = u16::from_le_bytes([b[4], b[5]]);
        if format > FORMAT {
            return Err(LvbError::NewerFormat(format));
        }
        let c = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        if format != FORMAT || crc32c::crc32c(&b[..28]) != c {
            return Err(LvbError::Checksum);
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[8..16]);
        Ok(Some(Lvb {
            seq: u64::from_le_bytes(seq),
            state_crc: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let l = Lvb {
            seq: 0x0102_0304_0506_0708,
            state_crc: 0xdead_beef,
        };
        assert_eq!(Lvb::decode(&l.encode()), Ok(Some(l)));
    }

    #[test]
    fn blank_foreign_damaged_and_newer() {
        assert_eq!(Lvb::decode(&[0; LEN]), Ok(None));
        assert_eq!(Lvb::decode(&[1; LEN]), Err(LvbError::Foreign));
        let mut b = Lvb {
            seq: 5,
            state_crc: 9,
        }
        .encode();
        b[9] ^= 1;
        assert_eq!(Lvb::decode(&b), Err(LvbError::Checksum));
        let mut b = Lvb {
            seq: 5,
            state_crc: 9,
        }
        .encode();
        b[4] = 2;
        assert_eq!(Lvb::decode(&b), Err(LvbError::NewerFormat(2)));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let good = Lvb {
            seq: 77,
            state_crc: 0x1234,
        }
        .encode();
        for byte in 0..LEN {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                assert!(
                    Lvb::decode(&b).is_err() || Lvb::decode(&b) == Ok(None),
                    "flip {byte}.{bit} accepted"
                );
            }
        }
    }
}
