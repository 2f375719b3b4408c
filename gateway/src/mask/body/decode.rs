//! Content-Encoding decoding in front of the maskers, push-style, with bounded output.
//!
//! Each decoder writes what it decodes, in pieces of its own fixed buffer (32 KiB for gzip,
//! deflate and br, zstd's block size for zstd), into a [`Sink`] that feeds the masker at once: no
//! decoded body accumulates. The sink enforces the bomb bounds on every piece, so a bomb is
//! stopped after at most one buffer beyond the bound:
//! - the decoded size of one push is at most `PUSH_GRACE` + `max_ratio` × the push's size (a
//!   small push cannot make a large output, however much was sent before);
//! - the decoded size of the body is at most `PUSH_GRACE` + `max_ratio` × its encoded size, and
//!   at most `max_decoded_bytes`.
//!
//! Decoder state is bounded by the format: gzip and deflate keep a 32 KiB window; zstd frames may
//! ask for at most an 8 MiB window (`WINDOW_LOG_MAX`, the limit RFC 8878 sets for HTTP; larger
//! frames are refused); brotli's window is at most 16 MiB (the large-window extension is off).

use std::io::{self, Write};

use flate2::{Decompress, FlushDecompress, Status};

use super::{BodyError, Coding, Inner};

/// Decoded bytes one push may produce beyond its ratio, and a body beyond its ratio: a decoder
/// may hold up to a block of output that a small push completes.
pub(super) const PUSH_GRACE: u64 = 1024 * 1024;
/// zstd frames asking for a larger window than 2^23 bytes are refused.
const WINDOW_LOG_MAX: u32 = 23;
const BUFFER: usize = 32 * 1024;

/// Where decoded bytes go: the masker, under the bomb bounds.
pub(super) struct Sink {
    pub(super) inner: Inner,
    pub(super) out: Vec<u8>,
    /// Set when the masker or a bound refused: the decoder's own error is then just its echo.
    pub(super) error: Option<BodyError>,
    bounded: bool,
    max_decoded: u64,
    max_ratio: u64,
    encoded: u64,
    decoded: u64,
    push_decoded: u64,
    push_allowance: u64,
}

impl Sink {
    fn accept(&mut self, buf: &[u8]) -> Result<(), BodyError> {
        if self.bounded {
            self.decoded += buf.len() as u64;
            self.push_decoded += buf.len() as u64;
            if self.decoded > self.max_decoded {
                return Err(BodyError::DecodedTooLarge {
                    max: self.max_decoded,
                });
            }
            let body_allowance =
                PUSH_GRACE.saturating_add(self.max_ratio.saturating_mul(self.encoded));
            if self.push_decoded > self.push_allowance || self.decoded > body_allowance {
                return Err(BodyError::Ratio {
                    ratio: self.max_ratio,
                });
            }
        }
        self.inner.push(buf, &mut self.out)
    }

    /// A push of `len` encoded bytes starts.
    fn start_push(&mut self, len: usize) {
        self.encoded += len as u64;
        self.push_decoded = 0;
        self.push_allowance = PUSH_GRACE.saturating_add(self.max_ratio.saturating_mul(len as u64));
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("the masker refused the body"));
        }
        if let Err(e) = self.accept(buf) {
            self.error = Some(e);
            return Err(io::Error::other("the masker refused the body"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// HTTP `deflate` is zlib-wrapped (RFC 9110); some servers send raw deflate, which clients
/// accept too: the first two bytes tell them apart.
pub(super) struct Deflate {
    sink: Sink,
    head: Vec<u8>,
    z: Option<Decompress>,
    done: bool,
    buf: Box<[u8]>,
}

fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0F == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

impl Deflate {
    fn push(&mut self, mut input: &[u8]) -> Result<(), BodyError> {
        if self.z.is_none() {
            let take = (2 - self.head.len()).min(input.len());
            self.head.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.head.len() < 2 {
                return Ok(());
            }
            self.z = Some(Decompress::new(is_zlib_header(self.head[0], self.head[1])));
            let head = std::mem::take(&mut self.head);
            self.feed(&head)?;
        }
        self.feed(input)
    }

    fn feed(&mut self, mut input: &[u8]) -> Result<(), BodyError> {
        let Some(z) = self.z.as_mut() else {
            return Ok(());
        };
        loop {
            if self.done {
                if input.is_empty() {
                    return Ok(());
                }
                return Err(BodyError::TrailingData {
                    encoding: "deflate",
                });
            }
            let (in_before, out_before) = (z.total_in(), z.total_out());
            let status = z
                .decompress(input, &mut self.buf, FlushDecompress::None)
                .map_err(|e| BodyError::Decode {
                    encoding: "deflate",
                    message: e.to_string(),
                })?;
            let consumed = (z.total_in() - in_before) as usize;
            let produced = (z.total_out() - out_before) as usize;
            input = &input[consumed..];
            if produced > 0 {
                self.sink.accept(&self.buf[..produced])?;
            }
            if status == Status::StreamEnd {
                self.done = true;
                continue;
            }
            // More output may be pending only when the buffer came back full.
            if produced < self.buf.len() && (input.is_empty() || consumed == 0) {
                if !input.is_empty() {
                    return Err(BodyError::Decode {
                        encoding: "deflate",
                        message: "the decoder makes no progress".into(),
                    });
                }
                return Ok(());
            }
        }
    }

    fn finish(&mut self) -> Result<(), BodyError> {
        if self.head.is_empty() && self.z.is_none() {
            return Ok(()); // nothing was sent
        }
        if !self.done {
            return Err(BodyError::Decode {
                encoding: "deflate",
                message: "the compressed body ends early".into(),
            });
        }
        Ok(())
    }
}

pub(super) enum Decoder {
    Identity(Box<Sink>),
    Gzip(Box<flate2::write::MultiGzDecoder<Sink>>),
    Deflate(Box<Deflate>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Sink>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Sink>>),
}

impl Decoder {
    pub(super) fn new(
        coding: Coding,
        inner: Inner,
        max_decoded: u64,
        max_ratio: u64,
    ) -> Result<Decoder, BodyError> {
        let sink = Sink {
            inner,
            out: Vec::new(),
            error: None,
            bounded: coding != Coding::Identity,
            max_decoded,
            max_ratio,
            encoded: 0,
            decoded: 0,
            push_decoded: 0,
            push_allowance: 0,
        };
        Ok(match coding {
            Coding::Identity => Decoder::Identity(Box::new(sink)),
            Coding::Gzip => Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink))),
            Coding::Deflate => Decoder::Deflate(Box::new(Deflate {
                sink,
                head: Vec::new(),
                z: None,
                done: false,
                buf: vec![0; BUFFER].into_boxed_slice(),
            })),
            Coding::Brotli => Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(sink, BUFFER),
            )),
            Coding::Zstd => {
                let zstd_error = |e: io::Error| BodyError::Decode {
                    encoding: "zstd",
                    message: e.to_string(),
                };
                let mut d = zstd::stream::write::Decoder::new(sink).map_err(zstd_error)?;
                d.window_log_max(WINDOW_LOG_MAX).map_err(zstd_error)?;
                Decoder::Zstd(Box::new(d))
            }
        })
    }

    pub(super) fn sink(&self) -> &Sink {
        match self {
            Decoder::Identity(s) => s,
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Deflate(d) => &d.sink,
            Decoder::Brotli(d) => d.get_ref(),
            Decoder::Zstd(d) => d.get_ref(),
        }
    }

    pub(super) fn sink_mut(&mut self) -> &mut Sink {
        match self {
            Decoder::Identity(s) => s,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => &mut d.sink,
            Decoder::Brotli(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
        }
    }

    fn encoding(&self) -> &'static str {
        match self {
            Decoder::Identity(_) => "identity",
            Decoder::Gzip(_) => "gzip",
            Decoder::Deflate(_) => "deflate",
            Decoder::Brotli(_) => "br",
            Decoder::Zstd(_) => "zstd",
        }
    }

    /// The sink's own error when it refused; the decoder's otherwise.
    fn error(&mut self, e: io::Error) -> BodyError {
        let encoding = self.encoding();
        self.sink_mut()
            .error
            .take()
            .unwrap_or_else(|| BodyError::Decode {
                encoding,
                message: e.to_string(),
            })
    }

    /// Decodes and masks `input`; the masked output so far.
    pub(super) fn push(&mut self, input: &[u8]) -> Result<Vec<u8>, BodyError> {
        self.sink_mut().start_push(input.len());
        let result = match self {
            Decoder::Identity(s) => s.inner.push(input, &mut s.out).map_err(Failure::Body),
            Decoder::Deflate(d) => d.push(input).map_err(Failure::Body),
            Decoder::Gzip(d) => write_all(d.as_mut(), input, "gzip"),
            Decoder::Brotli(d) => write_all(d.as_mut(), input, "br"),
            Decoder::Zstd(d) => write_all(d.as_mut(), input, "zstd"),
        };
        match result {
            Ok(()) => {}
            Err(Failure::Io(e)) => return Err(self.error(e)),
            Err(Failure::Body(e)) => return Err(e),
        }
        Ok(std::mem::take(&mut self.sink_mut().out))
    }

    /// Checks that the encoded body is complete and ends the masking.
    pub(super) fn finish(&mut self) -> Result<Vec<u8>, BodyError> {
        let sent = self.sink().encoded > 0;
        let result = match self {
            Decoder::Identity(_) => Ok(()),
            Decoder::Deflate(d) => d.finish().map_err(Failure::Body),
            Decoder::Gzip(d) if sent => d.try_finish().map_err(Failure::Io),
            Decoder::Brotli(d) if sent => d.close().map_err(Failure::Io),
            Decoder::Zstd(d) if sent => d.do_finish().map_err(Failure::Io),
            _ => Ok(()),
        };
        match result {
            Ok(()) => {}
            Err(Failure::Io(e)) => return Err(self.error(e)),
            Err(Failure::Body(e)) => return Err(e),
        }
        let sink = self.sink_mut();
        sink.inner.finish(&mut sink.out)?;
        Ok(std::mem::take(&mut sink.out))
    }
}

enum Failure {
    Io(io::Error),
    Body(BodyError),
}

/// `write_all`, but bytes a decoder will not take (it reached the end of its stream) are an error
/// rather than a retry loop.
fn write_all(w: &mut impl Write, mut input: &[u8], encoding: &'static str) -> Result<(), Failure> {
    while !input.is_empty() {
        match w.write(input) {
            Ok(0) => return Err(Failure::Body(BodyError::TrailingData { encoding })),
            Ok(n) => input = &input[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::Io(e)),
        }
    }
    w.flush().map_err(Failure::Io)
}
