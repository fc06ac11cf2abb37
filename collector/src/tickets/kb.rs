//! The knowledge base: remediation steps per check, in Markdown.
//!
//! Articles ship in the collector (`collector/kb/<check id>.md`); a file
//! `<data_dir>/kb/<check id>.md` adds one for a check of the city's own or
//! replaces the shipped one, and is read fresh each time, so edits need no
//! restart.

use std::path::PathBuf;

const SHIPPED: &[(&str, &str)] = &[
    (
        "agent_outbox_unwritable",
        include_str!("../../kb/agent_outbox_unwritable.md"),
    ),
    ("battery_worn", include_str!("../../kb/battery_worn.md")),
    ("clock_skew", include_str!("../../kb/clock_skew.md")),
    ("core_pegged", include_str!("../../kb/core_pegged.md")),
    ("cpu_saturated", include_str!("../../kb/cpu_saturated.md")),
    (
        "disk_nearly_full",
        include_str!("../../kb/disk_nearly_full.md"),
    ),
    ("dns_failing", include_str!("../../kb/dns_failing.md")),
    ("dns_slow", include_str!("../../kb/dns_slow.md")),
    (
        "endpoint_offline",
        include_str!("../../kb/endpoint_offline.md"),
    ),
    (
        "endpoint_cloned",
        include_str!("../../kb/endpoint_cloned.md"),
    ),
    (
        "collector_certificate_expiring",
        include_str!("../../kb/collector_certificate_expiring.md"),
    ),
    (
        "failed_services",
        include_str!("../../kb/failed_services.md"),
    ),
    ("gateway_lossy", include_str!("../../kb/gateway_lossy.md")),
    (
        "gateway_unreachable",
        include_str!("../../kb/gateway_unreachable.md"),
    ),
    (
        "inodes_nearly_exhausted",
        include_str!("../../kb/inodes_nearly_exhausted.md"),
    ),
    (
        "interface_errors",
        include_str!("../../kb/interface_errors.md"),
    ),
    ("link_down", include_str!("../../kb/link_down.md")),
    (
        "memory_pressure",
        include_str!("../../kb/memory_pressure.md"),
    ),
    ("overheating", include_str!("../../kb/overheating.md")),
    (
        "printer_door_open",
        include_str!("../../kb/printer_door_open.md"),
    ),
    ("printer_jammed", include_str!("../../kb/printer_jammed.md")),
    (
        "printer_needs_service",
        include_str!("../../kb/printer_needs_service.md"),
    ),
    (
        "printer_offline",
        include_str!("../../kb/printer_offline.md"),
    ),
    (
        "printer_out_of_paper",
        include_str!("../../kb/printer_out_of_paper.md"),
    ),
    (
        "printer_queue_stuck",
        include_str!("../../kb/printer_queue_stuck.md"),
    ),
    (
        "printer_stopped",
        include_str!("../../kb/printer_stopped.md"),
    ),
    (
        "printer_supply_empty",
        include_str!("../../kb/printer_supply_empty.md"),
    ),
    (
        "printer_supply_low",
        include_str!("../../kb/printer_supply_low.md"),
    ),
    (
        "printer_toner_empty",
        include_str!("../../kb/printer_toner_empty.md"),
    ),
    (
        "printer_toner_low",
        include_str!("../../kb/printer_toner_low.md"),
    ),
    ("reboot_pending", include_str!("../../kb/reboot_pending.md")),
    (
        "service_unreachable",
        include_str!("../../kb/service_unreachable.md"),
    ),
    ("smart_failing", include_str!("../../kb/smart_failing.md")),
    (
        "smart_media_errors",
        include_str!("../../kb/smart_media_errors.md"),
    ),
    (
        "smart_pending_sectors",
        include_str!("../../kb/smart_pending_sectors.md"),
    ),
    (
        "smart_reallocated_sectors",
        include_str!("../../kb/smart_reallocated_sectors.md"),
    ),
    ("swap_pressure", include_str!("../../kb/swap_pressure.md")),
    ("wifi_weak", include_str!("../../kb/wifi_weak.md")),
];

#[derive(Debug, Clone, Default)]
pub struct KnowledgeBase {
    /// `<data_dir>/kb`, for local articles.
    dir: Option<PathBuf>,
}

impl KnowledgeBase {
    pub fn new(dir: Option<PathBuf>) -> Self {
        KnowledgeBase { dir }
    }

    /// The article for `check_id`: the local one if there is one, else the
    /// shipped one.
    pub fn article(&self, check_id: &str) -> Option<String> {
        // Check ids are [a-z0-9_]; anything else never names a file.
        let safe = !check_id.is_empty()
            && check_id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if safe
            && let Some(dir) = &self.dir
            && let Ok(text) = std::fs::read_to_string(dir.join(format!("{check_id}.md")))
        {
            return Some(text);
        }
        SHIPPED
            .iter()
            .find(|(id, _)| *id == check_id)
            .map(|(_, text)| (*text).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_check_has_an_article_with_both_kinds_of_steps() {
        let kb = KnowledgeBase::default();
        let policy = vitals_proto::policy::Policy::default_policy();
        let checks = policy
            .checks
            .iter()
            .map(|c| (c.id.as_str(), c.title.as_str()))
            .chain(vitals_proto::policy::BUILTIN_CHECKS.iter().copied());
        for (id, title) in checks {
            let a = kb
                .article(id)
                .unwrap_or_else(|| panic!("no article for {id}"));
            assert!(a.starts_with(&format!("# {title}")), "{id}: title");
            assert!(a.contains("## What the user can do"), "{id}");
            assert!(a.contains("## What the specialist does"), "{id}");
        }
    }

    #[test]
    fn local_articles_replace_and_add_and_paths_are_not_followed() {
        let dir = std::env::temp_dir().join(format!("vitals-kb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("printer_jammed.md"), "# Call Facilities on 4411\n").unwrap();
        std::fs::write(dir.join("badge_reader_down.md"), "# Badge reader\n").unwrap();
        let kb = KnowledgeBase::new(Some(dir.clone()));
        assert_eq!(
            kb.article("printer_jammed").unwrap(),
            "# Call Facilities on 4411\n"
        );
        assert_eq!(kb.article("badge_reader_down").unwrap(), "# Badge reader\n");
        assert!(
            kb.article("dns_failing")
                .unwrap()
                .starts_with("# DNS not resolving")
        );
        assert!(kb.article("../../etc/passwd").is_none());
        assert!(kb.article("manual").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
