//! `stigmer sandbox build basic|full` and `stigmer sandbox test`: the sandbox images made and
//! checked from the CLI, as `make sandbox-build-basic` and `make sandbox-test` do.
//!
//! Both run the scripts of the sandbox folder (`STIGMER_SANDBOX_DIR`, else the source tree's
//! `sandbox/`), so there is one way to build an image, air-gapped sites included: where no
//! registry answers, the basic image starts from a base made offline with debootstrap.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which image to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// Python, Node.js, git, curl, jq, build tools; non-root user `sandbox` (uid 1000).
    Basic,
    /// The basic tools plus cloud CLIs (aws, gcloud, az, kubectl, helm, terraform, gh…).
    Full,
}

/// Where the base of the basic image comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Offline {
    /// The registry's base when it can be pulled, else the offline one (saying so).
    Auto,
    /// Always the offline base (debootstrap; needs root).
    Always,
    /// Only the registry's base.
    Never,
}

fn sandbox_dir() -> Result<PathBuf> {
    let dir = stigmer_activities::sandbox::sandbox_dir();
    if dir.join("build.sh").is_file() {
        return Ok(dir);
    }
    bail!(
        "no sandbox folder with build.sh at {}: set STIGMER_SANDBOX_DIR to the sandbox/ folder \
         of the stigmer source",
        dir.display()
    )
}

fn run_script(dir: &Path, script: &str, args: &[&str], env: &[(&str, String)]) -> Result<i32> {
    let path = dir.join(script);
    let mut cmd = Command::new("bash");
    cmd.arg(&path).args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("could not run {}", path.display()))?;
    Ok(status.code().unwrap_or(1))
}

/// `stigmer sandbox build`: builds the image and returns the script's exit code.
pub fn build(flavour: Flavour, offline: Offline, tag: Option<&str>) -> Result<i32> {
    let dir = sandbox_dir()?;
    let mut env = vec![(
        "OFFLINE",
        match offline {
            Offline::Auto => "auto",
            Offline::Always => "1",
            Offline::Never => "0",
        }
        .to_string(),
    )];
    if let Some(tag) = tag {
        let var = match flavour {
            Flavour::Basic => "SANDBOX_BASIC_IMAGE",
            Flavour::Full => "SANDBOX_FULL_IMAGE",
        };
        env.push((var, tag.to_string()));
    }
    let which = match flavour {
        Flavour::Basic => "basic",
        Flavour::Full => "full",
    };
    run_script(&dir, "build.sh", &[which], &env)
}

/// `stigmer sandbox test`: checks an image the way stigmer runs it (hardened, no network).
pub fn test(image: &str) -> Result<i32> {
    let dir = sandbox_dir()?;
    run_script(&dir, "test-image.sh", &[image], &[])
}
