//! The `tcmu-prd` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tcmu_prd::{cluster, logging, uio};

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

#[derive(Subcommand, Debug)]
enum Command {
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
}

fn main() -> ExitCode {
    logging::init("info");
    let cli = Cli::parse();
    match cli.command {
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
    }
}
