//! Bodies between the two connections. A request body is read up to the sample the recording
//! and the approvers see, then streams on; trailers are dropped (a trailer could carry a header
//! the gateway removed). A response body streams through the echo filter, is counted and hashed,
//! and reports how it ended once, whether it completed, failed, or the job went away.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

use super::{Body, BoxError, echo::EchoFilter};

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

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Ending {
    Complete,
    /// The upstream failed mid-body; the job's client sees a truncated body.
    UpstreamError,
    /// The job's client went away before the end.
    ClientGone,
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
    #[serde(skip)]
    pub(super) sample: Bytes,
}

type OnEnd = Box<dyn FnOnce(Summary) + Send>;

/// A response body on its way to the job.
pub(super) struct ResponseBody {
    inner: Incoming,
    echo: Option<EchoFilter>,
    hasher: Sha256,
    bytes: u64,
    sample: BytesMut,
    sample_limit: usize,
    counter: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
    /// The end was seen; the filters' last bytes go out before the end is reported.
    draining: bool,
}

impl ResponseBody {
    pub(super) fn new(
        inner: Incoming,
        echo: Option<EchoFilter>,
        sample_limit: usize,
        counter: Arc<AtomicU64>,
        on_end: OnEnd,
    ) -> ResponseBody {
        ResponseBody {
            inner,
            echo,
            hasher: Sha256::new(),
            bytes: 0,
            sample: BytesMut::new(),
            sample_limit,
            counter,
            on_end: Some(on_end),
            draining: false,
        }
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
                sha256: hex(&hasher.finalize()),
                echoes_redacted: self.echo.as_ref().map_or(0, EchoFilter::redacted),
                sample: std::mem::take(&mut self.sample).freeze(),
            });
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.draining {
            this.end(Ending::Complete);
            return Poll::Ready(None);
        }
        if this.inner.is_end_stream() {
            this.draining = true;
            let rest = this.echo.as_mut().map(EchoFilter::finish);
            if let Some(rest) = rest.filter(|r| !r.is_empty()) {
                let rest = this.pass(rest);
                this.end(Ending::Complete);
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
            this.end(Ending::Complete);
            return Poll::Ready(None);
        }
        loop {
            let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            match frame {
                None => {
                    this.draining = true;
                    let rest = this.echo.as_mut().map(EchoFilter::finish);
                    if let Some(rest) = rest.filter(|r| !r.is_empty()) {
                        return Poll::Ready(Some(Ok(Frame::data(this.pass(rest)))));
                    }
                    this.end(Ending::Complete);
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.end(Ending::UpstreamError);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let mut data = match this.echo.as_mut() {
                            Some(f) => f.push(&data),
                            None => data,
                        };
                        // With a known length the job's side may never poll past the last
                        // byte: the end is the upstream's end, with the filter's rest attached.
                        let last = this.inner.is_end_stream();
                        if last && let Some(rest) = this.echo.as_mut().map(EchoFilter::finish) {
                            data = [data, rest].concat().into();
                        }
                        if data.is_empty() && !last {
                            continue;
                        }
                        let data = this.pass(data);
                        if last {
                            this.draining = true;
                            this.end(Ending::Complete);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // Trailers (gRPC status) pass as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The echo filter keeps lengths, so the upstream's hint stays true.
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.end(Ending::ClientGone);
    }
}
