//! Resource use: the generator's own CPU (a generator that saturates its cores measures
//! itself, not the server, and the report must say so) and a server process's memory.

use std::time::Duration;

/// User plus system CPU time this process has used so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The resident memory of process `pid`, from /proc; `None` when it cannot be read.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How many CPUs this process may run on: its affinity mask (`taskset`, a cgroup's cpuset),
/// not the machine's count. The default number of worker threads follows it, so a
/// generator pinned to one core starts one thread.
pub fn allowed_cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it, and CPU_COUNT only reads it.
    let count = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set)
        } else {
            0
        }
    };
    match usize::try_from(count) {
        Ok(count) if count > 0 => count,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}
