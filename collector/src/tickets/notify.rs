//! Webhooks: ticket events posted to help-desk systems (ServiceNow, Jira,
//! Zendesk and the like) as signed JSON; and the delivery task that sends
//! the outbox's posts and mails (see [`super::email`]).
//!
//! The engine writes each post into the outbox in the same transaction as
//! the timeline entry it announces. [`deliver`] sends what is due, marks a
//! 2xx as delivered and otherwise retries with exponential backoff and
//! jitter (capped at an hour), up to [`MAX_ATTEMPTS`]. Each request carries:
//!
//! - `X-Vitals-Delivery`: the outbox id, stable across retries, so a
//!   receiver can drop a repeat;
//! - `X-Vitals-Event`: the timeline kind (`opened`, `auto_resolved`…);
//! - `X-Vitals-Signature`: `sha256=` and the hex HMAC-SHA256 of the body
//!   under the webhook's secret.

use std::sync::Arc;
use std::time::Duration;
use vitals_proto::shutdown::Shutdown;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::Notify;
use tracing::{info, warn};
use vitals_proto::tickets::{Entry, Ticket};

use super::email::{self, Mailer};
use super::kb::KnowledgeBase;
use crate::config::Webhook;
use crate::metrics::Metrics;
use crate::store::{DeliveryOutcome, Store};

/// Attempts before a post is given up (about a day with the backoff).
pub const MAX_ATTEMPTS: u32 = 30;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_secs(1);

/// The JSON body of a ticket event.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// The timeline kind, as in `X-Vitals-Event`.
    pub event: String,
    pub at_ms: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub who: &'a str,
    pub text: &'a str,
    pub incident: Option<u64>,
    pub ticket: Option<&'a Ticket>,
}

/// The body for `entry` (about `ticket`, if it concerns one).
pub fn payload(entry: &Entry, ticket: Option<&Ticket>) -> String {
    let p = Payload {
        event: entry.kind.as_str().to_owned(),
        at_ms: entry.at_ms,
        at: vitals_proto::rfc3339_millis(entry.at_ms),
        who: &entry.who,
        text: &entry.text,
        incident: entry.incident.or(ticket.and_then(|t| t.incident)),
        ticket,
    };
    serde_json::to_string(&p).unwrap_or_else(|_| "{}".into())
}

/// Whether `webhook` wants entries of this kind.
pub fn wants(webhook: &Webhook, event: &str) -> bool {
    webhook.events.is_empty() || webhook.events.iter().any(|e| e == event)
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The wait before attempt `attempts + 1`: 2^attempts seconds, capped at
/// an hour, with jitter between half and all of it.
pub fn backoff(attempts: u32) -> Duration {
    let full = Duration::from_secs(1u64 << attempts.min(12)).min(Duration::from_secs(3600));
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Where deliveries go: webhooks by name, e-mail as [`email::TARGET`].
pub struct Targets {
    pub webhooks: Vec<Webhook>,
    pub mailer: Option<Mailer>,
    /// For the fix steps in mails.
    pub kb: KnowledgeBase,
}

/// Sends due deliveries (webhook posts and mails) until shutdown is requested.
/// `wake` is notified when the engine has queued new ones.
pub async fn deliver(
    store: Arc<dyn Store>,
    targets: Targets,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    mut stop: Shutdown,
    mut leading: crate::leader::Leading,
) {
    let Targets {
        webhooks,
        mailer,
        kb,
    } = targets;
    if webhooks.is_empty() && mailer.is_none() {
        return;
    }
    // The HTTP client's TLS runs on the same ring provider as the server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("vitals-collector/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(error) => {
            warn!(%error, "webhooks disabled: cannot build the HTTP client");
            return;
        }
    };
    info!(
        webhooks = webhooks.len(),
        email = mailer.is_some(),
        "ticket notifications running"
    );
    loop {
        // Only the leading replica sends.
        if !leading.now() {
            tokio::select! {
                () = leading.until(true) => {}
                () = stop.requested() => return,
            }
            continue;
        }
        let now = vitals_proto::now_ms();
        match store.due_deliveries(now, 100).await {
            Ok(due) => {
                for d in due {
                    let outcome = if d.webhook == email::TARGET {
                        match &mailer {
                            Some(m) => mail(m, &kb, &d).await,
                            None => DeliveryOutcome::Dead {
                                at_ms: now,
                                error: "[email] is no longer configured".into(),
                            },
                        }
                    } else {
                        match webhooks.iter().find(|w| w.name == d.webhook) {
                            None => DeliveryOutcome::Dead {
                                at_ms: now,
                                error: format!("webhook \"{}\" is no longer configured", d.webhook),
                            },
                            Some(w) => attempt(&client, w, &d).await,
                        }
                    };
                    if let DeliveryOutcome::Dead { error, .. }
                    | DeliveryOutcome::Retry { error, .. } = &outcome
                    {
                        metrics.error("notification");
                        warn!(target = %d.webhook, delivery = d.id, attempts = d.attempts + 1, %error, "ticket notification failed");
                    }
                    if let Err(error) = store.delivery_outcome(d.id, outcome).await {
                        warn!(%error, "cannot record a webhook delivery");
                    }
                }
            }
            Err(error) => warn!(%error, "cannot read the webhook outbox"),
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            () = stop.requested() => return,
        }
    }
}

async fn mail(m: &Mailer, kb: &KnowledgeBase, d: &crate::store::Delivery) -> DeliveryOutcome {
    let result = m.send(&d.body, kb).await;
    let now = vitals_proto::now_ms();
    match result {
        Ok(()) => DeliveryOutcome::Delivered { at_ms: now },
        Err(e) => retry_or_give_up(d, e.message, e.permanent),
    }
}

/// A failed attempt: try again after the backoff, unless the failure is
/// for good or the attempts are spent.
fn retry_or_give_up(d: &crate::store::Delivery, error: String, permanent: bool) -> DeliveryOutcome {
    let now = vitals_proto::now_ms();
    if permanent || d.attempts + 1 >= MAX_ATTEMPTS {
        DeliveryOutcome::Dead { at_ms: now, error }
    } else {
        DeliveryOutcome::Retry {
            next_ms: now + backoff(d.attempts).as_millis() as i64,
            error,
        }
    }
}

async fn attempt(
    client: &reqwest::Client,
    w: &Webhook,
    d: &crate::store::Delivery,
) -> DeliveryOutcome {
    let sent = client
        .post(&w.url)
        .header("content-type", "application/json")
        .header("x-vitals-delivery", d.id.to_string())
        .header("x-vitals-event", &d.event)
        .header(
            "x-vitals-signature",
            signature(&w.secret, d.body.as_bytes()),
        )
        .body(d.body.clone())
        .send()
        .await;
    let error = match sent {
        Ok(r) if r.status().is_success() => {
            return DeliveryOutcome::Delivered {
                at_ms: vitals_proto::now_ms(),
            };
        }
        Ok(r) => format!("{} answered {}", w.url, r.status()),
        Err(e) => format!("{}: {}", w.url, vitals_proto::error_chain(&e)),
    };
    retry_or_give_up(d, error, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempts in 0..40 {
            let b = backoff(attempts);
            let full = Duration::from_secs(1u64 << attempts.min(12)).min(Duration::from_secs(3600));
            assert!(b >= full / 2 && b <= full, "{attempts}: {b:?}");
        }
    }

    #[test]
    fn payload_names_the_event_and_carries_the_ticket() {
        let e = Entry {
            ticket: Some(3),
            incident: None,
            at_ms: 1_700_000_000_000,
            who: "vitals".into(),
            kind: vitals_proto::tickets::Kind::AutoResolved,
            text: "auto-resolved: clear for 10m".into(),
        };
        let body = payload(&e, None);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["event"], "auto_resolved");
        assert_eq!(v["at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["who"], "vitals");
        let w = Webhook {
            name: "itsm".into(),
            url: "https://itsm.example/hook".into(),
            secret: "0123456789abcdef".into(),
            events: vec!["opened".into()],
        };
        assert!(wants(&w, "opened") && !wants(&w, "comment"));
    }
}
