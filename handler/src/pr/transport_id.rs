//! SCSI TransportIDs (SPC-4 7.6.4): the initiator port names the engine
//! stores, parses from SPEC_I_PT / REGISTER AND MOVE parameter data, and
//! reports in READ FULL STATUS.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::sense::SenseInfo;

/// PROTOCOL IDENTIFIER values (SPC-4 table 362) we accept.
const PROTO_FC: u8 = 0x0;
const PROTO_ISCSI: u8 = 0x5;
const PROTO_SAS: u8 = 0x6;

/// iSCSI names are at most 223 bytes (RFC 3720 3.2.6.1).
const ISCSI_NAME_MAX: usize = 223;
/// Separator between name and ISID in format 01b (SPC-4 7.6.4.6).
const ISID_SEPARATOR: &[u8] = b",i,0x";

/// An initiator port as identified by its SCSI transport.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TransportId {
    /// Fibre Channel: N_Port_Name.
    Fc { wwpn: u64 },
    /// SAS address (also used for tcm_loop's naa names).
    Sas { address: u64 },
    /// iSCSI initiator name, with the 48-bit ISID when the port is known to
    /// that precision. Without an ISID the id names the initiator device.
    Iscsi { name: String, isid: Option<u64> },
}

/// Why a TransportID in parameter data was rejected. Every variant maps to
/// INVALID FIELD IN PARAMETER LIST pointing at `at` (offset in the
/// parameter list).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TransportIdError {
    /// Fewer bytes remain than the TransportID header or its length needs.
    #[error("TransportID truncated at byte {at}")]
    Truncated { at: usize },
    /// PROTOCOL IDENTIFIER we do not serve.
    #[error("unsupported protocol identifier {proto:#x} at byte {at}")]
    UnsupportedProtocol { proto: u8, at: usize },
    /// FORMAT CODE not defined for this protocol.
    #[error("unsupported TransportID format {format:#x} at byte {at}")]
    UnsupportedFormat { format: u8, at: usize },
    /// A reserved byte is not zero.
    #[error("reserved byte not zero at byte {at}")]
    Reserved { at: usize },
    /// iSCSI ADDITIONAL LENGTH below 20 or not a multiple of four.
    #[error("bad iSCSI ADDITIONAL LENGTH {len} at byte {at}")]
    BadLength { len: usize, at: usize },
    /// iSCSI name not NUL-terminated, empty, too long, with bytes after the
    /// terminator that are not zero padding, or with invalid characters.
    #[error("malformed iSCSI name at byte {at}")]
    BadName { at: usize },
    /// Format 01b without a well-formed ",i,0x<12 hex digits>" suffix, or
    /// format 00b containing one.
    #[error("malformed ISID at byte {at}")]
    BadIsid { at: usize },
}

impl TransportIdError {
    /// The offset in the parameter list the error points at.
    pub fn at(&self) -> usize {
        match *self {
            TransportIdError::Truncated { at }
            | TransportIdError::UnsupportedProtocol { at, .. }
            | TransportIdError::UnsupportedFormat { at, .. }
            | TransportIdError::Reserved { at }
            | TransportIdError::BadLength { at, .. }
            | TransportIdError::BadName { at }
            | TransportIdError::BadIsid { at } => at,
        }
    }

    /// INVALID FIELD IN PARAMETER LIST with the field pointer SPC-4 asks for.
    pub fn sense(&self) -> SenseInfo {
        let bit = match self {
            TransportIdError::UnsupportedProtocol { .. } => Some(3),
            TransportIdError::UnsupportedFormat { .. } => Some(7),
            _ => None,
        };
        SenseInfo::invalid_param_field(u16::try_from(self.at()).unwrap_or(u16::MAX), bit)
    }
}

impl TransportId {
    /// PROTOCOL IDENTIFIER of this id.
    pub fn protocol(&self) -> u8 {
        match self {
            TransportId::Fc { .. } => PROTO_FC,
            TransportId::Sas { .. } => PROTO_SAS,
            TransportId::Iscsi { .. } => PROTO_ISCSI,
        }
    }

    /// Whether `self` and `other` name the same initiator port. An iSCSI id
    /// without ISID stands for every port of that initiator name (SPC-4
    /// 7.6.4.6 format 00b), and iSCSI names compare without case (RFC 3722
    /// normalises them to lower case).
    pub fn matches(&self, other: &TransportId) -> bool {
        match (self, other) {
            (TransportId::Fc { wwpn: a }, TransportId::Fc { wwpn: b }) => a == b,
            (TransportId::Sas { address: a }, TransportId::Sas { address: b }) => a == b,
            (
                TransportId::Iscsi { name: a, isid: ia },
                TransportId::Iscsi { name: b, isid: ib },
            ) => {
                a.eq_ignore_ascii_case(b)
                    && match (ia, ib) {
                        (Some(x), Some(y)) => x == y,
                        _ => true,
                    }
            }
            _ => false,
        }
    }

    /// Encodes the TransportID as SPC-4 7.6.4 lays it out.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TransportId::Fc { wwpn } => {
                let start = out.len();
                out.resize(start + 24, 0);
                out[start] = PROTO_FC;
                out[start + 8..start + 16].copy_from_slice(&wwpn.to_be_bytes());
            }
            TransportId::Sas { address } => {
                let start = out.len();
                out.resize(start + 24, 0);
                out[start] = PROTO_SAS;
                out[start + 4..start + 12].copy_from_slice(&address.to_be_bytes());
            }
            TransportId::Iscsi { name, isid } => {
                let mut text = name.as_bytes().to_vec();
                let format = match isid {
                    Some(isid) => {
                        text.extend_from_slice(ISID_SEPARATOR);
                        text.extend_from_slice(
                            format!("{:012x}", isid & 0xffff_ffff_ffff).as_bytes(),
                        );
                        0x40
                    }
                    None => 0x00,
                };
                text.push(0);
                // At least 20 bytes and a multiple of four (SPC-4 7.6.4.6).
                let additional = text.len().max(20).next_multiple_of(4);
                text.resize(additional, 0);
                out.push(format | PROTO_ISCSI);
                out.push(0);
                let len = u16::try_from(additional).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&text);
            }
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            TransportId::Fc { .. } | TransportId::Sas { .. } => 24,
            TransportId::Iscsi { name, isid } => {
                let text = name.len() + if isid.is_some() { 5 + 12 } else { 0 } + 1;
                4 + text.max(20).next_multiple_of(4)
            }
        }
    }

    /// Parses one TransportID at the start of `buf`, strictly. `base` is the
    /// offset of `buf` in the parameter list, for field pointers. Returns
    /// the id and the number of bytes it took.
    pub fn parse(buf: &[u8], base: usize) -> Result<(TransportId, usize), TransportIdError> {
        let Some(&b0) = buf.first() else {
            return Err(TransportIdError::Truncated { at: base });
        };
        let format = b0 >> 6;
        let proto = b0 & 0x0f;
        if b0 & 0x30 != 0 {
            return Err(TransportIdError::Reserved { at: base });
        }
        match proto {
            PROTO_FC | PROTO_SAS => {
                if format != 0 {
                    return Err(TransportIdError::UnsupportedFormat { format, at: base });
                }
                let Some(id) = buf.get(..24) else {
                    return Err(TransportIdError::Truncated {
                        at: base + buf.len(),
                    });
                };
                let (word, keep) = if proto == PROTO_FC {
                    (8, 8..16)
                } else {
                    (4, 4..12)
                };
                if let Some(i) = (1..24).find(|i| !keep.contains(i) && id[*i] != 0) {
                    return Err(TransportIdError::Reserved { at: base + i });
                }
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&id[word..word + 8]);
                let value = u64::from_be_bytes(bytes);
                let tid = if proto == PROTO_FC {
                    TransportId::Fc { wwpn: value }
                } else {
                    TransportId::Sas { address: value }
                };
                Ok((tid, 24))
            }
            PROTO_ISCSI => parse_iscsi(buf, base, format),
            _ => Err(TransportIdError::UnsupportedProtocol { proto, at: base }),
        }
    }
}

fn parse_iscsi(
    buf: &[u8],
    base: usize,
    format: u8,
) -> Result<(TransportId, usize), TransportIdError> {
    if format > 1 {
        return Err(TransportIdError::UnsupportedFormat { format, at: base });
    }
    if buf.len() < 4 {
        return Err(TransportIdError::Truncated {
            at: base + buf.len(),
        });
    }
    if buf[1] != 0 {
        return Err(TransportIdError::Reserved { at: base + 1 });
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if len < 20 || len % 4 != 0 {
        return Err(TransportIdError::BadLength { len, at: base + 2 });
    }
    let Some(text) = buf.get(4..4 + len) else {
        return Err(TransportIdError::Truncated { at: base + 2 });
    };
    let name_at = base + 4;
    let Some(nul) = text.iter().position(|&c| c == 0) else {
        return Err(TransportIdError::BadName { at: name_at });
    };
    if let Some(i) = text[nul..].iter().position(|&c| c != 0) {
        return Err(TransportIdError::BadName {
            at: name_at + nul + i,
        });
    }
    let text = &text[..nul];
    if let Some(i) = text.iter().position(|c| !(0x21..=0x7e).contains(c)) {
        return Err(TransportIdError::BadName { at: name_at + i });
    }
    let sep = text
        .windows(ISID_SEPARATOR.len())
        .position(|w| w.eq_ignore_ascii_case(ISID_SEPARATOR));
    let (name, isid) = match (format, sep) {
        (0, None) => (text, None),
        (0, Some(i)) => return Err(TransportIdError::BadIsid { at: name_at + i }),
        (_, None) => return Err(TransportIdError::BadIsid { at: name_at }),
        (_, Some(i)) => {
            let hex = &text[i + ISID_SEPARATOR.len()..];
            let at = name_at + i + ISID_SEPARATOR.len();
            if hex.len() != 12 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(TransportIdError::BadIsid { at });
            }
            // Cannot fail: twelve ASCII hex digits.
            let isid = std::str::from_utf8(hex)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or(TransportIdError::BadIsid { at })?;
            (&text[..i], Some(isid))
        }
    };
    if name.is_empty() || name.len() > ISCSI_NAME_MAX {
        return Err(TransportIdError::BadName { at: name_at });
    }
    // Printable ASCII checked above, so this is valid UTF-8.
    let name = String::from_utf8_lossy(name).into_owned();
    Ok((TransportId::Iscsi { name, isid }, 4 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iscsi(name: &str, isid: Option<u64>) -> TransportId {
        TransportId::Iscsi {
            name: name.into(),
            isid,
        }
    }

    #[test]
    fn round_trips() {
        for tid in [
            TransportId::Fc {
                wwpn: 0x2100_0024_ff00_0001,
            },
            TransportId::Sas {
                address: 0x5001_4050_0000_0001,
            },
            iscsi("iqn.a", None),
            iscsi("iqn.2003-01.org.linux-iscsi.host:initiator-one", None),
            iscsi("iqn.2003-01.org.linux-iscsi.host:x", Some(0x23d0_0000_0001)),
        ] {
            let mut buf = Vec::new();
            tid.encode(&mut buf);
            assert_eq!(buf.len(), tid.encoded_len());
            assert_eq!(buf.len() % 4, 0);
            assert_eq!(TransportId::parse(&buf, 0), Ok((tid.clone(), buf.len())));
        }
    }

    #[test]
    fn iscsi_layout_matches_spc4() {
        let mut buf = Vec::new();
        iscsi("iqn.x", Some(0x0102_0304_0506)).encode(&mut buf);
        // Format 01b, protocol 5h; "iqn.x,i,0x010203040506\0" is 23 bytes,
        // padded to 24.
        assert_eq!(&buf[..4], &[0x45, 0, 0, 24]);
        assert_eq!(&buf[4..27], b"iqn.x,i,0x010203040506\0");
        assert_eq!(buf[27], 0);
        let mut buf = Vec::new();
        iscsi("iqn.x", None).encode(&mut buf);
        assert_eq!(&buf[..4], &[0x05, 0, 0, 20]);
        assert_eq!(buf.len(), 24);
    }

    #[test]
    fn rejects_malformed() {
        let good = {
            let mut b = Vec::new();
            iscsi("iqn.abc", None).encode(&mut b);
            b
        };
        let cases: Vec<(Vec<u8>, usize)> = vec![
            (vec![], 0),
            (good[..10].to_vec(), 2),
            // Additional length not a multiple of four.
            (
                {
                    let mut b = good.clone();
                    b[3] = 21;
                    b.push(0);
                    b
                },
                2,
            ),
            // Additional length below 20.
            (
                {
                    let mut b = good[..20].to_vec();
                    b[3] = 16;
                    b
                },
                2,
            ),
            // Not NUL-terminated.
            (
                {
                    let mut b = vec![0x05, 0, 0, 20];
                    b.extend_from_slice(&[b'a'; 20]);
                    b
                },
                4,
            ),
            // Garbage after the terminator.
            (
                {
                    let mut b = good.clone();
                    b[23] = b'x';
                    b
                },
                23,
            ),
            // Empty name.
            (
                {
                    let mut b = vec![0x05, 0, 0, 20];
                    b.extend_from_slice(&[0; 20]);
                    b
                },
                4,
            ),
            // Format 01b without ISID.
            (
                {
                    let mut b = good.clone();
                    b[0] = 0x45;
                    b
                },
                4,
            ),
            // Format 10b.
            (
                {
                    let mut b = good.clone();
                    b[0] = 0x85;
                    b
                },
                0,
            ),
            // Unknown protocol (SRP).
            (
                {
                    let mut b = vec![0x04];
                    b.resize(24, 0);
                    b
                },
                0,
            ),
            // FC with a reserved byte set.
            (
                {
                    let mut b = vec![0x00];
                    b.resize(24, 0);
                    b[20] = 1;
                    b
                },
                20,
            ),
            // FC truncated.
            (vec![0x00; 23], 23),
        ];
        for (i, (buf, at)) in cases.into_iter().enumerate() {
            let err = TransportId::parse(&buf, 0).expect_err(&format!("case {i}"));
            assert_eq!(err.at(), at, "case {i}: {err}");
        }
    }

    #[test]
    fn isid_short_hex_rejected() {
        let mut b = vec![0x45, 0, 0, 20];
        let mut t = b"iqn.a,i,0x12345\0".to_vec();
        t.resize(20, 0);
        b.extend_from_slice(&t);
        assert!(matches!(
            TransportId::parse(&b, 24),
            Err(TransportIdError::BadIsid { at: 38 })
        ));
    }

    #[test]
    fn matching_rules() {
        let a = iscsi("iqn.A", None);
        let a1 = iscsi("iqn.a", Some(1));
        let a2 = iscsi("iqn.a", Some(2));
        assert!(a.matches(&a1) && a1.matches(&a));
        assert!(!a1.matches(&a2));
        assert!(!a.matches(&TransportId::Sas { address: 1 }));
    }
}
