//! How much memory and CPU an instance's process uses, read from `/proc`. Best effort: a value
//! the kernel does not offer (or a process that just exited) is reported as unknown.

use std::time::Duration;

/// Resident memory of process `pid`, in bytes (`VmRSS` of `/proc/PID/status`).
pub fn memory_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU time process `pid` has used so far (first field of `/proc/PID/schedstat`, in ns).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_some_memory_and_cpu() {
        let me = std::process::id();
        assert!(memory_bytes(me).is_some_and(|b| b > 0));
        if let Some(cpu) = cpu_time(me) {
            assert!(cpu > Duration::ZERO);
        }
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_usage() {
        assert_eq!(memory_bytes(u32::MAX), None);
        assert_eq!(cpu_time(u32::MAX), None);
    }
}
