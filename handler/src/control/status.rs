//! What `tcmu-prd status` reports: the JSON schema (field names are stable;
//! add fields, never rename) and the human table. Built by the daemon
//! (`daemon::control`) from read-only snapshots; pure data here, so the
//! client can render what it received.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::pr::{Holder, Nexus, PrState, PrType, TransportId};

/// The whole answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub daemon: DaemonStatus,
    pub cluster: ClusterStatus,
    /// Every LU this daemon serves, by image path.
    pub lus: Vec<LuStatus>,
    /// Parts of the answer that could not be had (e.g. the cluster thread
    /// did not answer in time); the rest is still valid.
    pub warnings: Vec<String>,
}

/// The process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    /// The config file given to `run`, if any.
    pub config: Option<String>,
    pub socket: String,
    /// The tracing filter in force.
    pub log_filter: Option<String>,
    pub uptime_s: u64,
    /// SIGTERM received: draining in-flight commands, reading no new ones.
    pub stopping: bool,
    /// TCMU devices (views) served.
    pub devices: usize,
}

/// How PR state is shared, and whether that works right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `local` or `dlm`.
    pub mode: String,
    /// The DLM lockspace (`dlm` mode).
    pub lockspace: Option<String>,
    /// `dlm` mode: `joined`, `lost` or `unknown` (the cluster thread did not
    /// answer). `local` mode: `local`.
    pub state: String,
    /// Why the lockspace is lost.
    pub reason: Option<String>,
    /// This node's DLM node id (configfs `dlm/cluster/comms/*/local`).
    pub local_node: Option<u32>,
    /// Node ids in the lockspace (configfs `dlm/cluster/spaces/<ls>/nodes`).
    pub members: Option<Vec<u32>>,
}

/// One logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuStatus {
    pub image: String,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// NAA designator (VPD 0x83), hex.
    pub naa: String,
    pub size_bytes: u64,
    pub block_size: u32,
    /// This node's views (TCMU devices) of the LU.
    pub views: Vec<ViewStatus>,
    /// Target ports with their cluster-wide relative target port ids.
    pub target_ports: Vec<PortStatus>,
    /// `dlm` mode only.
    pub cluster: Option<LuClusterStatus>,
    /// The PR state this node last saw.
    pub pr: PrStatus,
}

/// One view: a TCMU device serving one I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewStatus {
    /// `user_<hba>/<backstore>`.
    pub device: String,
    /// `uio<N>`.
    pub uio: String,
    /// Commands taken from the ring and not yet completed.
    pub in_flight: usize,
    /// READs and WRITEs that went to the file through the LU thread's
    /// io_uring since the device started (the rest ran on the thread
    /// itself or on the worker pool).
    #[serde(default)]
    pub io_uring_commands: u64,
    /// Times the LU thread found new entries of this view by watching the
    /// ring (`poll_us`), each a uio wake-up and thread switch saved.
    #[serde(default)]
    pub polled: u64,
    /// The I_T nexus the view serves; `None` when there is none (see
    /// `nexus_problem`).
    pub nexus: Option<NexusStatus>,
    /// Why the view has no single nexus: unresolved yet, not exported,
    /// reachable by several initiators. PR OUT and RESERVE are refused then.
    pub nexus_problem: Option<String>,
}

/// An I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NexusStatus {
    pub initiator: InitiatorStatus,
    pub rtpi: u16,
    /// `fabric/wwn/tpgt_N`, when this node knows the port.
    pub target_port: Option<String>,
}

/// An initiator port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitiatorStatus {
    /// `iscsi`, `sas` (tcm_loop) or `fc`.
    pub protocol: String,
    /// The name as LIO shows it (IQN, `naa.` + 16 hex digits, WWPN).
    pub name: String,
    /// iSCSI ISID, hex, when the port is known to that precision.
    pub isid: Option<String>,
    /// The SPC-4 TransportID, hex, as PR IN READ FULL STATUS reports it.
    pub transport_id: String,
}

/// A target port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub name: String,
    pub rtpi: u16,
}

/// The LU's cluster side (`dlm` mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuClusterStatus {
    /// The DLM resource name's LU part (`serial:<serial>` or the store path).
    pub lu_id: String,
    /// `serving`, `closed` (re-acquiring its lock) or `refused`.
    pub phase: String,
    /// Why commands are refused (phase `refused`).
    pub refusal: Option<String>,
    /// State lock mode held: `NL`, `PR`, `EX`, or `None`.
    pub lock: Option<String>,
    /// Mode of a request in progress.
    pub lock_pending: Option<String>,
    /// COMPARE AND WRITE lock mode held.
    pub caw_lock: Option<String>,
    /// Updates waiting for EX.
    pub queued_updates: Option<usize>,
    /// Commands admitted and running.
    pub tickets: usize,
    /// DLM requests made for this LU (steady I/O does not move it).
    pub dlm_requests: u64,
    /// Sequence number of the state this node last decoded.
    pub state_seq: u64,
}

/// Persistent reservation state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrStatus {
    pub generation: u32,
    pub aptpl: bool,
    pub registrations: Vec<RegistrationStatus>,
    pub reservation: Option<ReservationStatus>,
    /// The I_T nexus holding an SPC-2 RESERVE.
    pub spc2_reservation: Option<NexusStatus>,
}

/// One registered I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationStatus {
    /// `0x` + hex, as sg_persist prints keys.
    pub key: String,
    pub nexus: NexusStatus,
    pub all_tg_pt: bool,
    /// Whether this registration holds the reservation.
    pub holder: bool,
}

/// The persistent reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationStatus {
    /// As sg_persist names it, e.g. `Write Exclusive, registrants only`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The TYPE code (SPC-4 table 170).
    pub type_code: u8,
    /// The reservation key READ RESERVATION reports.
    pub key: String,
    /// The holder; `None` for the all-registrants types (every registrant holds).
    pub holder: Option<NexusStatus>,
}

/// The TYPE's name as sg_persist prints it.
#[must_use]
pub fn type_name(t: PrType) -> &'static str {
    match t {
        PrType::WriteExclusive => "Write Exclusive",
        PrType::ExclusiveAccess => "Exclusive Access",
        PrType::WriteExclusiveRegistrantsOnly => "Write Exclusive, registrants only",
        PrType::ExclusiveAccessRegistrantsOnly => "Exclusive Access, registrants only",
        PrType::WriteExclusiveAllRegistrants => "Write Exclusive, all registrants",
        PrType::ExclusiveAccessAllRegistrants => "Exclusive Access, all registrants",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl InitiatorStatus {
    /// From a TransportID.
    #[must_use]
    pub fn of(id: &TransportId) -> Self {
        let mut tid = Vec::new();
        id.encode(&mut tid);
        let (protocol, name, isid) = match id {
            TransportId::Iscsi { name, isid } => {
                ("iscsi", name.clone(), isid.map(|i| format!("0x{i:012x}")))
            }
            TransportId::Sas { address } => ("sas", format!("naa.{address:016x}"), None),
            TransportId::Fc { wwpn } => {
                let b = wwpn.to_be_bytes();
                let name = b
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                ("fc", name, None)
            }
        };
        InitiatorStatus {
            protocol: protocol.into(),
            name,
            isid,
            transport_id: hex(&tid),
        }
    }

    /// The name, with `,i,0x<isid>` when the ISID is known.
    #[must_use]
    pub fn display(&self) -> String {
        match &self.isid {
            Some(isid) => format!("{},i,{isid}", self.name),
            None => self.name.clone(),
        }
    }
}

impl NexusStatus {
    /// From a nexus; `ports` names target ports by RTPI.
    #[must_use]
    pub fn of(n: &Nexus, ports: &[PortStatus]) -> Self {
        NexusStatus {
            initiator: InitiatorStatus::of(&n.initiator),
            rtpi: n.rtpi,
            target_port: ports
                .iter()
                .find(|p| p.rtpi == n.rtpi)
                .map(|p| p.name.clone()),
        }
    }

    fn display(&self) -> String {
        match &self.target_port {
            Some(p) => format!("{} -> {p} (rtpi {})", self.initiator.display(), self.rtpi),
            None => format!("{} -> rtpi {}", self.initiator.display(), self.rtpi),
        }
    }
}

impl PrStatus {
    /// From the PR engine's state.
    #[must_use]
    pub fn of(pr: &PrState, ports: &[PortStatus]) -> Self {
        let registrations = pr
            .registrations
            .iter()
            .enumerate()
            .map(|(i, r)| RegistrationStatus {
                key: format!("{:#x}", r.key),
                nexus: NexusStatus::of(&r.nexus, ports),
                all_tg_pt: r.all_tg_pt,
                holder: pr.registration_holds(i),
            })
            .collect();
        let reservation = pr.reservation.as_ref().map(|r| ReservationStatus {
            kind: type_name(r.kind).into(),
            type_code: r.kind.code(),
            key: format!("{:#x}", pr.reservation_key().unwrap_or(0)),
            holder: match &r.holder {
                Holder::Nexus(n) => Some(NexusStatus::of(n, ports)),
                Holder::AllRegistrants => None,
            },
        });
        PrStatus {
            generation: pr.generation,
            aptpl: pr.aptpl,
            registrations,
            reservation,
            spc2_reservation: pr.spc2_holder.as_ref().map(|n| NexusStatus::of(n, ports)),
        }
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn or_dash(s: Option<&str>) -> String {
    s.unwrap_or("-").to_owned()
}

/// The human-readable form.
#[must_use]
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let d = &s.daemon;
    let _ = writeln!(
        o,
        "tcmu-prd {} pid {}, up {}s, {} device(s){}",
        d.version,
        d.pid,
        d.uptime_s,
        d.devices,
        if d.stopping {
            ", STOPPING (draining)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "config {}, socket {}, log filter {}",
        or_dash(d.config.as_deref()),
        d.socket,
        or_dash(d.log_filter.as_deref())
    );
    let c = &s.cluster;
    match c.lockspace.as_deref() {
        None => {
            let _ = writeln!(o, "cluster: {}", c.mode);
        }
        Some(ls) => {
            let _ = write!(o, "cluster: {}, lockspace {ls}: {}", c.mode, c.state);
            if let Some(r) = &c.reason {
                let _ = write!(o, " ({r})");
            }
            if let Some(m) = &c.members {
                let ids: Vec<String> = m.iter().map(ToString::to_string).collect();
                let _ = write!(o, ", members [{}]", ids.join(" "));
            }
            if let Some(n) = c.local_node {
                let _ = write!(o, ", this node {n}");
            }
            o.push('\n');
        }
    }
    for w in &s.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    if s.lus.is_empty() {
        o.push_str("\nno LUs served\n");
    }
    for lu in &s.lus {
        render_lu(&mut o, lu);
    }
    o
}

fn render_lu(o: &mut String, lu: &LuStatus) {
    let _ = writeln!(
        o,
        "\nLU {}  serial {}  naa {}  {} bytes, {}-byte blocks",
        lu.image, lu.serial, lu.naa, lu.size_bytes, lu.block_size
    );
    if let Some(c) = &lu.cluster {
        let _ = write!(
            o,
            "  cluster: {} {}, lock {}",
            c.lu_id,
            c.phase,
            or_dash(c.lock.as_deref())
        );
        if let Some(p) = &c.lock_pending {
            let _ = write!(o, " (requesting {p})");
        }
        if let Some(cw) = &c.caw_lock {
            let _ = write!(o, ", CAW lock {cw}");
        }
        let _ = write!(
            o,
            ", {} running, {} DLM requests, state seq {}",
            c.tickets, c.dlm_requests, c.state_seq
        );
        if let Some(q) = c.queued_updates.filter(|q| *q > 0) {
            let _ = write!(o, ", {q} updates queued");
        }
        if let Some(r) = &c.refusal {
            let _ = write!(o, "; refusing: {r}");
        }
        o.push('\n');
    }
    let mut rows = vec![vec![
        "VIEW".to_owned(),
        "UIO".into(),
        "IN-FLIGHT".into(),
        "IO_URING".into(),
        "POLLED".into(),
        "I_T NEXUS".into(),
    ]];
    for v in &lu.views {
        let nexus = match (&v.nexus, &v.nexus_problem) {
            (Some(n), _) => n.display(),
            (None, Some(p)) => format!("none: {p}"),
            (None, None) => "none".into(),
        };
        rows.push(vec![
            v.device.clone(),
            v.uio.clone(),
            v.in_flight.to_string(),
            v.io_uring_commands.to_string(),
            v.polled.to_string(),
            nexus,
        ]);
    }
    table(o, "  ", &rows);
    let pr = &lu.pr;
    let _ = writeln!(
        o,
        "  PR generation {:#x}, APTPL {}, {} registration(s)",
        pr.generation,
        if pr.aptpl { "on" } else { "off" },
        pr.registrations.len()
    );
    if !pr.registrations.is_empty() {
        let mut rows = vec![vec![
            "KEY".to_owned(),
            "HOLDS".into(),
            "INITIATOR".into(),
            "TARGET PORT".into(),
            "RTPI".into(),
            "TRANSPORTID".into(),
        ]];
        for r in &pr.registrations {
            rows.push(vec![
                r.key.clone(),
                if r.holder { "*" } else { "" }.into(),
                r.nexus.initiator.display(),
                or_dash(r.nexus.target_port.as_deref()),
                format!(
                    "{}{}",
                    r.nexus.rtpi,
                    if r.all_tg_pt { " (all)" } else { "" }
                ),
                r.nexus.initiator.transport_id.clone(),
            ]);
        }
        table(o, "    ", &rows);
    }
    match &pr.reservation {
        None => o.push_str("  reservation: none\n"),
        Some(r) => {
            let holder = match &r.holder {
                Some(h) => h.display(),
                None => "every registrant".into(),
            };
            let _ = writeln!(
                o,
                "  reservation: {} (type {}), key {}, held by {holder}",
                r.kind, r.type_code, r.key
            );
        }
    }
    if let Some(h) = &pr.spc2_reservation {
        let _ = writeln!(o, "  SPC-2 reservation held by {}", h.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pr::{Registration, Reservation};

    fn ports() -> Vec<PortStatus> {
        vec![
            PortStatus {
                name: "loopback/naa.5001405000000101/tpgt_1".into(),
                rtpi: 1,
            },
            PortStatus {
                name: "iscsi/iqn.2003-01.org.example:t/tpgt_1".into(),
                rtpi: 2,
            },
        ]
    }

    fn sample() -> Status {
        let a = Nexus {
            initiator: TransportId::Sas {
                address: 0x5001_4050_0000_a001,
            },
            rtpi: 1,
        };
        let b = Nexus {
            initiator: TransportId::Iscsi {
                name: "iqn.1994-05.com.redhat:node2".into(),
                isid: Some(0x23d0_0000_0001),
            },
            rtpi: 2,
        };
        let mut pr = PrState {
            generation: 3,
            ..PrState::default()
        };
        for (n, key) in [(&a, 0xa), (&b, 0xb)] {
            pr.registrations.push(Registration {
                nexus: n.clone(),
                key,
                all_tg_pt: false,
            });
        }
        pr.reservation = Some(Reservation {
            holder: Holder::Nexus(a.clone()),
            kind: PrType::WriteExclusiveRegistrantsOnly,
        });
        let ports = ports();
        Status {
            daemon: DaemonStatus {
                pid: 42,
                version: "0.1.0".into(),
                config: Some("/etc/tcmu-prd/tcmu-prd.toml".into()),
                socket: "/run/tcmu-prd/control.sock".into(),
                log_filter: Some("info".into()),
                uptime_s: 7,
                stopping: false,
                devices: 2,
            },
            cluster: ClusterStatus {
                mode: "dlm".into(),
                lockspace: Some("tcmu-prd".into()),
                state: "joined".into(),
                reason: None,
                local_node: Some(1),
                members: Some(vec![1, 2]),
            },
            lus: vec![LuStatus {
                image: "/srv/lu1.img".into(),
                serial: "0123".into(),
                naa: "6001405".into(),
                size_bytes: 1 << 26,
                block_size: 512,
                views: vec![
                    ViewStatus {
                        device: "user_1/lu1-aaaa".into(),
                        uio: "uio0".into(),
                        in_flight: 0,
                        io_uring_commands: 1234,
                        polled: 5678,
                        nexus: Some(NexusStatus::of(&a, &ports)),
                        nexus_problem: None,
                    },
                    ViewStatus {
                        device: "user_1/lu1-bbbb".into(),
                        uio: "uio1".into(),
                        in_flight: 3,
                        io_uring_commands: 0,
                        polled: 0,
                        nexus: None,
                        nexus_problem: Some("two ACLs map it".into()),
                    },
                ],
                target_ports: ports.clone(),
                cluster: Some(LuClusterStatus {
                    lu_id: "serial:0123".into(),
                    phase: "serving".into(),
                    refusal: None,
                    lock: Some("PR".into()),
                    lock_pending: None,
                    caw_lock: None,
                    queued_updates: Some(0),
                    tickets: 1,
                    dlm_requests: 4,
                    state_seq: 9,
                }),
                pr: PrStatus::of(&pr, &ports),
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn pr_state_maps_keys_holders_and_transport_ids() {
        let s = sample();
        let pr = &s.lus[0].pr;
        assert_eq!(pr.generation, 3);
        assert_eq!(pr.registrations[0].key, "0xa");
        assert!(pr.registrations[0].holder && !pr.registrations[1].holder);
        let a = &pr.registrations[0].nexus;
        assert_eq!(a.initiator.protocol, "sas");
        assert_eq!(a.initiator.name, "naa.500140500000a001");
        assert_eq!(
            a.target_port.as_deref(),
            Some("loopback/naa.5001405000000101/tpgt_1")
        );
        // SAS TransportID: protocol 6, address at bytes 4..12, 24 bytes.
        assert_eq!(
            a.initiator.transport_id,
            format!("06000000500140500000a001{}", "0".repeat(24))
        );
        let b = &pr.registrations[1].nexus.initiator;
        assert_eq!(b.display(), "iqn.1994-05.com.redhat:node2,i,0x23d000000001");
        let r = pr.reservation.as_ref().unwrap();
        assert_eq!(
            (r.kind.as_str(), r.type_code),
            ("Write Exclusive, registrants only", 5)
        );
        assert_eq!(r.key, "0xa");
        assert_eq!(r.holder.as_ref().unwrap().rtpi, 1);
    }

    #[test]
    fn all_registrants_has_no_single_holder() {
        let n = Nexus {
            initiator: TransportId::Fc {
                wwpn: 0x2100_0024_ff31_4c48,
            },
            rtpi: 7,
        };
        let pr = PrState {
            registrations: vec![Registration {
                nexus: n,
                key: 5,
                all_tg_pt: true,
            }],
            reservation: Some(Reservation {
                holder: Holder::AllRegistrants,
                kind: PrType::ExclusiveAccessAllRegistrants,
            }),
            ..PrState::default()
        };
        let s = PrStatus::of(&pr, &[]);
        let r = s.reservation.unwrap();
        assert!(r.holder.is_none());
        assert_eq!(r.key, "0x0");
        assert!(s.registrations[0].holder);
        assert_eq!(
            s.registrations[0].nexus.initiator.name,
            "21:00:00:24:ff:31:4c:48"
        );
        assert_eq!(s.registrations[0].nexus.target_port, None);
    }

    #[test]
    fn json_field_names_are_stable_and_round_trip() {
        let s = sample();
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        let lu = &v["lus"][0];
        assert_eq!(v["daemon"]["socket"], "/run/tcmu-prd/control.sock");
        assert_eq!(v["cluster"]["state"], "joined");
        assert_eq!(
            lu["views"][0]["nexus"]["initiator"]["name"],
            "naa.500140500000a001"
        );
        assert_eq!(lu["views"][1]["nexus_problem"], "two ACLs map it");
        assert_eq!(lu["pr"]["registrations"][1]["key"], "0xb");
        assert_eq!(
            lu["pr"]["reservation"]["type"],
            "Write Exclusive, registrants only"
        );
        assert_eq!(lu["cluster"]["lock"], "PR");
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn human_table_shows_views_registrations_and_reservation() {
        let text = render(&sample());
        for want in [
            "tcmu-prd 0.1.0 pid 42",
            "cluster: dlm, lockspace tcmu-prd: joined, members [1 2], this node 1",
            "LU /srv/lu1.img",
            "cluster: serial:0123 serving, lock PR",
            "user_1/lu1-aaaa",
            "IO_URING",
            "1234",
            "POLLED",
            "5678",
            "naa.500140500000a001 -> loopback/naa.5001405000000101/tpgt_1 (rtpi 1)",
            "none: two ACLs map it",
            "PR generation 0x3, APTPL off, 2 registration(s)",
            "reservation: Write Exclusive, registrants only (type 5), key 0xa",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Column alignment: every view row starts its UIO column at one offset.
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("uio")).collect();
        let at: Vec<usize> = rows.iter().map(|l| l.find("uio").unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{rows:?}");
    }

    #[test]
    fn lost_lockspace_and_no_lus() {
        let mut s = sample();
        s.lus.clear();
        s.cluster.state = "lost".into();
        s.cluster.reason = Some("dlm_controld not running".into());
        s.warnings.push("cluster thread did not answer".into());
        let text = render(&s);
        assert!(text.contains("lockspace tcmu-prd: lost (dlm_controld not running)"));
        assert!(text.contains("warning: cluster thread did not answer"));
        assert!(text.contains("no LUs served"));
    }
}
