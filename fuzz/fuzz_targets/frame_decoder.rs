//! Arbitrary bytes as a client or server stream: framing, pgwire decoding of every message type
//! the gateway decodes, DataRow splitting and masking. Nothing may panic, loop or over-read.
#![no_main]

use std::collections::HashSet;

use bytes::BytesMut;
use gateway::{
    mask::{Detector, Masker, ResultColumn},
    protocol::postgres::{frame, wire},
};
use libfuzzer_sys::fuzz_target;
use pgwire::messages::{
    data::RowDescription,
    extendedquery::{Bind, Close, Describe, Execute, Parse},
    response::ErrorResponse,
    simplequery::Query,
    startup::{Authentication, Startup},
};

/// pgwire's decoders panic on some malformed bodies; the gateway runs them under `catch_unwind`
/// and turns those panics into protocol errors. libFuzzer's hook would abort on them: only panics
/// raised elsewhere (the gateway's own framing, masking and detectors) are crashes.
fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let file = info.location().map(|l| l.file()).unwrap_or_default();
            if !(file.contains("/pgwire-") || file.contains("/bytes-")) {
                eprintln!("{info}");
                std::process::abort();
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    install_hook();
    // Startup phase.
    let mut buf = BytesMut::from(data);
    if let Ok(Some(packet)) = frame::split_startup(&mut buf) {
        let _ = frame::startup_code(&packet);
        let _ = wire::decode::<Startup>("StartupMessage", &packet);
    }
    // Typed messages.
    let mut buf = BytesMut::from(data);
    let masker = Masker {
        rules: vec!["fuzz".into()],
        columns: Vec::new(),
        detectors: Detector::ALL.to_vec(),
    };
    let columns: Vec<ResultColumn> = (0..3)
        .map(|i| ResultColumn {
            name: format!("c{i}"),
            table_oid: 0,
            column: i,
            type_oid: 25,
            binary: i == 2,
        })
        .collect();
    let plan = masker.plan(&columns, &HashSet::new());
    while let Ok(Some(f)) = frame::split(&mut buf, 1 << 20) {
        let b = &f.bytes;
        match f.tag {
            b'Q' => drop(wire::decode::<Query>("Query", b)),
            b'P' => drop(wire::decode::<Parse>("Parse", b)),
            b'B' => drop(wire::decode::<Bind>("Bind", b)),
            b'D' => {
                drop(wire::decode::<Describe>("Describe", b));
                let _ = plan.apply(f.body());
            }
            b'E' => {
                drop(wire::decode::<Execute>("Execute", b));
                drop(wire::decode::<ErrorResponse>("ErrorResponse", b));
                let _ = wire::error_fields(&f);
            }
            b'C' => drop(wire::decode::<Close>("Close", b)),
            b'T' => drop(wire::decode::<RowDescription>("RowDescription", b)),
            b'R' => drop(wire::decode::<Authentication>("Authentication", b)),
            _ => {
                let _ = gateway::mask::redact(f.body(), Detector::ALL);
            }
        }
    }
});
