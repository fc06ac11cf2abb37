//! The console's pages: queue, ticket, fleet, endpoint, audit log and
//! admin. Each asks the specialist service (which checks the role) and
//! renders a template; state-changing forms check the CSRF token first and
//! answer with a redirect, so reload never repeats an action.

use std::collections::BTreeMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use vitals_proto::diag::Kind as DiagKind;
use vitals_proto::identity::Role;
use vitals_proto::report::{ago, snapshot_sections};
use vitals_proto::ticket_rules::Priority;
use vitals_proto::tickets::{Status, Ticket};

use super::AppState;
use super::auth::{PageError, User};
use super::charts::{self, Chart};
use super::view::{self, Chrome, FleetRow, QueueRow, query_value};
use crate::service::SpecialistService;
use crate::store::{AuditFilter, TicketFilter};
use crate::tickets::engine::Action;

/// Rows on one page of the queue and of the fleet.
const QUEUE_ROWS: u32 = 200;
const FLEET_ROWS: usize = 50;

/// A rendered template as a response.
pub fn html(t: impl Template) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(error) => {
            tracing::error!(%error, "console template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed").into_response()
        }
    }
}

pub async fn not_found() -> Response {
    PageError::Service(crate::service::ServiceError::NotFound(
        "There is no such page.".into(),
    ))
    .into_response()
}

type Page = Result<Response, PageError>;

/// A query string value that is set and not blank.
fn given(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

// ---------------------------------------------------------------- queue

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QueueQuery {
    /// "mine", "unassigned" or empty (everyone's).
    pub who: String,
    pub check: String,
    pub priority: String,
    /// A status name, "open" (the default) or "all".
    pub status: String,
    pub endpoint: String,
    pub incident: String,
    /// Tickets of endpoints in this site.
    pub site: String,
}

impl QueueQuery {
    fn filter(&self, me: &str) -> Result<TicketFilter, PageError> {
        let status = self.status.trim();
        if !matches!(status, "" | "open" | "all") && status.parse::<Status>().is_err() {
            return Err(PageError::BadRequest(format!(
                "unknown status \"{status}\""
            )));
        }
        if let Some(p) = given(&self.priority)
            && p.parse::<Priority>().is_err()
        {
            return Err(PageError::BadRequest(format!("unknown priority \"{p}\"")));
        }
        let incident =
            match given(&self.incident) {
                Some(i) => Some(i.parse().map_err(|_| {
                    PageError::BadRequest(format!("incident \"{i}\" is not a number"))
                })?),
                None => None,
            };
        Ok(TicketFilter {
            open_only: matches!(status, "" | "open"),
            endpoint: given(&self.endpoint),
            check_id: given(&self.check),
            incident,
            status: given(status).filter(|s| s != "open" && s != "all"),
            priority: given(&self.priority),
            assignee: (self.who == "mine").then(|| me.to_owned()),
            unassigned: self.who == "unassigned",
            limit: QUEUE_ROWS,
        })
    }

    /// The same filters as a query string, for the live refresh.
    fn query_string(&self) -> String {
        let pairs = [
            ("who", &self.who),
            ("check", &self.check),
            ("priority", &self.priority),
            ("status", &self.status),
            ("endpoint", &self.endpoint),
            ("incident", &self.incident),
            ("site", &self.site),
        ];
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", query_value(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// The live part of the queue: counts per priority and the rows.
#[derive(Template)]
#[template(path = "queue_rows.html")]
struct QueueRows {
    counts: Vec<(&'static str, u64)>,
    total: u64,
    rows: Vec<QueueRow>,
    /// Incident id and how many of the rows shown belong to it.
    incidents: Vec<(String, usize)>,
    capped: bool,
    limit: u32,
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    chrome: Chrome,
    q: QueueQuery,
    query: String,
    statuses: Vec<&'static str>,
    body: QueueRows,
}

async fn queue_rows_of(c: &AppState, user: &User, q: &QueueQuery) -> Result<QueueRows, PageError> {
    let caller = user.caller();
    let mut filter = q.filter(&caller.name)?;
    let site = q.site.trim();
    if !site.is_empty() {
        // The site's tickets are found among the most urgent thousand.
        filter.limit = 1000;
    }
    let mut tickets: Vec<Ticket> = c.service.tickets(&caller, filter).await?;
    if !site.is_empty() {
        let here: std::collections::HashSet<String> = c
            .service
            .fleet(&caller, false)
            .await?
            .into_iter()
            .filter(|(_, m)| m.sites.iter().any(|s| s == site))
            .map(|(e, _)| e.endpoint_id)
            .collect();
        tickets.retain(|t| here.contains(&t.endpoint));
        tickets.truncate(QUEUE_ROWS as usize);
    }
    // Within a priority, the ticket closest to missing its SLA first.
    tickets.sort_by_key(|t| (t.priority, t.resolve_due_ms, t.id));
    let counts = c.service.open_ticket_counts(&caller).await?;
    let now = vitals_proto::now_ms();
    let mut incidents: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tickets {
        if let Some(i) = t.incident {
            *incidents.entry(i.to_string()).or_default() += 1;
        }
    }
    let counts: Vec<(&'static str, u64)> = Priority::ALL
        .iter()
        .map(|p| {
            (
                p.as_str(),
                counts.by_priority.get(p.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    Ok(QueueRows {
        total: counts.iter().map(|c| c.1).sum(),
        counts,
        capped: tickets.len() as u32 >= QUEUE_ROWS,
        limit: QUEUE_ROWS,
        rows: tickets.iter().map(|t| QueueRow::new(t, now)).collect(),
        incidents: incidents.into_iter().collect(),
    })
}

pub async fn queue(State(c): State<AppState>, user: User, Query(q): Query<QueueQuery>) -> Page {
    let body = queue_rows_of(&c, &user, &q).await?;
    Ok(html(QueuePage {
        chrome: Chrome::new(&user.session, "queue"),
        query: q.query_string(),
        statuses: Status::ALL.iter().map(|s| s.as_str()).collect(),
        q,
        body,
    }))
}

pub async fn queue_rows(
    State(c): State<AppState>,
    user: User,
    Query(q): Query<QueueQuery>,
) -> Page {
    Ok(html(queue_rows_of(&c, &user, &q).await?))
}

// ---------------------------------------------------------------- ticket

struct TimelineRow {
    at: String,
    who: String,
    kind: String,
    text: String,
}

/// The diagnostic catalog as the forms offer it.
pub struct KindChoice {
    pub name: &'static str,
    pub params: String,
}

pub fn catalog() -> Vec<KindChoice> {
    DiagKind::ALL
        .iter()
        .map(|k| KindChoice {
            name: k.as_str(),
            params: k.params().join(" "),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "ticket.html")]
struct TicketPage {
    chrome: Chrome,
    t: Ticket,
    priority: String,
    status: &'static str,
    open: bool,
    response: view::Clock,
    resolve: view::Clock,
    opened: String,
    raised: String,
    timeline: Vec<TimelineRow>,
    knowledge: String,
    snapshot: String,
    snapshot_at: String,
    statuses: Vec<&'static str>,
    kinds: Vec<KindChoice>,
}

pub async fn ticket(State(c): State<AppState>, user: User, Path(id): Path<u64>) -> Page {
    let d = c.service.ticket(&user.caller(), id).await?;
    let now = vitals_proto::now_ms();
    let t = d.ticket;
    let open = t.status.is_open();
    Ok(html(TicketPage {
        chrome: Chrome::new(&user.session, "queue"),
        priority: t.priority.as_str().to_uppercase(),
        status: t.status.as_str(),
        open,
        response: view::clock(t.response_due_ms, now, t.responded),
        resolve: view::clock(t.resolve_due_ms, now, !open),
        opened: view::at(t.opened_ms),
        raised: ago(t.last_raised_ms, now),
        timeline: d
            .timeline
            .iter()
            .rev()
            .map(|e| TimelineRow {
                at: view::at(e.at_ms),
                who: e.who.clone(),
                kind: e.kind.as_str().replace('_', " "),
                text: e.text.clone(),
            })
            .collect(),
        knowledge: d.knowledge.unwrap_or_default(),
        snapshot_at: d
            .snapshot
            .as_ref()
            .map(|s| view::at(s.taken_at_ms))
            .unwrap_or_default(),
        snapshot: d
            .snapshot
            .as_ref()
            .map(|s| vitals_proto::report::snapshot_text(s, now))
            .unwrap_or_default(),
        statuses: Status::ALL
            .iter()
            .filter(|s| s.is_open())
            .map(|s| s.as_str())
            .collect(),
        kinds: catalog(),
        t,
    }))
}

#[derive(Deserialize)]
pub struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    status: String,
}

pub async fn ticket_act(
    State(c): State<AppState>,
    user: User,
    Path(id): Path<u64>,
    Form(f): Form<ActForm>,
) -> Page {
    user.check_csrf(&f.csrf)?;
    let text = f.text.trim().to_owned();
    let action = match f.action.as_str() {
        "assign" => Action::Assign(if text.is_empty() {
            user.session.account.clone()
        } else {
            text
        }),
        "comment" => Action::Comment(text),
        "status" => Action::Status(
            f.status
                .parse()
                .map_err(|_| PageError::BadRequest(format!("unknown status \"{}\"", f.status)))?,
        ),
        "resolve" => Action::Resolve(text),
        "reopen" => Action::Reopen(if text.is_empty() {
            "reopened from the console".into()
        } else {
            text
        }),
        "escalate" => Action::Escalate,
        other => return Err(PageError::BadRequest(format!("unknown action \"{other}\""))),
    };
    c.service.act(&user.caller(), id, action).await?;
    Ok(Redirect::to(&format!("/tickets/{id}")).into_response())
}

// ---------------------------------------------------------------- fleet

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FleetQuery {
    pub q: String,
    /// "online", "offline" or empty.
    pub state: String,
    /// Endpoints with an open ticket of this check.
    pub check: String,
    /// In this site, with this tag (the policy's `[[tickets.site]]` and
    /// `[[tickets.tag]]`).
    pub site: String,
    pub tag: String,
    /// id, host, state, cpu, memory, disk, seen, tickets; "-" in front: descending.
    pub sort: String,
    pub page: usize,
}

struct SortLink {
    key: &'static str,
    label: &'static str,
    href: String,
    /// aria-sort: "ascending", "descending" or "none".
    aria: &'static str,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    chrome: Chrome,
    q: FleetQuery,
    rows: Vec<FleetRow>,
    columns: Vec<SortLink>,
    total: usize,
    online: usize,
    first: usize,
    last: usize,
    prev: String,
    next: String,
}

pub async fn fleet(State(c): State<AppState>, user: User, Query(q): Query<FleetQuery>) -> Page {
    let caller = user.caller();
    let mut list = c.service.fleet(&caller, false).await?;
    let counts = c.service.open_ticket_counts(&caller).await?;
    let open = |id: &str| counts.by_endpoint.get(id).copied().unwrap_or(0);
    let needle = q.q.trim().to_lowercase();
    let with_check: Option<std::collections::HashSet<String>> = match given(&q.check) {
        Some(check) => Some(
            c.service
                .tickets(
                    &caller,
                    TicketFilter {
                        open_only: true,
                        check_id: Some(check),
                        limit: u32::MAX,
                        ..Default::default()
                    },
                )
                .await?
                .into_iter()
                .map(|t| t.endpoint)
                .collect(),
        ),
        None => None,
    };
    let online = list.iter().filter(|(e, _)| e.online).count();
    let (site, tag) = (q.site.trim(), q.tag.trim());
    list.retain(|(e, m)| {
        (needle.is_empty()
            || e.endpoint_id.to_lowercase().contains(&needle)
            || e.hostname.to_lowercase().contains(&needle))
            && match q.state.as_str() {
                "online" => e.online,
                "offline" => !e.online,
                _ => true,
            }
            && (site.is_empty() || m.sites.iter().any(|s| s == site))
            && (tag.is_empty() || m.tags.iter().any(|t| t == tag))
            && with_check
                .as_ref()
                .is_none_or(|s| s.contains(&e.endpoint_id))
    });
    let (desc, key) = match q.sort.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, q.sort.as_str()),
    };
    let key = if key.is_empty() { "id" } else { key };
    let f = |v: f32| (v * 100.0) as i64;
    match key {
        "host" => list.sort_by(|a, b| a.0.hostname.cmp(&b.0.hostname)),
        "state" => list.sort_by_key(|(e, _)| !e.online),
        "site" => list.sort_by(|a, b| a.1.sites.cmp(&b.1.sites)),
        "cpu" => list.sort_by_key(|(e, _)| f(e.cpu_usage_percent)),
        "memory" => list.sort_by_key(|(e, _)| f(e.memory_used_percent)),
        "disk" => list.sort_by_key(|(e, _)| f(e.fullest_disk_percent)),
        "seen" => list.sort_by_key(|(e, _)| e.last_seen_ms),
        "tickets" => list.sort_by_key(|(e, _)| open(&e.endpoint_id)),
        _ => list.sort_by(|a, b| a.0.endpoint_id.cmp(&b.0.endpoint_id)),
    }
    if desc {
        list.reverse();
    }
    let total = list.len();
    let pages = total.div_ceil(FLEET_ROWS).max(1);
    let page = q.page.clamp(1, pages);
    let start = (page - 1) * FLEET_ROWS;
    let now = vitals_proto::now_ms();
    let rows: Vec<FleetRow> = list
        .iter()
        .skip(start)
        .take(FLEET_ROWS)
        .map(|(e, m)| FleetRow::new(e, m, open(&e.endpoint_id) as usize, now))
        .collect();
    let link = |sort: &str, page: usize| {
        let mut parts = vec![];
        for (k, v) in [
            ("q", q.q.as_str()),
            ("state", &q.state),
            ("check", &q.check),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", query_value(v)));
            }
        }
        if !sort.is_empty() {
            parts.push(format!("sort={}", query_value(sort)));
        }
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        format!("/fleet?{}", parts.join("&"))
    };
    let columns = [
        ("id", "Endpoint"),
        ("host", "Host"),
        ("state", "State"),
        ("site", "Sites"),
        ("cpu", "CPU"),
        ("memory", "Memory"),
        ("disk", "Fullest disk"),
        ("tickets", "Open tickets"),
        ("seen", "Last seen"),
    ]
    .into_iter()
    .map(|(k, label)| {
        let here = k == key;
        SortLink {
            key: k,
            label,
            href: link(
                &if here && !desc {
                    format!("-{k}")
                } else {
                    k.to_owned()
                },
                1,
            ),
            aria: match (here, desc) {
                (false, _) => "none",
                (true, false) => "ascending",
                (true, true) => "descending",
            },
        }
    })
    .collect();
    Ok(html(FleetPage {
        chrome: Chrome::new(&user.session, "fleet"),
        rows,
        columns,
        total,
        online,
        first: if total == 0 { 0 } else { start + 1 },
        last: (start + FLEET_ROWS).min(total),
        prev: if page > 1 {
            link(&q.sort, page - 1)
        } else {
            String::new()
        },
        next: if page < pages {
            link(&q.sort, page + 1)
        } else {
            String::new()
        },
        q,
    }))
}

// ---------------------------------------------------------------- endpoint

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EndpointQuery {
    /// "day" (the default) or "week".
    pub range: String,
}

#[derive(Template)]
#[template(path = "endpoint.html")]
pub struct EndpointPage {
    pub chrome: Chrome,
    pub id: String,
    pub host: String,
    pub online: bool,
    pub state_since: String,
    pub state_ago: String,
    pub agent: String,
    pub taken: String,
    pub sections: Vec<(&'static str, String)>,
    pub open: Vec<QueueRow>,
    pub recent: Vec<QueueRow>,
    pub week: bool,
    pub charts: Vec<Chart>,
    pub kinds: Vec<KindChoice>,
    /// A diagnostic run without JavaScript: its progress and result.
    pub run: Option<super::live::RunView>,
    /// When and why it was revoked, if it was.
    pub revoked: Option<(String, String)>,
    pub machine: String,
    /// A second machine refused with its identity (a cloned image).
    pub clone_machine: String,
    pub enrolled: String,
}

pub async fn endpoint_page(
    c: &AppState,
    user: &User,
    id: &str,
    range: &str,
    run: Option<super::live::RunView>,
) -> Result<EndpointPage, PageError> {
    let caller = user.caller();
    let d = c.service.endpoint(&caller, id).await?;
    let now = vitals_proto::now_ms();
    let tickets = c
        .service
        .tickets(
            &caller,
            TicketFilter {
                endpoint: Some(id.to_owned()),
                limit: 50,
                ..Default::default()
            },
        )
        .await?;
    let (open, recent): (Vec<&Ticket>, Vec<&Ticket>) =
        tickets.iter().partition(|t| t.status.is_open());
    let week = range == "week";
    let from = now - if week { 7 * 86_400_000 } else { 86_400_000 };
    let history = c.service.history(&caller, id, 1000).await?;
    let s = &d.summary;
    Ok(EndpointPage {
        chrome: Chrome::new(&user.session, "fleet"),
        id: s.endpoint_id.clone(),
        host: s.hostname.clone(),
        online: s.online,
        state_since: view::at(d.state_since_ms),
        state_ago: ago(d.state_since_ms, now),
        agent: format!("{} on {}", s.agent_version, s.platform),
        taken: d
            .latest
            .as_ref()
            .map(|l| format!("{} ({})", view::at(l.taken_at_ms), ago(l.taken_at_ms, now)))
            .unwrap_or_default(),
        sections: d
            .latest
            .as_ref()
            .map(|l| snapshot_sections(l, now))
            .unwrap_or_default(),
        open: open.iter().map(|t| QueueRow::new(t, now)).collect(),
        recent: recent
            .iter()
            .take(10)
            .map(|t| QueueRow::new(t, now))
            .collect(),
        week,
        charts: charts::SERIES
            .iter()
            .map(|series| charts::draw(series, &history, from, now))
            .collect(),
        kinds: catalog(),
        run,
        revoked: (s.revoked_ms > 0).then(|| (view::at(s.revoked_ms), s.revoke_reason.clone())),
        machine: s.machine_id.clone(),
        clone_machine: s.clone_machine_id.clone(),
        enrolled: s.enrollment_text().unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize)]
pub struct CredentialForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    machine: String,
}

/// An admin revokes an endpoint, or keeps one machine of a cloned image.
pub async fn endpoint_credentials(
    State(c): State<AppState>,
    user: User,
    Path(id): Path<String>,
    Form(f): Form<CredentialForm>,
) -> Page {
    user.check_csrf(&f.csrf)?;
    match f.action.as_str() {
        "revoke" => {
            c.service
                .revoke_endpoint(&user.caller(), &id, &f.reason)
                .await?
        }
        "bind" => {
            c.service
                .bind_endpoint(&user.caller(), &id, &f.machine)
                .await?
        }
        other => return Err(PageError::BadRequest(format!("unknown action \"{other}\""))),
    };
    Ok(Redirect::to(&format!("/endpoints/{}", view::query_value(&id))).into_response())
}

pub async fn endpoint(
    State(c): State<AppState>,
    user: User,
    Path(id): Path<String>,
    Query(q): Query<EndpointQuery>,
) -> Page {
    Ok(html(endpoint_page(&c, &user, &id, &q.range, None).await?))
}

// ---------------------------------------------------------------- audit

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    pub who: String,
    pub endpoint: String,
    pub kind: String,
}

struct AuditRow {
    at: String,
    who: String,
    role: String,
    endpoint: String,
    kind: String,
    what: String,
    outcome: String,
    detail: String,
    ticket: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    q: AuditQuery,
    rows: Vec<AuditRow>,
}

pub async fn audit(State(c): State<AppState>, user: User, Query(q): Query<AuditQuery>) -> Page {
    let entries = c
        .service
        .audit(
            &user.caller(),
            AuditFilter {
                endpoint: q.endpoint.trim().to_owned(),
                who: q.who.trim().to_owned(),
                kind: q.kind.trim().to_owned(),
                limit: 200,
            },
        )
        .await?;
    let rows = entries
        .into_iter()
        .map(|e| AuditRow {
            at: view::at(e.at_ms),
            who: e.who,
            role: e.role,
            endpoint: e.endpoint_id,
            kind: e.kind,
            what: e
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            outcome: e.outcome,
            detail: e.detail,
            ticket: e.ticket.map(|t| t.to_string()).unwrap_or_default(),
        })
        .collect();
    Ok(html(AuditPage {
        chrome: Chrome::new(&user.session, "audit"),
        q,
        rows,
    }))
}

// ---------------------------------------------------------------- admin

struct AccountRow {
    name: String,
    role: &'static str,
    sites: String,
    disabled: bool,
    must_change: bool,
    totp: bool,
    updated: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    chrome: Chrome,
    accounts: Vec<AccountRow>,
    roles: Vec<&'static str>,
    /// Shown once: the account and its new one-time password.
    issued: Option<(String, String)>,
}

async fn admin_page(c: &AppState, user: &User, issued: Option<(String, String)>) -> Page {
    SpecialistService::authorize(&user.caller(), Role::Admin)?;
    let accounts = c
        .accounts
        .list()
        .await?
        .into_iter()
        .map(|a| AccountRow {
            role: a.role.as_str(),
            sites: a.sites.join(", "),
            disabled: a.disabled,
            must_change: a.must_change_password,
            totp: a.totp_secret.is_some(),
            updated: view::at(a.updated_ms),
            name: a.name,
        })
        .collect();
    let mut r = html(AdminPage {
        chrome: Chrome::new(&user.session, "admin"),
        accounts,
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        issued,
    });
    // A page with a password on it is never stored anywhere.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

pub async fn admin(State(c): State<AppState>, user: User) -> Page {
    admin_page(&c, &user, None).await
}

#[derive(Deserialize)]
pub struct AccountForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    sites: String,
    /// For changes: role, disable, enable, reset.
    #[serde(default)]
    op: String,
}

fn sites(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn role(text: &str) -> Result<Role, PageError> {
    text.parse()
        .map_err(|_| PageError::BadRequest(format!("unknown role \"{text}\"")))
}

pub async fn admin_add(State(c): State<AppState>, user: User, Form(f): Form<AccountForm>) -> Page {
    user.check_csrf(&f.csrf)?;
    let caller = user.caller();
    SpecialistService::authorize(&caller, Role::Admin)?;
    let name = f.name.trim().to_owned();
    let role = role(&f.role)?;
    let params: BTreeMap<String, String> = [
        ("name".to_owned(), name.clone()),
        ("role".to_owned(), role.as_str().to_owned()),
        ("sites".to_owned(), f.sites.trim().to_owned()),
    ]
    .into();
    match c.accounts.add(&name, role, sites(&f.sites)).await {
        Ok(password) => {
            c.audit(&caller, "account.add", params, "ok", "").await;
            admin_page(&c, &user, Some((name, password))).await
        }
        Err(e) => {
            c.audit(&caller, "account.add", params, "failed", &e.to_string())
                .await;
            Err(e.into())
        }
    }
}

pub async fn admin_change(
    State(c): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Form(f): Form<AccountForm>,
) -> Page {
    user.check_csrf(&f.csrf)?;
    let caller = user.caller();
    SpecialistService::authorize(&caller, Role::Admin)?;
    let mut params: BTreeMap<String, String> = [("name".to_owned(), name.clone())].into();
    let done = match f.op.as_str() {
        "role" => {
            let r = role(&f.role)?;
            params.insert("role".into(), r.as_str().into());
            params.insert("sites".into(), f.sites.trim().into());
            c.accounts
                .set_role(&name, r, Some(sites(&f.sites)))
                .await
                .map(|_| None)
        }
        "disable" | "enable" => {
            if name == caller.name && f.op == "disable" {
                return Err(PageError::BadRequest(
                    "you cannot disable your own account".into(),
                ));
            }
            c.accounts
                .set_disabled(&name, f.op == "disable")
                .await
                .map(|_| None)
        }
        "reset" => c.accounts.reset_password(&name).await.map(Some),
        // A lost phone: the account signs in with its password alone
        // (and enrolls again where a second factor is required).
        "totp-reset" => c.accounts.set_totp(&name, None).await.map(|_| None),
        other => return Err(PageError::BadRequest(format!("unknown change \"{other}\""))),
    };
    let kind = format!("account.{}", f.op);
    match done {
        Ok(password) => {
            c.audit(&caller, &kind, params, "ok", "").await;
            // The account signs in again under its new terms; an admin
            // changing their own role keeps this session, re-roled.
            if name != caller.name {
                c.sessions.end_account(&name);
            } else if f.op == "role" {
                let r = role(&f.role)?;
                c.sessions.update(&user.id, |s| s.role = r);
            }
            match password {
                Some(p) => admin_page(&c, &user, Some((name, p))).await,
                None => Ok(Redirect::to("/admin").into_response()),
            }
        }
        Err(e) => {
            c.audit(&caller, &kind, params, "failed", &e.to_string())
                .await;
            Err(e.into())
        }
    }
}
