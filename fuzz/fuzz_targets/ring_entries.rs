//! Ring entries from fuzz bytes: whatever the kernel (or a corrupted
//! mapping) puts in the mailbox, command ring and data area, draining the
//! ring must never panic, hang or touch memory outside the mapping.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tcmu_prd::ring::{Doorbell, Event, HeapRegion, Mapping, Response, Ring};

const MAILBOX: usize = 128;
const CMDR_SIZE: usize = 4096;
const DATA_SIZE: usize = 4 * 4096;
const LEN: usize = MAILBOX + CMDR_SIZE + DATA_SIZE;

#[derive(Debug)]
struct Quiet;

impl Doorbell for Quiet {
    fn notify(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = vec![0u8; LEN];
    if mode & 1 == 1 {
        // Everything fuzzed, mailbox included: exercises its validation.
        let n = rest.len().min(LEN);
        bytes[..n].copy_from_slice(&rest[..n]);
    } else {
        // A valid 6.1 mailbox; fuzzed head, tail, entries and data.
        let Some((idx, body)) = rest.split_at_checked(8) else {
            return;
        };
        bytes[0..2].copy_from_slice(&2u16.to_ne_bytes());
        bytes[2..4].copy_from_slice(&0xfu16.to_ne_bytes());
        bytes[4..8].copy_from_slice(&(MAILBOX as u32).to_ne_bytes());
        bytes[8..12].copy_from_slice(&(CMDR_SIZE as u32).to_ne_bytes());
        bytes[12..16].copy_from_slice(&idx[0..4]); // cmd_head
        bytes[64..68].copy_from_slice(&idx[4..8]); // cmd_tail
        let n = body.len().min(LEN - MAILBOX);
        bytes[MAILBOX..MAILBOX + n].copy_from_slice(&body[..n]);
    }
    let Ok(map) = Mapping::new(Box::new(HeapRegion::from_bytes(&bytes))) else {
        return;
    };
    let Ok(mut ring) = Ring::new(Arc::new(map), Box::new(Quiet)) else {
        return;
    };
    let mut held = Vec::new();
    // Each poll consumes at least 8 bytes of ring or stops: this bound is never hit.
    for _ in 0..LEN {
        match ring.poll() {
            None => break,
            Some(Ok(Event::Command(mut cmd))) => {
                let _ = cmd.cdb().first();
                let mut out = [0u8; 64];
                cmd.copy_from_data(&mut out);
                cmd.copy_to_data_in(&[0xa5; 300]);
                for mut s in cmd.data_mut() {
                    if let Some(b) = s.last_mut() {
                        *b ^= 1;
                    }
                }
                held.push(cmd);
            }
            Some(Ok(Event::Tmr(_)) | Err(_)) => {}
        }
    }
    // Complete in reverse to exercise out-of-order slot reuse.
    while let Some(cmd) = held.pop() {
        let rsp = Response::good().read_len(1);
        ring.complete(cmd, &rsp).expect("a command from this ring completes");
    }
    let _ = ring.flush();
    assert_eq!(ring.in_flight(), 0);
});
