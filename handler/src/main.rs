//! The `tcmu-prd` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use tcmu_prd::config::{Config, Glob};
use tcmu_prd::control::{self, Request};
use tcmu_prd::{cluster, daemon, export, logging, uio};

#[derive(Parser, Debug)]
#[command(
    name = "tcmu-prd",
    version,
    about = "TCMU backstore handler for LIO with cluster-wide SCSI persistent reservations",
    after_long_help = "Files: /etc/tcmu-prd/tcmu-prd.toml (daemon config, `run --config`), \
/run/tcmu-prd/control.sock (control socket of `status` and `log-level`; [paths] control_socket), \
<image>.tcmu-prd-state (an LU's durable PR and identity store). \
Environment: TCMU_PRD_LOG overrides the configured log filter (RUST_LOG syntax). \
Signals: SIGTERM drains in-flight commands and exits; SIGHUP reloads the config and log level. \
See README.md for set-up, the systemd unit, Pacemaker ordering and troubleshooting."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the views go: iSCSI or tcm_loop.
#[derive(Subcommand, Debug, Clone)]
enum ExportFabric {
    /// iSCSI: one ACL per initiator, each mapping its own view.
    Iscsi {
        /// Target IQN (created if missing).
        #[arg(long)]
        target: String,
        /// Target portal group tag.
        #[arg(long, default_value_t = 1)]
        tpg: u16,
        /// Initiator IQN; repeat for each initiator.
        #[arg(long = "initiator", required = true)]
        initiators: Vec<String>,
        /// Portal ip:port to create if missing; repeatable.
        #[arg(long = "portal")]
        portals: Vec<String>,
        /// LUN number the initiators see.
        #[arg(long, default_value_t = 0)]
        mapped_lun: u64,
    },
    /// tcm_loop: one TPG per initiator (its nexus).
    Loopback {
        /// Target WWN, naa. + 16 hex digits.
        #[arg(long)]
        wwn: String,
        /// Initiator WWN (naa. + 16 hex digits); repeat for each initiator.
        #[arg(long = "initiator", required = true)]
        initiators: Vec<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct ExportArgs {
    /// LU name (prefix of the view backstore names).
    #[arg(long)]
    lu: String,
    /// The shared image: a file or block device, absolute path.
    #[arg(long)]
    image: PathBuf,
    /// Size in bytes (default: the image's size).
    #[arg(long)]
    size: Option<u64>,
    /// TCMU HBA index (core/user_<hba>).
    #[arg(long, default_value_t = 1)]
    hba: u32,
    /// Extra cfgstring option key=value; repeatable.
    #[arg(long = "option")]
    options: Vec<String>,
    /// LIO's configfs root.
    #[arg(long, default_value = "/sys/kernel/config/target")]
    target_root: PathBuf,
    #[command(subcommand)]
    fabric: ExportFabric,
}

impl ExportArgs {
    fn spec(&self) -> export::ExportSpec {
        export::ExportSpec {
            lu: self.lu.clone(),
            image: self.image.clone(),
            size: self.size,
            hba: self.hba,
            options: self.options.clone(),
            fabric: match self.fabric.clone() {
                ExportFabric::Iscsi {
                    target,
                    tpg,
                    initiators,
                    portals,
                    mapped_lun,
                } => export::FabricSpec::Iscsi {
                    target,
                    tpg,
                    initiators,
                    portals,
                    mapped_lun,
                },
                ExportFabric::Loopback { wwn, initiators } => {
                    export::FabricSpec::Loopback { wwn, initiators }
                }
            },
        }
    }
}

/// Which daemon to talk to.
#[derive(clap::Args, Debug, Clone)]
struct SocketArgs {
    /// The daemon's control socket (default: [paths] control_socket of the
    /// config file, /etc/tcmu-prd/tcmu-prd.toml if it exists, else
    /// /run/tcmu-prd/control.sock).
    #[arg(long, short)]
    socket: Option<PathBuf>,
    /// Read the socket path from this daemon config file.
    #[arg(long, short, conflicts_with = "socket")]
    config: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> Result<PathBuf, String> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match tcmu_prd::config::config_path(self.config.clone()) {
            Some(c) => Config::load(&c)
                .map(|c| c.paths.control_socket)
                .map_err(|e| e.to_string()),
            None => Ok(PathBuf::from(control::DEFAULT_SOCKET)),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: serve every TCMU device of subtype dlmfile that the
    /// config's [devices] filter selects, until SIGTERM.
    Run {
        /// Daemon config file (TOML); reloaded on SIGHUP. Default:
        /// /etc/tcmu-prd/tcmu-prd.toml if it exists, else built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve only devices on these HBAs (user_<N>); overrides the config; repeatable.
        #[arg(long = "hba")]
        hbas: Vec<u32>,
        /// Serve only backstores whose name matches this glob; overrides the config; repeatable.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Create the per-initiator view layout of an LU in LIO's configfs:
    /// one TCMU backstore per initiator, each reachable by that initiator only.
    Export(ExportArgs),
    /// Remove the views that `export` with the same arguments created.
    Unexport(ExportArgs),
    /// List the TCMU devices the kernel offers (from /sys/class/uio).
    ListDevices {
        /// The uio class directory.
        #[arg(long, default_value = "/sys/class/uio")]
        uio_class: PathBuf,
    },
    /// Show what the running daemon serves: LUs, their views and I_T
    /// nexuses, the cluster state and each LU's persistent reservations.
    Status {
        /// Print JSON (stable field names) instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Change the running daemon's log filter, e.g. `debug` or
    /// `info,tcmu_prd::ring=trace` (until the next SIGHUP, which goes back
    /// to the config file's level).
    LogLevel {
        /// A tracing filter directive (no spaces).
        filter: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Write the man pages (section 8) into DIR.
    #[command(hide = true)]
    GenerateMan {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Check that this node's DLM works for tcmu-prd: join a lockspace and
    /// pass a lock value block between two lock holders (EX write, NL, PR
    /// read), including a blocking AST.
    CheckDlm {
        /// Lockspace to use for the check.
        #[arg(long, default_value = "tcmu-prd-check")]
        lockspace: String,
        /// Bound for each DLM step, in seconds.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
        /// Where configfs is mounted.
        #[arg(long, default_value = "/sys/kernel/config")]
        configfs: PathBuf,
    },
    /// Print the durable state an LU's store holds (the newest valid slot:
    /// sequence number, identity, ports, PR state) as JSON, without a
    /// daemon. Read-only; for a running LU prefer `status`.
    ShowState {
        /// The state store (default for an image: <image>.tcmu-prd-state).
        store: PathBuf,
    },
}

fn main() -> ExitCode {
    logging::init("info");
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            hbas,
            names,
        } => run(config, hbas, names),
        Command::Export(args) => match export::export(&args.target_root, &args.spec()) {
            Ok(views) => {
                println!("{:<48} {:<28} tpg lun", "initiator", "view backstore");
                for v in views {
                    let bs = v
                        .backstore
                        .strip_prefix(args.target_root.join("core"))
                        .unwrap_or(&v.backstore);
                    let lun = v
                        .tpg_lun
                        .strip_prefix(&args.target_root)
                        .unwrap_or(&v.tpg_lun);
                    println!("{:<48} {:<28} {}", v.initiator, bs.display(), lun.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(lu = %args.lu, "export failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Unexport(args) => match export::unexport(&args.target_root, &args.spec()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(lu = %args.lu, "unexport failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::ListDevices { uio_class } => {
            let (found, errors) = uio::discover(&uio_class);
            println!(
                "{:<8} {:<24} {:<10} {:>12}  cfgstring",
                "uio", "backstore", "subtype", "map size"
            );
            for d in &found {
                println!(
                    "{:<8} {:<24} {:<10} {:>#12x}  {}",
                    d.uio,
                    d.id.to_string(),
                    d.id.subtype,
                    d.map_size,
                    d.id.cfgstring
                );
            }
            for e in &errors {
                tracing::warn!(device = %e.uio, "unreadable uio device: {}", e.what);
            }
            if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Status { json, socket } => status(json, &socket),
        Command::LogLevel { filter, socket } => log_level(&filter, &socket),
        Command::GenerateMan { dir } => match generate_man(&dir) {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tcmu-prd: writing man pages into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::CheckDlm {
            lockspace,
            timeout,
            configfs,
        } => {
            match cluster::selftest::check_dlm(&configfs, &lockspace, Duration::from_secs(timeout))
            {
                Ok(()) => {
                    println!(
                        "DLM check passed: lockspace {lockspace}, LVB round trip and blocking AST OK"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(lockspace = %lockspace, "DLM check failed: {e}");
                    eprintln!("tcmu-prd: DLM check failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ShowState { store } => match show_state(&store) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tcmu-prd: {}: {e}", store.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn run(config_path: Option<PathBuf>, hbas: Vec<u32>, names: Vec<String>) -> ExitCode {
    let config_path = tcmu_prd::config::config_path(config_path);
    let mut config = match &config_path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    logging::set_level(&config.daemon.log_level.0);
    if !hbas.is_empty() {
        config.devices.hbas = hbas;
    }
    if !names.is_empty() {
        let globs: Result<Vec<Glob>, String> = names.iter().map(|n| Glob::new(n)).collect();
        match globs {
            Ok(g) => config.devices.names = g,
            Err(e) => {
                tracing::error!("--name: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match daemon::run(daemon::RunOptions {
        config_path,
        config,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("tcmu-prd stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The newest valid state of a store as one JSON object.
fn show_state(path: &std::path::Path) -> Result<String, String> {
    use tcmu_prd::cluster::store::Store;
    if !path.exists() {
        return Err("no such state store".into());
    }
    // O_DIRECT where the file system allows it: the daemons write with it.
    let store = Store::open(path, false, true)
        .or_else(|_| Store::open(path, false, false))
        .map_err(|e| e.to_string())?;
    let Some(snap) = store.read().map_err(|e| e.to_string())? else {
        return Ok(serde_json::json!({ "seq": 0, "state": null }).to_string());
    };
    let state: serde_json::Value = serde_json::from_slice(&snap.payload).map_err(|e| {
        format!(
            "slot {} (seq {}) does not hold tcmu-prd state JSON: {e}",
            snap.slot, snap.seq
        )
    })?;
    Ok(serde_json::json!({ "seq": snap.seq, "slot": snap.slot, "state": state }).to_string())
}

/// Sends `req` to the daemon; prints the error and returns `None` on failure.
fn call(socket: &SocketArgs, req: &Request) -> Option<control::Reply> {
    let path = match socket.path() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tcmu-prd: {e}");
            return None;
        }
    };
    match control::call(&path, req) {
        Ok(r) if r.ok => Some(r),
        Ok(r) => {
            eprintln!(
                "tcmu-prd: the daemon on {} refused: {}",
                path.display(),
                r.error.as_deref().unwrap_or("no reason given")
            );
            None
        }
        Err(e) => {
            eprintln!("tcmu-prd: {e}");
            None
        }
    }
}

fn status(json: bool, socket: &SocketArgs) -> ExitCode {
    let Some(reply) = call(socket, &Request::Status) else {
        return ExitCode::FAILURE;
    };
    let Some(st) = reply.status else {
        eprintln!("tcmu-prd: the daemon's reply has no status");
        return ExitCode::FAILURE;
    };
    if json {
        match serde_json::to_string_pretty(&st) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("tcmu-prd: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", control::status::render(&st));
    }
    ExitCode::SUCCESS
}

fn log_level(filter: &str, socket: &SocketArgs) -> ExitCode {
    match call(socket, &Request::LogLevel(filter.to_owned())) {
        Some(r) => {
            println!("log filter now {}", r.log_filter.as_deref().unwrap_or("?"));
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

/// The pages: `tcmu-prd.8`, and `tcmu-prd-<sub>[-<subsub>].8` for every
/// visible subcommand.
fn man_pages() -> Vec<(String, Vec<u8>)> {
    // After `build`, a subcommand's display name is `tcmu-prd-<sub>`.
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name());
        let mut buf = Vec::new();
        if clap_mangen::Man::new(cmd.clone())
            .section("8")
            .manual("System Administration")
            .render(&mut buf)
            .is_ok()
        {
            out.push((format!("{name}.8"), buf));
        }
        // clap's own `help` subcommands need no pages.
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            walk(sub, out);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut out);
    out
}

fn generate_man(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, page) in man_pages() {
        let p = dir.join(name);
        std::fs::write(&p, page)?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let pages = man_pages();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        let main = String::from_utf8(pages[0].1.clone()).unwrap();
        assert_eq!(names[0], "tcmu-prd.8");
        assert!(
            main.starts_with(".ie"),
            "roff: {}",
            &main[..40.min(main.len())]
        );
        assert!(main.contains(".TH tcmu-prd 8"), "{main}");
        for sub in Cli::command().get_subcommands() {
            let n = sub.get_name();
            let roff = n.replace('-', "\\-");
            if sub.is_hide_set() {
                assert!(!main.contains(&roff), "hidden {n} in the man page");
                continue;
            }
            assert!(main.contains(&roff), "tcmu-prd.8 does not mention {n}");
            assert!(
                names.contains(&format!("tcmu-prd-{n}.8").as_str()),
                "{names:?}"
            );
        }
        for want in [
            "tcmu-prd-export-iscsi.8",
            "tcmu-prd-status.8",
            "tcmu-prd-log-level.8",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let status = &pages
            .iter()
            .find(|(n, _)| n == "tcmu-prd-status.8")
            .unwrap()
            .1;
        let status = String::from_utf8_lossy(status);
        assert!(
            status.contains("\\-\\-json") && status.contains("\\-\\-socket"),
            "{status}"
        );
    }

    #[test]
    fn generate_man_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate_man(&dir.path().join("man8")).unwrap();
        assert!(written.len() >= 8);
        assert!(written.iter().all(|p| p.metadata().unwrap().len() > 100));
    }

    #[test]
    fn socket_path_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("d.toml");
        std::fs::write(&cfg, "[paths]\ncontrol_socket = \"/run/x/d2.sock\"\n").unwrap();
        let a = |socket: Option<&str>, config: Option<&PathBuf>| SocketArgs {
            socket: socket.map(PathBuf::from),
            config: config.cloned(),
        };
        assert_eq!(
            a(None, None).path().unwrap(),
            PathBuf::from(control::DEFAULT_SOCKET)
        );
        assert_eq!(
            a(None, Some(&cfg)).path().unwrap(),
            PathBuf::from("/run/x/d2.sock")
        );
        assert_eq!(a(Some("/s"), None).path().unwrap(), PathBuf::from("/s"));
        let missing = dir.path().join("none.toml");
        assert!(
            a(None, Some(&missing))
                .path()
                .unwrap_err()
                .contains("none.toml")
        );
    }

    #[test]
    fn status_against_no_daemon_fails() {
        let dir = tempfile::tempdir().unwrap();
        let s = SocketArgs {
            socket: Some(dir.path().join("gone.sock")),
            config: None,
        };
        assert_eq!(status(false, &s), ExitCode::FAILURE);
        assert_eq!(log_level("debug", &s), ExitCode::FAILURE);
    }
}
