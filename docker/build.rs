//! Builds the sandbox agent (`agent/stigmer-agent.rs`): a static Linux binary with no
//! dependency but the standard library, compiled here with the same `rustc` and embedded in the
//! crate, so every worker carries the agent for its own architecture. Where it cannot be built
//! (a non-Linux host, no static C library), the crate embeds nothing and sandbox commands run
//! through `docker exec`, which works everywhere, only slower; the build says so.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "agent/stigmer-agent.rs";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=agent/protocol.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out.join("stigmer-agent");
    let target = std::env::var("TARGET").unwrap_or_default();
    let built = if target.contains("-linux-") {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let result = Command::new(rustc)
            .args([
                "--edition=2021",
                "--crate-name",
                "stigmer_agent",
                "--crate-type",
                "bin",
            ])
            .args([
                "-C",
                "opt-level=s",
                "-C",
                "panic=abort",
                "-C",
                "strip=symbols",
            ])
            .args(["-C", "target-feature=+crt-static", "--target", &target])
            .arg("-o")
            .arg(&dest)
            .arg(src)
            .output();
        match result {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                warn(&format!(
                    "could not build the sandbox agent for {target}: {}",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" / ")
                ));
                false
            }
            Err(e) => {
                warn(&format!(
                    "could not run rustc to build the sandbox agent: {e}"
                ));
                false
            }
        }
    } else {
        warn(&format!(
            "the sandbox agent is built for Linux targets only, not {target}"
        ));
        false
    };
    if !built {
        std::fs::write(&dest, b"").expect("write OUT_DIR/stigmer-agent");
    }
}

fn warn(msg: &str) {
    println!("cargo:warning={msg}; sandbox commands will run through docker exec (slower)");
}
