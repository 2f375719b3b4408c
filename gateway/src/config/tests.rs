use super::*;

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, "t.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn built_in_defaults_follow_the_contract() {
    let cfg = Config::defaults();
    assert_eq!(
        cfg.server.listen_v4,
        Some("127.0.0.1:15001".parse().unwrap())
    );
    assert_eq!(cfg.server.listen_v6, Some("[::1]:15001".parse().unwrap()));
    assert_eq!(
        cfg.server.control_socket,
        PathBuf::from("/run/gateway/control.sock")
    );
    assert_eq!(cfg.server.state_dir, PathBuf::from("/var/lib/gateway"));
    assert_eq!(cfg.server.mode, Mode::Enforce);
    assert!(cfg.targets.is_empty() && cfg.rules.is_empty());
}

#[test]
fn the_documented_example_parses() {
    let text = include_str!("../../../examples/gateway.toml");
    let cfg = Config::parse(text, "examples/gateway.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(!cfg.targets.is_empty());
    assert!(!cfg.rules.is_empty());
    assert!(!cfg.issuers.is_empty());
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn address_forms() {
    let p = |s| AddressSpec::parse(s, false);
    assert_eq!(p("10.0.0.5:5432").unwrap().to_string(), "10.0.0.5:5432");
    assert_eq!(
        p("10.0.0.0/24:5432").unwrap().to_string(),
        "10.0.0.0/24:5432"
    );
    assert_eq!(p("[fd00::5]:22").unwrap().to_string(), "[fd00::5]:22");
    assert_eq!(p("[fd00::/64]:22").unwrap().to_string(), "[fd00::/64]:22");
    assert_eq!(
        p("DB.Internal:5432").unwrap().host,
        HostSpec::Name("db.internal".into())
    );
    assert!(p("10.0.0.5").is_err());
    assert!(p("10.0.0.5:0").is_err());
    assert!(p("10.0.0.5:70000").is_err());
    assert!(
        p("10.0.0.1/24:5432")
            .unwrap_err()
            .contains("did you mean 10.0.0.0/24")
    );
    assert!(
        p("10.0.0.300:5432").is_err(),
        "a mistyped address is not a host name"
    );
    assert!(p("10.0.0.0/8:*").is_err());
    assert_eq!(AddressSpec::parse("10.0.0.0/8:*", true).unwrap().port, 0);
    assert!(p("bad_host!:1").is_err());
}

#[test]
fn semantic_errors_name_line_column_and_key_and_are_all_reported() {
    let text = r#"[server]
listen = ["10.1.1.1:15001", "[::1]:15002"]
state_dir = "relative/dir"
resolve_interval = "soon"

[[targets]]
name = "Orders DB"
protocol = "tcp"
address = "10.0.0.5:5432"

[[targets]]
name = "b"
protocol = "kubernetes"
address = "10.0.0.5:5432"

[[rules]]
name = "r"
action = "allow"
targets = ["nothing-*"]
unauthenticated = true
claims = { sub = "x" }
"#;
    let got = problems(text);
    let expect = [
        "t.toml:2:11: server.listen[0]: 10.1.1.1:15001 is not a loopback address",
        "t.toml:3:13: server.state_dir: must be an absolute path",
        "t.toml:4:20: server.resolve_interval: invalid duration",
        "t.toml:7:8: targets[0].name: \"Orders DB\" must be",
        "t.toml:13:12: targets[1].protocol: protocol \"kubernetes\" is not supported",
        "t.toml:14:11: targets[1].address: 10.0.0.5:5432 is already the address of target",
        "t.toml:19:12: rules[0].targets[0]: \"nothing-*\" matches no target",
        "t.toml:20:19: rules[0].unauthenticated: an unauthenticated job has no claims",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in {got:#?}"
        );
    }
    // The two listener ports differ too, and the IPv4 listener was already refused.
    assert_eq!(got.len(), expect.len(), "{got:#?}");
}

#[test]
fn syntax_and_unknown_keys_are_located() {
    let got = problems("[server]\nmode = \"enforce\"\nmoed = 1\n");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("t.toml:3:1: unknown field `moed`"),
        "{got:?}"
    );
    let got =
        problems("[[targets]]\nname = \"x\"\nprotocol = \"telnet\"\naddress = \"1.2.3.4:23\"\n");
    assert!(
        got[0].starts_with("t.toml:3:12:") && got[0].contains("telnet"),
        "{got:?}"
    );
    let got = problems("[server\n");
    assert!(got[0].starts_with("t.toml:1:"), "{got:?}");
}

#[test]
fn listeners_must_be_loopback_and_share_a_port() {
    let got = problems("[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]\n");
    assert!(got[0].contains("must share one port"), "{got:?}");
    let got = problems("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.2:1\"]\n");
    assert!(
        got[0].contains("only one IPv4 and one IPv6 listener"),
        "{got:?}"
    );
    let cfg = Config::parse("[server]\nlisten = [\"127.0.0.1:9\"]\n", "t").unwrap();
    assert_eq!(cfg.server.listen_v6, None);
    assert_eq!(cfg.server.listen_port(), 9);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
    assert!(parse_duration("5 minutes").is_err());
    assert!(parse_duration("-1s").is_err());
}

#[test]
fn a_missing_default_file_means_defaults_but_a_missing_named_file_is_an_error() {
    assert!(matches!(
        Config::load(Some(Path::new("/nonexistent/gw.toml"))),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn approval_rules_need_known_approver_groups() {
    let got = problems(
        r#"[approvals]
default_timeout = "30h"
webhooks = ["ftp://x"]

[[approvers]]
name = "dba"

[[rules]]
name = "ask"
action = "require_approval"
approvers = ["dba", "nobody"]
quorum = 0

[[rules]]
name = "plain"
action = "allow"
approvers = ["dba"]
"#,
    );
    for e in [
        "t.toml:2:19: approvals.default_timeout: must be between 1 second and 24 hours",
        "t.toml:3:13: approvals.webhooks[0]: must be an http:// or https:// URL",
        "t.toml:6:8: approvers[0]: names nobody",
        "t.toml:11:21: rules[0].approvers[1]: no [[approvers]] group named \"nobody\"",
        "t.toml:12:10: rules[0].quorum: must be between 1 and 10",
        "t.toml:17:14: rules[1].approvers: only rules with action = \"require_approval\" have approvers",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in {got:#?}"
        );
    }
    let cfg = Config::parse(
        "[approvals.web]\nlisten = \"127.0.0.1:15080\"\nissuer = \"https://login.test/\"\nclient_id = \"gw\"\n\n[[approvers]]\nname = \"dba\"\nsubjects = [\"alice\"]\n\n[[rules]]\nname = \"ask\"\naction = \"require_approval\"\napprovers = [\"dba\"]\nquorum = 2\napproval_timeout = \"10m\"\n",
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let web = cfg.approvals.web.as_ref().unwrap();
    assert_eq!(web.public_url, "http://127.0.0.1:15080");
    assert_eq!(web.issuer, "https://login.test");
    assert_eq!(cfg.rules[0].quorum, 2);
    assert_eq!(
        cfg.rules[0].approval_timeout,
        Some(Duration::from_secs(600))
    );
}

#[test]
fn the_sign_in_issuer_must_be_https_and_people_are_one_person_everywhere() {
    let got = problems(
        r#"[approvals.web]
listen = "127.0.0.1:15080"
issuer = "http://login.test"
client_id = "gw"

[[approvers]]
name = "dba"
[[approvers.people]]
name = "alice"
unix_users = ["alice"]
subjects = ["a1"]
[[approvers.people]]
name = "mallory"
subjects = ["a1"]
[[approvers.people]]
name = "nobody"

[[approvers]]
name = "ops"
[[approvers.people]]
name = "alice"
unix_users = ["alice", "root"]
"#,
    );
    for e in [
        "t.toml:3:10: approvals.web.issuer: must be an https:// URL",
        "t.toml:13:8: approvers[0].people[1]: subject \"a1\" belongs to person \"alice\" already",
        "t.toml:16:8: approvers[0].people[2]: lists no account",
        "t.toml:21:8: approvers[1].people[0]: person \"alice\" is listed with other accounts elsewhere",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in {got:#?}"
        );
    }
    let cfg = Config::parse(
        "[approvals]\nperson_claims = [\"triggered_by\"]\n\n[[approvers]]\nname = \"dba\"\nemails = [\"bob@example.com\"]\n[[approvers.people]]\nname = \"alice\"\nunix_users = [\"alice\"]\nci_users = [\"alice-gh\"]\n",
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.approvals.person_claims, ["triggered_by"]);
    let old_style = Config::parse(
        "[[approvers]]\nname = \"dba\"\nsubjects = [\"alice@example.com\"]\n",
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        old_style
            .warnings
            .iter()
            .any(|w| w.to_string().contains("list verified emails in `emails`")),
        "{:?}",
        old_style.warnings
    );
    assert_eq!(cfg.approvers[0].emails, ["bob@example.com"]);
    assert_eq!(cfg.approvers[0].people[0].ci_users, ["alice-gh"]);
    let defaults = Config::parse("", "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        defaults.approvals.person_claims,
        ["actor", "user_login", "user_email"]
    );
}

#[test]
fn postgres_client_tls_defaults_to_offer_and_bad_values_are_located() {
    let target = |extra: &str| {
        format!(
            "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\n{extra}"
        )
    };
    let cfg = Config::parse(&target(""), "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.targets[0].postgres.client_tls, ClientTls::Offer);
    for (value, expect) in [
        ("off", ClientTls::Off),
        ("offer", ClientTls::Offer),
        ("require", ClientTls::Require),
    ] {
        let text = target(&format!("[targets.postgres]\nclient_tls = \"{value}\"\n"));
        let cfg = Config::parse(&text, "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.targets[0].postgres.client_tls, expect);
    }
    let got = problems(&target(
        "[targets.postgres]\nclient_tls = \"verify-full\"\n",
    ));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with(
            "t.toml:6:14: targets[0].postgres.client_tls: unknown value \"verify-full\" (one of: off, offer or require)"
        ),
        "{got:#?}"
    );
    let got = problems(&target("[targets.postgres]\nclient_tls = true\n"));
    assert!(
        got.len() == 1 && got[0].starts_with("t.toml:6:14:"),
        "{got:#?}"
    );
}

#[test]
fn preconnect_is_off_by_default_and_only_for_tcp_targets() {
    let tcp = "[[targets]]\nname = \"a\"\nprotocol = \"tcp\"\naddress = \"10.0.0.5:7000\"\n";
    let cfg = Config::parse(tcp, "t.toml").unwrap();
    assert!(!cfg.targets[0].preconnect);
    let cfg = Config::parse(&format!("{tcp}preconnect = true\n"), "t.toml").unwrap();
    assert!(cfg.targets[0].preconnect);
    let got = problems(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\npreconnect = true\n",
    );
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with(
            "t.toml:5:14: targets[0].preconnect: preconnect is for protocol \"tcp\" targets"
        ),
        "{got:#?}"
    );
}

#[test]
fn connections_per_job_are_limited_by_default_and_the_limit_is_checked() {
    assert_eq!(
        Config::defaults().server.max_connections_per_job,
        DEFAULT_MAX_CONNECTIONS_PER_JOB
    );
    let cfg = Config::parse("[server]\nmax_connections_per_job = 3\n", "t.toml").unwrap();
    assert_eq!(cfg.server.max_connections_per_job, 3);
    let got = problems("[server]\nmax_connections_per_job = 0\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("t.toml:2:")
            && got[0].contains("server.max_connections_per_job")
            && got[0].contains("at least 1"),
        "{got:?}"
    );
}

#[test]
fn tcp_targets_take_the_kernel_path_by_default_and_only_they_can() {
    let tcp = "[[targets]]\nname = \"a\"\nprotocol = \"tcp\"\naddress = \"10.0.0.5:7000\"\n";
    let cfg = Config::parse(tcp, "t.toml").unwrap();
    assert_eq!(cfg.targets[0].path, TargetPath::Kernel);
    // A spare upstream connection needs the gateway in the path: proxy unless told otherwise.
    let cfg = Config::parse(&format!("{tcp}preconnect = true\n"), "t.toml").unwrap();
    assert_eq!(cfg.targets[0].path, TargetPath::Proxy);
    // So does a host name whose addresses the gateway's DNS forwarder follows.
    let named = "[server]\ndns_follow = true\n[[targets]]\nname = \"a\"\nprotocol = \"tcp\"\naddress = \"cache.internal:7000\"\n";
    let cfg = Config::parse(named, "t.toml").unwrap();
    assert_eq!(cfg.targets[0].path, TargetPath::Proxy);
    let cfg = Config::parse(&format!("{tcp}path = \"kernel\"\n"), "t.toml").unwrap();
    assert_eq!(cfg.targets[0].path, TargetPath::Kernel);
    let cfg = Config::parse(&format!("{tcp}path = \"proxy\"\n"), "t.toml").unwrap();
    assert_eq!(cfg.targets[0].path, TargetPath::Proxy);
    // A spare upstream connection needs the gateway in the path.
    let got = problems(&format!("{tcp}preconnect = true\npath = \"kernel\"\n"));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("t.toml:6:8: targets[0].path:"),
        "{got:#?}"
    );
    let got = problems(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\npath = \"kernel\"\n",
    );
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("t.toml:5:8: targets[0].path: path \"kernel\" is for protocol \"tcp\""),
        "{got:#?}"
    );
    let got = problems(&format!("{tcp}path = \"sideways\"\n"));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].starts_with("t.toml:5:8:"), "{got:#?}");
    let cfg = Config::parse(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(cfg.targets[0].path, TargetPath::Proxy);
}

#[test]
fn the_kernel_path_lease_has_a_default_and_is_checked() {
    assert_eq!(
        Config::defaults().server.kernel_path_lease,
        DEFAULT_KERNEL_PATH_LEASE
    );
    let cfg = Config::parse("[server]\nkernel_path_lease = \"10m\"\n", "t.toml").unwrap();
    assert_eq!(cfg.server.kernel_path_lease, Duration::from_secs(600));
    for bad in ["\"0s\"", "\"soon\""] {
        let got = problems(&format!("[server]\nkernel_path_lease = {bad}\n"));
        assert_eq!(got.len(), 1, "{bad}: {got:?}");
        assert!(
            got[0].contains("t.toml:2:") && got[0].contains("kernel_path_lease"),
            "{bad}: {got:?}"
        );
    }
    let got = problems("[server]\nkernel_path_lease = 5\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("t.toml:2:21:") && got[0].contains("expected a string"),
        "{got:?}"
    );
}

const PG_AND_HTTP: &str = r#"[[targets]]
name = "db"
protocol = "postgres"
address = "10.0.0.5:5432"

[[targets]]
name = "api"
protocol = "http"
address = "10.0.0.6:443"
"#;

#[test]
fn json_fields_are_parsed_and_located() {
    let text = format!(
        "{PG_AND_HTTP}\n[[masking]]\nname = \"m\"\ntargets = [\"api\"]\njson_fields = [\"users[*].ssn\", \"users[*\", \"$\", \"a..b\"]\n"
    );
    let got = problems(&text);
    for e in [
        "t.toml:14:32: masking[0].json_fields[1]: \"users[*\": `[` without `]`",
        "t.toml:14:43: masking[0].json_fields[2]: \"$\" names the whole body",
        "t.toml:14:48: masking[0].json_fields[3]: \"a..b\" has an empty step",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), 3, "{got:#?}");
}

/// A rule of `json_fields` for an http target passes every masking check: implementing http
/// targets makes it valid with no change to the masking validation.
#[test]
fn json_fields_name_http_targets_and_columns_postgres_ones() {
    let text = format!(
        "{PG_AND_HTTP}\n[[masking]]\nname = \"m\"\ntargets = [\"api\"]\njson_fields = [\"ssn\", \"data.items[*].card\"]\ndetectors = [\"email\"]\n"
    );
    let got = problems(&text);
    assert!(got.is_empty(), "{got:#?}");

    let got = problems(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\n\n[[masking]]\nname = \"m\"\njson_fields = [\"ssn\"]\n",
    );
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with(
            "t.toml:8:16: masking[0].json_fields: json_fields mask HTTP response bodies, and this rule's targets include no http target"
        ),
        "{got:#?}"
    );

    let text = format!(
        "{PG_AND_HTTP}\n[[masking]]\nname = \"m\"\ntargets = [\"api\"]\ncolumns = [\"ssn\"]\n"
    );
    let got = problems(&text);
    assert!(
        got.iter().any(|g| g.starts_with(
            "t.toml:13:12: masking[0].targets[0]: \"api\" matches no postgres target"
        )),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|g| g.contains("masking[0].columns: columns mask postgres results")),
        "{got:#?}"
    );

    let got = problems(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\n\n[[masking]]\nname = \"m\"\n",
    );
    assert!(
        got[0].contains("masks nothing: give `columns`, `json_fields` or `detectors`"),
        "{got:#?}"
    );
}

#[test]
fn a_masking_rule_may_mix_postgres_and_http_keys() {
    let cfg = Config::parse(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"10.0.0.5:5432\"\n\n[[masking]]\nname = \"m\"\ncolumns = [\"ssn\"]\ndetectors = [\"email\"]\n",
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.masking[0].json_fields.is_empty());
    assert_eq!(cfg.masking[0].detectors, vec![crate::mask::Detector::Email]);
}

const HTTP_TARGET: &str =
    "[[targets]]\nname = \"api\"\nprotocol = \"http\"\naddress = \"api.example:443\"\n";

#[test]
fn http_targets_terminate_tls_on_443_and_serve_their_host_name() {
    let cfg = Config::parse(HTTP_TARGET, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let h = &cfg.targets[0].http;
    assert_eq!(h.tls, HttpTls::Terminate);
    assert!(h.upstream_tls);
    assert_eq!(h.hosts, ["api.example"]);
    let cfg = Config::parse(
        "[[targets]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"10.0.0.5:80\"\n[targets.http]\nhosts = [\"Web.Example\", \"*.svc.example\"]\n",
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let h = &cfg.targets[0].http;
    assert_eq!(h.tls, HttpTls::None);
    assert!(!h.upstream_tls);
    assert_eq!(h.hosts, ["web.example", "*.svc.example"]);
}

#[test]
fn http_credentials_never_go_where_the_gateway_cannot_authenticate_the_server() {
    let plain = problems(
        "[[targets]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"web.example:80\"\n[targets.credentials]\ntoken_file = \"/etc/gateway/token\"\n",
    );
    assert!(
        plain
            .iter()
            .any(|p| p.contains("credentials would go over plain HTTP")),
        "{plain:?}"
    );
    let by_ip = problems(
        "[[targets]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"10.0.0.5:443\"\n[targets.credentials]\ntoken_file = \"/etc/gateway/token\"\n",
    );
    assert!(by_ip.iter().any(|p| p.contains("server_name")), "{by_ip:?}");
    let relative = problems(&format!(
        "{HTTP_TARGET}[targets.credentials]\ntoken_file = \"token\"\n"
    ));
    assert!(
        relative
            .iter()
            .any(|p| p.contains("token_file: must be an absolute path")),
        "{relative:?}"
    );
}

#[test]
fn bad_http_settings_and_conditions_are_located() {
    let bad = problems(&format!(
        "{HTTP_TARGET}[targets.http]\ntls = \"sometimes\"\nhosts = [\"bad host\"]\nmax_headers = 1\n\n[[rules]]\nname = \"r\"\naction = \"deny\"\ntargets = [\"api\"]\nunauthenticated = true\n[rules.http]\nmethods = [\"GE T\"]\npaths = [\"admin\"]\n"
    ));
    for expected in [
        "targets[0].http.tls: unknown value \"sometimes\"",
        "targets[0].http.hosts[0]",
        "targets[0].http.max_headers: must be at least 8",
        "rules[0].http.methods[0]",
        "rules[0].http.paths[0]: a path glob starts with /",
    ] {
        assert!(
            bad.iter().any(|p| p.contains(expected)),
            "{expected}: {bad:?}"
        );
    }
    let not_http = problems(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"db.example:5432\"\n[targets.postgres]\ntls = \"verify-full\"\n[targets.http]\ntls = \"none\"\n\n[[rules]]\nname = \"r\"\naction = \"deny\"\ntargets = [\"db\"]\nunauthenticated = true\n[rules.http]\nmethods = [\"GET\"]\n",
    );
    assert!(
        not_http
            .iter()
            .any(|p| p.contains("only http targets take [targets.http]")),
        "{not_http:?}"
    );
    assert!(
        not_http
            .iter()
            .any(|p| p.contains("the rule's targets include no http target")),
        "{not_http:?}"
    );
    let no_user = problems(
        "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"db.example:5432\"\n[targets.postgres]\ntls = \"verify-full\"\n[[targets.credentials.identities]]\nclaims = { sub = \"x\" }\npassword_file = \"/p\"\n",
    );
    assert!(
        no_user
            .iter()
            .any(|p| p.contains("identities[0].user: is required")),
        "{no_user:?}"
    );
}

const PASSTHROUGH_TARGET: &str = "[[targets]]\nname = \"pinned\"\nprotocol = \"http\"\naddress = \"pinned.example:443\"\n[targets.http]\ntls = \"passthrough\"\n";

#[test]
fn a_passthrough_target_takes_only_what_the_gateway_can_do_without_reading_it() {
    let cfg = Config::parse(
        &format!("{PASSTHROUGH_TARGET}allow_missing_sni = true\n\n[[rules]]\nname = \"r\"\naction = \"deny\"\ntargets = [\"pinned\"]\nunauthenticated = true\n[rules.http]\nhosts = [\"evil.example\"]\n"),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let h = &cfg.targets[0].http;
    assert_eq!(h.tls, HttpTls::Passthrough);
    assert!(!h.upstream_tls && h.allow_missing_sni);
    assert_eq!(h.hosts, ["pinned.example"]);
    for (extra, expected) in [
        (
            "[targets.credentials]\ntoken_file = \"/etc/gateway/token\"\n",
            "targets[0].credentials: tls = \"passthrough\" relays the job's TLS unread",
        ),
        (
            "ca_file = \"/etc/ca.pem\"\n",
            "upstream_tls, ca_file and server_name do not apply",
        ),
        (
            "\n[[rules]]\nname = \"r\"\naction = \"deny\"\ntargets = [\"pinned\"]\nunauthenticated = true\n[rules.http]\nmethods = [\"POST\"]\npaths = [\"/admin\"]\n",
            "rules[0].http: target \"pinned\" relays TLS unread (tls = \"passthrough\"): only `hosts` (its server name) can be decided on, not methods, paths",
        ),
        (
            "\n[[masking]]\nname = \"m\"\njson_fields = [\"ssn\"]\n",
            "masking[0].targets: target \"pinned\" relays TLS unread",
        ),
    ] {
        let found = problems(&format!("{PASSTHROUGH_TARGET}{extra}"));
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{expected}: {found:?}"
        );
    }
    let terminating = problems(&format!(
        "{HTTP_TARGET}[targets.http]\nallow_missing_sni = true\n"
    ));
    assert!(
        terminating
            .iter()
            .any(|p| p.contains("targets[0].http.allow_missing_sni")),
        "{terminating:?}"
    );
}
