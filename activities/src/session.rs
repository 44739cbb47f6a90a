//! A session's shell state, carried from one command to the next as in a terminal
//! (docs/sessions.md).
//!
//! Each command is its own process (its own workflow), so nothing lives between two commands
//! but a file: a small bash wrapper restores the saved state (cwd, exported variables,
//! functions, aliases), runs the command in the same shell (`eval`), and in an EXIT trap writes
//! the state again, atomically (a temp file renamed into place) and with an end marker that the
//! next restore checks. A `pending` file, made before the command and removed by the save, says
//! that a command did not save (it `exec`ed, was killed or timed out, or replaced the trap): the
//! next one then starts from the state before it, and says so. A persistent shell was not
//! chosen: one lost process would lose everything, and its output markers could be spoofed.
//!
//! A sandbox session keeps the file in its container. A local session's state lives in the
//! store, sealed with the payload codec's key ([`StateSeal`]): it is on disk in plain text, in
//! a private directory, only while its command runs.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use stigmer_workflows::CommandSpec;

/// Where a sandbox session's state lives in its container (owned by the sandbox user, 0600).
pub const SANDBOX_STATE_FILE: &str = "/home/sandbox/.stigmer/session-state";

/// The variable the client sets to the names of a command's own `--env` variables (comma
/// separated): they apply to that command only and are never saved.
pub const ENV_NAMES_VAR: &str = "STIGMER_SESSION_ENV";

/// The last line of a complete state file.
const END_MARKER: &str = "# stigmer session state: end";

/// The wrapper; `$1` is the state file, `$2` the command. Its own names start with `__stg_`.
const WRAPPER: &str = r#"__stg_state=$1 __stg_cmd=$2
__stg_pending=$__stg_state.pending
__stg_drop=" PWD OLDPWD SHLVL _ STIGMER_SESSION_ENV ${STIGMER_SESSION_ENV//,/ } "
__stg_cmdenv=
for __stg_n in ${STIGMER_SESSION_ENV//,/ }; do
  __stg_cmdenv+="$(declare -p -- "$__stg_n" 2>/dev/null)"$'\n'
done
unset STIGMER_SESSION_ENV
declare -A __stg_in=() __stg_prev=()
for __stg_n in $(compgen -e); do __stg_in[$__stg_n]=${!__stg_n}; done
if [ -e "$__stg_pending" ]; then
  echo "stigmer: the previous command in this session did not save its state (it ran exec, was killed or timed out, or replaced the EXIT trap); this one starts from the state before it" >&2
fi
if [ -f "$__stg_state" ]; then
  if [ "$(tail -n 1 -- "$__stg_state")" = "__END_MARKER__" ]; then
    . "$__stg_state"
    cd -- "$__stg_dir" 2>/dev/null || echo "stigmer: the session's directory $__stg_dir is gone; starting in $PWD" >&2
  else
    echo "stigmer: the saved session state is incomplete and was not restored" >&2
  fi
fi
eval "$__stg_cmdenv"
(umask 077; mkdir -p -- "${__stg_state%/*}" && : > "$__stg_pending") 2>/dev/null
shopt -s expand_aliases
trap '__stg_rc=$?
(umask 077
 { printf "__stg_dir=%q\n" "$(pwd -P)"
   for __stg_n in $(compgen -e); do
     case $__stg_drop in *" $__stg_n "*) continue ;; esac
     if [ -z "${__stg_prev[$__stg_n]+x}" ] && [ -n "${__stg_in[$__stg_n]+x}" ] && [ "${__stg_in[$__stg_n]}" = "${!__stg_n}" ]; then continue; fi
     declare -p -- "$__stg_n"
     printf "__stg_prev[%q]=1\n" "$__stg_n"
   done
   declare -f
   alias -p
   echo "__END_MARKER__"
 } > "$__stg_state.tmp" && mv -f -- "$__stg_state.tmp" "$__stg_state" && rm -f -- "$__stg_pending") 2>/dev/null
exit $__stg_rc' EXIT
set --
eval "$__stg_cmd"
"#;

/// The argv that runs `command` in a session whose state file is `state_file`.
#[must_use]
pub fn wrap(command: &CommandSpec, state_file: &str) -> Vec<String> {
    let text = match command {
        CommandSpec::Shell(cmd) => cmd.clone(),
        argv @ CommandSpec::Argv(_) => argv.display(),
    };
    vec![
        "/bin/bash".into(),
        "-c".into(),
        WRAPPER.replace("__END_MARKER__", END_MARKER),
        "stigmer-session".into(),
        state_file.into(),
        text,
    ]
}

/// Seals a local session's state at rest (the worker's payload codec key).
pub trait StateSeal: Send + Sync {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String>;
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String>;
}

/// A local session's state, in a private directory for the time of one command.
pub struct LocalState {
    dir: PathBuf,
}

impl LocalState {
    /// Lays out the state (`plain`, if any) and the not-saved mark (`lost`) for the wrapper.
    pub fn prepare(execution_id: &str, plain: Option<&[u8]>, lost: bool) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("stigmer-session-{execution_id}"));
        // A retried attempt finds its predecessor's directory: start again.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let me = Self { dir };
        if let Some(plain) = plain {
            private_file(&me.state_file())?.write_all(plain)?;
        }
        if lost {
            private_file(&me.pending_file())?;
        }
        Ok(me)
    }

    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn pending_file(&self) -> PathBuf {
        self.dir.join("state.pending")
    }

    /// What the command left: `Some(state)` when it saved a complete one, `None` when it did
    /// not save. The directory is removed either way.
    #[must_use]
    pub fn collect(self) -> Option<Vec<u8>> {
        let saved = !self.pending_file().exists();
        let state = std::fs::read(self.state_file()).ok();
        let _ = std::fs::remove_dir_all(&self.dir);
        let state = state.filter(|s| complete(s))?;
        saved.then_some(state)
    }
}

impl Drop for LocalState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Whether a state file ends with the marker (a truncated one is never restored).
fn complete(state: &[u8]) -> bool {
    let text = String::from_utf8_lossy(state);
    text.trim_end_matches('\n').lines().last() == Some(END_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, cmd: &str, env: &[(&str, &str)]) -> (String, String, i32) {
        let state = dir.join("state");
        let argv = wrap(&CommandSpec::Shell(cmd.into()), state.to_str().unwrap());
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().copied())
            .current_dir(dir)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    #[test]
    fn state_carries_over_and_a_command_that_does_not_save_is_said() {
        let dir = std::env::temp_dir().join(format!("stg-wrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let first = format!(
            "cd {} && export FOO='a b' && f() {{ echo fn; }} && alias hi='echo alias' && BAR=local && exit 3",
            sub.display()
        );
        let (_, _, code) = run(&dir, &first, &[("TOKEN", "s3"), (ENV_NAMES_VAR, "TOKEN")]);
        assert_eq!(code, 3);
        let saved = std::fs::read_to_string(dir.join("state")).unwrap();
        assert!(
            !saved.contains("s3"),
            "a per-command variable is never saved"
        );
        let (out, err, code) = run(&dir, "pwd; echo \"$FOO\"; f; hi; echo \"[$BAR]\"", &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out,
            format!(
                "{}\na b\nfn\nalias\n[]\n",
                sub.canonicalize().unwrap().display()
            )
        );
        let (_, _, _) = run(&dir, "export FOO=lost; exec true", &[]);
        let (out, err, _) = run(&dir, "echo $FOO", &[]);
        assert_eq!(out, "a b\n");
        assert!(err.contains("did not save its state"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
