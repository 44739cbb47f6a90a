//! What makes auto mode fail closed: the ways a command can act on the host that are not
//! "installs", "raises privileges" or "writes a path it names", and that the walk cannot follow.
//!
//! Each function looks at one program and its argument words (wrappers already looked through)
//! and says what in them auto mode cannot vouch for: commands hidden in arguments or settings
//! (`sed e`, `tar --checkpoint-action`, `git config core.fsmonitor`), remote infrastructure
//! changed, listeners opened, credentials sent, paths written through output flags, code freshly
//! downloaded. Where a program has read-only uses and others (kubectl, helm, terraform), the
//! read-only ones are listed and everything else counts as a change, so a verb auto mode has not
//! heard of errs towards the sandbox.

use crate::programs::{Arg, NO_VALUES, Spec, operands, option_values, parse_args};
use crate::words::Word;

fn texts(args: &[Word]) -> impl Iterator<Item = &str> {
    args.iter().map(|w| w.text.as_str())
}

// ---------------------------------------------------------------------------------------------
// Commands hidden in arguments and settings

/// git settings whose value git runs as a command, or that bring in settings or hooks from
/// elsewhere. `core.pager`-like keys given with `git -c` are read as shell code by the walk;
/// these are the ones that run unannounced (`git status` runs `core.fsmonitor`).
fn git_key_runs_code(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    matches!(
        key.as_str(),
        "core.fsmonitor"
            | "core.hookspath"
            | "core.sshcommand"
            | "core.gitproxy"
            | "core.editor"
            | "core.pager"
            | "core.askpass"
            | "sequence.editor"
            | "diff.external"
            | "gpg.program"
            | "gpg.ssh.program"
            | "credential.helper"
            | "include.path"
            | "uploadpack.packobjectshook"
            | "protocol.ext.allow"
            | "init.templatedir"
    ) || key.starts_with("alias.")
        || key.starts_with("includeif.")
        || key.starts_with("pager.")
        || key.starts_with("filter.")
        || key.starts_with("credential.")
        || key.ends_with(".textconv")
        || key.ends_with(".command")
        || key.ends_with(".cmd")
        || key.ends_with(".process")
}

/// What in a git command runs commands auto mode does not see: a setting written with
/// `git config` that git will run, an always-running setting given with `-c`, subcommands that
/// run their arguments, and transports that run programs.
pub(crate) fn git_runs_hidden(args: &[Word]) -> Option<String> {
    let spec = Spec {
        short: "Cc",
        long: &[
            "git-dir",
            "work-tree",
            "namespace",
            "config-env",
            "exec-path",
        ],
    };
    // Global options: `-c KEY=VALUE`, `--config-env KEY=ENV`, `--exec-path=DIR`.
    for a in parse_args(args, spec, true) {
        match a {
            Arg::Opt { name, value } if name == "-c" || name == "--config-env" => {
                let key = value
                    .as_ref()
                    .map(|v| v.text.split('=').next().unwrap_or("").to_string())
                    .unwrap_or_default();
                let always = matches!(
                    key.to_ascii_lowercase().as_str(),
                    "core.fsmonitor" | "core.hookspath" | "include.path" | "protocol.ext.allow"
                ) || key.to_ascii_lowercase().starts_with("includeif.");
                if always || (name == "--config-env" && git_key_runs_code(&key)) {
                    return Some(format!(
                        "sets git's {key}, whose value git runs or loads as it works"
                    ));
                }
            }
            Arg::Opt { name, .. } if name == "--exec-path" => {
                return Some("runs git's subcommands from a directory it names".into());
            }
            _ => {}
        }
    }
    let ops = operands(args, spec);
    let sub = ops.first().map(|w| w.text.as_str());
    let sub2 = ops.get(1).map(|w| w.text.as_str());
    let rest_has = |flags: &[&str]| {
        texts(args).any(|t| {
            flags
                .iter()
                .any(|f| t == *f || t.strip_prefix(f).is_some_and(|r| r.starts_with('=')))
        })
    };
    if texts(args).any(|t| t.starts_with("ext::")) {
        return Some("uses git's ext:: transport, which runs a command".into());
    }
    if rest_has(&["--upload-pack", "--receive-pack", "--exec", "-u"])
        && matches!(
            sub,
            Some("clone" | "fetch" | "pull" | "push" | "ls-remote" | "archive")
        )
    {
        return Some("names a program for git to run on the other end".into());
    }
    match (sub, sub2) {
        (Some("submodule"), Some("foreach")) => {
            Some("runs a command given in its arguments in every submodule".into())
        }
        (Some("bisect"), Some("run")) => Some("runs a command given in its arguments".into()),
        (Some("rebase"), _) if rest_has(&["-x", "--exec"]) => {
            Some("runs a command given in its arguments after each commit".into())
        }
        (Some("filter-branch" | "filter-repo"), _) => {
            Some("runs commands given in its arguments on every commit".into())
        }
        (Some("difftool" | "mergetool"), _) if rest_has(&["-x", "--extcmd", "-t", "--tool"]) => {
            Some("runs a tool named in its arguments".into())
        }
        (Some("config"), _) => {
            // `git config KEY VALUE`, `git config set KEY VALUE`, `--add KEY VALUE`.
            let reads = texts(args)
                .any(|t| t.starts_with("--get") || matches!(t, "--list" | "-l" | "get" | "list"));
            let names: Vec<&str> = ops[1..]
                .iter()
                .map(|w| w.text.as_str())
                .filter(|t| !matches!(*t, "set" | "unset"))
                .collect();
            let edits = texts(args).any(|t| t == "--edit" || t == "-e");
            match names.iter().find(|k| git_key_runs_code(k)) {
                _ if reads => None,
                Some(key) if names.len() >= 2 => Some(format!(
                    "sets git's {key}, a command git runs later (for example on `git status`)"
                )),
                _ if edits => Some("edits git settings, which can name commands git runs".into()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What a sed script does that auto mode cannot see: the `e` command, the `e` flag of `s`, and
/// the files `w`/`W` (and the `w` flag) write.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SedEffects {
    pub runs: bool,
    pub writes: Vec<String>,
}

/// Reads a sed script far enough to find commands that run or write.
pub(crate) fn sed_effects(script: &str) -> SedEffects {
    let mut fx = SedEffects::default();
    let s: Vec<char> = script.chars().collect();
    let mut i = 0;
    let until = |i: &mut usize, stop: &dyn Fn(char) -> bool| {
        let start = *i;
        while *i < s.len() && !stop(s[*i]) {
            *i += 1;
        }
        s[start..*i].iter().collect::<String>()
    };
    // Reads a delimited part (`/re/`, a replacement) with backslash escapes.
    let delimited = |i: &mut usize, d: char| {
        while *i < s.len() && s[*i] != d {
            if s[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1; // the closing delimiter
    };
    while i < s.len() {
        // Separators and blanks between commands.
        while i < s.len() && (s[i].is_whitespace() || matches!(s[i], ';' | '{' | '}')) {
            i += 1;
        }
        // The address: numbers, `$`, `/re/`, `\cREc`, ranges, steps, negation.
        loop {
            match s.get(i) {
                Some(c) if c.is_ascii_digit() || matches!(c, '$' | ',' | '~' | '+' | '!' | ' ') => {
                    i += 1
                }
                Some('/') => {
                    i += 1;
                    delimited(&mut i, '/');
                    while matches!(s.get(i), Some('I' | 'M')) {
                        i += 1;
                    }
                }
                Some('\\') => {
                    let d = s.get(i + 1).copied().unwrap_or('\\');
                    i += 2;
                    delimited(&mut i, d);
                }
                _ => break,
            }
        }
        let Some(&cmd) = s.get(i) else { break };
        i += 1;
        let line_end = |c: char| c == '\n';
        let cmd_end = |c: char| matches!(c, '\n' | ';' | '}');
        match cmd {
            's' | 'y' => {
                let d = s.get(i).copied().unwrap_or('/');
                i += 1;
                delimited(&mut i, d);
                delimited(&mut i, d);
                if cmd == 's' {
                    let flags = until(&mut i, &|c| cmd_end(c) || c == 'w');
                    if flags.contains('e') {
                        fx.runs = true;
                    }
                    if s.get(i) == Some(&'w') {
                        i += 1;
                        fx.writes.push(until(&mut i, &line_end).trim().to_string());
                    }
                }
            }
            'e' => {
                fx.runs = true;
                until(&mut i, &line_end);
            }
            'w' | 'W' => fx.writes.push(until(&mut i, &line_end).trim().to_string()),
            'r' | 'R' | 'a' | 'i' | 'c' | ':' | 'b' | 't' | 'T' | 'q' | 'Q' | 'l' | 'L' => {
                let end: &dyn Fn(char) -> bool = if matches!(cmd, 'r' | 'R' | 'a' | 'i' | 'c') {
                    &line_end
                } else {
                    &cmd_end
                };
                until(&mut i, end);
            }
            _ => {}
        }
    }
    fx
}

/// The sed scripts given to a sed command (`-e S`, `--expression=S`, or the first operand).
/// `None` when the script comes from a file (`-f`), which auto mode treats like any project file.
pub(crate) fn sed_scripts(args: &[Word]) -> Vec<Word> {
    let spec = Spec {
        short: "efl",
        long: &["expression", "file", "line-length"],
    };
    let given = option_values(args, spec, &["-e", "--expression"]);
    if !given.is_empty()
        || parse_args(args, spec, false)
            .iter()
            .any(|a| matches!(a, Arg::Opt { name, .. } if name == "-f" || name == "--file"))
    {
        return given;
    }
    operands(args, spec).into_iter().take(1).cloned().collect()
}

/// Options of other programs that run a command or script named in them.
pub(crate) fn runs_from_options(prog: &str, args: &[Word]) -> Option<String> {
    let opt = |t: &str, names: &[&str]| {
        names
            .iter()
            .any(|n| t == *n || t.strip_prefix(n).is_some_and(|r| r.starts_with('=')))
    };
    match prog {
        "tar" | "gtar" | "bsdtar" => {
            let runs = texts(args).any(|t| {
                opt(
                    t,
                    &[
                        "--checkpoint-action",
                        "--to-command",
                        "--info-script",
                        "--new-volume-script",
                        "--rsh-command",
                        "-F",
                    ],
                ) || t.starts_with("--checkpoint-action")
            });
            let compressor = option_values(
                args,
                Spec {
                    short: "fCTXbHKNgVI",
                    long: &["use-compress-program", "file", "directory"],
                },
                &["-I", "--use-compress-program"],
            );
            let known = |w: &Word| {
                let prog = w.text.split_whitespace().next().unwrap_or("");
                !w.dynamic
                    && matches!(
                        prog,
                        "gzip"
                            | "pigz"
                            | "bzip2"
                            | "pbzip2"
                            | "xz"
                            | "pixz"
                            | "zstd"
                            | "lz4"
                            | "lzip"
                            | "lzma"
                            | "lzop"
                            | "brotli"
                    )
                    && !w.text.contains([';', '|', '&', '$', '`', '>', '<'])
            };
            (runs || compressor.iter().any(|c| !known(c)))
                .then(|| "runs a command named in its options".to_string())
        }
        "vim" | "vi" | "nvim" | "ex" | "view" | "gvim" | "vimdiff" | "rvim" => texts(args)
            .any(|t| {
                t.starts_with('+')
                    || matches!(t, "-c" | "--cmd" | "-S" | "-s" | "-u" | "-W" | "-w")
                    || (t.starts_with("-c") && t.len() > 2)
            })
            .then(|| "runs editor commands given in its arguments (which can run programs)".into()),
        "emacs" => texts(args)
            .any(|t| {
                matches!(
                    t,
                    "--eval" | "-eval" | "-l" | "--load" | "-f" | "--funcall" | "--script"
                ) || t.starts_with("--eval=")
                    || t.starts_with("--load=")
            })
            .then(|| "runs Emacs Lisp given in its arguments".into()),
        "ssh" | "scp" | "sftp" | "autossh" => {
            let spec = Spec {
                short: "bcDEeFIiJLlmOoPpQRSWw",
                long: &[],
            };
            let risky = |o: &str| {
                let key = o
                    .split(['=', ' '])
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                matches!(
                    key.as_str(),
                    "proxycommand"
                        | "localcommand"
                        | "permitlocalcommand"
                        | "knownhostscommand"
                        | "remotecommand"
                        | "include"
                        | "match"
                        | "securitykeyprovider"
                        | "pkcs11provider"
                )
            };
            parse_args(args, spec, false)
                .into_iter()
                .find_map(|a| match a {
                    Arg::Opt { name, value } if name == "-o" => value
                        .filter(|v| risky(&v.text))
                        .map(|v| format!("runs a command from its option {}", v.text)),
                    Arg::Opt { name, .. } if name == "-F" => {
                        Some("reads a configuration file that can name commands to run".into())
                    }
                    Arg::Opt { name, .. } if name == "-S" && prog != "ssh" => {
                        Some("names a program to run in place of ssh".into())
                    }
                    _ => None,
                })
        }
        "rsync" => {
            let shell = option_values(
                args,
                Spec {
                    short: "e",
                    long: &["rsh", "rsync-path"],
                },
                &["-e", "--rsh", "--rsync-path"],
            );
            shell
                .iter()
                .any(|v| {
                    v.dynamic
                        || !matches!(v.text.split_whitespace().next(), Some("ssh" | "rsync"))
                        || v.text.contains([';', '|', '&', '$', '`'])
                        || v.text.to_ascii_lowercase().contains("proxycommand")
                })
                .then(|| "runs a program named in its options as the remote shell".into())
        }
        "man" => texts(args)
            .any(|t| opt(t, &["-P", "--pager", "-H", "--html"]))
            .then(|| "runs a pager or browser named in its options".into()),
        "less" | "more" => texts(args)
            .any(|t| t.starts_with('+') && t.contains('!'))
            .then(|| "runs a command given in its arguments".into()),
        "zip" => texts(args)
            .any(|t| opt(t, &["-TT", "--unzip-command"]))
            .then(|| "runs a command named in its options".into()),
        "make" | "gmake" | "bmake" => texts(args)
            .any(|t| t.starts_with("SHELL=") || t.starts_with(".SHELLFLAGS="))
            .then(|| "replaces the shell make runs its recipes with".into()),
        "entr" | "watchexec" | "nodemon" | "fswatch" | "inotifywait" | "reflex" => None,
        _ => None,
    }
}

/// Environment variables that make a program load or run code named in them.
pub(crate) fn loads_code(var: &str) -> Option<&'static str> {
    match var {
        "BASH_ENV" | "ENV" => Some("makes the shell run a startup file named in it"),
        "LD_PRELOAD"
        | "LD_AUDIT"
        | "DYLD_INSERT_LIBRARIES"
        | "LD_LIBRARY_PATH"
        | "DYLD_LIBRARY_PATH" => Some("loads libraries named in it into every program"),
        "NODE_OPTIONS" => Some("passes options (such as --require) to every node"),
        "PERL5OPT" | "RUBYOPT" | "PYTHONSTARTUP" | "PYTHONWARNINGS" | "JAVA_TOOL_OPTIONS"
        | "_JAVA_OPTIONS" | "JDK_JAVA_OPTIONS" => {
            Some("passes options or startup code to every interpreter")
        }
        "GIT_CONFIG_PARAMETERS"
        | "GIT_CONFIG_COUNT"
        | "GIT_CONFIG"
        | "GIT_CONFIG_GLOBAL"
        | "GIT_CONFIG_SYSTEM"
        | "GIT_EXEC_PATH"
        | "GIT_PROXY_COMMAND"
        | "GIT_TEMPLATE_DIR"
        | "GIT_EXTERNAL_DIFF" => Some("changes git's settings, which can name commands to run"),
        "SHELLOPTS" | "BASHOPTS" | "PS4" | "PROMPT_COMMAND" => {
            Some("changes how the shell runs, which can run commands")
        }
        v if v.starts_with("GIT_CONFIG_KEY_") || v.starts_with("GIT_CONFIG_VALUE_") => {
            Some("changes git's settings, which can name commands to run")
        }
        v if v.starts_with("BASH_FUNC_") => {
            Some("defines a shell function through the environment")
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Remote infrastructure, listeners, downloaded code

/// A change to remote infrastructure: what it changes. Read-only verbs are listed; any other
/// verb counts as a change.
pub(crate) fn remote_change(prog: &str, args: &[Word]) -> Option<String> {
    let verb_of = |spec: Spec| operands(args, spec).first().map(|w| w.text.clone());
    match prog {
        "kubectl" | "oc" | "k3s" | "microk8s" => {
            let spec = Spec {
                short: "nslcoLfkp",
                long: &[
                    "namespace",
                    "context",
                    "kubeconfig",
                    "cluster",
                    "user",
                    "server",
                    "selector",
                    "output",
                    "token",
                    "as",
                    "as-group",
                    "request-timeout",
                    "field-selector",
                    "container",
                    "filename",
                    "sort-by",
                    "label-columns",
                    "tail",
                    "since",
                    "template",
                    "cache-dir",
                    "certificate-authority",
                    "client-certificate",
                    "client-key",
                    "v",
                ],
            };
            let ops = operands(args, spec);
            let verb = ops.first().map(|w| w.text.as_str())?;
            let sub = ops.get(1).map(|w| w.text.as_str());
            let read_only = matches!(
                verb,
                "get"
                    | "describe"
                    | "logs"
                    | "explain"
                    | "api-resources"
                    | "api-versions"
                    | "version"
                    | "cluster-info"
                    | "top"
                    | "diff"
                    | "events"
                    | "completion"
                    | "help"
                    | "wait"
                    | "kustomize"
            ) || (verb == "config"
                && matches!(
                    sub,
                    Some(
                        "view" | "get-contexts" | "current-context" | "get-clusters" | "get-users"
                    )
                ))
                || (verb == "auth" && matches!(sub, Some("can-i" | "whoami")))
                || (verb == "rollout" && matches!(sub, Some("status" | "history")))
                || (verb == "plugin" && sub == Some("list"));
            (!read_only)
                .then(|| format!("changes a Kubernetes cluster or its access ({prog} {verb})"))
        }
        "helm" => {
            let spec = Spec {
                short: "no",
                long: &[
                    "namespace",
                    "kube-context",
                    "kubeconfig",
                    "output",
                    "repository-config",
                    "registry-config",
                ],
            };
            let ops = operands(args, spec);
            let verb = ops.first().map(|w| w.text.as_str())?;
            let sub = ops.get(1).map(|w| w.text.as_str());
            let read_only = matches!(
                verb,
                "list"
                    | "ls"
                    | "status"
                    | "get"
                    | "history"
                    | "show"
                    | "inspect"
                    | "search"
                    | "template"
                    | "lint"
                    | "version"
                    | "help"
                    | "env"
                    | "verify"
                    | "completion"
            ) || (matches!(verb, "dependency" | "dep" | "repo" | "plugin")
                && sub == Some("list"));
            (!read_only)
                .then(|| format!("changes a Kubernetes cluster or helm's setup (helm {verb})"))
        }
        "terraform" | "tofu" | "terragrunt" => {
            let verb = texts(args).find(|t| !t.starts_with('-'))?;
            let sub = texts(args).filter(|t| !t.starts_with('-')).nth(1);
            let read_only = matches!(
                verb,
                "plan"
                    | "validate"
                    | "fmt"
                    | "show"
                    | "output"
                    | "version"
                    | "providers"
                    | "graph"
                    | "init"
                    | "get"
                    | "console"
                    | "test"
                    | "help"
                    | "metadata"
            ) || (verb == "state" && matches!(sub, Some("list" | "show" | "pull")))
                || (verb == "workspace" && matches!(sub, Some("list" | "show")));
            (!read_only).then(|| format!("changes real infrastructure ({prog} {verb})"))
        }
        "pulumi" | "cdk" | "serverless" | "sls" | "sam" => {
            let verb = verb_of(NO_VALUES)?;
            let read_only = matches!(
                verb.as_str(),
                "preview"
                    | "diff"
                    | "synth"
                    | "ls"
                    | "list"
                    | "whoami"
                    | "version"
                    | "about"
                    | "logs"
                    | "help"
                    | "validate"
                    | "build"
                    | "package"
                    | "info"
                    | "doctor"
                    | "print"
            ) || (verb == "stack"
                && operands(args, NO_VALUES)
                    .get(1)
                    .is_some_and(|w| matches!(w.text.as_str(), "ls" | "output" | "history")))
                || (verb == "config"
                    && operands(args, NO_VALUES)
                        .get(1)
                        .is_some_and(|w| w.text == "get"));
            (!read_only).then(|| format!("changes real infrastructure ({prog} {verb})"))
        }
        "aws" | "gcloud" | "az" | "doctl" | "gsutil" | "flyctl" | "fly" | "heroku" | "vercel"
        | "netlify" | "wrangler" | "firebase" => {
            // Service, then verb(s). Reading is `describe*`, `list*`, `get*`, `ls`, `show`.
            let ops = operands(
                args,
                Spec {
                    short: "po",
                    long: &[
                        "profile",
                        "region",
                        "output",
                        "project",
                        "query",
                        "format",
                        "zone",
                        "subscription",
                        "endpoint-url",
                        "account",
                        "configuration",
                    ],
                },
            );
            if ops.is_empty() {
                return None;
            }
            let reading = |t: &str| {
                t.starts_with("describe")
                    || t.starts_with("list")
                    || t.starts_with("get")
                    || t.starts_with("show")
                    || matches!(
                        t,
                        "ls" | "cat"
                            | "help"
                            | "version"
                            | "info"
                            | "whoami"
                            | "status"
                            | "logs"
                            | "wait"
                            | "du"
                            | "stat"
                    )
            };
            let read_only = match prog {
                // `aws s3 ls`, `aws ec2 describe-instances`: the verb is the second word.
                "aws" => {
                    ops.get(1).is_some_and(|w| reading(&w.text))
                        || matches!(ops[0].text.as_str(), "help" | "--version" | "configure" if ops.get(1).is_some_and(|w| w.text == "list"))
                }
                "gsutil" => reading(&ops[0].text),
                // `gcloud compute instances list`: the verb is the last of the leading words.
                _ => {
                    ops.iter().any(|w| reading(&w.text)) || ops.len() == 1 && reading(&ops[0].text)
                }
            };
            (!read_only).then(|| {
                format!(
                    "may change cloud resources ({prog} {})",
                    ops.iter()
                        .take(3)
                        .map(|w| w.text.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
        }
        _ => None,
    }
}

/// What `docker run`/`create` gives the container of the host: bind-mount sources (to check as
/// paths) and whether it asks for the host itself (`--privileged`, host namespaces, devices).
pub(crate) fn container_host_access(
    prog: &str,
    args: &[Word],
) -> Option<(Vec<Word>, Option<String>)> {
    if !matches!(prog, "docker" | "podman" | "nerdctl") {
        return None;
    }
    let spec = Spec {
        short: "veupwlmcnih",
        long: &[
            "volume",
            "mount",
            "env",
            "user",
            "publish",
            "workdir",
            "label",
            "memory",
            "name",
            "network",
            "net",
            "pid",
            "ipc",
            "uts",
            "userns",
            "cap-add",
            "device",
            "entrypoint",
            "security-opt",
            "env-file",
            "hostname",
            "platform",
            "context",
            "host",
            "config",
            "log-level",
            "volumes-from",
            "cgroupns",
        ],
    };
    let ops = operands(args, spec);
    let sub = ops.first().map(|w| w.text.as_str())?;
    let sub = if sub == "container" {
        ops.get(1).map(|w| w.text.as_str())?
    } else {
        sub
    };
    if !matches!(sub, "run" | "create") {
        return None;
    }
    let mut sources = Vec::new();
    let mut host = None;
    for a in parse_args(args, spec, false) {
        let Arg::Opt { name, value } = a else {
            continue;
        };
        let v = value.as_ref().map(|v| v.text.as_str()).unwrap_or("");
        match name.as_str() {
            "-v" | "--volume" => {
                if let Some(w) = &value {
                    // `SRC:DST[:opts]`; a name without `/` is a named volume.
                    let src = w.text.split(':').next().unwrap_or("");
                    if src.contains('/')
                        || src.starts_with('~')
                        || src.starts_with('.')
                        || w.dynamic
                    {
                        sources.push(crate::programs::with_text(w, src));
                    }
                }
            }
            "--mount" => {
                if let Some(w) = &value {
                    let bind = w.text.split(',').any(|kv| kv == "type=bind");
                    if let Some(src) = w.text.split(',').find_map(|kv| {
                        kv.strip_prefix("source=")
                            .or_else(|| kv.strip_prefix("src="))
                    }) && bind
                    {
                        sources.push(crate::programs::with_text(w, src));
                    }
                }
            }
            "--privileged" => {
                host = Some("runs a privileged container, which controls the host".into())
            }
            "--pid" | "--ipc" | "--uts" | "--userns" | "--network" | "--net" | "--cgroupns"
                if v == "host" =>
            {
                host = Some(format!(
                    "shares the host's {} namespace",
                    name.trim_start_matches('-')
                ));
            }
            "--cap-add" | "--device" | "--security-opt" => {
                host = Some(format!("gives the container host access ({name} {v})"));
            }
            _ => {}
        }
    }
    Some((sources, host))
}

/// Listeners, reverse shells and tunnels: what it opens.
pub(crate) fn listener(prog: &str, args: &[Word]) -> Option<&'static str> {
    let listens = "listens for connections from the network";
    let shell = "connects a shell or a program to the network";
    match prog {
        "nc" | "ncat" | "netcat" | "nc.traditional" | "nc.openbsd" | "busybox-nc" => {
            let flags: Vec<&str> = texts(args).filter(|t| t.starts_with('-')).collect();
            if flags.iter().any(|f| {
                matches!(*f, "--exec" | "--sh-exec" | "--lua-exec")
                    || (!f.starts_with("--") && (f.contains('e') || f.contains('c')))
            }) {
                Some(shell)
            } else if flags
                .iter()
                .any(|f| *f == "--listen" || (!f.starts_with("--") && f.contains('l')))
            {
                Some(listens)
            } else {
                None
            }
        }
        "socat" => {
            let upper: Vec<String> = texts(args).map(str::to_ascii_uppercase).collect();
            if upper
                .iter()
                .any(|t| t.starts_with("EXEC:") || t.starts_with("SYSTEM:") || t.contains(",EXEC"))
            {
                Some(shell)
            } else if upper.iter().any(|t| {
                t.contains("-LISTEN:")
                    || t.starts_with("LISTEN:")
                    || t.contains("-RECVFROM:")
                    || t.contains("-RECV:")
            }) {
                Some(listens)
            } else {
                None
            }
        }
        "ssh" | "autossh" => texts(args)
            .any(|t| {
                t.starts_with('-')
                    && !t.starts_with("--")
                    && (t.starts_with("-R")
                        || t.starts_with("-L")
                        || t.starts_with("-D")
                        || t.starts_with("-w"))
            })
            .then_some("forwards ports between this host and another"),
        "ngrok" | "cloudflared" | "frpc" | "frps" | "chisel" | "bore" | "lt" | "localtunnel"
        | "sshuttle" | "tailscale" | "zrok" => Some("opens a tunnel from the network to this host"),
        "php" => texts(args)
            .any(|t| t == "-S" || t.starts_with("-S"))
            .then_some(listens),
        "http.server" | "SimpleHTTPServer" | "smtpd" | "pty" | "pyftpdlib" => Some(listens),
        "busybox"
            if texts(args)
                .next()
                .is_some_and(|t| matches!(t, "nc" | "httpd" | "telnetd")) =>
        {
            Some(listens)
        }
        "telnetd" | "httpd" | "inetd" | "xinetd" | "sshd" | "vsftpd" => Some(listens),
        _ => None,
    }
}

/// Downloading packages to build or run them, outside the installers (`pip download`,
/// `uv run --with pkg`): what it does.
pub(crate) fn fetches_code(prog: &str, args: &[Word]) -> Option<&'static str> {
    if !matches!(prog, "pip" | "uv" | "uvx" | "npm" | "pnpm" | "yarn" | "bun") {
        return None;
    }
    let first = operands(args, NO_VALUES).first().map(|w| w.text.clone());
    match prog {
        "pip" => matches!(first.as_deref(), Some("download" | "wheel"))
            .then_some("downloads packages (and may build them by running their setup code)"),
        "uv" | "uvx" => texts(args)
            .any(|t| {
                ["--with", "--with-requirements", "--with-editable", "--from"]
                    .iter()
                    .any(|f| t == *f || t.strip_prefix(f).is_some_and(|r| r.starts_with('=')))
            })
            .then_some("downloads packages and runs them"),
        "npm" | "pnpm" | "yarn" | "bun" => {
            matches!(first.as_deref(), Some("pack" | "dlx" | "exec"))
                .then(|| texts(args).any(|t| t.contains('@') || t.contains("://")))
                .filter(|b| *b)
                .map(|_| "downloads packages and runs them")
        }
        "git" => None,
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// Whether a word names (or contains) a credential file: keys, cloud and cluster credentials,
/// package-registry tokens.
pub(crate) fn credential_in(text: &str) -> bool {
    const MARKERS: &[&str] = &[
        ".ssh/",
        ".aws/",
        ".config/gcloud",
        ".kube/",
        ".netrc",
        ".npmrc",
        ".pypirc",
        ".docker/config.json",
        ".git-credentials",
        ".gnupg/",
        ".config/gh/",
        ".azure/",
        ".vault-token",
        ".cargo/credentials",
        ".terraform.d/credentials",
        ".config/op/",
        ".password-store",
        "/etc/shadow",
        "id_rsa",
        "id_ed25519",
        "id_ecdsa",
        "id_dsa",
        ".gem/credentials",
        ".m2/settings.xml",
        ".gradle/gradle.properties",
    ];
    let t = text.trim_end_matches('/');
    if t.ends_with(".pub") || t.ends_with("known_hosts") {
        return false;
    }
    // Cheap first: every marker holds a dot or `id_`/`shadow`.
    if !text.contains('.') && !text.contains("id_") && !text.contains("shadow") {
        return false;
    }
    MARKERS.iter().any(|m| {
        // `~/.kube` names the directory as well as `~/.kube/config` does.
        let dir = m.trim_end_matches('/').trim_start_matches('/');
        text.contains(m)
            || t.strip_suffix(dir)
                .is_some_and(|before| before.is_empty() || before.ends_with('/'))
    })
}

/// An option (or `--option=value` word) through which `prog` takes a key or config it uses
/// itself rather than sends: `ssh -i KEY`, `kubectl --kubeconfig FILE`.
pub(crate) fn credential_option(prog: &str, text: &str) -> bool {
    match prog {
        "ssh" | "scp" | "sftp" | "autossh" | "ssh-copy-id" | "ssh-add" | "ssh-keygen" => {
            text.starts_with("-i") || text == "-f"
        }
        "kubectl" | "oc" | "helm" | "k9s" | "kubectx" => text.starts_with("--kubeconfig"),
        "aws" | "gcloud" | "az" => text.starts_with("--profile") || text.starts_with("--key-file"),
        _ => false,
    }
}

/// Programs that send data to the network or copy files: a credential read by one of them
/// leaves the host (or a place auto mode protects).
pub(crate) fn sends_or_copies(prog: &str) -> bool {
    matches!(
        prog,
        "curl"
            | "wget"
            | "nc"
            | "ncat"
            | "netcat"
            | "socat"
            | "scp"
            | "sftp"
            | "rsync"
            | "ssh"
            | "ftp"
            | "tftp"
            | "telnet"
            | "http"
            | "https"
            | "xh"
            | "xhs"
            | "httpie"
            | "curlie"
            | "sendmail"
            | "mail"
            | "mailx"
            | "mutt"
            | "aws"
            | "gsutil"
            | "gcloud"
            | "az"
            | "rclone"
            | "gh"
            | "glab"
            | "openssl"
            | "cp"
            | "mv"
            | "install"
            | "dd"
            | "tar"
            | "zip"
            | "7z"
            | "ln"
            | "link"
            | "tee"
            | "git"
            | "docker"
            | "podman"
            | "pbcopy"
            | "xclip"
            | "xsel"
            | "wl-copy"
            | "lwp-request"
            | "aria2c"
    )
}

/// Programs that only show or inspect files on the host (what they read stays on the host
/// unless it is piped or redirected on).
pub(crate) fn reads_locally(prog: &str) -> bool {
    matches!(
        prog,
        "ls" | "stat"
            | "file"
            | "test"
            | "["
            | "[["
            | "wc"
            | "chmod"
            | "chown"
            | "cat"
            | "less"
            | "more"
            | "head"
            | "tail"
            | "grep"
            | "rg"
            | "diff"
            | "cmp"
            | "md5sum"
            | "sha256sum"
            | "sha1sum"
            | "ssh-add"
            | "ssh-keygen"
            | "du"
            | "find"
            | "realpath"
            | "readlink"
            | "basename"
            | "dirname"
            | "echo"
            | "printf"
            | "sort"
            | "uniq"
            | "awk"
            | "sed"
            | "cut"
            | "tr"
            | "jq"
            | "yq"
            | "base64"
            | "xxd"
            | "od"
            | "hexdump"
            | "strings"
            | "bat"
            | "mkdir"
            | "touch"
            | "rm"
            | "vim"
            | "vi"
            | "nano"
            | "code"
    )
}

// ---------------------------------------------------------------------------------------------
// Writes through output flags

/// Paths a program writes through an option (`gcc -o FILE`, `--prefix DIR`, `--target-dir`).
/// Long output options are recognised for any program, including ones auto mode does not know;
/// `-o` only for programs where it means "output file".
pub(crate) fn flag_write_targets(prog: &str, args: &[Word]) -> Vec<Word> {
    const LONG: &[&str] = &[
        "--output",
        "--out",
        "--outdir",
        "--out-dir",
        "--output-dir",
        "--output-directory",
        "--output-file",
        "--outfile",
        "--prefix",
        "--exec-prefix",
        "--bindir",
        "--libdir",
        "--sysconfdir",
        "--target",
        "--target-dir",
        "--root",
        "--install-dir",
        "--installdir",
        "--install-prefix",
        "--dest",
        "--destdir",
        "--dest-dir",
        "--destination",
        "--build-dir",
        "--builddir",
        "--log-file",
        "--logfile",
        "--pidfile",
        "--pid-file",
        "--cache-dir",
        "--home",
        "--venv",
        "--dist-dir",
        "--distpath",
        "--workpath",
        "--specpath",
        "--wheel-dir",
        "--src",
    ];
    let short_o = matches!(
        prog,
        "gcc"
            | "g++"
            | "cc"
            | "c++"
            | "clang"
            | "clang++"
            | "ld"
            | "ld.lld"
            | "ld.gold"
            | "as"
            | "rustc"
            | "go"
            | "tinygo"
            | "nvcc"
            | "zig"
            | "sort"
            | "objcopy"
            | "strip"
            | "pandoc"
            | "gfortran"
            | "swiftc"
            | "ghc"
            | "ocamlc"
            | "ocamlopt"
            | "nim"
            | "tcc"
            | "musl-gcc"
            | "javac"
            | "kotlinc"
            | "scalac"
            | "protoc"
            | "flatc"
            | "esbuild"
            | "tsc"
            | "upx"
            | "wasm-ld"
            | "emcc"
            | "em++"
            | "dmd"
            | "ldc2"
            | "gccgo"
            | "nasm"
            | "yasm"
    );
    // Options whose value is a path to check, with the option name as written.
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(w) = args.get(i) {
        i += 1;
        let t = w.text.as_str();
        if t == "--" {
            break;
        }
        // Go and friends spell long options with one dash (`-o`, `-out`); javac uses `-d`.
        let (name, inline) = match t.split_once('=') {
            Some((n, v)) if n.starts_with('-') => (n, Some(v)),
            _ => (t, None),
        };
        let is_long = if name.starts_with("--") {
            LONG.contains(&name)
        } else if short_o && name.len() > 2 && !name.starts_with("-o") {
            LONG.iter().any(|l| &l[1..] == name)
        } else {
            false
        };
        let is_short = short_o
            && (name == "-o"
                || (prog == "javac" && name == "-d")
                || (name.starts_with("-o") && name.len() > 2 && prog != "go" && inline.is_none()));
        if !(is_long || is_short) {
            continue;
        }
        let value = if let Some(v) = inline {
            Some(crate::programs::with_text(w, v))
        } else if is_short && name.len() > 2 {
            Some(crate::programs::with_text(w, &name[2..]))
        } else {
            let v = args.get(i).cloned();
            i += 1;
            v
        };
        if let Some(v) = value.filter(|v| !v.text.is_empty() && v.text != "-") {
            // `--target x86_64-unknown-linux-gnu`, `--output json`: not paths; harmless to check
            // (a relative word is inside the working directory).
            out.push(v);
        }
    }
    out
}

/// Flags that make a tool install or write for the whole user or system (`pip --user`,
/// `npm -g`), wherever the walk would not see a path.
pub(crate) fn user_wide_flag(prog: &str, args: &[Word]) -> Option<String> {
    if matches!(prog, "git" | "kubectl" | "helm" | "gcloud" | "az" | "aws") {
        return None;
    }
    texts(args)
        .find(|t| {
            matches!(
                *t,
                "--user" | "--user-install" | "--global" | "--system" | "--break-system-packages"
            )
        })
        .map(|t| {
            format!("writes outside the working directory, for the whole user or system ({t})")
        })
}

/// `python -m venv DIR`, `virtualenv DIR`, `uv venv DIR`: the environment directories made.
pub(crate) fn venv_targets(prog: &str, args: &[Word]) -> Vec<Word> {
    let spec = Spec {
        short: "p",
        long: &["prompt", "python", "upgrade-deps"],
    };
    match prog {
        "venv" | "virtualenv" | "pyvenv" => operands(args, spec).into_iter().cloned().collect(),
        "uv" => {
            let ops = operands(args, spec);
            if ops.first().is_some_and(|w| w.text == "venv") {
                ops.into_iter().skip(1).cloned().collect()
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
}

/// `make -C DIR`, `cmake -B DIR`/`--build DIR`, `git -C DIR` with a writing subcommand: a
/// directory outside would be built or changed.
pub(crate) fn works_in(prog: &str, args: &[Word]) -> Vec<Word> {
    match prog {
        "make" | "gmake" | "bmake" | "ninja" => option_values(
            args,
            Spec {
                short: "CfIjloW",
                long: &["directory", "file", "makefile", "include-dir", "jobs"],
            },
            &["-C", "--directory"],
        ),
        "cmake" => option_values(
            args,
            Spec {
                short: "BSGDCUT",
                long: &["build", "install"],
            },
            &["-B", "--build", "--install"],
        ),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Word> {
        s.split_whitespace().map(Word::literal).collect()
    }

    #[test]
    fn sed_scripts_that_run_or_write() {
        assert!(sed_effects("1e rm -rf x").runs);
        assert!(sed_effects("s/a/b/e").runs);
        assert!(sed_effects("/x/ e id").runs);
        assert!(!sed_effects("1p").runs);
        assert!(!sed_effects("s/e/E/g").runs);
        assert!(!sed_effects("s|/usr/e|x|").runs);
        assert_eq!(sed_effects("s/a/b/w /etc/x").writes, ["/etc/x"]);
        assert_eq!(sed_effects("1w out.txt").writes, ["out.txt"]);
        assert!(sed_effects("/^#/d; s/\\t/ /g").writes.is_empty());
    }

    #[test]
    fn output_flags_are_found() {
        let t = |p: &str, a: &str| {
            flag_write_targets(p, &words(a))
                .into_iter()
                .map(|w| w.text)
                .collect::<Vec<_>>()
        };
        assert_eq!(t("gcc", "-o /x/y a.c"), ["/x/y"]);
        assert_eq!(t("gcc", "-o/x/y a.c"), ["/x/y"]);
        assert_eq!(t("go", "build -o /x/y ."), ["/x/y"]);
        assert_eq!(t("mytool", "--prefix=/usr/local"), ["/usr/local"]);
        assert_eq!(t("cargo", "build --target-dir /t"), ["/t"]);
        assert!(t("grep", "-o x /etc/passwd").is_empty());
        assert!(t("ls", "-o /etc").is_empty());
    }

    #[test]
    fn credentials_are_recognised() {
        assert!(credential_in("~/.ssh/id_rsa"));
        assert!(credential_in("@~/.aws/credentials"));
        assert!(credential_in("/home/u/.kube/config"));
        assert!(credential_in(".npmrc"));
        assert!(!credential_in("~/.ssh/id_rsa.pub"));
        assert!(!credential_in("src/main.rs"));
    }
}
