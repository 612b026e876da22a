//! Where the service binaries a cluster starts come from: the cargo target directory the
//! running executable was built into, or `TXN_BIN_DIR`. When the harness was started by
//! `cargo run` it builds them first, so that it does not start binaries older than its source.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Directory holding the `coordinator` and `participant` binaries: `TXN_BIN_DIR` if set, else
/// the cargo target directory this executable was built into.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("TXN_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no parent directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

pub(super) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build the binaries first with `cargo build --workspace --bins` \
             (`cargo test --workspace` does this) or set TXN_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// Builds the `coordinator`, `participant` and `readmodel` binaries with the profile of the running
/// executable, when it was started by `cargo run` (which sets `CARGO`); otherwise the binaries
/// must already be in [`bin_dir`]. Not for use inside `cargo test`, which holds the build lock.
pub fn ensure_binaries() -> anyhow::Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    if std::env::var_os("TXN_BIN_DIR").is_some() {
        return Ok(());
    }
    let release = bin_dir()?.ends_with("release");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--bins",
        "-p",
        "txn-coordinator",
        "-p",
        "txn-participant",
        "-p",
        "txn-readmodel",
    ])
    .args([
        "--features",
        "txn-coordinator/failpoints,txn-participant/failpoints",
    ])
    .arg("--manifest-path")
    .arg(manifest);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("running cargo build for the service binaries")?;
    if !status.success() {
        bail!("building the coordinator, participant and readmodel binaries failed");
    }
    Ok(())
}
