//! Ticket e-mail over SMTP: the events and priorities `[email]` chooses,
//! written to the same durable outbox as webhooks (as target [`TARGET`])
//! and sent by the same delivery task, with the same retries.
//!
//! A mail carries what a specialist needs without opening anything else:
//! the ticket's endpoint, check, priority and evidence, and the knowledge
//! base article with the steps to fix it.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use vitals_proto::ticket_rules::Priority;

use super::kb::KnowledgeBase;
use crate::config::{Email, EmailTls};

/// The outbox target name of e-mail deliveries.
pub const TARGET: &str = "email";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `[email]` wants this event about a ticket of this priority.
pub fn wants(config: &Email, event: &str, priority: Option<Priority>) -> bool {
    config.events.iter().any(|e| e == event)
        && priority.is_some_and(|p| config.priorities.contains(&p))
}

/// Why a mail was not sent.
#[derive(Debug)]
pub struct SendError {
    /// The relay refused for good (5xx): retrying will not help.
    pub permanent: bool,
    pub message: String,
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    server: String,
}

/// Why the SMTP client cannot be built from `[email]`.
#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("email.ca {}: {source}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("email.ca {}: {source}", path.display())]
    CaCertificate {
        path: std::path::PathBuf,
        source: lettre::transport::smtp::Error,
    },
    #[error("email TLS: {0}")]
    Tls(#[source] lettre::transport::smtp::Error),
    #[error("email.password_file {}: {source}", path.display())]
    PasswordFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("email: \"{address}\": {source}")]
    Address {
        address: String,
        source: lettre::address::AddressError,
    },
}

impl Mailer {
    /// Builds the SMTP client; reads the password and CA files now, so a
    /// bad path is reported at start.
    pub fn new(c: &Email) -> Result<Mailer, MailerError> {
        let server = c.server.clone();
        let tls = || -> Result<TlsParameters, MailerError> {
            let mut b = TlsParameters::builder(server.clone());
            if let Some(path) = &c.ca {
                let pem = std::fs::read(path).map_err(|source| MailerError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let cert =
                    Certificate::from_pem(&pem).map_err(|source| MailerError::CaCertificate {
                        path: path.clone(),
                        source,
                    })?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls().map_err(MailerError::Tls)
        };
        let builder = match c.tls {
            EmailTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server),
            EmailTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server)
                .tls(Tls::Wrapper(tls()?)),
            EmailTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server)
                .tls(Tls::Required(tls()?)),
        };
        let mut builder = builder.port(c.port()).timeout(Some(TIMEOUT));
        if let (Some(user), Some(path)) = (&c.username, &c.password_file) {
            let password =
                std::fs::read_to_string(path).map_err(|source| MailerError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            let password = password.lines().next().unwrap_or_default().to_owned();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let parse = |a: &str| {
            a.parse::<Mailbox>().map_err(|source| MailerError::Address {
                address: a.to_owned(),
                source,
            })
        };
        Ok(Mailer {
            transport: builder.build(),
            from: parse(&c.from)?,
            to: c.to.iter().map(|a| parse(a)).collect::<Result<_, _>>()?,
            server: format!("{}:{}", c.server, c.port()),
        })
    }

    /// Mails the event whose webhook payload is `body`.
    pub async fn send(&self, body: &str, kb: &KnowledgeBase) -> Result<(), SendError> {
        let (subject, text) = render(body, kb);
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            m = m.to(to.clone());
        }
        let message = m.body(text).map_err(|e| SendError {
            permanent: true,
            message: format!("cannot build the mail: {e}"),
        })?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| SendError {
                permanent: e.is_permanent(),
                message: format!("SMTP {}: {}", self.server, vitals_proto::error_chain(&e)),
            })
    }
}

/// Subject and plain-text body for a ticket event (the webhook payload).
pub fn render(body: &str, kb: &KnowledgeBase) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let event = s(&v["event"]);
    let t = &v["ticket"];
    if t.is_null() {
        let subject = match v["incident"].as_u64() {
            Some(i) => format!("[Vitals] incident {i}: {event}"),
            None => format!("[Vitals] {event}"),
        };
        return (
            subject,
            format!("{}\n\nAt {}\n", s(&v["text"]), s(&v["at"])),
        );
    }
    let id = s(&t["id"]);
    let priority = s(&t["priority"]).to_uppercase();
    let subject = format!(
        "[Vitals {priority}] #{id} {} on {} ({})",
        s(&t["title"]),
        s(&t["endpoint"]),
        event.replace('_', " ")
    );
    let mut text = format!(
        "Ticket #{id}: {}\n\n\
         Endpoint:  {}\n\
         Check:     {} ({})\n\
         Priority:  {priority}, tier {}\n\
         Status:    {}\n\
         Evidence:  {}\n\n\
         {} by {} at {}: {}\n",
        s(&t["title"]),
        s(&t["endpoint"]),
        s(&t["check_id"]),
        s(&t["subject"]),
        s(&t["tier"]),
        s(&t["status"]).replace('_', " "),
        s(&t["evidence"]),
        event.replace('_', " "),
        s(&v["who"]),
        s(&v["at"]),
        s(&v["text"]),
    );
    if let Some(i) = t["incident"].as_u64() {
        text.push_str(&format!("\nPart of incident {i}.\n"));
    }
    if let Some(article) = kb.article(&s(&t["check_id"])) {
        text.push_str("\n----\n\n");
        text.push_str(&article);
        if !article.ends_with('\n') {
            text.push('\n');
        }
    }
    text.push_str(&format!(
        "\nDetails and timeline: vitalsctl tickets show {id}\n"
    ));
    (subject, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_mail_carries_evidence_and_the_fix() {
        let body = r#"{"event":"opened","at_ms":1,"at":"2026-11-23T08:00:00.000Z","who":"vitals",
            "text":"queue stopped","incident":null,
            "ticket":{"id":12,"title":"Printer offline","endpoint":"disp-07","check_id":"printer_offline",
            "subject":"hall-a","priority":"p1","status":"new","tier":1,"evidence":"hall-a: unreachable",
            "incident":4}}"#;
        let (subject, text) = render(body, &KnowledgeBase::new(None));
        assert_eq!(
            subject,
            "[Vitals P1] #12 Printer offline on disp-07 (opened)"
        );
        for part in [
            "Endpoint:  disp-07",
            "Check:     printer_offline (hall-a)",
            "Priority:  P1, tier 1",
            "Evidence:  hall-a: unreachable",
            "Part of incident 4.",
            "# Printer offline",
            "vitalsctl tickets show 12",
        ] {
            assert!(text.contains(part), "{part} missing from:\n{text}");
        }
    }

    #[test]
    fn only_chosen_events_and_priorities() {
        let c = Email {
            server: "smtp.city.example".into(),
            port: None,
            tls: EmailTls::Starttls,
            username: None,
            password_file: None,
            ca: None,
            from: "vitals@city.example".into(),
            to: vec!["desk@city.example".into()],
            priorities: vec![Priority::P1],
            events: vec!["opened".into()],
        };
        assert_eq!(c.port(), 587);
        assert!(wants(&c, "opened", Some(Priority::P1)));
        assert!(!wants(&c, "opened", Some(Priority::P2)));
        assert!(!wants(&c, "comment", Some(Priority::P1)));
        assert!(!wants(&c, "incident_opened", None));
    }
}
