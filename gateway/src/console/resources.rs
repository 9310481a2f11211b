//! What a sandbox's processes use right now, read from `/proc`: resident memory and CPU time
//! of the sandbox's whole process tree (bubblewrap and the agent under it, or BoxLite's VM
//! process).

use std::collections::HashMap;

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel reports in `USER_HZ`, which is 100
/// on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// Resource use of a process tree.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TreeUsage {
    /// Processes in the tree.
    pub processes: u32,
    /// Sum of resident set sizes, in bytes.
    pub rss_bytes: u64,
    /// User + system CPU time, in seconds.
    pub cpu_secs: f64,
}

/// One process as `/proc` describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Proc {
    ppid: u32,
    cpu_ticks: u64,
}

/// `ppid` and `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15); index = field - 3.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Proc {
        ppid,
        cpu_ticks: utime.saturating_add(stime),
    })
}

/// `VmRSS` from the text of `/proc/<pid>/status`, in bytes (0 for kernel threads and zombies).
fn parse_rss(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// The usage of `root` and all its descendants; `None` when `root` is gone.
pub fn tree_usage(root: u32) -> Option<TreeUsage> {
    let mut procs: HashMap<u32, Proc> = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we read: a vanished one is simply skipped.
        if let Some(p) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            procs.insert(pid, p);
        }
    }
    procs.get(&root)?;
    let mut tree = vec![root];
    let mut i = 0;
    while let Some(&pid) = tree.get(i) {
        tree.extend(
            procs
                .iter()
                .filter(|(child, p)| p.ppid == pid && **child != pid)
                .map(|(child, _)| *child),
        );
        i += 1;
    }
    let mut usage = TreeUsage {
        processes: 0,
        rss_bytes: 0,
        cpu_secs: 0.0,
    };
    for pid in tree {
        let ticks = procs.get(&pid).map_or(0, |p| p.cpu_ticks);
        let rss =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(0, |s| parse_rss(&s));
        usage.processes += 1;
        usage.rss_bytes = usage.rss_bytes.saturating_add(rss);
        // Tick counts stay far below 2^52, where f64 would start losing precision.
        #[allow(clippy::cast_precision_loss)]
        let secs = ticks as f64 / USER_HZ;
        usage.cpu_secs += secs;
    }
    Some(usage)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "4242 (evil) name (x) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 123 1000 200";
        assert_eq!(
            parse_stat(stat),
            Some(Proc {
                ppid: 17,
                cpu_ticks: 325
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        assert_eq!(parse_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), 2048 * 1024);
        assert_eq!(parse_rss("Name:\tkthreadd\n"), 0);
    }

    #[test]
    fn a_process_tree_is_measured_and_a_dead_one_is_none() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        // The shell starts its two children right away; give it a moment.
        let mut usage = tree_usage(pid).unwrap();
        for _ in 0..100 {
            if usage.processes == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            usage = tree_usage(pid).unwrap();
        }
        assert_eq!(usage.processes, 3, "{usage:?}");
        assert!(usage.rss_bytes > 0, "{usage:?}");
        let group = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
        rustix::process::kill_process_group(group, rustix::process::Signal::KILL).unwrap();
        child.wait().unwrap();
        assert_eq!(tree_usage(pid), None);
    }
}
