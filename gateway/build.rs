//! Builds the eBPF programs (nightly, bpfel-unknown-none, through aya-build) and leaves the object in
//! OUT_DIR for `include_bytes_aligned!`. `AYA_BUILD_SKIP=1` skips it (then `gateway` needs
//! `--ebpf-object FILE`, e.g. from `cargo xtask build-ebpf`).
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "gateway-ebpf")
        .ok_or_else(|| anyhow!("gateway-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    println!("cargo::rerun-if-env-changed=GATEWAY_EBPF_TOOLCHAIN");
    let toolchain = env::var("GATEWAY_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        Some(t) => Toolchain::Custom(t),
        None => Toolchain::Nightly,
    };
    aya_build::build_ebpf([package], toolchain)?;

    // With AYA_BUILD_SKIP=1 leave an empty placeholder so the crate still compiles.
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?).join("gateway-ebpf");
    if !out.exists() {
        fs::write(&out, b"")?;
    }
    Ok(())
}
