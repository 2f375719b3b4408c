#![no_std]
// Exists so that `gateway` can name this crate as a build-dependency (which reruns its build script
// when the programs change); the programs are the `gateway-ebpf` bin target in src/main.rs.
