//! Memory figures of this process from `/proc/self/status` (Linux): the current resident set
//! (for the stats topic) and its high-water mark (for `glimpse bench`). `None` off Linux.

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, field)
}

/// Reads `FIELD:   1234 kB` from the text of a `/proc/<pid>/status` file.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Current resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS").map(|kib| kib * 1024)
}

/// Peak resident set size in bytes since the process started.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM").map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let text = "Name:\tglimpse\nVmHWM:\t  20480 kB\nVmRSS:\t   1024 kB\n";
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn reads_this_process() {
        let rss = rss_bytes().expect("/proc/self/status must be readable on Linux");
        assert!(rss > 0);
        assert!(peak_rss_bytes().unwrap() >= rss);
    }
}
