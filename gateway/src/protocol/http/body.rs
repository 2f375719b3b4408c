//! Bodies between the two connections. A request body is read up to the sample the recording
//! and the approvers see, then streams on; trailers are dropped (a trailer could carry a header
//! the gateway removed). A response body streams through the masking and the echo filter, is
//! counted and hashed (what the job received, so masked), and reports how it ended once, whether
//! it completed, failed, was cut by the masking, or the job went away.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt as _, StreamExt as _};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

use super::{Body, BoxError, echo::EchoFilter};
use crate::mask::body::{BodyError, BodyMasker};

/// The first bytes of a request body, and the whole body to forward.
pub(super) struct Sampled {
    pub(super) sample: Bytes,
    /// The sample is the whole body.
    pub(super) complete: bool,
    pub(super) body: Body,
}

/// Reads up to `limit` bytes of `body` (whole frames: a little more may be held).
pub(super) async fn sample(
    mut body: Incoming,
    limit: usize,
    counter: Arc<AtomicU64>,
) -> Result<Sampled, hyper::Error> {
    let mut frames = Vec::new();
    let mut sample = BytesMut::new();
    let mut complete = body.is_end_stream();
    while !complete && sample.len() < limit {
        match body.frame().await {
            None => complete = true,
            Some(frame) => {
                let frame = frame?;
                if let Some(data) = frame.data_ref() {
                    let room = limit - sample.len();
                    sample.extend_from_slice(&data[..room.min(data.len())]);
                    frames.push(Ok(frame));
                }
            }
        }
    }
    let head = futures_util::stream::iter(frames);
    let rest = BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            // Trailers end here.
            Ok(f) if f.is_trailers() => None,
            other => Some(other.map_err(BoxError::from)),
        }
    });
    let counted = head.chain(rest).map(move |frame| {
        if let Ok(data) = frame.as_ref().map(Frame::data_ref)
            && let Some(d) = data
        {
            counter.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        frame
    });
    Ok(Sampled {
        sample: sample.freeze(),
        complete,
        body: BodyExt::boxed_unsync(StreamBody::new(counted)),
    })
}

/// A body without bytes (the gateway's own answers).
pub(super) fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Ending {
    Complete,
    /// The upstream failed mid-body; the job's client sees a truncated body.
    UpstreamError,
    /// The job's client went away before the end.
    ClientGone,
    /// The masking could not read the rest of the body; the job's client sees a truncated body.
    MaskingFailed,
}

/// What the recording keeps of a response body.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Summary {
    pub(super) ending: Ending,
    /// Bytes sent to the job.
    pub(super) bytes: u64,
    /// SHA-256 of the bytes sent to the job.
    pub sha256: String,
    /// Echoes of the gateway's credential replaced.
    pub(super) echoes_redacted: u64,
    /// Values the masking replaced; `None` when no masking read the body.
    pub(super) masked: Option<u64>,
    /// Why the masking stopped the body.
    pub(super) masking_error: Option<String>,
    #[serde(skip)]
    pub(super) sample: Bytes,
}

impl Summary {
    /// A response that ended with its headers.
    pub(super) fn empty() -> Summary {
        Summary {
            ending: Ending::Complete,
            bytes: 0,
            sha256: crate::hex::lower(&Sha256::digest(b"")),
            echoes_redacted: 0,
            masked: None,
            masking_error: None,
            sample: Bytes::new(),
        }
    }
}

type OnEnd = Box<dyn FnOnce(Summary) + Send>;

/// What a response body goes through on its way to the job: the masking (which also decodes the
/// body), then the credential's echo filter, which must read what the job will read.
pub(super) struct Filters {
    pub(super) masker: Option<BodyMasker>,
    pub(super) echo: Option<EchoFilter>,
}

impl Filters {
    fn push(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        let data = match self.masker.as_mut() {
            Some(m) => m.push(&data)?,
            None => data,
        };
        Ok(match self.echo.as_mut() {
            Some(f) => f.push(&data),
            None => data,
        })
    }

    fn finish(&mut self) -> Result<Bytes, BodyError> {
        let rest = match self.masker.as_mut() {
            Some(m) => m.finish()?,
            None => Bytes::new(),
        };
        Ok(match self.echo.as_mut() {
            Some(f) => [f.push(&rest), f.finish()].concat().into(),
            None => rest,
        })
    }
}

/// Masked output that [`ResponseBody::prefetch`] gathers before the headers go out.
const PREFETCH_BYTES: usize = 64 * 1024;

/// A response body on its way to the job.
pub(super) struct ResponseBody {
    inner: Incoming,
    filters: Filters,
    hasher: Sha256,
    bytes: u64,
    sample: BytesMut,
    sample_limit: usize,
    counter: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
    /// Output read ahead by `prefetch`, sent first.
    held: Option<Bytes>,
    /// An upstream error met by `prefetch`, delivered after `held`.
    held_error: Option<BoxError>,
    /// The upstream body ended and the filters gave their last bytes.
    upstream_done: bool,
    masking_error: Option<String>,
    /// Trailers that wait for the filters' last bytes.
    held_trailers: Option<http::HeaderMap>,
    /// Echoes of the credential replaced in trailers.
    trailer_echoes: u64,
}

impl ResponseBody {
    pub(super) fn new(
        inner: Incoming,
        filters: Filters,
        sample_limit: usize,
        counter: Arc<AtomicU64>,
        on_end: OnEnd,
    ) -> ResponseBody {
        ResponseBody {
            inner,
            filters,
            hasher: Sha256::new(),
            bytes: 0,
            sample: BytesMut::new(),
            sample_limit,
            counter,
            on_end: Some(on_end),
            held: None,
            held_error: None,
            upstream_done: false,
            masking_error: None,
            held_trailers: None,
            trailer_echoes: 0,
        }
    }

    /// Reads and masks the body's beginning before the headers go out, so that a body the
    /// masking refuses early (a decompression bomb, an invalid stream, a short unreadable body)
    /// gets a refusal instead of a truncated 200. Reads until `PREFETCH_BYTES` of output are
    /// ready, the body ends, or output is ready and the upstream has sent nothing more yet (an
    /// event stream is not held back). Returns the masking's error; the body then reports
    /// nothing (the caller records the refusal).
    pub(super) async fn prefetch(&mut self) -> Result<(), BodyError> {
        let mut out = BytesMut::new();
        while !self.upstream_done && out.len() < PREFETCH_BYTES {
            let next = if out.is_empty() {
                self.inner.frame().await
            } else {
                match self.inner.frame().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            let (data, ended) = match next {
                None => (Bytes::new(), true),
                Some(Err(e)) => {
                    self.held_error = Some(e.into());
                    break;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data, self.inner.is_end_stream()),
                    // Trailers of a masked body are dropped (their values are not masked).
                    Err(_) => continue,
                },
            };
            if !data.is_empty() {
                let masked = self.filters.push(data).map_err(|e| self.disarm(e))?;
                out.extend_from_slice(&masked);
            }
            if ended {
                let rest = self.filters.finish().map_err(|e| self.disarm(e))?;
                out.extend_from_slice(&rest);
                self.upstream_done = true;
            }
        }
        self.held = Some(out.freeze());
        Ok(())
    }

    /// The whole body's length, when `prefetch` read all of it.
    pub(super) fn complete_length(&self) -> Option<usize> {
        self.upstream_done
            .then(|| self.held.as_ref().map_or(0, Bytes::len))
    }

    fn disarm(&mut self, e: BodyError) -> BodyError {
        self.on_end = None;
        e
    }

    fn pass(&mut self, data: Bytes) -> Bytes {
        self.hasher.update(&data);
        self.bytes += data.len() as u64;
        self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        let room = self.sample_limit.saturating_sub(self.sample.len());
        self.sample.extend_from_slice(&data[..room.min(data.len())]);
        data
    }

    fn end(&mut self, ending: Ending) {
        if let Some(on_end) = self.on_end.take() {
            let hasher = std::mem::take(&mut self.hasher);
            on_end(Summary {
                ending,
                bytes: self.bytes,
                sha256: crate::hex::lower(&hasher.finalize()),
                echoes_redacted: self.filters.echo.as_ref().map_or(0, EchoFilter::redacted)
                    + self.trailer_echoes,
                masked: self.filters.masker.as_ref().map(BodyMasker::masked),
                masking_error: self.masking_error.take(),
                sample: std::mem::take(&mut self.sample).freeze(),
            });
        }
    }

    /// The masking failed mid-body: the body ends with an error, so that the job's client sees
    /// a truncated body (HTTP/2 stream reset, HTTP/1.1 connection closed before the end).
    /// The upstream's body is over: what the filters still hold goes out, then the end.
    fn upstream_ended(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.upstream_done = true;
        match self.filters.finish() {
            Ok(rest) if !rest.is_empty() => self.send(rest),
            Ok(_) => {
                self.end(Ending::Complete);
                Poll::Ready(None)
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.upstream_done = true;
        self.masking_error = Some(e.to_string());
        self.end(Ending::MaskingFailed);
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// Sends `data`; when it is the last, the end is reported with it (with a known length the
    /// job's side may never poll past the last byte).
    fn send(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let data = self.pass(data);
        if self.upstream_done && self.held_error.is_none() {
            self.end(Ending::Complete);
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take()
            && !held.is_empty()
        {
            return this.send(held);
        }
        if let Some(trailers) = this.held_trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if let Some(e) = this.held_error.take() {
            this.end(Ending::UpstreamError);
            return Poll::Ready(Some(Err(e)));
        }
        if this.upstream_done || this.on_end.is_none() {
            this.end(Ending::Complete);
            return Poll::Ready(None);
        }
        if this.inner.is_end_stream() {
            return this.upstream_ended();
        }
        loop {
            let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            match frame {
                None => return this.upstream_ended(),
                Some(Err(e)) => {
                    this.end(Ending::UpstreamError);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let mut data = match this.filters.push(data) {
                            Ok(d) => d,
                            Err(e) => return this.fail(e),
                        };
                        if this.inner.is_end_stream() {
                            this.upstream_done = true;
                            match this.filters.finish() {
                                Ok(rest) if !rest.is_empty() => {
                                    data = [data, rest].concat().into();
                                }
                                Ok(_) => {}
                                Err(e) => return this.fail(e),
                            }
                        }
                        if data.is_empty() && !this.upstream_done {
                            continue;
                        }
                        return this.send(data);
                    }
                    // Trailers (gRPC status) pass, without echoes of the credential, after
                    // what the filters still hold; unless the body is masked: their values are
                    // not.
                    Err(frame) => {
                        if this.filters.masker.is_some() {
                            continue;
                        }
                        let Ok(mut trailers) = frame.into_trailers() else {
                            continue;
                        };
                        if let Some(echo) = &this.filters.echo {
                            this.trailer_echoes +=
                                super::headers::redact_echoes(&mut trailers, echo.secrets());
                        }
                        this.upstream_done = true;
                        let rest = match this.filters.finish() {
                            Ok(rest) => rest,
                            Err(e) => return this.fail(e),
                        };
                        if rest.is_empty() {
                            this.end(Ending::Complete);
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        this.held_trailers = Some(trailers);
                        return this.send(rest);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none()
            && self.held.as_ref().is_none_or(Bytes::is_empty)
            && self.held_trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.filters.masker, self.complete_length()) {
            // The echo filter keeps lengths, so the upstream's hint stays true.
            (None, _) => self.inner.size_hint(),
            (Some(_), Some(len)) if self.bytes == 0 => SizeHint::with_exact(len as u64),
            // Masking changes lengths: unknown until the end.
            (Some(_), _) => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.end(Ending::ClientGone);
    }
}
