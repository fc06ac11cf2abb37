//! Storm grouping: many endpoints raising together become one incident.
//!
//! Each raise counts in every group it belongs to (the `[[tickets.storm]]`
//! rules: a print server, a DNS server, a site, a subnet; then the same
//! check anywhere); the first group past its threshold within its window
//! opens an incident, or an open incident of that group takes the ticket.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use vitals_proto::ticket_rules::StormBy;
use vitals_proto::tickets::{Entry, Incident, Kind};

use super::{Engine, SYSTEM};

/// What a storm group is: the incident's identity while it is open. Its
/// text form (`check:ID`, `site:NAME|ID`, `subnet:NET|ID`,
/// `print_server:HOST`, `dns_server:ADDRESS`) is what an incident stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupKey {
    /// One check on any endpoints.
    Check(String),
    /// One check at one site.
    Site { site: String, check: String },
    /// One check on one subnet.
    Subnet { net: IpNet, check: String },
    /// Printer faults behind one print server, whatever the check.
    PrintServer(String),
    /// DNS faults of desks resolving with one server, whatever the check.
    DnsServer(String),
}

impl GroupKey {
    /// The check the group is about, if it is about one.
    pub fn check(&self) -> Option<&str> {
        match self {
            GroupKey::Check(c)
            | GroupKey::Site { check: c, .. }
            | GroupKey::Subnet { check: c, .. } => Some(c),
            GroupKey::PrintServer(_) | GroupKey::DnsServer(_) => None,
        }
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupKey::Check(c) => write!(f, "check:{c}"),
            GroupKey::Site { site, check } => write!(f, "site:{site}|{check}"),
            GroupKey::Subnet { net, check } => write!(f, "subnet:{net}|{check}"),
            GroupKey::PrintServer(h) => write!(f, "print_server:{h}"),
            GroupKey::DnsServer(r) => write!(f, "dns_server:{r}"),
        }
    }
}

/// A stored group key that is not one of the forms above.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("unknown storm group key {0:?}")]
pub struct BadGroupKey(String);

impl FromStr for GroupKey {
    type Err = BadGroupKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadGroupKey(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let with_check = || rest.split_once('|').ok_or_else(bad);
        Ok(match kind {
            "check" => GroupKey::Check(rest.to_owned()),
            "site" => {
                let (site, check) = with_check()?;
                GroupKey::Site {
                    site: site.to_owned(),
                    check: check.to_owned(),
                }
            }
            "subnet" => {
                let (net, check) = with_check()?;
                GroupKey::Subnet {
                    net: net.parse().map_err(|_| bad())?,
                    check: check.to_owned(),
                }
            }
            "print_server" => GroupKey::PrintServer(rest.to_owned()),
            "dns_server" => GroupKey::DnsServer(rest.to_owned()),
            _ => return Err(bad()),
        })
    }
}

/// A group a raise counts in for storm detection.
pub(super) struct Group {
    key: GroupKey,
    /// For messages: "print server ps01", "site city-hall", "check x".
    label: String,
    threshold: u32,
    window: Duration,
}

/// One raise counted in a group's window.
#[derive(Debug)]
pub(super) struct Raise {
    at: i64,
    endpoint: String,
    ticket: u64,
}

impl Engine {
    /// The storm groups a raise of `check` on `subject` at `endpoint`
    /// counts in, the most specific first, the same-check rule last.
    fn groups(&self, endpoint: &str, check: &str, subject: &str) -> Vec<Group> {
        let mut out = Vec::new();
        let facts = self.facts.get(endpoint);
        let measurement = self
            .checks
            .get(check)
            .map(|c| c.measurement.as_str())
            .unwrap_or("");
        for rule in &self.rules.storms {
            let mut add = |key: GroupKey, label: String| {
                out.push(Group {
                    key,
                    label,
                    threshold: rule.endpoints,
                    window: rule.window,
                })
            };
            match rule.by {
                StormBy::PrintServer => {
                    if measurement.starts_with("printer.")
                        && let Some(host) = facts.and_then(|f| f.print_servers.get(subject))
                    {
                        add(
                            GroupKey::PrintServer(host.clone()),
                            format!("print server {host}"),
                        );
                    }
                }
                StormBy::DnsServer => {
                    if measurement.starts_with("dns.") {
                        for r in facts.map(|f| f.resolvers.as_slice()).unwrap_or_default() {
                            add(GroupKey::DnsServer(r.clone()), format!("DNS server {r}"));
                        }
                    }
                }
                StormBy::Site => {
                    for site in self.membership(endpoint).sites {
                        let label = format!("{check} at site {site}");
                        add(
                            GroupKey::Site {
                                site,
                                check: check.to_owned(),
                            },
                            label,
                        );
                    }
                }
                StormBy::Subnet => {
                    let nets = facts.map(|f| f.addresses.as_slice()).unwrap_or_default();
                    for n in nets {
                        let a = n.addr();
                        let shared = match a {
                            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                            IpAddr::V6(v6) => {
                                !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80
                            }
                        };
                        if !shared {
                            continue;
                        }
                        let net = match (a, rule.prefix) {
                            (IpAddr::V4(_), Some(p)) => IpNet::new(a, p).map(|n| n.trunc()).ok(),
                            _ => Some(n.trunc()),
                        };
                        if let Some(net) = net {
                            add(
                                GroupKey::Subnet {
                                    net,
                                    check: check.to_owned(),
                                },
                                format!("{check} on subnet {net}"),
                            );
                        }
                    }
                }
            }
        }
        out.push(Group {
            key: GroupKey::Check(check.to_owned()),
            label: check.to_owned(),
            threshold: self.rules.storm_endpoints,
            window: self.rules.storm_window,
        });
        out
    }

    pub(super) fn storm(&mut self, id: u64, now: i64, out: &mut Vec<Entry>) {
        let Some(t) = self.tickets.get(&id) else {
            return;
        };
        let (check, endpoint, subject) =
            (t.check_id.clone(), t.endpoint.clone(), t.subject.clone());
        let linked = t.incident.is_some();
        let groups = self.groups(&endpoint, &check, &subject);
        // Every group counts the raise; the first to trip takes the ticket.
        for g in &groups {
            let window = g.window.as_millis() as i64;
            let recent = self.recent.entry(g.key.clone()).or_default();
            recent.retain(|r| now - r.at <= window && r.endpoint != endpoint);
            recent.push_back(Raise {
                at: now,
                endpoint: endpoint.clone(),
                ticket: id,
            });
        }
        if linked {
            return;
        }
        for g in groups {
            let open_incident = self.open_incidents.get(&g.key).copied();
            let count = self.recent.get(&g.key).map_or(0, VecDeque::len);
            if open_incident.is_none() && count < g.threshold as usize {
                continue;
            }
            let incident = match open_incident {
                Some(i) => i,
                None => {
                    let i = self.next_incident;
                    self.next_incident += 1;
                    self.open_incidents.insert(g.key.clone(), i);
                    self.incidents.insert(
                        i,
                        Incident {
                            id: i,
                            check_id: g.key.check().unwrap_or_default().to_owned(),
                            key: g.key.to_string(),
                            title: g.label.clone(),
                            opened_ms: now,
                            resolved_ms: None,
                            tickets: Vec::new(),
                        },
                    );
                    out.push(Entry {
                        ticket: None,
                        incident: Some(i),
                        at_ms: now,
                        who: SYSTEM.into(),
                        kind: Kind::IncidentOpened,
                        text: format!(
                            "{} endpoints raised {} within {}",
                            count,
                            g.label,
                            humantime::format_duration(g.window)
                        ),
                    });
                    i
                }
            };
            // A new incident gathers the open tickets that tripped it; an
            // open one only takes this ticket in.
            let to_link: Vec<u64> = if open_incident.is_some() {
                vec![id]
            } else {
                self.recent
                    .get(&g.key)
                    .map(|r| r.iter().map(|r| r.ticket).collect())
                    .unwrap_or_default()
            };
            for tid in to_link {
                let Some(t) = self
                    .tickets
                    .get_mut(&tid)
                    .filter(|t| t.status.is_open() && t.incident.is_none())
                else {
                    continue;
                };
                t.incident = Some(incident);
                if let Some(i) = self.incidents.get_mut(&incident) {
                    i.tickets.push(tid);
                }
                out.push(Entry {
                    ticket: Some(tid),
                    incident: Some(incident),
                    at_ms: now,
                    who: SYSTEM.into(),
                    kind: Kind::Linked,
                    text: format!("part of incident {incident} ({})", g.label),
                });
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_read_back_what_they_write() {
        let net: IpNet = "10.1.4.0/24".parse().unwrap();
        for key in [
            GroupKey::Check("disk_nearly_full".into()),
            GroupKey::Site {
                site: "city-hall".into(),
                check: "dns_failing".into(),
            },
            GroupKey::Subnet {
                net,
                check: "gateway_unreachable".into(),
            },
            GroupKey::PrintServer("ps01".into()),
            GroupKey::DnsServer("10.0.0.53".into()),
        ] {
            assert_eq!(
                key.to_string().parse::<GroupKey>(),
                Ok(key.clone()),
                "{key}"
            );
        }
        assert_eq!(
            GroupKey::Site {
                site: "s".into(),
                check: "c".into()
            }
            .check(),
            Some("c")
        );
        assert_eq!(GroupKey::PrintServer("ps01".into()).check(), None);
        assert!("site:no-check".parse::<GroupKey>().is_err());
        assert!("rack:7".parse::<GroupKey>().is_err());
    }
}
