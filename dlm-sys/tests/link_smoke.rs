//! The libdlm symbols link and answer without a running cluster.

#[test]
fn libdlm_links_and_reports_its_version() {
    let (major, minor, patch) = dlm_sys::library_version();
    // libdlm 4.x in Debian 12; any 3.x or newer library has the lockspace API we use.
    assert!(
        major >= 3,
        "unexpected libdlm version {major}.{minor}.{patch}"
    );
}

#[test]
fn node_check_names_the_missing_piece() {
    let tmp = std::env::temp_dir().join(format!("dlm-sys-check-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let err = dlm_sys::check_node(&tmp).unwrap_err().to_string();
    // Without the dlm module (the usual case on a build host) the module is
    // named; with it, the missing configfs directory is.
    assert!(
        err.contains("modprobe dlm") || err.contains("configfs has no dlm directory"),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn libquorum_links_and_answers_with_or_without_corosync() {
    match dlm_sys::quorum::Quorum::connect() {
        // A build host usually runs no corosync: the library says so.
        Err(e) => assert!(e.to_string().contains("CS_ERR"), "{e}"),
        Ok(q) => {
            q.quorate().unwrap();
        }
    }
}
