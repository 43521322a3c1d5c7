//! Process CPU time and resident memory from `/proc` (Linux only).
//!
//! CPU times in `/proc/PID/stat` are in clock ticks; Linux reports them at `USER_HZ`, which
//! is 100 on every mainstream architecture, so no `sysconf` call is needed.

use anyhow::{anyhow, Context, Result};

/// Ticks per second of the `utime`/`stime` fields.
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds used so far by `pid` (`None` means this process).
pub(crate) fn cpu_secs(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected {path}"))?;
    let mut fields = rest.split_whitespace();
    // After ')' come state (field 3) ... utime is field 14 and stime field 15.
    let utime: u64 = fields
        .nth(11)
        .ok_or_else(|| anyhow!("no utime in {path}"))?
        .parse()?;
    let stime: u64 = fields
        .next()
        .ok_or_else(|| anyhow!("no stime in {path}"))?
        .parse()?;
    Ok((utime + stime) as f64 / USER_HZ)
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() -> Result<()> {
        assert!(cpu_secs(None)? >= 0.0);
        assert!(rss_kib(std::process::id())? > 0);
        Ok(())
    }
}
