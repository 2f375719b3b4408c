//! Keeps the credential the gateway adds from coming back to the job: a server that echoes
//! request headers (a debug endpoint, an error page) would otherwise hand the job the secret it
//! never held. Every occurrence of a secret's bytes in a response body is replaced by `*` of the
//! same length, across chunk boundaries: the last `longest - 1` bytes of each chunk wait for the
//! next one.

use bytes::{Bytes, BytesMut};

pub(super) struct EchoFilter {
    secrets: Vec<Vec<u8>>,
    /// Bytes held back: they may be the start of a secret that the next chunk completes.
    held: BytesMut,
    longest: usize,
    redacted: u64,
}

impl EchoFilter {
    /// `None` when there is nothing to look for.
    pub(super) fn new(secrets: &[Vec<u8>]) -> Option<EchoFilter> {
        let longest = secrets.iter().map(Vec::len).max()?;
        Some(EchoFilter {
            secrets: secrets.to_vec(),
            held: BytesMut::new(),
            longest,
            redacted: 0,
        })
    }

    /// Filters the next chunk; returns what can be sent now.
    pub(super) fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.held.extend_from_slice(chunk);
        self.redact();
        let keep = (self.longest - 1).min(self.held.len());
        let ready = self.held.len() - keep;
        self.held.split_to(ready).freeze()
    }

    /// The body ended: the rest.
    pub(super) fn finish(&mut self) -> Bytes {
        self.redact();
        self.held.split().freeze()
    }

    /// The secrets looked for (for trailers, which are headers).
    pub(super) fn secrets(&self) -> &[Vec<u8>] {
        &self.secrets
    }

    /// Occurrences replaced so far.
    pub(super) fn redacted(&self) -> u64 {
        self.redacted
    }

    fn redact(&mut self) {
        for secret in &self.secrets {
            let mut from = 0;
            while let Some(at) = memchr::memmem::find(&self.held[from..], secret) {
                let start = from + at;
                self.held[start..start + secret.len()].fill(b'*');
                self.redacted += 1;
                from = start + secret.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_split_anywhere_across_chunks_is_replaced() {
        let secret = b"Bearer abcdefgh12345".to_vec();
        let body =
            b"{\"headers\":{\"Authorization\":\"Bearer abcdefgh12345\"},\"x\":\"abcdefgh12345\"}";
        let expected = {
            let mut f = EchoFilter::new(&[secret.clone(), b"abcdefgh12345".to_vec()]).unwrap();
            let mut out = f.push(body).to_vec();
            out.extend_from_slice(&f.finish());
            out
        };
        assert!(!expected.windows(13).any(|w| w == b"abcdefgh12345"));
        assert_eq!(expected.len(), body.len());
        for cut in 0..body.len() {
            for cut2 in cut..body.len() {
                let mut f = EchoFilter::new(&[secret.clone(), b"abcdefgh12345".to_vec()]).unwrap();
                let mut out = f.push(&body[..cut]).to_vec();
                out.extend_from_slice(&f.push(&body[cut..cut2]));
                out.extend_from_slice(&f.push(&body[cut2..]));
                out.extend_from_slice(&f.finish());
                assert_eq!(out, expected, "cut at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn other_bytes_pass_unchanged() {
        let mut f = EchoFilter::new(&[b"secretsecret".to_vec()]).unwrap();
        let mut out = f.push(b"hello ").to_vec();
        out.extend_from_slice(&f.push(b"world"));
        out.extend_from_slice(&f.finish());
        assert_eq!(out, b"hello world");
        assert_eq!(f.redacted(), 0);
    }
}
