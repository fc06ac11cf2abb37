//! Local print queues, read from the CUPS scheduler over IPP (never by
//! scraping `lpstat`): every queue's state, `printer-state-reasons`, the
//! jobs waiting and the age of the oldest one, and supply levels where the
//! driver reports them.
//!
//! CUPS refreshes a queue's reasons and supplies from the device only
//! while a job passes through, so an out-of-toner printer would stay
//! invisible until somebody's job failed. For a queue whose device URI is
//! `ipp://` or `ipps://` (IPP Everywhere, AirPrint, driverless queues) the
//! printer itself is asked as well (`Get-Printer-Attributes` on its own
//! URI), and what it says is merged with the queue's own state. A device
//! that does not answer is a finding on that printer (its `error`), not a
//! probe error; the queue's state still counts. On Windows the spooler API
//! would take this place; it is not written yet.

use std::collections::HashMap;
use std::time::Duration;

use ipp::attribute::IppAttributes;
use ipp::model::{DelimiterTag, IppVersion, Operation};
use ipp::prelude::{AsyncIppClient, Uri};
use ipp::request::IppRequestResponse;
use ipp::value::IppValue;
use vitals_proto::domain::{PrinterInfo, ProbeKind, Supply, SupplyKind};

use super::{Probe, Reading, Section, probe_error};

const KIND: ProbeKind = ProbeKind::Printers;
pub const SOURCE: &str = "cups";

const PRINTER_ATTRIBUTES: &[&str] = &[
    "printer-name",
    "printer-state",
    "printer-state-reasons",
    "printer-is-accepting-jobs",
    "queued-job-count",
    "device-uri",
    "marker-names",
    "marker-levels",
    "marker-types",
    "printer-up-time",
];
const JOB_ATTRIBUTES: &[&str] = &["job-id", "job-printer-uri", "time-at-creation", "job-state"];
/// What the device behind a driverless queue is asked for.
const DEVICE_ATTRIBUTES: &[&str] = &[
    "printer-state",
    "printer-state-reasons",
    "marker-names",
    "marker-levels",
    "marker-types",
    "printer-supply",
    "printer-supply-description",
    "marker-low-levels",
    "marker-high-levels",
    "printer-alert",
];
/// How long one device may take to answer; devices are asked at once.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct CupsProbe {
    /// The scheduler, such as `http://localhost:631`; empty skips CUPS.
    url: String,
}

impl CupsProbe {
    pub fn new(url: String) -> Self {
        // When its HTTP stack carries rustls, the IPP client needs a crypto
        // provider: the same ring one as the collector link.
        let _ = rustls::crypto::ring::default_provider().install_default();
        CupsProbe { url }
    }

    async fn read(&self) -> Result<Vec<PrinterInfo>, String> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| format!("{}: not a URL: {e}", self.url))?;
        let client = AsyncIppClient::builder(uri)
            .request_timeout(Duration::from_secs(10))
            .build();
        let mut get_printers =
            IppRequestResponse::new(IppVersion::v1_1(), Operation::CupsGetPrinters, None)
                .map_err(|e| e.to_string())?;
        requested(&mut get_printers, PRINTER_ATTRIBUTES)?;
        let printers = client
            .send(get_printers)
            .await
            .map_err(|e| format!("CUPS at {}: {e}", self.url))?;
        check_status(&printers)?;
        let mut queues = parse_printers(printers.attributes());
        if queues.iter().any(|q| q.queued_jobs > 0) {
            let all: Uri = "ipp://localhost/".parse().map_err(|e| format!("{e}"))?;
            let mut get_jobs =
                IppRequestResponse::new(IppVersion::v1_1(), Operation::GetJobs, Some(all))
                    .map_err(|e| e.to_string())?;
            let which = ipp::attribute::IppAttribute::with_name(
                "which-jobs",
                IppValue::new_keyword("not-completed").map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            get_jobs
                .attributes_mut()
                .add(DelimiterTag::OperationAttributes, which);
            requested(&mut get_jobs, JOB_ATTRIBUTES)?;
            let jobs = client
                .send(get_jobs)
                .await
                .map_err(|e| format!("CUPS at {}: jobs: {e}", self.url))?;
            check_status(&jobs)?;
            let now = printer_clock(printers.attributes())
                .unwrap_or_else(|| vitals_proto::now_ms() / 1000);
            apply_jobs(jobs.attributes(), now, &mut queues);
        }
        self.ask_devices(&mut queues).await;
        Ok(queues)
    }

    /// Asks the printer behind every driverless queue for its own state,
    /// all at once, each within [`DEVICE_TIMEOUT`], and merges the answers.
    async fn ask_devices(&self, queues: &mut [PrinterInfo]) {
        let mut asked = tokio::task::JoinSet::new();
        for (i, q) in queues.iter().enumerate() {
            if is_ipp_device(&q.address) {
                let uri = q.address.clone();
                asked.spawn(async move { (i, ask_device(&uri).await) });
            }
        }
        while let Some(done) = asked.join_next().await {
            if let Ok((i, answer)) = done
                && let Some(q) = queues.get_mut(i)
            {
                merge_device(q, answer);
            }
        }
    }
}

/// Whether a device URI names a printer that speaks IPP itself.
fn is_ipp_device(uri: &str) -> bool {
    uri.starts_with("ipp://") || uri.starts_with("ipps://")
}

/// What a printer says of itself over IPP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceStatus {
    /// "idle", "processing" or "stopped"; `None` if it did not say.
    pub state: Option<&'static str>,
    pub reasons: Vec<String>,
    pub supplies: Vec<Supply>,
}

/// Asks a printer for its own state over IPP, within [`DEVICE_TIMEOUT`].
pub async fn ask_device(uri: &str) -> Result<DeviceStatus, String> {
    let parsed: Uri = uri.parse().map_err(|e| format!("not a URI: {e}"))?;
    // Printers serve ipps:// with self-signed certificates as a rule. Only
    // the printer's public status is read and nothing is sent that needs
    // protecting, so its certificate is not checked.
    let client = AsyncIppClient::builder(parsed.clone())
        .request_timeout(DEVICE_TIMEOUT)
        .ignore_tls_errors(true)
        .build();
    let mut get = IppRequestResponse::new(
        IppVersion::v1_1(),
        Operation::GetPrinterAttributes,
        Some(parsed),
    )
    .map_err(|e| e.to_string())?;
    requested(&mut get, DEVICE_ATTRIBUTES)?;
    let answer = tokio::time::timeout(DEVICE_TIMEOUT, client.send(get))
        .await
        .map_err(|_| {
            format!(
                "no answer within {}",
                humantime::format_duration(DEVICE_TIMEOUT)
            )
        })?
        .map_err(|e| e.to_string())?;
    if !answer.header().status_code().is_success() {
        return Err(format!("answered {:?}", answer.header().status_code()));
    }
    Ok(parse_device(answer.attributes()))
}

/// A printer's own Get-Printer-Attributes answer: its reasons (with their
/// `-report`/`-warning`/`-error` suffixes, as the checks expect) and its
/// supplies, waste containers marked as such.
pub fn parse_device(attrs: &IppAttributes) -> DeviceStatus {
    let Some(g) = attrs.groups_of(DelimiterTag::PrinterAttributes).next() else {
        return DeviceStatus::default();
    };
    let get = |n: &str| g.get(n).map(|a| a.value());
    let reasons = state_reasons(get("printer-state-reasons"));
    let state = printer_state(get("printer-state"));
    // IPP Everywhere printers describe supplies in `printer-supply`
    // (PWG 5100.13); older ones in the `marker-*` lists.
    let pwg = pwg_supplies(
        get("printer-supply").map(octets).unwrap_or_default(),
        get("printer-supply-description")
            .map(strings)
            .unwrap_or_default(),
    );
    let markers = supplies(
        get("marker-names").map(strings).unwrap_or_default(),
        get("marker-levels").map(ints).unwrap_or_default(),
        get("marker-types").map(strings).unwrap_or_default(),
    );
    let mut reasons = reasons;
    // The printer's own thresholds: a cartridge at or under its low level
    // is low, a waste container at or over its high level nearly full,
    // whether or not the printer also says so in its reasons.
    let low = get("marker-low-levels").map(ints).unwrap_or_default();
    let high = get("marker-high-levels").map(ints).unwrap_or_default();
    for (i, m) in markers.iter().enumerate() {
        let Some(level) = m.percent else { continue };
        let past = |limits: &[i32], above: bool| {
            limits
                .get(i)
                .filter(|l| (1..=100).contains(*l))
                .is_some_and(|l| {
                    if above {
                        level >= *l as f32
                    } else {
                        level <= *l as f32
                    }
                })
        };
        if m.kind == SupplyKind::Waste {
            if past(&high, true) {
                add_reason(&mut reasons, "marker-waste-almost-full", "report");
            }
        } else if past(&low, false) {
            add_reason(&mut reasons, "marker-supply-low", "report");
        }
    }
    // PWG 5100.9 alerts (`code=jam;severity=critical;…`), where a printer
    // keeps its conditions there rather than in its reasons.
    for alert in get("printer-alert").map(octets).unwrap_or_default() {
        let field = |key: &str| {
            alert
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_owned())
        };
        let Some(reason) = field("code").and_then(|c| reason_of_alert(&c)) else {
            continue;
        };
        let suffix = match field("severity").as_deref() {
            Some("critical") => "error",
            Some("warning") => "warning",
            _ => "report",
        };
        add_reason(&mut reasons, &reason, suffix);
    }
    let supplies = if pwg.is_empty() { markers } else { pwg };
    DeviceStatus {
        state,
        reasons,
        supplies,
    }
}

/// Adds `reason` with its severity suffix unless the printer already says
/// it (with any suffix).
fn add_reason(reasons: &mut Vec<String>, reason: &str, suffix: &str) {
    if !reasons.iter().any(|r| r.starts_with(reason)) {
        reasons.push(format!("{reason}-{suffix}"));
    }
}

/// The `printer-state-reasons` keyword for a PWG 5100.9 alert code
/// (`markerSupplyEmpty` is `marker-supply-empty`); `None` for the codes
/// that are no condition of the printer (`other`, `unknown`).
fn reason_of_alert(code: &str) -> Option<String> {
    let named = match code {
        "other" | "unknown" | "" => return None,
        "jam" | "mediaJam" | "inputMediaJam" | "outputMediaJam" => "media-jam",
        "inputMediaSupplyEmpty" | "mediaEmpty" => "media-empty",
        "inputMediaSupplyLow" | "mediaLow" => "media-low",
        "markerSupplyAlmostEmpty" => "marker-supply-low",
        "markerTonerEmpty" => "toner-empty",
        "markerTonerAlmostEmpty" => "toner-low",
        _ => "",
    };
    if !named.is_empty() {
        return Some(named.to_owned());
    }
    // camelCase to the keywords' kebab-case.
    let mut out = String::new();
    for c in code.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            return None;
        }
    }
    Some(out)
}

fn octets(v: &IppValue) -> Vec<String> {
    match v {
        IppValue::Array(a) => a.iter().flat_map(octets).collect(),
        IppValue::OctetString(b) => vec![String::from_utf8_lossy(b).into_owned()],
        _ => Vec::new(),
    }
}

/// Supplies from PWG 5100.13 `printer-supply` values
/// (`index=2;class=supplyThatIsConsumed;type=toner;maxcapacity=100;level=3;`)
/// named by `printer-supply-description`, in the same order.
fn pwg_supplies(values: Vec<String>, names: Vec<String>) -> Vec<Supply> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = |key: &str| {
                v.split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == key)
                    .map(|(_, value)| value)
            };
            let number = |key: &str| field(key).and_then(|n| n.parse::<i32>().ok());
            let percent = super::level_percent(number("level"), number("maxcapacity"));
            let kind = match field("class") {
                Some("receptacleThatIsFilled") => SupplyKind::Waste,
                Some("supplyThatIsConsumed") => SupplyKind::Consumed,
                _ => SupplyKind::Unknown,
            };
            let name = names
                .get(i)
                .cloned()
                .or_else(|| field("type").map(str::to_owned))
                .unwrap_or_else(|| format!("supply {}", i + 1));
            Supply {
                name,
                percent,
                kind,
            }
        })
        .collect()
}

/// The queue as its printer sees it: the device's reasons join the
/// queue's, and the device's supplies (its own levels) replace what the
/// queue last heard. The queue's state, jobs and pauses stand.
pub fn merge_device(queue: &mut PrinterInfo, device: Result<DeviceStatus, String>) {
    match device {
        Ok(d) => {
            for r in d.reasons {
                if !queue.reasons.contains(&r) {
                    queue.reasons.push(r);
                }
            }
            if !d.supplies.is_empty() {
                queue.supplies = d.supplies;
            }
        }
        Err(why) => queue.error = format!("printer at {} did not answer: {why}", queue.address),
    }
}

/// Supplies from IPP's parallel `marker-*` lists.
fn supplies(names: Vec<String>, levels: Vec<i32>, types: Vec<String>) -> Vec<Supply> {
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Supply {
            name,
            // -1, -2: unknown; -3: unknown but not empty.
            percent: levels
                .get(i)
                .filter(|l| (0..=100).contains(*l))
                .map(|l| *l as f32),
            kind: match types.get(i).map(String::as_str) {
                Some(t) if t.starts_with("waste-") => SupplyKind::Waste,
                Some(_) => SupplyKind::Consumed,
                None => SupplyKind::Unknown,
            },
        })
        .collect()
}

#[async_trait::async_trait]
impl Probe for CupsProbe {
    fn kind(&self) -> ProbeKind {
        KIND
    }

    async fn run(&mut self) -> Reading {
        if self.url.is_empty() {
            return Reading::ok(Section::Queues(Vec::new()));
        }
        match self.read().await {
            Ok(queues) => Reading::ok(Section::Queues(queues)),
            Err(e) => Reading {
                section: None,
                errors: vec![probe_error(KIND, e)],
            },
        }
    }
}

fn requested(req: &mut IppRequestResponse, names: &[&str]) -> Result<(), String> {
    let values = names
        .iter()
        .map(|n| IppValue::new_keyword(*n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let attr =
        ipp::attribute::IppAttribute::with_name("requested-attributes", IppValue::Array(values))
            .map_err(|e| e.to_string())?;
    req.attributes_mut()
        .add(DelimiterTag::OperationAttributes, attr);
    Ok(())
}

fn check_status(r: &IppRequestResponse) -> Result<(), String> {
    let status = r.header().status_code();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("CUPS answered {status:?}"))
    }
}

/// `printer-state` as a word; `None` if absent or not one IPP knows.
fn printer_state(v: Option<&IppValue>) -> Option<&'static str> {
    match v.and_then(|v| ints(v).first().copied()) {
        Some(3) => Some("idle"),
        Some(4) => Some("processing"),
        Some(5) => Some("stopped"),
        _ => None,
    }
}

/// `printer-state-reasons` without the placeholder `none`.
fn state_reasons(v: Option<&IppValue>) -> Vec<String> {
    v.map(strings)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r != "none")
        .collect()
}

fn strings(v: &IppValue) -> Vec<String> {
    match v {
        IppValue::Array(a) => a.iter().map(ToString::to_string).collect(),
        IppValue::NoValue => Vec::new(),
        v => vec![v.to_string()],
    }
}

fn ints(v: &IppValue) -> Vec<i32> {
    match v {
        IppValue::Array(a) => a.iter().flat_map(ints).collect(),
        IppValue::Integer(i) | IppValue::Enum(i) => vec![*i],
        _ => Vec::new(),
    }
}

/// The scheduler's clock (its `printer-up-time` is Unix time in CUPS), so
/// job ages do not depend on this machine's clock agreeing.
fn printer_clock(attrs: &IppAttributes) -> Option<i64> {
    attrs
        .groups_of(DelimiterTag::PrinterAttributes)
        .find_map(|g| g.get("printer-up-time"))
        .and_then(|a| ints(a.value()).first().copied())
        .map(i64::from)
        .filter(|t| *t > 1_000_000_000)
}

/// One [`PrinterInfo`] per printer group of a CUPS-Get-Printers response.
pub fn parse_printers(attrs: &IppAttributes) -> Vec<PrinterInfo> {
    attrs
        .groups_of(DelimiterTag::PrinterAttributes)
        .filter_map(|g| {
            let get = |n: &str| g.get(n).map(|a| a.value());
            let name = get("printer-name")?.to_string();
            let state = printer_state(get("printer-state")).unwrap_or("unknown");
            let reasons = state_reasons(get("printer-state-reasons"));
            let supplies = supplies(
                get("marker-names").map(strings).unwrap_or_default(),
                get("marker-levels").map(ints).unwrap_or_default(),
                get("marker-types").map(strings).unwrap_or_default(),
            );
            Some(PrinterInfo {
                name,
                source: SOURCE.into(),
                address: get("device-uri")
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                state: state.into(),
                reasons,
                accepting_jobs: matches!(
                    get("printer-is-accepting-jobs"),
                    Some(IppValue::Boolean(true))
                ),
                queued_jobs: get("queued-job-count")
                    .and_then(|v| ints(v).first().copied())
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                oldest_job_age_secs: None,
                supplies,
                page_count: None,
                error: String::new(),
            })
        })
        .collect()
}

/// Sets each queue's oldest job age from a Get-Jobs response (jobs not yet
/// completed); `now` is on the scheduler's clock.
pub fn apply_jobs(attrs: &IppAttributes, now: i64, queues: &mut [PrinterInfo]) {
    let mut oldest: HashMap<String, i64> = HashMap::new();
    for g in attrs.groups_of(DelimiterTag::JobAttributes) {
        let Some(printer) = g
            .get("job-printer-uri")
            .map(|a| a.value().to_string())
            .and_then(|u| u.rsplit('/').next().map(str::to_owned))
        else {
            continue;
        };
        let Some(created) = g
            .get("time-at-creation")
            .and_then(|a| ints(a.value()).first().copied())
        else {
            continue;
        };
        let e = oldest.entry(printer).or_insert(i64::MAX);
        *e = (*e).min(i64::from(created));
    }
    for q in queues {
        if let Some(created) = oldest.get(&q.name) {
            q.oldest_job_age_secs = Some(u64::try_from(now - created).unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> IppRequestResponse {
        ipp::parser::IppParser::new(ipp::reader::IppReader::new(std::io::Cursor::new(
            bytes.to_vec(),
        )))
        .parse()
        .unwrap()
    }

    #[test]
    fn printers_from_a_recorded_cups_answer() {
        let r = parse(include_bytes!("../../tests/fixtures/cups-get-printers.ipp"));
        let printers = parse_printers(r.attributes());
        assert_eq!(printers.len(), 2, "{printers:?}");
        let stopped = printers.iter().find(|p| p.name == "Dispatch").unwrap();
        assert_eq!(stopped.state, "stopped");
        assert!(stopped.has_reason("paused"), "{:?}", stopped.reasons);
        assert_eq!(stopped.queued_jobs, 1);
        let idle = printers.iter().find(|p| p.name == "Lobby").unwrap();
        assert_eq!(idle.state, "idle");
        assert!(idle.reasons.is_empty(), "{:?}", idle.reasons);
        assert!(idle.accepting_jobs);
    }

    #[test]
    fn oldest_job_age_from_a_recorded_job_list() {
        let p = parse(include_bytes!("../../tests/fixtures/cups-get-printers.ipp"));
        let j = parse(include_bytes!("../../tests/fixtures/cups-get-jobs.ipp"));
        let mut printers = parse_printers(p.attributes());
        let now = printer_clock(p.attributes()).unwrap();
        apply_jobs(j.attributes(), now + 3600, &mut printers);
        let stopped = printers.iter().find(|p| p.name == "Dispatch").unwrap();
        let age = stopped.oldest_job_age_secs.unwrap();
        assert!((3600..3700).contains(&age), "{age}");
        assert_eq!(
            printers
                .iter()
                .find(|p| p.name == "Lobby")
                .unwrap()
                .oldest_job_age_secs,
            None
        );
    }

    #[test]
    fn truncated_answer_is_an_error_not_a_panic() {
        let bytes = include_bytes!("../../tests/fixtures/cups-get-printers.ipp");
        let cut = &bytes[..bytes.len() / 2];
        let r = ipp::parser::IppParser::new(ipp::reader::IppReader::new(std::io::Cursor::new(
            cut.to_vec(),
        )))
        .parse();
        assert!(r.is_err());
    }

    /// A printer's answer as ippeveprinter gives it with its toner at 0:
    /// a waste tank and a toner cartridge, reasons with severity suffixes.
    fn device_answer(reasons: &[&str], levels: &[i32]) -> IppAttributes {
        use ipp::attribute::IppAttribute;
        let list = |v: Vec<IppValue>| IppValue::Array(v);
        let mut a = IppAttributes::new();
        let mut add = |name: &str, value: IppValue| {
            a.add(
                DelimiterTag::PrinterAttributes,
                IppAttribute::with_name(name, value).unwrap(),
            )
        };
        add("printer-state", IppValue::Enum(3));
        add(
            "printer-state-reasons",
            list(
                reasons
                    .iter()
                    .map(|r| IppValue::new_keyword(*r).unwrap())
                    .collect(),
            ),
        );
        add(
            "marker-names",
            list(vec![
                IppValue::new_name_without_language("Waste Tank").unwrap(),
                IppValue::new_name_without_language("Black Toner").unwrap(),
            ]),
        );
        add(
            "marker-types",
            list(vec![
                IppValue::new_keyword("waste-toner").unwrap(),
                IppValue::new_keyword("toner").unwrap(),
            ]),
        );
        add(
            "marker-levels",
            list(levels.iter().map(|l| IppValue::Integer(*l)).collect()),
        );
        a
    }

    #[test]
    fn the_printer_s_thresholds_and_alerts_are_conditions_too() {
        use ipp::attribute::IppAttribute;
        let with = |mut a: IppAttributes, name: &str, value: IppValue| {
            a.add(
                DelimiterTag::PrinterAttributes,
                IppAttribute::with_name(name, value).unwrap(),
            );
            a
        };
        let ints = |v: &[i32]| IppValue::Array(v.iter().map(|l| IppValue::Integer(*l)).collect());
        // Waste at 95 of a high level 90; toner at 8 of a low level 10; no
        // reason given by the printer for either.
        let a = with(
            device_answer(&["none"], &[95, 8]),
            "marker-low-levels",
            ints(&[0, 10]),
        );
        let a = with(a, "marker-high-levels", ints(&[90, 100]));
        let d = parse_device(&a);
        assert_eq!(
            d.reasons,
            vec![
                "marker-waste-almost-full-report",
                "marker-supply-low-report"
            ]
        );
        // At 12 the toner is not low yet; a reason the printer gave itself
        // is not said twice.
        let a = with(
            device_answer(&["marker-supply-low-warning"], &[10, 12]),
            "marker-low-levels",
            ints(&[0, 15]),
        );
        assert_eq!(parse_device(&a).reasons, vec!["marker-supply-low-warning"]);
        let a = with(
            device_answer(&["none"], &[10, 12]),
            "marker-low-levels",
            ints(&[0, 10]),
        );
        assert!(parse_device(&a).reasons.is_empty());
        // Alerts, as PWG 5100.9 writes them.
        let alerts = IppValue::Array(
            [
                "code=jam;severity=critical;group=mediaPath;",
                "code=markerSupplyEmpty;severity=warning;index=2;",
                "code=coverOpen;group=cover;",
                "code=other;severity=critical;",
                "code=bad code;",
            ]
            .iter()
            .map(|s| IppValue::OctetString(s.as_bytes().to_vec().into()))
            .collect(),
        );
        let a = with(
            device_answer(&["media-jam-error"], &[10, 50]),
            "printer-alert",
            alerts,
        );
        assert_eq!(
            parse_device(&a).reasons,
            vec![
                "media-jam-error",
                "marker-supply-empty-warning",
                "cover-open-report"
            ]
        );
        assert_eq!(
            reason_of_alert("inputMediaSupplyEmpty").as_deref(),
            Some("media-empty")
        );
        assert_eq!(reason_of_alert("doorOpen").as_deref(), Some("door-open"));
    }

    #[test]
    fn pwg_supplies_as_ipp_everywhere_printers_give_them() {
        // As ippeveprinter answers, recorded with ipptool.
        let values = vec![
            "index=1;class=receptacleThatIsFilled;type=wasteToner;unit=percent;maxcapacity=100;level=25;colorantname=unknown;".to_owned(),
            "index=2;class=supplyThatIsConsumed;type=toner;unit=percent;maxcapacity=100;level=3;colorantname=black;".to_owned(),
            "index=3;class=supplyThatIsConsumed;type=staples;maxcapacity=-2;level=-3;".to_owned(),
        ];
        let names = vec!["Toner Waste Tank".to_owned(), "Black Toner".to_owned()];
        let s = pwg_supplies(values, names);
        assert_eq!(
            s,
            vec![
                Supply {
                    name: "Toner Waste Tank".into(),
                    percent: Some(25.0),
                    kind: SupplyKind::Waste,
                },
                Supply {
                    name: "Black Toner".into(),
                    percent: Some(3.0),
                    kind: SupplyKind::Consumed,
                },
                Supply {
                    name: "staples".into(),
                    percent: None,
                    kind: SupplyKind::Consumed,
                },
            ]
        );
    }

    #[test]
    fn a_printer_s_own_answer_gives_reasons_and_supplies() {
        let d = parse_device(&device_answer(&["toner-empty-report", "none"], &[25, 0]));
        assert_eq!(d.reasons, vec!["toner-empty-report"]);
        assert_eq!(
            d.supplies,
            vec![
                Supply {
                    name: "Waste Tank".into(),
                    percent: Some(25.0),
                    kind: SupplyKind::Waste,
                },
                Supply {
                    name: "Black Toner".into(),
                    percent: Some(0.0),
                    kind: SupplyKind::Consumed,
                },
            ]
        );
        // Unknown levels (-1, -2, -3) are unknown, not empty.
        let d = parse_device(&device_answer(&["none"], &[-3, -1]));
        assert!(d.reasons.is_empty());
        assert_eq!(d.supplies[1].percent, None);
        assert_eq!(parse_device(&IppAttributes::new()), DeviceStatus::default());
    }

    #[test]
    fn the_device_s_word_joins_the_queue_s_and_silence_is_a_finding() {
        let r = parse(include_bytes!("../../tests/fixtures/cups-get-printers.ipp"));
        let queue = parse_printers(r.attributes())
            .into_iter()
            .find(|p| p.name == "Dispatch")
            .unwrap();
        // What the printer says is added; the queue's pause stays.
        let mut q = queue.clone();
        merge_device(
            &mut q,
            Ok(parse_device(&device_answer(
                &["media-empty-error", "paused"],
                &[25, 40],
            ))),
        );
        assert!(
            q.has_reason("paused") && q.has_reason("media-empty"),
            "{:?}",
            q.reasons
        );
        assert_eq!(q.reasons.iter().filter(|r| *r == "paused").count(), 1);
        assert_eq!(q.state, queue.state);
        assert_eq!(q.supplies[1].percent, Some(40.0));
        // A printer that does not answer: the queue stands, with why.
        let mut q = queue.clone();
        merge_device(&mut q, Err("connection refused".into()));
        assert_eq!(
            (q.state.as_str(), &q.reasons),
            (queue.state.as_str(), &queue.reasons)
        );
        assert!(
            q.error.contains("did not answer: connection refused"),
            "{}",
            q.error
        );
        assert!(is_ipp_device("ipps://printer.local/ipp/print"));
        assert!(!is_ipp_device("usb://HP/LaserJet") && !is_ipp_device("socket://10.0.0.9"));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_probe_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut p = CupsProbe::new(format!("http://127.0.0.1:{port}"));
        let r = p.run().await;
        assert!(r.section.is_none());
        assert!(r.errors[0].message.contains("CUPS at"), "{:?}", r.errors);
    }
}
