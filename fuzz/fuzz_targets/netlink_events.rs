//! Any datagram on the TCM-USER socket must decode to events or errors,
//! never a panic; the controller decoder too (it reads the same socket).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcmu_prd::netlink::tcmu;

fuzz_target!(|data: &[u8]| {
    for item in tcmu::decode_datagram(data, 0x1b) {
        if let tcmu::Incoming::Event(ev) = item {
            // What the daemon does next with an event must not panic either.
            let _ = tcmu_prd::uio::TcmuName::parse(&ev.device);
            if let Some(cfg) = &ev.reconfig.dev_cfg {
                let _ = tcmu_prd::config::DeviceConfig::parse_dev_config(cfg);
            }
        }
    }
    let _ = tcmu::decode_ctrl(data, 1);
});
