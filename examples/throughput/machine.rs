//! CPU accounting from `/proc`: each measured process's CPU time, the whole
//! machine's busy time, and so the CPU that *other* programs used during a
//! run (this box is a shared 2-vCPU VM; a run that shared it with a
//! compiler is not comparable). Linux only; elsewhere
//! every reading is zero and the columns read 0.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on Linux).
const TICK: Duration = Duration::from_millis(10);

/// utime + stime of a `/proc/<pid>/stat` line: all threads, dead ones included.
pub(crate) fn parse_stat_cpu(stat: &str) -> Duration {
    // Fields after the parenthesised command name start at field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    TICK * ticks as u32
}

/// CPU time used so far by process `pid` (zero if it is gone).
pub(crate) fn process_cpu(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| parse_stat_cpu(&s))
        .unwrap_or_default()
}

/// Peak resident memory (`VmHWM`) in MB from a `/proc/<pid>/status` text.
pub(crate) fn parse_peak_rss_mb(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident memory of process `pid` so far, in MB (`None` if gone).
pub(crate) fn peak_rss_mb(pid: u32) -> Option<f64> {
    parse_peak_rss_mb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Busy time of all CPUs (user, nice, system, irq, softirq) from the
/// `cpu` line of `/proc/stat`.
pub(crate) fn parse_machine_busy(proc_stat: &str) -> Duration {
    let Some(line) = proc_stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0usize, 1, 2, 5, 6]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<u64>();
    TICK * busy as u32
}

fn machine_busy() -> Duration {
    std::fs::read_to_string("/proc/stat")
        .map(|s| parse_machine_busy(&s))
        .unwrap_or_default()
}

/// A reading of the machine and of some processes.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    at: Instant,
    busy: Duration,
    procs: Vec<Duration>,
}

impl Sample {
    /// Reads the machine, ourselves (the orchestrator) and `pids`.
    pub(crate) fn take(pids: &[u32]) -> Sample {
        let mut procs: Vec<Duration> = pids.iter().map(|&p| process_cpu(p)).collect();
        procs.push(process_cpu(std::process::id()));
        Sample {
            at: Instant::now(),
            busy: machine_busy(),
            procs,
        }
    }

    /// Seconds since `earlier`.
    pub(crate) fn secs_since(&self, earlier: &Sample) -> f64 {
        self.at.duration_since(earlier.at).as_secs_f64()
    }

    /// Percent of one core each process used since `earlier` (ours last).
    pub(crate) fn cpu_pct_since(&self, earlier: &Sample) -> Vec<f64> {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        self.procs
            .iter()
            .zip(&earlier.procs)
            .map(|(b, a)| 100.0 * b.saturating_sub(*a).as_secs_f64() / secs)
            .collect()
    }

    /// Percent of one core used by everything else since `earlier`.
    pub(crate) fn others_pct_since(&self, earlier: &Sample) -> f64 {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let busy = 100.0 * self.busy.saturating_sub(earlier.busy).as_secs_f64() / secs;
        let ours: f64 = self.cpu_pct_since(earlier).iter().sum();
        (busy - ours).max(0.0)
    }
}

/// Waits until other programs use less than `pct` % of one core over a
/// 300 ms look, for at most `limit`. Returns false if it never got quiet.
pub(crate) fn wait_quiet(pct: f64, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        let a = Sample::take(&[]);
        std::thread::sleep(Duration::from_millis(300));
        if Sample::take(&[]).others_pct_since(&a) < pct {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        // A command name with spaces and parentheses must not shift fields.
        let stat = "123 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20";
        assert_eq!(parse_stat_cpu(stat), Duration::from_secs(3));
        let proc_stat = "cpu  100 5 50 1000 7 3 2 9 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_machine_busy(proc_stat), Duration::from_millis(1600));
        assert_eq!(parse_machine_busy("garbage"), Duration::ZERO);
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_peak_rss_mb(status), Some(2.0));
        assert_eq!(parse_peak_rss_mb("Name: x"), None);
    }

    #[test]
    fn our_own_cpu_is_counted() {
        let a = Sample::take(&[]);
        let mut x = 0u64;
        while a.at.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let b = Sample::take(&[]);
        assert_eq!(b.cpu_pct_since(&a).len(), 1);
        assert!(b.others_pct_since(&a) >= 0.0);
    }
}
