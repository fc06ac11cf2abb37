//! What changes while a page is open, as Server-Sent Events: ticket changes
//! for the queue (from the ticket desk's watch) and a diagnostic's progress
//! and result for the endpoint page.
//!
//! A diagnostic is started by a POST (CSRF-checked, audited by the
//! service); with JavaScript the answer is a panel naming an event stream
//! that only the same session may open, without it the POST waits for the
//! result and renders the endpoint page with it.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use vitals_proto::diag::Kind as DiagKind;

use super::AppState;
use super::auth::{PageError, User};
use super::pages::{EndpointQuery, endpoint_page, html};
use crate::service::{DiagEvent, DiagRequest, ServiceError};

/// How long a started run waits for its page to open the event stream.
const UNCLAIMED: Duration = Duration::from_secs(30);
/// How long "wait for it" waits for an offline endpoint.
const OFFLINE_WAIT: Duration = Duration::from_secs(600);
/// How often a live stream checks that its session still exists.
const SESSION_CHECK: Duration = Duration::from_secs(15);

/// A step of a run as the page shows it.
enum Step {
    Progress(String),
    Done(RunView),
}

/// A run waiting for its page: whose it is, since when, its steps.
type Waiting = (String, Instant, mpsc::Receiver<Step>);

/// Runs started and not yet watched.
#[derive(Default)]
pub struct Runs {
    waiting: Mutex<HashMap<String, Waiting>>,
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, account: &str, rx: mpsc::Receiver<Step>) -> String {
        let token = super::sessions::token();
        let mut w = self.lock();
        // Runs nobody came for are dropped, which cancels them.
        w.retain(|_, (_, at, _)| at.elapsed() < UNCLAIMED);
        w.insert(token.clone(), (account.to_owned(), Instant::now(), rx));
        token
    }

    fn take(&self, token: &str, account: &str) -> Option<mpsc::Receiver<Step>> {
        let mut w = self.lock();
        match w.get(token) {
            Some((owner, _, _)) if owner == account => w.remove(token).map(|(_, _, rx)| rx),
            _ => None,
        }
    }
}

/// A finished run, rendered.
#[derive(Template)]
#[template(path = "run_result.html")]
pub struct RunView {
    pub kind: String,
    pub ok: bool,
    pub heading: String,
    pub text: String,
    pub progress: Vec<String>,
}

#[derive(Template)]
#[template(path = "run_panel.html")]
struct RunPanel {
    kind: String,
    endpoint: String,
    events: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DiagForm {
    csrf: String,
    kind: String,
    names: String,
    targets: String,
    count: String,
    name: String,
    root: String,
    top: String,
    ticket: String,
    /// "on": wait for an offline endpoint to come back.
    wait: String,
}

impl DiagForm {
    fn request(&self, endpoint: &str) -> Result<DiagRequest, PageError> {
        let kind: DiagKind = self
            .kind
            .parse()
            .map_err(|_| PageError::BadRequest(format!("unknown diagnostic \"{}\"", self.kind)))?;
        let given = [
            ("names", &self.names),
            ("targets", &self.targets),
            ("count", &self.count),
            ("name", &self.name),
            ("root", &self.root),
            ("top", &self.top),
        ];
        // The form has a field for every parameter of the catalog; those of
        // other kinds are ignored, the rest checked by the service.
        let params: BTreeMap<String, String> = given
            .iter()
            .filter(|(k, v)| kind.params().contains(k) && !v.trim().is_empty())
            .map(|(k, v)| ((*k).to_owned(), v.trim().to_owned()))
            .collect();
        let ticket =
            match self.ticket.trim() {
                "" => None,
                t => Some(t.parse().map_err(|_| {
                    PageError::BadRequest(format!("ticket \"{t}\" is not a number"))
                })?),
            };
        Ok(DiagRequest {
            endpoint: endpoint.to_owned(),
            kind: kind.as_str().to_owned(),
            params,
            ticket,
            wait_offline: if self.wait == "on" {
                OFFLINE_WAIT
            } else {
                Duration::ZERO
            },
            ..Default::default()
        })
    }
}

/// Runs `r` and reports its steps on `tx`, ending with `Done`.
async fn run(c: AppState, user: User, r: DiagRequest, tx: mpsc::Sender<Step>) {
    let kind = r.kind.clone();
    let endpoint = r.endpoint.clone();
    let mut progress = Vec::new();
    if !r.wait_offline.is_zero() {
        let _ = tx
            .send(Step::Progress(format!(
                "waiting up to {} for {endpoint} if it is offline",
                humantime::format_duration(r.wait_offline)
            )))
            .await;
    }
    let failed = |e: &ServiceError, progress: Vec<String>| RunView {
        kind: kind.clone(),
        ok: false,
        heading: format!("{kind} on {endpoint} did not run to the end"),
        text: e.to_string(),
        progress,
    };
    let mut events = match c.service.run_diagnostic(&user.caller(), r.clone()).await {
        Ok(rx) => rx,
        Err(e) => {
            let _ = tx.send(Step::Done(failed(&e, progress))).await;
            return;
        }
    };
    loop {
        let step = tokio::select! {
            () = tx.closed() => return,
            e = events.recv() => e,
        };
        match step {
            Some(Ok(DiagEvent::Progress { text, elapsed_ms })) => {
                let line = format!("{:.1} s  {text}", elapsed_ms as f64 / 1000.0);
                progress.push(line.clone());
                if tx.send(Step::Progress(line)).await.is_err() {
                    return;
                }
            }
            Some(Ok(DiagEvent::Result { result, elapsed_ms })) => {
                let view = RunView {
                    kind: kind.clone(),
                    ok: result.ok,
                    heading: if result.ok {
                        format!(
                            "{kind} on {endpoint}: done in {}{}",
                            if elapsed_ms < 1000 {
                                format!("{elapsed_ms} ms")
                            } else {
                                format!("{:.1} s", elapsed_ms as f64 / 1000.0)
                            },
                            if r.ticket.is_some() {
                                ", attached to the ticket"
                            } else {
                                ""
                            }
                        )
                    } else {
                        format!("{kind} on {endpoint} failed: {}", result.error)
                    },
                    text: result.text,
                    progress,
                };
                let _ = tx.send(Step::Done(view)).await;
                return;
            }
            Some(Err(e)) => {
                let _ = tx.send(Step::Done(failed(&e, progress))).await;
                return;
            }
            None => {
                let e = ServiceError::Aborted("the run ended without a result".into());
                let _ = tx.send(Step::Done(failed(&e, progress))).await;
                return;
            }
        }
    }
}

pub async fn diagnose(
    State(c): State<AppState>,
    user: User,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<DiagForm>,
) -> Result<Response, PageError> {
    user.check_csrf(&f.csrf)?;
    let r = f.request(&id)?;
    let kind = r.kind.clone();
    let (tx, mut rx) = mpsc::channel(64);
    let account = user.session.account.clone();
    tokio::spawn(run(c.clone(), user.clone(), r, tx));
    if headers.contains_key("hx-request") {
        let token = c.runs.put(&account, rx);
        return Ok(html(RunPanel {
            kind,
            endpoint: id,
            events: format!("/runs/{token}"),
        }));
    }
    // Without JavaScript: wait for the end, then the endpoint page with it.
    let mut lines = Vec::new();
    let view = loop {
        match rx.recv().await {
            Some(Step::Progress(l)) => lines.push(l),
            Some(Step::Done(mut v)) => {
                if v.progress.is_empty() {
                    v.progress = lines;
                }
                break v;
            }
            None => {
                return Err(PageError::Service(ServiceError::Aborted(
                    "the run ended without a result".into(),
                )));
            }
        }
    };
    let page = endpoint_page(&c, &user, &id, &EndpointQuery::default().range, Some(view)).await?;
    Ok(html(page))
}

fn sse(rx: mpsc::Receiver<Result<Event, Infallible>>) -> Response {
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A run's steps: `progress` (a line of text), then `result` (the
/// rendered panel), then `end`.
pub async fn run_events(
    State(c): State<AppState>,
    user: User,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    let Some(mut steps) = c.runs.take(&token, &user.session.account) else {
        return Err(PageError::Service(ServiceError::NotFound(
            "no such diagnostic run (it finished, or was started by someone else)".into(),
        )));
    };
    let (tx, rx) = mpsc::channel(64);
    let mut stop = c.stop.clone();
    tokio::spawn(async move {
        loop {
            let step = tokio::select! {
                () = stop.requested() => return,
                s = steps.recv() => match s {
                    Some(s) => s,
                    None => return,
                },
            };
            let event = match step {
                Step::Progress(line) => Event::default().event("progress").data(line),
                Step::Done(view) => {
                    let body = view.render().unwrap_or_else(|e| e.to_string());
                    let _ = tx
                        .send(Ok(Event::default().event("result").data(body)))
                        .await;
                    let _ = tx
                        .send(Ok(Event::default().event("end").data("done")))
                        .await;
                    return;
                }
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(sse(rx))
}

/// Every ticket change, as an event `ticket` carrying the ticket's id, for
/// as long as the session lasts.
pub async fn ticket_events(State(c): State<AppState>, user: User) -> Result<Response, PageError> {
    let mut watch = c.service.watch(&user.caller())?;
    let (tx, rx) = mpsc::channel(64);
    let mut stop = c.stop.clone();
    tokio::spawn(async move {
        let mut check = tokio::time::interval(SESSION_CHECK);
        loop {
            let data = tokio::select! {
                () = tx.closed() => return,
                () = stop.requested() => return,
                _ = check.tick() => {
                    if !c.sessions.exists(&user.id, Instant::now()) {
                        return;
                    }
                    continue;
                }
                e = watch.recv() => match e {
                    Ok(entry) => entry.ticket.map(|t| t.to_string()).unwrap_or_default(),
                    // Missed some: the page refreshes all the same.
                    Err(broadcast::error::RecvError::Lagged(_)) => String::new(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            };
            if tx
                .send(Ok(Event::default().event("ticket").data(data)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(sse(rx))
}
