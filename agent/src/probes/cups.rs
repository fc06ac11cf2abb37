//! Local print queues, read from the CUPS scheduler over IPP (never by
//! scraping `lpstat`): every queue's state, `printer-state-reasons`, the
//! jobs waiting and the age of the oldest one, and supply levels where the
//! driver reports them. On Windows the spooler API would take this place;
//! it is not written yet.

use std::collections::HashMap;
use std::time::Duration;

use ipp::attribute::IppAttributes;
use ipp::model::{DelimiterTag, IppVersion, Operation};
use ipp::prelude::{AsyncIppClient, Uri};
use ipp::request::IppRequestResponse;
use ipp::value::IppValue;
use vitals_proto::domain::{PrinterInfo, ProbeKind, Supply};

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
    "printer-up-time",
];
const JOB_ATTRIBUTES: &[&str] = &["job-id", "job-printer-uri", "time-at-creation", "job-state"];

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
        Ok(queues)
    }
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
            let state = match get("printer-state").and_then(|v| ints(v).first().copied()) {
                Some(3) => "idle",
                Some(4) => "processing",
                Some(5) => "stopped",
                _ => "unknown",
            };
            let reasons = get("printer-state-reasons")
                .map(strings)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r != "none")
                .collect();
            let marker_names = get("marker-names").map(strings).unwrap_or_default();
            let marker_levels = get("marker-levels").map(ints).unwrap_or_default();
            let supplies = marker_names
                .into_iter()
                .enumerate()
                .map(|(i, name)| Supply {
                    name,
                    // -1, -2: unknown; -3: unknown but not empty.
                    percent: marker_levels
                        .get(i)
                        .filter(|l| (0..=100).contains(*l))
                        .map(|l| *l as f32),
                })
                .collect();
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
