//! Engine tests: table-driven service action tests, PR IN layouts, the
//! libiscsi scenarios, and property tests against a reference model.

mod access;
mod layout;
mod model;
mod scenarios;
mod table;

use super::*;

pub(super) const KA: u64 = 0xaaaa_0000_0000_0001;
pub(super) const KB: u64 = 0xbbbb_0000_0000_0002;
pub(super) const KC: u64 = 0xcccc_0000_0000_0003;
pub(super) const KN: u64 = 0x1111_2222_3333_4444;

pub(super) fn iqn(i: u8) -> TransportId {
    TransportId::Iscsi {
        name: format!("iqn.2003-01.org.example:init{i}"),
        isid: None,
    }
}

pub(super) fn nx(i: u8, rtpi: u16) -> Nexus {
    Nexus {
        initiator: iqn(i),
        rtpi,
    }
}

pub(super) fn ports() -> Vec<TargetPort> {
    vec![
        TargetPort {
            rtpi: 1,
            name: "iqn.target,t,1".into(),
        },
        TargetPort {
            rtpi: 2,
            name: "iqn.target,t,2".into(),
        },
    ]
}

/// PARAMETER DATA flags byte 20.
pub(super) const SPEC_I_PT: u8 = 0x08;
pub(super) const ALL_TG_PT: u8 = 0x04;
pub(super) const APTPL: u8 = 0x01;

pub(super) fn prout_cdb(sa: u8, kind: u8, pll: u32) -> Vec<u8> {
    let mut c = vec![0x5f, sa, kind, 0, 0, 0, 0, 0, 0, 0];
    c[5..9].copy_from_slice(&pll.to_be_bytes());
    c
}

pub(super) fn params(res: u64, sa: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&res.to_be_bytes());
    p[8..16].copy_from_slice(&sa.to_be_bytes());
    p[20] = flags;
    p
}

pub(super) fn prin_cdb(sa: u8, alloc: u16) -> Vec<u8> {
    let mut c = vec![0x5e, sa, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// One LU with the state applied after each command, as the caller would.
#[derive(Debug, Default)]
pub(super) struct Lu {
    pub state: PrState,
    pub uas: UaQueues,
}

impl Lu {
    pub fn run(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Outcome {
        let o = execute(&self.state, &ports(), n, cdb, data);
        if let Some(s) = &o.new_state {
            self.state = s.clone();
        }
        self.uas.establish(&o.unit_attentions);
        o
    }

    pub fn out(&mut self, n: &Nexus, sa: u8, kind: u8, res: u64, sak: u64, flags: u8) -> Status {
        self.run(n, &prout_cdb(sa, kind, 24), &params(res, sak, flags))
            .status
    }

    pub fn register(&mut self, n: &Nexus, key: u64) {
        assert_eq!(self.out(n, 6, 0, 0, key, 0), Status::Good);
    }

    pub fn reserve(&mut self, n: &Nexus, key: u64, kind: u8) {
        assert_eq!(self.out(n, 1, kind, key, 0, 0), Status::Good);
    }

    pub fn keys(&mut self, n: &Nexus) -> (u32, Vec<u64>) {
        let o = self.run(n, &prin_cdb(0, 4096), &[]);
        assert_eq!(o.status, Status::Good);
        let d = o.data_in;
        let generation = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let keys = d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (generation, keys)
    }

    /// READ RESERVATION as (key, type), or None.
    pub fn resv(&mut self, n: &Nexus) -> Option<(u64, u8)> {
        let o = self.run(n, &prin_cdb(1, 4096), &[]);
        assert_eq!(o.status, Status::Good);
        let d = o.data_in;
        if u32::from_be_bytes(d[4..8].try_into().unwrap()) == 0 {
            return None;
        }
        Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21]))
    }
}

pub(super) fn cc(asc: u8, ascq: u8) -> impl Fn(&Status) -> bool {
    move |s| matches!(s, Status::CheckCondition(si) if si.asc == asc && si.ascq == ascq)
}
