//! The handler object `/org/kernel/TCMUService1/dlmfile`: what targetcli
//! shows for `help create` (`ConfigDesc`) and asks before it creates a
//! backstore (`CheckConfig`). The logic is plain functions so it is tested
//! without a bus.

use std::fmt::Write as _;

use crate::config::cfgstring::{KEYS, SUBTYPE};
use crate::config::{DeviceConfig, check};

/// Text of the `ConfigDesc` property: the cfgstring syntax and every key.
/// targetcli prints it under "CFGSTRING FORMAT" in `help create`.
#[must_use]
pub fn config_desc() -> String {
    const IMAGE: &str = "<image>";
    let width = KEYS
        .iter()
        .map(|(k, _)| k.len())
        .fold(IMAGE.len(), usize::max);
    let mut s = format!(
        "{SUBTYPE} cfgstring: {IMAGE}[;key=value]...\n  {IMAGE:<width$}  absolute path of a \
         regular file or block device (on shared storage for a cluster)\n"
    );
    for (key, what) in KEYS {
        let _ = writeln!(s, "  {key:<width$}  {what}");
    }
    s.push_str(
        "No ',' or ':' anywhere; ';' separates options, each key at most once.\n\
         Example: cfgstring=/srv/vol1.img;serial=vol1",
    );
    s
}

/// `CheckConfig`: `config` is `dlmfile/<cfgstring>` (targetcli prepends
/// the subtype). Valid means it parses and [`check`] accepts it against the
/// filesystem now: the answer is `(true, <canonical cfgstring>)`, else
/// `(false, <why>)`, the reason naming the key and path.
#[must_use]
pub fn check_config(config: &str) -> (bool, String) {
    let cfg = match DeviceConfig::parse_dev_config(config) {
        Ok(cfg) => cfg,
        Err(e) => return (false, e.to_string()),
    };
    match check(&cfg) {
        Ok(()) => (true, cfg.to_string()),
        Err(why) => (false, why),
    }
}

/// The `org.kernel.TCMUService1` interface of the handler object.
#[derive(Debug, Default)]
pub struct Handler;

#[zbus::interface(name = "org.kernel.TCMUService1")]
impl Handler {
    /// The cfgstring syntax (see [`config_desc`]); never changes.
    #[zbus(property(emits_changed_signal = "const"))]
    fn config_desc(&self) -> String {
        config_desc()
    }

    /// Validates `<subtype>/<cfgstring>` (see [`check_config`]).
    fn check_config(&self, config: &str) -> (bool, String) {
        let (ok, reason) = check_config(config);
        if ok {
            tracing::debug!(config, "CheckConfig: valid");
        } else {
            tracing::info!(config, "CheckConfig: refused: {reason}");
        }
        (ok, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_names_syntax_every_key_and_the_forbidden_characters() {
        let d = config_desc();
        assert!(d.starts_with("dlmfile cfgstring: <image>[;key=value]..."));
        for key in ["direct=0|1", "grow=0|1", "ro=0|1", "state=PATH", "serial=S"] {
            assert!(d.contains(key), "{key} missing from {d}");
        }
        assert!(d.contains("No ',' or ':'"));
        // The example in it is itself a valid cfgstring.
        let example = d.rsplit("cfgstring=").next().unwrap();
        assert!(DeviceConfig::parse(example).is_ok(), "{example}");
    }

    #[test]
    fn valid_config_answers_the_canonical_form() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("a.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let (ok, why) = check_config(&format!("dlmfile/{};serial=v1", img.display()));
        assert!(ok, "{why}");
        assert_eq!(
            why,
            format!(
                "{0};direct=1;grow=0;ro=0;state={0}.tcmu-prd-state;serial=v1",
                img.display()
            )
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("a.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let img = img.display();
        let dir = t.path().display();
        let cases = [
            ("rbd/pool/x".to_owned(), "subtype \"rbd\" is not dlmfile"),
            ("dlmfile".to_owned(), "is not dlmfile"),
            ("dlmfile/".to_owned(), "image path is empty"),
            ("dlmfile/rel.img".to_owned(), "is not absolute"),
            (
                format!("dlmfile/{dir}/missing.img"),
                "missing.img: No such file or directory",
            ),
            (
                format!("dlmfile/{dir}"),
                "not a regular file or block device",
            ),
            (format!("dlmfile/{img};fast=1"), "unknown key \"fast\""),
            (format!("dlmfile/{img};direct=2"), "direct: bad value"),
            (
                format!("dlmfile/{img};state=/nonexistent-dir/s"),
                "state /nonexistent-dir/s: directory /nonexistent-dir",
            ),
            (format!("dlmfile/{img};ro=1;grow=1"), "exclude each other"),
        ];
        for (input, want) in cases {
            let (ok, why) = check_config(&input);
            assert!(!ok, "{input} accepted");
            assert!(why.contains(want), "{input}: {why:?} lacks {want:?}");
        }
    }
}
