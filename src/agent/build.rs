//! The package's build script: links the `msb-agent` binary statically, and only that binary.
//!
//! The agent runs in any root (glibc, musl, busybox-only), so it cannot need a dynamic loader.
//! On musl targets Rust links statically anyway. On glibc targets `-C target-feature=+crt-static`
//! would do it, but cargo has no per-binary rustflags, and the flag on the whole build would make
//! `msb` itself static (no NSS, no dlopen of libkrunfw). So this script gives the agent's link,
//! and no other, two extra arguments:
//!
//! - `-static-pie`: start files without an interpreter (`rcrt1.o`), relocations applied by the
//!   binary itself;
//! - `-L <dir>`, a folder searched before the system's, where `libc.so`, `libgcc_s.so`, ... are
//!   linker scripts naming the static archives (`libc.a`, `libgcc_eh.a`, ...). rustc's link line
//!   asks for `-Bdynamic -lgcc_s -lc ...`; the linker takes these scripts for shared libraries and
//!   pulls the archives instead;
//! - `--strip-debug`: the agent is bound into every sandbox (and baked into published images).
//!
//! The archives come from the C compiler (`cc -print-file-name`), i.e. Debian's libc6-dev and
//! libgcc-12-dev, which any Rust build on the host already needs. If one is missing the agent is
//! linked as usual, with a warning, and `msb::agent::is_static_executable` tells.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

const AGENT: &str = "msb-agent";

fn main() {
    println!("cargo:rerun-if-changed=src/agent/build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let target = |key: &str| env::var(format!("CARGO_CFG_TARGET_{key}")).unwrap_or_default();
    if target("OS") != "linux" || target("ENV") != "gnu" {
        return;
    }
    if let Err(err) = static_agent() {
        println!("cargo:warning={AGENT} is linked dynamically ({err}): it will not run in roots without glibc");
    }
}

/// Where the C compiler finds `name`, if it does.
fn find(cc: &str, name: &str) -> Result<PathBuf, String> {
    let output = Command::new(cc).arg(format!("-print-file-name={name}")).output().map_err(|err| format!("`{cc}`: {err}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    // An unknown file is printed back as its bare name.
    if path.is_absolute() && path.exists() { Ok(path) } else { Err(format!("`{cc}` finds no {name}")) }
}

fn static_agent() -> Result<(), String> {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?).join("static-libs");
    fs::create_dir_all(&out).map_err(|err| format!("{}: {err}", out.display()))?;
    let (gcc, gcc_eh) = (find(&cc, "libgcc.a")?, find(&cc, "libgcc_eh.a")?);
    let libc = find(&cc, "libc.a")?;
    // GROUPs, so that a linker that reads archives in order (GNU ld) resolves them both ways.
    let mut scripts = vec![
        ("gcc_s", format!("GROUP({} {})", gcc_eh.display(), gcc.display())),
        ("c", format!("GROUP({} {} {})", libc.display(), gcc_eh.display(), gcc.display())),
    ];
    for lib in ["m", "rt", "pthread", "dl", "util"] {
        scripts.push((lib, format!("INPUT({})", find(&cc, &format!("lib{lib}.a"))?.display())));
    }
    for (lib, script) in scripts {
        let path = out.join(format!("lib{lib}.so"));
        fs::write(&path, format!("/* msb-agent: the static archive instead */\n{script}\n"))
            .map_err(|err| format!("{}: {err}", path.display()))?;
    }
    println!("cargo:rustc-link-arg-bin={AGENT}=-static-pie");
    // Without it, the debug info of every archive member it pulls in (100 MB in release, 190 MB in
    // debug) for 3 MB of code and symbols: the agent is bound into every sandbox.
    println!("cargo:rustc-link-arg-bin={AGENT}=-Wl,--strip-debug");
    println!("cargo:rustc-link-arg-bin={AGENT}=-L{}", out.display());
    Ok(())
}
