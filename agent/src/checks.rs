//! Checks: the collector's policy evaluated on every sample.
//!
//! Each (check, subject) pair has its own state. A value past the raise
//! level starts a hold; if it is still past when the hold has run, the fault
//! is raised. A raised fault clears only when the value is back past the
//! clear level (hysteresis), so a value hovering at the edge does not flap.
//! Events come out of [`Checks::evaluate`] at once, not at the next report.

use std::collections::HashMap;

use vitals_proto::domain::{FaultEvent, FaultState, PrinterInfo, Snapshot};
use vitals_proto::policy::{Check, Policy, probe_of};

/// One measured value of a subject, with what a specialist needs to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub measurement: &'static str,
    pub subject: String,
    pub value: f64,
    /// Context for the evidence (reasons, names, errors); may be empty.
    pub detail: String,
    /// What the subject is reached through (see `FaultEvent::via`).
    pub via: String,
}

fn m(measurement: &'static str, subject: impl Into<String>, value: f64) -> Measure {
    Measure {
        measurement,
        subject: subject.into(),
        value,
        detail: String::new(),
        via: String::new(),
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Everything a snapshot measures, per subject.
pub fn measurements(s: &Snapshot) -> Vec<Measure> {
    let mut out = Vec::new();
    if s.cpu.logical_cores > 0 {
        out.push(m(
            "cpu.usage_percent",
            "cpu",
            f64::from(s.cpu.usage_percent),
        ));
        if let Some((i, busiest)) = s
            .cpu
            .per_core_percent
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
        {
            let mut x = m("cpu.busiest_core_percent", "cpu", f64::from(*busiest));
            x.detail = format!("core {i}");
            out.push(x);
        }
    }
    if s.memory.total_bytes > 0 {
        out.push(m(
            "memory.used_percent",
            "memory",
            f64::from(s.memory.used_percent()),
        ));
    }
    if s.memory.swap_total_bytes > 0 {
        let swap = s.memory.swap_used_bytes as f64 * 100.0 / s.memory.swap_total_bytes as f64;
        out.push(m("swap.used_percent", "swap", swap));
    }
    for d in &s.disks {
        if d.total_bytes > 0 {
            out.push(m(
                "disk.used_percent",
                d.mount_point.clone(),
                f64::from(d.used_percent()),
            ));
        }
        if let Some(p) = d.inodes_used_percent() {
            out.push(m(
                "disk.inodes_used_percent",
                d.mount_point.clone(),
                f64::from(p),
            ));
        }
    }
    for t in &s.temperatures {
        let mut x = m("temperature.celsius", t.label.clone(), f64::from(t.celsius));
        if let Some(c) = t.critical_celsius {
            x.detail = format!("critical at {c:.0} °C");
        }
        out.push(x);
    }
    for b in &s.batteries {
        out.push(m(
            "battery.health_percent",
            b.name.clone(),
            f64::from(b.health_percent),
        ));
    }
    for d in s.smart.devices.iter().filter(|d| d.error.is_empty()) {
        let label = if d.model.is_empty() {
            d.device.clone()
        } else {
            format!("{} ({} {})", d.device, d.model, d.serial)
        };
        let mut push = |name: &'static str, v: Option<u64>| {
            if let Some(v) = v {
                let mut x = m(name, d.device.clone(), v as f64);
                x.detail = label.clone();
                out.push(x);
            }
        };
        push("smart.failing", d.passed.map(|p| u64::from(!p)));
        push("smart.reallocated_sectors", d.reallocated_sectors);
        push("smart.pending_sectors", d.pending_sectors);
        push("smart.media_errors", d.media_errors);
    }
    let os = &s.os;
    {
        let days = match (os.reboot_required, os.reboot_required_since_secs) {
            (false, _) => 0.0,
            (true, Some(since)) => {
                let now = (s.taken_at_ms / 1000).max(0) as u64;
                now.saturating_sub(since) as f64 / 86_400.0
            }
            (true, None) => 0.0,
        };
        let mut x = m("os.reboot_pending_days", "os", days);
        x.detail = os.reboot_reasons.join(", ");
        out.push(x);
    }
    if os.services_checked {
        let mut x = m("os.failed_services", "os", os.failed_services.len() as f64);
        x.detail = os.failed_services.join(", ");
        out.push(x);
    }
    if let Some(offset) = os.clock_offset_ms {
        let mut x = m(
            "os.clock_offset_seconds",
            "os",
            offset.unsigned_abs() as f64 / 1000.0,
        );
        x.detail = format!(
            "this clock is {:.1} s {} the collector's",
            offset.unsigned_abs() as f64 / 1000.0,
            if offset > 0 { "behind" } else { "ahead of" }
        );
        out.push(x);
    }
    for p in &s.printers {
        printer_measures(p, &mut out);
    }
    if let Some(g) = &s.network.gateway {
        let mut x = m(
            "gateway.loss_percent",
            g.address.clone(),
            f64::from(g.loss_percent),
        );
        x.detail = format!(
            "{} of {} {} probes answered via {}",
            g.received, g.sent, g.method, g.interface
        );
        out.push(x);
        if let Some(rtt) = g.rtt_ms {
            out.push(m("gateway.rtt_ms", g.address.clone(), f64::from(rtt)));
        }
    }
    // Every name is asked of the system resolver: one way in for all.
    let resolvers = if s.network.resolvers.is_empty() {
        String::new()
    } else {
        format!("resolver {}", s.network.resolvers.join(", "))
    };
    for d in &s.network.dns {
        let mut x = m("dns.failed", d.name.clone(), flag(!d.ok));
        x.via = resolvers.clone();
        x.detail = if d.ok {
            d.addresses.join(", ")
        } else {
            d.error.clone()
        };
        out.push(x);
        if d.ok {
            let mut x = m("dns.resolve_ms", d.name.clone(), f64::from(d.millis));
            x.via = resolvers.clone();
            out.push(x);
        }
    }
    for c in &s.network.services {
        let subject = format!("{} ({})", c.name, c.address);
        let mut x = m("service.unreachable", subject.clone(), flag(!c.ok));
        x.detail = c.error.clone();
        x.via = service_via(s, &c.address);
        out.push(x);
        if let Some(ms) = c.connect_ms {
            out.push(m("service.connect_ms", subject, f64::from(ms)));
        }
    }
    for i in &s.interfaces {
        out.push(m("interface.link_down", i.name.clone(), flag(i.link_lost)));
        if let (Some(e), Some(d)) = (i.errors_per_min, i.drops_per_min) {
            out.push(m(
                "interface.errors_per_min",
                i.name.clone(),
                f64::from(e + d),
            ));
        }
    }
    for w in &s.network.wifi {
        out.push(m(
            "wifi.signal_dbm",
            w.interface.clone(),
            f64::from(w.signal_dbm),
        ));
    }
    out
}

/// What a key service at `address` (host:port) is reached through: the
/// default gateway, unless the host is on one of this desk's own networks.
/// A name is taken to be behind the gateway, as most services are.
fn service_via(s: &Snapshot, address: &str) -> String {
    let Some(gateway) = &s.network.gateway else {
        return String::new();
    };
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let local = s
            .interfaces
            .iter()
            .flat_map(|i| &i.addresses)
            .filter_map(|a| a.parse::<ipnet::IpNet>().ok())
            .any(|net| net.contains(&ip));
        if local || ip.is_loopback() {
            return String::new();
        }
    }
    format!("gateway {}", gateway.address)
}

fn printer_measures(p: &PrinterInfo, out: &mut Vec<Measure>) {
    // Any severity suffix counts: printers report an empty toner as
    // "-report" as often as "-warning" or "-error", and it is empty all the same.
    let has = |prefix: &str| p.reasons.iter().any(|r| r.starts_with(prefix));
    let mut detail = vec![format!("state {}", p.state)];
    if !p.reasons.is_empty() {
        detail.push(format!("reasons {}", p.reasons.join(", ")));
    }
    if p.queued_jobs > 0 {
        detail.push(format!("{} queued jobs", p.queued_jobs));
    }
    if !p.error.is_empty() {
        detail.push(p.error.clone());
    }
    let detail = detail.join("; ");
    let mut push = |name: &'static str, v: f64| {
        let mut x = m(name, p.name.clone(), v);
        x.detail = detail.clone();
        out.push(x);
    };
    let unreachable = p.state == "unreachable";
    push("printer.offline", flag(unreachable || has("offline")));
    if unreachable {
        return;
    }
    push(
        "printer.stopped",
        flag(p.state == "stopped" || has("paused")),
    );
    push("printer.jammed", flag(has("media-jam")));
    push(
        "printer.media_empty",
        flag(has("media-empty") || has("media-needed")),
    );
    push(
        "printer.toner_empty",
        flag(has("toner-empty") || has("marker-supply-empty")),
    );
    push(
        "printer.toner_low",
        flag(has("toner-low") || has("marker-supply-low")),
    );
    push(
        "printer.door_open",
        flag(has("door-open") || has("cover-open")),
    );
    push("printer.service_requested", flag(has("service-requested")));
    push(
        "printer.oldest_job_minutes",
        p.oldest_job_age_secs.map_or(0.0, |s| s as f64 / 60.0),
    );
    // A waste container's level rises as it fills: it is not a supply
    // running out (where the printer does not say, its name tells).
    let consumed = |s: &&vitals_proto::domain::Supply| {
        s.kind != vitals_proto::domain::SupplyKind::Waste
            && !s.name.to_ascii_lowercase().contains("waste")
    };
    // The cartridge to order, where, and who says so.
    let by = if crate::probes::snmp::is_network(&p.source) || p.address.starts_with("ipp") {
        "the printer"
    } else {
        "the print queue"
    };
    let said = |supply: &vitals_proto::domain::Supply, level: f32| {
        format!(
            "{} on {} ({}) at {} %, reported by {by}; {detail}",
            supply.name,
            p.name,
            p.address,
            number(f64::from(level))
        )
    };
    let levels: Vec<(&vitals_proto::domain::Supply, f32)> = p
        .supplies
        .iter()
        .filter(consumed)
        .filter_map(|s| s.percent.map(|l| (s, l)))
        .collect();
    // Each supply on its own, reached through its printer: two cartridges
    // low are one printer's ticket listing both.
    for (supply, level) in &levels {
        let mut x = m(
            "printer.supply_percent",
            format!("{}: {}", p.name, supply.name),
            f64::from(*level),
        );
        x.detail = said(supply, *level);
        x.via = p.name.clone();
        out.push(x);
    }
    if let Some((supply, lowest)) = levels.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        let mut x = m(
            "printer.lowest_supply_percent",
            p.name.clone(),
            f64::from(*lowest),
        );
        x.detail = said(supply, *lowest);
        out.push(x);
    }
}

/// What a measured value says, in one sentence for people: what is wrong
/// and where ("Disk / is 97 % full."), with the context that is left over
/// (the printer's state and reasons) as a second part, or empty.
pub fn finding(x: &Measure) -> (String, String) {
    let s = &x.subject;
    let v = number(x.value);
    let d = x.detail.as_str();
    let via = |prefix: &str| {
        if x.via.is_empty() {
            String::new()
        } else {
            format!("{prefix}{}", x.via)
        }
    };
    let or = |d: &str, alt: &str| {
        if d.is_empty() {
            alt.to_owned()
        } else {
            d.to_owned()
        }
    };
    let yes = x.value >= 0.5;
    let mut rest = String::new();
    let sentence = match x.measurement {
        "cpu.usage_percent" => format!("The CPU is {v} % busy"),
        "cpu.busiest_core_percent" => {
            format!("The busiest CPU core ({}) is {v} % busy", or(d, "?"))
        }
        "memory.used_percent" => format!("Memory is {v} % in use"),
        "swap.used_percent" => format!("Swap is {v} % in use"),
        "disk.used_percent" => format!("Disk {s} is {v} % full"),
        "disk.inodes_used_percent" => format!("File system {s} has used {v} % of its inodes"),
        "temperature.celsius" if d.is_empty() => format!("{s} is at {v} °C"),
        "temperature.celsius" => format!("{s} is at {v} °C ({d})"),
        "battery.health_percent" => {
            format!("Battery {s} holds {v} % of its design capacity")
        }
        "smart.failing" if yes => format!("Disk {} fails its own SMART health check", or(d, s)),
        "smart.failing" => format!("Disk {} passes its own SMART health check", or(d, s)),
        "smart.reallocated_sectors" => format!("Disk {} has reallocated {v} sectors", or(d, s)),
        "smart.pending_sectors" => format!("Disk {} has {v} sectors it cannot read", or(d, s)),
        "smart.media_errors" => format!("Disk {} reports {v} media errors", or(d, s)),
        "os.reboot_pending_days" if d.is_empty() => {
            format!("A reboot has been pending for {v} days")
        }
        "os.reboot_pending_days" => format!("A reboot has been pending for {v} days ({d})"),
        "os.failed_services" if d.is_empty() => format!("{v} system services have failed"),
        "os.failed_services" => format!("{v} system services have failed: {d}"),
        "os.clock_offset_seconds" if d.is_empty() => {
            format!("The clock is {v} s out of step with the collector's")
        }
        "os.clock_offset_seconds" => format!("The clock is out of step: {d}"),
        "gateway.loss_percent" if d.is_empty() => {
            format!("The default gateway {s} lost {v} % of its probes")
        }
        "gateway.loss_percent" => format!("The default gateway {s} lost {v} % of its probes: {d}"),
        "gateway.rtt_ms" => format!("The default gateway {s} answers in {v} ms"),
        "dns.failed" if yes => format!(
            "{s} does not resolve{}: {}",
            via(" through "),
            or(d, "no answer")
        ),
        "dns.failed" => format!("{s} resolves{}", via(" through ")),
        "dns.resolve_ms" => format!("{s} takes {v} ms to resolve{}", via(" through ")),
        "service.unreachable" if yes => format!(
            "Key service {s} cannot be reached{}: {}",
            via(" behind "),
            or(d, "no connection")
        ),
        "service.unreachable" => format!("Key service {s} can be reached"),
        "service.connect_ms" => format!("Key service {s} takes {v} ms to connect"),
        "interface.link_down" if yes => format!("Network interface {s} has lost its link"),
        "interface.link_down" => format!("Network interface {s} has its link"),
        "interface.errors_per_min" => {
            format!("Network interface {s} has {v} errors and drops a minute")
        }
        "wifi.signal_dbm" => format!("The Wi-Fi signal on {s} is {v} dBm"),
        "printer.lowest_supply_percent" | "printer.supply_percent" => {
            // The detail says which cartridge, on which printer, who says
            // so; then the printer's state.
            match d.split_once("; ") {
                Some((what, state)) => {
                    rest = format!("Reported: {state}.");
                    what.to_owned()
                }
                None => d.to_owned(),
            }
        }
        m if m.starts_with("printer.") => {
            if !d.is_empty() {
                rest = format!("Reported: {d}.");
            }
            let what = match (m, yes) {
                ("printer.offline", true) => "is offline",
                ("printer.stopped", true) => "is stopped",
                ("printer.jammed", true) => "is jammed",
                ("printer.media_empty", true) => "is out of paper",
                ("printer.toner_empty", true) => "is out of toner or ink",
                ("printer.toner_low", true) => "is low on toner or ink",
                ("printer.door_open", true) => "has a cover or door open",
                ("printer.service_requested", true) => "asks for service",
                ("printer.oldest_job_minutes", _) => {
                    return (
                        format!("Printer {s} has had a job waiting for {v} minutes"),
                        rest,
                    );
                }
                _ => "is well",
            };
            format!("Printer {s} {what}")
        }
        other => {
            rest = d.to_owned();
            format!("{s}: {other} is {v}")
        }
    };
    (sentence, rest)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Past the raise level since this time (ms), waiting out the hold.
    Pending(i64),
    Raised,
}

#[derive(Debug)]
pub struct Checks {
    policy: Policy,
    state: HashMap<(String, String), State>,
}

impl Checks {
    pub fn new(policy: Policy) -> Self {
        Checks {
            policy,
            state: HashMap::new(),
        }
    }

    pub fn policy_version(&self) -> &str {
        &self.policy.version
    }

    /// Replaces the policy. Faults of checks that are gone, or whose levels
    /// changed, are cleared and judged afresh on the next sample.
    pub fn set_policy(&mut self, policy: Policy, now_ms: i64) -> Vec<FaultEvent> {
        let old = std::mem::replace(&mut self.policy, policy);
        let mut events = Vec::new();
        let keep = |id: &str| {
            let before = old.checks.iter().find(|c| c.id == id);
            let after = self.policy.checks.iter().find(|c| c.id == id);
            before.is_some() && before == after
        };
        let gone: Vec<(String, String)> = self
            .state
            .keys()
            .filter(|(id, _)| !keep(id))
            .cloned()
            .collect();
        for key in gone {
            if self.state.remove(&key) == Some(State::Raised)
                && let Some(check) = old.checks.iter().find(|c| c.id == key.0)
            {
                events.push(event(
                    check,
                    &key.1,
                    FaultState::Cleared,
                    0.0,
                    now_ms,
                    "the policy no longer holds this check as it was".into(),
                ));
            }
        }
        events
    }

    /// Judges one sample; returns the faults raised and cleared by it.
    pub fn evaluate(&mut self, snapshot: &Snapshot, now_ms: i64) -> Vec<FaultEvent> {
        self.judge(snapshot, now_ms, false)
    }

    /// A collector that may have lost what it acknowledged asks again:
    /// each fault held raised here goes out raised once more (with the
    /// current picture's evidence), and each of `believed` (what the
    /// collector holds raised) that is not raised here goes out cleared,
    /// checks the policy dropped too; the collector's own checks (such as
    /// `endpoint_offline`) are its to clear.
    pub fn resync(
        &mut self,
        snapshot: &Snapshot,
        believed: &[(String, String)],
        now_ms: i64,
    ) -> Vec<FaultEvent> {
        let raised: std::collections::HashSet<(String, String)> = self
            .state
            .iter()
            .filter(|(_, s)| **s == State::Raised)
            .map(|(k, _)| k.clone())
            .collect();
        let mut events: Vec<FaultEvent> = Checks::new(self.policy.clone())
            .judge(snapshot, now_ms, true)
            .into_iter()
            .filter(|e| {
                e.state == FaultState::Raised
                    && raised.contains(&(e.check_id.clone(), e.subject.clone()))
            })
            .collect();
        let mut keys: Vec<&(String, String)> = raised.iter().collect();
        keys.sort();
        for key in keys {
            let sent = events
                .iter()
                .any(|e| e.check_id == key.0 && e.subject == key.1);
            if let (false, Some(check)) = (sent, self.policy.checks.iter().find(|c| c.id == key.0))
            {
                events.push(event(
                    check,
                    &key.1,
                    FaultState::Raised,
                    0.0,
                    now_ms,
                    format!(
                        "{}: still raised on this desk (not measured just now)",
                        key.1
                    ),
                ));
            }
        }
        for key in believed {
            if raised.contains(key) {
                continue;
            }
            let builtin = vitals_proto::policy::BUILTIN_CHECKS
                .iter()
                .any(|(id, _)| *id == key.0);
            if builtin {
                continue;
            }
            // A check the policy dropped since is cleared as well.
            let severity = self
                .policy
                .checks
                .iter()
                .find(|c| c.id == key.0)
                .map_or(vitals_proto::domain::Severity::Info, |c| c.severity);
            events.push(FaultEvent {
                check_id: key.0.clone(),
                subject: key.1.clone(),
                state: FaultState::Cleared,
                severity,
                value: 0.0,
                evidence: format!("{}: not raised on this desk", key.1),
                at_ms: now_ms,
                via: String::new(),
            });
        }
        events
    }

    /// Judges one sample on its own, as if every hold had already run: the
    /// faults this policy would raise now.
    pub fn evaluate_once(policy: Policy, snapshot: &Snapshot) -> Vec<FaultEvent> {
        Checks::new(policy).judge(snapshot, snapshot.taken_at_ms, true)
    }

    fn judge(&mut self, snapshot: &Snapshot, now_ms: i64, ignore_hold: bool) -> Vec<FaultEvent> {
        let policy = &self.policy;
        let mut events = Vec::new();
        let mut measured = std::collections::HashSet::new();
        for x in measurements(snapshot) {
            let value = x.value;
            let (sentence, rest) = finding(&x);
            // The finding, the check's levels, then what is left of the
            // context: "Disk / is 97 % full (disk.used_percent raises at
            // 95, held 60s)."
            let with_detail = |levels: String| {
                if rest.is_empty() {
                    format!("{sentence} ({levels}).")
                } else {
                    format!("{sentence} ({levels}). {rest}")
                }
            };
            for check in policy
                .checks
                .iter()
                .filter(|c| c.measurement == x.measurement)
            {
                let key = (check.id.clone(), x.subject.clone());
                measured.insert(key.clone());
                let state = self.state.get(&key).copied();
                match state {
                    Some(State::Raised) => {
                        if check.clears(value) {
                            self.state.remove(&key);
                            events.push(measured_event(
                                check,
                                &x,
                                FaultState::Cleared,
                                now_ms,
                                with_detail(format!(
                                    "back past {}, where {} clears",
                                    number(check.clear),
                                    check.measurement
                                )),
                            ));
                        }
                    }
                    _ if !check.raises(value) => {
                        self.state.remove(&key);
                    }
                    pending => {
                        let since = match pending {
                            Some(State::Pending(t)) => t,
                            _ => now_ms,
                        };
                        let held = now_ms - since >= check.hold.as_millis() as i64;
                        if ignore_hold || held {
                            self.state.insert(key, State::Raised);
                            events.push(measured_event(
                                check,
                                &x,
                                FaultState::Raised,
                                now_ms,
                                with_detail(format!(
                                    "{} raises at {}, held {}s",
                                    check.measurement,
                                    number(check.raise),
                                    (now_ms - since) / 1000
                                )),
                            ));
                        } else {
                            self.state.insert(key, State::Pending(since));
                        }
                    }
                }
            }
        }
        // A subject no longer measured (a disk unplugged, a printer
        // removed) clears, but only if its probe ran cleanly: a failed or
        // hung probe says nothing about its subjects.
        let gone: Vec<(String, String)> = self
            .state
            .keys()
            .filter(|k| !measured.contains(*k))
            .filter(|(id, _)| {
                let probe = policy
                    .checks
                    .iter()
                    .find(|c| &c.id == id)
                    .and_then(|c| probe_of(&c.measurement));
                !snapshot
                    .probe_errors
                    .iter()
                    .any(|e| Some(e.probe.as_str()) == probe.map(|p| p.as_str()))
            })
            .cloned()
            .collect();
        for key in gone {
            if self.state.remove(&key) == Some(State::Raised)
                && let Some(check) = policy.checks.iter().find(|c| c.id == key.0)
            {
                events.push(event(
                    check,
                    &key.1,
                    FaultState::Cleared,
                    0.0,
                    now_ms,
                    format!("{}: no longer present", key.1),
                ));
            }
        }
        events
    }
}

/// A value as people read it: whole numbers without decimals.
fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn event(
    check: &Check,
    subject: &str,
    state: FaultState,
    value: f64,
    at_ms: i64,
    evidence: String,
) -> FaultEvent {
    FaultEvent {
        check_id: check.id.clone(),
        subject: subject.to_owned(),
        state,
        severity: check.severity,
        value,
        evidence,
        at_ms,
        via: String::new(),
    }
}

/// [`event`] for a measured subject, with what it is reached through.
fn measured_event(
    check: &Check,
    x: &Measure,
    state: FaultState,
    at_ms: i64,
    evidence: String,
) -> FaultEvent {
    FaultEvent {
        via: x.via.clone(),
        ..event(check, &x.subject, state, x.value, at_ms, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vitals_proto::domain::{DiskInfo, Severity};
    use vitals_proto::policy::Direction;

    fn policy(hold_secs: u64) -> Policy {
        Policy {
            version: "t".into(),
            checks: vec![Check {
                id: "disk_nearly_full".into(),
                title: String::new(),
                measurement: "disk.used_percent".into(),
                direction: Direction::Above,
                raise: 95.0,
                clear: 90.0,
                hold: Duration::from_secs(hold_secs),
                severity: Severity::Warning,
                ladder: None,
                ticket_per: Default::default(),
            }],
            tickets: Default::default(),
        }
    }

    fn disk(used_percent: u64) -> Snapshot {
        Snapshot {
            disks: vec![DiskInfo {
                mount_point: "/srv".into(),
                total_bytes: 100,
                available_bytes: 100 - used_percent,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A resync says again what is raised here, with today's evidence, and
    /// clears what the collector believes raised that is not; the
    /// collector's own checks and faults still in their hold are left be.
    #[test]
    fn a_resync_repeats_raised_faults_and_clears_what_the_collector_wrongly_holds() {
        let mut c = Checks::new(policy(0));
        assert_eq!(c.evaluate(&disk(97), 1000).len(), 1);
        let believed = vec![
            ("disk_nearly_full".to_owned(), "/home".to_owned()),
            ("endpoint_offline".to_owned(), String::new()),
            ("printer_jammed".to_owned(), "hall-a".to_owned()),
        ];
        let events = c.resync(&disk(98), &believed, 5000);
        let got: Vec<(&str, &str, FaultState)> = events
            .iter()
            .map(|e| (e.check_id.as_str(), e.subject.as_str(), e.state))
            .collect();
        assert_eq!(
            got,
            vec![
                ("disk_nearly_full", "/srv", FaultState::Raised),
                ("disk_nearly_full", "/home", FaultState::Cleared),
                ("printer_jammed", "hall-a", FaultState::Cleared),
            ]
        );
        assert_eq!(events[0].value, 98.0);
        assert_eq!(events[0].at_ms, 5000);
        // Nothing changed in the checks' own state: the next sample is quiet.
        assert!(c.evaluate(&disk(98), 6000).is_empty());
        // A fault still in its hold is not raised by a resync.
        let mut held = Checks::new(policy(60));
        assert!(held.evaluate(&disk(97), 1000).is_empty());
        assert!(held.resync(&disk(97), &[], 2000).is_empty());
    }

    /// Feeds (seconds, used %) samples; returns (second, state) of events.
    fn run(hold: u64, samples: &[(i64, u64)]) -> Vec<(i64, FaultState)> {
        let mut c = Checks::new(policy(hold));
        samples
            .iter()
            .flat_map(|(t, used)| {
                c.evaluate(&disk(*used), t * 1000)
                    .into_iter()
                    .map(move |e| (t, e))
            })
            .map(|(t, e)| (*t, e.state))
            .collect()
    }

    #[test]
    fn raise_after_hold_and_clear_with_hysteresis() {
        use FaultState::*;
        // (samples, expected events) table.
        // (hold seconds, samples as (second, used %), expected events)
        type Case<'a> = (u64, &'a [(i64, u64)], &'a [(i64, FaultState)]);
        let cases: &[Case] = &[
            // No hold: raised at once, cleared only below 90.
            (
                0,
                &[(0, 97), (1, 93), (2, 92), (3, 89)],
                &[(0, Raised), (3, Cleared)],
            ),
            // Hold 60 s: a short spike raises nothing.
            (60, &[(0, 97), (30, 97), (40, 80), (50, 97), (100, 97)], &[]),
            // Held long enough: raised when the hold has run.
            (
                60,
                &[(0, 97), (30, 97), (60, 96), (61, 97)],
                &[(60, Raised)],
            ),
            // Hovering at the edge does not flap.
            (
                0,
                &[(0, 95), (1, 94), (2, 95), (3, 91), (4, 96)],
                &[(0, Raised)],
            ),
            // Re-raised after a real clear.
            (
                0,
                &[(0, 99), (1, 50), (2, 99)],
                &[(0, Raised), (1, Cleared), (2, Raised)],
            ),
        ];
        for (hold, samples, expected) in cases {
            assert_eq!(
                &run(*hold, samples),
                expected,
                "hold {hold}, samples {samples:?}"
            );
        }
    }

    #[test]
    fn events_carry_value_subject_and_evidence() {
        let mut c = Checks::new(policy(0));
        let e = c.evaluate(&disk(97), 5_000).pop().unwrap();
        assert_eq!(e.check_id, "disk_nearly_full");
        assert_eq!(e.subject, "/srv");
        assert_eq!(e.value, 97.0);
        assert_eq!(e.at_ms, 5_000);
        assert_eq!(
            e.evidence,
            "Disk /srv is 97 % full (disk.used_percent raises at 95, held 0s)."
        );
        let back = c.evaluate(&disk(80), 9_000).pop().unwrap();
        assert_eq!(
            back.evidence,
            "Disk /srv is 80 % full (back past 90, where disk.used_percent clears)."
        );
    }

    #[test]
    fn once_ignores_hold_and_policy_change_clears() {
        let events = Checks::evaluate_once(policy(600), &disk(99));
        assert_eq!(events.len(), 1);
        let mut c = Checks::new(policy(0));
        assert_eq!(c.evaluate(&disk(99), 0).len(), 1);
        let mut changed = policy(0);
        changed.checks[0].raise = 99.5;
        let cleared = c.set_policy(changed, 10);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].state, FaultState::Cleared);
        // Judged afresh under the new levels: 99 no longer raises.
        assert!(c.evaluate(&disk(99), 20).is_empty());
    }

    fn printer(state: &str, reasons: &[&str]) -> Snapshot {
        Snapshot {
            printers: vec![PrinterInfo {
                name: "Dispatch".into(),
                source: "cups".into(),
                state: state.into(),
                reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The shipped policy's faults for a snapshot, as (check, subject).
    fn default_faults(s: &Snapshot) -> Vec<(String, String)> {
        let mut v: Vec<_> = Checks::evaluate_once(Policy::default_policy(), s)
            .into_iter()
            .filter(|e| e.state == FaultState::Raised)
            .map(|e| (e.check_id, e.subject))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn printer_reasons_map_to_the_default_checks() {
        let f = |state: &str, reasons: &[&str]| -> Vec<String> {
            default_faults(&printer(state, reasons))
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        };
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            ("idle", &[], &[]),
            ("stopped", &["paused"], &["printer_stopped"]),
            ("idle", &["media-jam-error"], &["printer_jammed"]),
            ("idle", &["media-empty-error"], &["printer_out_of_paper"]),
            ("idle", &["media-needed"], &["printer_out_of_paper"]),
            (
                "idle",
                &["marker-supply-empty-error"],
                &["printer_toner_empty"],
            ),
            ("idle", &["toner-low-warning"], &["printer_toner_low"]),
            // The suffix is the printer's own severity; the condition stands.
            ("idle", &["toner-empty-report"], &["printer_toner_empty"]),
            ("idle", &["cups-waiting-for-job-completed"], &[]),
            (
                "processing",
                &["service-requested"],
                &["printer_needs_service"],
            ),
            ("unreachable", &[], &["printer_offline"]),
            (
                "idle",
                &["media-jam", "door-open", "offline"],
                &["printer_door_open", "printer_jammed", "printer_offline"],
            ),
        ];
        for (state, reasons, expected) in cases {
            assert_eq!(&f(state, reasons), expected, "{state} {reasons:?}");
        }
    }

    #[test]
    fn each_supply_is_judged_on_its_own_through_its_printer() {
        use vitals_proto::domain::{Supply, SupplyKind};
        let mut s = printer("idle", &[]);
        let supply = |name: &str, percent: f32, kind| Supply {
            name: name.into(),
            percent: Some(percent),
            kind,
        };
        s.printers[0].address = "ipp://10.20.5.31/ipp/print".into();
        s.printers[0].supplies = vec![
            supply("Cyan Toner", 3.0, SupplyKind::Consumed),
            supply("Magenta Toner", 0.0, SupplyKind::Consumed),
            supply("Black Toner", 60.0, SupplyKind::Unknown),
            // Nearly empty waste is good news, and full of it is not toner.
            supply("Waste Toner Box", 1.0, SupplyKind::Waste),
            supply("waste ink pad", 2.0, SupplyKind::Unknown),
        ];
        let events = Checks::evaluate_once(Policy::default_policy(), &s);
        let mut got: Vec<(&str, &str, &str)> = events
            .iter()
            .map(|e| (e.check_id.as_str(), e.subject.as_str(), e.via.as_str()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "printer_supply_empty",
                    "Dispatch: Magenta Toner",
                    "Dispatch"
                ),
                ("printer_supply_low", "Dispatch: Cyan Toner", "Dispatch"),
                ("printer_supply_low", "Dispatch: Magenta Toner", "Dispatch"),
            ]
        );
        let cyan = events
            .iter()
            .find(|e| e.subject == "Dispatch: Cyan Toner")
            .unwrap();
        assert!(
            cyan.evidence.starts_with(
                "Cyan Toner on Dispatch (ipp://10.20.5.31/ipp/print) at 3 %, reported by the printer (printer.supply_percent raises at 10"
            ),
            "{}",
            cyan.evidence
        );
        assert!(
            cyan.evidence.ends_with("Reported: state idle."),
            "{}",
            cyan.evidence
        );
    }

    #[test]
    fn stuck_queue_and_supply_levels() {
        let mut s = printer("processing", &[]);
        s.printers[0].queued_jobs = 3;
        s.printers[0].oldest_job_age_secs = Some(45 * 60);
        assert_eq!(
            default_faults(&s),
            vec![("printer_queue_stuck".to_owned(), "Dispatch".to_owned())]
        );
        let e = Checks::evaluate_once(Policy::default_policy(), &s)
            .pop()
            .unwrap();
        assert!(e.evidence.contains("3 queued jobs"), "{}", e.evidence);
        s.printers[0].oldest_job_age_secs = Some(60);
        assert!(default_faults(&s).is_empty());
    }

    #[test]
    fn network_os_and_hardware_measurements_raise_the_default_checks() {
        use vitals_proto::domain::*;
        let s = Snapshot {
            taken_at_ms: 10 * 86_400_000,
            network: NetworkHealth {
                gateway: Some(Gateway {
                    address: "192.0.2.1".into(),
                    sent: 4,
                    received: 0,
                    loss_percent: 100.0,
                    ..Default::default()
                }),
                dns: vec![
                    DnsCheck {
                        name: "erp.city.example".into(),
                        ok: false,
                        error: "no answer within 2s".into(),
                        ..Default::default()
                    },
                    DnsCheck {
                        name: "files.city.example".into(),
                        ok: true,
                        millis: 3.0,
                        ..Default::default()
                    },
                ],
                services: vec![ServiceCheck {
                    name: "erp".into(),
                    address: "erp.city.example:443".into(),
                    ok: false,
                    ..Default::default()
                }],
                wifi: vec![WifiInfo {
                    interface: "wlan0".into(),
                    link_quality: 10.0,
                    signal_dbm: -85.0,
                }],
                resolvers: vec!["192.0.2.53".into()],
            },
            os: OsHealth {
                reboot_required: true,
                reboot_required_since_secs: Some(86_400),
                services_checked: true,
                failed_services: vec!["cups.service".into()],
                clock_offset_ms: Some(-300_000),
                ..Default::default()
            },
            smart: SmartReport {
                available: true,
                devices: vec![SmartDevice {
                    device: "/dev/sda".into(),
                    passed: Some(false),
                    pending_sectors: Some(16),
                    ..Default::default()
                }],
                ..Default::default()
            },
            temperatures: vec![Temperature {
                label: "Package id 0".into(),
                celsius: 97.0,
                ..Default::default()
            }],
            interfaces: vec![InterfaceInfo {
                name: "eth0".into(),
                oper_state: "down".into(),
                link_lost: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let checks: Vec<String> = default_faults(&s).into_iter().map(|(c, _)| c).collect();
        assert_eq!(
            checks,
            vec![
                "clock_skew",
                "dns_failing",
                "failed_services",
                "gateway_lossy",
                "gateway_unreachable",
                "link_down",
                "overheating",
                "reboot_pending",
                "service_unreachable",
                "smart_failing",
                "smart_pending_sectors",
                "wifi_weak",
            ]
        );
        // Each finding is one sentence saying what is wrong and where.
        let said: HashMap<String, String> = Checks::evaluate_once(Policy::default_policy(), &s)
            .into_iter()
            .map(|e| (e.check_id, e.evidence))
            .collect();
        let starts = |check: &str, text: &str| {
            assert!(said[check].starts_with(text), "{check}: {}", said[check]);
        };
        starts(
            "dns_failing",
            "erp.city.example does not resolve through resolver 192.0.2.53: no answer within 2s (",
        );
        starts(
            "service_unreachable",
            "Key service erp (erp.city.example:443) cannot be reached behind gateway 192.0.2.1: no connection (",
        );
        starts(
            "gateway_unreachable",
            "The default gateway 192.0.2.1 lost 100 % of its probes: 0 of 4  probes answered via  (",
        );
        starts(
            "smart_failing",
            "Disk /dev/sda fails its own SMART health check (",
        );
        starts("link_down", "Network interface eth0 has lost its link (");
        starts(
            "failed_services",
            "1 system services have failed: cups.service (",
        );
        starts("wifi_weak", "The Wi-Fi signal on wlan0 is -85 dBm (");
        for (check, text) in &said {
            assert!(text.ends_with('.'), "{check}: {text}");
        }
        // What each network subject is reached through.
        let via = |s: &Snapshot, check: &str| -> Vec<String> {
            Checks::evaluate_once(Policy::default_policy(), s)
                .into_iter()
                .filter(|e| e.check_id == check)
                .map(|e| e.via)
                .collect()
        };
        assert_eq!(via(&s, "dns_failing"), vec!["resolver 192.0.2.53"]);
        assert_eq!(via(&s, "service_unreachable"), vec!["gateway 192.0.2.1"]);
        assert_eq!(via(&s, "disk_nearly_full"), Vec::<String>::new());
        // A service on the desk's own network is not behind the gateway.
        let mut local = s.clone();
        local.network.services[0].address = "192.0.2.80:443".into();
        local.interfaces[0].addresses = vec!["192.0.2.10/24".into()];
        assert_eq!(via(&local, "service_unreachable"), vec![""]);
        local.network.services[0].address = "[2001:db8::80]:443".into();
        assert_eq!(
            via(&local, "service_unreachable"),
            vec!["gateway 192.0.2.1"]
        );
    }

    #[test]
    fn a_vanished_subject_clears_unless_its_probe_failed() {
        let mut c = Checks::new(policy(0));
        assert_eq!(c.evaluate(&disk(97), 0).len(), 1);
        // The system probe failed: the missing disk says nothing yet.
        let mut failed = Snapshot::default();
        failed.probe_errors.push(vitals_proto::domain::ProbeError {
            probe: "system".into(),
            message: "timed out after 5s; cancelled".into(),
        });
        assert!(c.evaluate(&failed, 1000).is_empty());
        // It ran cleanly and the disk is gone (unplugged): cleared.
        let gone = c.evaluate(&Snapshot::default(), 2000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].state, FaultState::Cleared);
        assert!(gone[0].evidence.contains("no longer present"));
    }
}
