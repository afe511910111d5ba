//! Commands that carry parameter lists or compare data (MODE SELECT 6/10,
//! UNMAP, COMPARE AND WRITE, VERIFY with BYTCHK, WRITE SAME, EXTENDED COPY),
//! with a valid CDB whose length fields match the input and an arbitrary list.
//! Input: flags, selector, length byte, cut, list.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let lu = common::lu(data[0] & !0x18);
    let n = data[2];
    let list = &data[4..];
    let plen = list.len();
    let plen16 = u16::try_from(plen).unwrap_or(u16::MAX).to_be_bytes();
    let plen32 = u32::try_from(plen).unwrap_or(u32::MAX).to_be_bytes();
    let cdb: Vec<u8> = match data[1] % 8 {
        0 => vec![0x15, 0x10, 0, 0, u8::try_from(plen).unwrap_or(u8::MAX), 0],
        1 => vec![0x55, 0x10, 0, 0, 0, 0, 0, plen16[0], plen16[1], 0],
        2 => vec![0x42, 0, 0, 0, 0, 0, 0, plen16[0], plen16[1], 0],
        3 => {
            let mut c = vec![0u8; 16];
            c[0] = 0x89;
            c[9] = n & 0x1f;
            c[13] = n >> 5;
            c
        }
        4 => vec![0x2f, 0x02 | (n & 0x04), 0, 0, 0, n & 0x3f, 0, 0, n >> 6, 0],
        5 => vec![0x41, n & 0x08, 0, 0, 0, n & 0x3f, 0, 0, 1 + (n >> 6), 0],
        6 => vec![0x2e, n & 0x02, 0, 0, 0, n & 0x3f, 0, 0, n >> 6, 0],
        _ => {
            let mut c = vec![0u8; 16];
            c[0] = 0x83;
            c[10..14].copy_from_slice(&plen32);
            c
        }
    };
    common::run(&lu, &cdb, list, usize::from(data[3]) * 7, 0, 0);
});
