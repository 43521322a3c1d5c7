//! Checks of the `[limits]` section (named by key, with what is allowed), and the limit
//! defaults computed at start rather than written in `config.toml`
//! (`max_total_queued_bytes`: a fraction of the machine's memory).

use super::{ConfigError, Limits};

/// `park_idle_after_ms` when a configuration file leaves it out.
pub(super) fn default_park_idle_after_ms() -> u64 {
    1000
}

/// Checks `l`; `out_of_range` makes the error naming the key, the value and what is allowed.
pub(super) fn check(
    l: &Limits,
    out_of_range: &dyn Fn(&'static str, String, &'static str) -> ConfigError,
) -> Result<(), ConfigError> {
    if l.max_packet_size_bytes < 64
        || l.max_packet_size_bytes > tern_codec::decoder::MAX_PACKET_SIZE_BYTES
    {
        return Err(out_of_range(
            "limits.max_packet_size_bytes",
            l.max_packet_size_bytes.to_string(),
            "64 to 268435460",
        ));
    }
    if l.receive_maximum == 0 {
        return Err(out_of_range(
            "limits.receive_maximum",
            "0".into(),
            "1 to 65535",
        ));
    }
    if l.max_inflight_messages == 0 {
        return Err(out_of_range(
            "limits.max_inflight_messages",
            "0".into(),
            "1 to 65535",
        ));
    }
    if l.max_connections == 0 {
        return Err(out_of_range(
            "limits.max_connections",
            "0".into(),
            "at least 1",
        ));
    }
    if l.writer_cap_bytes < l.max_packet_size_bytes as usize {
        return Err(out_of_range(
            "limits.writer_cap_bytes",
            l.writer_cap_bytes.to_string(),
            "at least limits.max_packet_size_bytes",
        ));
    }
    if let Some(total) = l.max_total_queued_bytes.filter(|&t| t != 0) {
        if total < l.max_queued_bytes {
            return Err(out_of_range(
                "limits.max_total_queued_bytes",
                total.to_string(),
                "0 (no limit) or at least limits.max_queued_bytes",
            ));
        }
    }
    if l.max_topic_levels == 0 {
        return Err(out_of_range(
            "limits.max_topic_levels",
            "0".into(),
            "at least 1",
        ));
    }
    if l.writer_soft_cap_bytes == 0 || l.writer_soft_cap_bytes > l.writer_cap_bytes {
        return Err(out_of_range(
            "limits.writer_soft_cap_bytes",
            l.writer_soft_cap_bytes.to_string(),
            "1 to limits.writer_cap_bytes",
        ));
    }
    if l.connect_timeout_ms == 0 {
        return Err(out_of_range(
            "limits.connect_timeout_ms",
            "0".into(),
            "at least 1",
        ));
    }
    Ok(())
}

/// The default `max_total_queued_bytes`: an eighth of the machine's memory (from
/// `/proc/meminfo`), at least 256 MiB; 1 GiB where the memory size is unknown.
pub(super) fn default_max_total_queued_bytes() -> usize {
    const FLOOR_BYTES: usize = 256 << 20;
    let total_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        });
    total_bytes.map_or(1 << 30, |total| (total / 8).max(FLOOR_BYTES))
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_is_a_fraction_of_memory() {
        assert!(super::default_max_total_queued_bytes() >= 256 << 20);
    }
}
