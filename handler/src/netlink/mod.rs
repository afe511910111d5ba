//! TCM-USER generic netlink client (DESIGN.md §1 "Netlink").
//!
//! [`TcmuNetlink::open`] resolves the `TCM-USER` family and its `config`
//! multicast group, joins the group and sends
//! `SET_FEATURES(SUPP_KERN_CMD_REPLY=1)`. From then on the kernel waits,
//! without timeout, for a `*_DONE` reply to every ADDED/REMOVED/RECONFIG
//! event of a device whose `nl_reply_supported` is set (the default).
//!
//! Reply matching, as `tcmu_genl_cmd_done` does it: the kernel looks for a
//! pending command whose device has `dev_index == DEVICE_ID`, unlinks it, and
//! only then compares the command. So:
//! - a reply for a device we do not serve would complete *another daemon's*
//!   pending command with our status, and that daemon's own reply then gets
//!   -ENODEV: never reply to an event for a device this process does not
//!   serve (see [`crate::config::DeviceFilter`]);
//! - a reply with the wrong `*_DONE` command for a pending device unlinks the
//!   pending command without completing it, so the configfs write hangs until
//!   `reset_netlink`: [`TcmuNetlink::reply`] derives the command from the event.
//!
//! The socket is nonblocking after `open`; register [`TcmuNetlink::as_raw_fd`]
//! with mio for readability and call [`TcmuNetlink::recv`] until it returns no
//! more items. If it fails with [`NetlinkError::Overrun`], events were lost
//! and the kernel may be waiting for replies nobody will send: run the
//! `block_netlink`/`reset_netlink` recovery ([`crate::configfs::ModuleParams`]).

pub mod tcmu;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

pub use tcmu::{DecodeError, Event, EventKind, FamilyInfo, Incoming, Reconfig};

/// Receive buffer size: netlink messages from this family are far smaller
/// (`NLMSG_GOODSIZE`), one datagram never exceeds a page or two.
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue: a burst of device additions must not overflow it.
const RCVBUF_BYTES: usize = 1 << 20;
/// How long set-up waits for each kernel answer: the controller and
/// SET_FEATURES answer synchronously, so silence means no working genl.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures of the netlink client.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket operation failed.
    #[error("TCM-USER netlink: {op}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The family is not registered: `target_core_user` is not loaded.
    #[error("generic netlink family {FAMILY} not found (is target_core_user loaded?)", FAMILY = tcmu::FAMILY_NAME)]
    FamilyNotFound,
    /// The family has no `config` multicast group.
    #[error("TCM-USER family {id:#x} has no multicast group \"config\"")]
    NoConfigGroup {
        /// The family id.
        id: u16,
    },
    /// The kernel refused a request during set-up.
    #[error("TCM-USER netlink: kernel refused {op}: errno {errno}")]
    Refused {
        /// The request.
        op: &'static str,
        /// The (positive) errno.
        errno: i32,
    },
    /// The controller's answer could not be decoded.
    #[error("TCM-USER netlink: bad controller reply: {0}")]
    BadCtrlReply(#[source] DecodeError),
    /// The receive queue overflowed (ENOBUFS) or a datagram was truncated:
    /// events were lost; run the netlink recovery.
    #[error("TCM-USER netlink: events lost ({0}); netlink recovery needed")]
    Overrun(String),
    /// The kernel did not answer a set-up request in time.
    #[error("TCM-USER netlink: no answer to {0} within {SETUP_TIMEOUT:?}")]
    Timeout(&'static str),
    /// A reply status must be 0 or a negative errno.
    #[error("reply status {0} for device_id {1} is positive; use 0 or a negative errno")]
    BadStatus(i32, u32),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> NetlinkError {
    move |source| NetlinkError::Io { op, source }
}

/// A reply we sent and whose acknowledgement has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentReply {
    /// The event answered.
    pub kind: EventKind,
    /// Its DEVICE_ID.
    pub device_id: u32,
    /// The status sent.
    pub status: i32,
}

/// What [`TcmuNetlink::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A device event: answer it with [`TcmuNetlink::reply`] if we serve the
    /// device, ignore it otherwise.
    Event(Event),
    /// The kernel's verdict on one of our replies: `error` 0 = taken, else a
    /// negative errno (-ENODEV: no command pending for that DEVICE_ID, e.g.
    /// another daemon answered, or `reset_netlink` already failed it).
    ReplyAck {
        /// What we sent.
        reply: SentReply,
        /// 0 or a negative errno.
        error: i32,
    },
    /// A message that could not be decoded (log it; if it carries a
    /// `device_id` the kernel may be waiting on that device).
    Malformed(DecodeError),
}

/// A reply status is 0 (accept) or a negative errno (refuse).
fn check_status(status: i32, device_id: u32) -> Result<(), NetlinkError> {
    if status > 0 {
        return Err(NetlinkError::BadStatus(status, device_id));
    }
    Ok(())
}

/// The TCM-USER netlink socket.
#[derive(Debug)]
pub struct TcmuNetlink {
    sock: Socket,
    family: FamilyInfo,
    group: u32,
    seq: u32,
    buf: Vec<u8>,
    /// Items read during set-up, handed out by the first `recv`.
    queued: VecDeque<Received>,
    awaiting_ack: BTreeMap<u32, SentReply>,
}

impl TcmuNetlink {
    /// Opens the socket, resolves the family and group, joins the group and
    /// announces `SUPP_KERN_CMD_REPLY=1`. Needs CAP_NET_ADMIN (the kernel's
    /// ops are `GENL_ADMIN_PERM`). Waits (at most [`SETUP_TIMEOUT`] per
    /// step) until the kernel has acknowledged each step; the socket is
    /// nonblocking throughout.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(io_err("socket"))?;
        sock.bind_auto().map_err(io_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(io_err("connect"))?;
        sock.set_non_blocking(true)
            .map_err(io_err("set nonblocking"))?;
        // Best effort: the default queue is enough when the event loop keeps up.
        if let Err(e) = sock.set_rx_buf_sz(RCVBUF_BYTES) {
            tracing::debug!("TCM-USER netlink: SO_RCVBUF not raised: {e}");
        }
        let mut nl = TcmuNetlink {
            sock,
            family: FamilyInfo {
                id: 0,
                version: 0,
                groups: vec![],
            },
            group: 0,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            queued: VecDeque::new(),
            awaiting_ack: BTreeMap::new(),
        };
        nl.family = nl.resolve_family()?;
        nl.group = nl
            .family
            .group(tcmu::CONFIG_GROUP)
            .ok_or(NetlinkError::NoConfigGroup { id: nl.family.id })?;
        nl.sock
            .add_membership(nl.group)
            .map_err(io_err("join multicast group config"))?;
        let seq = nl.next_seq();
        nl.send(
            &tcmu::encode_set_features(nl.family.id, seq, true),
            "send SET_FEATURES",
        )?;
        nl.wait_ack(seq, "SET_FEATURES")?;
        tracing::info!(
            family = nl.family.id,
            group = nl.group,
            version = nl.family.version,
            "TCM-USER netlink ready (kernel command replies on)"
        );
        Ok(nl)
    }

    /// The resolved family id.
    #[must_use]
    pub fn family_id(&self) -> u16 {
        self.family.id
    }

    /// The `config` multicast group id.
    #[must_use]
    pub fn group_id(&self) -> u32 {
        self.group
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8], op: &'static str) -> Result<(), NetlinkError> {
        let n = self.sock.send(msg, 0).map_err(io_err(op))?;
        if n != msg.len() {
            return Err(NetlinkError::Io {
                op,
                source: io::Error::new(io::ErrorKind::WriteZero, "short send"),
            });
        }
        Ok(())
    }

    /// Reads one datagram into `self.buf`; `Ok(false)` when none is waiting.
    fn recv_datagram(&mut self) -> Result<bool, NetlinkError> {
        self.buf.clear();
        match self.sock.recv_from(&mut self.buf, libc::MSG_TRUNC) {
            Ok((n, _)) if n > self.buf.len() => Err(NetlinkError::Overrun(format!(
                "datagram of {n} bytes truncated to {}",
                self.buf.len()
            ))),
            // Only the kernel (port 0) is listened to: any local process
            // can send to our port.
            Ok((_, from)) if from.port_number() != 0 => {
                tracing::warn!(
                    port = from.port_number(),
                    "TCM-USER netlink: datagram not from the kernel ignored"
                );
                self.buf.clear();
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                Err(NetlinkError::Overrun("receive queue overflowed".into()))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(NetlinkError::Io {
                op: "recv",
                source: e,
            }),
        }
    }

    /// Set-up only: waits for the next datagram until `deadline`.
    fn recv_until(&mut self, deadline: Instant, op: &'static str) -> Result<(), NetlinkError> {
        while !self.recv_datagram()? {
            if Instant::now() >= deadline {
                return Err(NetlinkError::Timeout(op));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn resolve_family(&mut self) -> Result<FamilyInfo, NetlinkError> {
        let seq = self.next_seq();
        self.send(
            &tcmu::encode_get_family(seq, tcmu::FAMILY_NAME),
            "send GETFAMILY",
        )?;
        let mut family = None;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            self.recv_until(deadline, "GETFAMILY")?;
            let replies = tcmu::decode_ctrl(&self.buf, seq).map_err(NetlinkError::BadCtrlReply)?;
            for r in replies {
                match r {
                    tcmu::CtrlReply::Family(f) => family = Some(f),
                    tcmu::CtrlReply::Ack(0) => {
                        return family.ok_or(NetlinkError::BadCtrlReply(DecodeError {
                            kind: None,
                            device_id: None,
                            device: None,
                            what: "acknowledged without a family".into(),
                        }));
                    }
                    tcmu::CtrlReply::Ack(e) if e == -libc::ENOENT => {
                        return Err(NetlinkError::FamilyNotFound);
                    }
                    tcmu::CtrlReply::Ack(e) => {
                        return Err(NetlinkError::Refused {
                            op: "GETFAMILY",
                            errno: -e,
                        });
                    }
                }
            }
        }
    }

    /// Waits for the acknowledgement of `seq`; events arriving meanwhile
    /// are queued for the next `recv`.
    fn wait_ack(&mut self, seq: u32, op: &'static str) -> Result<(), NetlinkError> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            self.recv_until(deadline, op)?;
            for item in tcmu::decode_datagram(&self.buf, self.family.id) {
                match item {
                    Incoming::Ack { seq: s, error } if s == seq => {
                        return if error == 0 {
                            Ok(())
                        } else {
                            Err(NetlinkError::Refused { op, errno: -error })
                        };
                    }
                    other => {
                        if let Some(r) = self.classify(other) {
                            self.queued.push_back(r);
                        }
                    }
                }
            }
        }
    }

    fn classify(&mut self, item: Incoming) -> Option<Received> {
        match item {
            Incoming::Event(e) => Some(Received::Event(e)),
            Incoming::Malformed(e) => Some(Received::Malformed(e)),
            Incoming::Ack { seq, error } => match self.awaiting_ack.remove(&seq) {
                Some(reply) => Some(Received::ReplyAck { reply, error }),
                None => {
                    tracing::debug!(
                        seq,
                        error,
                        "TCM-USER netlink: acknowledgement for nothing we sent"
                    );
                    None
                }
            },
        }
    }

    /// Reads everything waiting on the socket without blocking. An empty
    /// vector means nothing was waiting.
    pub fn recv(&mut self) -> Result<Vec<Received>, NetlinkError> {
        let mut out: Vec<Received> = self.queued.drain(..).collect();
        while self.recv_datagram()? {
            let items = tcmu::decode_datagram(&self.buf, self.family.id);
            for item in items {
                if let Some(r) = self.classify(item) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Sends the `*_DONE` reply to `event` with `status` (0 = accept, or a
    /// negative errno to refuse: the configfs write that caused the event
    /// then fails with it). Only for devices this process serves; see the
    /// module documentation. The kernel's verdict arrives later as
    /// [`Received::ReplyAck`].
    pub fn reply(
        &mut self,
        kind: EventKind,
        device_id: u32,
        status: i32,
    ) -> Result<(), NetlinkError> {
        check_status(status, device_id)?;
        let seq = self.next_seq();
        let msg = tcmu::encode_reply(self.family.id, seq, kind, device_id, status);
        self.send(&msg, "send *_DONE reply")?;
        self.awaiting_ack.insert(
            seq,
            SentReply {
                kind,
                device_id,
                status,
            },
        );
        Ok(())
    }

    /// The socket's fd, for registration with an event loop.
    #[must_use]
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsRawFd for TcmuNetlink {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for TcmuNetlink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against the real kernel when the family is registered and we
    /// have CAP_NET_ADMIN; otherwise checks that the failure is the
    /// documented one rather than a hang or panic.
    #[test]
    fn open_on_this_kernel_resolves_or_reports_why() {
        match TcmuNetlink::open() {
            Ok(mut nl) => {
                assert_ne!(nl.family_id(), 0);
                assert_ne!(nl.group_id(), 0);
                // Nothing pending for device_id u32::MAX: the kernel must say so.
                nl.reply(EventKind::Added, u32::MAX, 0).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                loop {
                    let got = nl.recv().unwrap();
                    if let Some(Received::ReplyAck { reply, error }) = got
                        .into_iter()
                        .find(|r| matches!(r, Received::ReplyAck { .. }))
                    {
                        assert_eq!(reply.device_id, u32::MAX);
                        assert_eq!(error, -libc::ENODEV);
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "no acknowledgement");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            // No target_core_user, no CAP_NET_ADMIN, or a sandbox whose
            // generic netlink never answers: each reported, none hangs.
            Err(
                e @ (NetlinkError::FamilyNotFound
                | NetlinkError::Refused { .. }
                | NetlinkError::Timeout(_)),
            ) => {
                eprintln!("TCM-USER netlink not available here: {e}");
            }
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }

    #[test]
    fn reply_status_must_be_zero_or_negative() {
        assert!(check_status(0, 1).is_ok());
        assert!(check_status(-libc::EINVAL, 1).is_ok());
        let e = check_status(5, 9).unwrap_err();
        assert!(matches!(e, NetlinkError::BadStatus(5, 9)));
        assert!(e.to_string().contains("device_id 9"));
    }
}
