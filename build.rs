//! Link the gateway with packed relative relocations (RELR) where the target's C library
//! supports them: the table the dynamic loader uses to relocate the binary's pointers at start
//! shrinks from 24 bytes per pointer to a bitmap, 190 KB of the 7 MB binary. glibc reads RELR
//! from 2.36 on, and a linker that packs them makes the binary require that glibc
//! (`GLIBC_ABI_DT_RELR`). So the build script asks the linker for the target's `libc.so.6`
//! and packs only when that library defines the version: a build for an older glibc stays as
//! it was and runs there. See docs/design.md#binary-size.

use std::env;
use std::fs;
use std::process::Command;

/// The symbol version a glibc that reads RELR defines.
const RELR_VERSION: &[u8] = b"GLIBC_ABI_DT_RELR";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo:rerun-if-env-changed=MA_GATEWAY_NO_RELR");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let libc = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || libc != "gnu" || env::var_os("MA_GATEWAY_NO_RELR").is_some() {
        return;
    }
    // The linker cargo resolved for the target (a cross compiler), or the default `cc`.
    let linker = env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_string());
    if target_glibc_reads_relr(&linker) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the `libc.so.6` that `linker` links against defines [`RELR_VERSION`]. Any failure
/// (no such compiler, no such file) is a no: the binary is then linked as before.
fn target_glibc_reads_relr(linker: &str) -> bool {
    let Ok(out) = Command::new(linker)
        .arg("-print-file-name=libc.so.6")
        .output()
    else {
        return false;
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // An unknown file is printed back as its bare name.
    if !out.status.success() || !path.contains('/') {
        return false;
    }
    println!("cargo:rerun-if-changed={path}");
    fs::read(&path).is_ok_and(|bytes| bytes.windows(RELR_VERSION.len()).any(|w| w == RELR_VERSION))
}
