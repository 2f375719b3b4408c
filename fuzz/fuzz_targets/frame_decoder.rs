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

fuzz_target!(|data: &[u8]| {
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
