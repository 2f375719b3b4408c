#!/usr/bin/env bash
# Installs what building the eBPF programs needs, idempotently (about 1 s once done):
#   1. rust-src and clippy for the nightly toolchain (the BPF target is built with
#      -Z build-std=core), clippy and rustfmt for the default one (the lint gates);
#   2. bpf-linker 0.13.0 built against the nightly's own libLLVM (a plain `cargo install bpf-linker`
#      picks the system LLVM, which is too old here).
# Knobs: EBPF_TOOLCHAIN (nightly), BPF_LINKER_VERSION (0.13.0), CARGO_HOME.
set -euo pipefail

EBPF_TOOLCHAIN=${EBPF_TOOLCHAIN:-nightly}
BPF_LINKER_VERSION=${BPF_LINKER_VERSION:-0.13.0}
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export PATH="$CARGO_HOME/bin:$PATH"
say() { printf '[setup-ebpf-toolchain] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v rustup >/dev/null || die "rustup not found"
if ! rustup run "$EBPF_TOOLCHAIN" rustc -V >/dev/null 2>&1; then
  say "installing the $EBPF_TOOLCHAIN toolchain"
  rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal
fi
sysroot=$(rustup run "$EBPF_TOOLCHAIN" rustc --print sysroot)
if [ ! -f "$sysroot/lib/rustlib/src/rust/library/core/Cargo.toml" ]; then
  say "adding rust-src to $EBPF_TOOLCHAIN"
  rustup component add rust-src --toolchain "$EBPF_TOOLCHAIN"
fi
# Clippy of the eBPF crate (`cargo xtask lint`), and of the host crates on the stable toolchain.
if ! rustup run "$EBPF_TOOLCHAIN" cargo clippy --version >/dev/null 2>&1; then
  say "adding clippy to $EBPF_TOOLCHAIN"
  rustup component add clippy --toolchain "$EBPF_TOOLCHAIN"
fi
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  say "adding clippy and rustfmt to the default toolchain"
  rustup component add clippy rustfmt
fi

vv=$(rustup run "$EBPF_TOOLCHAIN" rustc -vV)
release=$(sed -n 's/^release: //p' <<<"$vv")
commit_date=$(sed -n 's/^commit-date: //p' <<<"$vv")
llvm_major=$(sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' <<<"$vv")
case "$llvm_major" in 21|22|23) ;; *) die "bpf-linker $BPF_LINKER_VERSION has no llvm-$llvm_major feature";; esac

shopt -s nullglob
libs=("$sysroot"/lib/libLLVM.so.*)
shopt -u nullglob
[ ${#libs[@]} -eq 1 ] || die "expected one $sysroot/lib/libLLVM.so.*, found ${#libs[@]}"
libllvm=$(readlink -f "${libs[0]}")
# bpf-linker's build links -lLLVM from $LLVM_PREFIX/lib and records that directory as its RUNPATH.
llvm_dir="$CARGO_HOME/share/bpf-linker-llvm/$release-$commit_date"
mkdir -p "$llvm_dir/lib"
ln -sfn "$libllvm" "$llvm_dir/lib/libLLVM.so"
ln -sfn "$libllvm" "$llvm_dir/lib/$(basename "${libs[0]}")"
stamp="bpf-linker $BPF_LINKER_VERSION llvm-$llvm_major $libllvm"

linker="$CARGO_HOME/bin/bpf-linker"
if [ -x "$linker" ] && [ "$(cat "$llvm_dir/stamp" 2>/dev/null)" = "$stamp" ] \
   && "$linker" --version 2>/dev/null | grep -qx "bpf-linker $BPF_LINKER_VERSION"; then
  say "bpf-linker $BPF_LINKER_VERSION present (LLVM $llvm_major of $EBPF_TOOLCHAIN)"
else
  say "building bpf-linker $BPF_LINKER_VERSION against $libllvm (about a minute)"
  LLVM_PREFIX="$llvm_dir" cargo install bpf-linker --version "=$BPF_LINKER_VERSION" --locked --force \
    --no-default-features --features "llvm-$llvm_major" --root "$CARGO_HOME"
  echo "$stamp" > "$llvm_dir/stamp"
fi
if ldd "$linker" | grep -q 'not found'; then
  ldd "$linker" >&2
  die "bpf-linker has unresolved libraries"
fi
