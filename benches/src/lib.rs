//! The in-process benches' shared parts: a [`scale::Fleet`] (one `Directory` machine driven through
//! its public API with many artifacts and relays, no sockets and no disk), used by the
//! `odi-directory-scale` binary and the criterion bench `benches/redirect.rs`, and the machine line
//! every bench prints.

pub mod scale;

/// `nproc`, the CPU model and the kernel, as one line.
pub fn machine_line() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".into(), |k| k.trim().to_owned());
    format!("machine: nproc {nproc}, cpu {cpu}, kernel {kernel}")
}

/// This process's resident set (`VmRSS` in /proc/self/status), in bytes; 0 if unreadable.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes a MaxMind database (GeoLite2-Country layout) placing all of 127.0.0.0/8 in `country`
/// and `continent`, for a meta-directory benchmarked over loopback.
pub fn write_loopback_geoip(path: &std::path::Path, country: &str, continent: &str) -> std::io::Result<()> {
    use std::collections::BTreeMap;

    use mmdb_writer::Value;
    let code = |k: &str, v: &str| Value::Map(BTreeMap::from([(k.to_owned(), Value::from(v))]));
    let record = Value::Map(BTreeMap::from([("country".to_owned(), code("iso_code", country)), ("continent".to_owned(), code("code", continent))]));
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    let invalid = |e: mmdb_writer::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    w.insert_range([127, 0, 0, 0].into(), [127, 255, 255, 255].into(), &record).map_err(invalid)?;
    std::fs::write(path, w.to_bytes().map_err(invalid)?)
}
