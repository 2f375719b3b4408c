//! Reading a resolver's answer: the addresses it gives for the name asked.

use std::net::IpAddr;

use hickory_proto::{
    op::Message,
    rr::{RData, RecordType},
};

/// The A and AAAA records of an answer that belong to `name`: its own, and those of the names
/// its CNAME chain within the answer leads to. With their TTLs.
pub(super) fn addresses(answer: &Message, name: &hickory_proto::rr::Name) -> Vec<(IpAddr, u32)> {
    let mut names = vec![name.to_lowercase()];
    // Each pass adds at least one name or stops: bounded by the number of records.
    for _ in 0..answer.answers().len() {
        let mut grew = false;
        for r in answer.answers() {
            if let RData::CNAME(target) = r.data()
                && names.contains(&r.name().to_lowercase())
                && !names.contains(&target.0.to_lowercase())
            {
                names.push(target.0.to_lowercase());
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    answer
        .answers()
        .iter()
        .filter(|r| names.contains(&r.name().to_lowercase()))
        .filter_map(|r| match (r.record_type(), r.data()) {
            (RecordType::A, RData::A(a)) => Some((IpAddr::V4(a.0), r.ttl())),
            (RecordType::AAAA, RData::AAAA(a)) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect()
}
