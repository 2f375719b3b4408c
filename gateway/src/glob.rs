//! Shell-style wildcard matching for names and claim values: `*` matches any run of characters
//! (including `/` and `:`), `?` one character; everything else matches itself.
//!
//! Matching is globset's, on patterns translated to its syntax (every other character escaped, so
//! `[`, `{` and `\` in a name stay literal). Patterns come from the configuration, a small fixed
//! set: each thread keeps them compiled (bounded), so a match costs a lookup and globset's match.

use std::{cell::RefCell, collections::HashMap};

use globset::{Glob, GlobBuilder, GlobMatcher};

/// Compiled patterns kept per thread; past this, the cache starts over.
const CACHE_CAPACITY: usize = 4096;

thread_local! {
    static COMPILED: RefCell<HashMap<Box<str>, Option<GlobMatcher>>> = RefCell::new(HashMap::new());
}

/// The pattern in globset's syntax: `*` and `?` as they are (a run of `*` as one), the rest escaped.
fn translate(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut last_star = false;
    for c in pattern.chars() {
        match c {
            '*' if last_star => continue,
            '*' | '?' => out.push(c),
            '[' | ']' | '{' | '}' | '\\' | ',' | '!' | '^' | '-' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
        last_star = c == '*';
    }
    out
}

/// The pattern as a globset `Glob`, for callers that compile many patterns into one set.
pub(crate) fn glob(pattern: &str) -> Option<Glob> {
    GlobBuilder::new(&translate(pattern))
        .literal_separator(false)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .ok()
}

fn compile(pattern: &str) -> Option<GlobMatcher> {
    glob(pattern).map(|g| g.compile_matcher())
}

pub fn matches(pattern: &str, text: &str) -> bool {
    COMPILED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(pattern.into(), compile(pattern));
        }
        // A pattern globset cannot compile matches nothing (none is known: everything is escaped).
        cache
            .get(pattern)
            .and_then(Option::as_ref)
            .is_some_and(|m| m.is_match(text))
    })
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything/at:all"));
        assert!(matches(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/app:ref:refs/heads/main"
        ));
        assert!(!matches(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/app:ref:refs/heads/dev"
        ));
        assert!(matches("db-?", "db-1"));
        assert!(!matches("db-?", "db-12"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(!matches("", "x"));
        assert!(matches("a**b", "a/x/b"));
        assert!(matches("/etc/*", "/etc/x/y"));
    }

    #[test]
    fn other_glob_syntax_is_literal() {
        assert!(matches("[ab]", "[ab]"));
        assert!(!matches("[ab]", "a"));
        assert!(matches("{x,y}", "{x,y}"));
        assert!(!matches("{x,y}", "x"));
        assert!(matches("a\\b", "a\\b"));
        assert!(matches("!x-^", "!x-^"));
    }
}
