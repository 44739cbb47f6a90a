//! A session's shell state, carried from one command to the next as in a terminal
//! (docs/sessions.md).
//!
//! Each command is its own process (its own workflow), so nothing lives between two commands
//! but a file: a small bash wrapper restores the saved state (cwd, exported variables,
//! functions, aliases), runs the command in the same shell (`eval`), and in an EXIT trap writes
//! the state again, into the other of two slots (so a save cut short never destroys the state it
//! started from), numbered and with an end marker that the next restore checks. A mark written
//! before the command, which the save's number meets, says when a command did not save (it
//! `exec`ed, was killed outright, or replaced the trap; one stopped with SIGTERM runs its trap): the next one then starts from the
//! state before it, and says so. A persistent shell was not
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

/// Where a cloud session's state lives in its Daytona sandbox: under the home of the user
/// the toolbox runs commands as (the wrapper expands a leading `~/` against `$HOME`), since
/// snapshots differ in that user.
pub const CLOUD_STATE_FILE: &str = "~/.stigmer/session-state";

/// The variable the client sets to the names of a command's own `--env` variables (comma
/// separated): they apply to that command only and are never saved.
pub const ENV_NAMES_VAR: &str = "STIGMER_SESSION_ENV";

/// The last line of a complete state file.
const END_MARKER: &str = "# stigmer session state: end";

/// The two slots a state is saved in, in turn: a save never overwrites the state it started
/// from, so one cut short (the command killed in its EXIT trap) leaves that state whole.
const SLOTS: [&str; 2] = ["a", "b"];

/// The wrapper; `$1` is the state file's base name, `$2` the command. Its own names start with
/// `__stg_`.
///
/// It runs no other program once the session's directory exists: a fork in a busy container
/// costs milliseconds, and a session's command should cost what a plain one does. So lists go
/// through a file and `mapfile` rather than `$(…)`, the physical directory comes from
/// `cd -P .`, a save writes the slot it did not start from rather than renaming a file into
/// place, and the not-saved mark is a number (the sequence number the command's save will have)
/// rather than a file the save removes. A state is restored from the complete slot (its end
/// marker last, its sequence number first) with the highest number; a mark above that number
/// says that the command before did not save.
const WRAPPER: &str = r#"__stg_state=$1 __stg_cmd=$2
case $__stg_state in "~/"*) __stg_state=$HOME/${__stg_state#"~/"} ;; esac
__stg_home=${__stg_state%/*}
__stg_drop=" PWD OLDPWD SHLVL _ STIGMER_SESSION_ENV ${STIGMER_SESSION_ENV//,/ } "
__stg_cmdenv=
for __stg_n in ${STIGMER_SESSION_ENV//,/ }; do
  [[ $__stg_n =~ ^[A-Za-z_][A-Za-z0-9_]*$ && -n ${!__stg_n+x} ]] || continue
  printf -v __stg_q %q "${!__stg_n}"
  __stg_cmdenv+="export $__stg_n=$__stg_q"$'\n'
done
unset STIGMER_SESSION_ENV
[ -d "$__stg_home" ] || mkdir -p -m 700 -- "$__stg_home" 2>/dev/null
declare -A __stg_in=() __stg_prev=()
__stg_names=()
compgen -e 2>/dev/null >"$__stg_state.names" && mapfile -t __stg_names <"$__stg_state.names"
for __stg_n in "${__stg_names[@]}"; do __stg_in[$__stg_n]=${!__stg_n}; done
__stg_seq=0 __stg_from=
for __stg_s in a b; do
  [ -f "$__stg_state.$__stg_s" ] || continue
  mapfile -t __stg_lines <"$__stg_state.$__stg_s"
  __stg_k=${#__stg_lines[@]}
  if [ "$__stg_k" -gt 1 ] && [ "${__stg_lines[__stg_k-1]}" = "__END_MARKER__" ] &&
     [[ ${__stg_lines[0]} =~ ^__stg_seq=([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -gt "$__stg_seq" ]; then
    __stg_seq=${BASH_REMATCH[1]} __stg_from=$__stg_s
  fi
done
unset __stg_lines __stg_k
__stg_mark=0
[ -f "$__stg_state.pending" ] && read -r __stg_mark <"$__stg_state.pending"
[[ $__stg_mark =~ ^[0-9]+$ ]] || __stg_mark=0
if [ "$__stg_mark" -gt "$__stg_seq" ]; then
  echo "stigmer: the previous command in this session did not save its state (it ran exec, was killed outright, or replaced the EXIT trap); this one starts from the state before it" >&2
fi
if [ -n "$__stg_from" ]; then
  . "$__stg_state.$__stg_from"
  cd -- "$__stg_dir" 2>/dev/null || echo "stigmer: the session's directory $__stg_dir is gone; starting in $PWD" >&2
fi
eval "$__stg_cmdenv"
__stg_next=$((__stg_seq + 1)) __stg_to=a
[ "$__stg_from" = a ] && __stg_to=b
echo "$__stg_next" 2>/dev/null >"$__stg_state.pending"
shopt -s expand_aliases
trap '__stg_rc=$?
builtin cd -P . 2>/dev/null
__stg_names=()
compgen -e 2>/dev/null >"$__stg_state.names" && mapfile -t __stg_names <"$__stg_state.names"
{ echo "__stg_seq=$__stg_next"
  printf "__stg_dir=%q\n" "$PWD"
  for __stg_n in "${__stg_names[@]}"; do
    case $__stg_drop in *" $__stg_n "*) continue ;; esac
    if [ -z "${__stg_prev[$__stg_n]+x}" ] && [ -n "${__stg_in[$__stg_n]+x}" ] && [ "${__stg_in[$__stg_n]}" = "${!__stg_n}" ]; then continue; fi
    declare -p -- "$__stg_n"
    printf "__stg_prev[%q]=1\n" "$__stg_n"
  done
  declare -f
  alias -p
  echo "__END_MARKER__"
} 2>/dev/null >"$__stg_state.$__stg_to"
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
        let seq = plain.and_then(seq_of).unwrap_or(0);
        if let Some(plain) = plain {
            private_file(&me.slot(SLOTS[0]))?.write_all(plain)?;
        }
        if lost {
            writeln!(private_file(&me.pending_file())?, "{}", seq + 1)?;
        }
        Ok(me)
    }

    /// The base name the wrapper adds its slots and marks to.
    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn slot(&self, name: &str) -> PathBuf {
        self.dir.join(format!("state.{name}"))
    }

    fn pending_file(&self) -> PathBuf {
        self.dir.join("state.pending")
    }

    /// What the command left: `Some(state)` when it saved a complete one, `None` when it did
    /// not save (its mark is above the newest complete state). The directory is removed either
    /// way.
    #[must_use]
    pub fn collect(self) -> Option<Vec<u8>> {
        let newest = SLOTS
            .iter()
            .filter_map(|name| std::fs::read(self.slot(name)).ok())
            .filter_map(|state| seq_of(&state).map(|seq| (seq, state)))
            .max_by_key(|(seq, _)| *seq);
        let mark = std::fs::read_to_string(self.pending_file())
            .ok()
            .and_then(|m| m.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let _ = std::fs::remove_dir_all(&self.dir);
        newest
            .filter(|(seq, _)| *seq >= mark)
            .map(|(_, state)| state)
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

/// The sequence number of a complete state (its end marker last, its number first); `None`
/// for a truncated one, which is never restored.
fn seq_of(state: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(state).ok()?;
    let mut lines = text.trim_end_matches('\n').lines();
    let first = lines.next()?;
    if lines.last() != Some(END_MARKER) {
        return None;
    }
    first.strip_prefix("__stg_seq=")?.parse().ok()
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
        let saved = std::fs::read_to_string(dir.join("state.a")).unwrap();
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
        // Two in a row that do not save: the state before them is still whole.
        run(&dir, "exec true", &[]);
        run(&dir, "export FOO=lost; exec true", &[]);
        let (out, err, _) = run(&dir, "echo $FOO; pwd", &[]);
        assert_eq!(
            out,
            format!("a b\n{}\n", sub.canonicalize().unwrap().display())
        );
        assert!(err.contains("did not save its state"), "{err}");
        assert!(!err.contains("incomplete"), "{err}");
        // Saved again: no notice.
        let (_, err, _) = run(&dir, "true", &[]);
        assert!(err.is_empty(), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();

        // A session whose first command did not save starts the next from nothing, and says so.
        let fresh = std::env::temp_dir().join(format!("stg-wrap-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&fresh).unwrap();
        run(&fresh, "export FOO=x; exec true", &[]);
        let (out, err, _) = run(&fresh, "echo \"[$FOO]\"", &[]);
        assert_eq!(out, "[]\n");
        assert!(err.contains("did not save its state"), "{err}");
        assert!(!err.contains("incomplete"), "{err}");
        std::fs::remove_dir_all(&fresh).unwrap();
    }

    #[test]
    fn a_save_cut_short_leaves_the_state_it_started_from() {
        let dir = std::env::temp_dir().join(format!("stg-wrap-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        run(&dir, "export FOO=kept", &[]);
        // The next save (slot b, number 2) killed halfway: no end marker.
        std::fs::write(
            dir.join("state.b"),
            "__stg_seq=2\n__stg_dir=/\ndeclare -x FOO=\"ha",
        )
        .unwrap();
        std::fs::write(dir.join("state.pending"), "2\n").unwrap();
        let (out, err, _) = run(&dir, "echo $FOO", &[]);
        assert_eq!(out, "kept\n");
        assert!(err.contains("did not save its state"), "{err}");
        let (out, err, _) = run(&dir, "echo $FOO", &[]);
        assert_eq!((out.as_str(), err.as_str()), ("kept\n", ""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_local_sessions_state_goes_out_only_when_saved() {
        let base = |id: &str| {
            let state = LocalState::prepare(id, None, false).unwrap();
            (state.state_file(), state)
        };
        let (file, state) = base(&format!("t1-{}", std::process::id()));
        let argv = wrap(
            &CommandSpec::Shell("export FOO=1".into()),
            file.to_str().unwrap(),
        );
        assert!(
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()
                .unwrap()
                .success()
        );
        let saved = state.collect().expect("a saved state");
        assert!(String::from_utf8_lossy(&saved).contains("FOO=\"1\""));

        // From that state, a command that does not save gives nothing back.
        let id = format!("t2-{}", std::process::id());
        let state = LocalState::prepare(&id, Some(&saved), false).unwrap();
        let argv = wrap(
            &CommandSpec::Shell("exec true".into()),
            state.state_file().to_str().unwrap(),
        );
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .unwrap();
        assert!(state.collect().is_none());

        // The next one is told, and starts from the saved state.
        let state = LocalState::prepare(&id, Some(&saved), true).unwrap();
        let argv = wrap(
            &CommandSpec::Shell("echo $FOO".into()),
            state.state_file().to_str().unwrap(),
        );
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("did not save its state"));
        assert!(state.collect().is_some());
    }
}
