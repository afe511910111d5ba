//! Arbitrary CDBs with arbitrary data-out and data-in splits.
//! Input: flags, cdb_len, cut_out, cut_in, din_len (2 bytes), cdb, data-out.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let lu = common::lu(data[0]);
    let cdb_len = usize::from(data[1] % 33);
    let cut_out = usize::from(data[2]) * 97;
    let cut_in = usize::from(data[3]) * 131;
    let din_len = usize::from(u16::from_be_bytes([data[4], data[5]]));
    let rest = &data[6..];
    let (cdb, out) = rest.split_at(cdb_len.min(rest.len()));
    common::run(&lu, cdb, out, cut_out, din_len, cut_in);
    // Run it twice: a MODE SELECT may have changed D_SENSE or SWP.
    common::run(&lu, cdb, out, cut_out, din_len, cut_in);
});
