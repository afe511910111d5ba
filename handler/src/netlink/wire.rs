//! Netlink wire format: `nlmsghdr`, `genlmsghdr` and `nlattr`, encoded and
//! decoded by hand so that every length the kernel gives is checked.
//!
//! Everything is native-endian (netlink is host byte order) and 4-byte
//! aligned (`NLMSG_ALIGN`, `NLA_ALIGN`).

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct genlmsghdr)`.
pub const GENL_HDRLEN: usize = 4;
/// `sizeof(struct nlattr)`.
pub const NLA_HDRLEN: usize = 4;

/// `NLMSG_NOOP`: nothing to do.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an error or (error 0) an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a multipart message.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data lost.
pub const NLMSG_OVERRUN: u16 = 4;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;

/// The generic netlink controller's fixed family id (`GENL_ID_CTRL`).
pub const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_NEWFAMILY`: the controller's answer to GETFAMILY.
pub const CTRL_CMD_NEWFAMILY: u8 = 1;
/// `CTRL_CMD_GETFAMILY`.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_ATTR_FAMILY_ID` (u16).
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME` (string).
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// `CTRL_ATTR_VERSION` (u32).
pub const CTRL_ATTR_VERSION: u16 = 3;
/// `CTRL_ATTR_MCAST_GROUPS` (nested array of nested groups).
pub const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
/// `CTRL_ATTR_MCAST_GRP_NAME` (string), inside one group.
pub const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
/// `CTRL_ATTR_MCAST_GRP_ID` (u32), inside one group.
pub const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

/// `NLA_TYPE_MASK`: strips `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Rounds up to the 4-byte netlink alignment.
#[must_use]
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// What is wrong with bytes that claim to be netlink.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A header or field is shorter than its fixed size.
    #[error("{what}: truncated ({have} bytes, need {need})")]
    Truncated {
        /// Which header or attribute.
        what: &'static str,
        /// Bytes present.
        have: usize,
        /// Bytes required.
        need: usize,
    },
    /// A length field is impossible (below the header size or past the end).
    #[error("{what}: bad length {len} ({avail} bytes available)")]
    BadLength {
        /// Which header or attribute.
        what: &'static str,
        /// The length the field claimed.
        len: usize,
        /// Bytes actually available.
        avail: usize,
    },
}

/// One decoded netlink message header plus its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`: a family id or one of the `NLMSG_*` control types.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`: for kernel unicasts the destination port (ours), for
    /// multicasts 0. Not a sender check.
    pub pid: u32,
    /// Bytes after the header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Iterates over the netlink messages in one datagram. After the first error
/// the iterator ends: a bad `nlmsg_len` leaves no way to find the next message.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Splits a received datagram into messages.
#[must_use]
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages {
        rest: datagram,
        failed: false,
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        if b.len() < NLMSG_HDRLEN {
            self.failed = true;
            return Some(Err(WireError::Truncated {
                what: "nlmsghdr",
                have: b.len(),
                need: NLMSG_HDRLEN,
            }));
        }
        let len = u32_at(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.failed = true;
            return Some(Err(WireError::BadLength {
                what: "nlmsg_len",
                len,
                avail: b.len(),
            }));
        }
        let msg = Message {
            ty: u16_at(b, 4),
            flags: u16_at(b, 6),
            seq: u32_at(b, 8),
            pid: u32_at(b, 12),
            payload: &b[NLMSG_HDRLEN..len],
        };
        // The last message may omit its alignment padding.
        self.rest = &b[align4(len).min(b.len())..];
        Some(Ok(msg))
    }
}

/// The generic netlink header and the attribute bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenlMessage<'a> {
    /// `genlmsghdr.cmd`.
    pub cmd: u8,
    /// `genlmsghdr.version`.
    pub version: u8,
    /// The attribute stream.
    pub attrs: &'a [u8],
}

/// Splits a generic netlink payload into header and attributes.
pub fn genl(payload: &[u8]) -> Result<GenlMessage<'_>, WireError> {
    if payload.len() < GENL_HDRLEN {
        return Err(WireError::Truncated {
            what: "genlmsghdr",
            have: payload.len(),
            need: GENL_HDRLEN,
        });
    }
    Ok(GenlMessage {
        cmd: payload[0],
        version: payload[1],
        attrs: &payload[GENL_HDRLEN..],
    })
}

/// The error number in an `NLMSG_ERROR` payload (0 = acknowledgement,
/// otherwise a negative errno).
pub fn error_code(payload: &[u8]) -> Result<i32, WireError> {
    if payload.len() < 4 {
        return Err(WireError::Truncated {
            what: "nlmsgerr.error",
            have: payload.len(),
            need: 4,
        });
    }
    Ok(i32::from_ne_bytes([
        payload[0], payload[1], payload[2], payload[3],
    ]))
}

/// One attribute: its type (flags stripped) and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// `nla_type & NLA_TYPE_MASK`.
    pub ty: u16,
    /// The payload, `nla_len - NLA_HDRLEN` bytes.
    pub payload: &'a [u8],
}

/// Iterates over an attribute stream; ends after the first error.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Splits an attribute stream.
#[must_use]
pub fn attrs(stream: &[u8]) -> Attrs<'_> {
    Attrs {
        rest: stream,
        failed: false,
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        if b.len() < NLA_HDRLEN {
            self.failed = true;
            return Some(Err(WireError::Truncated {
                what: "nlattr",
                have: b.len(),
                need: NLA_HDRLEN,
            }));
        }
        let len = usize::from(u16_at(b, 0));
        if len < NLA_HDRLEN || len > b.len() {
            self.failed = true;
            return Some(Err(WireError::BadLength {
                what: "nla_len",
                len,
                avail: b.len(),
            }));
        }
        let attr = Attr {
            ty: u16_at(b, 2) & NLA_TYPE_MASK,
            payload: &b[NLA_HDRLEN..len],
        };
        self.rest = &b[align4(len).min(b.len())..];
        Some(Ok(attr))
    }
}

impl Attr<'_> {
    /// The payload as a u8; exactly one byte.
    pub fn u8(&self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.fixed::<1>(what)?[0])
    }

    /// The payload as a u16; exactly two bytes.
    pub fn u16(&self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_ne_bytes(self.fixed::<2>(what)?))
    }

    /// The payload as a u32; exactly four bytes.
    pub fn u32(&self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_ne_bytes(self.fixed::<4>(what)?))
    }

    /// The payload as an s32; exactly four bytes.
    pub fn s32(&self, what: &'static str) -> Result<i32, WireError> {
        Ok(i32::from_ne_bytes(self.fixed::<4>(what)?))
    }

    /// The payload as a u64; exactly eight bytes.
    pub fn u64(&self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_ne_bytes(self.fixed::<8>(what)?))
    }

    /// The payload as an `NLA_STRING`: one trailing NUL is dropped (the
    /// kernel's `nla_put_string` includes it). The bytes before it are
    /// returned raw; see [`Attr::string`] for text.
    #[must_use]
    pub fn bytes_str(&self) -> &[u8] {
        self.payload.strip_suffix(&[0]).unwrap_or(self.payload)
    }

    fn fixed<const N: usize>(&self, what: &'static str) -> Result<[u8; N], WireError> {
        self.payload.try_into().map_err(|_| WireError::BadLength {
            what,
            len: self.payload.len(),
            avail: N,
        })
    }
}

/// Builds one netlink message: header, optional generic netlink header and
/// attributes. Lengths are filled in by [`MessageBuilder::finish`].
#[derive(Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// Starts a generic netlink message for `family` with command `cmd`.
    #[must_use]
    pub fn genl(family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in finish
        buf.extend_from_slice(&family.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        MessageBuilder { buf }
    }

    /// Appends an attribute with a raw payload, padded to 4 bytes.
    ///
    /// # Panics
    /// If the payload is longer than an attribute can be (65531 bytes): every
    /// caller passes fixed-size values or short names.
    #[must_use]
    pub fn attr(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = u16::try_from(NLA_HDRLEN + payload.len()).expect("netlink attribute too long");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Appends a NUL-terminated string attribute (`nla_put_string`).
    #[must_use]
    pub fn attr_str(self, ty: u16, s: &str) -> Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Patches `nlmsg_len` and returns the bytes.
    ///
    /// # Panics
    /// Never for messages built here: they are far below 4 GiB.
    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("netlink message too long");
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_lays_out_headers_and_padded_attributes() {
        let m = MessageBuilder::genl(0x1a, NLM_F_REQUEST, 7, 4, 2)
            .attr(8, &5u32.to_ne_bytes())
            .attr(6, &[1])
            .finish();
        // 16 header + 4 genl + 8 u32 attr + 8 (5 bytes padded) u8 attr
        assert_eq!(m.len(), 36);
        assert_eq!(u32_at(&m, 0), 36);
        assert_eq!(u16_at(&m, 4), 0x1a);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(&m[16..20], &[4, 2, 0, 0]);
        assert_eq!(u16_at(&m, 20), 8); // nla_len
        assert_eq!(u16_at(&m, 22), 8); // nla_type
        assert_eq!(u32_at(&m, 24), 5);
        assert_eq!(u16_at(&m, 28), 5); // nla_len of the u8 attr excludes padding
        assert_eq!(&m[32..36], &[1, 0, 0, 0]);
    }

    #[test]
    fn messages_round_trip_and_stop_on_bad_length() {
        let a = MessageBuilder::genl(0x20, 0, 1, 1, 2)
            .attr(2, &[9, 0, 0, 0])
            .finish();
        let b = MessageBuilder::genl(0x20, 0, 2, 2, 2).finish();
        let mut dgram = a.clone();
        dgram.extend_from_slice(&b);
        let got: Vec<_> = messages(&dgram).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].seq, 1);
        assert_eq!(got[1].seq, 2);
        assert_eq!(genl(got[0].payload).unwrap().cmd, 1);

        // nlmsg_len pointing past the end
        let mut bad = a.clone();
        bad[..4].copy_from_slice(&1000u32.to_ne_bytes());
        let got: Vec<_> = messages(&bad).collect();
        assert_eq!(got.len(), 1);
        assert!(matches!(
            got[0],
            Err(WireError::BadLength {
                what: "nlmsg_len",
                len: 1000,
                ..
            })
        ));

        // nlmsg_len below the header size: must not loop forever
        let mut tiny = a;
        tiny[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(messages(&tiny).count(), 1);

        // trailing garbage shorter than a header
        let mut trail = b.clone();
        trail.extend_from_slice(&[1, 2, 3]);
        let got: Vec<_> = messages(&trail).collect();
        assert!(got[0].is_ok());
        assert!(matches!(
            got[1],
            Err(WireError::Truncated {
                what: "nlmsghdr",
                ..
            })
        ));
    }

    #[test]
    fn attributes_are_length_checked() {
        // table: (bytes, expected outcome of the first item)
        let cases: &[(&[u8], Option<&str>)] = &[
            (&[8, 0, 1, 0, 1, 2, 3, 4], None),
            (&[8, 0, 1], Some("nlattr")),
            (&[3, 0, 1, 0], Some("nla_len")),
            (&[12, 0, 1, 0, 1, 2, 3, 4], Some("nla_len")),
        ];
        for (bytes, want) in cases {
            let first = attrs(bytes).next().unwrap();
            match (first, want) {
                (Ok(_), None) => {}
                (
                    Err(WireError::Truncated { what, .. } | WireError::BadLength { what, .. }),
                    Some(w),
                ) => {
                    assert_eq!(what, *w, "{bytes:?}");
                }
                (got, want) => panic!("{bytes:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn attribute_type_flags_are_masked_and_scalars_need_exact_sizes() {
        let b = [8u8, 0, 0x07, 0x80, 1, 0, 0, 0];
        let a = attrs(&b).next().unwrap().unwrap();
        assert_eq!(a.ty, 7);
        assert_eq!(a.u32("x").unwrap(), 1);
        assert!(matches!(
            a.u64("x"),
            Err(WireError::BadLength {
                what: "x",
                len: 4,
                avail: 8
            })
        ));
        assert!(a.u8("x").is_err());
        assert!(a.u16("x").is_err());
    }

    #[test]
    fn strings_drop_one_trailing_nul() {
        let m = MessageBuilder::genl(1, 0, 0, 0, 0)
            .attr_str(1, "abc")
            .finish();
        let g = genl(messages(&m).next().unwrap().unwrap().payload).unwrap();
        let a = attrs(g.attrs).next().unwrap().unwrap();
        assert_eq!(a.payload, b"abc\0");
        assert_eq!(a.bytes_str(), b"abc");
    }

    #[test]
    fn error_code_reads_the_errno() {
        assert_eq!(error_code(&(-19i32).to_ne_bytes()).unwrap(), -19);
        assert!(error_code(&[0, 0]).is_err());
    }
}
