//! A snapshot as a specialist reads it: plain text, one section per probe,
//! problems first where they matter. Shared by `vitals-agent once` and
//! `vitalsctl endpoints show`, so both say the same thing the same way.

use std::fmt::Write;

use crate::domain::Snapshot;

/// Lays rows out in columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// "12s ago", "3h ago", or "never".
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = ((now_ms - ms).max(0) / 1000) as u64;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn duration(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Every probe's findings in `s`, as text.
pub fn snapshot_text(s: &Snapshot, now_ms: i64) -> String {
    snapshot_sections(s, now_ms)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

/// The findings in `s` by area ("System", "Hardware", "Printers",
/// "Network", "Problems"), each as text; areas with nothing to say are
/// left out. [`snapshot_text`] is these in order.
pub fn snapshot_sections(s: &Snapshot, now_ms: i64) -> Vec<(&'static str, String)> {
    let mut system = String::new();
    let h = &s.host;
    let _ = writeln!(system, "Host       {}", h.hostname);
    let _ = writeln!(
        system,
        "OS         {} {} (kernel {}, {})",
        h.os_name, h.os_version, h.kernel_version, h.arch
    );
    let _ = writeln!(system, "Uptime     {}", duration(h.uptime_secs));
    os_lines(s, now_ms, &mut system);

    let mut hw = String::new();
    let c = &s.cpu;
    let load = c
        .load_average
        .map(|l| format!(", load {:.2} {:.2} {:.2}", l.one, l.five, l.fifteen))
        .unwrap_or_default();
    let busiest = c
        .per_core_percent
        .iter()
        .copied()
        .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v))))
        .map(|b| format!(", busiest core {b:.0}%"))
        .unwrap_or_default();
    let _ = writeln!(
        hw,
        "CPU        {:.1}% of {} cores{busiest}{load}  {}",
        c.usage_percent, c.logical_cores, c.brand
    );
    let m = &s.memory;
    let _ = writeln!(
        hw,
        "Memory     {:.1} of {:.1} GiB used ({:.0}%), swap {:.1} of {:.1} GiB",
        gib(m.used_bytes),
        gib(m.total_bytes),
        m.used_percent(),
        gib(m.swap_used_bytes),
        gib(m.swap_total_bytes)
    );
    hardware_lines(s, &mut hw);
    if !s.disks.is_empty() {
        let rows: Vec<Vec<String>> = s
            .disks
            .iter()
            .map(|x| {
                vec![
                    x.mount_point.clone(),
                    x.file_system.clone(),
                    format!("{:.1} GiB", gib(x.total_bytes)),
                    format!("{:.1} GiB", gib(x.available_bytes)),
                    format!("{:.0}%", x.used_percent()),
                    x.inodes_used_percent()
                        .map(|p| format!("{p:.0}%"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let _ = write!(
            hw,
            "\n{}",
            table(&["MOUNT", "FS", "SIZE", "FREE", "USED", "INODES"], &rows)
        );
    }
    let mut problems = String::new();
    for e in &s.probe_errors {
        let _ = writeln!(problems, "Problem    {}: {}", e.probe, e.message);
    }
    let mut p = String::new();
    printers(s, &mut p);
    [
        ("System", system),
        ("Hardware", hw),
        ("Printers", p),
        ("Network", network_text(s)),
        ("Problems", problems),
    ]
    .into_iter()
    .filter(|(_, t)| !t.is_empty())
    .collect()
}

/// The network part of `s` (interfaces, gateway, DNS, services, Wi-Fi).
pub fn network_text(s: &Snapshot) -> String {
    let mut out = String::new();
    network(s, &mut out);
    out
}

/// The printers in `s`, or a line saying there are none.
pub fn printers_text(s: &Snapshot) -> String {
    let mut out = String::new();
    printers(s, &mut out);
    if out.is_empty() {
        out.push_str("No printers.\n");
    }
    out
}

/// The OS health part of `s`.
pub fn os_text(s: &Snapshot, now_ms: i64) -> String {
    let mut out = String::new();
    let h = &s.host;
    if !h.os_name.is_empty() {
        let _ = writeln!(out, "OS         {} {}", h.os_name, h.os_version);
    }
    os_lines(s, now_ms, &mut out);
    out
}

fn os_lines(s: &Snapshot, now_ms: i64, out: &mut String) {
    let os = &s.os;
    if os.reboot_required {
        let since = os
            .reboot_required_since_secs
            .map(|t| format!(" since {}", ago(t as i64 * 1000, now_ms)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Reboot     pending{since} ({})",
            os.reboot_reasons.join(", ")
        );
    }
    if os.services_checked {
        let text = if os.failed_services.is_empty() {
            "none failed".to_owned()
        } else {
            format!("FAILED: {}", os.failed_services.join(", "))
        };
        let _ = writeln!(out, "Services   {text}");
    }
    if !os.users.is_empty() {
        let users: Vec<String> = os
            .users
            .iter()
            .map(|u| {
                if u.host.is_empty() {
                    format!("{} on {}", u.user, u.terminal)
                } else {
                    format!("{} on {} from {}", u.user, u.terminal, u.host)
                }
            })
            .collect();
        let _ = writeln!(out, "Users      {}", users.join(", "));
    }
    if let Some(offset) = os.clock_offset_ms {
        let _ = writeln!(
            out,
            "Clock      {:.1} s {} the collector",
            offset.unsigned_abs() as f64 / 1000.0,
            if offset > 0 { "behind" } else { "ahead of" }
        );
    }
}

fn hardware_lines(s: &Snapshot, out: &mut String) {
    for t in &s.temperatures {
        let crit = t
            .critical_celsius
            .map(|c| format!(" (critical {c:.0} °C)"))
            .unwrap_or_default();
        let _ = writeln!(out, "Sensor     {} {:.0} °C{crit}", t.label, t.celsius);
    }
    for b in &s.batteries {
        let cycles = b
            .cycle_count
            .map(|c| format!(", {c} cycles"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Battery    {} {:.0}% {}, health {:.0}%{cycles}",
            b.name, b.charge_percent, b.state, b.health_percent
        );
    }
    if !s.smart.available {
        if !s.smart.reason.is_empty() {
            let _ = writeln!(out, "SMART      unavailable: {}", s.smart.reason);
        }
        return;
    }
    for d in &s.smart.devices {
        let verdict = match (d.passed, d.error.is_empty()) {
            (_, false) => format!("unreadable: {}", d.error),
            (Some(true), _) => "PASSED".into(),
            (Some(false), _) => "FAILING".into(),
            (None, _) => "no verdict".into(),
        };
        let mut extra = Vec::new();
        if let Some(r) = d.reallocated_sectors.filter(|r| *r > 0) {
            extra.push(format!("{r} reallocated"));
        }
        if let Some(p) = d.pending_sectors.filter(|p| *p > 0) {
            extra.push(format!("{p} pending"));
        }
        if let Some(u) = d.percentage_used {
            extra.push(format!("{u}% worn"));
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", extra.join(", "))
        };
        let _ = writeln!(out, "SMART      {} {} {verdict}{extra}", d.device, d.model);
    }
}

fn printers(s: &Snapshot, out: &mut String) {
    if s.printers.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = s
        .printers
        .iter()
        .map(|p| {
            let supplies: Vec<String> = p
                .supplies
                .iter()
                .filter_map(|x| x.percent.map(|v| format!("{} {v:.0}%", x.name)))
                .collect();
            let mut reasons = p.reasons.join(" ");
            if !p.error.is_empty() {
                reasons = p.error.clone();
            }
            vec![
                p.name.clone(),
                p.source.clone(),
                p.state.clone(),
                if reasons.is_empty() {
                    "-".into()
                } else {
                    reasons
                },
                p.queued_jobs.to_string(),
                p.oldest_job_age_secs
                    .map(duration)
                    .unwrap_or_else(|| "-".into()),
                supplies.join(", "),
            ]
        })
        .collect();
    let _ = write!(
        out,
        "\n{}",
        table(
            &[
                "PRINTER", "SOURCE", "STATE", "REASONS", "JOBS", "OLDEST", "SUPPLIES"
            ],
            &rows
        )
    );
}

fn network(s: &Snapshot, out: &mut String) {
    if !s.interfaces.is_empty() {
        let rows: Vec<Vec<String>> = s
            .interfaces
            .iter()
            .map(|i| {
                let state = if i.link_lost {
                    "LINK LOST".to_owned()
                } else {
                    i.oper_state.clone()
                };
                vec![
                    i.name.clone(),
                    state,
                    i.addresses.join(" "),
                    format!("{}/{}", i.rx_errors, i.tx_errors),
                    format!("{}/{}", i.rx_dropped, i.tx_dropped),
                ]
            })
            .collect();
        let _ = write!(
            out,
            "\n{}",
            table(
                &[
                    "INTERFACE",
                    "STATE",
                    "ADDRESSES",
                    "ERRORS RX/TX",
                    "DROPS RX/TX"
                ],
                &rows
            )
        );
    }
    let n = &s.network;
    let mut rows: Vec<Vec<String>> = Vec::new();
    if let Some(g) = &n.gateway {
        rows.push(vec![
            "gateway".into(),
            format!("{} via {}", g.address, g.interface),
            format!(
                "{}/{} answered, {:.0}% lost",
                g.received, g.sent, g.loss_percent
            ),
            g.rtt_ms
                .map(|r| format!("{r:.1} ms ({})", g.method))
                .unwrap_or_else(|| g.method.clone()),
        ]);
    }
    if !n.resolvers.is_empty() {
        rows.push(vec![
            "resolvers".into(),
            n.resolvers.join(" "),
            String::new(),
            String::new(),
        ]);
    }
    for d in &n.dns {
        rows.push(vec![
            "dns".into(),
            d.name.clone(),
            if d.ok {
                d.addresses.join(" ")
            } else {
                format!("FAILED: {}", d.error)
            },
            format!("{:.0} ms", d.millis),
        ]);
    }
    for c in &n.services {
        rows.push(vec![
            "service".into(),
            format!("{} {}", c.name, c.address),
            if c.ok {
                "reachable".into()
            } else {
                format!("FAILED: {}", c.error)
            },
            c.connect_ms
                .map(|m| format!("{m:.1} ms"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    for w in &n.wifi {
        rows.push(vec![
            "wifi".into(),
            w.interface.clone(),
            format!("quality {:.0}", w.link_quality),
            format!("{:.0} dBm", w.signal_dbm),
        ]);
    }
    if !rows.is_empty() {
        let _ = write!(
            out,
            "\n{}",
            table(&["CHECK", "TARGET", "RESULT", "TIME"], &rows)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "LONG"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
    }

    #[test]
    fn ago_reads_naturally() {
        assert_eq!(ago(0, 10), "never");
        assert_eq!(ago(1_000, 6_000), "5s ago");
        assert_eq!(ago(1_000, 1_000 + 7_200_000), "2h ago");
    }

    #[test]
    fn the_report_names_every_problem() {
        let s = Snapshot {
            os: OsHealth {
                reboot_required: true,
                reboot_reasons: vec!["libc6".into()],
                services_checked: true,
                failed_services: vec!["cups.service".into()],
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
            printers: vec![PrinterInfo {
                name: "Frontdesk".into(),
                source: "cups".into(),
                state: "stopped".into(),
                reasons: vec!["media-jam-error".into()],
                queued_jobs: 2,
                oldest_job_age_secs: Some(3600),
                supplies: vec![Supply {
                    name: "Black".into(),
                    percent: Some(5.0),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            network: NetworkHealth {
                dns: vec![DnsCheck {
                    name: "erp.city.test".into(),
                    ok: false,
                    error: "no answer within 2s".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            probe_errors: vec![ProbeError {
                probe: "sensors".into(),
                message: "timed out after 10s; cancelled".into(),
            }],
            ..Default::default()
        };
        let text = snapshot_text(&s, 0);
        for needle in [
            "Reboot     pending (libc6)",
            "FAILED: cups.service",
            "/dev/sda  FAILING (16 pending)",
            "Frontdesk  cups    stopped  media-jam-error  2     60m     Black 5%",
            "FAILED: no answer within 2s",
            "Problem    sensors: timed out after 10s; cancelled",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
