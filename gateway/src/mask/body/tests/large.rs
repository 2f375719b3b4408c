//! A large body in bounded memory: ~100 MB of JSON generated as it streams (never held whole),
//! with strings of several megabytes among many small records.

use std::time::Instant;

use super::*;

/// Generates the body piece by piece: `[record, record, …]`, with a huge detector-read string
/// and a huge masked string among the records.
struct Generator {
    records: usize,
    next: usize,
    huge_at: usize,
    done: bool,
}

const HUGE: usize = 8 * 1024 * 1024;

impl Generator {
    fn new(total: usize, huge: bool) -> Generator {
        let records = total / 160;
        Generator {
            records,
            next: 0,
            huge_at: if huge { records / 2 } else { usize::MAX },
            done: false,
        }
    }

    /// Appends at least `want` bytes (less at the end).
    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) {
        if self.next == 0 && buf.is_empty() {
            buf.extend_from_slice(b"[\n");
        }
        while buf.len() < want && !self.done {
            let i = self.next;
            if i == self.records {
                buf.extend_from_slice(b"\n]\n");
                self.done = true;
                break;
            }
            if i > 0 {
                buf.extend_from_slice(b",\n");
            }
            buf.extend_from_slice(
                format!(
                    r#"{{"id": {i}, "name": "user {i}", "ssn": "123-45-6789", "email": "user{i}\u0040example.com", "note": "lorem ipsum, dolor sit / amet"}}"#
                )
                .as_bytes(),
            );
            if i == self.huge_at {
                // A long text read by the detectors, and a long secret dropped unread.
                buf.extend_from_slice(b",\n{\"note\": \"");
                for j in 0..HUGE / 32 {
                    buf.extend_from_slice(format!("call me at a{j:06}@example.com, ").as_bytes());
                }
                buf.extend_from_slice(b"\", \"ssn\": \"");
                buf.extend(std::iter::repeat_n(b'7', HUGE));
                buf.extend_from_slice(b"\"}");
            }
            self.next += 1;
        }
    }
}

/// Counts occurrences of patterns across output pieces (a pattern may straddle two).
struct Counter {
    tail: Vec<u8>,
    masked: usize,
    emails: usize,
    leaks: usize,
    bytes: usize,
}

impl Counter {
    fn feed(&mut self, out: &[u8]) {
        self.bytes += out.len();
        let mut text = std::mem::take(&mut self.tail);
        let keep = text.len();
        text.extend_from_slice(out);
        let count = |needle: &[u8]| {
            memchr::memmem::find_iter(&text, needle)
                .filter(|&p| p + needle.len() > keep)
                .count()
        };
        self.masked += count(b"\"[masked]\"");
        self.emails += count(b"[masked:email]");
        self.leaks += count(b"123-45-6789") + count(b"example.com") + count(b"7777777777");
        let from = text.len().saturating_sub(16);
        self.tail = text[from..].to_vec();
    }
}

fn mask_large(
    r: &Arc<BodyRules>,
    total: usize,
    huge: bool,
    push: usize,
) -> (Counter, usize, usize, f64) {
    let mut m = masker(r, "application/json", None, &BodyLimits::default());
    let mut g = Generator::new(total, huge);
    let mut counter = Counter {
        tail: Vec::new(),
        masked: 0,
        emails: 0,
        leaks: 0,
        bytes: 0,
    };
    let (mut max_buffered, mut input) = (0, 0);
    let mut buf = Vec::new();
    let mut seconds = 0.0;
    loop {
        g.fill(&mut buf, push);
        if buf.is_empty() {
            break;
        }
        let n = buf.len().min(push);
        input += n;
        let started = Instant::now();
        let out = m.push(&buf[..n]).unwrap();
        seconds += started.elapsed().as_secs_f64();
        counter.feed(&out);
        max_buffered = max_buffered.max(m.buffered());
        buf.drain(..n);
    }
    counter.feed(&m.finish().unwrap());
    assert_eq!(m.masked() as usize, counter.masked + counter.emails);
    (counter, max_buffered, input, seconds)
}

#[test]
fn a_hundred_megabytes_of_json_are_masked_in_bounded_memory() {
    let total = 100 * 1024 * 1024;
    // An odd push size, so that pushes end anywhere in tokens.
    let r = rules(&["ssn"], &[Detector::Email]);
    let (c, max_buffered, input, _) = mask_large(&r, total, true, 65_521);
    assert!(input > total, "{input}");
    let records = total / 160;
    assert_eq!(c.masked, records + 1, "every ssn, the huge one too");
    assert_eq!(c.emails, records + HUGE / 32);
    assert_eq!(c.leaks, 0);
    // Two windows of 64 KiB (raw and decoded) and their escapes, whatever the body's size.
    assert!(max_buffered <= 512 * 1024, "{max_buffered} bytes buffered");
}

/// The throughput of the JSON masker, single core: `cargo test --release -p gateway --lib
/// throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn throughput() {
    let total = 256 * 1024 * 1024;
    for (name, r) in [
        ("json_fields only", rules(&["ssn"], &[])),
        ("email detector only", rules(&[], &[Detector::Email])),
        ("json_fields + email", rules(&["ssn"], &[Detector::Email])),
        (
            "json_fields + all detectors",
            rules(&["ssn", "*token*", "users[*].card"], Detector::ALL),
        ),
    ] {
        let (c, max_buffered, input, seconds) = mask_large(&r, total, false, 64 * 1024);
        println!(
            "{name}: {input} bytes in {seconds:.2} s: {:.0} MB/s; {} values masked; at most {max_buffered} bytes buffered",
            input as f64 / seconds / 1e6,
            c.masked + c.emails
        );
    }
}
