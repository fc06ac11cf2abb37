//! What an agent may send, checked before anything is stored: no desk has
//! ten thousand disks, a percentage is a finite number from 0 to 100, a
//! snapshot is not taken in the year 9999, and no name runs to a megabyte.
//! A message past these bounds is refused whole (nothing of it is stored
//! for a specialist to mistake for real) with the first thing wrong in it.

use vitals_proto::wire;

/// Longest text field (names, states, evidence lines are far shorter).
pub const MAX_TEXT: usize = 4096;
/// Longest free-form report text: probe errors, fault evidence.
pub const MAX_REPORT: usize = 16 * 1024;
/// Most entries in any one list of a snapshot.
pub const MAX_LIST: usize = 256;
/// Most disks, interfaces, printers a desk reports.
pub const MAX_DEVICES: usize = 128;
/// How far ahead of the collector's clock an agent's clock may run.
pub const MAX_CLOCK_AHEAD_MS: i64 = 24 * 3600 * 1000;
/// A clock before 1970 is not a clock. One merely behind (a dead RTC
/// battery) is let through: the desk's clock check raises it, and old
/// records only leave sooner by retention; a clock ahead would keep them
/// for ever, so that is bounded.
const EARLIEST_MS: i64 = 0;

/// Why a message was refused: a metric label and the first fault found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfBounds {
    pub reason: &'static str,
    pub detail: String,
}

impl std::fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

struct Check {
    first: Option<OutOfBounds>,
}

impl Check {
    fn fail(&mut self, reason: &'static str, detail: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(OutOfBounds {
                reason,
                detail: detail(),
            });
        }
    }

    fn text(&mut self, field: &str, s: &str, max: usize) {
        if s.len() > max {
            self.fail("text_too_long", || {
                format!("{field} is {} bytes long (at most {max})", s.len())
            });
        }
    }

    fn texts(&mut self, field: &str, list: &[String]) {
        self.count(field, list.len(), MAX_LIST);
        for (i, s) in list.iter().enumerate().take(MAX_LIST) {
            self.text(&format!("{field}[{i}]"), s, MAX_TEXT);
        }
    }

    fn count(&mut self, field: &str, n: usize, max: usize) {
        if n > max {
            self.fail("too_many", || {
                format!("{field} has {n} entries (at most {max})")
            });
        }
    }

    /// A percentage; a hair over 100 (rounding in a platform's counters)
    /// passes.
    fn percent(&mut self, field: &str, v: f32) {
        if !v.is_finite() || !(0.0..=100.5).contains(&v) {
            self.fail("bad_number", || {
                format!("{field} is {v}, not a percentage from 0 to 100")
            });
        }
    }

    fn finite(&mut self, field: &str, v: f64) {
        if !v.is_finite() {
            self.fail("bad_number", || format!("{field} is {v}, not a number"));
        }
    }

    fn non_negative(&mut self, field: &str, v: f64) {
        self.finite(field, v);
        if v < 0.0 {
            self.fail("bad_number", || format!("{field} is {v}, below zero"));
        }
    }

    fn time(&mut self, field: &str, ms: i64, now_ms: i64) {
        if ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
            self.fail("bad_time", || {
                format!(
                    "{field} is {}, more than a day ahead of the collector's clock",
                    vitals_proto::rfc3339_seconds(ms)
                )
            });
        } else if ms < EARLIEST_MS {
            self.fail("bad_time", || format!("{field} is {ms} ms, before 1970"));
        }
    }

    fn done(self) -> Result<(), OutOfBounds> {
        match self.first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Checks a snapshot against the bounds; `now_ms` is the collector's clock.
pub fn snapshot(s: &wire::Snapshot, now_ms: i64) -> Result<(), OutOfBounds> {
    let mut c = Check { first: None };
    c.time("taken_at_ms", s.taken_at_ms, now_ms);
    if let Some(h) = &s.host {
        for (f, v) in [
            ("host.hostname", &h.hostname),
            ("host.os_name", &h.os_name),
            ("host.os_version", &h.os_version),
            ("host.kernel_version", &h.kernel_version),
            ("host.arch", &h.arch),
        ] {
            c.text(f, v, MAX_TEXT);
        }
    }
    if let Some(cpu) = &s.cpu {
        c.percent("cpu.usage_percent", cpu.usage_percent);
        c.text("cpu.brand", &cpu.brand, MAX_TEXT);
        c.count("cpu.per_core_percent", cpu.per_core_percent.len(), 4096);
        for (i, v) in cpu.per_core_percent.iter().enumerate().take(4096) {
            c.percent(&format!("cpu.per_core_percent[{i}]"), *v);
        }
        if let Some(l) = &cpu.load_average {
            c.non_negative("cpu.load.one", l.one);
            c.non_negative("cpu.load.five", l.five);
            c.non_negative("cpu.load.fifteen", l.fifteen);
        }
    }
    if let Some(m) = &s.memory
        && (m.used_bytes > m.total_bytes || m.swap_used_bytes > m.swap_total_bytes)
    {
        c.fail("bad_number", || {
            "memory: more used than there is in all".to_owned()
        });
    }
    c.count("disks", s.disks.len(), MAX_DEVICES);
    for (i, d) in s.disks.iter().enumerate().take(MAX_DEVICES) {
        let at = |f: &str| format!("disks[{i}].{f}");
        c.text(&at("name"), &d.name, MAX_TEXT);
        c.text(&at("mount_point"), &d.mount_point, MAX_TEXT);
        c.text(&at("file_system"), &d.file_system, MAX_TEXT);
        c.text(&at("kind"), &d.kind, MAX_TEXT);
        if d.available_bytes > d.total_bytes {
            c.fail("bad_number", || {
                format!("{}: more free than in all", at("available_bytes"))
            });
        }
    }
    c.count("interfaces", s.interfaces.len(), MAX_DEVICES);
    for (i, n) in s.interfaces.iter().enumerate().take(MAX_DEVICES) {
        let at = |f: &str| format!("interfaces[{i}].{f}");
        c.text(&at("name"), &n.name, MAX_TEXT);
        c.text(&at("mac"), &n.mac, MAX_TEXT);
        c.text(&at("oper_state"), &n.oper_state, MAX_TEXT);
        c.texts(&at("addresses"), &n.addresses);
        for (f, v) in [
            ("errors_per_min", n.errors_per_min),
            ("drops_per_min", n.drops_per_min),
        ] {
            if let Some(v) = v {
                c.non_negative(&at(f), v.into());
            }
        }
    }
    c.count("probe_errors", s.probe_errors.len(), MAX_LIST);
    for (i, e) in s.probe_errors.iter().enumerate().take(MAX_LIST) {
        c.text(&format!("probe_errors[{i}].probe"), &e.probe, MAX_TEXT);
        c.text(
            &format!("probe_errors[{i}].message"),
            &e.message,
            MAX_REPORT,
        );
    }
    c.count("temperatures", s.temperatures.len(), MAX_LIST);
    for (i, t) in s.temperatures.iter().enumerate().take(MAX_LIST) {
        c.text(&format!("temperatures[{i}].label"), &t.label, MAX_TEXT);
        for (f, v) in [
            ("celsius", Some(t.celsius)),
            ("max_celsius", t.max_celsius),
            ("critical_celsius", t.critical_celsius),
        ] {
            if let Some(v) = v {
                c.finite(&format!("temperatures[{i}].{f}"), v.into());
                if !(-273.15..=1000.0).contains(&v) {
                    c.fail("bad_number", || {
                        format!("temperatures[{i}].{f} is {v} °C, not a temperature a desk has")
                    });
                }
            }
        }
    }
    c.count("batteries", s.batteries.len(), MAX_DEVICES);
    for (i, b) in s.batteries.iter().enumerate().take(MAX_DEVICES) {
        c.text(&format!("batteries[{i}].name"), &b.name, MAX_TEXT);
        c.text(&format!("batteries[{i}].state"), &b.state, MAX_TEXT);
        c.percent(&format!("batteries[{i}].charge_percent"), b.charge_percent);
        // A new battery can hold more than its design capacity.
        let health = f64::from(b.health_percent);
        c.non_negative(&format!("batteries[{i}].health_percent"), health);
        if health > 200.0 {
            c.fail("bad_number", || {
                format!("batteries[{i}].health_percent is {health}, past 200")
            });
        }
    }
    if let Some(smart) = &s.smart {
        c.text("smart.reason", &smart.reason, MAX_REPORT);
        c.count("smart.devices", smart.devices.len(), MAX_DEVICES);
        for (i, d) in smart.devices.iter().enumerate().take(MAX_DEVICES) {
            let at = |f: &str| format!("smart.devices[{i}].{f}");
            for (f, v) in [
                ("device", &d.device),
                ("model", &d.model),
                ("serial", &d.serial),
                ("protocol", &d.protocol),
            ] {
                c.text(&at(f), v, MAX_TEXT);
            }
            c.text(&at("error"), &d.error, MAX_REPORT);
            if d.percentage_used.is_some_and(|p| p > 255) {
                c.fail("bad_number", || {
                    format!("{} is past 255", at("percentage_used"))
                });
            }
        }
    }
    if let Some(os) = &s.os {
        c.texts("os.reboot_reasons", &os.reboot_reasons);
        c.texts("os.failed_services", &os.failed_services);
        c.count("os.users", os.users.len(), MAX_LIST);
        for (i, u) in os.users.iter().enumerate().take(MAX_LIST) {
            c.text(&format!("os.users[{i}].user"), &u.user, MAX_TEXT);
            c.text(&format!("os.users[{i}].terminal"), &u.terminal, MAX_TEXT);
            c.text(&format!("os.users[{i}].host"), &u.host, MAX_TEXT);
        }
    }
    c.count("printers", s.printers.len(), MAX_DEVICES);
    for (i, p) in s.printers.iter().enumerate().take(MAX_DEVICES) {
        let at = |f: &str| format!("printers[{i}].{f}");
        for (f, v) in [
            ("name", &p.name),
            ("source", &p.source),
            ("address", &p.address),
            ("state", &p.state),
        ] {
            c.text(&at(f), v, MAX_TEXT);
        }
        c.text(&at("error"), &p.error, MAX_REPORT);
        c.texts(&at("reasons"), &p.reasons);
        c.count(&at("supplies"), p.supplies.len(), MAX_LIST);
        for (j, s) in p.supplies.iter().enumerate().take(MAX_LIST) {
            c.text(&format!("{}[{j}].name", at("supplies")), &s.name, MAX_TEXT);
            c.text(&format!("{}[{j}].kind", at("supplies")), &s.kind, MAX_TEXT);
            if let Some(v) = s.percent {
                c.percent(&format!("{}[{j}].percent", at("supplies")), v);
            }
        }
    }
    if let Some(n) = &s.network {
        if let Some(g) = &n.gateway {
            c.text("network.gateway.address", &g.address, MAX_TEXT);
            c.text("network.gateway.interface", &g.interface, MAX_TEXT);
            c.text("network.gateway.method", &g.method, MAX_TEXT);
            c.percent("network.gateway.loss_percent", g.loss_percent);
            if let Some(rtt) = g.rtt_ms {
                c.non_negative("network.gateway.rtt_ms", rtt.into());
            }
        }
        c.texts("network.resolvers", &n.resolvers);
        c.count("network.dns", n.dns.len(), MAX_LIST);
        for (i, d) in n.dns.iter().enumerate().take(MAX_LIST) {
            c.text(&format!("network.dns[{i}].name"), &d.name, MAX_TEXT);
            c.text(&format!("network.dns[{i}].error"), &d.error, MAX_REPORT);
            c.texts(&format!("network.dns[{i}].addresses"), &d.addresses);
            c.non_negative(&format!("network.dns[{i}].millis"), d.millis.into());
        }
        c.count("network.services", n.services.len(), MAX_LIST);
        for (i, s) in n.services.iter().enumerate().take(MAX_LIST) {
            c.text(&format!("network.services[{i}].name"), &s.name, MAX_TEXT);
            c.text(
                &format!("network.services[{i}].address"),
                &s.address,
                MAX_TEXT,
            );
            c.text(
                &format!("network.services[{i}].error"),
                &s.error,
                MAX_REPORT,
            );
            if let Some(ms) = s.connect_ms {
                c.non_negative(&format!("network.services[{i}].connect_ms"), ms.into());
            }
        }
        c.count("network.wifi", n.wifi.len(), MAX_DEVICES);
        for (i, w) in n.wifi.iter().enumerate().take(MAX_DEVICES) {
            c.text(
                &format!("network.wifi[{i}].interface"),
                &w.interface,
                MAX_TEXT,
            );
            c.finite(
                &format!("network.wifi[{i}].link_quality"),
                w.link_quality.into(),
            );
            c.finite(
                &format!("network.wifi[{i}].signal_dbm"),
                w.signal_dbm.into(),
            );
        }
    }
    c.done()
}

/// Checks a fault event against the bounds.
pub fn fault(f: &wire::FaultEvent, now_ms: i64) -> Result<(), OutOfBounds> {
    let mut c = Check { first: None };
    c.text("fault.check_id", &f.check_id, 128);
    c.text("fault.subject", &f.subject, MAX_TEXT);
    c.text("fault.via", &f.via, MAX_TEXT);
    c.text("fault.evidence", &f.evidence, MAX_REPORT);
    c.finite("fault.value", f.value);
    c.time("fault.at_ms", f.at_ms, now_ms);
    c.done()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn desk() -> wire::Snapshot {
        wire::Snapshot {
            taken_at_ms: NOW - 1000,
            cpu: Some(wire::CpuInfo {
                usage_percent: 12.5,
                per_core_percent: vec![10.0, 15.0],
                ..Default::default()
            }),
            disks: vec![wire::DiskInfo {
                name: "sda1".into(),
                mount_point: "/".into(),
                total_bytes: 100,
                available_bytes: 40,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_real_desk_passes() {
        assert_eq!(snapshot(&desk(), NOW), Ok(()));
    }

    #[test]
    fn absurd_values_are_refused_with_the_field_named() {
        type Spoil = Box<dyn Fn(&mut wire::Snapshot)>;
        let cases: Vec<(Spoil, &str, &str)> = vec![
            (
                Box::new(|s| s.disks = vec![s.disks[0].clone(); 10_000]),
                "too_many",
                "disks has 10000 entries",
            ),
            (
                Box::new(|s| s.disks[0].mount_point = "x".repeat(1 << 20)),
                "text_too_long",
                "disks[0].mount_point is 1048576 bytes",
            ),
            (
                Box::new(|s| s.cpu.as_mut().unwrap().usage_percent = f32::NAN),
                "bad_number",
                "cpu.usage_percent is NaN",
            ),
            (
                Box::new(|s| s.cpu.as_mut().unwrap().per_core_percent[1] = -3.0),
                "bad_number",
                "cpu.per_core_percent[1] is -3",
            ),
            (
                // 9999-12-31
                Box::new(|s| s.taken_at_ms = 253_402_214_400_000),
                "bad_time",
                "taken_at_ms is 9999-12-31",
            ),
            (Box::new(|s| s.taken_at_ms = -5), "bad_time", "before 1970"),
            (
                // Past what RFC 3339 can write: said as its end, no panic.
                Box::new(|s| s.taken_at_ms = i64::MAX),
                "bad_time",
                "taken_at_ms is 9999-12-31T23:59:59Z",
            ),
        ];
        for (spoil, reason, detail) in cases {
            let mut s = desk();
            spoil(&mut s);
            let e = snapshot(&s, NOW).expect_err(detail);
            assert_eq!(e.reason, reason, "{e}");
            assert!(
                e.detail.starts_with(detail) || e.detail.contains(detail),
                "{e}"
            );
        }
    }

    #[test]
    fn a_fault_with_a_nan_value_or_a_huge_evidence_is_refused() {
        let ok = wire::FaultEvent {
            check_id: "disk_nearly_full".into(),
            subject: "/".into(),
            value: 97.0,
            evidence: "97 % used".into(),
            at_ms: NOW,
            ..Default::default()
        };
        assert_eq!(fault(&ok, NOW), Ok(()));
        let nan = wire::FaultEvent {
            value: f64::NAN,
            ..ok.clone()
        };
        assert_eq!(fault(&nan, NOW).unwrap_err().reason, "bad_number");
        let long = wire::FaultEvent {
            evidence: "e".repeat(MAX_REPORT + 1),
            ..ok
        };
        assert_eq!(fault(&long, NOW).unwrap_err().reason, "text_too_long");
    }
}
