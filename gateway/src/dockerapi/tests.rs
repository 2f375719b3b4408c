//! The request model against what a hostile job sends.

use serde_json::{Value, json};

use super::*;

fn create(body: Value) -> Result<ContainerSpec, ApiError> {
    ContainerSpec::parse(body.to_string().as_bytes())
}

fn privileges(body: Value) -> Vec<Privilege> {
    create(body).unwrap().privileges
}

#[test]
fn routes_read_versions_names_and_refuse_what_the_router_would_rewrite() {
    let r = route("POST", "/v1.41/containers/create").unwrap();
    assert_eq!(
        (r.kind, r.version, r.body),
        (
            OperationKind::ContainerCreate,
            Some((1, 41)),
            BodyKind::Json
        )
    );
    let r = route("POST", "/containers/abc/start").unwrap();
    assert_eq!(
        (r.kind, r.object.as_deref(), r.version),
        (OperationKind::ContainerStart, Some("abc"), None)
    );
    assert_eq!(route("GET", "/version").unwrap().kind, OperationKind::Info);
    let r = route("GET", "/v1.43/images/registry.local:5000/team/app:1/json").unwrap();
    assert_eq!(r.object.as_deref(), Some("registry.local:5000/team/app:1"));
    assert!(
        route("POST", "/v1.43/containers/abc/attach")
            .unwrap()
            .upgrade
    );

    for (method, path) in [
        // Versions before 1.40 read a HostConfig in the body of start.
        ("POST", "/v1.23/containers/abc/start"),
        ("POST", "/v1.39/containers/create"),
        ("POST", "/v01.41/containers/create"),
        ("POST", "/vx/containers/create"),
        // What gorilla/mux would clean or decode into another route.
        ("POST", "/v1.41/containers/../images/create"),
        ("POST", "/v1.41//containers/create"),
        ("POST", "/v1.41/containers/create/"),
        ("POST", "/v1.41/containers%2Fcreate"),
        ("POST", "/v1.41/containers/a%2F..%2Fb/start"),
        ("POST", "/v1.41/containers/%zz/start"),
        ("POST", "containers/create"),
        // Endpoints the gateway does not serve.
        ("POST", "/v1.41/build"),
        ("POST", "/v1.41/swarm/init"),
        ("POST", "/v1.41/plugins/pull"),
        ("POST", "/v1.41/session"),
        ("GET", "/v1.41/events"),
        ("POST", "/v1.41/containers/prune"),
        ("GET", "/v1.41/containers/abc/attach/ws"),
        ("POST", "/v1.41/auth"),
        ("GET", "/v1.41/images/search"),
        ("PUT", "/v1.41/volumes/v"),
    ] {
        assert!(route(method, path).is_err(), "{method} {path} was routed");
    }
}

#[test]
fn forwarded_paths_carry_the_resolved_object() {
    let r = route("POST", "/v1.41/containers/web/start").unwrap();
    let id = "f".repeat(64);
    assert_eq!(
        forward_path(&r, Some(&id)),
        format!("/v1.41/containers/{id}/start")
    );
    let r = route("DELETE", "/images/team/app:1").unwrap();
    assert_eq!(forward_path(&r, None), "/images/team/app:1");
}

#[test]
fn privileges_are_read_from_every_spelling_the_engine_accepts() {
    assert_eq!(
        privileges(json!({"Image": "x", "HostConfig": {"Privileged": true}})),
        vec![Privilege::Privileged]
    );
    // Go matches field names ignoring case.
    assert_eq!(
        privileges(json!({"image": "x", "hostconfig": {"privileged": true}})),
        vec![Privilege::Privileged]
    );
    assert_eq!(
        privileges(
            json!({"Image": "x", "HostConfig": {"NetworkMode": "host", "PidMode": "host", "IpcMode": "host", "UTSMode": "host", "UsernsMode": "host", "CgroupnsMode": "host"}})
        ),
        vec![
            Privilege::HostNamespace(HostNamespace::Network),
            Privilege::HostNamespace(HostNamespace::Pid),
            Privilege::HostNamespace(HostNamespace::Ipc),
            Privilege::HostNamespace(HostNamespace::Uts),
            Privilege::HostNamespace(HostNamespace::Userns),
            Privilege::HostNamespace(HostNamespace::Cgroupns),
        ]
    );
    // Docker's default capabilities add nothing; others, in any spelling, do.
    assert_eq!(
        privileges(
            json!({"Image": "x", "HostConfig": {"CapAdd": ["CHOWN", "cap_sys_admin", "net_admin"], "Capabilities": ["ALL"]}})
        ),
        vec![
            Privilege::Capability("SYS_ADMIN".into()),
            Privilege::Capability("NET_ADMIN".into()),
            Privilege::Capability("ALL".into()),
        ]
    );
    assert_eq!(
        privileges(json!({"Image": "x", "HostConfig": {"Devices": [{"PathOnHost": "/dev/sda"}]}})),
        vec![Privilege::Devices]
    );
    assert_eq!(
        privileges(json!({"Image": "x", "HostConfig": {"DeviceRequests": [{"Count": -1}]}})),
        vec![Privilege::Devices]
    );
    // Empty lists are Docker's defaults; an empty MaskedPaths unmasks /proc.
    assert!(privileges(json!({"Image": "x", "HostConfig": {"Devices": [], "MaskedPaths": null, "SecurityOpt": ["no-new-privileges"]}})).is_empty());
    assert_eq!(
        privileges(json!({"Image": "x", "HostConfig": {"MaskedPaths": []}})),
        vec![Privilege::UnmaskedPaths]
    );
    assert_eq!(
        privileges(
            json!({"Image": "x", "HostConfig": {"SecurityOpt": ["seccomp=unconfined", "apparmor:unconfined"]}})
        ),
        vec![
            Privilege::SecurityOption("seccomp=unconfined".into()),
            Privilege::SecurityOption("apparmor:unconfined".into()),
        ]
    );
    assert_eq!(
        privileges(
            json!({"Image": "x", "HostConfig": {"Sysctls": {"net.ipv4.ip_forward": "1", "kernel.panic": "1"}}})
        ),
        vec![Privilege::Sysctl("kernel.panic".into())]
    );
    assert_eq!(
        privileges(
            json!({"Image": "x", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}, "RestartPolicy": {"Name": "always"}, "LogConfig": {"Type": "syslog", "Config": {"syslog-address": "tcp://evil:514"}}, "Runtime": "kata"}})
        ),
        vec![
            Privilege::Runtime("kata".into()),
            Privilege::PublishedPorts,
            Privilege::LogDriver("syslog".into()),
            Privilege::RestartPolicy("always".into()),
        ]
    );
}

#[test]
fn bodies_that_read_one_way_here_and_another_in_the_engine_are_refused() {
    for (body, why) in [
        // Two spellings of one field: Go keeps the last.
        (
            r#"{"Image":"x","HostConfig":{"Privileged":false,"privileged":true}}"#,
            "same field",
        ),
        (
            r#"{"Image":"x","HostConfig":{"Privileged":false},"hostConfig":{"Privileged":true}}"#,
            "same field",
        ),
        // Exact duplicates.
        (
            r#"{"Image":"x","HostConfig":{"Privileged":false,"Privileged":true}}"#,
            "twice",
        ),
        // Unicode folding: U+017F (long s) matches "s", U+212A (Kelvin) matches "k" in Go.
        (
            "{\"Image\":\"x\",\"Ho\u{17f}tConfig\":{\"Privileged\":true}}",
            "not ASCII",
        ),
        (
            "{\"Image\":\"x\",\"HostConfig\":{\"Networ\u{212a}Mode\":\"host\"}}",
            "not ASCII",
        ),
        // A field the gateway does not know (it may be one the engine knows).
        (
            r#"{"Image":"x","HostConfig":{"Annotations2":{}}}"#,
            "unknown field",
        ),
        (r#"{"Image":"x","Unknown":1}"#, "unknown field"),
        (
            r#"{"Image":"x","HostConfig":{"Binds":["/:/host:rshared"]}}"#,
            "shared",
        ),
        (
            r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h","BindOptions":{"Propagation":"rshared"}}]}}"#,
            "shared",
        ),
        (
            r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"npipe","Source":"x","Target":"/h"}]}}"#,
            "not accepted",
        ),
        (
            r#"{"Image":"x","HostConfig":{"Binds":["/a:/b:ro:x"]}}"#,
            "too many",
        ),
        (
            r#"{"Image":"x","Labels":{"gateway.job":"other"}}"#,
            "gateway",
        ),
        (
            r#"{"Image":"x","Labels":{"Gateway.Job":"other"}}"#,
            "gateway",
        ),
        (
            r#"{"Image":"x","HostConfig":{"Privileged":"true"}}"#,
            "boolean",
        ),
        (
            r#"{"Image":"x","HostConfig":{"PidMode":"weird"}}"#,
            "not accepted",
        ),
        (
            r#"{"Image":"x","HostConfig":{"Annotations":{"a":"b"}}}"#,
            "Annotations",
        ),
        (r#"["Image"]"#, "object"),
    ] {
        let e = ContainerSpec::parse(body.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{body} was accepted"));
        assert!(e.to_string().contains(why), "{body}: {e}");
    }
}

#[test]
fn mounts_are_read_like_the_engines_linux_parser() {
    let spec = create(json!({
        "Image": "x",
        "HostConfig": {
            "Binds": ["/:/host", "/srv/data:/data:ro,z", "cache:/cache", "/anon", "/c:rw"],
            "Mounts": [
                {"Type": "bind", "Source": "/proc", "Target": "/p"},
                {"Type": "volume", "Source": "", "Target": "/v"},
                {"Type": "tmpfs", "Target": "/t"}
            ]
        }
    }))
    .unwrap();
    let m: Vec<(MountKind, &str, &str, bool)> = spec
        .mounts
        .iter()
        .map(|m| (m.kind, m.source.as_str(), m.target.as_str(), m.read_only))
        .collect();
    assert_eq!(
        m,
        vec![
            (MountKind::Bind, "/", "/host", false),
            (MountKind::Bind, "/srv/data", "/data", true),
            (MountKind::Volume, "cache", "/cache", false),
            (MountKind::Anonymous, "", "/anon", false),
            (MountKind::Anonymous, "", "/c", false),
            (MountKind::Bind, "/proc", "/p", false),
            (MountKind::Anonymous, "", "/v", false),
            (MountKind::Tmpfs, "", "/t", false),
        ]
    );
    assert_eq!(
        spec.privileges,
        vec![
            Privilege::Bind("/".into()),
            Privilege::Bind("/srv/data".into()),
            Privilege::Bind("/proc".into()),
        ]
    );
}

#[test]
fn the_forwarded_body_is_what_was_checked_with_the_gateways_changes() {
    let mut spec = create(json!({
        "image": "debian",
        "cmd": ["psql", "-c", "select 1"],
        "hostconfig": {
            "binds": ["/tmp/x/../src:/src:ro"],
            "volumesfrom": ["web:ro"],
            "networkmode": "jobnet",
            "links": ["db:database"],
            "cgroupparent": ""
        },
        "networkingconfig": {"endpointsconfig": {"jobnet": {"Aliases": ["a"]}}}
    }))
    .unwrap();
    assert_eq!(spec.containers(), vec!["web", "db"]);
    assert_eq!(spec.networks(), vec!["jobnet", "jobnet"]);
    spec.set_cgroup_parent("/jobs/job-1");
    spec.set_job_label("job-1");
    spec.resolve_container("web", "w1");
    spec.resolve_container("db", "d1");
    spec.resolve_network("jobnet", "n1");
    spec.set_mount_source(0, "/src");
    let out: Value = serde_json::from_slice(&spec.body()).unwrap();
    assert_eq!(out["Image"], "debian");
    assert_eq!(out["Cmd"], json!(["psql", "-c", "select 1"]));
    assert_eq!(out["Labels"][JOB_LABEL], "job-1");
    let h = &out["HostConfig"];
    assert_eq!(h["CgroupParent"], "/jobs/job-1");
    assert_eq!(h["Binds"], json!(["/src:/src:ro"]));
    assert_eq!(h["VolumesFrom"], json!(["w1:ro"]));
    assert_eq!(h["Links"], json!(["d1:database"]));
    assert_eq!(h["NetworkMode"], "n1");
    assert_eq!(
        out["NetworkingConfig"]["EndpointsConfig"],
        json!({"n1": {"Aliases": ["a"]}})
    );
    // Only canonical names go out.
    assert!(out.get("image").is_none() && h.get("binds").is_none());
}

#[test]
fn exec_update_network_and_volume_bodies() {
    let e = ExecSpec::parse(br#"{"Cmd":["sh"],"Privileged":true,"User":"root"}"#).unwrap();
    assert_eq!(e.privileges, vec![Privilege::Privileged]);
    assert!(ExecSpec::parse(br#"{"Cmd":["sh"],"privileged":false,"Privileged":true}"#).is_err());

    let u = UpdateSpec::parse(br#"{"Memory":1024,"Devices":[{"PathOnHost":"/dev/mem"}]}"#).unwrap();
    assert_eq!(u.privileges, vec![Privilege::Devices]);
    assert!(UpdateSpec::parse(br#"{"CgroupParent":"/"}"#).is_err());

    let n = NetworkSpec::parse(br#"{"Name":"n","Driver":"macvlan","Options":{"parent":"eth0"}}"#)
        .unwrap();
    assert_eq!(n.privileges.len(), 2);
    let n = NetworkSpec::parse(br#"{"Name":"n","IPAM":{"Config":[{"Subnet":"10.0.0.0/24"}]}}"#)
        .unwrap();
    assert_eq!(n.privileges, vec![Privilege::NetworkAddresses]);
    assert!(
        NetworkSpec::parse(br#"{"Name":"n"}"#)
            .unwrap()
            .privileges
            .is_empty()
    );

    let v =
        VolumeSpec::parse(br#"{"Name":"v1","DriverOpts":{"type":"none","o":"bind","device":"/"}}"#)
            .unwrap();
    assert!(matches!(v.privileges[..], [Privilege::VolumeDriver(_)]));
    assert!(VolumeSpec::parse(br#"{"Name":"../x"}"#).is_err());
}
