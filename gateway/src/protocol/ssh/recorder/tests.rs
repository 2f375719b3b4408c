use super::*;

fn cast(dir: &std::path::Path) -> Cast {
    let file = dir.join("t.cast");
    Cast {
        w: BufWriter::new(File::create(&file).unwrap()),
        file,
        bytes: 0,
        truncated: false,
        last_flush: Instant::now(),
        tail: Vec::new(),
        held: Vec::new(),
        events: Vec::new(),
        next_scan: 2 * CARRY,
    }
}

/// The output events of a finished cast: (time, text).
fn written(mut c: Cast) -> Vec<(f64, String)> {
    c.release(true, crate::protocol::ssh::DETECTORS);
    c.w.flush().unwrap();
    std::fs::read_to_string(&c.file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v[1] == "o" || v[1] == "r")
        .map(|v| {
            (
                v[0].as_f64().unwrap(),
                format!("{}:{}", v[1].as_str().unwrap(), v[2].as_str().unwrap()),
            )
        })
        .collect()
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gw-rec-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_secret_split_across_chunks_is_masked_with_the_timing_kept() {
    let d = dir("split");
    let mut c = cast(&d);
    let det = crate::protocol::ssh::DETECTORS;
    c.write_output(0.5, b"key=AKIAIOSF", u64::MAX, det);
    c.resize(0.7, "80x24".into());
    c.write_output(1.0, "ODNN7EXAMPLE done é".as_bytes(), u64::MAX, det);
    let out = written(c);
    assert_eq!(
        out,
        [
            (0.5, "o:key=[masked:aws_access_key]".to_string()),
            (0.7, "r:80x24".to_string()),
            (1.0, "o: done é".to_string())
        ]
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn output_is_written_once_enough_follows_and_memory_stays_bounded() {
    let d = dir("bounded");
    let mut c = cast(&d);
    let det = crate::protocol::ssh::DETECTORS;
    // A token written byte by byte, then plenty more output: it is written masked long before
    // the end, and what is held stays within the window.
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl";
    for (i, b) in jwt.bytes().enumerate() {
        c.write_output(i as f64, &[b], u64::MAX, det);
    }
    let filler = vec![b' '; 1000];
    for i in 0..200 {
        c.write_output(100.0 + f64::from(i), &filler, u64::MAX, det);
        assert!(c.held.len() < 3 * CARRY, "{}", c.held.len());
    }
    c.w.flush().unwrap();
    let early = std::fs::read_to_string(&c.file).unwrap();
    assert!(
        early.contains("[masked:jwt]") && !early.contains("eyJ"),
        "{early}"
    );
    // A key block that never ends holds back at most MAX_CARRY.
    c.write_output(
        400.0,
        b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
        u64::MAX,
        det,
    );
    for i in 0..400 {
        c.write_output(500.0 + f64::from(i), &filler, u64::MAX, det);
        assert!(c.held.len() <= MAX_CARRY + 2 * CARRY, "{}", c.held.len());
    }
    let out = written(c);
    let all: String = out.iter().map(|(_, t)| t.as_str()).collect();
    assert!(
        !all.contains("BEGIN OPENSSH"),
        "the key block header was written"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn the_cap_writes_what_is_held_and_notes_the_cut() {
    let d = dir("cap");
    let mut c = cast(&d);
    let det = crate::protocol::ssh::DETECTORS;
    c.write_output(0.1, b"hello AKIAIOSFODNN7EXAMPLE ", 30, det);
    c.write_output(0.2, b"more than the cap", 30, det);
    c.write_output(0.3, b"dropped", 30, det);
    let out = written(c);
    let all: String = out.iter().map(|(_, t)| t.as_str()).collect();
    assert!(all.contains("hello [masked:aws_access_key] "), "{all}");
    assert!(all.contains("recording truncated here"), "{all}");
    assert!(!all.contains("dropped"), "{all}");
    let _ = std::fs::remove_dir_all(d);
}
