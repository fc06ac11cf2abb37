//! Network printers named in `agent.toml`, read over SNMP v2c: the Host
//! Resources printer status and error bits, supply levels and the page
//! counter from the Printer MIB. A printer set to `protocol = "ipp"` is
//! asked over IPP instead (its own Get-Printer-Attributes, as for a
//! driverless CUPS queue), and `auto` tries IPP first and falls back to
//! SNMP. Requests are bounded in time; a printer that does not answer is a
//! finding ("unreachable"), never a crash.

use std::time::Duration;

use async_snmp::{Auth, Client, Oid, Retry, Value, VarBind};
use vitals_proto::domain::{PrinterInfo, ProbeKind, Supply, SupplyKind};

use super::{Probe, Reading, Section};
use crate::config::NetworkPrinter;

pub const SOURCE: &str = "snmp";
/// The source of a network printer read over IPP.
pub const IPP_SOURCE: &str = "ipp";

/// Whether a printer came from this probe rather than a local queue.
pub fn is_network(source: &str) -> bool {
    source == SOURCE || source == IPP_SOURCE
}

/// hrPrinterTable: hrPrinterStatus is column 1, hrPrinterDetectedErrorState 2.
const HR_PRINTER: &[u32] = &[1, 3, 6, 1, 2, 1, 25, 3, 5, 1];
/// prtMarkerSuppliesTable: class 4, description 6, max capacity 8, level 9.
const SUPPLIES: &[u32] = &[1, 3, 6, 1, 2, 1, 43, 11, 1, 1];
/// prtMarkerLifeCount: pages (or other units) marked over the printer's life.
const LIFE_COUNT: &[u32] = &[1, 3, 6, 1, 2, 1, 43, 10, 2, 1, 4];

/// hrPrinterDetectedErrorState bits, most significant bit of the first
/// octet first, with the IPP reason keyword each maps to.
const ERROR_BITS: &[&str] = &[
    "media-low",
    "media-empty",
    "toner-low",
    "toner-empty",
    "door-open",
    "media-jam",
    "offline",
    "service-requested",
    "input-tray-missing",
    "output-tray-missing",
    "marker-supply-missing",
    "output-area-almost-full",
    "output-area-full",
    "input-tray-empty",
    "overdue-preventive-maintenance",
];

pub struct SnmpProbe {
    printers: Vec<NetworkPrinter>,
    timeout: Duration,
}

impl SnmpProbe {
    pub fn new(printers: Vec<NetworkPrinter>) -> Self {
        SnmpProbe {
            printers,
            timeout: Duration::from_secs(2),
        }
    }
}

#[async_trait::async_trait]
impl Probe for SnmpProbe {
    fn kind(&self) -> ProbeKind {
        ProbeKind::NetworkPrinters
    }

    async fn run(&mut self) -> Reading {
        let mut set = tokio::task::JoinSet::new();
        for (i, p) in self.printers.iter().cloned().enumerate() {
            let timeout = self.timeout;
            set.spawn(async move { (i, read(&p, timeout).await) });
        }
        let mut out: Vec<(usize, PrinterInfo)> = Vec::new();
        while let Some(Ok(done)) = set.join_next().await {
            out.push(done);
        }
        out.sort_by_key(|(i, _)| *i);
        Reading::ok(Section::NetworkPrinters(
            out.into_iter().map(|(_, p)| p).collect(),
        ))
    }
}

/// One network printer, by the protocol its settings name.
async fn read(p: &NetworkPrinter, timeout: Duration) -> PrinterInfo {
    use crate::config::PrinterProtocol;
    let over_ipp = || async {
        let uri = p.ipp_uri();
        super::cups::ask_device(&uri)
            .await
            .map(|d| ipp_finding(p, &uri, d))
    };
    match p.protocol {
        PrinterProtocol::Snmp => finding(p, read_printer(p, timeout).await),
        PrinterProtocol::Ipp => over_ipp().await.unwrap_or_else(|error| PrinterInfo {
            name: p.name.clone(),
            source: IPP_SOURCE.into(),
            address: p.ipp_uri(),
            state: "unreachable".into(),
            error,
            ..Default::default()
        }),
        PrinterProtocol::Auto => match over_ipp().await {
            Ok(found) => found,
            Err(why) => {
                let mut found = finding(p, read_printer(p, timeout).await);
                if found.state == "unreachable" {
                    found.error = format!("IPP: {why}; SNMP: {}", found.error);
                }
                found
            }
        },
    }
}

/// A network printer as it describes itself over IPP.
fn ipp_finding(p: &NetworkPrinter, uri: &str, d: super::cups::DeviceStatus) -> PrinterInfo {
    PrinterInfo {
        name: p.name.clone(),
        source: IPP_SOURCE.into(),
        address: uri.to_owned(),
        state: d.state.unwrap_or("unknown").into(),
        reasons: d.reasons,
        accepting_jobs: true,
        supplies: d.supplies,
        ..Default::default()
    }
}

fn finding(p: &NetworkPrinter, read: Result<Vec<VarBind>, String>) -> PrinterInfo {
    match read {
        Ok(varbinds) => parse_printer(&p.name, &p.address, &varbinds),
        Err(error) => PrinterInfo {
            name: p.name.clone(),
            source: SOURCE.into(),
            address: p.address.clone(),
            state: "unreachable".into(),
            error,
            ..Default::default()
        },
    }
}

async fn read_printer(p: &NetworkPrinter, timeout: Duration) -> Result<Vec<VarBind>, String> {
    let target = if p.address.contains(':') && !p.address.starts_with('[') {
        p.address.clone()
    } else if p.address.ends_with(']') || !p.address.contains(':') {
        format!("{}:161", p.address)
    } else {
        p.address.clone()
    };
    let client = Client::builder(target.as_str(), Auth::v2c(p.community.as_str()))
        .request_timeout(timeout)
        .retry(Retry::none())
        .connect()
        .await
        .map_err(|e| format!("{}: {e}", p.address))?;
    let mut all = Vec::new();
    for root in [HR_PRINTER, SUPPLIES, LIFE_COUNT] {
        let walk = client
            .walk(Oid::from_slice(root))
            .map_err(|e| format!("{}: {e}", p.address))?;
        let got = walk
            .collect()
            .await
            .map_err(|e| format!("{}: no answer: {e}", p.address))?;
        all.extend(got);
    }
    Ok(all)
}

/// A network printer's finding from the varbinds of the three walks.
pub fn parse_printer(name: &str, address: &str, varbinds: &[VarBind]) -> PrinterInfo {
    let column = |root: &'static [u32], col: u32| column(varbinds, root, col);
    let status = column(HR_PRINTER, 1).find_map(|(_, v)| v.as_i32());
    let bits = column(HR_PRINTER, 2)
        .find_map(|(_, v)| v.as_bytes().map(<[u8]>::to_vec))
        .unwrap_or_default();
    let mut reasons: Vec<String> = ERROR_BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0))
        .map(|(_, r)| (*r).to_owned())
        .collect();
    let state = match status {
        Some(3) => "idle",
        Some(4) | Some(5) => "processing",
        Some(1) => "other",
        _ => "unknown",
    };
    if status.is_none() && bits.is_empty() {
        reasons.push("no-printer-mib".into());
    }
    let descriptions: Vec<(Vec<u32>, String)> = column(SUPPLIES, 6)
        .map(|(idx, v)| {
            let text = v
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
                .unwrap_or_default();
            (idx, text)
        })
        .collect();
    let value_at = |col: u32, idx: &[u32]| {
        column(SUPPLIES, col)
            .find(|(i, _)| i == idx)
            .and_then(|(_, v)| v.as_i32())
    };
    let supplies = descriptions
        .into_iter()
        .map(|(idx, name)| {
            let percent = super::level_percent(value_at(9, &idx), value_at(8, &idx));
            // prtMarkerSuppliesClass: 3 is consumed (toner, ink), 4 is a
            // receptacle that fills (waste toner), whose level is the room left.
            let kind = match value_at(4, &idx) {
                Some(3) => SupplyKind::Consumed,
                Some(4) => SupplyKind::Waste,
                _ => SupplyKind::Unknown,
            };
            Supply {
                name,
                percent,
                kind,
            }
        })
        .collect();
    let page_count = varbinds
        .iter()
        .filter(|vb| vb.oid.arcs().starts_with(LIFE_COUNT))
        .find_map(|vb| counter(&vb.value));
    PrinterInfo {
        name: name.to_owned(),
        source: SOURCE.into(),
        address: address.to_owned(),
        state: state.into(),
        reasons,
        accepting_jobs: true,
        queued_jobs: 0,
        oldest_job_age_secs: None,
        supplies,
        page_count,
        error: String::new(),
    }
}

/// The (row index, value) pairs of one table column.
fn column<'a>(
    varbinds: &'a [VarBind],
    root: &'static [u32],
    col: u32,
) -> impl Iterator<Item = (Vec<u32>, &'a Value)> + 'a {
    varbinds.iter().filter_map(move |vb| {
        let arcs = vb.oid.arcs();
        (arcs.len() > root.len() + 1 && arcs.starts_with(root) && arcs[root.len()] == col)
            .then(|| (arcs[root.len() + 1..].to_vec(), &vb.value))
    })
}

fn counter(v: &Value) -> Option<u64> {
    match v {
        Value::Counter32(n) | Value::Gauge32(n) | Value::UInteger32(n) => Some(u64::from(*n)),
        Value::Counter64(n) => Some(*n),
        Value::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `snmpwalk -On -Ox` style lines: `OID = TYPE: value`.
    fn fixture(text: &str) -> Vec<VarBind> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (oid, rest) = l.split_once(" = ").unwrap();
                let (kind, value) = rest.split_once(": ").unwrap_or((rest, ""));
                let value = value.trim();
                let v = match kind {
                    "INTEGER" => Value::Integer(value.parse().unwrap()),
                    "Counter32" => Value::Counter32(value.parse().unwrap()),
                    "STRING" => {
                        Value::OctetString(value.trim_matches('"').as_bytes().to_vec().into())
                    }
                    "Hex-STRING" => Value::OctetString(
                        value
                            .split_whitespace()
                            .map(|b| u8::from_str_radix(b, 16).unwrap())
                            .collect::<Vec<u8>>()
                            .into(),
                    ),
                    other => panic!("fixture type {other}"),
                };
                VarBind::new(Oid::parse(oid.trim_start_matches('.')).unwrap(), v)
            })
            .collect()
    }

    #[test]
    fn jammed_printer_with_low_toner() {
        let vbs = fixture(include_str!("../../tests/fixtures/snmp-printer-jammed.txt"));
        let p = parse_printer("Dispatch HP", "10.0.5.20", &vbs);
        assert_eq!(p.state, "other");
        assert_eq!(p.reasons, vec!["toner-low", "media-jam"]);
        assert!(p.has_reason("media-jam"));
        assert_eq!(p.page_count, Some(48213));
        assert_eq!(p.supplies.len(), 2);
        assert_eq!(p.supplies[0].name, "Black Toner Cartridge");
        assert_eq!(p.supplies[0].percent, Some(8.0));
        // Level -3: "some remaining", which is no percentage.
        assert_eq!(p.supplies[1].percent, None);
    }

    #[test]
    fn second_octet_bits_and_idle_state() {
        let vbs = fixture(
            ".1.3.6.1.2.1.25.3.5.1.1.1 = INTEGER: 3\n.1.3.6.1.2.1.25.3.5.1.2.1 = Hex-STRING: 00 80\n",
        );
        let p = parse_printer("p", "a", &vbs);
        assert_eq!(p.state, "idle");
        assert_eq!(p.reasons, vec!["input-tray-missing"]);
    }

    #[test]
    fn device_without_printer_mib_says_so() {
        let vbs = fixture(".1.3.6.1.2.1.43.10.2.1.4.1.1 = Counter32: 5\n");
        let p = parse_printer("p", "a", &vbs);
        assert_eq!(p.state, "unknown");
        assert_eq!(p.reasons, vec!["no-printer-mib"]);
        assert_eq!(p.page_count, Some(5));
        assert!(parse_printer("p", "a", &[]).supplies.is_empty());
    }

    #[tokio::test]
    async fn silent_printer_is_unreachable_not_a_crash() {
        // A bound UDP socket that never answers.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let printer = NetworkPrinter {
            name: "Silent".into(),
            address: sock.local_addr().unwrap().to_string(),
            community: "public".into(),
            protocol: Default::default(),
            ipp_uri: None,
        };
        let mut probe = SnmpProbe::new(vec![printer]);
        probe.timeout = Duration::from_millis(200);
        let r = probe.run().await;
        let Some(Section::NetworkPrinters(list)) = r.section else {
            panic!("no section")
        };
        assert_eq!(list[0].state, "unreachable");
        assert!(!list[0].error.is_empty());
    }
}
