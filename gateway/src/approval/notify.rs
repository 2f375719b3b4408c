//! Webhook notifications of new and decided approval requests: a JSON POST per configured URL with a
//! Slack-compatible `text` field. Delivery runs in the background with a bounded timeout and a few
//! retries; it never holds up a request or a decision. Each attempt's result is a session event.
//! The `text` is for people (chat clients render it): hidden characters in it are made visible.

use crate::record::EventKind;
use std::time::Duration;

use serde_json::json;

use super::store::ApprovalView;
use crate::{record::Store, visible};

const ATTEMPTS: u32 = 3;

pub struct Notifier {
    urls: Vec<String>,
    client: reqwest::Client,
    store: Store,
}

impl Notifier {
    pub fn new(urls: Vec<String>, timeout: Duration, store: Store) -> Notifier {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Notifier {
            urls,
            client,
            store,
        }
    }

    pub fn created(&self, view: &ApprovalView, web_url: Option<&str>) {
        let who = &view.requester.subject;
        let mut text = format!(
            "Approval needed ({}): {who} wants to run `{}` on {} (rule {}). Approve with `gateway approvals approve {}`",
            view.id,
            truncate(&view.operation, 500),
            view.target,
            view.rule,
            view.id
        );
        if let Some(url) = web_url {
            text.push_str(&format!(" or at {url}/"));
        }
        self.send("approval_requested", text, view, web_url);
    }

    pub fn decided(&self, view: &ApprovalView, web_url: Option<&str>) {
        let by: Vec<&str> = view.votes.iter().map(|v| v.display.as_str()).collect();
        let mut text = format!(
            "Approval {} {}: `{}` on {}",
            view.id,
            view.status.as_str(),
            truncate(&view.operation, 200),
            view.target
        );
        if !by.is_empty() {
            text.push_str(&format!(" (by {})", by.join(", ")));
        }
        if let Some(r) = &view.reason {
            text.push_str(&format!(": {r}"));
        }
        self.send("approval_decided", text, view, web_url);
    }

    fn send(&self, event: &'static str, text: String, view: &ApprovalView, web_url: Option<&str>) {
        if self.urls.is_empty() {
            return;
        }
        let text = visible::line(&text);
        let body =
            json!({ "event": event, "text": text, "approval": view, "url": web_url }).to_string();
        for url in &self.urls {
            let (client, store, url, body) = (
                self.client.clone(),
                self.store.clone(),
                url.clone(),
                body.clone(),
            );
            let session = view.session_id;
            let id = view.id.clone();
            tokio::spawn(async move {
                let result = deliver(&client, &url, body).await;
                let (kind, detail) = match &result {
                    Ok(attempt) => (
                        EventKind::WebhookDelivered,
                        json!({ "approval": id, "event": event, "url": url, "attempts": attempt }),
                    ),
                    Err(e) => (
                        EventKind::WebhookFailed,
                        json!({ "approval": id, "event": event, "url": url, "error": e }),
                    ),
                };
                if let Err(e) = &result {
                    tracing::warn!(%url, error = %e, "approval webhook failed");
                }
                if let Some(session) = session {
                    store.note_event(session, kind, detail);
                }
            });
        }
    }
}

/// POSTs until a 2xx answer or `ATTEMPTS` failures; returns the attempt that succeeded.
async fn deliver(client: &reqwest::Client, url: &str, body: String) -> Result<u32, String> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
    }
    Err(format!("{last} (after {ATTEMPTS} attempts)"))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}
