use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{answer::addresses, follow::*, *};
use hickory_proto::rr::RData;

use crate::config::Config;

fn follow(targets: &str) -> (Follow, Config) {
    let text = format!("[server]\ndns_follow = true\n{targets}");
    let config = Config::parse(&text, "t.toml").unwrap();
    (Follow::new(&config, vec![]).unwrap(), config)
}

const TARGETS: &str = r#"
    [[targets]]
    name = "api"
    protocol = "tcp"
    address = "api.test:443"
    [[targets]]
    name = "content"
    protocol = "tcp"
    address = "*.content.test:443"
"#;

#[test]
fn a_job_reaches_what_it_was_told_for_as_long_as_the_ttl_and_no_other_job_does() {
    let (f, _) = follow(TARGETS);
    let statics = TargetSet::default();
    let t0 = Instant::now();
    let a: IpAddr = "10.9.0.1".parse().unwrap();
    let (followed, add) = f.tell(1, "api.test", (a, 30), &statics, t0, &|_| None);
    assert_eq!(followed.len(), 1);
    assert_eq!(followed[0].refused, None);
    assert_eq!(add.len(), 1);
    let dst = SocketAddr::new(a, 443);
    assert_eq!(f.check(Some(1), dst, t0), Told::Yes(0));
    assert_eq!(f.check(Some(2), dst, t0), Told::No(0));
    assert_eq!(f.check(None, dst, t0), Told::No(0));
    assert_eq!(f.check(Some(1), SocketAddr::new(a, 80), t0), Told::Unknown);
    // A second job told the same address adds no kernel entry.
    assert!(
        f.tell(2, "api.test", (a, 30), &statics, t0, &|_| None)
            .1
            .is_empty()
    );
    assert!(f.expire(t0 + Duration::from_secs(29)).is_empty());
    assert_eq!(f.expire(t0 + Duration::from_secs(31)).len(), 1);
    assert_eq!(
        f.check(Some(1), dst, t0 + Duration::from_secs(31)),
        Told::Unknown
    );
}

#[test]
fn an_answer_is_not_followed_for_a_target_the_job_may_not_connect_to() {
    let (f, _) = follow(TARGETS);
    let statics = TargetSet::default();
    let t0 = Instant::now();
    let a: IpAddr = "10.9.0.4".parse().unwrap();
    let refuse = |t: &str| (t == "api").then(|| "no rule allows it".to_string());
    let (followed, add) = f.tell(1, "api.test", (a, 30), &statics, t0, &refuse);
    assert_eq!(followed[0].refused.as_deref(), Some("no rule allows it"));
    assert!(add.is_empty());
    assert_eq!(f.check(Some(1), SocketAddr::new(a, 443), t0), Told::Unknown);
    let (followed, add) = f.tell(1, "x.content.test", (a, 30), &statics, t0, &refuse);
    assert_eq!(followed[0].refused, None);
    assert_eq!(add.len(), 1);
}

#[test]
fn one_job_has_a_bounded_share_of_the_queries_in_flight() {
    let in_flight = InFlight::default();
    let held: Vec<_> = (0..MAX_IN_FLIGHT_PER_JOB)
        .map(|_| in_flight.take(1).expect("room"))
        .collect();
    assert!(in_flight.take(1).is_none());
    assert!(in_flight.take(2).is_some(), "another job has its own share");
    drop(held);
    assert!(in_flight.take(1).is_some());
}

#[test]
fn ttls_are_bounded_and_names_match_exactly_or_below_a_wildcard() {
    let (f, _) = follow(TARGETS);
    let statics = TargetSet::default();
    let t0 = Instant::now();
    let ip: IpAddr = "10.9.0.2".parse().unwrap();
    assert_eq!(
        f.tell(1, "api.test", (ip, 0), &statics, t0, &|_| None).0[0].ttl_secs,
        5
    );
    assert_eq!(
        f.tell(1, "api.test", (ip, u32::MAX), &statics, t0, &|_| None)
            .0[0]
            .ttl_secs,
        3600
    );
    for (name, hits) in [
        ("a.content.test", 1),
        ("a.b.content.test", 1),
        ("content.test", 0),
        ("evilcontent.test", 0),
        ("api.test.evil", 0),
        ("xapi.test", 0),
    ] {
        let ip: IpAddr = "10.9.0.3".parse().unwrap();
        assert_eq!(
            f.tell(1, name, (ip, 30), &statics, t0, &|_| None).0.len(),
            hits,
            "{name}"
        );
    }
}

#[test]
fn local_and_loopback_answers_are_not_followed_and_the_table_is_bounded() {
    let text = format!("[server]\ndns_follow = true\n{TARGETS}");
    let config = Config::parse(&text, "t.toml").unwrap();
    let f = Follow::new(&config, vec!["192.0.2.7".parse().unwrap()]).unwrap();
    let statics = TargetSet::default();
    let t0 = Instant::now();
    for ip in ["127.0.0.1", "192.0.2.7", "::", "224.0.0.1"] {
        let (followed, add) = f.tell(
            1,
            "api.test",
            (ip.parse().unwrap(), 30),
            &statics,
            t0,
            &|_| None,
        );
        assert!(followed[0].refused.is_some(), "{ip}");
        assert!(add.is_empty(), "{ip}");
    }
    for i in 0..MAX_TOLD_PER_JOB as u32 + 1 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a0a_0000 + i));
        let (followed, _) = f.tell(1, "api.test", (ip, 30), &statics, t0, &|_| None);
        assert_eq!(
            followed[0].refused.is_some(),
            i as usize == MAX_TOLD_PER_JOB,
            "{i}"
        );
    }
}

#[test]
fn dns_follow_settings_are_checked() {
    let problems = |text: &str| match Config::parse(text, "t.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    };
    let wildcard = r#"
        [[targets]]
        name = "content"
        protocol = "tcp"
        address = "*.content.test:443"
    "#;
    let p = problems(wildcard);
    assert!(
        p.iter().any(|p| p.contains("set server.dns_follow = true")),
        "{p:?}"
    );
    assert!(problems(&format!("[server]\ndns_follow = true\n{wildcard}")).is_empty());
    for bad in [
        "*.test:443",
        "*.*.content.test:443",
        "a.*.test:443",
        "*content.test:443",
    ] {
        let text = format!(
            "[server]\ndns_follow = true\n[[targets]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"{bad}\"\n"
        );
        assert!(!problems(&text).is_empty(), "{bad}");
    }
    let kernel = r#"
        [server]
        dns_follow = true
        [[targets]]
        name = "api"
        protocol = "tcp"
        path = "kernel"
        address = "api.test:443"
    "#;
    assert!(
        problems(kernel)
            .iter()
            .any(|p| p.contains("path \"kernel\" needs an address")),
        "{:?}",
        problems(kernel)
    );
    for (settings, key) in [
        ("dns_listen_port = 53", "server.dns_listen_port"),
        ("dns_listen_port = 0", "server.dns_listen_port"),
        ("dns_listen_port = 70000", "server.dns_listen_port"),
        (
            "dns_min_ttl = \"1m\"\ndns_max_ttl = \"10s\"",
            "server.dns_max_ttl",
        ),
    ] {
        let p = problems(&format!("[server]\ndns_follow = true\n{settings}\n"));
        assert!(p.iter().any(|p| p.contains(key)), "{settings}: {p:?}");
    }
}

#[test]
fn cname_chains_within_the_answer_are_followed_and_nothing_else() {
    use hickory_proto::rr::{Name, Record, rdata};
    let mut m = Message::new();
    let name = Name::from_ascii("api.test.").unwrap();
    let edge = Name::from_ascii("edge.cdn.test.").unwrap();
    let other = Name::from_ascii("other.test.").unwrap();
    m.add_answer(Record::from_rdata(
        name.clone(),
        60,
        RData::CNAME(rdata::CNAME(edge.clone())),
    ));
    m.add_answer(Record::from_rdata(
        edge,
        20,
        RData::A(rdata::A("10.9.1.1".parse().unwrap())),
    ));
    m.add_answer(Record::from_rdata(
        other,
        20,
        RData::A(rdata::A("10.9.1.2".parse().unwrap())),
    ));
    assert_eq!(
        addresses(&m, &name),
        vec![("10.9.1.1".parse::<IpAddr>().unwrap(), 20)]
    );
}

fn job(cgroup_id: u64, subject: &str, expires_in: Option<chrono::Duration>) -> Arc<Job> {
    Arc::new(Job {
        id: format!("job-{cgroup_id}"),
        cgroup_path: "/sys/fs/cgroup/t".into(),
        cgroup_id,
        slot: 1,
        owned: true,
        identity: Identity {
            issuer: Some("https://issuer.test".into()),
            subject: subject.into(),
            claims: Default::default(),
        },
        binding_expires_at: expires_in.map(|d| chrono::Utc::now() + d),
        created_at: String::new(),
        open_connections: Default::default(),
    })
}

fn asker(job: &Arc<Job>) -> Asker {
    Asker {
        job_cgroup_id: job.cgroup_id,
        job: Some(job.clone()),
    }
}

#[test]
fn policy_is_asked_once_per_binding_and_again_for_a_new_one() {
    let admissions = Admissions::default();
    let asked = std::cell::Cell::new(0);
    let decide = |allow: bool| {
        let asked = &asked;
        move |_: &Identity| {
            asked.set(asked.get() + 1);
            allow
        }
    };
    let first = job(7, "alice", None);
    let a = asker(&first);
    for _ in 0..3 {
        let admitted = a.admit(Some(first.clone()), &admissions, false, decide(true));
        assert_eq!(admitted.unwrap().subject, "alice");
    }
    assert_eq!(asked.get(), 1, "one policy decision for one binding");

    // Bound again (same cgroup, a new binding that may reach no target): the first query of
    // the new binding asks policy again, and its answer is not the old binding's allow.
    let rebound = job(7, "mallory", None);
    let b = asker(&rebound);
    let refused = b.admit(Some(rebound.clone()), &admissions, false, decide(false));
    assert!(refused.unwrap_err().contains("no rule allows"));
    assert_eq!(asked.get(), 2);
    assert!(
        b.admit(Some(rebound.clone()), &admissions, false, decide(true))
            .is_err(),
        "the new binding's refusal is what is kept"
    );
    assert_eq!(asked.get(), 2);

    // An asker of the old binding (a DNS connection opened before the rebind) is refused at
    // once, without asking policy.
    let stale = a.admit(Some(rebound.clone()), &admissions, false, decide(true));
    assert!(stale.unwrap_err().contains("bound again"));
    assert_eq!(asked.get(), 2);

    // Policy is not asked where jobs reach beyond targets.
    assert!(
        b.admit(Some(rebound), &admissions, true, decide(false))
            .is_ok()
    );
    assert_eq!(asked.get(), 2);
}

#[test]
fn a_cached_allow_is_not_served_past_expiry_or_detach() {
    let admissions = Admissions::default();
    let allow = |_: &Identity| true;
    // A binding that has run out, with its allow in the cache: refused all the same.
    let ended = job(9, "alice", Some(chrono::Duration::seconds(-1)));
    assert!(admissions.reaches_any(&ended, allow));
    let a = asker(&ended);
    let expired = a.admit(Some(ended.clone()), &admissions, false, allow);
    assert!(expired.unwrap_err().contains("expired"));
    // Detached: the job is no longer the cgroup's.
    let long = job(10, "bob", None);
    let b = asker(&long);
    assert!(
        b.admit(Some(long.clone()), &admissions, false, allow)
            .is_ok()
    );
    let detached = b.admit(None, &admissions, false, allow);
    assert!(detached.unwrap_err().contains("has ended"));
    // A socket of no job.
    let none = Asker {
        job_cgroup_id: 11,
        job: None,
    };
    assert!(none.admit(None, &admissions, false, allow).is_err());
}

#[test]
fn the_cache_keeps_entries_of_bindings_in_use_only_once_it_is_large() {
    let admissions = Admissions::default();
    let allow = |_: &Identity| true;
    let kept = job(1, "alice", None);
    assert!(admissions.reaches_any(&kept, allow));
    for cgroup in 2..(ADMISSIONS_PRUNE_AT as u64 + 10) {
        let gone = job(cgroup, "x", None);
        assert!(admissions.reaches_any(&gone, allow));
    }
    let len = admissions.0.lock().len();
    assert!(len < 20, "{len} entries");
    assert!(admissions.0.lock().contains_key(&1));
}

#[test]
fn a_namespace_the_job_configures_is_answered_by_the_daemons_resolvers_only() {
    let addressed: SocketAddr = "127.0.0.11:53".parse().unwrap();
    let own: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()];
    let daemons = Namespace {
        cookie: 2,
        upstream: Upstream::Daemon,
    };
    // Not a resolver of the daemon's: the daemon's first, from the daemon's namespace.
    let asking = daemons.asking(addressed, &own).unwrap();
    assert_eq!(asking.resolver, "10.0.0.2:53".parse().unwrap());
    assert!(asking.from.is_none());
    let mut detail = serde_json::json!({});
    daemons.note(&asking, &mut detail);
    assert_eq!(detail["asked"], "10.0.0.2:53");
    assert_eq!(detail["asked_from"], "daemon");
    // One of the daemon's: that one (as an IPv4-mapped address too).
    let asking = daemons
        .asking("[::ffff:10.0.0.3]:53".parse().unwrap(), &own)
        .unwrap();
    assert_eq!(asking.resolver.ip(), "10.0.0.3".parse::<IpAddr>().unwrap());
    // The daemon has none: refused, with why.
    let none = daemons.asking(addressed, &[]).unwrap_err();
    assert!(none.contains("no resolver of its own"), "{none}");
    // A namespace of the daemon's user namespace: the resolver addressed, where it was.
    let container = Namespace {
        cookie: 3,
        upstream: Upstream::Addressed(None),
    };
    let asking = container.asking(addressed, &[]).unwrap();
    assert_eq!(asking.resolver, addressed);
    let mut detail = serde_json::json!({});
    container.note(&asking, &mut detail);
    assert!(detail.get("asked").is_none(), "{detail}");
}
