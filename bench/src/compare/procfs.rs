//! What `/proc` says about a process and its children: CPU time and resident memory.
//!
//! NGINX does its work in worker processes that are children of its master, so every figure
//! here is summed over the process and its direct children.

use std::fs;
use std::time::Duration;

/// The process and its direct children, by scanning `/proc/*/stat` for the parent id.
pub fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if stat_fields(child).and_then(|fields| fields.get(1)?.parse::<u32>().ok()) == Some(pid)
            {
                pids.push(child);
            }
        }
    }
    pids
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces), so that
/// index 0 is the state, 1 the parent id, 11 utime and 12 stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

/// User plus system CPU time of `pids`, all threads included.
pub fn cpu_time(pids: &[u32]) -> Duration {
    let (user, system) = cpu_times(pids);
    user + system
}

/// User and system CPU time of `pids`, apart, all threads included: the system share is
/// the kernel's work for the process (its system calls, and the loopback's TCP processing
/// they run), which is much the same for every proxy making the same calls.
pub fn cpu_times(pids: &[u32]) -> (Duration, Duration) {
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (user, system) = pids
        .iter()
        .filter_map(|pid| {
            let fields = stat_fields(*pid)?;
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime, stime))
        })
        .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps));
    let time = |ticks: u64| Duration::from_secs_f64(ticks as f64 / ticks_per_second);
    (time(user), time(system))
}

/// Resident memory of `pids` in bytes (`VmRSS`; pages shared between NGINX's master and workers
/// are counted in each, so this overstates a multi-process server a little).
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(family(me).contains(&me));
        assert!(rss_bytes(&[me]) > 1024 * 1024);
        // CPU time comes in 10 ms ticks, and a busy machine may give this thread few of them:
        // spin until one is counted, for at most a few seconds.
        let spin = std::time::Instant::now();
        while cpu_time(&[me]) == Duration::ZERO && spin.elapsed() < Duration::from_secs(5) {
            std::hint::black_box(spin.elapsed());
        }
        assert!(cpu_time(&[me]) > Duration::ZERO);
    }
}
