//! The ticket rules in `policy.toml`'s `[tickets]` table: how faults become
//! tickets (quiet period, reopen window, flapping, storms), which
//! endpoints matter most, the SLA per priority, and maintenance windows.
//! The collector alone reads them; agents never see them.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::domain::Severity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRules {
    /// A cleared fault resolves its ticket after this long without returning.
    #[serde(default = "quiet_period", with = "humantime_serde")]
    pub quiet_period: Duration,
    /// A fault returning this soon after its ticket was resolved reopens it.
    #[serde(default = "reopen_window", with = "humantime_serde")]
    pub reopen_window: Duration,
    /// This many raise/clear cycles within `flap_window` mark a ticket flapping.
    #[serde(default = "flap_cycles")]
    pub flap_cycles: u32,
    #[serde(default = "flap_window", with = "humantime_serde")]
    pub flap_window: Duration,
    /// This many endpoints raising the same check within `storm_window`
    /// become one parent incident.
    #[serde(default = "storm_endpoints")]
    pub storm_endpoints: u32,
    #[serde(default = "storm_window", with = "humantime_serde")]
    pub storm_window: Duration,
    /// More ways to see one problem behind many faults: endpoints sharing a
    /// site, a subnet, a print server or a DNS server. Tried in order
    /// before the same-check rule above; the first to trip wins.
    #[serde(default, rename = "storm")]
    pub storms: Vec<StormRule>,
    /// Named sites: endpoints by ID pattern or address.
    #[serde(default, rename = "site")]
    pub sites: Vec<EndpointGroup>,
    /// Named tags, such as "public-safety": endpoints by ID pattern or address.
    #[serde(default, rename = "tag")]
    pub tags: Vec<EndpointGroup>,
    /// First match wins; endpoints matching none are "normal".
    #[serde(default, rename = "criticality")]
    pub criticality: Vec<CriticalityRule>,
    #[serde(default)]
    pub sla: SlaTable,
    #[serde(default, rename = "maintenance")]
    pub maintenance: Vec<MaintenanceWindow>,
    /// Tickets for endpoints that stopped reporting.
    #[serde(default)]
    pub offline: OfflineRule,
    /// `[[tickets.depends]]`: faults that follow from another on the same
    /// desk. Absent: the shipped rules ([`Dependency::shipped`]).
    #[serde(default, rename = "depends", skip_serializing_if = "Option::is_none")]
    pub depends: Option<Vec<Dependency>>,
}

/// On one desk, while a `cause` is raised, a raised `symptom` is linked to
/// the cause's ticket instead of opening its own; a symptom's ticket opened
/// up to `window` before the cause is folded under it too. When the cause
/// clears, the symptoms still raised `settle` later stand on their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub cause: Vec<String>,
    pub symptoms: Vec<String>,
    #[serde(default = "depends_window", with = "humantime_serde")]
    pub window: Duration,
    /// After the cause clears, how long a symptom still raised waits before
    /// it stands on its own: symptoms clear a probe or two after their
    /// cause, and a DNS name that resolves again ten seconds after the
    /// gateway came back was never a problem of its own.
    #[serde(default = "depends_settle", with = "humantime_serde")]
    pub settle: Duration,
}

impl Dependency {
    /// With the gateway unreachable or the link down, a desk's DNS and key
    /// services fail too: they are symptoms, not problems of their own.
    pub fn shipped() -> Vec<Dependency> {
        vec![Dependency {
            cause: vec!["gateway_unreachable".into(), "link_down".into()],
            symptoms: vec![
                "dns_failing".into(),
                "dns_slow".into(),
                "service_unreachable".into(),
            ],
            window: depends_window(),
            settle: depends_settle(),
        }]
    }
}

fn depends_window() -> Duration {
    Duration::from_secs(5 * 60)
}

fn depends_settle() -> Duration {
    Duration::from_secs(30)
}

/// `[tickets.offline]`: an endpoint with no session for `after` raises
/// `endpoint_offline` when it is at least `criticality`; the fault clears
/// when it is back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "offline_after", with = "humantime_serde")]
    pub after: Duration,
    /// The least criticality that gets a ticket (default: critical only).
    #[serde(default = "offline_criticality")]
    pub criticality: Criticality,
}

impl Default for OfflineRule {
    fn default() -> Self {
        OfflineRule {
            enabled: true,
            after: offline_after(),
            criticality: offline_criticality(),
        }
    }
}

fn yes() -> bool {
    true
}
fn offline_after() -> Duration {
    Duration::from_secs(15 * 60)
}
fn offline_criticality() -> Criticality {
    Criticality::Critical
}

impl Default for TicketRules {
    fn default() -> Self {
        TicketRules {
            quiet_period: quiet_period(),
            reopen_window: reopen_window(),
            flap_cycles: flap_cycles(),
            flap_window: flap_window(),
            storm_endpoints: storm_endpoints(),
            storm_window: storm_window(),
            storms: Vec::new(),
            sites: Vec::new(),
            tags: Vec::new(),
            criticality: Vec::new(),
            sla: SlaTable::default(),
            maintenance: Vec::new(),
            offline: OfflineRule::default(),
            depends: None,
        }
    }
}

fn quiet_period() -> Duration {
    Duration::from_secs(10 * 60)
}
fn reopen_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn flap_cycles() -> u32 {
    3
}
fn flap_window() -> Duration {
    Duration::from_secs(3600)
}
fn storm_endpoints() -> u32 {
    10
}
fn storm_window() -> Duration {
    Duration::from_secs(10 * 60)
}

/// How much an endpoint matters to the city.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criticality {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalityRule {
    /// Endpoint IDs to match: `*` any run of characters, `?` one; case does
    /// not matter (`DISPATCH-*`, `kiosk-??`). Empty: any.
    #[serde(default)]
    pub endpoints: String,
    /// Only endpoints at this site. Empty: any.
    #[serde(default)]
    pub site: String,
    /// Only endpoints with this tag. Empty: any.
    #[serde(default)]
    pub tag: String,
    pub level: Criticality,
}

/// A named set of endpoints: a site or a tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointGroup {
    pub name: String,
    /// Endpoint ID patterns, as in criticality rules.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Networks such as "10.20.0.0/16": an endpoint with an address in one
    /// belongs (addresses come from its latest snapshot).
    #[serde(default)]
    pub subnets: Vec<IpNet>,
}

impl EndpointGroup {
    pub fn holds(&self, endpoint: &str, addresses: &[IpAddr]) -> bool {
        self.endpoints.iter().any(|p| wildcard(p, endpoint))
            || self
                .subnets
                .iter()
                .any(|n| addresses.iter().any(|a| n.contains(a)))
    }
}

/// What endpoints share, for storm grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StormBy {
    /// A site from `[[tickets.site]]`; one check.
    Site,
    /// An IP network the endpoints are on; one check.
    Subnet,
    /// The server (or network printer) behind their print queues; any
    /// printer check.
    PrintServer,
    /// A DNS server they resolve with; any DNS check.
    DnsServer,
}

impl StormBy {
    pub fn as_str(self) -> &'static str {
        match self {
            StormBy::Site => "site",
            StormBy::Subnet => "subnet",
            StormBy::PrintServer => "print server",
            StormBy::DnsServer => "DNS server",
        }
    }
}

/// `[[tickets.storm]]`: this many endpoints sharing `by` raising within
/// `window` become one parent incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormRule {
    pub by: StormBy,
    pub endpoints: u32,
    #[serde(default = "storm_window", with = "humantime_serde")]
    pub window: Duration,
    /// For `subnet`: group IPv4 addresses by this prefix length instead of
    /// the interface's own.
    #[serde(default)]
    pub prefix: Option<u8>,
}

/// Where an endpoint belongs: its ID, the sites and tags that hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub endpoint: String,
    pub sites: Vec<String>,
    pub tags: Vec<String>,
}

/// Whether a rule's selectors (each empty for "any") all hold for `m`.
fn selects(endpoints: &str, site: &str, tag: &str, m: &Membership) -> bool {
    (endpoints.is_empty() || wildcard(endpoints, &m.endpoint))
        && (site.is_empty() || m.sites.iter().any(|s| s.eq_ignore_ascii_case(site)))
        && (tag.is_empty() || m.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
}

/// P1 is the most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    P1,
    P2,
    P3,
    P4,
}

impl Priority {
    /// Severity of the fault against criticality of the asset.
    pub fn of(severity: Severity, criticality: Criticality) -> Priority {
        use Criticality as C;
        use Priority::*;
        match (severity, criticality) {
            (Severity::Critical, C::Critical | C::High) => P1,
            (Severity::Critical, C::Normal) | (Severity::Warning, C::Critical | C::High) => P2,
            (Severity::Critical, C::Low)
            | (Severity::Warning, C::Normal)
            | (Severity::Info, C::Critical | C::High) => P3,
            _ => P4,
        }
    }
}

crate::text_enum!(Priority {
    P1 => "p1",
    P2 => "p2",
    P3 => "p3",
    P4 => "p4",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// A person must act on the ticket within this.
    #[serde(with = "humantime_serde")]
    pub response: Duration,
    /// The ticket must be resolved within this.
    #[serde(with = "humantime_serde")]
    pub resolve: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaTable {
    #[serde(default = "sla_p1")]
    pub p1: Sla,
    #[serde(default = "sla_p2")]
    pub p2: Sla,
    #[serde(default = "sla_p3")]
    pub p3: Sla,
    #[serde(default = "sla_p4")]
    pub p4: Sla,
}

impl Default for SlaTable {
    fn default() -> Self {
        SlaTable {
            p1: sla_p1(),
            p2: sla_p2(),
            p3: sla_p3(),
            p4: sla_p4(),
        }
    }
}

impl SlaTable {
    pub fn of(&self, p: Priority) -> Sla {
        match p {
            Priority::P1 => self.p1,
            Priority::P2 => self.p2,
            Priority::P3 => self.p3,
            Priority::P4 => self.p4,
        }
    }
}

fn sla(response_mins: u64, resolve_hours: u64) -> Sla {
    Sla {
        response: Duration::from_secs(response_mins * 60),
        resolve: Duration::from_secs(resolve_hours * 3600),
    }
}
fn sla_p1() -> Sla {
    sla(15, 4)
}
fn sla_p2() -> Sla {
    sla(60, 8)
}
fn sla_p3() -> Sla {
    sla(4 * 60, 3 * 24)
}
fn sla_p4() -> Sla {
    sla(24 * 60, 7 * 24)
}

/// New tickets for the endpoints it covers are suppressed while it runs
/// (and the suppression is recorded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Endpoint IDs, as in criticality rules. Empty: any.
    #[serde(default)]
    pub endpoints: String,
    /// Only endpoints at this site. Empty: any.
    #[serde(default)]
    pub site: String,
    /// Only endpoints with this tag. Empty: any.
    #[serde(default)]
    pub tag: String,
    /// RFC 3339, such as "2026-11-28T22:00:00Z".
    #[serde(with = "humantime_serde")]
    pub start: SystemTime,
    #[serde(with = "humantime_serde")]
    pub end: SystemTime,
    #[serde(default)]
    pub reason: String,
}

impl MaintenanceWindow {
    pub fn covers(&self, m: &Membership, now_ms: i64) -> bool {
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        };
        (ms(self.start)..ms(self.end)).contains(&now_ms)
            && selects(&self.endpoints, &self.site, &self.tag, m)
    }

    /// What it covers, for messages.
    pub fn scope(&self) -> String {
        scope(&self.endpoints, &self.site, &self.tag)
    }
}

fn scope(endpoints: &str, site: &str, tag: &str) -> String {
    let mut parts = Vec::new();
    if !endpoints.is_empty() {
        parts.push(format!("endpoints \"{endpoints}\""));
    }
    if !site.is_empty() {
        parts.push(format!("site \"{site}\""));
    }
    if !tag.is_empty() {
        parts.push(format!("tag \"{tag}\""));
    }
    parts.join(", ")
}

impl TicketRules {
    /// The dependency rules in force: the policy's, or the shipped ones.
    pub fn dependencies(&self) -> std::borrow::Cow<'_, [Dependency]> {
        match &self.depends {
            Some(d) => std::borrow::Cow::Borrowed(d),
            None => std::borrow::Cow::Owned(Dependency::shipped()),
        }
    }

    /// The sites and tags holding `endpoint` (with these addresses).
    pub fn membership(&self, endpoint: &str, addresses: &[IpAddr]) -> Membership {
        let names = |groups: &[EndpointGroup]| {
            groups
                .iter()
                .filter(|g| g.holds(endpoint, addresses))
                .map(|g| g.name.clone())
                .collect()
        };
        Membership {
            endpoint: endpoint.to_owned(),
            sites: names(&self.sites),
            tags: names(&self.tags),
        }
    }

    /// Whether any rule needs an endpoint's addresses, resolvers or print
    /// servers (so the collector must look at its snapshots).
    pub fn needs_facts(&self) -> bool {
        self.sites
            .iter()
            .chain(&self.tags)
            .any(|g| !g.subnets.is_empty())
            || self.storms.iter().any(|s| s.by != StormBy::Site)
    }

    /// Whether a rule picks endpoints by site or tag name (which an
    /// enrollment token may give), so the engine must know each endpoint's.
    pub fn selects_by_label(&self) -> bool {
        self.criticality
            .iter()
            .any(|r| !r.site.is_empty() || !r.tag.is_empty())
            || self
                .maintenance
                .iter()
                .any(|w| !w.site.is_empty() || !w.tag.is_empty())
            || self.storms.iter().any(|s| s.by == StormBy::Site)
    }

    /// The criticality of an endpoint: the first matching rule, else normal.
    pub fn criticality_of(&self, m: &Membership) -> Criticality {
        self.criticality
            .iter()
            .find(|r| selects(&r.endpoints, &r.site, &r.tag, m))
            .map(|r| r.level)
            .unwrap_or_default()
    }

    /// The maintenance window covering an endpoint now, if any.
    pub fn maintenance_of(&self, m: &Membership, now_ms: i64) -> Option<&MaintenanceWindow> {
        self.maintenance.iter().find(|w| w.covers(m, now_ms))
    }

    /// What serde cannot check; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (i, d) in self.depends.iter().flatten().enumerate() {
            let at = format!("tickets.depends #{}", i + 1);
            if d.cause.is_empty() || d.symptoms.is_empty() {
                return Err(format!("{at}: needs at least one cause and one symptom"));
            }
            if let Some(both) = d.cause.iter().find(|c| d.symptoms.contains(c)) {
                return Err(format!("{at}: \"{both}\" cannot be its own symptom"));
            }
            if d.window.is_zero() {
                return Err(format!("{at}: window must be above 0"));
            }
        }
        if self.flap_cycles < 2 {
            return Err("tickets.flap_cycles must be at least 2".into());
        }
        if self.storm_endpoints < 2 {
            return Err("tickets.storm_endpoints must be at least 2".into());
        }
        for (name, d) in [
            ("quiet_period", self.quiet_period),
            ("flap_window", self.flap_window),
            ("storm_window", self.storm_window),
        ] {
            if d.is_zero() {
                return Err(format!("tickets.{name} must be above 0"));
            }
        }
        for (p, s) in [
            ("p1", self.sla.p1),
            ("p2", self.sla.p2),
            ("p3", self.sla.p3),
            ("p4", self.sla.p4),
        ] {
            if s.response.is_zero() || s.resolve < s.response {
                return Err(format!(
                    "tickets.sla.{p}: response must be above 0 and at most resolve"
                ));
            }
        }
        for (what, groups) in [("site", &self.sites), ("tag", &self.tags)] {
            for (i, g) in groups.iter().enumerate() {
                if g.name.trim().is_empty() || groups[..i].iter().any(|o| o.name == g.name) {
                    return Err(format!(
                        "tickets.{what} #{}: name must be set and unique",
                        i + 1
                    ));
                }
                if g.endpoints.is_empty() && g.subnets.is_empty() {
                    return Err(format!(
                        "tickets.{what} \"{}\": give endpoints or subnets",
                        g.name
                    ));
                }
            }
        }
        let known = |what: &str, name: &str, groups: &[EndpointGroup]| {
            if name.is_empty() || groups.iter().any(|g| g.name.eq_ignore_ascii_case(name)) {
                Ok(())
            } else {
                Err(format!(
                    "unknown {what} \"{name}\" (no [[tickets.{what}]] of that name)"
                ))
            }
        };
        for r in &self.criticality {
            if r.endpoints.is_empty() && r.site.is_empty() && r.tag.is_empty() {
                return Err("tickets.criticality: give endpoints, site or tag".into());
            }
            known("site", &r.site, &self.sites)
                .and_then(|()| known("tag", &r.tag, &self.tags))
                .map_err(|e| format!("tickets.criticality: {e}"))?;
        }
        for m in &self.maintenance {
            if m.endpoints.is_empty() && m.site.is_empty() && m.tag.is_empty() {
                return Err("tickets.maintenance: give endpoints, site or tag".into());
            }
            known("site", &m.site, &self.sites)
                .and_then(|()| known("tag", &m.tag, &self.tags))
                .map_err(|e| format!("tickets.maintenance: {e}"))?;
            if m.end <= m.start {
                return Err(format!(
                    "tickets.maintenance ({}): end must be after start",
                    m.scope()
                ));
            }
        }
        for s in &self.storms {
            if s.endpoints < 2 {
                return Err(format!(
                    "tickets.storm by {}: endpoints must be at least 2",
                    s.by.as_str()
                ));
            }
            if s.window.is_zero() {
                return Err(format!(
                    "tickets.storm by {}: window must be above 0",
                    s.by.as_str()
                ));
            }
            if s.by == StormBy::Site && self.sites.is_empty() {
                return Err("tickets.storm by site: no [[tickets.site]] is defined".into());
            }
            match s.prefix {
                Some(p) if s.by != StormBy::Subnet || p == 0 || p > 32 => {
                    return Err(format!(
                        "tickets.storm by {}: prefix is for subnet storms, 1 to 32",
                        s.by.as_str()
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Matches `text` against `pattern` with `*` and `?`, ignoring case.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (p, t, ok) in [
            ("DISPATCH-*", "dispatch-07", true),
            ("DISPATCH-*", "lobby-kiosk", false),
            ("kiosk-??", "kiosk-12", true),
            ("kiosk-??", "kiosk-123", false),
            ("*", "anything", true),
            ("*-fin-*", "cityhall-fin-04", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(wildcard(p, t), ok, "{p} vs {t}");
        }
    }

    #[test]
    fn priority_from_severity_and_criticality() {
        use Criticality as C;
        assert_eq!(Priority::of(Severity::Critical, C::Critical), Priority::P1);
        assert_eq!(Priority::of(Severity::Warning, C::Critical), Priority::P2);
        assert_eq!(Priority::of(Severity::Critical, C::Normal), Priority::P2);
        assert_eq!(Priority::of(Severity::Warning, C::Normal), Priority::P3);
        assert_eq!(Priority::of(Severity::Warning, C::Low), Priority::P4);
        assert_eq!(Priority::of(Severity::Info, C::Normal), Priority::P4);
        // A dispatch console outranks a lobby kiosk for the same fault.
        assert!(
            Priority::of(Severity::Warning, C::Critical) < Priority::of(Severity::Warning, C::Low)
        );
    }
}
