//! HTTPS GETs of small JSON documents with hard limits: HTTPS only, a deadline for the whole
//! exchange (connect, TLS, headers, body), and a cap on the body size. An issuer that hangs,
//! trickles, or answers with junk costs at most `timeout` and yields a one-line error.

use std::{path::Path, time::Duration};

use serde::de::DeserializeOwned;

use super::error::{FetchError, chain};

/// Discovery documents and JWKS are a few KiB; anything this large is not one.
pub(crate) const MAX_DOCUMENT: usize = 512 * 1024;

pub(crate) struct Fetcher {
    client: reqwest::Client,
    timeout: Duration,
}

impl Fetcher {
    /// `ca_file`: PEM bundle that replaces the system trust store for this issuer.
    pub(crate) fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::limited(3))
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "ca_file {}: not a PEM certificate bundle: {e}",
                    path.display()
                )
            })?;
            if certs.is_empty() {
                return Err(format!(
                    "ca_file {}: no certificates in the file",
                    path.display()
                ));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up HTTPS: {}", chain(&e)))?;
        Ok(Fetcher { client, timeout })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GETs `url` and parses the body as `what` (named in errors).
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
        what: &'static str,
    ) -> Result<T, FetchError> {
        let body = match tokio::time::timeout(self.timeout, self.get(url)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(FetchError::Timeout {
                    url: url.to_string(),
                    timeout: self.timeout,
                });
            }
        };
        serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
            url: url.to_string(),
            what,
            message: e.to_string(),
        })
    }

    /// POSTs a form (an OAuth token request) and parses the JSON answer, with the same limits.
    pub(crate) async fn post_form_json<T: DeserializeOwned>(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic_auth: Option<(&str, &str)>,
        what: &'static str,
    ) -> Result<T, FetchError> {
        let mut request = self.client.post(url).form(form);
        if let Some((user, password)) = basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        let body = match tokio::time::timeout(self.timeout, self.send(request, url)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(FetchError::Timeout {
                    url: url.to_string(),
                    timeout: self.timeout,
                });
            }
        };
        serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
            url: url.to_string(),
            what,
            message: e.to_string(),
        })
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.send(self.client.get(url), url).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Vec<u8>, FetchError> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Timeout {
                    url: url.to_string(),
                    timeout: self.timeout,
                }
            } else {
                FetchError::Transport {
                    url: url.to_string(),
                    message: chain(&e.without_url()),
                }
            }
        };
        let mut response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
            max: MAX_DOCUMENT,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
