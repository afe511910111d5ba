//! Everything the daemon reads from files and sockets besides the ring and
//! netlink: a state-store slot, the LU state JSON inside it, an LVB, the
//! daemon config file, a control-socket request and reply. Any bytes give a
//! value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcmu_prd::cluster::{lvb, store};
use tcmu_prd::control::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let _ = store::fuzz_decode_slot(data);
    let _ = tcmu_prd::lu::state::LuState::decode(data);
    if let Ok(b) = <&[u8; lvb::LEN]>::try_from(data.get(..lvb::LEN).unwrap_or(&[])) {
        let _ = lvb::Lvb::decode(b);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tcmu_prd::config::Config::parse(text, std::path::Path::new("fuzz.toml"));
    }
    let _ = Request::parse(data);
    let _ = serde_json::from_slice::<Reply>(data);
});
