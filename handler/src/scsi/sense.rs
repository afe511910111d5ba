//! The one sense table: sense keys, additional sense codes, and the fixed
//! and descriptor encodings (SPC-4 4.4) chosen per the control page D_SENSE.

/// SAM status codes.
pub mod status {
    /// Command completed.
    pub const GOOD: u8 = 0x00;
    /// Sense data describes the error.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// PRE-FETCH style success.
    pub const CONDITION_MET: u8 = 0x04;
    /// Try again later.
    pub const BUSY: u8 = 0x08;
    /// Reservation conflict (set by the PR layer, not here).
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// Task set full.
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// SPC sense keys.
pub mod key {
    /// No error.
    pub const NO_SENSE: u8 = 0x0;
    /// The LU cannot serve commands now.
    pub const NOT_READY: u8 = 0x2;
    /// The medium could not be read or written.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// Target failure.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// Bad CDB or parameter list.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// Unit attention.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// Write protected or out of space.
    pub const DATA_PROTECT: u8 = 0x7;
    /// EXTENDED COPY aborted by a copy target or copy manager error.
    pub const COPY_ABORTED: u8 = 0xa;
    /// Command aborted.
    pub const ABORTED_COMMAND: u8 = 0xb;
    /// VERIFY / COMPARE AND WRITE data mismatch.
    pub const MISCOMPARE: u8 = 0xe;
}

/// A sense key with its additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseCode {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

const fn sc(key: u8, asc: u8, ascq: u8) -> SenseCode {
    SenseCode { key, asc, ascq }
}

/// NO SENSE / NO ADDITIONAL SENSE INFORMATION.
pub const NO_ADDITIONAL_SENSE: SenseCode = sc(key::NO_SENSE, 0x00, 0x00);
/// WRITE ERROR (11h is reads; 0Ch/00h is the generic write failure).
pub const WRITE_ERROR: SenseCode = sc(key::MEDIUM_ERROR, 0x0c, 0x00);
/// UNRECOVERED READ ERROR.
pub const UNRECOVERED_READ_ERROR: SenseCode = sc(key::MEDIUM_ERROR, 0x11, 0x00);
/// Verify of written data failed for a medium reason.
pub const MEDIUM_ERROR_VERIFY: SenseCode = sc(key::MEDIUM_ERROR, 0x11, 0x00);
/// Internal target failure.
pub const INTERNAL_TARGET_FAILURE: SenseCode = sc(key::HARDWARE_ERROR, 0x44, 0x00);
/// PARAMETER LIST LENGTH ERROR.
pub const PARAMETER_LIST_LENGTH_ERROR: SenseCode = sc(key::ILLEGAL_REQUEST, 0x1a, 0x00);
/// INVALID COMMAND OPERATION CODE.
pub const INVALID_COMMAND_OPERATION_CODE: SenseCode = sc(key::ILLEGAL_REQUEST, 0x20, 0x00);
/// LOGICAL BLOCK ADDRESS OUT OF RANGE.
pub const LBA_OUT_OF_RANGE: SenseCode = sc(key::ILLEGAL_REQUEST, 0x21, 0x00);
/// INVALID FIELD IN CDB.
pub const INVALID_FIELD_IN_CDB: SenseCode = sc(key::ILLEGAL_REQUEST, 0x24, 0x00);
/// INVALID FIELD IN PARAMETER LIST.
pub const INVALID_FIELD_IN_PARAMETER_LIST: SenseCode = sc(key::ILLEGAL_REQUEST, 0x26, 0x00);
/// SAVING PARAMETERS NOT SUPPORTED.
pub const SAVING_PARAMETERS_NOT_SUPPORTED: SenseCode = sc(key::ILLEGAL_REQUEST, 0x39, 0x00);
/// INVALID FIELD IN COMMAND INFORMATION UNIT: the data-out length does not
/// match what the CDB implies.
pub const INVALID_FIELD_IN_COMMAND_IU: SenseCode = sc(key::ILLEGAL_REQUEST, 0x0e, 0x03);
/// WRITE PROTECTED.
pub const WRITE_PROTECTED: SenseCode = sc(key::DATA_PROTECT, 0x27, 0x00);
/// SPACE ALLOCATION FAILED WRITE PROTECT (SBC-4 4.7.3.7: thin provisioning
/// out of space is DATA PROTECT).
pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: SenseCode = sc(key::DATA_PROTECT, 0x27, 0x07);
/// MISCOMPARE DURING VERIFY OPERATION.
pub const MISCOMPARE_DURING_VERIFY: SenseCode = sc(key::MISCOMPARE, 0x1d, 0x00);

// EXTENDED COPY (SPC-4 6.4): parameter list checks and copy aborts.

/// TOO MANY TARGET DESCRIPTORS (CSCD descriptors).
pub const TOO_MANY_TARGET_DESCRIPTORS: SenseCode = sc(key::ILLEGAL_REQUEST, 0x26, 0x06);
/// UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: SenseCode = sc(key::ILLEGAL_REQUEST, 0x26, 0x07);
/// TOO MANY SEGMENT DESCRIPTORS.
pub const TOO_MANY_SEGMENT_DESCRIPTORS: SenseCode = sc(key::ILLEGAL_REQUEST, 0x26, 0x08);
/// UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: SenseCode =
    sc(key::ILLEGAL_REQUEST, 0x26, 0x09);
/// COPY TARGET DEVICE NOT REACHABLE: the copy cannot be done here (LIO's
/// answer, which tells the initiator to fall back to READ and WRITE).
pub const COPY_TARGET_DEVICE_NOT_REACHABLE: SenseCode = sc(key::COPY_ABORTED, 0x0d, 0x02);
/// INCORRECT COPY TARGET DEVICE TYPE.
pub const INCORRECT_COPY_TARGET_DEVICE_TYPE: SenseCode = sc(key::COPY_ABORTED, 0x0d, 0x03);

/// Sense-key-specific field pointer (SPC-4 4.4.2.2): where the bad field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True: the field is in the CDB; false: in the parameter list.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Most significant bit of the field within the byte, if meaningful.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// A field in the CDB at `byte`, highest bit `bit`.
    pub const fn cdb(byte: u16, bit: u8) -> Self {
        Self {
            in_cdb: true,
            byte,
            bit: Some(bit),
        }
    }

    /// A whole-byte field in the CDB.
    pub const fn cdb_byte(byte: u16) -> Self {
        Self {
            in_cdb: true,
            byte,
            bit: None,
        }
    }

    /// A field in the parameter list at `byte`, highest bit `bit`.
    pub const fn param(byte: u16, bit: u8) -> Self {
        Self {
            in_cdb: false,
            byte,
            bit: Some(bit),
        }
    }

    /// A whole-byte field in the parameter list.
    pub const fn param_byte(byte: u16) -> Self {
        Self {
            in_cdb: false,
            byte,
            bit: None,
        }
    }

    fn sks(self) -> [u8; 3] {
        let mut b0 = 0x80; // SKSV
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

/// What goes into sense data, before choosing the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseInfo {
    /// Key/ASC/ASCQ.
    pub code: SenseCode,
    /// The INFORMATION field (e.g. miscompare offset), if valid.
    pub information: Option<u64>,
    /// The sense-key-specific field pointer, if any.
    pub field: Option<FieldPointer>,
}

impl SenseInfo {
    /// Sense with only a code.
    pub const fn new(code: SenseCode) -> Self {
        Self {
            code,
            information: None,
            field: None,
        }
    }
}

/// Encoded sense data, at most 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    buf: [u8; 32],
    len: u8,
}

impl std::fmt::Debug for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sense({:02x?})", self.as_bytes())
    }
}

impl Sense {
    /// Encode `info` in descriptor format if `descriptor`, else fixed.
    pub fn encode(info: &SenseInfo, descriptor: bool) -> Self {
        let mut buf = [0u8; 32];
        let len;
        let c = info.code;
        if descriptor {
            buf[0] = 0x72;
            buf[1] = c.key;
            buf[2] = c.asc;
            buf[3] = c.ascq;
            let mut p = 8;
            if let Some(i) = info.information {
                // Information descriptor: type 0, length 0Ah, VALID.
                buf[p..p + 4].copy_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
                buf[p + 4..p + 12].copy_from_slice(&i.to_be_bytes());
                p += 12;
            }
            if let Some(fp) = info.field {
                // Sense key specific descriptor: type 2, length 6.
                buf[p..p + 4].copy_from_slice(&[0x02, 0x06, 0, 0]);
                buf[p + 4..p + 7].copy_from_slice(&fp.sks());
                p += 8;
            }
            buf[7] = super::sat_u8(p - 8);
            len = p;
        } else {
            buf[0] = 0x70;
            buf[2] = c.key;
            if let Some(i) = info.information {
                // Fixed format holds 4 bytes; larger values cannot be valid.
                if let Ok(i) = u32::try_from(i) {
                    buf[0] |= 0x80;
                    buf[3..7].copy_from_slice(&i.to_be_bytes());
                }
            }
            buf[7] = 10;
            buf[12] = c.asc;
            buf[13] = c.ascq;
            if let Some(fp) = info.field {
                buf[15..18].copy_from_slice(&fp.sks());
            }
            len = 18;
        }
        Self {
            buf,
            len: super::sat_u8(len),
        }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Decode key/ASC/ASCQ from either format (for tests and logs).
    pub fn code(&self) -> SenseCode {
        let b = self.as_bytes();
        if b[0] & 0x7f >= 0x72 {
            sc(b[1] & 0xf, b[2], b[3])
        } else {
            sc(b[2] & 0xf, b[12], b[13])
        }
    }

    /// The INFORMATION field if valid, from either format.
    pub fn information(&self) -> Option<u64> {
        let b = self.as_bytes();
        if b[0] & 0x7f >= 0x72 {
            descriptors(b)
                .find(|d| d[0] == 0 && d.len() >= 12 && d[2] & 0x80 != 0)
                .map(|d| u64::from_be_bytes(d[4..12].try_into().unwrap_or_default()))
        } else if b[0] & 0x80 != 0 {
            Some(u64::from(u32::from_be_bytes([b[3], b[4], b[5], b[6]])))
        } else {
            None
        }
    }

    /// The field pointer if SKSV is set, from either format.
    pub fn field_pointer(&self) -> Option<FieldPointer> {
        let b = self.as_bytes();
        let sks: [u8; 3] = if b[0] & 0x7f >= 0x72 {
            let d = descriptors(b).find(|d| d[0] == 2 && d.len() >= 7)?;
            [d[4], d[5], d[6]]
        } else {
            [b[15], b[16], b[17]]
        };
        if sks[0] & 0x80 == 0 {
            return None;
        }
        Some(FieldPointer {
            in_cdb: sks[0] & 0x40 != 0,
            byte: u16::from_be_bytes([sks[1], sks[2]]),
            bit: (sks[0] & 0x08 != 0).then_some(sks[0] & 7),
        })
    }
}

fn descriptors(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut p = 8;
    std::iter::from_fn(move || {
        if p + 2 > b.len() {
            return None;
        }
        let end = (p + 2 + usize::from(b[p + 1])).min(b.len());
        let d = &b[p..end];
        p = end;
        Some(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = Sense::encode(
            &SenseInfo {
                code: INVALID_FIELD_IN_CDB,
                information: None,
                field: Some(FieldPointer::cdb(1, 4)),
            },
            false,
        );
        let b = s.as_bytes();
        assert_eq!(b.len(), 18);
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(&b[15..18], &[0xcc, 0x00, 0x01]);
        assert_eq!(s.field_pointer(), Some(FieldPointer::cdb(1, 4)));
    }

    #[test]
    fn descriptor_format_layout() {
        let s = Sense::encode(
            &SenseInfo {
                code: MISCOMPARE_DURING_VERIFY,
                information: Some(0x1_0000_0001),
                field: Some(FieldPointer::param_byte(8)),
            },
            true,
        );
        let b = s.as_bytes();
        assert_eq!(&b[..4], &[0x72, 0x0e, 0x1d, 0x00]);
        assert_eq!(b[7], 20);
        assert_eq!(&b[8..12], &[0, 0x0a, 0x80, 0]);
        assert_eq!(s.information(), Some(0x1_0000_0001));
        assert_eq!(s.field_pointer(), Some(FieldPointer::param_byte(8)));
        assert_eq!(s.code(), MISCOMPARE_DURING_VERIFY);
    }

    #[test]
    fn fixed_information_valid_bit() {
        let s = Sense::encode(
            &SenseInfo {
                code: MISCOMPARE_DURING_VERIFY,
                information: Some(513),
                field: None,
            },
            false,
        );
        assert_eq!(s.as_bytes()[0], 0xf0);
        assert_eq!(s.information(), Some(513));
        assert_eq!(s.field_pointer(), None);
    }
}
