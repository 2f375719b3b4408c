//! The gateway as an SSH client of the real host: pinned host key, injected credentials.

use parking_lot::Mutex;
use std::{borrow::Cow, sync::Arc, time::Duration};

use russh::{
    Channel, ChannelOpenFailure,
    client::{self, ChannelOpenHandle, Msg, Session},
    keys::{Algorithm, HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate},
};
use tokio::net::TcpStream;

use super::{Ctx, SshError, forward, keys::UpstreamSecret};
use crate::config::Target;

/// russh's client handler: accepts the host only if it presents a pinned key, and accepts no
/// channel the host opens except connections on the job's remote forwards.
pub struct Upstream {
    ctx: Arc<Ctx>,
    pinned: Vec<PublicKey>,
    /// The key the host presented (fingerprint), for the error message on a mismatch.
    presented: Arc<Mutex<Option<String>>>,
}

impl Upstream {
    /// russh accepts host-opened channels by default; none of these has a job-side meaning.
    async fn refuse(&self, kind: &str, reply: ChannelOpenHandle) {
        tracing::warn!(
            session = self.ctx.session_id,
            kind,
            "the host tried to open a channel to the gateway; refused"
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
    }
}

impl client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let (ok, shown) = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => (
                self.pinned.iter().any(|k| k.key_data() == key.key_data()),
                format!(
                    "{} {}",
                    key.algorithm().as_str(),
                    key.fingerprint(HashAlg::Sha256)
                ),
            ),
            // Host certificates are not pinned keys; not accepted.
            PublicKeyOrCertificate::Certificate(c) => (
                false,
                format!(
                    "certificate {}",
                    c.public_key().fingerprint(HashAlg::Sha256)
                ),
            ),
        };
        *self.presented.lock() = Some(shown);
        Ok(ok)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        forward::incoming(
            self.ctx.clone(),
            channel,
            reply,
            (connected_address, connected_port),
            (originator_address, originator_port),
        )
        .await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("session", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("direct-tcpip", reply).await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11", reply).await;
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("auth-agent", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("direct-streamlocal", reply).await;
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("forwarded-streamlocal", reply).await;
        Ok(())
    }
}

pub(super) type UpstreamHandle = client::Handle<Upstream>;

fn config(target: &Target) -> Arc<client::Config> {
    // Only the algorithms of the pinned keys are asked for, so the host presents a key we can check.
    let mut key_algorithms: Vec<Algorithm> = Vec::new();
    for k in &target.ssh.host_keys {
        let algs = match k.algorithm() {
            Algorithm::Rsa { .. } => vec![
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
            ],
            other => vec![other],
        };
        for a in algs {
            if !key_algorithms.contains(&a) {
                key_algorithms.push(a);
            }
        }
    }
    let preferred = russh::Preferred {
        key: Cow::Owned(key_algorithms),
        // AES-GCM first: with AES-NI it costs a fraction of chacha20-poly1305, and the gateway
        // encrypts every byte twice.
        cipher: Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
            russh::cipher::AES_128_CTR,
        ]),
        // Compression costs CPU on both sides of a fast link and gains nothing on a LAN.
        compression: Cow::Borrowed(&[russh::compression::NONE]),
        ..Default::default()
    };
    Arc::new(client::Config {
        preferred,
        nodelay: true,
        // A quiet CI command must not be cut off; keepalives find dead hosts instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        ..Default::default()
    })
}

/// Key exchange with the real host over `stream`, then authentication as `user` with `secret`.
pub(super) async fn connect(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    user: &str,
    secret: &UpstreamSecret,
) -> Result<UpstreamHandle, SshError> {
    let config = config(&ctx.target);
    let presented = Arc::new(Mutex::new(None));
    let handler = Upstream {
        pinned: ctx.target.ssh.host_keys.clone(),
        ctx,
        presented: presented.clone(),
    };
    let mut handle = match client::connect_stream(config, stream, handler).await {
        Ok(h) => h,
        Err(russh::Error::UnknownKey) => {
            let shown = presented.lock().take().unwrap_or_else(|| "no key".into());
            return Err(SshError::HostKeyMismatch { presented: shown });
        }
        Err(e) => return Err(SshError::Upstream(e)),
    };
    let result = match secret {
        UpstreamSecret::Key(key) => {
            // RSA with hash None would sign with SHA-1 `ssh-rsa`, which OpenSSH ≥ 8.8 refuses: ask
            // the host (server-sig-algs) for the best hash it takes.
            let hash = if key.algorithm().is_rsa() {
                handle.best_supported_rsa_hash().await?.flatten()
            } else {
                None
            };
            handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), hash))
                .await?
        }
        UpstreamSecret::Password(password) => handle.authenticate_password(user, password).await?,
    };
    if !result.success() {
        return Err(SshError::UpstreamAuth {
            user: user.to_string(),
        });
    }
    Ok(handle)
}
