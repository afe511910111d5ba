//! Property tests: the engine against a small reference model written
//! straight from SPC-4's prose, over random PR OUT sequences from four
//! initiators on two target ports; and no panics on arbitrary input.

use proptest::prelude::*;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MStatus {
    Good,
    Conflict,
    Check(u8, u8),
}

type Port = (u8, u16);

#[derive(Clone, Debug, Default)]
struct Model {
    /// (initiator, rtpi, key, all_tg_pt), in registration order.
    regs: Vec<(u8, u16, u64, bool)>,
    /// (holder, or None for all registrants; type code).
    res: Option<(Option<Port>, u8)>,
    generation: u32,
    aptpl: bool,
}

#[derive(Clone, Debug)]
struct Cmd {
    init: u8,
    port: u16,
    sa: u8,
    kind: u8,
    res_key: u64,
    sa_key: u64,
    all_tg_pt: bool,
    aptpl: bool,
}

impl Model {
    fn key_of(&self, p: Port) -> Option<u64> {
        self.regs.iter().find(|r| (r.0, r.1) == p).map(|r| r.2)
    }

    fn holds(&self, p: Port) -> bool {
        match self.res {
            Some((None, _)) => self.key_of(p).is_some(),
            Some((Some(h), _)) => h == p,
            None => false,
        }
    }

    /// Drops the reservation when its holder is gone or nobody is left.
    fn fix_res(&mut self) {
        let gone = match self.res {
            Some((Some(h), _)) => self.key_of(h).is_none(),
            Some((None, _)) => self.regs.is_empty(),
            None => false,
        };
        if gone {
            self.res = None;
        }
    }

    fn step(&mut self, c: &Cmd) -> MStatus {
        let me = (c.init, c.port);
        let valid = matches!(c.kind, 1 | 3 | 5 | 6 | 7 | 8);
        let ar = matches!(c.kind, 7 | 8);
        let registered = self.key_of(me).is_some();
        let typed = matches!(c.sa, 1 | 2 | 4 | 5);
        // Table 67 first: these need a registered nexus under a reservation.
        if matches!(c.sa, 1..=5) && self.res.is_some() && !self.holds(me) && !registered {
            return MStatus::Conflict;
        }
        if typed && !valid {
            return MStatus::Check(0x24, 0);
        }
        if c.sa == 0 || c.sa == 6 {
            return self.register(c, me);
        }
        match self.key_of(me) {
            Some(k) if k == c.res_key => {}
            _ => return MStatus::Conflict,
        }
        let new_res = |me: Port| (if ar { None } else { Some(me) }, c.kind);
        match c.sa {
            1 => match self.res {
                None => self.res = Some(new_res(me)),
                Some((_, t)) if t == c.kind && self.holds(me) => {}
                Some(_) => return MStatus::Conflict,
            },
            2 => match self.res {
                Some((_, t)) if self.holds(me) => {
                    if t != c.kind {
                        return MStatus::Check(0x26, 0x04);
                    }
                    self.res = None;
                }
                _ => {}
            },
            3 => {
                self.regs.clear();
                self.res = None;
                self.generation = self.generation.wrapping_add(1);
            }
            _ => {
                let holder_key = match self.res {
                    Some((Some(h), _)) => self.key_of(h),
                    _ => None,
                };
                if c.sa_key == 0 {
                    if !matches!(self.res, Some((None, _))) {
                        return MStatus::Check(0x26, 0);
                    }
                    self.regs.retain(|r| (r.0, r.1) == me);
                    self.res = Some(new_res(me));
                } else if holder_key == Some(c.sa_key) {
                    self.regs.retain(|r| r.2 != c.sa_key || (r.0, r.1) == me);
                    self.res = Some(new_res(me));
                } else {
                    let n = self.regs.len();
                    self.regs.retain(|r| r.2 != c.sa_key);
                    if self.regs.len() == n {
                        return MStatus::Conflict;
                    }
                    self.fix_res();
                }
                self.generation = self.generation.wrapping_add(1);
            }
        }
        MStatus::Good
    }

    fn register(&mut self, c: &Cmd, me: Port) -> MStatus {
        let ignore = c.sa == 6;
        match self.regs.iter().position(|r| (r.0, r.1) == me) {
            None => {
                if !ignore && c.res_key != 0 {
                    return MStatus::Conflict;
                }
                if c.sa_key == 0 {
                    return MStatus::Good;
                }
                let mut ports = vec![c.port];
                if c.all_tg_pt {
                    ports.push(3 - c.port);
                }
                for p in ports {
                    match self.regs.iter_mut().find(|r| (r.0, r.1) == (c.init, p)) {
                        Some(r) => {
                            r.2 = c.sa_key;
                            r.3 = true;
                        }
                        None => self.regs.push((c.init, p, c.sa_key, c.all_tg_pt)),
                    }
                }
            }
            Some(i) => {
                if !ignore && self.regs[i].2 != c.res_key {
                    return MStatus::Conflict;
                }
                let group_all = self.regs[i].3;
                let in_group = |r: &(u8, u16, u64, bool)| {
                    if group_all {
                        r.0 == c.init && r.3
                    } else {
                        (r.0, r.1) == me
                    }
                };
                if c.sa_key == 0 {
                    self.regs.retain(|r| !in_group(r));
                    self.fix_res();
                } else {
                    for r in self.regs.iter_mut().filter(|r| in_group(r)) {
                        r.2 = c.sa_key;
                    }
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        self.aptpl = c.aptpl;
        MStatus::Good
    }

    /// READ FULL STATUS as (key, all_tg_pt, holder, type, rtpi, initiator).
    fn full_status(&self) -> Vec<(u64, bool, bool, u8, u16, TransportId)> {
        self.regs
            .iter()
            .map(|r| {
                let h = self.holds((r.0, r.1));
                let t = if h { self.res.map_or(0, |x| x.1) } else { 0 };
                (r.2, r.3, h, t, r.1, iqn(r.0))
            })
            .collect()
    }

    fn reservation(&self) -> Option<(u64, u8)> {
        self.res.map(|(h, t)| {
            let key = h.and_then(|h| self.key_of(h)).unwrap_or(0);
            (key, t)
        })
    }
}

fn engine_status(s: &Status) -> MStatus {
    match s {
        Status::Good => MStatus::Good,
        Status::ReservationConflict => MStatus::Conflict,
        Status::CheckCondition(si) => MStatus::Check(si.asc, si.ascq),
    }
}

fn parse_full_status(d: &[u8]) -> Vec<(u64, bool, bool, u8, u16, TransportId)> {
    let mut v = Vec::new();
    let mut off = 8;
    while off < d.len() {
        let x = &d[off..];
        let len = usize::try_from(u32::from_be_bytes(x[20..24].try_into().unwrap())).unwrap();
        let (tid, used) = TransportId::parse(&x[24..24 + len], 0).unwrap();
        assert_eq!(used, len);
        v.push((
            u64::from_be_bytes(x[0..8].try_into().unwrap()),
            x[12] & 2 != 0,
            x[12] & 1 != 0,
            x[13],
            u16::from_be_bytes([x[18], x[19]]),
            tid,
        ));
        off += 24 + len;
    }
    v
}

fn cmd() -> impl Strategy<Value = Cmd> {
    (
        0u8..4,
        1u16..3,
        prop_oneof![
            Just(0u8),
            Just(1),
            Just(2),
            Just(3),
            Just(4),
            Just(5),
            Just(6)
        ],
        prop_oneof![
            Just(1u8),
            Just(3),
            Just(5),
            Just(6),
            Just(7),
            Just(8),
            Just(2)
        ],
        0u64..4,
        0u64..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(init, port, sa, kind, res_key, sa_key, all_tg_pt, aptpl)| Cmd {
                init,
                port,
                sa,
                kind,
                res_key,
                sa_key,
                all_tg_pt,
                aptpl,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_reference_model(cmds in prop::collection::vec(cmd(), 1..40)) {
        let mut lu = Lu::default();
        let mut m = Model::default();
        for (i, c) in cmds.iter().enumerate() {
            let n = nx(c.init, c.port);
            let flags = if c.all_tg_pt { ALL_TG_PT } else { 0 } | if c.aptpl { APTPL } else { 0 };
            let o = lu.run(&n, &prout_cdb(c.sa, c.kind, 24), &params(c.res_key, c.sa_key, flags));
            let want = m.step(c);
            prop_assert_eq!(engine_status(&o.status), want, "step {} {:?}", i, c);
            let (generation, keys) = lu.keys(&n);
            prop_assert_eq!(generation, m.generation, "step {}", i);
            prop_assert_eq!(keys, m.regs.iter().map(|r| r.2).collect::<Vec<_>>());
            prop_assert_eq!(lu.resv(&n), m.reservation(), "step {}", i);
            let fs = lu.run(&n, &prin_cdb(3, 65535), &[]).data_in;
            prop_assert_eq!(parse_full_status(&fs), m.full_status(), "step {}", i);
            let caps = lu.run(&n, &prin_cdb(2, 8), &[]).data_in;
            prop_assert_eq!(caps[3] & 1 != 0, m.aptpl);
        }
    }

    #[test]
    fn execute_never_panics(
        setup in prop::collection::vec(cmd(), 0..8),
        op in prop_oneof![Just(0x5eu8), Just(0x5f), Just(0x16), Just(0x17), Just(0x56), Just(0x57), any::<u8>()],
        tail in prop::collection::vec(any::<u8>(), 0..16),
        data in prop::collection::vec(any::<u8>(), 0..96),
        init in 0u8..4,
        port in 1u16..3,
    ) {
        let mut lu = Lu::default();
        for c in &setup {
            lu.out(&nx(c.init, c.port), c.sa, c.kind, c.res_key, c.sa_key, 0);
        }
        let mut cdb = vec![op];
        cdb.extend_from_slice(&tail);
        let n = nx(init, port);
        let _ = check_access(&lu.state, &n, &cdb);
        let _ = classify(&cdb);
        let o = execute(&lu.state, &ports(), &n, &cdb, &data);
        if op == 0x5e && o.status == Status::Good && cdb.len() >= 10 {
            let alloc = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
            prop_assert!(o.data_in.len() <= alloc);
        }
        if o.status != Status::Good {
            prop_assert!(o.new_state.is_none() && o.unit_attentions.is_empty());
        }
    }

    #[test]
    fn prout_parameter_lists_never_panic(
        sa in 0u8..10,
        kind in 0u8..16,
        pll in 0u32..120,
        head in prop::collection::vec(any::<u8>(), 24..28),
        tids in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let mut lu = Lu::default();
        lu.register(&nx(0, 1), KA);
        let mut data = head;
        data.extend_from_slice(&tids);
        let _ = lu.run(&nx(0, 1), &prout_cdb(sa, kind, pll), &data);
    }

    #[test]
    fn transport_id_parse_never_panics(buf in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok((tid, used)) = TransportId::parse(&buf, 0) {
            prop_assert!(used <= buf.len());
            let mut re = Vec::new();
            tid.encode(&mut re);
            prop_assert_eq!(TransportId::parse(&re, 0).map(|x| x.0), Ok(tid));
        }
    }
}
