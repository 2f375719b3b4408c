//! One configured issuer: its keys, fetched through discovery and cached.
//!
//! Keys are fetched on first use, again when older than `jwks_max_age`, and again when a token names
//! a `kid` the cache lacks (key rotation), but never twice within `jwks_refetch_cooldown`: a stream
//! of tokens with made-up `kid`s cannot turn the gateway into a load generator against the issuer.
//! A failed refetch keeps the keys already known. Fetches of one issuer are serialised (one lock),
//! and each is bounded by the fetch timeout.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::Issuer as IssuerConfig;
use super::{
    discovery::{self, Discovery},
    error::{FetchError, VerifyError},
    fetch::Fetcher,
    jwks::{KeySet, RawKeySet},
};

pub(super) struct IssuerClient {
    pub config: IssuerConfig,
    fetcher: Fetcher,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// When `keys` were fetched (monotonic, for ages) and the wall-clock time (for status).
    fetched: Option<(Instant, String)>,
    last_attempt: Option<Instant>,
    last_error: Option<FetchError>,
}

/// An issuer as `gateway status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuerStatus {
    pub url: String,
    pub audiences: Vec<String>,
    pub keys: usize,
    pub keys_fetched_at: Option<String>,
    pub last_error: Option<String>,
    /// A fetch is under way right now.
    #[serde(default)]
    pub fetching: bool,
}

impl IssuerClient {
    pub(super) fn new(config: IssuerConfig) -> Result<Self, VerifyError> {
        let fetcher =
            Fetcher::new(config.ca_file.as_deref(), config.fetch_timeout).map_err(|message| {
                VerifyError::IssuerSetup {
                    issuer: config.url.clone(),
                    message,
                }
            })?;
        Ok(IssuerClient {
            config,
            fetcher,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// The keys to verify a token naming `kid` with, refreshed as the module comment describes.
    pub(super) async fn keys(&self, kid: Option<&str>) -> Result<Arc<KeySet>, VerifyError> {
        let mut state = self.state.lock().await;
        let cooldown = self.config.jwks_refetch_cooldown;
        let may_fetch = state.last_attempt.is_none_or(|t| t.elapsed() >= cooldown);
        let stale = state
            .fetched
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= self.config.jwks_max_age);
        let kid_unknown = |s: &State| match (kid, &s.keys) {
            (Some(k), Some(keys)) => !keys.has_kid(k),
            _ => false,
        };
        let mut refetched = false;
        if may_fetch && (state.keys.is_none() || stale || kid_unknown(&state)) {
            state.last_attempt = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(issuer = %self.config.url, keys = keys.keys.len(), skipped = keys.skipped, "fetched issuer keys");
                    state.keys = Some(Arc::new(keys));
                    state.fetched = Some((Instant::now(), crate::time::now()));
                    state.last_error = None;
                    refetched = true;
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.config.url, error = %e, "cannot fetch issuer keys");
                    state.last_error = Some(e);
                }
            }
        }
        let Some(keys) = state.keys.clone() else {
            let source = state
                .last_error
                .clone()
                .unwrap_or_else(|| FetchError::Transport {
                    url: discovery::url(&self.config.url),
                    message: "not fetched yet".into(),
                });
            return Err(VerifyError::IssuerUnavailable {
                issuer: self.config.url.clone(),
                source,
            });
        };
        if let Some(k) = kid.filter(|_| kid_unknown(&state)) {
            let how = if refetched {
                "refetched just now".to_string()
            } else if let Some(e) = &state.last_error {
                format!("refetch failed: {e}")
            } else {
                let since = state.last_attempt.map_or(Duration::ZERO, |t| t.elapsed());
                format!(
                    "fetched {}s ago; next refetch allowed in {}s",
                    since.as_secs(),
                    cooldown.saturating_sub(since).as_secs().max(1)
                )
            };
            return Err(VerifyError::UnknownKid {
                issuer: self.config.url.clone(),
                kid: k.to_string(),
                how,
            });
        }
        Ok(keys)
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let url = discovery::url(&self.config.url);
        let doc: Discovery = self.fetcher.get_json(&url, "discovery document").await?;
        doc.check(&self.config.url)
            .map_err(|message| FetchError::Invalid {
                url: url.clone(),
                what: "discovery document",
                message,
            })?;
        let raw: RawKeySet = self.fetcher.get_json(&doc.jwks_uri, "JWKS").await?;
        let keys = KeySet::from_raw(raw);
        if keys.keys.is_empty() {
            return Err(FetchError::Invalid {
                url: doc.jwks_uri,
                what: "JWKS",
                message: format!("no usable signing key ({} skipped)", keys.skipped),
            });
        }
        Ok(keys)
    }

    /// Upper bound of one `keys` call that fetches: discovery and JWKS, one timeout each.
    pub(super) fn worst_case(&self) -> Duration {
        self.fetcher.timeout() * 2
    }

    /// Never waits: while a fetch holds the state, says so instead.
    pub(super) fn status(&self) -> IssuerStatus {
        let mut status = IssuerStatus {
            url: self.config.url.clone(),
            audiences: self.config.audiences.clone(),
            keys: 0,
            keys_fetched_at: None,
            last_error: None,
            fetching: false,
        };
        match self.state.try_lock() {
            Ok(state) => {
                status.keys = state.keys.as_ref().map_or(0, |k| k.keys.len());
                status.keys_fetched_at = state.fetched.as_ref().map(|(_, at)| at.clone());
                status.last_error = state.last_error.as_ref().map(ToString::to_string);
            }
            Err(_) => status.fetching = true,
        }
        status
    }
}
