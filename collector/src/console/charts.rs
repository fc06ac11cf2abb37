//! History charts drawn on the server as SVG: one line over time, a grid,
//! labelled axes, and a text summary (latest, lowest, highest, average)
//! that stands in for the picture for screen readers and with images off.

use std::fmt::Write;

use vitals_proto::domain::HistoryEntry;

const W: f64 = 600.0;
const H: f64 = 160.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;
const RIGHT: f64 = 8.0;

/// One chart: the SVG and what it says in words.
pub struct Chart {
    pub title: &'static str,
    pub svg: String,
    pub summary: String,
}

/// What a chart plots from each stored snapshot; `None` where the
/// snapshot has no such reading.
pub struct Series {
    pub title: &'static str,
    pub unit: &'static str,
    /// Percentages are drawn 0–100; others from 0 to their highest value.
    pub percent: bool,
    pub value: fn(&HistoryEntry) -> Option<f64>,
}

/// The charts of the endpoint page.
pub const SERIES: &[Series] = &[
    Series {
        title: "CPU",
        unit: "%",
        percent: true,
        value: |h| Some(h.snapshot.cpu.usage_percent as f64),
    },
    Series {
        title: "Memory",
        unit: "%",
        percent: true,
        value: |h| Some(h.snapshot.memory.used_percent() as f64),
    },
    Series {
        title: "Fullest disk",
        unit: "%",
        percent: true,
        value: |h| (!h.snapshot.disks.is_empty()).then(|| h.snapshot.fullest_disk_percent() as f64),
    },
    Series {
        title: "Gateway latency",
        unit: " ms",
        percent: false,
        value: |h| {
            h.snapshot
                .network
                .gateway
                .as_ref()
                .and_then(|g| g.rtt_ms)
                .map(f64::from)
        },
    },
    Series {
        title: "Gateway loss",
        unit: "%",
        percent: true,
        value: |h| {
            h.snapshot
                .network
                .gateway
                .as_ref()
                .map(|g| g.loss_percent as f64)
        },
    },
    Series {
        title: "DNS lookup",
        unit: " ms",
        percent: false,
        value: |h| {
            let ok: Vec<f64> = h
                .snapshot
                .network
                .dns
                .iter()
                .filter(|d| d.ok)
                .map(|d| d.millis as f64)
                .collect();
            (!ok.is_empty()).then(|| ok.iter().sum::<f64>() / ok.len() as f64)
        },
    },
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn number(v: f64, unit: &str) -> String {
    if v >= 100.0 || unit == "%" {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// A tick value at or above `max` that reads well: 1, 2 or 5 times a
/// power of ten.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

/// Draws `series` over `history` between `from_ms` and `to_ms`.
pub fn draw(series: &Series, history: &[HistoryEntry], from_ms: i64, to_ms: i64) -> Chart {
    let points: Vec<(i64, f64)> = history
        .iter()
        .filter(|h| h.snapshot.taken_at_ms >= from_ms && h.snapshot.taken_at_ms <= to_ms)
        .filter_map(|h| {
            (series.value)(h)
                .filter(|v| v.is_finite())
                .map(|v| (h.snapshot.taken_at_ms, v))
        })
        .collect();
    let title = series.title;
    if points.is_empty() {
        return Chart {
            title,
            svg: String::new(),
            summary: format!("{title}: no readings in this period."),
        };
    }
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let avg = values.iter().sum::<f64>() / values.len() as f64;
    let latest = points.last().map(|p| p.1).unwrap_or_default();
    let unit = series.unit;
    let summary = format!(
        "{title}: latest {}, lowest {}, highest {}, average {} over {} readings.",
        number(latest, unit),
        number(lo, unit),
        number(hi, unit),
        number(avg, unit),
        points.len()
    );
    let top = if series.percent {
        100.0
    } else {
        nice_ceiling(hi)
    };
    // From the first reading in the period: a desk that joined an hour
    // ago gets an hour across the chart, not a sliver at its right edge.
    let from_ms = points.first().map_or(from_ms, |p| p.0.max(from_ms));
    let span = (to_ms - from_ms).max(1) as f64;
    let x = |t: i64| LEFT + (t - from_ms) as f64 / span * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v / top).clamp(0.0, 1.0)) * (H - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        esc(&summary),
        esc(title)
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let yy = y(v);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\"/>\
             <text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            yy + 4.0,
            esc(&number(v, unit))
        );
    }
    for (t, anchor) in [(from_ms, "start"), (to_ms, "end")] {
        let label = vitals_proto::rfc3339_seconds(t);
        let label = label.get(5..16).unwrap_or(&label).replace('T', " ");
        let _ = write!(
            svg,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            x(t),
            H - 6.0,
            esc(&label)
        );
    }
    svg.push_str("<polyline class=\"line\" points=\"");
    for (t, v) in &points {
        let _ = write!(svg, "{:.1},{:.1} ", x(*t), y(*v));
    }
    svg.push_str("\"/>");
    if let Some((t, v)) = points.last() {
        let _ = write!(
            svg,
            "<circle class=\"dot\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"/>",
            x(*t),
            y(*v)
        );
    }
    svg.push_str("</svg>");
    Chart {
        title,
        svg,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_proto::domain::Snapshot;

    fn entry(at: i64, cpu: f32) -> HistoryEntry {
        let mut snapshot = Snapshot {
            taken_at_ms: at,
            ..Default::default()
        };
        snapshot.cpu.usage_percent = cpu;
        HistoryEntry {
            seq: at as u64,
            received_at_ms: at,
            snapshot,
        }
    }

    #[test]
    fn a_chart_plots_the_period_and_says_it_in_words() {
        let h = vec![
            entry(500, 90.0),
            entry(1000, 10.0),
            entry(2000, 30.0),
            entry(3000, 20.0),
        ];
        let c = draw(&SERIES[0], &h, 1000, 3000);
        assert_eq!(
            c.summary,
            "CPU: latest 20%, lowest 10%, highest 30%, average 20% over 3 readings."
        );
        // Three points, the first at the left edge and 10% near the bottom.
        let line = c.svg.split("points=\"").nth(1).unwrap();
        let pts: Vec<&str> = line.split('"').next().unwrap().split_whitespace().collect();
        assert_eq!(pts.len(), 3);
        assert!(pts[0].starts_with("44.0,"), "{pts:?}");
        assert!(c.svg.contains("aria-label=\"CPU: latest 20%"));
        let none = draw(&SERIES[3], &h, 1000, 3000);
        assert!(none.svg.is_empty());
        assert_eq!(none.summary, "Gateway latency: no readings in this period.");
    }

    #[test]
    fn scales_end_on_round_numbers() {
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(17.0), 20.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
