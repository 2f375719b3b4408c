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
