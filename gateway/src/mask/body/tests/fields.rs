use super::super::fields::{FieldMatcher, Next};
use super::*;

fn parse(text: &str) -> Result<JsonField, String> {
    JsonField::parse(text)
}

#[test]
fn key_globs_and_paths_parse() {
    assert_eq!(parse("ssn").unwrap(), JsonField::Key("ssn".into()));
    assert_eq!(parse("*Token*").unwrap(), JsonField::Key("*token*".into()));
    let key = |g: &str| Step::Key(g.into());
    assert_eq!(
        parse("users[*].ssn").unwrap(),
        JsonField::Path(vec![key("users"), Step::AnyIndex, key("ssn")])
    );
    assert_eq!(
        parse("$.data.items[3].card").unwrap(),
        JsonField::Path(vec![key("data"), key("items"), Step::Index(3), key("card")])
    );
    assert_eq!(parse("$.ssn").unwrap(), JsonField::Path(vec![key("ssn")]));
    assert_eq!(
        parse("[*].email").unwrap(),
        JsonField::Path(vec![Step::AnyIndex, key("email")])
    );
    assert_eq!(
        parse("$[0][*]").unwrap(),
        JsonField::Path(vec![Step::Index(0), Step::AnyIndex])
    );
    assert_eq!(
        parse("a.*.b").unwrap(),
        JsonField::Path(vec![key("a"), key("*"), key("b")])
    );
    assert_eq!(parse("users[*].ssn").unwrap().to_string(), "$.users[*].ssn");
}

#[test]
fn bad_patterns_are_refused_with_a_reason() {
    for (text, why) in [
        ("", "is empty"),
        ("$", "whole body"),
        ("$ssn", "followed by"),
        ("a..b", "empty step"),
        (".a", "empty step"),
        ("a.", "empty step"),
        ("a[", "without `]`"),
        ("a[x]", "not an array step"),
        ("a[-1]", "not an array step"),
        ("a[]", "not an array step"),
        ("a[1]b", "unexpected"),
        ("a]", "unexpected"),
        ("first name", "cannot be written"),
        ("a\"b", "cannot be written"),
        ("a[99999999999999999999999]", "too large"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(why), "{text:?}: {e}");
    }
}

#[test]
fn matching_follows_keys_indexes_and_case() {
    let fields: Vec<JsonField> = ["*token*", "users[*].ssn", "$.list[1]", "a.*.b"]
        .iter()
        .map(|f| parse(f).unwrap())
        .collect();
    let m = FieldMatcher::new(&fields);
    let root = m.root();
    assert_eq!(m.member(&root, "Access_TOKEN"), Next::Mask);
    assert_eq!(m.member(&[], "refresh_token"), Next::Mask, "at any depth");
    let Next::Keep(users) = m.member(&root, "users") else {
        panic!()
    };
    let Next::Keep(user) = m.element(&users, 7) else {
        panic!()
    };
    assert_eq!(m.member(&user, "SSN"), Next::Mask);
    assert_eq!(m.member(&user, "name"), Next::Keep(vec![]));
    assert_eq!(
        m.member(&root, "ssn"),
        Next::Keep(vec![]),
        "paths start at the root"
    );
    let Next::Keep(list) = m.member(&root, "list") else {
        panic!()
    };
    assert_eq!(m.element(&list, 0), Next::Keep(vec![]));
    assert_eq!(m.element(&list, 1), Next::Mask);
    let Next::Keep(a) = m.member(&root, "a") else {
        panic!()
    };
    let Next::Keep(any) = m.member(&a, "whatever") else {
        panic!()
    };
    assert_eq!(m.member(&any, "b"), Next::Mask);
    // Unicode case folding too.
    let m = FieldMatcher::new(&[parse("straße").unwrap()]);
    assert_eq!(m.member(&[], "STRAßE"), Next::Mask);
}
