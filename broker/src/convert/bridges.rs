//! Mosquitto bridges (`connection` blocks): Tern has no MQTT-to-MQTT bridge yet (issue
//! #14), so each is listed as not converted and its settings are kept as a comment at the
//! end of the output, passwords and pre-shared keys left out.

use super::catalogue::is_secret;
use super::finding::{Finding, FindingKind};
use super::model::BridgeDef;

/// One finding per bridge, and its comment block.
pub(super) fn map_bridges(bridges: &[BridgeDef], findings: &mut Vec<Finding>) -> Vec<Vec<String>> {
    bridges
        .iter()
        .map(|bridge| {
            let keys: Vec<&str> = bridge
                .options
                .iter()
                .skip(1)
                .map(|l| l.key.as_str())
                .collect();
            findings.push(Finding::at(
                &bridge.at,
                "connection",
                FindingKind::NotSupported,
                format!(
                    "bridge `{}` ({}): Tern has no MQTT-to-MQTT bridge yet (issue #14); its \
                     settings are kept as a comment at the end of the file",
                    bridge.name,
                    if keys.is_empty() {
                        "no settings".into()
                    } else {
                        keys.join(", ")
                    }
                ),
            ));
            let mut block = vec![
                format!(
                    "Bridge `{}` ({}), not converted: Tern has no MQTT-to-MQTT bridge yet \
                     (issue #14).",
                    bridge.name, bridge.at
                ),
                "Its Mosquitto settings:".to_string(),
            ];
            block.extend(bridge.options.iter().map(|l| {
                if is_secret(&l.key) {
                    format!("  {} (set; not shown)", l.key)
                } else {
                    format!("  {} {}", l.key, l.value)
                }
            }));
            block
        })
        .collect()
}
