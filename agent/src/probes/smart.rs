//! Disk health from SMART, read through `smartctl --json` (smartmontools
//! 7 or later). Where smartctl is missing or no drive answers, the report
//! says "unavailable" with the reason; that is data, not a probe error.

use std::path::PathBuf;

use serde_json::Value;
use tokio::process::Command;
use vitals_proto::domain::{ProbeKind, SmartDevice, SmartReport};

use super::{Probe, Reading, Section};

const KIND: ProbeKind = ProbeKind::Smart;

/// smartctl exit status bits that mean it could not talk to the device at
/// all (command line, open, or command failure); higher bits are findings.
const SMARTCTL_FATAL_BITS: i32 = 0b0000_0011;

/// How long a device scan is trusted: drives come and go rarely, and a
/// scan costs as much CPU as reading a drive.
const RESCAN_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub struct SmartProbe {
    smartctl: PathBuf,
    /// The last scan's devices, as (name, type), and when it ran.
    scanned: Option<(std::time::Instant, Vec<(String, String)>)>,
}

impl SmartProbe {
    pub fn new(smartctl: PathBuf) -> Self {
        SmartProbe {
            smartctl,
            scanned: None,
        }
    }

    async fn devices(&mut self) -> Result<Vec<(String, String)>, String> {
        if let Some((at, devices)) = &self.scanned
            && at.elapsed() < RESCAN_AFTER
        {
            return Ok(devices.clone());
        }
        let (_, text) = self.smartctl(&["--scan", "--json"]).await?;
        let devices = parse_scan(&text).map_err(|e| format!("smartctl --scan: {e}"))?;
        self.scanned = Some((std::time::Instant::now(), devices.clone()));
        Ok(devices)
    }

    async fn smartctl(&self, args: &[&str]) -> Result<(i32, String), String> {
        let out = Command::new(&self.smartctl)
            .args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "{} not found (install smartmontools 7 or later)",
                        self.smartctl.display()
                    )
                } else {
                    format!("cannot run {}: {e}", self.smartctl.display())
                }
            })?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }
}

#[async_trait::async_trait]
impl Probe for SmartProbe {
    fn kind(&self) -> ProbeKind {
        KIND
    }

    async fn run(&mut self) -> Reading {
        let unavailable = |reason: String| {
            Reading::ok(Section::Smart(SmartReport {
                available: false,
                reason,
                devices: Vec::new(),
            }))
        };
        let devices = match self.devices().await {
            Ok(d) => d,
            Err(e) => return unavailable(e),
        };
        if devices.is_empty() {
            return unavailable("no drive answers SMART (virtual disks do not)".into());
        }
        let mut report = SmartReport {
            available: true,
            reason: String::new(),
            devices: Vec::new(),
        };
        let mut vanished = false;
        for (name, kind) in devices {
            let device = match self
                .smartctl(&["--json", "--all", "--device", &kind, &name])
                .await
            {
                Ok((status, text)) => parse_device(&text, status).unwrap_or_else(|e| SmartDevice {
                    device: name.clone(),
                    error: e,
                    ..Default::default()
                }),
                Err(e) => SmartDevice {
                    device: name.clone(),
                    error: e,
                    ..Default::default()
                },
            };
            vanished |= device.error.contains("No such device");
            report.devices.push(device);
        }
        if vanished {
            // A drive went away: scan afresh next time.
            self.scanned = None;
        }
        Reading::ok(Section::Smart(report))
    }
}

/// The devices `smartctl --scan --json` lists, as (name, type).
pub fn parse_scan(text: &str) -> Result<Vec<(String, String)>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(list) = v.get("devices").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    Ok(list
        .iter()
        .filter_map(|d| {
            Some((
                d.get("name")?.as_str()?.to_owned(),
                d.get("type")?.as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// One device from `smartctl --json --all`; `status` is smartctl's exit
/// status (a bit mask).
pub fn parse_device(text: &str, status: i32) -> Result<SmartDevice, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let str_at = |path: &[&str]| -> String {
        path.iter()
            .try_fold(&v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let u64_at = |path: &[&str]| {
        path.iter()
            .try_fold(&v, |v, k| v.get(k))
            .and_then(Value::as_u64)
    };
    let device = str_at(&["device", "name"]);
    let messages: Vec<String> = v
        .pointer("/smartctl/messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|m| m.get("string").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if status & SMARTCTL_FATAL_BITS != 0 && v.get("smart_status").is_none() {
        return Err(if messages.is_empty() {
            format!("smartctl failed (exit status {status})")
        } else {
            messages.join("; ")
        });
    }
    let ata_raw = |id: u64| {
        v.pointer("/ata_smart_attributes/table")
            .and_then(Value::as_array)?
            .iter()
            .find(|a| a.get("id").and_then(Value::as_u64) == Some(id))?
            .pointer("/raw/value")
            .and_then(Value::as_u64)
    };
    let nvme = |key: &str| u64_at(&["nvme_smart_health_information_log", key]);
    Ok(SmartDevice {
        device,
        model: str_at(&["model_name"]),
        serial: str_at(&["serial_number"]),
        protocol: str_at(&["device", "protocol"]),
        passed: v.pointer("/smart_status/passed").and_then(Value::as_bool),
        temperature_celsius: v.pointer("/temperature/current").and_then(Value::as_i64),
        power_on_hours: u64_at(&["power_on_time", "hours"]),
        // ATA attribute 5: Reallocated_Sector_Ct; 197: Current_Pending_Sector.
        reallocated_sectors: ata_raw(5),
        pending_sectors: ata_raw(197),
        media_errors: nvme("media_errors"),
        percentage_used: nvme("percentage_used"),
        error: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATA_FAILING: &str = include_str!("../../tests/fixtures/smartctl-ata-failing.json");
    const NVME_OK: &str = include_str!("../../tests/fixtures/smartctl-nvme-ok.json");
    const SCAN: &str = include_str!("../../tests/fixtures/smartctl-scan.json");
    const NO_PERMISSION: &str = include_str!("../../tests/fixtures/smartctl-permission.json");

    #[test]
    fn scan_lists_devices_with_types() {
        assert_eq!(
            parse_scan(SCAN).unwrap(),
            vec![
                ("/dev/sda".to_owned(), "sat".to_owned()),
                ("/dev/nvme0".to_owned(), "nvme".to_owned())
            ]
        );
        assert!(parse_scan("{}").unwrap().is_empty());
        assert!(parse_scan("smartctl: command not found").is_err());
    }

    #[test]
    fn failing_ata_drive() {
        // Exit status 8: "SMART status check returned DISK FAILING".
        let d = parse_device(ATA_FAILING, 8).unwrap();
        assert_eq!(d.device, "/dev/sda");
        assert_eq!(d.protocol, "ATA");
        assert_eq!(d.passed, Some(false));
        assert_eq!(d.reallocated_sectors, Some(1848));
        assert_eq!(d.pending_sectors, Some(16));
        assert_eq!(d.temperature_celsius, Some(38));
        assert_eq!(d.power_on_hours, Some(31245));
        assert_eq!(d.media_errors, None);
    }

    #[test]
    fn healthy_nvme_drive() {
        let d = parse_device(NVME_OK, 0).unwrap();
        assert_eq!(d.passed, Some(true));
        assert_eq!(d.protocol, "NVMe");
        assert_eq!(d.media_errors, Some(0));
        assert_eq!(d.percentage_used, Some(7));
        assert_eq!(d.reallocated_sectors, None);
        assert_eq!(d.model, "Example NVMe SSD 512GB");
    }

    #[test]
    fn unreadable_device_and_malformed_output() {
        let e = parse_device(NO_PERMISSION, 2).unwrap_err();
        assert!(e.contains("Permission denied"), "{e}");
        assert!(
            parse_device("{\"truncated\": ", 0)
                .unwrap_err()
                .contains("not JSON")
        );
        // Valid JSON with nothing in it: a device with no verdict, not a crash.
        let d = parse_device("{}", 0).unwrap();
        assert_eq!(d.passed, None);
    }

    #[tokio::test]
    async fn missing_smartctl_is_unavailable_with_reason() {
        let mut p = SmartProbe::new("/nonexistent/smartctl".into());
        let r = p.run().await;
        let Some(Section::Smart(report)) = r.section else {
            panic!("no section")
        };
        assert!(!report.available);
        assert!(report.reason.contains("not found"), "{}", report.reason);
        assert!(r.errors.is_empty());
    }
}
