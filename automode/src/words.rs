//! What a word of a command stands for before the shell runs it, and where a path points.
//!
//! Words are expanded *statically*: quotes removed, known variables substituted, braces
//! expanded, `~`/`$HOME` remembered as "the home directory". Whatever is only known at run time
//! (an unknown variable, a command's output) is kept as written and flagged, so a rule can
//! decide what not knowing means for it: a program name computed at run time cannot be checked;
//! an argument computed at run time usually does not matter, unless it is a path being deleted.

use crate::Policy;
use std::path::{Component, Path};

/// How a word begins: decides whether a path written with it is relative, absolute, in the home
/// directory, or unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Plain text: relative unless it starts with `/`.
    Literal,
    /// `~`, `~user` or `$HOME`.
    Home,
    /// An expansion only known at run time.
    Dynamic,
    /// An item read from a command's input (`xargs`) or found by `find` (`{}`), with what is
    /// known of where such items are.
    Input(Scope),
}

/// A word after static expansion.
#[derive(Clone, Debug)]
pub(crate) struct Word {
    /// Quotes removed; expansions not known statically as written (`$X`, `$(…)`).
    pub text: String,
    pub start: Start,
    /// Some part is only known at run time.
    pub dynamic: bool,
    /// A substitution in the word runs a command that fetches from the network (that command).
    pub network: Option<String>,
    /// The word is a process substitution (`<(…)`): a file whose content a command produces.
    pub proc_subst: bool,
}

impl Word {
    /// A word given literally (an argv element).
    pub fn literal(text: &str) -> Self {
        Self {
            text: text.to_string(),
            start: Start::Literal,
            dynamic: false,
            network: None,
            proc_subst: false,
        }
    }

    /// A placeholder for an item read at run time from where `scope` says.
    pub fn input(scope: Scope, text: &str) -> Self {
        Self {
            text: text.to_string(),
            start: Start::Input(scope),
            dynamic: true,
            network: None,
            proc_subst: false,
        }
    }

    /// The fixed text, or `None` when part of the word is only known at run time.
    pub fn fixed(&self) -> Option<&str> {
        (!self.dynamic).then_some(self.text.as_str())
    }
}

/// One character of a word being built, with how the shell treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CharKind {
    /// Unquoted, written in the source: brace expansion applies.
    Source,
    /// Quoted or escaped: taken as is.
    Quoted,
    /// Unquoted, from a variable's value: split on whitespace.
    Expanded,
}

/// A word under construction (one alternative).
#[derive(Clone, Debug, Default)]
pub(crate) struct Build {
    pub chars: Vec<(char, CharKind)>,
    pub start: Option<Start>,
    pub dynamic: bool,
    pub network: Option<String>,
    pub proc_subst: bool,
}

/// Words longer than this (`x=$x$x` repeated) are only known to be "long": the rest is treated
/// as computed at run time rather than built.
const MAX_WORD_CHARS: usize = 16 * 1024;

impl Build {
    pub fn push_str(&mut self, s: &str, kind: CharKind) {
        if self.chars.len() + s.len() > MAX_WORD_CHARS {
            self.dynamic = true;
            return;
        }
        self.chars.extend(s.chars().map(|c| (c, kind)));
    }

    /// Marks how the word starts if nothing has been added yet.
    pub fn begin(&mut self, start: Start) {
        if self.chars.is_empty() && self.start.is_none() {
            self.start = Some(start);
        }
    }

    /// Appends an expansion only known at run time, shown as written.
    pub fn push_dynamic(&mut self, shown: &str) {
        self.begin(Start::Dynamic);
        self.dynamic = true;
        self.push_str(shown, CharKind::Quoted);
    }

    /// Appends another word's value (a variable's), unquoted or quoted.
    pub fn push_word(&mut self, w: &Word, quoted: bool) {
        if self.chars.is_empty() && self.start.is_none() && w.start != Start::Literal {
            self.start = Some(w.start.clone());
        }
        self.dynamic |= w.dynamic;
        if self.network.is_none() {
            self.network.clone_from(&w.network);
        }
        let kind = if quoted {
            CharKind::Quoted
        } else {
            CharKind::Expanded
        };
        self.push_str(&w.text, kind);
    }

    /// Appends a fragment built separately.
    pub fn append(&mut self, f: &Build) {
        if self.chars.is_empty() && self.start.is_none() {
            self.start.clone_from(&f.start);
        }
        if self.chars.len() + f.chars.len() > MAX_WORD_CHARS {
            self.dynamic = true;
        } else {
            self.chars.extend(f.chars.iter().copied());
        }
        self.dynamic |= f.dynamic;
        if self.network.is_none() {
            self.network.clone_from(&f.network);
        }
        self.proc_subst |= f.proc_subst;
    }

    /// The word as one, without brace expansion or splitting (assignment values, here-docs).
    pub fn whole(self) -> Word {
        let text: String = self.chars.iter().map(|(c, _)| *c).collect();
        let start = self.start.unwrap_or(if text.starts_with('~') {
            Start::Home
        } else {
            Start::Literal
        });
        Word {
            text,
            start,
            dynamic: self.dynamic,
            network: self.network,
            proc_subst: self.proc_subst,
        }
    }

    /// Brace expansion, then splitting of unquoted expanded text: the words this becomes.
    pub fn finish(self, limit: usize) -> Vec<Word> {
        let mut out = Vec::new();
        for chars in expand_braces(&self.chars, limit) {
            for (i, piece) in split_fields(&chars).into_iter().enumerate() {
                let text: String = piece.iter().map(|(c, _)| *c).collect();
                let start = match (&self.start, i) {
                    (Some(s), 0) => s.clone(),
                    _ if piece.first() == Some(&('~', CharKind::Source)) => Start::Home,
                    _ => Start::Literal,
                };
                out.push(Word {
                    text,
                    start,
                    dynamic: self.dynamic,
                    network: self.network.clone(),
                    proc_subst: self.proc_subst,
                });
            }
        }
        out
    }
}

/// Splits on whitespace that came unquoted from a variable; a word that is entirely an empty
/// unquoted expansion disappears, as in the shell.
fn split_fields(chars: &[(char, CharKind)]) -> Vec<Vec<(char, CharKind)>> {
    if chars.is_empty() {
        return vec![Vec::new()];
    }
    let mut fields = Vec::new();
    let mut cur = Vec::new();
    let mut any_fixed = false;
    for &(c, k) in chars {
        if k == CharKind::Expanded && c.is_whitespace() {
            if !cur.is_empty() {
                fields.push(std::mem::take(&mut cur));
            }
            continue;
        }
        any_fixed |= k != CharKind::Expanded;
        cur.push((c, k));
    }
    if !cur.is_empty() {
        fields.push(cur);
    }
    if fields.is_empty() && any_fixed {
        fields.push(Vec::new());
    }
    fields
}

/// Bash brace expansion (`a{b,c}`, `{1..3}`) over unquoted source characters, at most `limit`
/// results (further ones are dropped: they have the same shape as those kept).
pub(crate) fn expand_braces(
    chars: &[(char, CharKind)],
    limit: usize,
) -> Vec<Vec<(char, CharKind)>> {
    let mut out = Vec::new();
    expand_into(chars, limit.max(1), &mut out);
    out
}

fn expand_into(chars: &[(char, CharKind)], limit: usize, out: &mut Vec<Vec<(char, CharKind)>>) {
    if out.len() >= limit {
        return;
    }
    let Some((open, close, alternatives)) = find_brace(chars) else {
        out.push(chars.to_vec());
        return;
    };
    let (prefix, suffix) = (&chars[..open], &chars[close + 1..]);
    for alt in alternatives {
        if out.len() >= limit {
            return;
        }
        let mut word = prefix.to_vec();
        word.extend(alt);
        word.extend_from_slice(suffix);
        expand_into(&word, limit, out);
    }
}

type Alternatives = Vec<Vec<(char, CharKind)>>;

/// The first expandable `{…}`: its bounds and alternatives.
fn find_brace(chars: &[(char, CharKind)]) -> Option<(usize, usize, Alternatives)> {
    let src = |i: usize, c: char| chars.get(i) == Some(&(c, CharKind::Source));
    let mut open = 0;
    while open < chars.len() {
        if src(open, '{') {
            let mut depth = 0usize;
            let mut commas = Vec::new();
            for i in open..chars.len() {
                if src(i, '{') {
                    depth += 1;
                } else if src(i, '}') {
                    depth -= 1;
                    if depth == 0 {
                        if !commas.is_empty() {
                            let mut alts = Vec::new();
                            let mut from = open + 1;
                            for &c in commas.iter().chain(std::iter::once(&i)) {
                                alts.push(chars[from..c].to_vec());
                                from = c + 1;
                            }
                            return Some((open, i, alts));
                        }
                        if let Some(alts) = sequence(&chars[open + 1..i]) {
                            return Some((open, i, alts));
                        }
                        break;
                    }
                } else if depth == 1 && src(i, ',') {
                    commas.push(i);
                }
            }
        }
        open += 1;
    }
    None
}

/// `{1..5}`, `{a..e}`, `{1..10..2}`.
fn sequence(inner: &[(char, CharKind)]) -> Option<Alternatives> {
    if inner.iter().any(|(_, k)| *k != CharKind::Source) {
        return None;
    }
    let text: String = inner.iter().map(|(c, _)| *c).collect();
    let parts: Vec<&str> = text.split("..").collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let step: i64 = match parts.get(2) {
        Some(s) => s.parse::<i64>().ok()?.checked_abs()?.max(1),
        None => 1,
    };
    let to_word = |s: String| s.chars().map(|c| (c, CharKind::Source)).collect::<Vec<_>>();
    const MAX: usize = 64;
    if let (Ok(a), Ok(b)) = (parts[0].parse::<i64>(), parts[1].parse::<i64>()) {
        let mut v = Vec::new();
        let mut x = a;
        while v.len() < MAX && ((a <= b && x <= b) || (a > b && x >= b)) {
            v.push(to_word(x.to_string()));
            x = if a <= b {
                x.checked_add(step)?
            } else {
                x.checked_sub(step)?
            };
        }
        return Some(v);
    }
    let (mut a, mut b) = (parts[0].chars(), parts[1].chars());
    let (Some(a), None, Some(b), None) = (a.next(), a.next(), b.next(), b.next()) else {
        return None;
    };
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    Some(
        (lo..=hi)
            .filter_map(char::from_u32)
            .take(MAX)
            .map(|c| to_word(c.to_string()))
            .collect(),
    )
}

/// Where a path points, relative to the working directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Inside the working directory (or a harmless device such as `/dev/null`).
    Inside,
    /// Outside it; says where, for people.
    Outside(String),
    /// Only known at run time; says why.
    Unknown(String),
}

impl Scope {
    /// Orders scopes by how much they worry us, for "the worst of these".
    fn rank(&self) -> u8 {
        match self {
            Self::Inside => 0,
            Self::Unknown(_) => 1,
            Self::Outside(_) => 2,
        }
    }

    pub fn worst(self, other: Self) -> Self {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// The shell's current directory as far as the classifier can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cwd {
    /// The working directory or a directory below it (the path components).
    Inside(Vec<String>),
    Outside(String),
    Unknown(String),
}

/// Devices a command may write to without touching anything: the null device, the terminal and
/// the process's own descriptors.
fn harmless_device(path: &str) -> bool {
    matches!(
        path,
        "/dev/null" | "/dev/stdout" | "/dev/stderr" | "/dev/stdin" | "/dev/tty" | "/dev/zero"
    ) || path.strip_prefix("/dev/fd/").is_some_and(all_digits)
        || path.strip_prefix("/proc/self/fd/").is_some_and(all_digits)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `rel` (a relative path) against the components of a directory inside the working
/// directory; `None` when it climbs above the working directory.
fn descend(mut base: Vec<String>, rel: &str) -> Option<Vec<String>> {
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                base.pop()?;
            }
            p => base.push(p.to_string()),
        }
    }
    Some(base)
}

/// Where an absolute path is relative to the working directory: the components inside it, or
/// `None` when it is outside.
fn inside_workdir(path: &str, policy: &Policy) -> Option<Vec<String>> {
    let workdir = policy.workdir()?;
    // Normalize lexically (`/a/b/../c` is `/a/c`), as the kernel would for existing directories.
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut wd: Vec<&str> = Vec::new();
    for c in workdir.components() {
        if let Component::Normal(p) = c {
            wd.push(p.to_str()?);
        }
    }
    (parts.len() >= wd.len() && parts[..wd.len()] == wd[..])
        .then(|| parts[wd.len()..].iter().map(|s| s.to_string()).collect())
}

/// Where a path argument or redirect target points, given the possible current directories.
pub(crate) fn path_scope(word: &Word, cwds: &[Cwd], policy: &Policy) -> Scope {
    match &word.start {
        Start::Home => return Scope::Outside(word.text.clone()),
        Start::Dynamic => {
            return Scope::Unknown(format!("{} is only known at run time", word.text));
        }
        Start::Input(scope) => {
            return match scope {
                Scope::Outside(w) => Scope::Outside(format!("files listed from {w}")),
                other => other.clone(),
            };
        }
        Start::Literal => {}
    }
    if word.proc_subst {
        return Scope::Inside; // a pipe to another command (checked on its own)
    }
    let text = word.text.as_str();
    if text.starts_with('/') {
        if harmless_device(text) {
            return Scope::Inside;
        }
        if text.starts_with("/dev/tcp/") || text.starts_with("/dev/udp/") {
            return Scope::Outside(format!("{text}, a network connection"));
        }
        return match inside_workdir(text, policy) {
            Some(_) => Scope::Inside,
            None => Scope::Outside(text.to_string()),
        };
    }
    let mut worst = Scope::Inside;
    for cwd in cwds {
        let scope = match cwd {
            Cwd::Inside(base) => match descend(base.clone(), text) {
                Some(_) => Scope::Inside,
                None => Scope::Outside(text.to_string()),
            },
            Cwd::Outside(dir) => Scope::Outside(format!("{text} in {dir}")),
            Cwd::Unknown(why) => Scope::Unknown(format!("{text} in a directory {why}")),
        };
        worst = worst.worst(scope);
    }
    worst
}

/// The directory `cd TARGET` leads to from each possible current directory.
pub(crate) fn change_dir(cwds: &[Cwd], target: Option<&Word>, policy: &Policy) -> Vec<Cwd> {
    let Some(target) = target else {
        return vec![Cwd::Outside("the home directory".into())];
    };
    match &target.start {
        Start::Home => return vec![Cwd::Outside(target.text.clone())],
        Start::Dynamic | Start::Input(_) => {
            return vec![Cwd::Unknown(format!(
                "({}) only known at run time",
                target.text
            ))];
        }
        Start::Literal => {}
    }
    let text = target.text.as_str();
    if text == "-" {
        return vec![Cwd::Unknown("(cd -) only known at run time".into())];
    }
    if text.starts_with('/') {
        return vec![match inside_workdir(text, policy) {
            Some(parts) => Cwd::Inside(parts),
            None => Cwd::Outside(text.to_string()),
        }];
    }
    let mut out: Vec<Cwd> = Vec::new();
    for cwd in cwds {
        let next = match cwd {
            Cwd::Inside(base) => match descend(base.clone(), text) {
                Some(parts) => Cwd::Inside(parts),
                None => Cwd::Outside(text.to_string()),
            },
            Cwd::Outside(dir) => Cwd::Outside(format!("{dir}/{text}")),
            Cwd::Unknown(why) => Cwd::Unknown(why.clone()),
        };
        if !out.contains(&next) {
            out.push(next);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(s: &str) -> Vec<String> {
        let mut b = Build::default();
        b.push_str(s, CharKind::Source);
        b.finish(64).into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn braces_expand_like_bash() {
        assert_eq!(build("a{b,c}d"), ["abd", "acd"]);
        assert_eq!(build("{sudo,ls}"), ["sudo", "ls"]);
        assert_eq!(build("x{1..3}"), ["x1", "x2", "x3"]);
        assert_eq!(build("{a,{b,c}}"), ["a", "b", "c"]);
        assert_eq!(build("{}"), ["{}"]);
        assert_eq!(build("{a}"), ["{a}"]);
        assert_eq!(build("file{,.bak}"), ["file", "file.bak"]);
    }

    #[test]
    fn quoted_braces_stay() {
        let mut b = Build::default();
        b.push_str("{a,b}", CharKind::Quoted);
        assert_eq!(b.finish(64).len(), 1);
    }

    #[test]
    fn relative_paths_resolve_against_the_current_directory() {
        let p = Policy::builtin().with_workdir(Path::new("/w/p"));
        let root = [Cwd::Inside(vec![])];
        let sub = [Cwd::Inside(vec!["build".into()])];
        let scope = |t: &str, c: &[Cwd]| path_scope(&Word::literal(t), c, &p);
        assert_eq!(scope("a/../b", &root), Scope::Inside);
        assert!(matches!(scope("../x", &root), Scope::Outside(_)));
        assert_eq!(scope("../x", &sub), Scope::Inside);
        assert_eq!(scope("/w/p/x", &root), Scope::Inside);
        assert!(matches!(scope("/w/p/../q", &root), Scope::Outside(_)));
        assert!(matches!(scope("/w/pq", &root), Scope::Outside(_)));
        assert_eq!(scope("/dev/null", &root), Scope::Inside);
        assert!(matches!(scope("/dev/tcp/h/1", &root), Scope::Outside(_)));
    }
}
