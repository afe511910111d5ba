//! A TCMU device's configfs directory
//! (`<configfs>/target/core/user_<hba>/<name>/`) and the `target_core_user`
//! module parameters (`<sysfs>/module/target_core_user/parameters/`).
//!
//! Every path is rooted at [`Roots`] so tests run against a temporary tree.
//! Kernel facts (target_core_user.c, 6.1):
//! - `action/block_dev`: 1 blocks the ring, 0 unblocks; only on an enabled
//!   device.
//! - `action/reset_ring`: 1 completes every command on the ring with BUSY
//!   (retryable), 2 with CHECK CONDITION (hard failure); other values EINVAL.
//! - `block_netlink` (0/1) makes new netlink commands fail with EAGAIN;
//!   `reset_netlink` (only 1, and only while blocked) fails every pending
//!   command with EINTR.
//! - `attrib/qfull_time_out` may read `-1`; `attrib/dev_size` and
//!   `attrib/dev_config` are TCMU's own attributes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::uio::TcmuName;

/// Where configfs and sysfs are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// configfs mount point, normally `/sys/kernel/config`.
    pub configfs: PathBuf,
    /// sysfs mount point, normally `/sys`.
    pub sysfs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            configfs: PathBuf::from("/sys/kernel/config"),
            sysfs: PathBuf::from("/sys"),
        }
    }
}

/// A failed configfs/sysfs access, naming the device (or module) and file.
#[derive(Debug, thiserror::Error)]
#[error("{owner}: {file}: {what}")]
pub struct ConfigfsError {
    /// `user_<hba>/<name>`, or `target_core_user` for module parameters.
    pub owner: String,
    /// The file, relative to the device or parameter directory.
    pub file: String,
    /// What failed.
    pub what: String,
    /// The I/O error, if any.
    #[source]
    pub source: Option<io::Error>,
}

/// How `action/reset_ring` completes the commands it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetRing {
    /// 1: SAM_STAT_BUSY, the initiator retries.
    Busy = 1,
    /// 2: CHECK CONDITION, a hard failure.
    CheckCondition = 2,
}

/// The attributes a handler needs at start and after reconfiguration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttribs {
    /// `attrib/hw_block_size`: logical block size in bytes.
    pub hw_block_size: u32,
    /// `attrib/hw_max_sectors`: largest transfer in blocks.
    pub hw_max_sectors: u32,
    /// `attrib/max_data_area_mb`.
    pub max_data_area_mb: u32,
    /// `attrib/tmr_notification`: TMR entries on the ring.
    pub tmr_notification: bool,
    /// `attrib/pgr_support`: 1 = the kernel emulates PR, 0 = PR goes to us.
    pub pgr_support: bool,
    /// `attrib/emulate_write_cache`: WCE as configured.
    pub emulate_write_cache: bool,
    /// `attrib/qfull_time_out` in seconds; -1 = fail at once when full.
    pub qfull_time_out: i64,
    /// `attrib/cmd_time_out` in seconds; 0 = none.
    pub cmd_time_out: u64,
    /// `attrib/dev_size` in bytes.
    pub dev_size: u64,
}

/// One TCMU device's configfs directory.
#[derive(Debug, Clone)]
pub struct DeviceDir {
    dir: PathBuf,
    label: String,
}

impl DeviceDir {
    /// The directory of the device named by a uio name.
    #[must_use]
    pub fn new(roots: &Roots, id: &TcmuName) -> Self {
        DeviceDir {
            dir: id.configfs_dir(&roots.configfs.join("target")),
            label: id.to_string(),
        }
    }

    /// The directory path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn err(&self, file: &str, what: impl Into<String>, source: Option<io::Error>) -> ConfigfsError {
        ConfigfsError {
            owner: self.label.clone(),
            file: file.into(),
            what: what.into(),
            source,
        }
    }

    /// Reads a file of the device directory as text (`file` relative, e.g.
    /// `attrib/hw_block_size`).
    pub fn read(&self, file: &str) -> Result<String, ConfigfsError> {
        fs::read_to_string(self.dir.join(file))
            .map_err(|e| self.err(file, format!("read: {e}"), Some(e)))
    }

    /// Writes `value` to a file of the device directory in one write, as
    /// configfs requires.
    pub fn write(&self, file: &str, value: &str) -> Result<(), ConfigfsError> {
        tracing::debug!(device = %self.label, file, value, "configfs write");
        fs::write(self.dir.join(file), value)
            .map_err(|e| self.err(file, format!("write {value:?}: {e}"), Some(e)))
    }

    fn parse<T: std::str::FromStr>(&self, file: &str) -> Result<T, ConfigfsError> {
        let s = self.read(file)?;
        s.trim()
            .parse()
            .map_err(|_| self.err(file, format!("not a number: {:?}", s.trim()), None))
    }

    fn flag(&self, file: &str) -> Result<bool, ConfigfsError> {
        match self.parse::<u8>(file)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.err(file, format!("expected 0 or 1, got {v}"), None)),
        }
    }

    /// Reads `attrib/dev_size`, falling back to the `Size:` field of `info`
    /// on kernels without the attribute.
    pub fn dev_size(&self) -> Result<u64, ConfigfsError> {
        match self.parse::<u64>("attrib/dev_size") {
            Ok(v) => Ok(v),
            Err(e)
                if e.source
                    .as_ref()
                    .is_some_and(|s| s.kind() == io::ErrorKind::NotFound) =>
            {
                let info = self.read("info")?;
                info_field(&info, "Size")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| self.err("info", "no numeric Size: field", None))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the current `dev_config` (`attrib/dev_config`), `""` if unset.
    pub fn dev_config(&self) -> Result<String, ConfigfsError> {
        Ok(self
            .read("attrib/dev_config")?
            .trim_end_matches('\n')
            .to_owned())
    }

    /// Reads every attribute of [`DeviceAttribs`].
    pub fn attribs(&self) -> Result<DeviceAttribs, ConfigfsError> {
        Ok(DeviceAttribs {
            hw_block_size: self.parse("attrib/hw_block_size")?,
            hw_max_sectors: self.parse("attrib/hw_max_sectors")?,
            max_data_area_mb: self.parse("attrib/max_data_area_mb")?,
            tmr_notification: self.flag("attrib/tmr_notification")?,
            pgr_support: self.flag("attrib/pgr_support")?,
            emulate_write_cache: self.flag("attrib/emulate_write_cache")?,
            qfull_time_out: self.parse("attrib/qfull_time_out")?,
            cmd_time_out: self.parse("attrib/cmd_time_out")?,
            dev_size: self.dev_size()?,
        })
    }

    /// `action/block_dev`: stop (true) or resume (false) ring processing.
    pub fn block(&self, blocked: bool) -> Result<(), ConfigfsError> {
        self.write("action/block_dev", if blocked { "1" } else { "0" })
    }

    /// `action/reset_ring`: complete every command still on the ring.
    pub fn reset_ring(&self, how: ResetRing) -> Result<(), ConfigfsError> {
        self.write("action/reset_ring", &(how as u8).to_string())
    }

    /// The start-up recovery for a ring that may hold stale entries
    /// (DESIGN.md §1): block, reset with BUSY. The caller maps the ring,
    /// takes the tail from the mailbox and then calls `block(false)`.
    pub fn block_and_reset(&self) -> Result<(), ConfigfsError> {
        self.block(true)?;
        if let Err(e) = self.reset_ring(ResetRing::Busy) {
            // Do not leave the device blocked behind a failed reset.
            if let Err(u) = self.block(false) {
                tracing::error!(device = %self.label, "unblocking after failed reset_ring: {u}");
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Finds `Key: value` in a configfs `info` text (fields separated by runs of
/// spaces or newlines).
#[must_use]
pub fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    let mut words = info.split_whitespace();
    let want = format!("{key}:");
    while let Some(w) = words.next() {
        if w == want {
            return words.next();
        }
    }
    None
}

/// The `target_core_user` module parameters used for netlink recovery.
#[derive(Debug, Clone)]
pub struct ModuleParams {
    dir: PathBuf,
}

impl ModuleParams {
    /// `<sysfs>/module/target_core_user/parameters`.
    #[must_use]
    pub fn new(roots: &Roots) -> Self {
        ModuleParams {
            dir: roots.sysfs.join("module/target_core_user/parameters"),
        }
    }

    fn write(&self, name: &str, value: &str) -> Result<(), ConfigfsError> {
        fs::write(self.dir.join(name), value).map_err(|e| ConfigfsError {
            owner: "target_core_user".into(),
            file: format!("parameters/{name}"),
            what: format!("write {value:?}: {e}"),
            source: Some(e),
        })
    }

    /// `block_netlink`: while set, new netlink commands fail with EAGAIN.
    pub fn block_netlink(&self, blocked: bool) -> Result<(), ConfigfsError> {
        self.write("block_netlink", if blocked { "1" } else { "0" })
    }

    /// `reset_netlink=1`: fail every pending command with EINTR (only while
    /// blocked).
    pub fn reset_netlink(&self) -> Result<(), ConfigfsError> {
        self.write("reset_netlink", "1")
    }

    /// The start-up sequence (as tcmu-runner): block, reset, unblock, so no
    /// configfs write stays stuck on a reply a previous daemon never sent.
    /// Returns `Ok(false)` if the kernel lacks the parameters (older than
    /// 4.19): nothing to recover.
    pub fn recover_netlink(&self) -> Result<bool, ConfigfsError> {
        if !self.dir.join("block_netlink").exists() {
            tracing::warn!(
                "target_core_user has no block_netlink parameter; netlink recovery skipped"
            );
            return Ok(false);
        }
        self.block_netlink(true)?;
        let reset = self.reset_netlink();
        // Unblock even if the reset failed: a blocked interface fails every enable.
        self.block_netlink(false)?;
        reset?;
        tracing::info!("TCM-USER netlink recovered (block_netlink, reset_netlink, unblock)");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Roots, DeviceDir) {
        let t = tempfile::tempdir().unwrap();
        let roots = Roots {
            configfs: t.path().join("config"),
            sysfs: t.path().join("sys"),
        };
        let id = TcmuName::parse("tcm-user/3/vol1/dlmfile//srv/a.img").unwrap();
        let dev = DeviceDir::new(&roots, &id);
        fs::create_dir_all(dev.path().join("attrib")).unwrap();
        fs::create_dir_all(dev.path().join("action")).unwrap();
        for (f, v) in [
            ("hw_block_size", "512\n"),
            ("hw_max_sectors", "1024\n"),
            ("max_data_area_mb", "1024\n"),
            ("tmr_notification", "1\n"),
            ("pgr_support", "0\n"),
            ("emulate_write_cache", "1\n"),
            ("qfull_time_out", "-1\n"),
            ("cmd_time_out", "30\n"),
            ("dev_size", "1073741824\n"),
            ("dev_config", "dlmfile//srv/a.img\n"),
        ] {
            fs::write(dev.path().join("attrib").join(f), v).unwrap();
        }
        (t, roots, dev)
    }

    #[test]
    fn paths_follow_the_roots() {
        let (_t, roots, dev) = tree();
        assert_eq!(dev.path(), roots.configfs.join("target/core/user_3/vol1"));
    }

    #[test]
    fn reads_all_attributes() {
        let (_t, _r, dev) = tree();
        assert_eq!(
            dev.attribs().unwrap(),
            DeviceAttribs {
                hw_block_size: 512,
                hw_max_sectors: 1024,
                max_data_area_mb: 1024,
                tmr_notification: true,
                pgr_support: false,
                emulate_write_cache: true,
                qfull_time_out: -1,
                cmd_time_out: 30,
                dev_size: 1 << 30,
            }
        );
        assert_eq!(dev.dev_config().unwrap(), "dlmfile//srv/a.img");
    }

    #[test]
    fn errors_name_device_and_file() {
        let (_t, _r, dev) = tree();
        fs::write(dev.path().join("attrib/hw_block_size"), "abc\n").unwrap();
        let e = dev.attribs().unwrap_err().to_string();
        assert!(
            e.starts_with("user_3/vol1: attrib/hw_block_size: not a number"),
            "{e}"
        );
        fs::write(dev.path().join("attrib/hw_block_size"), "512\n").unwrap();
        fs::write(dev.path().join("attrib/pgr_support"), "2\n").unwrap();
        let e = dev.attribs().unwrap_err().to_string();
        assert!(e.contains("attrib/pgr_support: expected 0 or 1"), "{e}");
        fs::remove_file(dev.path().join("attrib/cmd_time_out")).unwrap();
        fs::write(dev.path().join("attrib/pgr_support"), "1\n").unwrap();
        let e = dev.attribs().unwrap_err().to_string();
        assert!(e.contains("user_3/vol1: attrib/cmd_time_out: read"), "{e}");
    }

    #[test]
    fn dev_size_falls_back_to_info() {
        let (_t, _r, dev) = tree();
        fs::remove_file(dev.path().join("attrib/dev_size")).unwrap();
        fs::write(
            dev.path().join("info"),
            "Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 128\n        Config: dlmfile//srv/a.img Size: 4096 MaxDataAreaMB: 1024 DataPagesPerBlk: 1\n",
        )
        .unwrap();
        assert_eq!(dev.dev_size().unwrap(), 4096);
        fs::write(dev.path().join("info"), "Status: ACTIVATED\n").unwrap();
        assert!(
            dev.dev_size()
                .unwrap_err()
                .to_string()
                .contains("info: no numeric Size")
        );
    }

    #[test]
    fn actions_write_the_kernel_values() {
        let (_t, _r, dev) = tree();
        dev.block_and_reset().unwrap();
        assert_eq!(
            fs::read_to_string(dev.path().join("action/block_dev")).unwrap(),
            "1"
        );
        assert_eq!(
            fs::read_to_string(dev.path().join("action/reset_ring")).unwrap(),
            "1"
        );
        dev.reset_ring(ResetRing::CheckCondition).unwrap();
        assert_eq!(
            fs::read_to_string(dev.path().join("action/reset_ring")).unwrap(),
            "2"
        );
        dev.block(false).unwrap();
        assert_eq!(
            fs::read_to_string(dev.path().join("action/block_dev")).unwrap(),
            "0"
        );
    }

    #[test]
    fn failed_reset_unblocks_again() {
        let (_t, _r, dev) = tree();
        // A directory where the file should be makes the write fail.
        fs::create_dir(dev.path().join("action/reset_ring")).unwrap();
        let e = dev.block_and_reset().unwrap_err();
        assert_eq!(e.file, "action/reset_ring");
        assert_eq!(
            fs::read_to_string(dev.path().join("action/block_dev")).unwrap(),
            "0"
        );
    }

    #[test]
    fn netlink_recovery_sequence() {
        let (_t, roots, _dev) = tree();
        let mp = ModuleParams::new(&roots);
        assert!(
            !mp.recover_netlink().unwrap(),
            "no parameters: nothing to do"
        );
        let dir = roots.sysfs.join("module/target_core_user/parameters");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("block_netlink"), "0").unwrap();
        assert!(mp.recover_netlink().unwrap());
        assert_eq!(fs::read_to_string(dir.join("reset_netlink")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dir.join("block_netlink")).unwrap(), "0");
        // reset fails: still unblocked, error names the parameter
        fs::remove_file(dir.join("reset_netlink")).unwrap();
        fs::create_dir(dir.join("reset_netlink")).unwrap();
        let e = mp.recover_netlink().unwrap_err();
        assert_eq!(e.file, "parameters/reset_netlink");
        assert!(
            e.to_string()
                .starts_with("target_core_user: parameters/reset_netlink")
        );
        assert_eq!(fs::read_to_string(dir.join("block_netlink")).unwrap(), "0");
    }

    #[test]
    fn info_fields() {
        let info = "Status: ACTIVATED  Max Queue Depth: 0\n Config: x Size: 12 MaxDataAreaMB: 8";
        assert_eq!(info_field(info, "Size"), Some("12"));
        assert_eq!(info_field(info, "Config"), Some("x"));
        assert_eq!(info_field(info, "Nope"), None);
        assert_eq!(info_field("Size:", "Size"), None);
    }
}
