//! Arbitrary text through the SQL classifier and statement policy: no panic, no stack overflow.
#![no_main]

use gateway::{config::Config, identity::Identity, policy::Policy, sql};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[[targets]]
name = "db"
protocol = "postgres"
address = "10.0.0.5:5432"

[[rules]]
name = "deny-ddl"
action = "deny"
unauthenticated = true
[rules.sql]
kinds = ["drop", "truncate", "alter"]
functions = ["pg_*", "dblink*"]

[[rules]]
name = "writes-need-where"
action = "deny"
unauthenticated = true
[rules.sql]
without_where = true
tables = ["public.*"]

[[rules]]
name = "all"
action = "allow"
unauthenticated = true
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    thread_local! {
        static POLICY: Policy = Policy::from_config(&Config::parse(CONFIG, "fuzz").expect("valid"));
    }
    let identity = Identity::unauthenticated();
    for s in sql::classify(text) {
        POLICY.with(|p| {
            let _ = p.decide_statement(&identity, "db", &s);
        });
    }
});
