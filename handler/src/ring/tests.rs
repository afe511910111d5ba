//! The ring engine against the simulated kernel.

// Test patterns and small constants.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::collections::HashMap;
use std::mem::{offset_of, size_of};

use proptest::prelude::*;
use tcmu_sys::{
    TCMU_CMD_ENTRY_IOV_OFFSET, TCMU_TMR_ABORT_TASK, tcmu_cmd_entry_req, tcmu_iovec, tcmu_mailbox,
    tcmu_opcode,
};

use super::sim::{Completion, Dir, SimKernel, SubmitError, fake_mapping};
use super::*;

const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 36, 0];
const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
const READ16: [u8; 16] = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];

fn small() -> SimKernel {
    SimKernel::new(4096, 64, 4096)
}

fn next_cmd(ring: &mut Ring) -> InFlightCmd {
    match ring.poll() {
        Some(Ok(Event::Command(c))) => c,
        other => panic!("expected a command, got {other:?}"),
    }
}

fn next_err(ring: &mut Ring) -> EntryError {
    match ring.poll() {
        Some(Err(e)) => e,
        other => panic!("expected an entry error, got {other:?}"),
    }
}

fn set<const N: usize>(e: &mut [u8], off: usize, v: [u8; N]) {
    e[off..off + N].copy_from_slice(&v);
}

fn flush_and_consume(sim: &mut SimKernel, ring: &mut Ring) -> Vec<Completion> {
    ring.flush().unwrap();
    sim.handle_completions();
    assert_eq!(sim.broken(), None);
    sim.take_completions()
}

// ---- mapping ----

fn mailbox_variant(edit: impl FnOnce(&mut [u8])) -> Result<Mapping, Error> {
    let mut bytes = vec![0u8; 128 + 4096 + 4096];
    // The simulator's mailbox is valid ...
    Mapping::new(Box::new(fake_mapping(4096, 4096))).unwrap();
    bytes[0..2].copy_from_slice(&2u16.to_ne_bytes());
    bytes[2..4].copy_from_slice(&0xfu16.to_ne_bytes());
    bytes[4..8].copy_from_slice(&128u32.to_ne_bytes());
    bytes[8..12].copy_from_slice(&4096u32.to_ne_bytes());
    edit(&mut bytes); // ... and so is this one until edited.
    Mapping::new(Box::new(HeapRegion::from_bytes(&bytes)))
}

fn mailbox_field(e: Result<Mapping, Error>) -> &'static str {
    match e {
        Err(Error::Mailbox { field, .. }) => field,
        other => panic!("expected a mailbox error, got {other:?}"),
    }
}

#[test]
fn validates_the_mailbox() {
    let m = mailbox_variant(|_| {}).unwrap();
    assert_eq!(
        (m.cmdr_off(), m.cmdr_size(), m.data_off()),
        (128, 4096, 128 + 4096)
    );
    let f = m.flags();
    assert!(f.oooc() && f.read_len() && f.tmr() && f.keep_buf());

    let off = |f| offset_of!(tcmu_mailbox, version) + f;
    assert_eq!(mailbox_field(mailbox_variant(|b| b[off(0)] = 1)), "version");
    assert_eq!(mailbox_field(mailbox_variant(|b| b[2] = 0xe)), "flags");
    assert_eq!(
        mailbox_field(mailbox_variant(
            |b| b[4..8].copy_from_slice(&132u32.to_ne_bytes())
        )),
        "cmdr_off"
    );
    assert_eq!(
        mailbox_field(mailbox_variant(
            |b| b[4..8].copy_from_slice(&64u32.to_ne_bytes())
        )),
        "cmdr_off"
    );
    assert_eq!(
        mailbox_field(mailbox_variant(
            |b| b[8..12].copy_from_slice(&8200u32.to_ne_bytes())
        )),
        "cmdr_size"
    );
    assert_eq!(
        mailbox_field(mailbox_variant(
            |b| b[8..12].copy_from_slice(&u32::MAX.to_ne_bytes())
        )),
        "cmdr_size"
    );
    assert_eq!(
        mailbox_field(mailbox_variant(
            |b| b[8..12].copy_from_slice(&100u32.to_ne_bytes())
        )),
        "cmdr_size"
    );
    let tiny = Mapping::new(Box::new(HeapRegion::zeroed(64)));
    assert_eq!(mailbox_field(tiny), "mapping size");
}

#[test]
fn cdb_length_follows_the_opcode_group() {
    assert_eq!(cdb_len(0x00, 0), 6); // TEST UNIT READY
    assert_eq!(cdb_len(0x12, 0), 6); // INQUIRY
    assert_eq!(cdb_len(0x28, 0), 10); // READ(10)
    assert_eq!(cdb_len(0x5e, 0), 10); // PERSISTENT RESERVE IN
    assert_eq!(cdb_len(0xa3, 0), 12); // MAINTENANCE IN
    assert_eq!(cdb_len(0x88, 0), 16); // READ(16)
    assert_eq!(cdb_len(0x7e, 0), 12); // group 3, not variable
    assert_eq!(cdb_len(0x7f, 24), 32); // variable length
    assert_eq!(cdb_len(0x7f, 255), 263);
    assert_eq!(cdb_len(0xc0, 0), 10); // vendor specific
}

// ---- the happy path ----

#[test]
fn inquiry_data_in_with_short_read_len() {
    let mut sim = small();
    let mut ring = sim.ring();
    let id = sim.submit(&INQUIRY, Dir::FromDevice(36)).unwrap();
    let mut cmd = next_cmd(&mut ring);
    assert!(ring.poll().is_none());
    assert_eq!((cmd.cmd_id(), cmd.cdb()), (id, &INQUIRY[..]));
    assert_eq!(
        (cmd.data_len(), cmd.data_in_len(), cmd.is_bidi()),
        (36, 36, false)
    );
    let n = cmd.copy_to_data_in(b"hello, world");
    assert_eq!(n, 12);
    ring.complete(cmd, &Response::good().read_len(n)).unwrap();
    assert_eq!(sim.kicks(), 0, "nothing is published before flush");
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(sim.kicks(), 1);
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].cmd_id, done[0].status, done[0].read_len),
        (id, 0, Some(12))
    );
    assert_eq!(done[0].data_in, b"hello, world");
    assert_eq!(sim.in_flight(), 0);
}

#[test]
fn has_new_says_whether_poll_has_entries_to_read() {
    let mut sim = small();
    let mut ring = sim.ring();
    assert!(!ring.has_new(), "an empty ring");
    sim.submit(&INQUIRY, Dir::FromDevice(36)).unwrap();
    sim.submit(&INQUIRY, Dir::FromDevice(36)).unwrap();
    assert!(ring.has_new());
    let a = next_cmd(&mut ring);
    assert!(ring.has_new(), "one entry is still unread");
    let b = next_cmd(&mut ring);
    assert!(!ring.has_new(), "read up to cmd_head, none completed yet");
    ring.complete(a, &Response::good()).unwrap();
    ring.complete(b, &Response::good()).unwrap();
    flush_and_consume(&mut sim, &mut ring);
    assert!(!ring.has_new(), "completions are not new entries");
    let watch = ring.head_watch();
    assert!(!watch.moved());
    sim.submit(&INQUIRY, Dir::FromDevice(36)).unwrap();
    assert!(ring.has_new());
    assert!(watch.moved(), "the watch sees the entry without the ring");
}

#[test]
fn full_read_sets_no_read_len() {
    let mut sim = small();
    let mut ring = sim.ring();
    sim.submit(&READ16, Dir::FromDevice(3 * 4096 + 100))
        .unwrap();
    let mut cmd = next_cmd(&mut ring);
    let src: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
    let n = cmd.copy_to_data_in(&src);
    assert_eq!(n, src.len());
    ring.complete(cmd, &Response::good().read_len(n)).unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(done[0].read_len, None);
    assert_eq!(done[0].data_in, src);
}

#[test]
fn data_out_is_visible_zero_copy_and_from_a_worker_thread() {
    let mut sim = small();
    let mut ring = sim.ring();
    let payload: Vec<u8> = (0..2 * 4096 + 512).map(|i| (i * 7 % 256) as u8).collect();
    let id = sim
        .submit(&WRITE10, Dir::ToDevice(payload.clone()))
        .unwrap();
    let cmd = next_cmd(&mut ring);
    // Adjacent blocks are merged into one iovec, as the kernel does.
    assert_eq!(cmd.data().len(), 1);
    let worker = std::thread::spawn(move || {
        let mut got = vec![0u8; cmd.data_len()];
        assert_eq!(cmd.copy_from_data(&mut got), got.len());
        (cmd, got)
    });
    let (cmd, got) = worker.join().unwrap();
    assert_eq!(got, payload);
    ring.complete(cmd, &Response::good()).unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!((done[0].cmd_id, done[0].status), (id, 0));
}

#[test]
fn bidi_separates_data_out_and_data_in() {
    let mut sim = small();
    let mut ring = sim.ring();
    sim.submit(&[0x89; 16], Dir::Bidi(vec![5; 512], 512))
        .unwrap();
    let mut cmd = next_cmd(&mut ring);
    assert!(cmd.is_bidi());
    let mut out = vec![0; 512];
    cmd.copy_from_data(&mut out);
    assert_eq!(out, vec![5; 512]);
    assert_eq!(cmd.copy_to_data_in(&[9; 512]), 512);
    ring.complete(cmd, &Response::good()).unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(done[0].data_in, vec![9; 512]);
}

#[test]
fn check_condition_carries_sense() {
    let mut sim = small();
    let mut ring = sim.ring();
    let id = sim.submit(&[0x00; 6], Dir::None).unwrap();
    let cmd = next_cmd(&mut ring);
    let sense = [
        0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0x00, 0, 0, 0, 0,
    ];
    ring.complete(cmd, &Response::check_condition(&sense))
        .unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(
        (done[0].cmd_id, done[0].status),
        (id, status::CHECK_CONDITION)
    );
    assert_eq!(&done[0].sense[..18], &sense);
    assert!(done[0].sense[18..].iter().all(|&b| b == 0));
}

// ---- OOOC, batching, wrap ----

#[test]
fn out_of_order_completion_goes_into_the_tail_slot() {
    let mut sim = small();
    let mut ring = sim.ring();
    let ids: Vec<u16> = (0..3)
        .map(|_| sim.submit(&[0; 6], Dir::None).unwrap())
        .collect();
    let mut cmds: Vec<InFlightCmd> = (0..3).map(|_| next_cmd(&mut ring)).collect();
    let tail0 = ring.tail();
    let c = cmds.remove(2);
    ring.complete(c, &Response::with_status(status::BUSY))
        .unwrap();
    // The last command's completion took the first slot: the tail moved one entry.
    assert_ne!(ring.tail(), tail0);
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!((done[0].cmd_id, done[0].status), (ids[2], status::BUSY));
    let a = cmds.remove(0);
    ring.complete(a, &Response::good()).unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(
        done.iter().map(|c| c.cmd_id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let b = cmds.remove(0);
    ring.complete(b, &Response::good()).unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(done[0].cmd_id, ids[1]);
    let (head, cleaned) = sim.indices();
    assert_eq!((head, cleaned, ring.tail()), (head, head, head));
}

#[test]
fn a_batch_is_one_tail_store_and_one_doorbell() {
    let mut sim = SimKernel::new(8192, 64, 4096);
    let mut ring = sim.ring();
    let ids: Vec<u16> = (0..20)
        .map(|_| sim.submit(&[0; 6], Dir::None).unwrap())
        .collect();
    let cmds: Vec<InFlightCmd> = std::iter::from_fn(|| match ring.poll() {
        Some(Ok(Event::Command(c))) => Some(c),
        _ => None,
    })
    .collect();
    assert_eq!(cmds.len(), 20);
    for c in cmds.into_iter().rev() {
        ring.complete(c, &Response::good()).unwrap();
    }
    assert!(ring.flush().unwrap());
    assert!(!ring.flush().unwrap(), "nothing new: no second doorbell");
    assert_eq!(sim.kicks(), 1);
    assert_eq!(sim.handle_completions(), 20);
    let mut got: Vec<u16> = sim.take_completions().iter().map(|c| c.cmd_id).collect();
    got.sort_unstable();
    assert_eq!(got, ids);
}

#[test]
fn wraps_around_with_pad_entries() {
    // 1 KiB ring: a 128-byte entry (112 + 16-byte CDB) does not divide it
    // evenly with the 6-byte-CDB ones, so PADs appear at the end.
    let mut sim = SimKernel::new(1000, 16, 4096);
    let mut ring = sim.ring();
    for round in 0..200u32 {
        let cdb: &[u8] = if round % 3 == 0 { &READ16 } else { &INQUIRY };
        let id = sim.submit(cdb, Dir::FromDevice(100)).unwrap();
        let mut cmd = next_cmd(&mut ring);
        assert_eq!((cmd.cmd_id(), cmd.cdb()), (id, cdb));
        let data = round.to_ne_bytes();
        cmd.copy_to_data_in(&data);
        ring.complete(cmd, &Response::good().read_len(4)).unwrap();
        let done = flush_and_consume(&mut sim, &mut ring);
        assert_eq!(done[0].data_in, data);
    }
    assert!(sim.pads() > 10, "only {} PADs", sim.pads());
}

#[test]
fn ring_full_then_space_after_completion() {
    let mut sim = SimKernel::new(1024, 64, 512);
    let mut ring = sim.ring();
    let mut n = 0;
    while sim.submit(&[0; 6], Dir::None).is_ok() {
        n += 1;
    }
    assert_eq!(sim.submit(&[0; 6], Dir::None), Err(SubmitError::RingFull));
    assert!(n >= 8, "{n} entries fit");
    let mut cmds: Vec<InFlightCmd> = (0..n).map(|_| next_cmd(&mut ring)).collect();
    assert!(ring.poll().is_none());
    // Completing the newest frees the oldest slot (OOOC). One is not enough
    // here: the next entry needs a PAD to the ring's end as well.
    ring.complete(cmds.pop().unwrap(), &Response::good())
        .unwrap();
    flush_and_consume(&mut sim, &mut ring);
    assert_eq!(sim.submit(&[0; 6], Dir::None), Err(SubmitError::RingFull));
    ring.complete(cmds.pop().unwrap(), &Response::good())
        .unwrap();
    flush_and_consume(&mut sim, &mut ring);
    assert_eq!(sim.pads(), 0);
    sim.submit(&[0; 6], Dir::None).expect("room again");
    assert_eq!(sim.pads(), 1);
    cmds.push(next_cmd(&mut ring));
    for c in cmds {
        ring.complete(c, &Response::good()).unwrap();
    }
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(done.len(), n - 2 + 1);
    assert_eq!(sim.in_flight(), 0);
}

// ---- TMR ----

#[test]
fn tmr_flags_listed_commands_and_is_stepped_over() {
    let mut sim = small();
    let mut ring = sim.ring();
    let ids: Vec<u16> = (0..3)
        .map(|_| sim.submit(&[0; 6], Dir::None).unwrap())
        .collect();
    let cmds: Vec<InFlightCmd> = (0..3).map(|_| next_cmd(&mut ring)).collect();
    sim.submit_tmr(TCMU_TMR_ABORT_TASK as u8, &[ids[1]])
        .unwrap();
    match ring.poll() {
        Some(Ok(Event::Tmr(t))) => {
            assert_eq!(t.tmr_type, TmrType::AbortTask);
            assert_eq!(t.cmd_ids, vec![ids[1]]);
        }
        other => panic!("expected a TMR, got {other:?}"),
    }
    let aborted: Vec<bool> = cmds.iter().map(InFlightCmd::is_aborted).collect();
    assert_eq!(aborted, [false, true, false]);
    for c in cmds {
        let rsp = if c.is_aborted() {
            Response::task_aborted()
        } else {
            Response::good()
        };
        ring.complete(c, &rsp).unwrap();
    }
    let done = flush_and_consume(&mut sim, &mut ring);
    let st: HashMap<u16, u8> = done.iter().map(|c| (c.cmd_id, c.status)).collect();
    assert_eq!(st[&ids[1]], status::TASK_ABORTED);
    assert_eq!(st[&ids[0]], status::GOOD);
    let (head, cleaned) = sim.indices();
    assert_eq!(cleaned, head, "the TMR entry was consumed too");
    // A reused id starts un-aborted.
    sim.submit(&[0; 6], Dir::None).unwrap();
    let c = next_cmd(&mut ring);
    assert!(ids.contains(&c.cmd_id()) && !c.is_aborted());
    ring.complete(c, &Response::good()).unwrap();
}

#[test]
fn tmr_alone_is_consumed_on_the_next_flush() {
    let mut sim = small();
    let mut ring = sim.ring();
    sim.submit_tmr(5, &[]).unwrap();
    assert!(matches!(ring.poll(), Some(Ok(Event::Tmr(t))) if t.tmr_type == TmrType::LunReset));
    assert!(ring.flush().unwrap());
    sim.handle_completions();
    let (head, cleaned) = sim.indices();
    assert_eq!(cleaned, head);
}

// ---- bad entries ----

/// Submits a command whose entry `corrupt` damages; expects the ring to
/// name `field` and the kernel to receive CHECK CONDITION for it.
fn bad_cmd(field: &str, corrupt: impl FnOnce(&mut [u8])) {
    let mut sim = small();
    let mut ring = sim.ring();
    let good = sim.submit(&[0; 6], Dir::None).unwrap();
    let id = sim
        .submit_with(&READ16, Dir::FromDevice(8192), corrupt)
        .unwrap();
    let first = next_cmd(&mut ring);
    let e = next_err(&mut ring);
    assert_eq!(
        (e.field, e.cmd_id, e.outcome),
        (field, Some(id), entry::Outcome::CheckCondition),
        "{e}"
    );
    assert!(ring.poll().is_none());
    assert_eq!(ring.in_flight(), 1);
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].cmd_id, done[0].status),
        (id, status::CHECK_CONDITION)
    );
    assert_eq!((done[0].sense[2], done[0].sense[12]), (0x04, 0x44));
    ring.complete(first, &Response::good()).unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(done[0].cmd_id, good);
    assert!(ring.broken().is_none());
}

const CDB_OFF: usize = offset_of!(tcmu_cmd_entry_req, cdb_off);
const IOV0: usize = TCMU_CMD_ENTRY_IOV_OFFSET;

#[test]
fn cdb_offset_outside_the_mapping() {
    bad_cmd("req.cdb_off", |e| set(e, CDB_OFF, u64::MAX.to_ne_bytes()));
    bad_cmd("req.cdb_off", |e| {
        set(e, CDB_OFF, (128u64 + 4096 + 64 * 4096).to_ne_bytes())
    });
    // The last byte of the mapping: a 16-byte CDB cannot start there.
    bad_cmd("req.cdb_off", |e| {
        let len = 128u64 + 4096 + 64 * 4096;
        set(e, CDB_OFF, (len - 1).to_ne_bytes());
    });
}

#[test]
fn variable_length_cdb_over_260_bytes() {
    let mut sim = small();
    let mut ring = sim.ring();
    let mut cdb = [0u8; 264];
    cdb[0] = 0x7f;
    cdb[7] = 255;
    let id = sim.submit(&cdb, Dir::None).unwrap();
    let e = next_err(&mut ring);
    assert_eq!((e.field, e.cmd_id, e.value), ("cdb[7]", Some(id), 255));
    // A legal 32-byte one passes.
    cdb[7] = 24;
    sim.submit(&cdb[..32], Dir::None).unwrap();
    assert_eq!(next_cmd(&mut ring).cdb().len(), 32);
}

#[test]
fn iovecs_outside_the_data_area() {
    let base =
        |e: &mut [u8], v: u64| set(e, IOV0 + offset_of!(tcmu_iovec, iov_base), v.to_ne_bytes());
    let len =
        |e: &mut [u8], v: u64| set(e, IOV0 + offset_of!(tcmu_iovec, iov_len), v.to_ne_bytes());
    bad_cmd("req.iov.iov_base", |e| base(e, 0)); // the mailbox
    bad_cmd("req.iov.iov_base", |e| base(e, 200)); // the command ring
    bad_cmd("req.iov.iov_base", |e| base(e, u64::MAX));
    bad_cmd("req.iov.iov_len", |e| len(e, u64::MAX)); // base + len overflows
    bad_cmd("req.iov.iov_len", |e| len(e, 65 * 4096)); // past the end
}

#[test]
fn huge_iov_counts() {
    let cnt = offset_of!(tcmu_cmd_entry_req, iov_cnt);
    let bidi = offset_of!(tcmu_cmd_entry_req, iov_bidi_cnt);
    bad_cmd("req.iov_cnt", |e| set(e, cnt, u32::MAX.to_ne_bytes()));
    // 128-byte entry: 48 + 5 * 16 still fits (and reads a zero iovec), 6 does not.
    bad_cmd("req.iov.iov_base", |e| set(e, cnt, 5u32.to_ne_bytes()));
    bad_cmd("req.iov_cnt", |e| set(e, cnt, 6u32.to_ne_bytes()));
    bad_cmd("req.iov_bidi_cnt", |e| set(e, bidi, u32::MAX.to_ne_bytes()));
    bad_cmd("req.iov_dif_cnt", |e| {
        set(
            e,
            offset_of!(tcmu_cmd_entry_req, iov_dif_cnt),
            u32::MAX.to_ne_bytes(),
        );
    });
}

#[test]
fn overlapping_buffers_are_refused() {
    let mut sim = small();
    let mut ring = sim.ring();
    sim.submit(&READ16, Dir::FromDevice(4096)).unwrap();
    let first = next_cmd(&mut ring);
    let first_base = 128u64 + 4096; // block 0
    let id = sim
        .submit_with(&READ16, Dir::FromDevice(4096), |e| {
            set(
                e,
                IOV0 + offset_of!(tcmu_iovec, iov_base),
                (first_base + 100).to_ne_bytes(),
            );
        })
        .unwrap();
    let e = next_err(&mut ring);
    assert_eq!(
        (e.field, e.cmd_id, e.index),
        ("req.iov.iov_base", Some(id), Some(0))
    );
    // Two segments of one command that overlap each other.
    let id2 = sim
        .submit_with(&READ16, Dir::FromDevice(3 * 4096), |e| {
            let cnt = offset_of!(tcmu_cmd_entry_req, iov_cnt);
            set(e, cnt, 2u32.to_ne_bytes());
            let second = IOV0 + size_of::<tcmu_iovec>();
            set(e, second, (first_base + 3 * 4096).to_ne_bytes());
            set(e, second + 8, 4096u64.to_ne_bytes());
            // The first segment now covers the second one.
            set(e, IOV0, (first_base + 2 * 4096).to_ne_bytes());
            set(e, IOV0 + 8, (3 * 4096u64).to_ne_bytes());
        })
        .unwrap();
    let e = next_err(&mut ring);
    assert_eq!((e.field, e.cmd_id), ("req.iov.iov_base", Some(id2)));
    ring.complete(first, &Response::good()).unwrap();
    let done = flush_and_consume(&mut sim, &mut ring);
    assert_eq!(done.len(), 3);
}

#[test]
fn zero_length_entry_stops_the_ring() {
    let mut sim = small();
    let mut ring = sim.ring();
    sim.submit(&[0; 6], Dir::None).unwrap();
    let cmd = next_cmd(&mut ring);
    sim.inject_raw(&tcmu_opcode::TCMU_OP_CMD.to_ne_bytes(), 112);
    let e = next_err(&mut ring);
    assert_eq!(
        (e.field, e.outcome),
        ("hdr.len_op", entry::Outcome::RingStopped)
    );
    assert!(ring.poll().is_none());
    assert!(ring.broken().is_some());
    // Commands read before still complete.
    ring.complete(cmd, &Response::good()).unwrap();
    assert_eq!(flush_and_consume(&mut sim, &mut ring).len(), 1);
}

#[test]
fn lengths_past_head_or_ring_end_stop_the_ring() {
    for (len, problem) in [
        (120u32, "entry runs past cmd_head"),
        (4096 + 8, "entry runs past the end of the ring"),
    ] {
        let mut sim = small();
        let mut ring = sim.ring();
        sim.inject_raw(&(len | tcmu_opcode::TCMU_OP_PAD).to_ne_bytes(), 112);
        let e = next_err(&mut ring);
        assert_eq!((e.field, e.problem), ("hdr.len_op", problem));
    }
    let mut sim = small();
    let mut ring = sim.ring();
    sim.force_head(4100);
    assert_eq!(next_err(&mut ring).field, "mailbox.cmd_head");
}

#[test]
fn unknown_opcode_and_id_zero_are_skipped() {
    let mut sim = small();
    let mut ring = sim.ring();
    sim.inject_raw(&(16u32 | 5).to_ne_bytes(), 16);
    let e = next_err(&mut ring);
    assert_eq!(
        (e.field, e.value, e.outcome),
        ("hdr.len_op", 5, entry::Outcome::Skipped)
    );
    let mut raw = vec![0u8; 112];
    raw[..4].copy_from_slice(&(112u32 | tcmu_opcode::TCMU_OP_CMD).to_ne_bytes());
    sim.inject_raw(&raw, 112);
    let e = next_err(&mut ring);
    assert_eq!(
        (e.field, e.outcome),
        ("hdr.cmd_id", entry::Outcome::Skipped)
    );
    // The ring goes on.
    sim.submit(&[0; 6], Dir::None).unwrap();
    let c = next_cmd(&mut ring);
    ring.complete(c, &Response::good()).unwrap();
    ring.flush().unwrap();
    assert_eq!(ring.tail(), sim.indices().0);
}

#[test]
fn duplicate_id_stops_the_ring() {
    let mut sim = small();
    let mut ring = sim.ring();
    let id = sim.submit(&[0; 6], Dir::None).unwrap();
    let _c = next_cmd(&mut ring);
    sim.submit_with(&[0; 6], Dir::None, |e| set(e, 4, id.to_ne_bytes()))
        .unwrap();
    let e = next_err(&mut ring);
    assert_eq!(
        (e.field, e.outcome),
        ("hdr.cmd_id", entry::Outcome::RingStopped)
    );
    assert!(ring.poll().is_none());
    std::mem::forget(_c); // Would log "dropped without completion".
}

#[test]
fn tmr_with_too_many_ids_is_skipped() {
    let mut sim = small();
    let mut ring = sim.ring();
    let mut raw = vec![0u8; 40];
    raw[..4].copy_from_slice(&(40u32 | tcmu_opcode::TCMU_OP_TMR).to_ne_bytes());
    raw[12..16].copy_from_slice(&5u32.to_ne_bytes()); // room for 4
    sim.inject_raw(&raw, 40);
    let e = next_err(&mut ring);
    assert_eq!(
        (e.field, e.value, e.outcome),
        ("cmd_cnt", 5, entry::Outcome::Skipped)
    );
    assert!(ring.flush().unwrap());
}

// ---- completion misuse ----

#[test]
fn a_command_only_completes_on_its_own_ring() {
    let mut a = small();
    let mut b = small();
    let mut ring_a = a.ring();
    let mut ring_b = b.ring();
    a.submit(&[0; 6], Dir::None).unwrap();
    b.submit(&[0; 6], Dir::None).unwrap();
    let ca = next_cmd(&mut ring_a);
    let cb = next_cmd(&mut ring_b);
    // Same id on both rings: the ring, not just the id, must match.
    assert_eq!(ca.cmd_id(), cb.cmd_id());
    assert!(matches!(
        ring_b.complete(ca, &Response::good()),
        Err(Error::NotInFlight { .. })
    ));
    assert!(!ring_b.flush().unwrap());
    ring_b.complete(cb, &Response::good()).unwrap();
    assert_eq!(flush_and_consume(&mut b, &mut ring_b).len(), 1);
    assert_eq!(ring_a.in_flight(), 1);
}

// ---- start-up ----

#[test]
fn start_after_reset_ring_is_clean() {
    let mut sim = small();
    let mut ring = sim.ring();
    for _ in 0..5 {
        sim.submit(&[0; 6], Dir::None).unwrap();
    }
    let c = next_cmd(&mut ring);
    ring.complete(c, &Response::good()).unwrap();
    ring.flush().unwrap();
    sim.handle_completions();
    // The daemon dies here with entries pending.
    drop(ring);
    let st = sim.mapping().start_state().unwrap();
    assert!(!st.is_clean());
    assert_eq!(sim.reset_ring().len(), 4);
    let st = sim.mapping().start_state().unwrap();
    assert_eq!((st.tail, st.head, st.is_clean()), (0, 0, true));
    let mut ring = sim.ring();
    let id = sim.submit(&[0; 6], Dir::None).unwrap();
    let c = next_cmd(&mut ring);
    assert_eq!(c.cmd_id(), id);
    ring.complete(c, &Response::good()).unwrap();
    assert_eq!(flush_and_consume(&mut sim, &mut ring)[0].cmd_id, id);
}

// ---- random interleavings ----

#[derive(Debug, Clone)]
enum Op {
    Submit { data_in: usize, tmr: bool },
    Complete(usize),
    Flush,
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3 * 4096, prop::bool::weighted(0.1))
            .prop_map(|(data_in, tmr)| Op::Submit { data_in, tmr }),
        3 => any::<prop::sample::Index>().prop_map(|i| Op::Complete(i.index(usize::MAX))),
        1 => Just(Op::Flush),
        2 => Just(Op::Poll),
    ]
}

fn expected_status(seq: u64) -> u8 {
    [status::GOOD, status::CHECK_CONDITION, status::BUSY][(seq % 3) as usize]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Never a lost or double completion, every completion seen once by the
    /// kernel with the right status and data, and the tail never passes the head.
    #[test]
    fn random_interleavings(ops in prop::collection::vec(op(), 1..300)) {
        let mut sim = SimKernel::new(2048, 24, 1024);
        let mut ring = sim.ring();
        let mut outstanding: HashMap<u16, u64> = HashMap::new(); // id -> sequence
        let mut held: Vec<InFlightCmd> = Vec::new();
        let mut seq_of_cmd: HashMap<u16, u64> = HashMap::new();
        let mut next_seq = 0u64;
        let mut kernel_done = 0usize;
        let mut check = |sim: &mut SimKernel, outstanding: &mut HashMap<u16, u64>| -> Result<(), TestCaseError> {
            sim.handle_completions();
            prop_assert_eq!(sim.broken(), None);
            for c in sim.take_completions() {
                let seq = outstanding.remove(&c.cmd_id);
                prop_assert!(seq.is_some(), "completion for {} not outstanding", c.cmd_id);
                let seq = seq.unwrap();
                prop_assert_eq!(c.status, expected_status(seq));
                if c.status == status::GOOD && !c.data_in.is_empty() {
                    prop_assert_eq!(&c.data_in[..8], &seq.to_ne_bytes()[..]);
                }
                kernel_done += 1;
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Submit { data_in, tmr: true } => {
                    let ids: Vec<u16> = outstanding.keys().copied().take(3).collect();
                    let _ = sim.submit_tmr(1, &ids);
                    let _ = data_in;
                }
                Op::Submit { data_in, tmr: false } => {
                    let dir = if data_in < 8 { Dir::None } else { Dir::FromDevice(data_in) };
                    if let Ok(id) = sim.submit(&READ16, dir) {
                        outstanding.insert(id, next_seq);
                        seq_of_cmd.insert(id, next_seq);
                        next_seq += 1;
                    }
                }
                Op::Poll => {
                    while let Some(ev) = ring.poll() {
                        match ev {
                            Ok(Event::Command(c)) => held.push(c),
                            Ok(Event::Tmr(_)) => {}
                            Err(e) => prop_assert!(false, "unexpected bad entry {}", e),
                        }
                    }
                }
                Op::Complete(i) if !held.is_empty() => {
                    let mut c = held.swap_remove(i % held.len());
                    let seq = seq_of_cmd[&c.cmd_id()];
                    let st = expected_status(seq);
                    let rsp = if st == status::CHECK_CONDITION {
                        Response::check_condition(&[0x70, 0, 5])
                    } else {
                        let mut data = seq.to_ne_bytes().to_vec();
                        data.resize(c.data_in_len().min(64), 0xaa);
                        let n = c.copy_to_data_in(&data);
                        Response::with_status(st).read_len(n)
                    };
                    ring.complete(c, &rsp).unwrap();
                }
                Op::Complete(_) => {}
                Op::Flush => {
                    ring.flush().unwrap();
                    check(&mut sim, &mut outstanding)?;
                }
            }
        }
        // Drain: everything submitted must come back exactly once.
        loop {
            while let Some(ev) = ring.poll() {
                if let Ok(Event::Command(c)) = ev { held.push(c) }
            }
            if held.is_empty() { break; }
            for mut c in held.drain(..) {
                let seq = seq_of_cmd[&c.cmd_id()];
                let st = expected_status(seq);
                let n = c.copy_to_data_in(&seq.to_ne_bytes());
                let rsp = if st == status::CHECK_CONDITION {
                    Response::check_condition(&[0x70])
                } else {
                    Response::with_status(st).read_len(n)
                };
                ring.complete(c, &rsp).unwrap();
            }
        }
        ring.flush().unwrap();
        check(&mut sim, &mut outstanding)?;
        prop_assert!(outstanding.is_empty(), "lost: {:?}", outstanding);
        prop_assert_eq!(kernel_done as u64, next_seq);
        prop_assert_eq!(sim.in_flight(), 0);
        prop_assert_eq!(ring.in_flight(), 0);
        let (head, cleaned) = sim.indices();
        prop_assert_eq!((cleaned, ring.tail()), (head, head));
    }
}
