//! The TCM-USER generic netlink messages: decoding the kernel's device
//! events and encoding our replies, independent of any socket.
//!
//! Kernel side (drivers/target/target_core_user.c, 6.1): the family is
//! `TCM-USER` version 2 with one multicast group `config`. Each event carries
//! DEVICE (the uio name, `nla_put_string`), MINOR (u32) and DEVICE_ID (u32,
//! `se_dev.dev_index`); RECONFIG_DEVICE adds one of DEV_CFG (string),
//! DEV_SIZE (u64, `nla_put_u64_64bit`, so a zero-length PAD attribute may
//! precede it) or WRITECACHE (u8). A `*_DONE` reply carries CMD_STATUS (s32)
//! and DEVICE_ID (u32).

use tcmu_sys::{tcmu_genl_attr as attr, tcmu_genl_cmd as cmd};

use super::wire::{self, MessageBuilder, WireError};

/// The family name the kernel registers.
pub const FAMILY_NAME: &str = "TCM-USER";
/// The multicast group that carries device events.
pub const CONFIG_GROUP: &str = "config";
/// The version we put in our genl headers (the kernel's family version and
/// tcmu-runner's `TCMU_NL_VERSION`; the kernel does not check it).
pub const VERSION: u8 = 2;

// The UAPI numbers are small: the narrowing casts below cannot truncate.
#[allow(clippy::cast_possible_truncation)]
const fn c(v: u32) -> u8 {
    v as u8
}
#[allow(clippy::cast_possible_truncation)]
const fn a(v: u32) -> u16 {
    v as u16
}

const CMD_ADDED: u8 = c(cmd::TCMU_CMD_ADDED_DEVICE);
const CMD_REMOVED: u8 = c(cmd::TCMU_CMD_REMOVED_DEVICE);
const CMD_RECONFIG: u8 = c(cmd::TCMU_CMD_RECONFIG_DEVICE);
const CMD_SET_FEATURES: u8 = c(cmd::TCMU_CMD_SET_FEATURES);
const ATTR_DEVICE: u16 = a(attr::TCMU_ATTR_DEVICE);
const ATTR_MINOR: u16 = a(attr::TCMU_ATTR_MINOR);
const ATTR_PAD: u16 = a(attr::TCMU_ATTR_PAD);
const ATTR_DEV_CFG: u16 = a(attr::TCMU_ATTR_DEV_CFG);
const ATTR_DEV_SIZE: u16 = a(attr::TCMU_ATTR_DEV_SIZE);
const ATTR_WRITECACHE: u16 = a(attr::TCMU_ATTR_WRITECACHE);
const ATTR_CMD_STATUS: u16 = a(attr::TCMU_ATTR_CMD_STATUS);
const ATTR_DEVICE_ID: u16 = a(attr::TCMU_ATTR_DEVICE_ID);
const ATTR_SUPP_KERN_CMD_REPLY: u16 = a(attr::TCMU_ATTR_SUPP_KERN_CMD_REPLY);

/// Which device event the kernel announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `TCMU_CMD_ADDED_DEVICE`: the backstore was enabled.
    Added,
    /// `TCMU_CMD_REMOVED_DEVICE`: the backstore is being removed.
    Removed,
    /// `TCMU_CMD_RECONFIG_DEVICE`: dev_config, dev_size or write cache changed.
    Reconfig,
}

impl EventKind {
    /// The genl command of the event.
    #[must_use]
    pub fn cmd(self) -> u8 {
        match self {
            EventKind::Added => CMD_ADDED,
            EventKind::Removed => CMD_REMOVED,
            EventKind::Reconfig => CMD_RECONFIG,
        }
    }

    /// The genl command of the matching `*_DONE` reply.
    #[must_use]
    pub fn done_cmd(self) -> u8 {
        match self {
            EventKind::Added => c(cmd::TCMU_CMD_ADDED_DEVICE_DONE),
            EventKind::Removed => c(cmd::TCMU_CMD_REMOVED_DEVICE_DONE),
            EventKind::Reconfig => c(cmd::TCMU_CMD_RECONFIG_DEVICE_DONE),
        }
    }

    fn from_cmd(c: u8) -> Option<Self> {
        match c {
            CMD_ADDED => Some(EventKind::Added),
            CMD_REMOVED => Some(EventKind::Removed),
            CMD_RECONFIG => Some(EventKind::Reconfig),
            _ => None,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventKind::Added => "ADDED_DEVICE",
            EventKind::Removed => "REMOVED_DEVICE",
            EventKind::Reconfig => "RECONFIG_DEVICE",
        })
    }
}

/// What a RECONFIG_DEVICE asks to change. The kernel sends exactly one per
/// event; all are kept in case a later kernel batches them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfig {
    /// New `dev_config` (`<subtype>/<cfgstring>`).
    pub dev_cfg: Option<String>,
    /// New `dev_size` in bytes.
    pub dev_size: Option<u64>,
    /// New `emulate_write_cache`.
    pub write_cache: Option<bool>,
}

/// A device event from the kernel. Unless the kernel runs without command
/// replies, it waits (without timeout) for a reply to it: see
/// [`super::TcmuNetlink::reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Which event.
    pub kind: EventKind,
    /// The uio name, `tcm-user/<hba>/<name>/<subtype>/<cfgstring>`.
    pub device: String,
    /// N of `/dev/uioN`.
    pub minor: u32,
    /// LIO's `dev_index`: what the reply must carry.
    pub device_id: u32,
    /// For [`EventKind::Reconfig`]: what changes (empty otherwise).
    pub reconfig: Reconfig,
    /// Attribute types this decoder does not know (skipped, for a newer
    /// kernel's additions), so the caller can log them.
    pub unknown_attrs: Vec<u16>,
}

/// One thing read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A device event.
    Event(Event),
    /// The kernel's answer (`NLMSG_ERROR`) to a message we sent with sequence
    /// number `seq`: 0 = accepted, otherwise a negative errno (e.g. -ENODEV
    /// for a `*_DONE` whose DEVICE_ID has no pending command).
    Ack {
        /// Our sequence number.
        seq: u32,
        /// 0 or a negative errno.
        error: i32,
    },
    /// A message that could not be decoded.
    Malformed(DecodeError),
}

/// Why a message from the socket was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{what}", self.context())]
pub struct DecodeError {
    /// The event, if the genl command was recognised.
    pub kind: Option<EventKind>,
    /// DEVICE_ID, if it could be read: the kernel waits for a reply to it.
    pub device_id: Option<u32>,
    /// DEVICE, if it could be read.
    pub device: Option<String>,
    /// What was wrong, naming the header or attribute.
    pub what: String,
}

impl DecodeError {
    fn context(&self) -> String {
        let mut s = String::new();
        if let Some(k) = self.kind {
            s.push_str(&format!("{k} "));
        }
        if let Some(d) = &self.device {
            s.push_str(&format!("device {d} "));
        }
        if let Some(id) = self.device_id {
            s.push_str(&format!("(device_id {id}) "));
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s
    }

    fn bare(what: impl Into<String>) -> Self {
        DecodeError {
            kind: None,
            device_id: None,
            device: None,
            what: what.into(),
        }
    }
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> Self {
        DecodeError::bare(e.to_string())
    }
}

/// Decodes every message in one datagram from the TCM-USER socket.
///
/// `family` is the resolved TCM-USER family id. (`nlmsg_pid` says nothing
/// about the sender: in the kernel's unicast acks it is *our* port; the
/// sender is checked on the socket address, see `TcmuNetlink`.)
/// `NLMSG_NOOP`/`DONE`/`OVERRUN` are skipped. Never panics, whatever the bytes.
#[must_use]
pub fn decode_datagram(datagram: &[u8], family: u16) -> Vec<Incoming> {
    let mut out = Vec::new();
    for msg in wire::messages(datagram) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                out.push(Incoming::Malformed(e.into()));
                continue;
            }
        };
        match msg.ty {
            wire::NLMSG_NOOP | wire::NLMSG_DONE | wire::NLMSG_OVERRUN => {}
            wire::NLMSG_ERROR => match wire::error_code(msg.payload) {
                Ok(error) => out.push(Incoming::Ack {
                    seq: msg.seq,
                    error,
                }),
                Err(e) => out.push(Incoming::Malformed(e.into())),
            },
            ty if ty == family => out.push(match decode_event(msg.payload) {
                Ok(ev) => Incoming::Event(ev),
                Err(e) => Incoming::Malformed(e),
            }),
            ty => out.push(Incoming::Malformed(DecodeError::bare(format!(
                "unexpected nlmsg_type {ty:#x} (TCM-USER is {family:#x})"
            )))),
        }
    }
    out
}

/// Decodes one TCM-USER event: the generic netlink header and attributes.
pub fn decode_event(payload: &[u8]) -> Result<Event, DecodeError> {
    let g = wire::genl(payload)?;
    let kind = EventKind::from_cmd(g.cmd)
        .ok_or_else(|| DecodeError::bare(format!("unexpected TCM-USER command {}", g.cmd)))?;

    let mut device = None;
    let mut minor = None;
    let mut device_id = None;
    let mut reconfig = Reconfig::default();
    let mut unknown_attrs = Vec::new();
    let mut problem: Option<String> = None;

    for at in wire::attrs(g.attrs) {
        let at = match at {
            Ok(at) => at,
            Err(e) => {
                problem.get_or_insert(e.to_string());
                break;
            }
        };
        let res: Result<(), String> = match at.ty {
            ATTR_DEVICE => {
                text(at.bytes_str(), "DEVICE").and_then(|s| set(&mut device, s, "DEVICE"))
            }
            ATTR_MINOR => at
                .u32("MINOR")
                .map_err(|e| e.to_string())
                .and_then(|v| set(&mut minor, v, "MINOR")),
            ATTR_DEVICE_ID => at
                .u32("DEVICE_ID")
                .map_err(|e| e.to_string())
                .and_then(|v| set(&mut device_id, v, "DEVICE_ID")),
            ATTR_DEV_CFG => text(at.bytes_str(), "DEV_CFG")
                .and_then(|s| set(&mut reconfig.dev_cfg, s, "DEV_CFG")),
            ATTR_DEV_SIZE => at
                .u64("DEV_SIZE")
                .map_err(|e| e.to_string())
                .and_then(|v| set(&mut reconfig.dev_size, v, "DEV_SIZE")),
            ATTR_WRITECACHE => match at.u8("WRITECACHE") {
                Ok(0) => set(&mut reconfig.write_cache, false, "WRITECACHE"),
                Ok(1) => set(&mut reconfig.write_cache, true, "WRITECACHE"),
                Ok(v) => Err(format!("WRITECACHE: value {v} is not 0 or 1")),
                Err(e) => Err(e.to_string()),
            },
            // Alignment filler before a u64 on some architectures.
            ATTR_PAD => Ok(()),
            ATTR_CMD_STATUS | ATTR_SUPP_KERN_CMD_REPLY => {
                Err(format!("attribute {} is not valid in an event", at.ty))
            }
            other => {
                unknown_attrs.push(other);
                Ok(())
            }
        };
        if let Err(e) = res {
            problem.get_or_insert(e);
        }
    }

    let fail = |what: String, device: Option<String>, device_id| DecodeError {
        kind: Some(kind),
        device_id,
        device,
        what,
    };
    if let Some(p) = problem {
        return Err(fail(p, device, device_id));
    }
    let Some(device_name) = device else {
        return Err(fail("DEVICE attribute missing".into(), None, device_id));
    };
    let Some(minor) = minor else {
        return Err(fail(
            "MINOR attribute missing".into(),
            Some(device_name),
            device_id,
        ));
    };
    let Some(device_id) = device_id else {
        return Err(fail(
            "DEVICE_ID attribute missing".into(),
            Some(device_name),
            None,
        ));
    };
    let has_reconfig = reconfig != Reconfig::default();
    match (kind, has_reconfig) {
        (EventKind::Reconfig, false) => {
            return Err(fail(
                "RECONFIG_DEVICE without DEV_CFG, DEV_SIZE or WRITECACHE".into(),
                Some(device_name),
                Some(device_id),
            ));
        }
        (EventKind::Added | EventKind::Removed, true) => {
            return Err(fail(
                "DEV_CFG/DEV_SIZE/WRITECACHE only belong in RECONFIG_DEVICE".into(),
                Some(device_name),
                Some(device_id),
            ));
        }
        _ => {}
    }
    Ok(Event {
        kind,
        device: device_name,
        minor,
        device_id,
        reconfig,
        unknown_attrs,
    })
}

fn set<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{name}: attribute repeated"));
    }
    *slot = Some(v);
    Ok(())
}

fn text(b: &[u8], name: &str) -> Result<String, String> {
    if b.contains(&0) {
        return Err(format!("{name}: embedded NUL"));
    }
    String::from_utf8(b.to_vec()).map_err(|_| format!("{name}: not UTF-8"))
}

/// Encodes a `*_DONE` reply to `kind` for `device_id` with `status` (0 or a
/// negative errno). Requests an acknowledgement so the kernel's verdict comes
/// back as [`Incoming::Ack`].
#[must_use]
pub fn encode_reply(
    family: u16,
    seq: u32,
    kind: EventKind,
    device_id: u32,
    status: i32,
) -> Vec<u8> {
    MessageBuilder::genl(
        family,
        wire::NLM_F_REQUEST | wire::NLM_F_ACK,
        seq,
        kind.done_cmd(),
        VERSION,
    )
    .attr(ATTR_CMD_STATUS, &status.to_ne_bytes())
    .attr(ATTR_DEVICE_ID, &device_id.to_ne_bytes())
    .finish()
}

/// Encodes SET_FEATURES(SUPP_KERN_CMD_REPLY = `reply`), acknowledged.
#[must_use]
pub fn encode_set_features(family: u16, seq: u32, reply: bool) -> Vec<u8> {
    MessageBuilder::genl(
        family,
        wire::NLM_F_REQUEST | wire::NLM_F_ACK,
        seq,
        CMD_SET_FEATURES,
        VERSION,
    )
    .attr(ATTR_SUPP_KERN_CMD_REPLY, &[u8::from(reply)])
    .finish()
}

/// Encodes the controller request CTRL_CMD_GETFAMILY for `name`.
#[must_use]
pub fn encode_get_family(seq: u32, name: &str) -> Vec<u8> {
    MessageBuilder::genl(
        wire::GENL_ID_CTRL,
        wire::NLM_F_REQUEST | wire::NLM_F_ACK,
        seq,
        wire::CTRL_CMD_GETFAMILY,
        1,
    )
    .attr_str(wire::CTRL_ATTR_FAMILY_NAME, name)
    .finish()
}

/// A generic netlink family as the controller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyInfo {
    /// The family id: `nlmsg_type` of its messages.
    pub id: u16,
    /// The family's version.
    pub version: u32,
    /// Multicast groups: (name, id).
    pub groups: Vec<(String, u32)>,
}

impl FamilyInfo {
    /// The id of the multicast group called `name`.
    #[must_use]
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }
}

/// The controller's answer to GETFAMILY, read from one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtrlReply {
    /// CTRL_CMD_NEWFAMILY.
    Family(FamilyInfo),
    /// NLMSG_ERROR: 0 = the acknowledgement, else a negative errno
    /// (-ENOENT: family not registered, i.e. target_core_user not loaded).
    Ack(i32),
}

/// Decodes the controller's messages for sequence number `seq` in one
/// datagram; messages with other sequence numbers (e.g. multicast events) are
/// returned in `other` as raw bytes ranges are not needed: they are skipped.
pub fn decode_ctrl(datagram: &[u8], seq: u32) -> Result<Vec<CtrlReply>, DecodeError> {
    let mut out = Vec::new();
    for msg in wire::messages(datagram) {
        let msg = msg?;
        if msg.seq != seq {
            continue;
        }
        match msg.ty {
            wire::NLMSG_ERROR => out.push(CtrlReply::Ack(wire::error_code(msg.payload)?)),
            wire::GENL_ID_CTRL => out.push(CtrlReply::Family(decode_family(msg.payload)?)),
            _ => {}
        }
    }
    Ok(out)
}

fn decode_family(payload: &[u8]) -> Result<FamilyInfo, DecodeError> {
    let g = wire::genl(payload)?;
    if g.cmd != wire::CTRL_CMD_NEWFAMILY {
        return Err(DecodeError::bare(format!(
            "controller command {} is not NEWFAMILY",
            g.cmd
        )));
    }
    let mut id = None;
    let mut version = 0;
    let mut groups = Vec::new();
    for at in wire::attrs(g.attrs) {
        let at = at?;
        match at.ty {
            wire::CTRL_ATTR_FAMILY_ID => id = Some(at.u16("CTRL_ATTR_FAMILY_ID")?),
            wire::CTRL_ATTR_VERSION => version = at.u32("CTRL_ATTR_VERSION")?,
            wire::CTRL_ATTR_MCAST_GROUPS => {
                for grp in wire::attrs(at.payload) {
                    let mut name = None;
                    let mut gid = None;
                    for ga in wire::attrs(grp?.payload) {
                        let ga = ga?;
                        match ga.ty {
                            wire::CTRL_ATTR_MCAST_GRP_NAME => {
                                name = Some(
                                    text(ga.bytes_str(), "CTRL_ATTR_MCAST_GRP_NAME")
                                        .map_err(DecodeError::bare)?,
                                );
                            }
                            wire::CTRL_ATTR_MCAST_GRP_ID => {
                                gid = Some(ga.u32("CTRL_ATTR_MCAST_GRP_ID")?)
                            }
                            _ => {}
                        }
                    }
                    match (name, gid) {
                        (Some(n), Some(i)) => groups.push((n, i)),
                        _ => return Err(DecodeError::bare("multicast group without name or id")),
                    }
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or_else(|| DecodeError::bare("CTRL_ATTR_FAMILY_ID missing"))?;
    Ok(FamilyInfo {
        id,
        version,
        groups,
    })
}

/// Test helpers: kernel-style event encoders.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// Encodes an event as the kernel does (`tcmu_netlink_event_init` plus
    /// the reconfig attribute), with an optional PAD before DEV_SIZE.
    #[must_use]
    pub fn encode_event(family: u16, ev: &Event, pad: bool) -> Vec<u8> {
        let mut b = MessageBuilder::genl(family, 0, 0, ev.kind.cmd(), VERSION)
            .attr_str(ATTR_DEVICE, &ev.device)
            .attr(ATTR_MINOR, &ev.minor.to_ne_bytes())
            .attr(ATTR_DEVICE_ID, &ev.device_id.to_ne_bytes());
        if let Some(cfg) = &ev.reconfig.dev_cfg {
            b = b.attr_str(ATTR_DEV_CFG, cfg);
        }
        if let Some(size) = ev.reconfig.dev_size {
            if pad {
                b = b.attr(ATTR_PAD, &[]);
            }
            b = b.attr(ATTR_DEV_SIZE, &size.to_ne_bytes());
        }
        if let Some(wc) = ev.reconfig.write_cache {
            b = b.attr(ATTR_WRITECACHE, &[u8::from(wc)]);
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::encode_event;
    use super::*;
    use proptest::prelude::*;

    const FAM: u16 = 0x1b;

    fn added() -> Event {
        Event {
            kind: EventKind::Added,
            device: "tcm-user/1/vol1/dlmfile//srv/vol1.img".into(),
            minor: 3,
            device_id: 42,
            reconfig: Reconfig::default(),
            unknown_attrs: vec![],
        }
    }

    fn one(bytes: &[u8]) -> Incoming {
        let mut v = decode_datagram(bytes, FAM);
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    fn malformed(bytes: &[u8]) -> DecodeError {
        match one(bytes) {
            Incoming::Malformed(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Builds a raw event from (type, payload) attributes.
    fn raw(cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = MessageBuilder::genl(FAM, 0, 0, cmd, 2);
        for (t, p) in attrs {
            b = b.attr(*t, p);
        }
        b.finish()
    }

    #[test]
    fn decodes_the_three_events() {
        let ev = added();
        assert_eq!(
            one(&encode_event(FAM, &ev, false)),
            Incoming::Event(ev.clone())
        );

        let rm = Event {
            kind: EventKind::Removed,
            ..ev.clone()
        };
        assert_eq!(one(&encode_event(FAM, &rm, false)), Incoming::Event(rm));

        for reconfig in [
            Reconfig {
                dev_cfg: Some("dlmfile//srv/b.img;direct=0".into()),
                ..Default::default()
            },
            Reconfig {
                dev_size: Some(1 << 40),
                ..Default::default()
            },
            Reconfig {
                write_cache: Some(true),
                ..Default::default()
            },
            Reconfig {
                write_cache: Some(false),
                ..Default::default()
            },
        ] {
            let rc = Event {
                kind: EventKind::Reconfig,
                reconfig,
                ..ev.clone()
            };
            for pad in [false, true] {
                assert_eq!(
                    one(&encode_event(FAM, &rc, pad)),
                    Incoming::Event(rc.clone())
                );
            }
        }
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut d = encode_event(FAM, &added(), false);
        let rm = Event {
            kind: EventKind::Removed,
            device_id: 7,
            ..added()
        };
        d.extend(encode_event(FAM, &rm, false));
        let got = decode_datagram(&d, FAM);
        assert_eq!(got, vec![Incoming::Event(added()), Incoming::Event(rm)]);
    }

    #[test]
    fn acks_carry_seq_and_errno() {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&wire::NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&9u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-19i32).to_ne_bytes());
        m.extend_from_slice(&[0; 16]); // echoed request header
        assert_eq!(one(&m), Incoming::Ack { seq: 9, error: -19 });
    }

    #[test]
    fn malformed_events_name_the_field() {
        let dev: &[u8] = b"tcm-user/1/v/dlmfile//x\0";
        let minor = 3u32.to_ne_bytes();
        let id = 42u32.to_ne_bytes();
        let size = 4096u64.to_ne_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                raw(CMD_ADDED, &[(ATTR_MINOR, &minor), (ATTR_DEVICE_ID, &id)]),
                "DEVICE attribute missing",
            ),
            (
                raw(CMD_ADDED, &[(ATTR_DEVICE, dev), (ATTR_DEVICE_ID, &id)]),
                "MINOR attribute missing",
            ),
            (
                raw(CMD_ADDED, &[(ATTR_DEVICE, dev), (ATTR_MINOR, &minor)]),
                "DEVICE_ID attribute missing",
            ),
            (
                raw(
                    CMD_ADDED,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &[1, 2]),
                        (ATTR_DEVICE_ID, &id),
                    ],
                ),
                "MINOR",
            ),
            (
                raw(
                    CMD_ADDED,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &size),
                    ],
                ),
                "DEVICE_ID",
            ),
            (
                raw(
                    CMD_ADDED,
                    &[
                        (ATTR_DEVICE, b"a\0b\0"),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                    ],
                ),
                "DEVICE: embedded NUL",
            ),
            (
                raw(
                    CMD_ADDED,
                    &[
                        (ATTR_DEVICE, b"\xff\0"),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                    ],
                ),
                "DEVICE: not UTF-8",
            ),
            (
                raw(
                    CMD_ADDED,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                    ],
                ),
                "DEVICE: attribute repeated",
            ),
            (
                raw(
                    CMD_RECONFIG,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                    ],
                ),
                "without DEV_CFG",
            ),
            (
                raw(
                    CMD_RECONFIG,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                        (ATTR_DEV_SIZE, &id),
                    ],
                ),
                "DEV_SIZE",
            ),
            (
                raw(
                    CMD_RECONFIG,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                        (ATTR_WRITECACHE, &[2]),
                    ],
                ),
                "WRITECACHE: value 2",
            ),
            (
                raw(
                    CMD_RECONFIG,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                        (ATTR_WRITECACHE, &[1, 0]),
                    ],
                ),
                "WRITECACHE",
            ),
            (
                raw(
                    CMD_ADDED,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                        (ATTR_DEV_SIZE, &size),
                    ],
                ),
                "only belong in RECONFIG",
            ),
            (
                raw(
                    CMD_ADDED,
                    &[
                        (ATTR_DEVICE, dev),
                        (ATTR_MINOR, &minor),
                        (ATTR_DEVICE_ID, &id),
                        (ATTR_CMD_STATUS, &id),
                    ],
                ),
                "not valid in an event",
            ),
            (
                raw(c(cmd::TCMU_CMD_ADDED_DEVICE_DONE), &[]),
                "unexpected TCM-USER command 4",
            ),
        ];
        for (bytes, want) in cases {
            let e = malformed(&bytes);
            assert!(e.to_string().contains(want), "want {want:?} in {e}");
        }
    }

    #[test]
    fn errors_keep_the_device_id_when_it_was_readable() {
        let e = malformed(&raw(
            CMD_RECONFIG,
            &[
                (ATTR_DEVICE, b"tcm-user/1/v/dlmfile//x\0"),
                (ATTR_MINOR, &[0; 4]),
                (ATTR_DEVICE_ID, &5u32.to_ne_bytes()),
            ],
        ));
        assert_eq!(e.device_id, Some(5));
        assert_eq!(e.kind, Some(EventKind::Reconfig));
        assert_eq!(e.device.as_deref(), Some("tcm-user/1/v/dlmfile//x"));
    }

    #[test]
    fn truncated_attribute_stream_is_an_error() {
        let mut b = encode_event(FAM, &added(), false);
        // Claim the message is 2 bytes shorter: the DEVICE_ID attribute is cut.
        let n = b.len() - 2;
        b.truncate(n);
        b[..4].copy_from_slice(&u32::try_from(n).unwrap().to_ne_bytes());
        assert!(malformed(&b).to_string().contains("nla_len"));
    }

    #[test]
    fn unknown_attributes_are_recorded_not_fatal() {
        let mut ev = added();
        let b = {
            let mut m = encode_event(FAM, &ev, false);
            let extra = MessageBuilder::genl(0, 0, 0, 0, 0)
                .attr(200, &[1, 2, 3])
                .finish();
            m.extend_from_slice(&extra[20..]);
            let n = u32::try_from(m.len()).unwrap();
            m[..4].copy_from_slice(&n.to_ne_bytes());
            m
        };
        ev.unknown_attrs = vec![200];
        assert_eq!(one(&b), Incoming::Event(ev));
    }

    #[test]
    fn messages_of_other_families_are_rejected() {
        // nlmsg_pid is the destination port in kernel unicasts: not a reason
        // to drop a message (the sender is checked on the socket address).
        let mut b = encode_event(FAM, &added(), false);
        b[12..16].copy_from_slice(&1234u32.to_ne_bytes());
        assert!(matches!(
            decode_datagram(&b, FAM).as_slice(),
            [Incoming::Event(_)]
        ));
        let b = encode_event(FAM + 1, &added(), false);
        assert!(malformed(&b).to_string().contains("nlmsg_type"));
    }

    #[test]
    fn reply_matches_the_kernel_layout() {
        let m = encode_reply(FAM, 77, EventKind::Reconfig, 42, -22);
        let msg = wire::messages(&m).next().unwrap().unwrap();
        assert_eq!(
            (msg.ty, msg.seq, msg.flags),
            (FAM, 77, wire::NLM_F_REQUEST | wire::NLM_F_ACK)
        );
        let g = wire::genl(msg.payload).unwrap();
        assert_eq!(g.cmd, c(cmd::TCMU_CMD_RECONFIG_DEVICE_DONE));
        assert_eq!(g.version, 2);
        let at: Vec<_> = wire::attrs(g.attrs).map(Result::unwrap).collect();
        assert_eq!(at.len(), 2);
        assert_eq!((at[0].ty, at[0].s32("s").unwrap()), (ATTR_CMD_STATUS, -22));
        assert_eq!((at[1].ty, at[1].u32("i").unwrap()), (ATTR_DEVICE_ID, 42));

        for (k, done) in [
            (EventKind::Added, cmd::TCMU_CMD_ADDED_DEVICE_DONE),
            (EventKind::Removed, cmd::TCMU_CMD_REMOVED_DEVICE_DONE),
        ] {
            let m = encode_reply(FAM, 1, k, 1, 0);
            assert_eq!(u32::from(m[16]), done);
        }
    }

    #[test]
    fn set_features_carries_a_u8() {
        let m = encode_set_features(FAM, 1, true);
        let msg = wire::messages(&m).next().unwrap().unwrap();
        let g = wire::genl(msg.payload).unwrap();
        assert_eq!(g.cmd, CMD_SET_FEATURES);
        let at = wire::attrs(g.attrs).next().unwrap().unwrap();
        assert_eq!((at.ty, at.u8("x").unwrap()), (ATTR_SUPP_KERN_CMD_REPLY, 1));
    }

    fn newfamily(seq: u32, groups: &[(&str, u32)]) -> Vec<u8> {
        let mut grp_stream = Vec::new();
        for (i, (n, id)) in groups.iter().enumerate() {
            let inner = MessageBuilder::genl(0, 0, 0, 0, 0)
                .attr(wire::CTRL_ATTR_MCAST_GRP_ID, &id.to_ne_bytes())
                .attr_str(wire::CTRL_ATTR_MCAST_GRP_NAME, n)
                .finish();
            let one = MessageBuilder::genl(0, 0, 0, 0, 0)
                .attr(u16::try_from(i + 1).unwrap() | 0x8000, &inner[20..])
                .finish();
            grp_stream.extend_from_slice(&one[20..]);
        }
        let mut m = MessageBuilder::genl(wire::GENL_ID_CTRL, 0, seq, wire::CTRL_CMD_NEWFAMILY, 2)
            .attr_str(wire::CTRL_ATTR_FAMILY_NAME, FAMILY_NAME)
            .attr(wire::CTRL_ATTR_FAMILY_ID, &0x1bu16.to_ne_bytes())
            .attr(wire::CTRL_ATTR_VERSION, &2u32.to_ne_bytes())
            .attr(wire::CTRL_ATTR_MCAST_GROUPS | 0x8000, &grp_stream)
            .finish();
        // followed by the acknowledgement
        let mut ack = Vec::new();
        ack.extend_from_slice(&20u32.to_ne_bytes());
        ack.extend_from_slice(&wire::NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&[0, 0]);
        ack.extend_from_slice(&seq.to_ne_bytes());
        ack.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&ack);
        m
    }

    #[test]
    fn family_resolution_finds_id_and_group() {
        let d = newfamily(5, &[("other", 3), ("config", 17)]);
        let got = decode_ctrl(&d, 5).unwrap();
        let CtrlReply::Family(f) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(f.id, 0x1b);
        assert_eq!(f.version, 2);
        assert_eq!(f.group("config"), Some(17));
        assert_eq!(f.group("nope"), None);
        assert_eq!(got[1], CtrlReply::Ack(0));
        // other sequence numbers are not ours
        assert!(decode_ctrl(&d, 6).unwrap().is_empty());
        let get = encode_get_family(5, FAMILY_NAME);
        let g = wire::genl(wire::messages(&get).next().unwrap().unwrap().payload).unwrap();
        assert_eq!(g.cmd, wire::CTRL_CMD_GETFAMILY);
        assert_eq!(
            wire::attrs(g.attrs).next().unwrap().unwrap().payload,
            b"TCM-USER\0"
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_datagram(&bytes, FAM);
            let _ = decode_ctrl(&bytes, 0);
        }

        #[test]
        fn events_round_trip(
            device in "[ -~]{1,200}",
            minor: u32, device_id: u32,
            which in 0u8..5, size: u64, wc: bool, pad: bool,
            cfg in "[ -~]{0,100}",
        ) {
            let (kind, reconfig) = match which {
                0 => (EventKind::Added, Reconfig::default()),
                1 => (EventKind::Removed, Reconfig::default()),
                2 => (EventKind::Reconfig, Reconfig { dev_size: Some(size), ..Default::default() }),
                3 => (EventKind::Reconfig, Reconfig { write_cache: Some(wc), ..Default::default() }),
                _ => (EventKind::Reconfig, Reconfig { dev_cfg: Some(cfg), ..Default::default() }),
            };
            let ev = Event { kind, device, minor, device_id, reconfig, unknown_attrs: vec![] };
            prop_assert_eq!(decode_datagram(&encode_event(FAM, &ev, pad), FAM), vec![Incoming::Event(ev)]);
        }

        #[test]
        fn any_truncation_of_an_event_is_an_error_not_a_panic(cut in 1usize..60) {
            let full = encode_event(FAM, &added(), false);
            let n = full.len().saturating_sub(cut);
            let got = decode_datagram(&full[..n], FAM);
            prop_assert!(got.iter().all(|i| matches!(i, Incoming::Malformed(_))), "{:?}", got);
        }
    }
}
