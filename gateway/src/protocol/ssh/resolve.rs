//! Paths as the host will use them. Before a path rule decides about a path, the gateway asks the
//! host's own sftp server, on an sftp channel of its own (opened on first need, one per session),
//! what the path is: `REALPATH` of the path (every link resolved, a relative path made absolute
//! from the same start directory the job's sftp session has, `..` taken through links as the
//! kernel takes it) and of its directory (for operations on a link itself), and `STAT` (is it a
//! directory). The job never sees this channel and cannot send on it.
//!
//! What this cannot see: a job that changes the host's directories from another channel between
//! the check and the operation (time of check to time of use), and hard links made by commands.

use std::{sync::Arc, time::Duration};

use russh::{ChannelMsg, client};
use tokio::sync::Mutex;

use super::{
    sftp::{self, Answer, Framer},
    upstream::UpstreamHandle,
};

/// The host has this long to answer the gateway's questions about one path.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("there is no connection to the host")]
    NoUpstream,
    #[error("the host's sftp server is not available ({0})")]
    Unavailable(String),
    #[error("the host did not answer within {TIMEOUT:?}")]
    Timeout,
    #[error("the host's sftp server answered something unexpected ({0})")]
    Protocol(String),
}

/// Where a path leads on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Every link resolved, the last one too: what is opened, read or written.
    pub target: String,
    /// Only the directory resolved, when that differs: the link itself (removed, renamed).
    pub link: Option<String>,
    /// It exists and is a directory (files go in it).
    pub directory: bool,
}

impl Resolved {
    /// The paths rules are asked about.
    pub fn forms(&self) -> Vec<String> {
        std::iter::once(self.target.clone())
            .chain(self.link.clone())
            .collect()
    }
}

/// The gateway's sftp channel to the host, shared by the session's channels.
#[derive(Default)]
pub struct Resolver {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    upstream: Option<Arc<UpstreamHandle>>,
    channel: Option<Channel>,
    next_id: u32,
}

struct Channel {
    ch: russh::Channel<client::Msg>,
    framer: Framer,
}

impl Resolver {
    pub async fn set_upstream(&self, upstream: Arc<UpstreamHandle>) {
        self.inner.lock().await.upstream = Some(upstream);
    }

    /// Where `path` leads on the host; `None` when the host cannot resolve it (a directory on the
    /// way does not exist: the operation would fail there too).
    pub async fn resolve(&self, path: &str) -> Result<Option<Resolved>, ResolveError> {
        let mut state = self.inner.lock().await;
        let result = tokio::time::timeout(TIMEOUT, state.resolve(path))
            .await
            .unwrap_or(Err(ResolveError::Timeout));
        if result.is_err() {
            // Opened afresh next time.
            if let Some(c) = state.channel.take() {
                let _ = c.ch.close().await;
            }
        }
        result
    }
}

impl State {
    async fn resolve(&mut self, path: &str) -> Result<Option<Resolved>, ResolveError> {
        let clean = lexical(path);
        let parent = split(&clean);
        let first = self.next_id;
        self.next_id = self.next_id.wrapping_add(3);
        let channel = self.channel().await?;
        // Three questions at once: one round trip.
        let mut out = Vec::new();
        out.extend_from_slice(&sftp::realpath(first, &clean));
        out.extend_from_slice(&sftp::stat(first.wrapping_add(1), &clean));
        if let Some((dir, _)) = &parent {
            out.extend_from_slice(&sftp::realpath(first.wrapping_add(2), dir));
        }
        channel
            .ch
            .data_bytes(out)
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        let (mut target, mut directory, mut dir) = (None, false, None);
        for _ in 0..if parent.is_some() { 3 } else { 2 } {
            let (id, answer) = channel.next().await?;
            match (id.map(|i| i.wrapping_sub(first)), answer) {
                (Some(0), Answer::Name(n)) => target = Some(n),
                (Some(1), Answer::Attrs { directory: d }) => directory = d,
                (Some(2), Answer::Name(n)) => dir = Some(n),
                (Some(0..=2), Answer::Status(_)) => {}
                (_, other) => return Err(ResolveError::Protocol(format!("{other:?}"))),
            }
        }
        let Some(target) = target else {
            return Ok(None);
        };
        let link = match (dir, parent) {
            (Some(d), Some((_, name))) => Some(join(&d, name)).filter(|l| *l != target),
            _ => None,
        };
        Ok(Some(Resolved {
            target,
            link,
            directory,
        }))
    }

    async fn channel(&mut self) -> Result<&mut Channel, ResolveError> {
        if self.channel.is_none() {
            let up = self.upstream.clone().ok_or(ResolveError::NoUpstream)?;
            let unavailable = |e: russh::Error| ResolveError::Unavailable(e.to_string());
            let ch = up.channel_open_session().await.map_err(unavailable)?;
            ch.request_subsystem(true, "sftp")
                .await
                .map_err(unavailable)?;
            let mut c = Channel {
                ch,
                framer: Framer::default(),
            };
            loop {
                match c.ch.wait().await {
                    Some(ChannelMsg::Success) => break,
                    Some(ChannelMsg::Failure) | None => {
                        return Err(ResolveError::Unavailable(
                            "the sftp subsystem was refused".into(),
                        ));
                    }
                    Some(_) => {}
                }
            }
            c.ch.data_bytes(sftp::init()).await.map_err(unavailable)?;
            c.next().await?; // VERSION
            self.channel = Some(c);
        }
        self.channel.as_mut().ok_or(ResolveError::NoUpstream)
    }
}

impl Channel {
    /// The next response packet.
    async fn next(&mut self) -> Result<(Option<u32>, Answer), ResolveError> {
        loop {
            if let Some(packet) = self.framer.next_packet() {
                let packet = packet.map_err(|e| ResolveError::Protocol(e.to_string()))?;
                return sftp::answer(&packet).map_err(|e| ResolveError::Protocol(e.to_string()));
            }
            match self.ch.wait().await {
                Some(ChannelMsg::Data { data }) => self.framer.push(&data),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    return Err(ResolveError::Unavailable("the channel closed".into()));
                }
                Some(_) => {}
            }
        }
    }
}

/// The path with repeated and trailing slashes and `.` components removed (`..` is left to the
/// host, which takes it through links). Relative stays relative.
pub(super) fn lexical(path: &str) -> String {
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    match (absolute, parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => ".".into(),
        (false, false) => parts.join("/"),
    }
}

/// Directory and last name of a lexically clean path, unless the name is `..` or there is none.
fn split(clean: &str) -> Option<(String, &str)> {
    let (dir, name) = match clean.rsplit_once('/') {
        Some(("", name)) => ("/".to_string(), name),
        Some((dir, name)) => (dir.to_string(), name),
        None => (".".to_string(), clean),
    };
    (!name.is_empty() && name != "." && name != "..").then_some((dir, name))
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_lexically_but_dot_dot_is_left_to_the_host() {
        assert_eq!(lexical("//etc/./x/"), "/etc/x");
        assert_eq!(lexical("/tmp/../etc//x"), "/tmp/../etc/x");
        assert_eq!(lexical("../../etc/x"), "../../etc/x");
        assert_eq!(lexical("./"), ".");
        assert_eq!(lexical(""), ".");
        assert_eq!(lexical("/"), "/");
        assert_eq!(split("/etc/x"), Some(("/etc".into(), "x")));
        assert_eq!(split("/x"), Some(("/".into(), "x")));
        assert_eq!(split("x"), Some((".".into(), "x")));
        assert_eq!(split("/etc/.."), None);
        assert_eq!(split("/"), None);
        assert_eq!(join("/", "x"), "/x");
    }
}
