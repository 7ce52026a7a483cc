//! CPU time and resident memory of a process, read from Linux's `/proc`.
//!
//! Used for the server (`--server-pid`) and for the load generator itself, sampled at the
//! start and end of the measured window so that a reader can compare the two.

use std::time::Instant;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// User plus system CPU time since the process started, seconds.
    pub cpu_s: f64,
    /// Resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
}

/// Which process to read: a pid, or `self`.
#[derive(Debug, Clone, Copy)]
pub enum Proc {
    Pid(u32),
    Current,
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}"),
            Proc::Current => "/proc/self".to_string(),
        }
    }

    /// Reads CPU time and RSS now; `Err` with a message when the process is gone or `/proc`
    /// is not there (not Linux).
    pub fn sample(self) -> Result<ProcSample, String> {
        let dir = self.dir();
        let stat = std::fs::read_to_string(format!("{dir}/stat"))
            .map_err(|e| format!("cannot read {dir}/stat: {e}"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))
            .map_err(|e| format!("cannot read {dir}/status: {e}"))?;
        let ticks = cpu_ticks(&stat).ok_or_else(|| format!("{dir}/stat: unexpected format"))?;
        let rss_kib = vm_rss_kib(&status).ok_or_else(|| format!("{dir}/status: no VmRSS"))?;
        Ok(ProcSample {
            at: Instant::now(),
            cpu_s: ticks as f64 / clock_ticks_per_second(),
            rss_kib,
        })
    }
}

/// CPU used between two samples, as a percentage of one core (200 = two cores busy).
pub fn cpu_percent(start: &ProcSample, end: &ProcSample) -> Option<f64> {
    let wall = end.at.checked_duration_since(start.at)?.as_secs_f64();
    (wall > 0.0).then(|| (end.cpu_s - start.cpu_s).max(0.0) / wall * 100.0)
}

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may contain spaces or `)`, so fields are
/// counted from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): utime is field 14, i.e. index 11 here.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of a `/proc/<pid>/status` file, KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Clock ticks per second (`CLK_TCK`), the unit of the CPU times in `/proc/<pid>/stat`.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces_and_parens() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 3 0 99 1000 200";
        assert_eq!(cpu_ticks(line), Some(1234 + 567));
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tvoxrt\nVmPeak:\t  9000 kB\nVmRSS:\t   13612 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(13612));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_test_process() {
        let pid = std::process::id();
        let a = Proc::Pid(pid).sample().expect("own /proc entry");
        // Burn a little CPU so the second reading cannot be lower.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = Proc::Current.sample().expect("/proc/self");
        assert!(a.rss_kib > 0);
        assert!(b.cpu_s >= a.cpu_s);
        assert!(cpu_percent(&a, &b).is_some_and(|p| p >= 0.0));
    }
}
