//! The fault policy: checks with a raise and a clear level and a hold time.
//!
//! The collector owns the policy (`policy.toml`, or the default shipped in
//! this crate) and sends it to agents; agents evaluate it on every sample.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_file::{self, ConfigFileError};
use crate::domain::{ProbeKind, ProbeKind as P, Severity};
use crate::ticket_rules::TicketRules;

/// Faults raised by the system itself rather than by a policy check:
/// (check id, title). The agent raises `agent_outbox_unwritable` when its
/// outbox cannot be written; the collector raises `endpoint_offline` for
/// endpoints whose criticality the ticket rules watch.
pub const BUILTIN_CHECKS: &[(&str, &str)] = &[
    (
        "agent_outbox_unwritable",
        "Agent cannot keep its outbox on disk",
    ),
    ("endpoint_offline", "Endpoint offline"),
    (
        "endpoint_cloned",
        "Two machines present one endpoint's identity (cloned image?)",
    ),
    (
        "collector_certificate_expiring",
        "A collector certificate expires soon",
    ),
];

/// The measurements checks can name, each with the probe that takes it
/// and what it means. Each yields one value per subject (each disk,
/// printer, DNS name... on its own); yes/no measurements are 1 or 0.
pub const MEASUREMENTS: &[(&str, ProbeKind, &str)] = &[
    (
        "cpu.usage_percent",
        P::System,
        "CPU use, all cores, percent",
    ),
    (
        "cpu.busiest_core_percent",
        P::System,
        "use of the busiest core, percent",
    ),
    ("memory.used_percent", P::System, "memory in use, percent"),
    ("swap.used_percent", P::System, "swap in use, percent"),
    (
        "disk.used_percent",
        P::System,
        "space used per mount, percent",
    ),
    (
        "disk.inodes_used_percent",
        P::System,
        "inodes used per mount, percent",
    ),
    (
        "temperature.celsius",
        P::Sensors,
        "each sensor, degrees Celsius",
    ),
    (
        "battery.health_percent",
        P::Sensors,
        "full capacity against design capacity",
    ),
    (
        "smart.failing",
        P::Smart,
        "the drive's own SMART verdict is FAILED (1/0)",
    ),
    (
        "smart.reallocated_sectors",
        P::Smart,
        "reallocated sector count",
    ),
    (
        "smart.pending_sectors",
        P::Smart,
        "sectors pending reallocation",
    ),
    (
        "smart.media_errors",
        P::Smart,
        "NVMe media and data integrity errors",
    ),
    (
        "os.reboot_pending_days",
        P::Os,
        "days a pending reboot has waited (0 if none)",
    ),
    (
        "os.failed_services",
        P::Os,
        "number of failed system services",
    ),
    (
        "os.clock_offset_seconds",
        P::Os,
        "distance from the collector's clock, seconds",
    ),
    (
        "printer.stopped",
        P::Printers,
        "queue stopped or paused (1/0)",
    ),
    (
        "printer.offline",
        P::Printers,
        "printer offline or not answering (1/0)",
    ),
    ("printer.jammed", P::Printers, "paper jam (1/0)"),
    ("printer.media_empty", P::Printers, "out of paper (1/0)"),
    (
        "printer.toner_empty",
        P::Printers,
        "toner or ink empty (1/0)",
    ),
    ("printer.toner_low", P::Printers, "toner or ink low (1/0)"),
    ("printer.door_open", P::Printers, "cover or door open (1/0)"),
    (
        "printer.service_requested",
        P::Printers,
        "printer asks for service (1/0)",
    ),
    (
        "printer.oldest_job_minutes",
        P::Printers,
        "age of the oldest queued job",
    ),
    (
        "printer.lowest_supply_percent",
        P::Printers,
        "level of the emptiest supply",
    ),
    (
        "printer.supply_percent",
        P::Printers,
        "level of each toner or ink supply (not waste), per printer and supply",
    ),
    (
        "gateway.loss_percent",
        P::Network,
        "default gateway probes unanswered, percent",
    ),
    (
        "gateway.rtt_ms",
        P::Network,
        "default gateway round trip, milliseconds",
    ),
    (
        "dns.failed",
        P::Network,
        "a configured name does not resolve (1/0)",
    ),
    (
        "dns.resolve_ms",
        P::Network,
        "resolution time per name, milliseconds",
    ),
    (
        "service.unreachable",
        P::Network,
        "a key service refuses or times out (1/0)",
    ),
    (
        "service.connect_ms",
        P::Network,
        "TCP connect time per service, milliseconds",
    ),
    (
        "interface.link_down",
        P::Network,
        "an interface that was up lost its link (1/0)",
    ),
    (
        "interface.errors_per_min",
        P::Network,
        "errors and drops per minute",
    ),
    ("wifi.signal_dbm", P::Network, "Wi-Fi signal, dBm"),
];

/// The probe that takes `measurement`, if it is known.
pub fn probe_of(measurement: &str) -> Option<ProbeKind> {
    MEASUREMENTS
        .iter()
        .find(|(m, _, _)| *m == measurement)
        .map(|(_, p, _)| *p)
}

/// The shipped policy's text (`proto/default-policy.toml`).
pub const DEFAULT: &str = include_str!("../default-policy.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Set by the file, or derived from its content.
    #[serde(default)]
    pub version: String,
    #[serde(default, rename = "check")]
    pub checks: Vec<Check>,
    /// How the collector turns faults into tickets; agents never see this.
    #[serde(default)]
    pub tickets: TicketRules,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub measurement: String,
    pub direction: Direction,
    pub raise: f64,
    pub clear: f64,
    #[serde(default, with = "humantime_serde")]
    pub hold: Duration,
    pub severity: Severity,
    /// The problem this check is a rung of. Checks of one ladder on one
    /// subject are one ticket, whose severity and priority follow the
    /// highest rung raised (`toner_low` and `toner_empty`). Without it,
    /// checks on the same measurement form the ladder (`gateway_lossy` and
    /// `gateway_unreachable` on `gateway.loss_percent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ladder: Option<String>,
    /// What one ticket of this check on one desk covers: each subject on
    /// its own, or every subject reached the same way (the DNS names asked
    /// of one resolver, the services behind one gateway), listed on it.
    #[serde(default, skip_serializing_if = "TicketPer::is_subject")]
    pub ticket_per: TicketPer,
}

/// See [`Check::ticket_per`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketPer {
    #[default]
    Subject,
    Via,
}

impl TicketPer {
    pub fn is_subject(&self) -> bool {
        *self == TicketPer::Subject
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TicketPer::Subject => "subject",
            TicketPer::Via => "via",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A fault when the value is high.
    Above,
    /// A fault when the value is low.
    Below,
}

impl Check {
    /// The problem this check is a rung of: its ladder, or its measurement.
    pub fn problem(&self) -> &str {
        self.ladder.as_deref().unwrap_or(&self.measurement)
    }

    /// Whether `value` is past the raise level.
    pub fn raises(&self, value: f64) -> bool {
        match self.direction {
            Direction::Above => value >= self.raise,
            Direction::Below => value <= self.raise,
        }
    }

    /// Whether `value` is back past the clear level.
    pub fn clears(&self, value: f64) -> bool {
        match self.direction {
            Direction::Above => value < self.clear,
            Direction::Below => value > self.clear,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{file}: {message}")]
    Tickets { file: String, message: String },
    #[error("{file}: check \"{check}\": {message}")]
    Invalid {
        file: String,
        check: String,
        message: String,
    },
}

impl Policy {
    /// The policy shipped with Vitals.
    pub fn default_policy() -> Policy {
        // The shipped file is checked by a unit test; an empty policy is the
        // safe fallback should that ever fail.
        Self::parse(DEFAULT, "default-policy.toml").unwrap_or(Policy {
            version: String::new(),
            checks: Vec::new(),
            tickets: TicketRules::default(),
        })
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates policy text; `name` is what errors call it.
    pub fn parse(text: &str, name: &str) -> Result<Policy, PolicyError> {
        let mut p: Policy = config_file::parse(text, name)?;
        p.validate(name)?;
        if p.version.is_empty() {
            p.version = format!("{:016x}", fnv1a(text.as_bytes()));
        }
        Ok(p)
    }

    fn validate(&self, file: &str) -> Result<(), PolicyError> {
        self.tickets
            .validate()
            .map_err(|message| PolicyError::Tickets {
                file: file.to_owned(),
                message,
            })?;
        let known = |id: &str| {
            self.checks.iter().any(|c| c.id == id) || BUILTIN_CHECKS.iter().any(|(b, _)| *b == id)
        };
        for (i, d) in self.tickets.depends.iter().flatten().enumerate() {
            if let Some(id) = d.cause.iter().chain(&d.symptoms).find(|id| !known(id)) {
                return Err(PolicyError::Tickets {
                    file: file.to_owned(),
                    message: format!("tickets.depends #{}: unknown check \"{id}\"", i + 1),
                });
            }
        }
        let invalid = |check: &str, message: String| PolicyError::Invalid {
            file: file.to_owned(),
            check: check.to_owned(),
            message,
        };
        for (i, c) in self.checks.iter().enumerate() {
            if c.id.is_empty() {
                return Err(invalid(&format!("#{}", i + 1), "id is empty".into()));
            }
            if self.checks[..i].iter().any(|o| o.id == c.id) {
                return Err(invalid(&c.id, "defined twice".into()));
            }
            if probe_of(&c.measurement).is_none() {
                return Err(invalid(
                    &c.id,
                    format!(
                        "unknown measurement \"{}\" (known: {})",
                        c.measurement,
                        MEASUREMENTS
                            .iter()
                            .map(|(m, _, _)| *m)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if let Some(l) = &c.ladder
                && (l.is_empty()
                    || !l.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "_.".contains(ch)
                    }))
            {
                return Err(invalid(
                    &c.id,
                    format!("ladder \"{l}\" must be lower-case letters, digits, _ and ."),
                ));
            }
            if !c.raise.is_finite() || !c.clear.is_finite() {
                return Err(invalid(&c.id, "raise and clear must be numbers".into()));
            }
            let ordered = match c.direction {
                Direction::Above => c.clear <= c.raise,
                Direction::Below => c.clear >= c.raise,
            };
            if !ordered {
                return Err(invalid(
                    &c.id,
                    format!(
                        "clear ({}) must be {} raise ({}) for direction \"{}\"",
                        c.clear,
                        if c.direction == Direction::Above {
                            "at or below"
                        } else {
                            "at or above"
                        },
                        c.raise,
                        if c.direction == Direction::Above {
                            "above"
                        } else {
                            "below"
                        },
                    ),
                ));
            }
            // The rungs of one problem are one ticket: they must agree on
            // what that ticket covers.
            if let Some(other) = self
                .checks
                .iter()
                .find(|o| o.problem() == c.problem() && o.ticket_per != c.ticket_per)
            {
                return Err(invalid(
                    &c.id,
                    format!(
                        "ticket_per \"{}\" differs from \"{}\" of {}, a rung of the same problem \"{}\"",
                        c.ticket_per.as_str(),
                        other.ticket_per.as_str(),
                        other.id,
                        c.problem()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A stable fingerprint of the policy text (FNV-1a, 64 bit).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_policy_is_valid() {
        let p = Policy::parse(DEFAULT, "default-policy.toml").unwrap();
        assert!(p.checks.iter().any(|c| c.id == "disk_nearly_full"));
        assert_eq!(p.version.len(), 16);
        assert_eq!(Policy::default_policy(), p);
    }

    #[test]
    fn mistakes_are_named() {
        let check = |text: &str| Policy::parse(text, "policy.toml").unwrap_err().to_string();
        let base = "[[check]]\nid = \"d\"\nmeasurement = \"disk.used_percent\"\ndirection = \"above\"\nseverity = \"warning\"\n";
        assert!(
            check(&format!("{base}raise = 90.0\nclear = 95.0\n"))
                .contains("policy.toml: check \"d\": clear (95) must be at or below raise (90)")
        );
        assert!(
            check(&format!("{base}raise = 90.0\nclear = 80.0\nhld = \"1m\"\n"))
                .contains("policy.toml:8: unknown field \"hld\"")
        );
        let text = base.replace("disk.used_percent", "disk.fullness");
        assert!(
            check(&format!("{text}raise = 90.0\nclear = 80.0\n"))
                .contains("unknown measurement \"disk.fullness\"")
        );
        assert!(
            check(&format!(
                "{base}raise = 9.0\nclear = 8.0\n{base}raise = 9.0\nclear = 8.0\n"
            ))
            .contains("check \"d\": defined twice")
        );
        assert!(
            check(&format!(
                "{base}raise = 9.0\nclear = 8.0\nticket_per = \"resolver\"\n"
            ))
            .contains("policy.toml:8: unknown variant \"resolver\"")
        );
        // Two rungs of one ladder that disagree on what a ticket covers.
        let rung = |id: &str, per: &str| {
            format!(
                "[[check]]\nid = \"{id}\"\nmeasurement = \"dns.failed\"\ndirection = \"above\"\n\
                 severity = \"warning\"\nraise = 1.0\nclear = 0.5\nticket_per = \"{per}\"\n"
            )
        };
        assert!(
            check(&format!("{}{}", rung("a", "via"), rung("b", "subject"))).contains(
                "check \"a\": ticket_per \"via\" differs from \"subject\" of b, a rung of the same problem \"dns.failed\""
            )
        );
        let p = Policy::parse(&format!("{}{}", rung("a", "via"), rung("b", "via")), "p").unwrap();
        assert_eq!(p.checks[1].ticket_per, TicketPer::Via);
    }

    #[test]
    fn ticket_rules_parse_and_are_checked() {
        let text = "[tickets]\nquiet_period = \"5m\"\nstorm_endpoints = 25\n\
                    [[tickets.criticality]]\nendpoints = \"DISPATCH-*\"\nlevel = \"critical\"\n\
                    [tickets.sla.p1]\nresponse = \"10m\"\nresolve = \"2h\"\n\
                    [[tickets.maintenance]]\nendpoints = \"LAB-*\"\nstart = \"2026-11-28T22:00:00Z\"\n\
                    end = \"2026-11-29T02:00:00Z\"\nreason = \"patching\"\n";
        let p = Policy::parse(text, "policy.toml").unwrap();
        let t = &p.tickets;
        assert_eq!(t.quiet_period, Duration::from_secs(300));
        assert_eq!(t.storm_endpoints, 25);
        assert_eq!(t.flap_cycles, 3, "defaults fill the rest");
        let m = |ep: &str| t.membership(ep, &[]);
        assert_eq!(
            t.criticality_of(&m("dispatch-07")),
            crate::ticket_rules::Criticality::Critical
        );
        assert_eq!(t.sla.p1.response, Duration::from_secs(600));
        let during = 1_795_906_000_000; // 2026-11-28T22:46:40Z
        assert!(t.maintenance_of(&m("lab-3"), during).is_some());
        assert!(
            t.maintenance_of(&m("lab-3"), during + 6 * 3_600_000)
                .is_none()
        );
        assert!(t.maintenance_of(&m("dispatch-07"), during).is_none());

        // Sites and tags by pattern or subnet; storms by what desks share.
        let text = "[[tickets.site]]\nname = \"city-hall\"\nendpoints = [\"ch-*\"]\n\
                    subnets = [\"10.1.0.0/16\"]\n\
                    [[tickets.tag]]\nname = \"public-safety\"\nendpoints = [\"disp-*\"]\n\
                    [[tickets.criticality]]\ntag = \"public-safety\"\nlevel = \"critical\"\n\
                    [[tickets.storm]]\nby = \"print_server\"\nendpoints = 5\nwindow = \"5m\"\n\
                    [[tickets.storm]]\nby = \"subnet\"\nendpoints = 8\nprefix = 24\n";
        let t = Policy::parse(text, "policy.toml").unwrap().tickets;
        let addr: std::net::IpAddr = "10.1.4.5".parse().unwrap();
        assert_eq!(t.membership("ws-9", &[addr]).sites, vec!["city-hall"]);
        assert!(t.membership("ws-9", &[]).sites.is_empty());
        assert_eq!(
            t.criticality_of(&t.membership("disp-2", &[])),
            crate::ticket_rules::Criticality::Critical
        );
        assert_eq!(t.storms.len(), 2);
        assert_eq!(t.storms[0].window, Duration::from_secs(300));
        assert!(t.needs_facts());

        let err = |text: &str| Policy::parse(text, "policy.toml").unwrap_err().to_string();
        assert!(
            err("[tickets]\nflap_cycles = 1\n")
                .contains("policy.toml: tickets.flap_cycles must be at least 2")
        );
        assert!(
            err("[tickets]\nquiet = \"5m\"\n").contains("policy.toml:2: unknown field \"quiet\"")
        );
        assert!(
            err("[[tickets.criticality]]\nendpoints = \"x\"\nlevel = \"vip\"\n")
                .contains("policy.toml:3: unknown variant \"vip\"")
        );
        assert!(
            err("[[tickets.maintenance]]\nendpoints = \"x\"\nstart = \"2026-11-29T02:00:00Z\"\nend = \"2026-11-28T02:00:00Z\"\n")
                .contains("end must be after start")
        );
        assert!(
            err("[[tickets.criticality]]\nsite = \"annex\"\nlevel = \"high\"\n")
                .contains("tickets.criticality: unknown site \"annex\"")
        );
        assert!(
            err("[[tickets.site]]\nname = \"a\"\nsubnets = [\"10.0.0.0/33\"]\n")
                .contains("policy.toml:3")
        );
        assert!(
            err("[[tickets.storm]]\nby = \"building\"\nendpoints = 3\n")
                .contains("policy.toml:2: unknown variant \"building\"")
        );
        assert!(
            err("[[tickets.storm]]\nby = \"site\"\nendpoints = 3\n")
                .contains("no [[tickets.site]] is defined")
        );
        assert!(
            err("[[tickets.storm]]\nby = \"dns_server\"\nendpoints = 3\nprefix = 24\n")
                .contains("prefix is for subnet storms")
        );
        assert!(
            err(
                "[[tickets.depends]]\ncause = [\"endpoint_offline\"]\nsymptoms = [\"dns_faling\"]\n"
            )
            .contains("policy.toml: tickets.depends #1: unknown check \"dns_faling\"")
        );
        assert!(
            err("[[tickets.depends]]\ncause = [\"a\"]\nsymptoms = [\"a\"]\n")
                .contains("tickets.depends #1: \"a\" cannot be its own symptom")
        );
        assert!(
            err("[[tickets.depends]]\ncause = [\"a\"]\nsymptom = [\"b\"]\n")
                .contains("policy.toml:3: unknown field \"symptom\"")
        );
        // Without the table, the shipped rule applies; the default policy's
        // checks are the ones it names.
        let shipped = Policy::default_policy();
        assert!(shipped.tickets.depends.is_none());
        let rules = shipped.tickets.dependencies();
        for id in rules.iter().flat_map(|d| d.cause.iter().chain(&d.symptoms)) {
            assert!(shipped.checks.iter().any(|c| &c.id == id), "{id}");
        }
    }

    #[test]
    fn hysteresis_in_both_directions() {
        let mut c = Policy::default_policy().checks[0].clone();
        c.direction = Direction::Above;
        c.raise = 95.0;
        c.clear = 90.0;
        assert!(c.raises(95.0) && !c.raises(94.9));
        assert!(c.clears(89.9) && !c.clears(92.0));
        c.direction = Direction::Below;
        c.raise = 10.0;
        c.clear = 20.0;
        assert!(c.raises(10.0) && !c.raises(11.0));
        assert!(c.clears(20.1) && !c.clears(15.0));
    }
}
