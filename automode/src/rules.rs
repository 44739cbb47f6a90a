//! The built-in rules and the walk over the syntax tree that applies them to every part.

use crate::policy::Policy;
use crate::{Decision, Mode};
use tree_sitter::{Node, Parser};

/// Nested `bash -c` strings are parsed again, up to this depth.
const MAX_DEPTH: usize = 6;

/// Syntax the classifier understands. A named node of any other kind sends the command to the
/// sandbox: when unsure of the syntax, isolate.
const KNOWN_KINDS: &[&str] = &[
    "program", "list", "pipeline", "command", "redirected_statement", "subshell",
    "compound_statement", "if_statement", "elif_clause", "else_clause", "for_statement",
    "c_style_for_statement", "while_statement", "case_statement", "case_item", "do_group",
    "function_definition", "negated_command", "test_command", "declaration_command",
    "unset_command", "variable_assignment", "variable_assignments", "command_substitution",
    "process_substitution", "string", "raw_string", "ansi_c_string", "translated_string",
    "string_content", "word", "number", "concatenation", "simple_expansion", "expansion",
    "arithmetic_expansion", "file_redirect", "heredoc_redirect", "heredoc_body", "heredoc_start",
    "heredoc_end", "heredoc_content", "herestring_redirect", "file_descriptor", "command_name",
    "variable_name", "special_variable_name", "comment", "binary_expression",
    "unary_expression", "parenthesized_expression", "postfix_expression", "test_operator",
    "regex", "extglob_pattern", "brace_expression", "array", "subscript", "ternary_expression",
    "word_list",
];

/// A word of a simple command: its text when it is fixed, `None` when it is computed at run
/// time (an expansion or substitution), and the source as written.
#[derive(Clone, Debug)]
pub(crate) struct Word {
    pub text: Option<String>,
    pub raw: String,
    pub process_substitution: bool,
}

impl Word {
    pub fn literal(text: &str) -> Self {
        Self {
            text: Some(text.to_string()),
            raw: text.to_string(),
            process_substitution: false,
        }
    }
}

fn sandbox(rule: impl Into<String>, reason: impl Into<String>, part: &str) -> Decision {
    Decision {
        decision: Mode::Sandbox,
        reason: reason.into(),
        rule: rule.into(),
        part: Some(part.trim().to_string()),
    }
}

pub(crate) struct Classifier<'p> {
    policy: &'p Policy,
}

impl<'p> Classifier<'p> {
    pub fn new(policy: &'p Policy) -> Self {
        Self { policy }
    }

    /// Classifies a whole script: the first part that must be isolated decides, else local.
    pub fn classify_script(&self, src: &str, depth: usize) -> Decision {
        if depth > MAX_DEPTH {
            return sandbox("parse:too-deep", "shell strings nested too deeply to inspect", src);
        }
        let mut parser = Parser::new();
        if parser.set_language(&tree_sitter_bash::LANGUAGE.into()).is_err() {
            return sandbox("parse:unavailable", "the shell parser could not be loaded", src);
        }
        let Some(tree) = parser.parse(src, None) else {
            return sandbox("parse:failed", "the command could not be parsed as a shell program", src);
        };
        let root = tree.root_node();
        if root.has_error() {
            let part = first_error(root).map(|n| text(n, src)).unwrap_or(src);
            return sandbox(
                "parse:syntax",
                "the command has a shell syntax error (or syntax the parser does not know), so it cannot be inspected",
                part,
            );
        }
        let mut stack = vec![root];
        let mut order = Vec::new();
        while let Some(node) = stack.pop() {
            order.push(node);
            let mut cursor = node.walk();
            let children: Vec<Node> = node.children(&mut cursor).collect();
            stack.extend(children.into_iter().rev());
        }
        // A part a user rule sent local explains the outcome better than the default does.
        let mut local_by_policy = None;
        for node in order {
            if let Some(d) = self.check_node(node, src, depth) {
                if d.decision == Mode::Sandbox {
                    return d;
                }
                if local_by_policy.is_none() && d.rule.starts_with("policy:") {
                    local_by_policy = Some(d);
                }
            }
        }
        local_by_policy.unwrap_or_else(Decision::local)
    }

    fn check_node(&self, node: Node, src: &str, depth: usize) -> Option<Decision> {
        if !node.is_named() {
            return None;
        }
        let kind = node.kind();
        if !KNOWN_KINDS.contains(&kind) {
            return Some(sandbox(
                format!("parse:unhandled:{kind}"),
                format!("the command uses shell syntax the classifier does not handle ({kind})"),
                text(node, src),
            ));
        }
        match kind {
            "command" => Some(self.classify_command(node, src, depth)),
            "file_redirect" => Some(check_redirect(node, src, self.policy)),
            "pipeline" => Some(check_pipeline(node, src)),
            _ => None,
        }
    }

    fn classify_command(&self, node: Node, src: &str, depth: usize) -> Decision {
        let mut words = Vec::new();
        let mut cursor = node.walk();
        for (i, child) in node.children(&mut cursor).enumerate() {
            match node.field_name_for_child(i as u32) {
                Some("name") | Some("argument") => words.push(word_of(child, src)),
                _ => {}
            }
        }
        if words.is_empty() {
            return Decision::local();
        }
        self.classify_words(&words, text(node, src), depth)
    }

    /// Classifies one simple command given as words (after parsing, or an argv).
    pub fn classify_words(&self, words: &[Word], part: &str, depth: usize) -> Decision {
        let words = match unwrap(words, part) {
            Ok(words) => words,
            Err(d) => return d,
        };
        let Some(first) = words.first() else {
            return Decision::local();
        };
        let Some(name) = first.text.as_deref() else {
            return sandbox(
                "parse:dynamic-program",
                "the program to run is computed at run time, so it cannot be checked",
                part,
            );
        };
        if let Some(d) = self.policy.match_user(&static_prefix(&words), part) {
            return d;
        }
        let prog = basename(name);
        let args = &words[1..];
        let arg_texts: Vec<&str> = args.iter().filter_map(|w| w.text.as_deref()).collect();

        // Shells: a -c string is a script of its own.
        if SHELLS.contains(&prog) {
            if let Some(pos) = args.iter().position(|w| w.text.as_deref().is_some_and(is_dash_c)) {
                return match args.get(pos + 1) {
                    Some(Word { text: Some(script), .. }) => self.classify_script(script, depth + 1),
                    Some(_) => sandbox(
                        "parse:dynamic-script",
                        format!("`{prog} -c` runs a script computed at run time, which cannot be inspected"),
                        part,
                    ),
                    None => Decision::local(),
                };
            }
            if args.iter().any(|w| w.process_substitution) {
                return sandbox(
                    "network-exec",
                    format!("`{prog}` runs a script produced by a process substitution (code fetched at run time)"),
                    part,
                );
            }
            return Decision::local();
        }
        match prog {
            "eval" => {
                return sandbox(
                    "parse:eval",
                    "`eval` runs a string built at run time, which cannot be inspected",
                    part,
                );
            }
            "source" | "." => {
                if args.iter().any(|w| w.process_substitution || w.text.is_none()) {
                    return sandbox(
                        "network-exec",
                        format!("`{prog}` loads a script produced at run time"),
                        part,
                    );
                }
                return Decision::local();
            }
            _ => {}
        }
        if let Some(d) = installer(prog, &arg_texts, part) {
            return d;
        }
        if let Some(d) = system_change(prog, &arg_texts, part) {
            return d;
        }
        if let Some(d) = self.file_writes(prog, args, part) {
            return d;
        }
        if prog == "find" {
            return self.classify_find(args, part, depth);
        }
        Decision::local()
    }

    fn classify_find(&self, args: &[Word], part: &str, depth: usize) -> Decision {
        let roots: Vec<&Word> = args
            .iter()
            .take_while(|w| w.text.as_deref().is_none_or(|t| !t.starts_with('-') && t != "(" && t != "!"))
            .collect();
        let texts: Vec<Option<&str>> = args.iter().map(|w| w.text.as_deref()).collect();
        if texts.contains(&Some("-delete")) {
            for root in &roots {
                if word_outside(root, self.policy) {
                    return sandbox(
                        "write-outside:find",
                        "`find -delete` deletes files outside the working directory",
                        part,
                    );
                }
            }
        }
        let mut i = 0;
        while i < args.len() {
            if matches!(texts[i], Some("-exec" | "-execdir" | "-ok" | "-okdir")) {
                let end = (i + 1..args.len())
                    .find(|&j| matches!(texts[j], Some(";" | "+" | "\\;")))
                    .unwrap_or(args.len());
                let inner = &args[i + 1..end];
                let d = self.classify_words(inner, part, depth);
                if d.decision == Mode::Sandbox {
                    return d;
                }
                i = end;
            }
            i += 1;
        }
        Decision::local()
    }

    /// Commands that write, delete or change permissions: do they touch paths outside?
    fn file_writes(&self, prog: &str, args: &[Word], part: &str) -> Option<Decision> {
        let targets: Vec<&Word> = match prog {
            "rm" | "rmdir" | "mv" | "chmod" | "chown" | "chgrp" | "truncate" | "shred" | "touch"
            | "mkdir" | "tee" | "unlink" | "chattr" | "setfacl" => {
                let mut operands: Vec<&Word> = operands(args);
                if matches!(prog, "chmod" | "chown" | "chgrp" | "chattr") && !operands.is_empty() {
                    operands.remove(0);
                }
                if prog == "truncate" {
                    // -s SIZE takes a value.
                    operands.retain(|w| w.text.as_deref().is_none_or(|t| !t.chars().all(|c| c.is_ascii_digit() || "KMGkmg+-<>".contains(c))));
                }
                operands
            }
            "cp" | "ln" | "install" | "rsync" | "scp" => operands(args).into_iter().last().into_iter().collect(),
            "dd" => args
                .iter()
                .filter(|w| w.text.as_deref().is_some_and(|t| t.starts_with("of=")))
                .collect(),
            "curl" => option_values(args, &["-o", "--output"], &["--output="]),
            "wget" => {
                let mut v = option_values(args, &["-O", "--output-document", "-P", "--directory-prefix"], &["--output-document=", "--directory-prefix="]);
                v.retain(|w| w.text.as_deref() != Some("-"));
                v
            }
            "git" => {
                let texts: Vec<&str> = args.iter().filter_map(|w| w.text.as_deref()).collect();
                if texts.first() == Some(&"config") && texts.iter().any(|t| matches!(*t, "--global" | "--system")) {
                    return Some(sandbox(
                        "write-outside:git-config",
                        "`git config --global/--system` changes configuration outside the working directory",
                        part,
                    ));
                }
                return None;
            }
            _ => {
                if prog.starts_with("mkfs") || matches!(prog, "mke2fs" | "wipefs" | "fdisk" | "parted" | "mkswap") {
                    return Some(sandbox(
                        format!("system:{prog}"),
                        format!("`{prog}` formats or partitions disks"),
                        part,
                    ));
                }
                return None;
            }
        };
        for target in targets {
            let outside = match &target.text {
                Some(t) => {
                    let t = t.strip_prefix("of=").unwrap_or(t);
                    path_outside(t, self.policy)
                }
                None => !target.raw.starts_with("\"$PWD") && !target.raw.starts_with("$PWD"),
            };
            if outside {
                let what = if target.text.is_none() {
                    format!("`{prog}` writes to a path computed at run time ({}), which may be outside the working directory", target.raw)
                } else {
                    format!("`{prog}` writes, deletes or changes permissions outside the working directory ({})", target.raw)
                };
                return Some(sandbox(format!("write-outside:{prog}"), what, part));
            }
        }
        None
    }
}

fn first_error(node: Node) -> Option<Node> {
    if node.is_error() || node.is_missing() {
        return Some(node);
    }
    let mut cursor = node.walk();
    let children: Vec<Node> = node.children(&mut cursor).collect();
    children.into_iter().find_map(first_error)
}

fn text<'a>(node: Node, src: &'a str) -> &'a str {
    src.get(node.byte_range()).unwrap_or("")
}

/// The fixed text of a word node, or `None` when part of it is computed at run time.
fn static_text(node: Node, src: &str) -> Option<String> {
    match node.kind() {
        "word" | "number" => Some(unescape(text(node, src))),
        "command_name" => node.named_child(0).and_then(|c| static_text(c, src)),
        "raw_string" => {
            let t = text(node, src);
            Some(t.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')).unwrap_or(t).to_string())
        }
        "string" => {
            let mut out = String::new();
            let mut cursor = node.walk();
            for child in node.named_children(&mut cursor) {
                if child.kind() != "string_content" {
                    return None;
                }
                out.push_str(text(child, src));
            }
            Some(out)
        }
        "concatenation" => {
            let mut out = String::new();
            let mut cursor = node.walk();
            for child in node.children(&mut cursor) {
                out.push_str(&static_text(child, src)?);
            }
            Some(out)
        }
        _ => None,
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn word_of(node: Node, src: &str) -> Word {
    Word {
        text: static_text(node, src),
        raw: text(node, src).to_string(),
        process_substitution: node.kind() == "process_substitution",
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

const SHELLS: &[&str] = &["sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "busybox"];

/// Interpreters that run code piped into them.
const INTERPRETERS: &[&str] = &[
    "sh", "bash", "zsh", "dash", "ksh", "ash", "python", "python3", "perl", "ruby", "node", "php",
    "pwsh", "fish",
];

fn is_dash_c(word: &str) -> bool {
    word.starts_with('-') && !word.starts_with("--") && word.len() > 1 && word[1..].contains('c')
}

/// The words up to the first computed one: what user prefix rules match against.
fn static_prefix(words: &[Word]) -> Vec<&str> {
    words.iter().map_while(|w| w.text.as_deref()).collect()
}

/// Strips wrappers that run another command (`env`, `nohup`, `time`, `xargs`…) and reports
/// privilege raising. Returns the words of the command that actually runs.
fn unwrap<'w>(mut words: &'w [Word], part: &str) -> Result<&'w [Word], Decision> {
    loop {
        let Some(name) = words.first().and_then(|w| w.text.as_deref()) else {
            return Ok(words);
        };
        let prog = basename(name);
        let rest = &words[1..];
        let skip = |rest: &'w [Word], with_value: &[&str]| -> &'w [Word] {
            let mut i = 0;
            while let Some(t) = rest.get(i).and_then(|w| w.text.as_deref()) {
                if t == "--" {
                    i += 1;
                    break;
                }
                if !t.starts_with('-') || t == "-" {
                    break;
                }
                i += if with_value.contains(&t) { 2 } else { 1 };
            }
            &rest[i.min(rest.len())..]
        };
        words = match prog {
            "sudo" | "su" | "doas" | "pkexec" | "run0" | "sudoedit" => {
                return Err(sandbox(
                    format!("privilege:{prog}"),
                    format!("`{prog}` raises privileges"),
                    part,
                ));
            }
            "env" => {
                if rest.iter().any(|w| matches!(w.text.as_deref(), Some("-S" | "--split-string"))) {
                    return Err(sandbox("parse:env-split", "`env -S` splits a string into a command at run time", part));
                }
                let after = skip(rest, &["-u", "--unset", "-C", "--chdir"]);
                let n = after
                    .iter()
                    .take_while(|w| w.text.as_deref().is_some_and(|t| t.contains('=') && !t.starts_with('=')))
                    .count();
                &after[n..]
            }
            "nohup" | "time" | "exec" | "builtin" | "stdbuf" | "unbuffer" | "chronic" | "setsid" => {
                skip(rest, &["-o", "-e", "-i", "-f"])
            }
            "command" => {
                if rest.first().and_then(|w| w.text.as_deref()).is_some_and(|t| t == "-v" || t == "-V") {
                    return Ok(&[]);
                }
                skip(rest, &[])
            }
            "nice" | "ionice" | "chrt" | "taskset" => skip(rest, &["-n", "-c", "-p", "--adjustment"]),
            "timeout" => {
                let after = skip(rest, &["-s", "--signal", "-k", "--kill-after"]);
                after.get(1..).unwrap_or(&[])
            }
            "watch" => skip(rest, &["-n", "--interval", "-d"]),
            "xargs" => skip(
                rest,
                &["-n", "-L", "-P", "-I", "-d", "-E", "-s", "-a", "--max-args", "--max-procs", "--delimiter", "--arg-file"],
            ),
            _ => return Ok(words),
        };
    }
}

/// Non-option arguments (after `--`, everything).
fn operands(args: &[Word]) -> Vec<&Word> {
    let mut out = Vec::new();
    let mut options_done = false;
    for w in args {
        match w.text.as_deref() {
            Some("--") if !options_done => options_done = true,
            Some(t) if !options_done && t.starts_with('-') && t.len() > 1 => {}
            _ => out.push(w),
        }
    }
    out
}

/// The values of the given options (`-o FILE`, `--output=FILE`).
fn option_values<'w>(args: &'w [Word], flags: &[&str], prefixed: &[&str]) -> Vec<&'w Word> {
    let mut out = Vec::new();
    for (i, w) in args.iter().enumerate() {
        let Some(t) = w.text.as_deref() else { continue };
        if flags.contains(&t) {
            if let Some(v) = args.get(i + 1) {
                out.push(v);
            }
        } else if prefixed.iter().any(|p| t.starts_with(p)) {
            out.push(w);
        }
    }
    out
}

/// Whether a path (as written) points outside the working directory.
pub(crate) fn path_outside(path: &str, policy: &Policy) -> bool {
    let path = path.split_once('=').filter(|(k, _)| k == &"of").map(|(_, v)| v).unwrap_or(path);
    if matches!(path, "/dev/null" | "/dev/stdout" | "/dev/stderr" | "/dev/tty" | "-")
        || path.starts_with("/dev/fd/")
    {
        return false;
    }
    if path.starts_with('~') || path.starts_with("$HOME") || path.starts_with("${HOME}") {
        return true;
    }
    if path.starts_with('/') {
        return match policy.workdir() {
            Some(dir) => {
                let dir = dir.trim_end_matches('/');
                !(path == dir || path.starts_with(&format!("{dir}/"))) || escapes(&path[dir.len()..])
            }
            None => true,
        };
    }
    escapes(path)
}

/// A relative path that climbs above where it starts (`..`, `a/../../b`).
fn escapes(relative: &str) -> bool {
    let mut depth: i32 = 0;
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn word_outside(word: &Word, policy: &Policy) -> bool {
    match &word.text {
        Some(t) => path_outside(t, policy),
        None => true,
    }
}

/// Output redirections to paths outside the working directory.
fn check_redirect(node: Node, src: &str, policy: &Policy) -> Decision {
    let mut writes = false;
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        if !child.is_named() && matches!(child.kind(), ">" | ">>" | "&>" | "&>>" | ">|" | ">&" | "&>|") {
            writes = true;
        }
    }
    if !writes {
        return Decision::local();
    }
    let Some(dest) = node.child_by_field_name("destination") else {
        return Decision::local();
    };
    if dest.kind() == "number" {
        return Decision::local(); // 2>&1: a descriptor, not a file
    }
    let word = word_of(dest, src);
    let outside = match &word.text {
        Some(t) => path_outside(t, policy),
        None => true,
    };
    if outside {
        sandbox(
            "write-outside:redirect",
            format!("the output is redirected to {}, outside the working directory", word.raw),
            text(node, src),
        )
    } else {
        Decision::local()
    }
}

/// `curl … | sh` and the like: code fetched from the network piped into an interpreter.
fn check_pipeline(node: Node, src: &str) -> Decision {
    let mut fetched = false;
    let mut cursor = node.walk();
    for child in node.named_children(&mut cursor) {
        let command = if child.kind() == "redirected_statement" {
            child.child_by_field_name("body").unwrap_or(child)
        } else {
            child
        };
        if command.kind() != "command" {
            continue;
        }
        let Some(name) = command.child_by_field_name("name").and_then(|n| static_text(n, src)) else {
            continue;
        };
        let mut words = vec![Word::literal(&name)];
        let mut c2 = command.walk();
        for (i, arg) in command.children(&mut c2).enumerate() {
            if command.field_name_for_child(i as u32) == Some("argument") {
                words.push(word_of(arg, src));
            }
        }
        let prog = match unwrap(&words, "") {
            Ok(w) => w.first().and_then(|w| w.text.clone()),
            // sudo in a pipeline is caught as its own part
            Err(_) => words.get(1).and_then(|w| w.text.clone()),
        };
        let Some(prog) = prog else { continue };
        let prog = basename(&prog);
        if matches!(prog, "curl" | "wget" | "fetch" | "aria2c" | "http" | "https" | "iwr") {
            fetched = true;
        } else if fetched && INTERPRETERS.contains(&prog) {
            return sandbox(
                "network-exec",
                format!("code fetched from the network is piped into `{prog}`"),
                text(node, src),
            );
        }
    }
    Decision::local()
}

/// What package managers do that changes the system: (read-only subcommands are local).
fn installer(prog: &str, args: &[&str], part: &str) -> Option<Decision> {
    let sub = args.iter().find(|a| !a.starts_with('-')).copied().unwrap_or("");
    let has = |flags: &[&str]| args.iter().any(|a| flags.contains(a));
    let found = |what: &str| {
        Some(sandbox(
            format!("install:{prog}"),
            format!("`{prog}` {what}"),
            part,
        ))
    };
    let base = prog.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    match base {
        "pip" => matches!(sub, "install" | "uninstall" | "download" | "wheel")
            .then(|| found("installs or removes Python packages"))
            .flatten(),
        "python" | "py" | "pypy" => {
            let m = args.iter().position(|a| *a == "-m")?;
            match args.get(m + 1).copied() {
                Some("pip") => installer("pip", &args[m + 2..], part),
                Some("ensurepip") => found("installs pip"),
                _ => None,
            }
        }
        "uv" => {
            let second = args.iter().filter(|a| !a.starts_with('-')).nth(1).copied().unwrap_or("");
            let installs = match sub {
                "add" | "remove" | "sync" => true,
                "pip" => matches!(second, "install" | "uninstall" | "sync"),
                "tool" => matches!(second, "install" | "upgrade" | "uninstall" | "run"),
                "python" => matches!(second, "install" | "uninstall"),
                _ => false,
            };
            installs.then(|| found("installs or removes Python packages or tools")).flatten()
        }
        "uvx" | "pipx" if !(prog == "pipx" && matches!(sub, "list" | "")) => {
            found("installs Python tools (or downloads and runs them)")
        }
        "poetry" | "pdm" | "hatch" | "rye" => matches!(sub, "add" | "install" | "remove" | "update" | "sync" | "self")
            .then(|| found("installs or removes Python packages"))
            .flatten(),
        "conda" | "mamba" | "micromamba" => matches!(sub, "install" | "create" | "remove" | "uninstall" | "update" | "upgrade" | "env")
            .then(|| found("installs or removes packages"))
            .flatten(),
        "npm" | "pnpm" | "yarn" | "bun" | "cnpm" => {
            let global = has(&["-g", "--global", "--location=global"]);
            let installs = global
                || matches!(
                    sub,
                    "install" | "i" | "add" | "ci" | "uninstall" | "remove" | "rm" | "un" | "update" | "upgrade" | "up"
                        | "exec" | "dlx" | "x" | "link" | "global" | "create" | "init"
                )
                || (base == "yarn" && sub.is_empty());
            installs.then(|| found("installs, removes or downloads-and-runs JavaScript packages")).flatten()
        }
        "npx" | "pnpx" | "bunx" => found("downloads and runs a package"),
        "apt" | "apt-get" | "aptitude" => matches!(
            sub,
            "install" | "remove" | "purge" | "upgrade" | "full-upgrade" | "dist-upgrade" | "update" | "autoremove" | "build-dep" | "reinstall"
        )
        .then(|| found("installs or removes system packages"))
        .flatten(),
        "dpkg" => has(&["-i", "--install", "-r", "--remove", "-P", "--purge", "--unpack", "--configure"])
            .then(|| found("installs or removes system packages"))
            .flatten(),
        "yum" | "dnf" | "microdnf" | "zypper" | "apk" | "brew" | "snap" | "flatpak" | "port" | "emerge" | "choco" | "winget" | "scoop" => {
            let read_only = matches!(
                sub,
                "list" | "search" | "info" | "show" | "query" | "help" | "outdated" | "doctor" | "config" | "desc" | "deps" | "leaves" | "repolist" | ""
            );
            (!read_only).then(|| found("installs, removes or updates system packages")).flatten()
        }
        "pacman" | "yay" | "paru" => args
            .iter()
            .any(|a| a.starts_with("-S") || a.starts_with("-R") || a.starts_with("-U") || a.starts_with("--sync") || a.starts_with("--remove") || a.starts_with("--upgrade"))
            .then(|| found("installs or removes system packages"))
            .flatten(),
        "rpm" => has(&["-i", "-U", "-e", "--install", "--upgrade", "--erase", "-ivh", "-Uvh"])
            .then(|| found("installs or removes system packages"))
            .flatten(),
        "gem" => matches!(sub, "install" | "uninstall" | "update")
            .then(|| found("installs or removes Ruby gems"))
            .flatten(),
        "bundle" | "bundler" => matches!(sub, "install" | "update" | "add")
            .then(|| found("installs Ruby gems"))
            .flatten(),
        "cargo" => matches!(sub, "install" | "uninstall" | "binstall")
            .then(|| found("installs or removes Rust binaries"))
            .flatten(),
        "go" => matches!(sub, "install" | "get")
            .then(|| found("installs Go packages or binaries"))
            .flatten(),
        "rustup" => (!matches!(sub, "show" | "which" | "--version" | "help" | "")).then(|| found("installs or changes Rust toolchains")).flatten(),
        "nix-env" => has(&["-i", "--install", "-e", "--uninstall", "-u", "--upgrade", "-iA"])
            .then(|| found("installs or removes Nix packages"))
            .flatten(),
        "nix" => matches!(sub, "profile" | "run" | "shell")
            .then(|| found("installs or downloads-and-runs Nix packages"))
            .flatten(),
        "composer" => (matches!(sub, "require" | "install" | "update" | "remove") || has(&["global"]))
            .then(|| found("installs PHP packages"))
            .flatten(),
        "sdk" | "asdf" | "mise" | "nvm" | "pyenv" | "rbenv" | "volta" | "fnm" => matches!(sub, "install" | "uninstall" | "plugin" | "use" | "global")
            .then(|| found("installs language runtimes"))
            .flatten(),
        _ => None,
    }
}

/// Commands that change the host system itself.
fn system_change(prog: &str, args: &[&str], part: &str) -> Option<Decision> {
    let sub = args.iter().find(|a| !a.starts_with('-')).copied().unwrap_or("");
    let changes = match prog {
        "systemctl" => !(sub.starts_with("list") || sub.starts_with("is-") || matches!(sub, "status" | "show" | "cat" | "")),
        "service" | "mount" | "umount" | "useradd" | "userdel" | "usermod" | "groupadd" | "groupdel"
        | "groupmod" | "passwd" | "chpasswd" | "visudo" | "iptables" | "ip6tables" | "nft" | "ufw"
        | "firewall-cmd" | "modprobe" | "insmod" | "rmmod" | "shutdown" | "reboot" | "halt"
        | "poweroff" | "swapon" | "swapoff" | "hostnamectl" | "timedatectl" | "update-alternatives"
        | "ldconfig" | "launchctl" | "chsh" | "killall5" | "init" | "telinit" | "chroot" | "setcap"
        | "update-grub" | "grub-install" | "localectl" | "adduser" | "deluser" | "addgroup" => true,
        "crontab" => !args.contains(&"-l"),
        "sysctl" => args.iter().any(|a| a.contains('=') || matches!(*a, "-w" | "-p" | "--write" | "--load" | "--system")),
        "kill" | "pkill" => args.iter().any(|a| matches!(*a, "1" | "-1")),
        _ => false,
    };
    changes.then(|| {
        sandbox(
            format!("system:{prog}"),
            format!("`{prog}` changes the host system"),
            part,
        )
    })
}
