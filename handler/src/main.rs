//! The `tcmu-prd` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tcmu_prd::config::{Config, Glob};
use tcmu_prd::{cluster, daemon, export, logging, uio};

#[derive(Parser, Debug)]
#[command(
    name = "tcmu-prd",
    version,
    about = "TCMU backstore handler for LIO with cluster-wide SCSI persistent reservations"
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: serve every TCMU device of subtype dlmfile that the
    /// config's [devices] filter selects, until SIGTERM.
    Run {
        /// Daemon config file (TOML); reloaded on SIGHUP.
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
