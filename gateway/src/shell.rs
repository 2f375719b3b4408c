//! Exec commands and shell lines as the commands they run: POSIX shell words (quotes and escapes
//! removed), lists split at `;`, `&`, `&&`, `|`, `||` and newlines, redirections set aside, and the
//! commands that common wrappers run (`env`, `exec`, `sudo`, `nohup`, `timeout`, `sh -c`, `eval`,
//! …) unwrapped. Policy matches command rules on these argvs, not on the shell source, so that
//! `systemctl 're'start app` is `systemctl restart app`.
//!
//! Anything whose words depend on the host is *opaque*, with the reason: expansions (`$`, `` ` ``),
//! pathname, brace and tilde expansion, subshells, compound commands, here-documents, history
//! expansion, quoting inside a command word, unterminated quotes. The gateway cannot know what an
//! opaque line runs; policy refuses it where a rule about commands would have to decide.
//!
//! Why not a crate: `shlex` and `shell-words` split words exactly, but treat `;`, `|`, `&`, `$` as
//! ordinary characters and do not report which characters were quoted, so they cannot tell
//! `a;b` from `'a;b'`. This is a whitelist: it understands words, quotes and list and redirection
//! operators, and calls everything else opaque.

/// One command: the words it runs with, after quote removal.
pub type Argv = Vec<String>;

/// Nested `sh -c`, `eval`, `env`, … deeper than this are opaque.
const MAX_DEPTH: usize = 8;

/// An exec command or a shell line, analysed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    source: String,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Static {
        /// Every command the line runs: the commands of the list in order, each followed by the
        /// commands its wrappers run.
        commands: Vec<Argv>,
        /// One command, no operator, redirection or variable assignment: exactly `commands[0]`.
        plain: bool,
    },
    Opaque(String),
}

impl CommandLine {
    pub fn parse(source: &str) -> CommandLine {
        let shape = match analyse(source, 0) {
            Ok(list) => Shape::Static {
                plain: list.plain,
                commands: list.commands,
            },
            Err(reason) => Shape::Opaque(reason),
        };
        CommandLine {
            source: source.to_string(),
            shape,
        }
    }

    /// The line as the job sent it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every command the line runs, or why the gateway cannot tell.
    pub fn commands(&self) -> Result<&[Argv], &str> {
        match &self.shape {
            Shape::Static { commands, .. } => Ok(commands),
            Shape::Opaque(reason) => Err(reason),
        }
    }

    /// The one command of a line that is nothing else (no list, redirection or assignment).
    pub fn plain(&self) -> Option<&Argv> {
        match &self.shape {
            Shape::Static {
                commands,
                plain: true,
            } => commands.first(),
            _ => None,
        }
    }
}

/// The argv as rules match it: words joined with single spaces, a word that is empty or holds
/// anything but `A-Za-z0-9_@%+=:,./-` in single quotes (`echo 'a b'`).
pub fn render(argv: &[String]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    argv.iter()
        .map(|w| {
            if !w.is_empty() && w.chars().all(safe) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The base name of a command word (`/usr/bin/env` → `env`).
pub fn program(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

struct List {
    commands: Vec<Argv>,
    plain: bool,
}

/// A word being read: its text, and the characters that were not quoted (quoted ones as NUL,
/// which the line cannot contain).
#[derive(Default)]
struct Word {
    text: String,
    unquoted: String,
    quoted: bool,
}

impl Word {
    fn push(&mut self, c: char, quoted: bool) {
        self.text.push(c);
        self.unquoted.push(if quoted { '\0' } else { c });
        self.quoted |= quoted;
    }
}

#[derive(Default)]
struct Simple {
    words: Vec<Word>,
    redirections: usize,
}

fn opaque(what: &str) -> Result<List, String> {
    Err(what.to_string())
}

const RESERVED: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
    "in", "select", "function", "{", "}", "!", "[[", "]]", "coproc",
];

/// Splits `source` into simple commands and analyses each.
fn analyse(source: &str, depth: usize) -> Result<List, String> {
    if depth > MAX_DEPTH {
        return opaque("commands nested too deeply");
    }
    let mut chars = source.chars().peekable();
    let mut simples: Vec<Simple> = Vec::new();
    let mut cur = Simple::default();
    let mut word: Option<Word> = None;
    let mut target = false; // the next word is a redirection's target
    let mut joined = false; // `&` or `|` between commands
    let mut open_operator = false; // the last token was an operator that needs a command after it
    let first = source.trim_start_matches([' ', '\t']);
    if first.starts_with('^') {
        return opaque("history substitution (^)");
    }

    // Ends the word being read.
    fn finish(word: &mut Option<Word>, cur: &mut Simple, target: &mut bool) -> Result<(), String> {
        let Some(w) = word.take() else { return Ok(()) };
        check_word(&w)?;
        if *target {
            *target = false;
        } else {
            cur.words.push(w);
        }
        Ok(())
    }

    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => finish(&mut word, &mut cur, &mut target)?,
            '\n' | ';' | '&' | '|' => {
                finish(&mut word, &mut cur, &mut target)?;
                if target {
                    return opaque("a redirection without a target");
                }
                let needs_command = match c {
                    ';' if matches!(chars.peek(), Some(';' | '&')) => {
                        return opaque("case syntax (;;)");
                    }
                    '&' if chars.peek() == Some(&'>') => {
                        // `&>` / `&>>`: stdout and stderr to a file.
                        chars.next();
                        if chars.peek() == Some(&'>') {
                            chars.next();
                        }
                        cur.redirections += 1;
                        target = true;
                        continue;
                    }
                    '&' if chars.peek() == Some(&'&') => {
                        chars.next();
                        true
                    }
                    '|' if matches!(chars.peek(), Some('|' | '&')) => {
                        chars.next();
                        joined = true;
                        true
                    }
                    '&' | '|' => {
                        joined = true;
                        c == '|'
                    }
                    _ => false,
                };
                if cur.words.is_empty() && cur.redirections == 0 {
                    if c != '\n' {
                        return opaque("a syntax error (an operator without a command)");
                    }
                    if open_operator {
                        continue; // `a &&` newline `b`
                    }
                } else {
                    simples.push(std::mem::take(&mut cur));
                }
                open_operator = needs_command;
            }
            '<' | '>' => {
                // A word of digits right before is the file descriptor (`2>&1`).
                if let Some(w) = &word {
                    if !w.quoted && !w.text.is_empty() && w.text.chars().all(|d| d.is_ascii_digit())
                    {
                        word = None;
                    } else {
                        finish(&mut word, &mut cur, &mut target)?;
                    }
                }
                if target {
                    return opaque("a redirection without a target");
                }
                match (c, chars.peek()) {
                    ('<', Some('<')) => return opaque("a here-document (<<)"),
                    ('<', Some('&' | '>')) | ('>', Some('>' | '&' | '|')) => {
                        chars.next();
                    }
                    _ => {}
                }
                if chars.peek() == Some(&'(') {
                    return opaque("process substitution");
                }
                cur.redirections += 1;
                target = true;
                open_operator = false;
            }
            '(' | ')' => return opaque("a subshell, function or arithmetic ( )"),
            '$' => return opaque("shell expansion ($)"),
            '`' => return opaque("command substitution (`…`)"),
            '\'' => {
                let w = word.get_or_insert_with(Word::default);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(q) => w.push(q, true),
                        None => return opaque("an unterminated quote"),
                    }
                }
                w.quoted = true;
            }
            '"' => {
                let w = word.get_or_insert_with(Word::default);
                w.quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(e @ ('$' | '`' | '"' | '\\')) => w.push(e, true),
                            Some(e) => {
                                w.push('\\', true);
                                w.push(e, true);
                            }
                            None => return opaque("an unterminated quote"),
                        },
                        Some('$') => return opaque("shell expansion ($)"),
                        Some('`') => return opaque("command substitution (`…`)"),
                        Some('!')
                            if !matches!(chars.peek(), Some('"' | ' ' | '\t' | '=') | None) =>
                        {
                            return opaque("history expansion (!)");
                        }
                        Some(q) => w.push(q, true),
                        None => return opaque("an unterminated quote"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {} // a line continuation joins the words around it
                Some(e) => word.get_or_insert_with(Word::default).push(e, true),
                None => return opaque("a line that continues (\\ at the end)"),
            },
            '#' if word.is_none() => {
                // A comment, unless a shell without interactive comments (zsh) would run it: then
                // it must be harmless as a command too.
                let mut comment = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '\n' {
                        break;
                    }
                    comment.push(n);
                    chars.next();
                }
                if comment.chars().any(|k| ";&|<>()$`'\"\\".contains(k)) {
                    return opaque("shell syntax inside a comment");
                }
            }
            '!' if !matches!(chars.peek(), Some(' ' | '\t' | '\n' | '=') | None) => {
                return opaque("history expansion (!)");
            }
            c if c.is_control() => return opaque("control characters"),
            c => word.get_or_insert_with(Word::default).push(c, false),
        }
    }
    finish(&mut word, &mut cur, &mut target)?;
    if target {
        return opaque("a redirection without a target");
    }
    if cur.words.is_empty() && cur.redirections == 0 {
        if open_operator {
            return opaque("a line that continues (an operator at the end)");
        }
    } else {
        simples.push(cur);
    }

    let plain = simples.len() == 1 && simples[0].redirections == 0 && !joined;
    let mut list = List {
        commands: Vec::new(),
        plain,
    };
    for simple in simples {
        let mut words = simple.words.into_iter().peekable();
        // Leading NAME=value words set the environment of the command.
        let mut assigned = false;
        while words.peek().is_some_and(is_assignment) {
            words.next();
            assigned = true;
        }
        list.plain &= !assigned;
        let Some(command) = words.next() else {
            continue; // only assignments or redirections: no command runs
        };
        if command.quoted {
            return opaque("quoting in the command word");
        }
        if RESERVED.contains(&command.text.as_str()) {
            return opaque("a compound command (if, for, while, case, { }, !)");
        }
        let argv: Argv = std::iter::once(command.text)
            .chain(words.map(|w| w.text))
            .collect();
        list.commands.push(argv.clone());
        list.commands.extend(unwrap(&argv, depth)?);
    }
    Ok(list)
}

/// Expansions that depend on the host's files or users, checked when a word is complete.
fn check_word(w: &Word) -> Result<(), String> {
    let u = &w.unquoted;
    let bracket = u.find('[').is_some_and(|at| u[at + 1..].contains(']'));
    if u.contains(['*', '?']) || bracket {
        return Err("pathname expansion (*, ?, [)".into());
    }
    // Tilde expansion: at the start of a word, or after `=` or `:` (assignments, `--opt=~`).
    if u.starts_with('~') || u.contains("=~") || u.contains(":~") {
        return Err("tilde expansion (~)".into());
    }
    // Brace expansion: an unquoted `{` with a `,` or `..` before its `}`.
    for (open, _) in u.match_indices('{') {
        if let Some(close) = u[open..].find('}') {
            let inside = &u[open + 1..open + close];
            if inside.contains(',') || inside.contains("..") {
                return Err("brace expansion ({a,b})".into());
            }
        }
    }
    Ok(())
}

fn is_assignment(w: &Word) -> bool {
    let Some((name, _)) = w.unquoted.split_once('=') else {
        return false;
    };
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The commands a wrapper or an interpreter runs for `argv`, recursively.
fn unwrap(argv: &[String], depth: usize) -> Result<Vec<Argv>, String> {
    let name = program(&argv[0]);
    let rest = &argv[1..];
    let inner: Option<&[String]> = match name {
        "env" => {
            let mut i = 0;
            while let Some(w) = rest.get(i) {
                match w.as_str() {
                    "-S" | "--split-string" => {
                        return Err("env -S (a command in one string)".into());
                    }
                    w if w.starts_with("-S") || w.starts_with("--split-string=") => {
                        return Err("env -S (a command in one string)".into());
                    }
                    "-u" | "--unset" | "-C" | "--chdir" => i += 2,
                    "--" => {
                        i += 1;
                        break;
                    }
                    w if w.starts_with('-') => i += 1,
                    w if w.contains('=') => i += 1,
                    _ => break,
                }
            }
            rest.get(i..)
        }
        "exec" => Some(skip_options(rest, &["-a"])),
        "command" => {
            if rest.first().is_some_and(|w| w == "-v" || w == "-V") {
                None
            } else {
                Some(skip_options(rest, &[]))
            }
        }
        "builtin" | "nohup" | "time" | "setsid" => Some(skip_options(rest, &[])),
        "nice" => Some(skip_options(rest, &["-n"])),
        "stdbuf" => Some(skip_options(rest, &["-i", "-o", "-e"])),
        "timeout" => skip_options(rest, &["-s", "-k"]).get(1..),
        "sudo" | "doas" => {
            // With -s or -i, sudo hands the command to a shell as one line.
            let shell = rest.iter().take_while(|w| w.starts_with('-')).any(|w| {
                w == "--shell"
                    || w == "--login"
                    || (!w.starts_with("--") && (w.contains('s') || w.contains('i')))
            });
            let after = skip_options(
                rest,
                &[
                    "-u", "-g", "-h", "-p", "-r", "-t", "-C", "-D", "-U", "-T", "-R",
                ],
            );
            let at = after.iter().take_while(|w| w.contains('=')).count();
            if shell && after.len() > at {
                return nested(&after[at..].join(" "), depth);
            }
            after.get(at..)
        }
        "busybox" => Some(rest),
        "eval" => return nested(&rest.join(" "), depth),
        "su" | "runuser" => {
            let mut command = None;
            let mut words = rest.iter();
            while let Some(w) = words.next() {
                if w == "-c" || w == "--command" {
                    command = words.next();
                } else if let Some(c) = w.strip_prefix("--command=") {
                    return nested(c, depth);
                }
            }
            return match command {
                Some(c) => nested(c, depth),
                None => Ok(Vec::new()),
            };
        }
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "posh" | "yash" => {
            let mut words = rest.iter();
            let mut string = false;
            while let Some(w) = words.next() {
                match w.as_str() {
                    "-o" | "+o" | "-O" | "+O" | "--rcfile" | "--init-file" => {
                        words.next();
                    }
                    "--" => break,
                    w if w.starts_with("--") => {}
                    w if (w.starts_with('-') || w.starts_with('+')) && w.len() > 1 => {
                        string |= w.starts_with('-') && w.contains('c');
                    }
                    _ => {
                        if string {
                            return nested(w, depth);
                        }
                        break;
                    }
                }
            }
            if string {
                // `-c` takes the first operand: after `--`.
                return match words.next() {
                    Some(c) => nested(c, depth),
                    None => Ok(Vec::new()),
                };
            }
            None
        }
        _ => None,
    };
    let Some(inner) = inner.filter(|i| !i.is_empty()) else {
        return Ok(Vec::new());
    };
    // The wrapped command word counts as one: the same checks as at the start of a line.
    if RESERVED.contains(&inner[0].as_str()) {
        return Err("a compound command (if, for, while, case, { }, !)".into());
    }
    let mut out = vec![inner.to_vec()];
    out.extend(unwrap(inner, depth + 1)?);
    Ok(out)
}

/// Commands of a string a program runs as shell source (`sh -c STRING`, `eval ARGS`).
fn nested(source: &str, depth: usize) -> Result<Vec<Argv>, String> {
    analyse(source, depth + 1)
        .map(|l| l.commands)
        .map_err(|reason| format!("{reason}, in a command run by a shell"))
}

/// The words after a wrapper's options (`-x`, `--long`, and the value of each option listed in
/// `with_value` given as a separate word); stops at `--` or the first operand.
fn skip_options<'a>(words: &'a [String], with_value: &[&str]) -> &'a [String] {
    let mut i = 0;
    while let Some(w) = words.get(i) {
        if w == "--" {
            return &words[i + 1..];
        }
        if !w.starts_with('-') || w.len() == 1 {
            break;
        }
        i += if with_value.contains(&w.as_str()) {
            2
        } else {
            1
        };
    }
    words.get(i..).unwrap_or(&[])
}

#[cfg(test)]
mod tests;
