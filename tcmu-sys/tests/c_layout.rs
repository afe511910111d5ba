//! Cross-checks the hand-written layouts against the C compiler's view of the
//! vendored UAPI header, so a wrong assertion cannot agree with a wrong struct.

use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use tcmu_sys::*;

const PROBE: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <linux/target_core_user.h>
#define P(name, value) printf("%s %zu\n", name, (size_t)(value))
int main(void) {
    P("mailbox.size", sizeof(struct tcmu_mailbox));
    P("mailbox.cmdr_off", offsetof(struct tcmu_mailbox, cmdr_off));
    P("mailbox.cmdr_size", offsetof(struct tcmu_mailbox, cmdr_size));
    P("mailbox.cmd_head", offsetof(struct tcmu_mailbox, cmd_head));
    P("mailbox.cmd_tail", offsetof(struct tcmu_mailbox, cmd_tail));
    P("hdr.size", sizeof(struct tcmu_cmd_entry_hdr));
    P("hdr.cmd_id", offsetof(struct tcmu_cmd_entry_hdr, cmd_id));
    P("hdr.kflags", offsetof(struct tcmu_cmd_entry_hdr, kflags));
    P("hdr.uflags", offsetof(struct tcmu_cmd_entry_hdr, uflags));
    P("entry.size", sizeof(struct tcmu_cmd_entry));
    P("req.iov_cnt", offsetof(struct tcmu_cmd_entry, req.iov_cnt));
    P("req.iov_bidi_cnt", offsetof(struct tcmu_cmd_entry, req.iov_bidi_cnt));
    P("req.iov_dif_cnt", offsetof(struct tcmu_cmd_entry, req.iov_dif_cnt));
    P("req.cdb_off", offsetof(struct tcmu_cmd_entry, req.cdb_off));
    P("req.iov", offsetof(struct tcmu_cmd_entry, req.iov));
    P("iovec.size", sizeof(struct iovec));
    P("rsp.scsi_status", offsetof(struct tcmu_cmd_entry, rsp.scsi_status));
    P("rsp.read_len", offsetof(struct tcmu_cmd_entry, rsp.read_len));
    P("rsp.sense_buffer", offsetof(struct tcmu_cmd_entry, rsp.sense_buffer));
    P("tmr.tmr_type", offsetof(struct tcmu_tmr_entry, tmr_type));
    P("tmr.cmd_cnt", offsetof(struct tcmu_tmr_entry, cmd_cnt));
    P("tmr.cmd_ids", offsetof(struct tcmu_tmr_entry, cmd_ids));
    return 0;
}
"#;

fn c_layout() -> Vec<(String, usize)> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tcmu-sys-c-layout");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, PROBE).unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-I", include, "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e} (scripts/setup installs a C compiler)"));
    assert!(
        out.status.success(),
        "C probe failed to compile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn hand_written_layouts_match_the_c_header() {
    let rust: &[(&str, usize)] = &[
        ("mailbox.size", size_of::<tcmu_mailbox>()),
        ("mailbox.cmdr_off", offset_of!(tcmu_mailbox, cmdr_off)),
        ("mailbox.cmdr_size", offset_of!(tcmu_mailbox, cmdr_size)),
        ("mailbox.cmd_head", offset_of!(tcmu_mailbox, cmd_head)),
        ("mailbox.cmd_tail", offset_of!(tcmu_mailbox, cmd_tail)),
        ("hdr.size", size_of::<tcmu_cmd_entry_hdr>()),
        ("hdr.cmd_id", offset_of!(tcmu_cmd_entry_hdr, cmd_id)),
        ("hdr.kflags", offset_of!(tcmu_cmd_entry_hdr, kflags)),
        ("hdr.uflags", offset_of!(tcmu_cmd_entry_hdr, uflags)),
        ("entry.size", TCMU_CMD_ENTRY_SIZE),
        ("req.iov_cnt", offset_of!(tcmu_cmd_entry_req, iov_cnt)),
        (
            "req.iov_bidi_cnt",
            offset_of!(tcmu_cmd_entry_req, iov_bidi_cnt),
        ),
        (
            "req.iov_dif_cnt",
            offset_of!(tcmu_cmd_entry_req, iov_dif_cnt),
        ),
        ("req.cdb_off", offset_of!(tcmu_cmd_entry_req, cdb_off)),
        ("req.iov", TCMU_CMD_ENTRY_IOV_OFFSET),
        ("iovec.size", size_of::<tcmu_iovec>()),
        (
            "rsp.scsi_status",
            offset_of!(tcmu_cmd_entry_rsp, scsi_status),
        ),
        ("rsp.read_len", offset_of!(tcmu_cmd_entry_rsp, read_len)),
        (
            "rsp.sense_buffer",
            offset_of!(tcmu_cmd_entry_rsp, sense_buffer),
        ),
        ("tmr.tmr_type", offset_of!(tcmu_tmr_entry, tmr_type)),
        ("tmr.cmd_cnt", offset_of!(tcmu_tmr_entry, cmd_cnt)),
        ("tmr.cmd_ids", TCMU_TMR_ENTRY_CMD_IDS_OFFSET),
    ];
    let c = c_layout();
    assert_eq!(c.len(), rust.len());
    for ((cname, cval), (rname, rval)) in c.iter().zip(rust) {
        assert_eq!(cname, rname);
        assert_eq!(cval, rval, "{cname}: C says {cval}, Rust says {rval}");
    }
}
