//! What the classifier knows about particular programs: which install packages, which change the
//! system, which write where, which merely run another command (wrappers), which run code given
//! to them (interpreters), which fetch from the network.
//!
//! Knowledge is kept as small per-program functions over the argument words rather than one big
//! pattern list, because the same program is harmless or not depending on its subcommand
//! (`npm test` vs `npm install`, `apt list` vs `apt install`). Package managers with many
//! read-only subcommands are listed the other way round: anything not known to be read-only
//! counts as a change, so an unfamiliar subcommand errs towards the sandbox.

use crate::words::Word;

/// The name a program is known by: the basename, with version suffixes of the common
/// interpreters folded (`python3.11` → `python`, `pip3` → `pip`).
pub(crate) fn canonical(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    let versioned = |stem: &str| {
        base.strip_prefix(stem)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    };
    if versioned("python") || versioned("pypy") || base == "py" {
        "python"
    } else if versioned("pip") {
        "pip"
    } else if versioned("perl") {
        "perl"
    } else if versioned("ruby") {
        "ruby"
    } else if base == "nodejs" {
        "node"
    } else if base == "gmake" {
        "make"
    } else {
        base
    }
}

/// One parsed argument: an option (with its value, if it takes one) or an operand.
#[derive(Debug)]
pub(crate) enum Arg<'w> {
    Opt { name: String, value: Option<Word> },
    Operand(&'w Word),
}

/// Which options take a value: short option letters and long option names.
#[derive(Clone, Copy)]
pub(crate) struct Spec {
    pub short: &'static str,
    pub long: &'static [&'static str],
}

pub(crate) const NO_VALUES: Spec = Spec {
    short: "",
    long: &[],
};

/// Parses arguments GNU-style (options and operands may interleave; `--` ends options).
/// With `stop_at_operand`, everything from the first operand on is an operand (POSIX style, as
/// wrappers such as `sudo` and `env` parse: the rest is the command they run).
pub(crate) fn parse_args(args: &[Word], spec: Spec, stop_at_operand: bool) -> Vec<Arg<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut options_done = false;
    while i < args.len() {
        let w = &args[i];
        i += 1;
        let t = w.text.as_str();
        if options_done || !t.starts_with('-') || t == "-" {
            out.push(Arg::Operand(w));
            if stop_at_operand {
                options_done = true;
            }
            continue;
        }
        if t == "--" {
            options_done = true;
            continue;
        }
        if let Some(long) = t.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let value = match inline {
                Some(v) => Some(with_text(w, v)),
                None if spec.long.contains(&name) => {
                    i += 1;
                    args.get(i - 1).cloned()
                }
                None => None,
            };
            out.push(Arg::Opt {
                name: format!("--{name}"),
                value,
            });
            continue;
        }
        // A bundle of short options (`-xvf FILE`, `-n10`).
        let letters: Vec<char> = t[1..].chars().collect();
        for (k, c) in letters.iter().enumerate() {
            if spec.short.contains(*c) {
                let rest: String = letters[k + 1..].iter().collect();
                let value = if rest.is_empty() {
                    i += 1;
                    args.get(i - 1).cloned()
                } else {
                    Some(with_text(w, &rest))
                };
                out.push(Arg::Opt {
                    name: format!("-{c}"),
                    value,
                });
                break;
            }
            out.push(Arg::Opt {
                name: format!("-{c}"),
                value: None,
            });
        }
    }
    out
}

/// The value part of an option or `name=value` word, as a word of its own. Bash expands `~`
/// after `=` in assignment-like arguments, and a value that begins with an expansion is only
/// known at run time.
pub(crate) fn with_text(w: &Word, text: &str) -> Word {
    let mut v = w.clone();
    v.text = text.to_string();
    if text.starts_with('~') {
        v.start = crate::words::Start::Home;
    } else if w.dynamic && text.starts_with(['$', '`']) {
        v.start = crate::words::Start::Dynamic;
    }
    v
}

/// `git clone`'s options that take a value (so the value is not read as the URL or directory).
pub(crate) const GIT_CLONE: Spec = Spec {
    short: "bojcu",
    long: &[
        "branch",
        "origin",
        "depth",
        "template",
        "reference",
        "separate-git-dir",
        "config",
        "jobs",
        "filter",
        "upload-pack",
        "shallow-since",
        "shallow-exclude",
    ],
};

pub(crate) fn operands(args: &[Word], spec: Spec) -> Vec<&Word> {
    parse_args(args, spec, false)
        .into_iter()
        .filter_map(|a| match a {
            Arg::Operand(w) => Some(w),
            Arg::Opt { .. } => None,
        })
        .collect()
}

/// The values given to any of `names` (`-o FILE`, `--output=FILE`).
pub(crate) fn option_values(args: &[Word], spec: Spec, names: &[&str]) -> Vec<Word> {
    parse_args(args, spec, false)
        .into_iter()
        .filter_map(|a| match a {
            Arg::Opt { name, value } if names.contains(&name.as_str()) => value,
            _ => None,
        })
        .collect()
}

pub(crate) fn has_option(args: &[Word], spec: Spec, names: &[&str]) -> bool {
    parse_args(args, spec, false)
        .iter()
        .any(|a| matches!(a, Arg::Opt { name, .. } if names.contains(&name.as_str())))
}

/// The index of the first operand when options stop there (where a wrapped command starts).
fn command_start(args: &[Word], spec: Spec) -> usize {
    let mut i = 0;
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        if t == "--" {
            return i + 1;
        }
        if !t.starts_with('-') || t == "-" {
            return i;
        }
        i += 1;
        if let Some(long) = t.strip_prefix("--") {
            if !long.contains('=') && spec.long.contains(&long) {
                i += 1;
            }
            continue;
        }
        for (k, c) in t[1..].char_indices() {
            if spec.short.contains(c) {
                if k + c.len_utf8() == t.len() - 1 {
                    i += 1; // the value is the next word
                }
                break;
            }
        }
    }
    args.len()
}

fn texts(args: &[Word]) -> impl Iterator<Item = &str> {
    args.iter().map(|w| w.text.as_str())
}

fn first_operand(args: &[Word], spec: Spec) -> Option<&str> {
    operands(args, spec).first().map(|w| w.text.as_str())
}

fn has(args: &[Word], flags: &[&str]) -> bool {
    texts(args).any(|t| flags.contains(&t))
}

// ---------------------------------------------------------------------------------------------
// Installers

/// An install, removal or upgrade of packages or tools: (rule id, what it does).
pub(crate) fn installer(prog: &str, args: &[Word]) -> Option<(String, &'static str)> {
    const PY: &str = "installs or removes Python packages";
    const JS: &str = "installs or removes JavaScript packages";
    const RUN: &str = "downloads and runs a package";
    const SYS: &str = "installs, removes or updates system packages";
    const PKGS: &str = "installs, removes or updates packages";
    const RUNTIMES: &str = "installs or switches language runtimes and tools";
    let id = |p: &str| format!("install:{p}");
    let found = |what: &'static str| Some((id(prog), what));
    let in_set = |s: Option<&str>, set: &[&str]| s.is_some_and(|s| set.contains(&s));
    // Read-only subcommands; any other subcommand (or a new one we do not know) changes things.
    let unless_read_only = |sub: Option<&str>, read_only: &[&str], what: &'static str| match sub {
        None => None, // no subcommand: prints help
        Some(s) if read_only.contains(&s) || s.starts_with('-') => None,
        Some(_) => found(what),
    };
    match prog {
        "pip" => {
            let spec = Spec {
                short: "",
                long: &["python", "proxy", "cache-dir", "log", "cert", "client-cert", "timeout", "retries", "exists-action"],
            };
            in_set(first_operand(args, spec), &["install", "uninstall"]).then(|| found(PY))?
        }
        "easy_install" | "pip-sync" | "ensurepip" => found(PY),
        "uv" => {
            let spec = Spec {
                short: "",
                long: &["directory", "project", "cache-dir", "config-file", "color", "python"],
            };
            let ops = operands(args, spec);
            let sub = ops.first().map(|w| w.text.as_str());
            let sub2 = ops.get(1).map(|w| w.text.as_str());
            let installs = match sub {
                Some("add" | "remove" | "sync") => true,
                Some("pip") => in_set(sub2, &["install", "uninstall", "sync"]),
                Some("tool") => in_set(sub2, &["install", "upgrade", "uninstall", "run"]),
                Some("python") => in_set(sub2, &["install", "uninstall", "upgrade"]),
                Some("self") => in_set(sub2, &["update"]),
                _ => false,
            };
            installs.then(|| found(PY))?
        }
        "uvx" => found(RUN),
        "poetry" | "pdm" | "pipenv" | "rye" => in_set(
            first_operand(args, NO_VALUES),
            &["add", "install", "remove", "uninstall", "update", "upgrade", "sync", "self", "lock-install"],
        )
        .then(|| found(PY))?,
        "pipx" => unless_read_only(first_operand(args, NO_VALUES), &["list", "environment", "completions", "help"], "installs Python applications"),
        "conda" | "mamba" | "micromamba" => {
            let ops = operands(args, Spec { short: "np", long: &["name", "prefix"] });
            let sub = ops.first().map(|w| w.text.as_str());
            let sub2 = ops.get(1).map(|w| w.text.as_str());
            let installs = in_set(sub, &["install", "remove", "uninstall", "update", "upgrade", "create"])
                || (sub == Some("env") && in_set(sub2, &["create", "update", "remove"]));
            installs.then(|| found(PKGS))?
        }
        "npm" | "cnpm" | "pnpm" | "yarn" | "bun" => {
            let spec = Spec {
                short: "wCF",
                long: &["prefix", "workspace", "registry", "cache", "userconfig", "loglevel", "dir", "filter", "cwd"],
            };
            let ops = operands(args, spec);
            let sub = ops.first().map(|w| w.text.as_str());
            let global = has_option(args, spec, &["-g", "--global"]) || has(args, &["--location=global"]);
            let read_only = in_set(sub, &["ls", "list", "ll", "la", "outdated", "view", "info", "root", "prefix", "bin", "why", "explain", "config", "get", "help", "search", "audit"])
                && !(sub == Some("audit") && ops.get(1).is_some_and(|w| w.text == "fix"));
            let changes = match sub {
                None => prog == "yarn", // bare `yarn` installs
                Some(s) => matches!(
                    s,
                    "install" | "i" | "in" | "ins" | "inst" | "insta" | "instal" | "isnt" | "isnta" | "isntal"
                        | "isntall" | "add" | "a" | "ci" | "clean-install" | "ic" | "install-clean" | "it"
                        | "install-test" | "cit" | "install-ci-test" | "uninstall" | "un" | "unlink"
                        | "remove" | "rm" | "r" | "update" | "up" | "upgrade" | "udpate" | "upgrade-interactive"
                        | "link" | "ln" | "exec" | "x" | "dlx" | "create" | "global" | "import" | "setup"
                        | "self-update" | "dedupe" | "ddp"
                ) || (s == "audit" && ops.get(1).is_some_and(|w| w.text == "fix"))
                    || (s == "init" && ops.get(1).is_some_and(|w| !w.text.starts_with('-')))
                    || (prog == "yarn" && s == "set" && ops.get(1).is_some_and(|w| w.text == "version"))
                    || (prog == "pnpm" && s == "env" && ops.get(1).is_some_and(|w| w.text == "use")),
            };
            let runs = in_set(sub, &["exec", "x", "dlx", "create"])
                || (sub == Some("init") && ops.get(1).is_some_and(|w| !w.text.starts_with('-')));
            if runs && !(prog == "pnpm" && sub == Some("exec")) {
                return found(RUN);
            }
            if prog == "pnpm" && sub == Some("exec") {
                return None;
            }
            ((changes || global) && !read_only).then(|| found(JS))?
        }
        "npx" | "pnpx" | "bunx" => found(RUN),
        "deno" => in_set(first_operand(args, NO_VALUES), &["install", "add", "uninstall", "remove", "upgrade"])
            .then(|| found(JS))?,
        "apt" | "apt-get" | "aptitude" => unless_read_only(
            first_operand(args, Spec { short: "ocCt", long: &["option", "config-file", "target-release"] }),
            &["list", "search", "show", "showsrc", "policy", "depends", "rdepends", "changelog", "madison", "download", "source", "help", "moo", "check", "why", "why-not", "versions"],
            SYS,
        ),
        "apt-key" | "add-apt-repository" | "apt-add-repository" | "dpkg-reconfigure" | "update-ca-certificates" => found(SYS),
        "apt-mark" => unless_read_only(first_operand(args, NO_VALUES), &["showhold", "showauto", "showmanual", "showinstall"], SYS),
        "dpkg" => parse_args(args, Spec { short: "", long: &[] }, false)
            .iter()
            .any(|a| {
                matches!(a, Arg::Opt { name, .. } if matches!(name.as_str(),
                    "-i" | "--install" | "-r" | "--remove" | "-P" | "--purge" | "--unpack" | "--configure"
                    | "--set-selections" | "--clear-avail" | "-A" | "--record-avail" | "--update-avail" | "--merge-avail"))
            })
            .then(|| found(SYS))?,
        "rpm" => texts(args)
            .any(|t| {
                matches!(t, "--install" | "--upgrade" | "--freshen" | "--erase" | "--import" | "--rebuilddb" | "--reinstall")
                    || (t.starts_with('-') && !t.starts_with("--") && t[1..].starts_with(['i', 'U', 'F', 'e']))
            })
            .then(|| found(SYS))?,
        "yum" | "dnf" | "microdnf" | "tdnf" => unless_read_only(
            first_operand(args, Spec { short: "cR", long: &["config", "releasever", "installroot", "repo", "enablerepo", "disablerepo"] }),
            &["list", "search", "info", "provides", "whatprovides", "repolist", "check-update", "history", "deplist", "repoquery", "help", "version"],
            SYS,
        ),
        "apk" => unless_read_only(
            first_operand(args, Spec { short: "X", long: &["repository", "root"] }),
            &["info", "search", "list", "policy", "version", "stats", "dot", "audit", "verify", "help"],
            SYS,
        ),
        "pacman" | "yay" | "paru" | "pikaur" => {
            let op = texts(args).find(|t| t.starts_with('-') && !t.starts_with("--"));
            let long_change = has(args, &["--sync", "--remove", "--upgrade", "--database", "--refresh", "--sysupgrade"]);
            let changes = match op {
                None => prog != "pacman", // `yay` alone upgrades everything
                Some(op) => {
                    let flags = &op[1..];
                    match flags.chars().next() {
                        Some('S') => !flags[1..].chars().all(|c| matches!(c, 's' | 'i' | 'l' | 'g' | 'p' | 'q')) || flags.len() == 1,
                        Some('R' | 'U' | 'D') => true,
                        Some('F') => flags.contains('y'),
                        _ => false,
                    }
                }
            };
            (changes || long_change).then(|| found(SYS))?
        }
        "zypper" => unless_read_only(
            first_operand(args, NO_VALUES),
            &["search", "se", "info", "if", "list-updates", "lu", "packages", "pa", "patches", "repos", "lr", "products", "pd", "patterns", "what-provides", "wp", "help"],
            SYS,
        ),
        "emerge" => (!has(args, &["-p", "--pretend", "-s", "--search", "--info", "-S", "--searchdesc"])).then(|| found(SYS))?,
        "xbps-install" | "xbps-remove" | "eopkg" | "swupd" | "slackpkg" | "pkg_add" | "pkg_delete" | "installer" => found(SYS),
        "pkg" | "opkg" | "port" | "guix" => in_set(
            first_operand(args, NO_VALUES),
            &["install", "delete", "remove", "upgrade", "update", "uninstall", "selfupdate", "activate", "deactivate", "pull", "package", "autoremove"],
        )
        .then(|| found(SYS))?,
        "brew" => unless_read_only(
            first_operand(args, NO_VALUES),
            &["list", "ls", "info", "abv", "search", "config", "doctor", "dr", "deps", "outdated", "leaves", "home", "homepage", "uses", "desc", "cat", "log", "commands", "help", "shellenv", "formulae", "casks", "tap-info", "missing", "options", "--prefix", "--cellar", "--repository", "--version", "--cache", "--env"],
            PKGS,
        ),
        "snap" => unless_read_only(first_operand(args, NO_VALUES), &["list", "find", "info", "version", "changes", "change", "services", "connections", "aliases", "help", "known", "run", "warnings"], PKGS),
        "flatpak" => unless_read_only(first_operand(args, NO_VALUES), &["list", "search", "info", "remotes", "remote-ls", "remote-info", "history", "ps", "run", "documents", "permissions", "permission-show"], PKGS),
        "nix-env" => (!texts(args).any(|t| t == "-q" || t == "--query" || (t.starts_with("-q") && !t.starts_with("--")))).then(|| found(PKGS))?,
        "nix-channel" => has(args, &["--add", "--remove", "--update", "--rollback"]).then(|| found(PKGS))?,
        "nix" => {
            let ops = operands(args, NO_VALUES);
            let sub = ops.first().map(|w| w.text.as_str());
            let sub2 = ops.get(1).map(|w| w.text.as_str());
            if in_set(sub, &["run", "shell"]) {
                return found(RUN);
            }
            (sub == Some("profile") && !in_set(sub2, &["list", "history", "diff-closures"])).then(|| found(PKGS))?
        }
        "gem" => in_set(first_operand(args, NO_VALUES), &["install", "uninstall", "update", "i"]).then(|| found("installs or removes Ruby gems"))?,
        "bundle" | "bundler" => match first_operand(args, Spec { short: "", long: &["gemfile"] }) {
            None => found("installs Ruby gems"),
            Some(s) => matches!(s, "install" | "update" | "add" | "remove").then(|| found("installs Ruby gems"))?,
        },
        "cargo" => {
            let ops: Vec<&Word> = operands(args, Spec { short: "CZ", long: &["config", "color"] })
                .into_iter()
                .filter(|w| !w.text.starts_with('+'))
                .collect();
            in_set(ops.first().map(|w| w.text.as_str()), &["install", "uninstall", "binstall"]).then(|| found("installs or removes Rust programs"))?
        }
        "go" => {
            let ops = operands(args, Spec { short: "C", long: &[] });
            match ops.first().map(|w| w.text.as_str()) {
                Some("install" | "get") => found("installs Go packages or programs"),
                // `go run module@version` downloads the module and runs it.
                Some("run") if ops[1..].iter().any(|w| w.text.contains('@')) => found(RUN),
                _ => None,
            }
        }
        "rustup" => {
            let ops = operands(args, NO_VALUES);
            let sub = ops.first().map(|w| w.text.as_str());
            let sub2 = ops.get(1).map(|w| w.text.as_str());
            let read_only = in_set(sub, &["show", "which", "help", "doc", "completions", "run"])
                || (in_set(sub, &["toolchain", "target", "component"]) && in_set(sub2, &["list"]));
            (sub.is_some() && !read_only).then(|| found("installs or changes Rust toolchains"))?
        }
        "composer" => in_set(first_operand(args, NO_VALUES), &["require", "install", "update", "upgrade", "remove", "global", "create-project", "self-update", "selfupdate"])
            .then(|| found("installs or removes PHP packages"))?,
        "dotnet" => {
            let ops = operands(args, NO_VALUES);
            let sub = ops.first().map(|w| w.text.as_str());
            let sub2 = ops.get(1).map(|w| w.text.as_str());
            let changes = (sub == Some("tool") && in_set(sub2, &["install", "update", "uninstall"]))
                || (sub == Some("add") && ops.get(2).is_some_and(|w| w.text == "package"))
                || (sub == Some("add") && sub2 == Some("package"))
                || (sub == Some("workload") && in_set(sub2, &["install", "update", "restore", "repair", "uninstall"]))
                || (sub == Some("new") && in_set(sub2, &["install", "uninstall"]));
            changes.then(|| found(PKGS))?
        }
        "luarocks" | "opam" | "cabal" | "stack" | "nimble" | "raco" | "ghcup" | "spack" => in_set(
            first_operand(args, NO_VALUES),
            &["install", "remove", "uninstall", "upgrade", "update", "pkg", "set", "switch"],
        )
        .then(|| found(PKGS))?,
        "cpan" | "cpanm" => found("installs Perl modules"),
        "mix" => texts(args)
            .any(|t| matches!(t, "archive.install" | "escript.install" | "local.hex" | "local.rebar"))
            .then(|| found(PKGS))?,
        "asdf" | "mise" | "rtx" | "nvm" | "pyenv" | "rbenv" | "volta" | "fnm" | "sdk" | "juliaup" | "jenv" | "goenv" | "nodenv" | "tfenv" => in_set(
            first_operand(args, NO_VALUES),
            &["install", "uninstall", "plugin", "plugins", "global", "default", "use", "selfupdate", "self-update", "add", "upgrade"],
        )
        .then(|| found(RUNTIMES))?,
        "corepack" => in_set(first_operand(args, NO_VALUES), &["enable", "disable", "install", "prepare", "up", "use"]).then(|| found(RUNTIMES))?,
        "choco" | "winget" | "scoop" | "mas" => in_set(first_operand(args, NO_VALUES), &["install", "uninstall", "upgrade", "update", "remove"]).then(|| found(SYS))?,
        "softwareupdate" => has(args, &["-i", "--install", "-a", "--all"]).then(|| found(SYS))?,
        "gh" => {
            let ops = operands(args, NO_VALUES);
            (ops.first().is_some_and(|w| matches!(w.text.as_str(), "extension" | "ext" | "extensions"))
                && ops.get(1).is_some_and(|w| matches!(w.text.as_str(), "install" | "upgrade" | "remove")))
            .then(|| found("installs or removes GitHub CLI extensions"))?
        }
        "code" | "codium" | "cursor" => texts(args)
            .any(|t| t.starts_with("--install-extension") || t.starts_with("--uninstall-extension"))
            .then(|| found("installs or removes editor extensions"))?,
        "ansible-galaxy" => texts(args).any(|t| matches!(t, "install" | "remove")).then(|| found(PKGS))?,
        "make" | "ninja" | "bmake" => operands(args, Spec { short: "CfIjloW", long: &["directory", "file", "makefile", "include-dir", "jobs", "load-average", "old-file", "what-if"] })
            .iter()
            .any(|w| matches!(w.text.as_str(), "install" | "uninstall"))
            .then(|| (id("make"), "installs build outputs, by default into system directories")),
        "cmake" => has(args, &["--install"]).then(|| (id("cmake"), "installs build outputs, by default into system directories")),
        "meson" => (first_operand(args, NO_VALUES) == Some("install")).then(|| (id("meson"), "installs build outputs, by default into system directories")),
        _ => None,
    }
}

/// `python setup.py install` and friends.
pub(crate) fn setup_py_installs(script: &str, rest: &[Word]) -> bool {
    script.rsplit('/').next() == Some("setup.py")
        && texts(rest).any(|t| matches!(t, "install" | "develop" | "easy_install"))
}

// ---------------------------------------------------------------------------------------------
// Privilege and system changes

pub(crate) fn raises_privilege(prog: &str) -> bool {
    matches!(
        prog,
        "sudo"
            | "su"
            | "doas"
            | "pkexec"
            | "run0"
            | "runuser"
            | "gosu"
            | "su-exec"
            | "sudoedit"
            | "calife"
            | "sg"
            | "newgrp"
    )
}

/// A command that changes the host system itself: what it changes.
pub(crate) fn system_change(prog: &str, args: &[Word]) -> Option<&'static str> {
    let sub = first_operand(args, NO_VALUES);
    let ops = || operands(args, NO_VALUES);
    let services = "starts, stops or configures system services";
    let users = "changes users, groups or passwords";
    let network = "changes the network or firewall configuration";
    let kernel = "changes kernel settings or modules";
    let disks = "formats, partitions or mounts disks";
    let power = "shuts down or restarts the machine";
    match prog {
        "systemctl" => match sub {
            None => None,
            Some(s) if s.starts_with("list") || s.starts_with("is-") || s.starts_with("show") => {
                None
            }
            Some("status" | "cat" | "help" | "get-default") => None,
            Some(_) => Some(services),
        },
        "service" => {
            let ops = ops();
            (!(has(args, &["--status-all"])
                || ops.last().is_some_and(|w| w.text == "status")
                || ops.is_empty()))
            .then_some(services)
        }
        "chkconfig" | "update-rc.d" | "rc-update" | "rc-service" | "initctl" | "sv" => {
            Some(services)
        }
        "launchctl" => (!matches!(
            sub,
            None | Some("list" | "print" | "help" | "version" | "blame" | "print-disabled")
        ))
        .then_some(services),
        "systemd-run" => Some("runs a command as a system service"),
        "crontab" => (!has(args, &["-l"])).then_some("changes scheduled jobs"),
        "at" | "batch" => (!has(args, &["-l"])).then_some("schedules jobs"),
        "useradd" | "userdel" | "usermod" | "groupadd" | "groupdel" | "groupmod" | "adduser"
        | "deluser" | "addgroup" | "delgroup" | "passwd" | "chpasswd" | "chsh" | "chfn"
        | "chage" | "gpasswd" | "visudo" | "vipw" | "vigr" | "newusers" => Some(users),
        "iptables" | "ip6tables" | "iptables-restore" | "ip6tables-restore" | "nft" | "ufw"
        | "firewall-cmd" | "pfctl" => Some(network),
        "ip" => {
            let changing = [
                "add", "del", "delete", "set", "change", "replace", "flush", "append", "prepend",
            ];
            texts(args)
                .any(|t| changing.contains(&t))
                .then_some(network)
        }
        "ifconfig" => (ops().len() > 1).then_some(network),
        "route" => texts(args)
            .any(|t| matches!(t, "add" | "del" | "delete" | "change" | "flush"))
            .then_some(network),
        "nmcli" => texts(args)
            .any(|t| {
                matches!(
                    t,
                    "up" | "down"
                        | "modify"
                        | "mod"
                        | "add"
                        | "delete"
                        | "del"
                        | "connect"
                        | "disconnect"
                        | "on"
                        | "off"
                        | "reload"
                )
            })
            .then_some(network),
        "sysctl" => texts(args)
            .any(|t| {
                t.contains('=') || matches!(t, "-w" | "--write" | "-p" | "--load" | "--system")
            })
            .then_some(kernel),
        "modprobe" | "insmod" | "rmmod" | "depmod" | "kextload" | "kextunload" | "setenforce"
        | "semanage" | "auditctl" => Some(kernel),
        "shutdown" | "reboot" | "halt" | "poweroff" | "init" | "telinit" => Some(power),
        "mount" => (!ops().is_empty()).then_some(disks),
        "umount" | "fdisk" | "sfdisk" | "gdisk" | "sgdisk" | "parted" | "wipefs" | "mkswap"
        | "losetup" | "cryptsetup" | "mdadm" | "tune2fs" | "e2fsck" | "fsck" | "blkdiscard"
        | "hdparm" | "mke2fs" | "pvcreate" | "vgcreate" | "lvcreate" | "lvremove" | "vgremove"
        | "zpool" | "diskutil" => Some(disks),
        p if p.starts_with("mkfs") || p.starts_with("fsck.") => Some(disks),
        "swapon" | "swapoff" => (!has(args, &["--show", "-s", "--summary"])).then_some(disks),
        "hostname" => (!ops().is_empty()).then_some("changes the host name"),
        "hostnamectl" | "timedatectl" | "localectl" => sub
            .is_some_and(|s| s.starts_with("set"))
            .then_some("changes system settings"),
        "date" => has(args, &["-s", "--set"]).then_some("sets the system clock"),
        "hwclock" => has(args, &["-w", "--systohc", "--set", "-s", "--hctosys"])
            .then_some("sets the system clock"),
        "update-alternatives" | "alternatives" => texts(args)
            .any(|t| {
                matches!(
                    t,
                    "--install" | "--set" | "--remove" | "--config" | "--auto" | "--remove-all"
                )
            })
            .then_some("changes system-wide program links"),
        "ldconfig" | "update-grub" | "grub-install" | "grub-mkconfig" | "update-initramfs"
        | "dracut" | "mkinitcpio" | "bootctl" | "efibootmgr" => {
            Some("changes the system's boot or library configuration")
        }
        "chroot" | "nsenter" | "setcap" => Some("needs and uses administrator rights"),
        "defaults" => {
            matches!(sub, Some("write" | "delete" | "import")).then_some("changes system settings")
        }
        "journalctl" => texts(args)
            .any(|t| {
                t.starts_with("--vacuum")
                    || matches!(t, "--rotate" | "--flush" | "--relinquish-var")
            })
            .then_some("deletes or rotates the system journal"),
        "dmesg" => has(
            args,
            &["-C", "-c", "--clear", "--read-clear", "-D", "-E", "-n"],
        )
        .then_some(kernel),
        "killall" | "killall5" | "pkill" => {
            Some("kills processes by name, including ones it did not start")
        }
        "kill" => {
            // Signalling process 1 (init) or -1 (every process) takes the machine down. The
            // first argument may be a signal (`-9`, `-KILL`, `-s KILL`); `-1` after it is a pid.
            let mut t: Vec<&str> = texts(args).collect();
            match t.first().copied() {
                Some("-s" | "-n" | "--signal") => {
                    t.drain(..t.len().min(2));
                }
                Some(first) if first.starts_with('-') && first != "--" && t.len() > 1 => {
                    t.remove(0);
                }
                _ => {}
            }
            t.iter()
                .any(|a| matches!(*a, "1" | "-1"))
                .then_some("signals init or every process")
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Writes

/// The paths a command writes, deletes or changes, and what it does to them.
pub(crate) fn write_targets(prog: &str, args: &[Word]) -> Option<(Vec<Word>, &'static str)> {
    let all = |spec: Spec| {
        operands(args, spec)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    };
    let after_first = |spec: Spec| {
        let ops = operands(args, spec);
        ops.into_iter().skip(1).cloned().collect::<Vec<_>>()
    };
    // cp/ln/install: the destination is `-t DIR` or the last operand (sources are only read).
    let destination = |spec: Spec| {
        let t = option_values(args, spec, &["-t", "--target-directory"]);
        if !t.is_empty() {
            return t;
        }
        let ops = operands(args, spec);
        match ops.len() {
            0 => Vec::new(),
            // `ln -s /x/y` makes `./y`; `cp a` is an error.
            1 if prog == "ln" => Vec::new(),
            _ => ops.last().map(|w| vec![(*w).clone()]).unwrap_or_default(),
        }
    };
    let targets = match prog {
        "rm" | "rmdir" | "unlink" | "shred" | "srm" | "trash" | "trash-put" => {
            (all(NO_VALUES), "deletes")
        }
        "touch" => (
            all(Spec {
                short: "dtr",
                long: &["date", "reference"],
            }),
            "writes",
        ),
        "mkdir" => (
            all(Spec {
                short: "m",
                long: &["mode", "context"],
            }),
            "writes",
        ),
        "mkfifo" | "mknod" => (
            all(Spec {
                short: "m",
                long: &["mode"],
            })
            .into_iter()
            .take(1)
            .collect(),
            "writes",
        ),
        "truncate" => (
            all(Spec {
                short: "sr",
                long: &["size", "reference"],
            }),
            "truncates",
        ),
        "chmod" | "chown" | "chgrp" | "chattr" => {
            let spec = Spec {
                short: "",
                long: &["reference", "from"],
            };
            if texts(args).any(|t| t.starts_with("--reference")) {
                (all(spec), "changes the permissions of")
            } else {
                (after_first(spec), "changes the permissions of")
            }
        }
        "setfacl" => (
            all(Spec {
                short: "mxMX",
                long: &[
                    "modify",
                    "remove",
                    "set",
                    "set-file",
                    "modify-file",
                    "remove-file",
                ],
            }),
            "changes the permissions of",
        ),
        "mv" => {
            let spec = Spec {
                short: "tS",
                long: &["target-directory", "suffix"],
            };
            let mut v = all(spec);
            v.extend(option_values(args, spec, &["-t", "--target-directory"]));
            (v, "moves")
        }
        "cp" | "install" | "rsync" | "scp" => {
            let spec = Spec {
                short: if prog == "install" {
                    "tmgoS"
                } else if prog == "rsync" {
                    "efT"
                } else {
                    "tS"
                },
                long: &[
                    "target-directory",
                    "suffix",
                    "mode",
                    "owner",
                    "group",
                    "exclude",
                    "include",
                    "rsh",
                    "filter",
                    "temp-dir",
                    "backup-dir",
                    "partial-dir",
                ],
            };
            if prog == "install" && has(args, &["-d", "--directory"]) {
                (all(spec), "writes")
            } else {
                (destination(spec), "writes")
            }
        }
        "ln" | "link" => (
            destination(Spec {
                short: "tS",
                long: &["target-directory", "suffix"],
            }),
            "makes a link at",
        ),
        "dd" => (
            args.iter()
                .filter_map(|w| w.text.strip_prefix("of=").map(|p| with_text(w, p)))
                .collect(),
            "writes",
        ),
        "tee" => (all(NO_VALUES), "writes"),
        "sed" | "gsed" => {
            let spec = Spec {
                short: "efl",
                long: &["expression", "file", "line-length"],
            };
            let in_place = parse_args(args, spec, false).iter().any(
                |a| matches!(a, Arg::Opt { name, .. } if name == "-i" || name == "--in-place"),
            );
            if !in_place {
                return None;
            }
            let script_given = has_option(args, spec, &["-e", "--expression", "-f", "--file"]);
            (
                if script_given {
                    all(spec)
                } else {
                    after_first(spec)
                },
                "edits",
            )
        }
        "perl" => {
            let in_place = texts(args).any(|t| {
                t.starts_with('-')
                    && !t.starts_with("--")
                    && t[1..]
                        .split(['e', 'E'])
                        .next()
                        .is_some_and(|f| f.contains('i'))
            });
            if !in_place {
                return None;
            }
            (
                all(Spec {
                    short: "eEMmIx",
                    long: &[],
                }),
                "edits",
            )
        }
        "curl" => {
            let spec = Spec {
                short: "odHXdFuTAebrwmKEcC",
                long: &[
                    "output",
                    "output-dir",
                    "header",
                    "request",
                    "data",
                    "form",
                    "user",
                    "upload-file",
                    "user-agent",
                    "referer",
                    "cookie",
                    "cookie-jar",
                    "write-out",
                    "max-time",
                    "config",
                    "cert",
                    "dump-header",
                    "trace",
                    "stderr",
                ],
            };
            let mut v = option_values(
                args,
                spec,
                &[
                    "-o",
                    "--output",
                    "--output-dir",
                    "-c",
                    "--cookie-jar",
                    "-D",
                    "--dump-header",
                    "--trace",
                    "--stderr",
                ],
            );
            v.retain(|w| w.text != "-");
            (v, "writes")
        }
        "wget" => {
            let spec = Spec {
                short: "OPoaU",
                long: &[
                    "output-document",
                    "directory-prefix",
                    "output-file",
                    "append-output",
                    "user-agent",
                ],
            };
            let mut v = option_values(
                args,
                spec,
                &[
                    "-O",
                    "--output-document",
                    "-P",
                    "--directory-prefix",
                    "-o",
                    "--output-file",
                    "-a",
                    "--append-output",
                ],
            );
            v.retain(|w| w.text != "-");
            (v, "writes")
        }
        "tar" | "bsdtar" | "gtar" => {
            let first = args.first().map(|w| w.text.as_str()).unwrap_or("");
            let old_style =
                !first.starts_with('-') && first.chars().all(|c| c.is_ascii_alphabetic());
            let modes: String = texts(args)
                .filter(|t| t.starts_with('-') && !t.starts_with("--"))
                .chain(old_style.then_some(first))
                .collect();
            let extract = modes.contains('x') || has(args, &["--extract", "--get"]);
            let create = modes.contains('c')
                || modes.contains('r')
                || modes.contains('u')
                || has(args, &["--create", "--append", "--update"]);
            let spec = Spec {
                short: "fCTXbHKNgV",
                long: &[
                    "file",
                    "directory",
                    "files-from",
                    "exclude-from",
                    "exclude",
                    "transform",
                    "blocking-factor",
                    "format",
                ],
            };
            let mut v = Vec::new();
            if extract {
                v.extend(option_values(args, spec, &["-C", "--directory"]));
            }
            if create {
                v.extend(option_values(args, spec, &["-f", "--file"]));
                if old_style && first.contains('f') {
                    v.extend(args.get(1).cloned());
                }
            }
            v.retain(|w| w.text != "-");
            (v, "writes")
        }
        "unzip" => (
            option_values(
                args,
                Spec {
                    short: "dx",
                    long: &[],
                },
                &["-d"],
            ),
            "writes",
        ),
        "git" => {
            let spec = Spec {
                short: "Cc",
                long: &["git-dir", "work-tree", "namespace", "config-env"],
            };
            let ops = operands(args, spec);
            match ops.first().map(|w| w.text.as_str()) {
                Some("clone") => {
                    let pos = args
                        .iter()
                        .position(|w| w.text == "clone")
                        .map_or(args.len(), |p| p + 1);
                    let clone_ops = operands(&args[pos..], GIT_CLONE);
                    (
                        clone_ops.into_iter().skip(1).take(1).cloned().collect(),
                        "writes",
                    )
                }
                Some("init") => (ops.into_iter().skip(1).take(1).cloned().collect(), "writes"),
                Some("worktree") if ops.get(1).is_some_and(|w| w.text == "add") => {
                    (ops.into_iter().skip(2).take(1).cloned().collect(), "writes")
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(targets)
}

/// `git config --global/--system` writing (not reading) a setting.
pub(crate) fn git_config_outside(args: &[Word]) -> bool {
    let ops = operands(
        args,
        Spec {
            short: "Cc",
            long: &["git-dir", "work-tree"],
        },
    );
    if ops.first().map(|w| w.text.as_str()) != Some("config") {
        return false;
    }
    let scoped = has(args, &["--global", "--system"]);
    let reads = texts(args)
        .any(|t| t.starts_with("--get") || matches!(t, "--list" | "-l" | "get" | "list"));
    let writes = texts(args).any(|t| {
        matches!(
            t,
            "--unset"
                | "--unset-all"
                | "--add"
                | "--replace-all"
                | "--edit"
                | "-e"
                | "--rename-section"
                | "--remove-section"
                | "set"
                | "unset"
        )
    }) || ops.len() >= 3;
    scoped && (writes || !reads && ops.len() >= 3)
}

// ---------------------------------------------------------------------------------------------
// Wrappers

/// What a wrapper runs.
#[derive(Debug)]
pub(crate) enum Run {
    /// Another command, given as words.
    Words(Vec<Word>),
    /// A shell script given as one string (`su -c '…'`, `watch '…'`).
    Script(Word),
    /// Nothing (`sudo -i`, `env` alone): the wrapper itself is the whole command.
    Nothing,
    /// `xargs`: a command to which items read from the input are added (or substituted for
    /// the replace string).
    Xargs {
        words: Vec<Word>,
        replace: Option<String>,
    },
}

/// Programs that run another command given as their arguments (after options of their own).
pub(crate) fn unwrap(prog: &str, args: &[Word]) -> Option<Run> {
    let from = |spec: Spec| {
        let start = command_start(args, spec);
        words_or_nothing(&args[start.min(args.len())..])
    };
    let skip_assignments = |words: &[Word]| -> Vec<Word> {
        words
            .iter()
            .skip_while(|w| is_assignment(&w.text))
            .cloned()
            .collect()
    };
    Some(match prog {
        "sudo" => {
            let spec = Spec {
                short: "ughpCDrtUTR",
                long: &[
                    "user",
                    "group",
                    "host",
                    "prompt",
                    "close-from",
                    "chdir",
                    "role",
                    "type",
                    "other-user",
                    "command-timeout",
                    "chroot",
                ],
            };
            let start = command_start(args, spec);
            let rest = skip_assignments(&args[start.min(args.len())..]);
            // `sudo -s CMD` / `sudo -i CMD` run CMD through a shell; the words are the same.
            words_or_nothing(&rest)
        }
        "doas" => from(Spec {
            short: "uC",
            long: &[],
        }),
        "pkexec" => from(Spec {
            short: "",
            long: &["user"],
        }),
        "run0" => from(Spec {
            short: "uDg",
            long: &[
                "user",
                "group",
                "chdir",
                "setenv",
                "property",
                "slice",
                "unit",
                "description",
                "nice",
                "machine",
            ],
        }),
        "su" | "runuser" => {
            let spec = Spec {
                short: "cgGsuw",
                long: &[
                    "command",
                    "group",
                    "supp-group",
                    "shell",
                    "user",
                    "whitelist-environment",
                    "session-command",
                ],
            };
            let cmd = option_values(args, spec, &["-c", "--command", "--session-command"]);
            match cmd.into_iter().next() {
                Some(script) => Run::Script(script),
                None if prog == "runuser" => from(spec),
                None => Run::Nothing,
            }
        }
        "gosu" | "su-exec" | "chpst" => {
            // The first operand is the user.
            let start = command_start(args, NO_VALUES);
            words_or_nothing(args.get(start + 1..).unwrap_or(&[]))
        }
        "sg" | "newgrp" => match args.get(1..).unwrap_or(&[]) {
            [] => Run::Nothing,
            [c, script] if c.text == "-c" => Run::Script(script.clone()),
            rest => Run::Script(join_words(rest)),
        },
        "env" => {
            let spec = Spec {
                short: "uCSP",
                long: &[
                    "unset",
                    "chdir",
                    "split-string",
                    "block-signal",
                    "default-signal",
                    "ignore-signal",
                ],
            };
            if let Some(s) = option_values(args, spec, &["-S", "--split-string"])
                .into_iter()
                .next()
            {
                let start = command_start(args, spec);
                let mut all = vec![s];
                all.extend_from_slice(&args[start.min(args.len())..]);
                return Some(Run::Script(join_words(&all)));
            }
            let start = command_start(args, spec);
            words_or_nothing(&skip_assignments(&args[start.min(args.len())..]))
        }
        "nohup" | "builtin" | "unbuffer" | "chronic" | "setsid" | "caffeinate" | "catchsegv"
        | "nocache" | "eatmydata" | "rlwrap" | "proxychains" | "proxychains4" | "torsocks"
        | "dbus-run-session" | "tsp" => from(Spec {
            short: "w",
            long: &[],
        }),
        "time" => from(Spec {
            short: "fo",
            long: &["format", "output"],
        }),
        "exec" => from(Spec {
            short: "a",
            long: &[],
        }),
        "command" => {
            if texts(args)
                .take_while(|t| t.starts_with('-'))
                .any(|t| t.contains('v') || t.contains('V'))
            {
                return Some(Run::Nothing); // `command -v x` looks x up, it does not run it
            }
            from(NO_VALUES)
        }
        "nice" => from(Spec {
            short: "n",
            long: &["adjustment"],
        }),
        "ionice" => from(Spec {
            short: "cnp",
            long: &["class", "classdata", "pid"],
        }),
        "stdbuf" => from(Spec {
            short: "ioe",
            long: &["input", "output", "error"],
        }),
        "timeout" | "faketime" | "chrt" => {
            // One operand (duration, time, priority) before the command.
            let start = command_start(
                args,
                Spec {
                    short: "skp",
                    long: &["signal", "kill-after"],
                },
            );
            words_or_nothing(args.get(start + 1..).unwrap_or(&[]))
        }
        "taskset" => {
            let spec = Spec {
                short: "",
                long: &[],
            };
            if has(args, &["-p", "--pid"]) {
                return Some(Run::Nothing);
            }
            let start = command_start(args, spec);
            words_or_nothing(args.get(start + 1..).unwrap_or(&[]))
        }
        "flock" => {
            let spec = Spec {
                short: "cwEc",
                long: &["command", "timeout", "conflict-exit-code"],
            };
            if let Some(s) = option_values(args, spec, &["-c", "--command"])
                .into_iter()
                .next()
            {
                return Some(Run::Script(s));
            }
            let start = command_start(args, spec);
            words_or_nothing(args.get(start + 1..).unwrap_or(&[]))
        }
        "watch" => {
            let start = command_start(
                args,
                Spec {
                    short: "nqd",
                    long: &["interval", "differences", "chgexit"],
                },
            );
            let rest = &args[start.min(args.len())..];
            if rest.is_empty() {
                Run::Nothing
            } else if has(args, &["-x", "--exec"]) {
                Run::Words(rest.to_vec())
            } else {
                Run::Script(join_words(rest)) // watch runs its arguments with `sh -c`
            }
        }
        "script" => match option_values(
            args,
            Spec {
                short: "cEIOT",
                long: &["command", "log-in", "log-out", "log-timing", "echo"],
            },
            &["-c", "--command"],
        )
        .into_iter()
        .next()
        {
            Some(s) => Run::Script(s),
            None => Run::Nothing,
        },
        "strace" | "ltrace" => from(Spec {
            short: "oeEpsSuPabIX",
            long: &[
                "output",
                "trace",
                "signal",
                "attach",
                "string-limit",
                "user",
                "env",
            ],
        }),
        "valgrind" | "perf" | "gdb" => {
            let words: Vec<Word> = args
                .iter()
                .skip_while(|w| {
                    w.text.starts_with('-')
                        || matches!(w.text.as_str(), "stat" | "record" | "trace")
                })
                .cloned()
                .collect();
            words_or_nothing(&words)
        }
        "xvfb-run" => from(Spec {
            short: "nsfep",
            long: &["server-num", "server-args", "auth-file", "error-file"],
        }),
        "busybox" => words_or_nothing(args),
        "parallel" => {
            // GNU parallel: options, the command, then inputs after `:::` (or read from the
            // input). It runs the composed line through a shell, with each input put in place of
            // `{}` or added at the end.
            let sep = args
                .iter()
                .position(|w| w.text.starts_with(":::"))
                .unwrap_or(args.len());
            let spec = Spec {
                short: "jSIaEPdnNCkLlsX",
                long: &[
                    "jobs",
                    "sshlogin",
                    "arg-file",
                    "colsep",
                    "delimiter",
                    "results",
                    "joblog",
                    "tmpdir",
                    "workdir",
                    "timeout",
                    "env",
                    "halt",
                    "memfree",
                    "load",
                    "delay",
                    "retries",
                    "max-args",
                    "max-replace-args",
                ],
            };
            let head = &args[..sep];
            let cmd = &head[command_start(head, spec).min(head.len())..];
            if cmd.is_empty() {
                return Some(Run::Nothing);
            }
            let from_files = args[sep..].iter().any(|w| w.text.starts_with("::::"));
            let inputs: Vec<Word> = args[sep..]
                .iter()
                .filter(|w| !w.text.starts_with(":::"))
                .cloned()
                .collect();
            let mut line = join_words(cmd);
            if sep == args.len() || from_files {
                // Items only known at run time: a variable with an unknown value stands for them.
                line.text = if line.text.contains("{}") {
                    line.text.replace("{}", "\"$PARALLEL_ITEM\"")
                } else {
                    format!("{} \"$PARALLEL_ITEM\"", line.text)
                };
            } else {
                let items = join_words(&inputs);
                line.dynamic |= items.dynamic;
                line.text = if line.text.contains("{}") {
                    line.text.replace("{}", &items.text)
                } else {
                    format!("{} {}", line.text, items.text)
                };
            }
            Run::Script(line)
        }
        "xargs" => {
            let spec = Spec {
                short: "IiLlnPsdEeax",
                long: &[
                    "max-args",
                    "max-lines",
                    "max-procs",
                    "max-chars",
                    "delimiter",
                    "eof",
                    "arg-file",
                    "replace",
                    "process-slot-var",
                ],
            };
            let mut replace = None;
            for a in parse_args(args, spec, true) {
                if let Arg::Opt { name, value } = a {
                    match name.as_str() {
                        "-I" | "--replace" => replace = value.map(|v| v.text).or(Some("{}".into())),
                        "-i" => replace = Some(value.map_or_else(|| "{}".to_string(), |v| v.text)),
                        _ => {}
                    }
                }
            }
            let start = command_start(args, spec);
            let mut words = args[start.min(args.len())..].to_vec();
            if words.is_empty() {
                words.push(Word::literal("echo"));
            }
            Run::Xargs { words, replace }
        }
        // Project and environment runners: `uv run pytest`, `poetry run pip install x`.
        "uv" | "poetry" | "pipenv" | "pdm" | "hatch" | "rye" | "pnpm" | "bundle" | "bundler"
        | "conda" | "mamba" | "micromamba" | "mise" | "rtx" | "asdf" | "direnv" | "devbox"
        | "pixi" => {
            let first = first_operand(args, NO_VALUES)?;
            let is_runner = match prog {
                "bundle" | "bundler" | "pnpm" | "asdf" => first == "exec",
                "mise" | "rtx" => first == "exec" || first == "x",
                "direnv" => first == "exec",
                _ => first == "run",
            };
            if !is_runner {
                return None;
            }
            let pos = args.iter().position(|w| w.text == first).unwrap_or(0);
            let rest = &args[pos + 1..];
            let spec = Spec {
                short: "npeC",
                long: &[
                    "with",
                    "python",
                    "directory",
                    "project",
                    "group",
                    "extra",
                    "env-file",
                    "package",
                    "index",
                    "name",
                    "prefix",
                    "environment",
                    "from",
                ],
            };
            let rest = &rest[command_start(rest, spec).min(rest.len())..];
            // `direnv exec DIR CMD`, `mise exec node@20 -- CMD`: skip up to the command.
            let rest = match prog {
                "direnv" => rest.get(1..).unwrap_or(&[]),
                "mise" | "rtx" => match rest.iter().position(|w| w.text == "--") {
                    Some(p) => &rest[p + 1..],
                    None => rest,
                },
                _ => rest,
            };
            words_or_nothing(rest)
        }
        "nix-shell" => match option_values(
            args,
            Spec {
                short: "pIA",
                long: &["run", "command", "packages", "attr"],
            },
            &["--run", "--command"],
        )
        .into_iter()
        .next()
        {
            Some(s) => Run::Script(s),
            None => Run::Nothing,
        },
        _ => return None,
    })
}

fn words_or_nothing(words: &[Word]) -> Run {
    if words.is_empty() {
        Run::Nothing
    } else {
        Run::Words(words.to_vec())
    }
}

/// Words joined with spaces into one script (as `watch` and `env -S` do).
pub(crate) fn join_words(words: &[Word]) -> Word {
    let mut w = Word::literal(&texts(words).collect::<Vec<_>>().join(" "));
    w.dynamic = words.iter().any(|w| w.dynamic);
    w.network = words.iter().find_map(|w| w.network.clone());
    w
}

/// `NAME=value`.
pub(crate) fn is_assignment(text: &str) -> bool {
    match text.split_once('=') {
        Some((name, _)) => {
            let name = name.strip_suffix('+').unwrap_or(name);
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Interpreters

/// Whether an interpreter is a shell (its code is parsed and checked) or another language (its
/// code is not read, but where it comes from still matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lang {
    Shell,
    Other,
}

/// Where an interpreter takes its program from.
#[derive(Debug)]
pub(crate) enum Code<'w> {
    /// Given on the command line (`bash -c '…'`, `python -c '…'`).
    Inline(&'w Word),
    /// A script file (or `<(…)`, or a URL for `deno run`), with the arguments after it.
    File(&'w Word, &'w [Word]),
    /// Read from standard input (`| sh`, `python -`).
    Stdin,
    /// `python -m MODULE ARGS`: runs an installed module like a command.
    Module(Vec<Word>),
    /// This use of the program runs no code given to it (`deno test`).
    Nothing,
}

pub(crate) fn interpreter(prog: &str) -> Option<Lang> {
    match prog {
        "sh" | "bash" | "zsh" | "dash" | "ksh" | "mksh" | "ash" | "rbash" | "yash" | "posh"
        | "fish" | "tcsh" | "csh" => Some(Lang::Shell),
        "python" | "perl" | "ruby" | "node" | "php" | "pwsh" | "powershell" | "lua" | "luajit"
        | "deno" | "Rscript" | "tclsh" | "osascript" | "irb" | "jshell" | "bun" => {
            Some(Lang::Other)
        }
        _ => None,
    }
}

/// Where the interpreter `prog` takes its program from.
pub(crate) fn code_source<'w>(prog: &str, args: &'w [Word]) -> Code<'w> {
    let mut i = 0;
    if prog == "deno" || prog == "bun" {
        // `deno run [opts] FILE|URL`, `deno eval CODE`; `bun run FILE`, `bun -e CODE`; other
        // subcommands (`deno test`, `bun install`) do not run code given to them.
        match args.first().map(|w| w.text.as_str()) {
            Some("eval" | "-e" | "--eval") => {
                return args.get(1).map_or(Code::Nothing, Code::Inline);
            }
            Some("run") => i = 1,
            Some("-") => return Code::Stdin,
            Some(t)
                if prog == "bun" && !t.starts_with('-') && (t.contains('.') || t.contains('/')) =>
            {
                return Code::File(&args[0], &args[1..]);
            }
            _ => return Code::Nothing,
        }
    }
    // Option letters that take the program text, and option letters that take another value.
    let (code_opts, value_opts, long_code, long_value): (&str, &str, &[&str], &[&str]) = match prog
    {
        "sh" | "bash" | "zsh" | "dash" | "ksh" | "mksh" | "ash" | "rbash" | "yash" | "posh"
        | "fish" | "tcsh" | "csh" => (
            "",
            "oO",
            &["--command"],
            &["--rcfile", "--init-file", "--init-command"],
        ),
        "python" => ("c", "WX", &[], &["--check-hash-based-pycs"]),
        "perl" => ("eE", "IMmx", &[], &[]),
        "ruby" | "irb" => ("e", "rIECTx", &[], &[]),
        "node" | "bun" => (
            "ep",
            "r",
            &["--eval", "--print"],
            &[
                "--require",
                "--import",
                "--loader",
                "--input-type",
                "--env-file",
            ],
        ),
        "php" => ("r", "dcfzt", &[], &[]),
        "pwsh" | "powershell" => (
            "c",
            "",
            &["-Command", "-command", "-c"],
            &["-File", "-file", "-f"],
        ),
        "lua" | "luajit" => ("e", "l", &[], &[]),
        "Rscript" => ("e", "", &[], &[]),
        "deno" => ("", "", &[], &["--config", "--import-map"]),
        _ => ("", "", &[], &[]),
    };
    let shell = interpreter(prog) == Some(Lang::Shell);
    let mut command_mode = false; // sh -c: the first operand is the script
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        i += 1;
        if t == "--" {
            break;
        }
        if t == "-" {
            return Code::Stdin;
        }
        if !(t.starts_with('-') || (shell && t.starts_with('+'))) {
            i -= 1;
            break;
        }
        if t.starts_with("--") || (prog.starts_with("pw") || prog == "powershell") && t.len() > 2 {
            let name = t.split('=').next().unwrap_or(t);
            if long_code.contains(&name) {
                if shell {
                    command_mode = true;
                    continue;
                }
                return match t.split_once('=') {
                    Some(_) => Code::Inline(w),
                    None => args.get(i).map_or(Code::Stdin, Code::Inline),
                };
            }
            if long_value.contains(&name) && !t.contains('=') {
                i += 1;
            }
            continue;
        }
        let letters: Vec<char> = t[1..].chars().collect();
        for (k, c) in letters.iter().enumerate() {
            let attached = k + 1 < letters.len();
            if shell && *c == 'c' {
                command_mode = true;
            } else if shell && *c == 's' {
                return Code::Stdin;
            } else if code_opts.contains(*c) {
                return if attached {
                    Code::Inline(w) // `-e'code'`: rare; the whole word stands for the code
                } else {
                    args.get(i).map_or(Code::Stdin, Code::Inline)
                };
            } else if prog == "python" && *c == 'm' {
                // `-m pip` or `-mpip`: the module, then its arguments.
                let mut module = Vec::new();
                if attached {
                    module.push(with_text(w, &letters[k + 1..].iter().collect::<String>()));
                }
                module.extend_from_slice(args.get(i..).unwrap_or(&[]));
                return Code::Module(module);
            } else if value_opts.contains(*c) {
                if !attached {
                    i += 1;
                }
                break;
            }
        }
    }
    match args.get(i) {
        Some(w) if command_mode => Code::Inline(w),
        Some(w) if w.text == "/dev/stdin" || w.text == "-" => Code::Stdin,
        Some(w) => Code::File(w, args.get(i + 1..).unwrap_or(&[])),
        None => Code::Stdin,
    }
}

/// Whether an awk program visibly starts other programs or writes through pipes. Code for the
/// other interpreters is not read at all (it goes to the sandbox: `unsure:inline-code`); awk is
/// read this far because `awk '{print $1}'` is ordinary text processing. A textual check, not a
/// parse: it only has to notice the ways awk runs commands.
pub(crate) fn spawns_commands(prog: &str, code: &str) -> bool {
    let markers: &[&str] = match prog {
        "awk" | "gawk" | "mawk" | "nawk" => &["system(", "|&", "| \"", "|\"", "getline"],
        _ => return true,
    };
    markers.iter().any(|m| code.contains(m))
}

/// Environment variables whose value is a command some program runs through a shell.
pub(crate) fn holds_command(var: &str) -> bool {
    matches!(
        var,
        "GIT_SSH_COMMAND"
            | "GIT_PAGER"
            | "GIT_EDITOR"
            | "GIT_SEQUENCE_EDITOR"
            | "GIT_EXTERNAL_DIFF"
            | "PAGER"
            | "MANPAGER"
            | "EDITOR"
            | "VISUAL"
            | "LESSOPEN"
            | "LESSCLOSE"
            | "PROMPT_COMMAND"
            | "SSH_ASKPASS"
            | "SUDO_ASKPASS"
            | "GIT_ASKPASS"
            | "RUSTC_WRAPPER"
            | "CARGO_BUILD_RUSTC_WRAPPER"
    )
}

/// `git -c KEY=VALUE` settings whose value git runs as a shell command.
pub(crate) fn git_config_commands(args: &[Word]) -> Vec<Word> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(w) = args.get(i) {
        let pair = match w.text.as_str() {
            "-c" => {
                i += 1;
                args.get(i)
            }
            t if t.starts_with('-') => None,
            _ => break, // the subcommand: global options are over
        };
        i += 1;
        let Some(pair) = pair else { continue };
        let Some((key, value)) = pair.text.split_once('=') else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if let Some(cmd) = value
            .strip_prefix('!')
            .filter(|_| key.starts_with("alias."))
        {
            out.push(with_text(pair, cmd));
        } else if matches!(
            key.as_str(),
            "core.pager"
                | "core.editor"
                | "core.sshcommand"
                | "core.fsmonitor"
                | "sequence.editor"
                | "diff.external"
                | "gpg.program"
                | "credential.helper"
        ) || key.starts_with("pager.")
            || key.ends_with(".textconv")
            || key.ends_with(".clean")
            || key.ends_with(".smudge")
            || key.ends_with(".process")
        {
            out.push(with_text(pair, value.strip_prefix('!').unwrap_or(value)));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Network

/// Programs that fetch from the network and can write what they fetch to standard output.
pub(crate) fn fetches(prog: &str) -> bool {
    matches!(
        prog,
        "curl"
            | "wget"
            | "fetch"
            | "http"
            | "https"
            | "xh"
            | "xhs"
            | "aria2c"
            | "lwp-request"
            | "GET"
            | "lynx"
            | "links"
            | "nc"
            | "ncat"
            | "netcat"
            | "socat"
            | "iwr"
            | "irm"
            | "Invoke-WebRequest"
            | "Invoke-RestMethod"
            | "curlie"
            | "httpie"
    )
}

/// Files a download command saves (for "downloaded, then run" detection): the names given with
/// `-o`/`-O FILE`, or the URL's last segment when the tool names the file after it.
pub(crate) fn downloaded_files(prog: &str, args: &[Word]) -> Vec<String> {
    let url_name = || {
        texts(args)
            .filter(|t| t.contains("://"))
            .filter_map(|t| t.split(['?', '#']).next()?.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    };
    match prog {
        "curl" => {
            let spec = Spec {
                short: "oHXdFuTAebrwmKEcC",
                long: &[
                    "output",
                    "header",
                    "request",
                    "data",
                    "form",
                    "user",
                    "upload-file",
                    "user-agent",
                    "referer",
                    "cookie",
                    "write-out",
                    "max-time",
                    "config",
                ],
            };
            let mut names: Vec<String> = option_values(args, spec, &["-o", "--output"])
                .into_iter()
                .map(|w| w.text)
                .collect();
            if has_option(args, spec, &["-O", "--remote-name", "--remote-name-all"]) {
                names.extend(url_name());
            }
            names
        }
        "wget" => {
            let spec = Spec {
                short: "OPoaU",
                long: &["output-document", "directory-prefix", "output-file"],
            };
            let named = option_values(args, spec, &["-O", "--output-document"]);
            if named.is_empty() {
                url_name()
            } else {
                named
                    .into_iter()
                    .map(|w| w.text)
                    .filter(|t| t != "-")
                    .collect()
            }
        }
        "aria2c" => url_name(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Producers of file names (for `| xargs` and `for f in $(…)`)

/// Whether a command prints file names (and from where), for commands that then act on them.
pub(crate) fn lists_paths_from(prog: &str, args: &[Word]) -> Option<Vec<Word>> {
    match prog {
        "find" => {
            let roots: Vec<Word> = args
                .iter()
                .take_while(|w| !(w.text.starts_with('-') || w.text == "(" || w.text == "!"))
                .cloned()
                .collect();
            Some(if roots.is_empty() {
                vec![Word::literal(".")]
            } else {
                roots
            })
        }
        "ls" | "fd" | "fdfind" | "rg" | "grep" | "egrep" | "fgrep" | "ag" => {
            let ops = operands(
                args,
                Spec {
                    short: "eftgImAC",
                    long: &[
                        "regexp",
                        "file",
                        "type",
                        "glob",
                        "ignore-file",
                        "max-count",
                        "exclude",
                        "include",
                    ],
                },
            );
            let paths: Vec<Word> = match prog {
                "ls" => ops.into_iter().cloned().collect(),
                // The first operand is the pattern (unless given with -e).
                _ => ops.into_iter().skip(1).cloned().collect(),
            };
            Some(if paths.is_empty() {
                vec![Word::literal(".")]
            } else {
                paths
            })
        }
        "git" => {
            let sub = first_operand(
                args,
                Spec {
                    short: "C",
                    long: &[],
                },
            );
            matches!(
                sub,
                Some("ls-files" | "diff" | "status" | "grep" | "ls-tree")
            )
            .then(|| vec![Word::literal(".")])
        }
        _ => None,
    }
}

/// Filters that pass file names through unchanged (so a listing survives `| grep -v x`).
pub(crate) fn passes_lines_through(prog: &str) -> bool {
    matches!(
        prog,
        "grep"
            | "egrep"
            | "fgrep"
            | "rg"
            | "sort"
            | "uniq"
            | "head"
            | "tail"
            | "cat"
            | "tee"
            | "shuf"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Word> {
        s.split_whitespace().map(Word::literal).collect()
    }

    #[test]
    fn wrappers_find_the_command_they_run() {
        let run = |p: &str, a: &str| match unwrap(p, &words(a)) {
            Some(Run::Words(w)) => w
                .iter()
                .map(|w| w.text.clone())
                .collect::<Vec<_>>()
                .join(" "),
            other => format!("{other:?}"),
        };
        assert_eq!(run("sudo", "-u root -E pip install x"), "pip install x");
        assert_eq!(run("env", "-i A=1 B=2 npm ci"), "npm ci");
        assert_eq!(run("timeout", "-s KILL 10 go install x"), "go install x");
        assert_eq!(run("nice", "-n 5 make"), "make");
        assert_eq!(run("uv", "run --with rich pytest -q"), "pytest -q");
        assert!(matches!(
            unwrap("command", &words("-v pip")),
            Some(Run::Nothing)
        ));
        assert!(matches!(
            unwrap("su", &words("-c ls root")),
            Some(Run::Script(_))
        ));
    }

    #[test]
    fn interpreters_say_where_code_comes_from() {
        let w = words("-e -c ls");
        assert!(matches!(code_source("bash", &w), Code::Inline(x) if x.text == "ls"));
        let w = words("-lc ls");
        assert!(matches!(code_source("bash", &w), Code::Inline(x) if x.text == "ls"));
        assert!(matches!(code_source("sh", &words("-s -- a")), Code::Stdin));
        assert!(
            matches!(code_source("python", &words("-u script.py")), Code::File(x, _) if x.text == "script.py")
        );
        assert!(
            matches!(code_source("python", &words("-m pip install")), Code::Module(m) if m[0].text == "pip")
        );
        assert!(
            matches!(code_source("python", &words("-mpip install")), Code::Module(m) if m[0].text == "pip" && m[1].text == "install")
        );
        assert!(matches!(code_source("python", &[]), Code::Stdin));
        assert!(
            matches!(code_source("deno", &words("run -A https://x/y.ts")), Code::File(x, _) if x.text.starts_with("https"))
        );
    }

    #[test]
    fn canonical_names_fold_versions() {
        assert_eq!(canonical("/usr/bin/python3.11"), "python");
        assert_eq!(canonical("pip3"), "pip");
        assert_eq!(canonical("pipx"), "pipx");
        assert_eq!(canonical("./gradlew"), "gradlew");
    }
}
