//! Parsing of human-sized flags: SIZE (`10GiB`, `500MB`, `4096`), RATE (SIZE with optional `/s`)
//! and durations (`500ms`, `2s`, `1m`).

use std::time::Duration;

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(format!("`{s}` is not a size; use bytes or a unit such as 500MB, 10GiB")),
    };
    let bad = || format!("`{s}` is not a size; use bytes or a unit such as 500MB, 10GiB");
    if num.is_empty() {
        return Err(bad());
    }
    let value = if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let v = f * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(bad());
        }
        v.round() as u64
    } else {
        num.parse::<u64>().map_err(|_| bad())?.checked_mul(mult).ok_or_else(bad)?
    };
    Ok(value)
}

pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    parse_size(t.strip_suffix("/s").unwrap_or(t)).map_err(|_| format!("`{s}` is not a rate; use bytes per second such as 100MB/s or 1GiB/s"))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    match parse_duration_or_zero(s)? {
        d if d.is_zero() => Err(format!("`{s}` must be longer than zero")),
        d => Ok(d),
    }
}

/// A duration where `0s` means "off" (e.g. `--probation 0s`).
pub(crate) fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration; use e.g. 500ms, 5s, 2m, 1h");
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (t, 1000)
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let ms = n.checked_mul(mult).ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// A byte count for people: `512 B`, `1.0 KiB`, `45.2 MiB`, `1.0 GiB` (binary units).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds since the Unix epoch as a UTC time, `2026-12-01 21:44:38Z`.
pub(crate) fn utc_time(secs: u64) -> String {
    let (year, month, day, h, m, s) = odi_core::time::UnixTime(secs).civil();
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_size("1mib"), Ok(1 << 20));
        for bad in ["", "GiB", "ten", "-1", "1 PB", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("100MB/s"), Ok(100_000_000));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn sizes_and_times_for_people() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size((45 << 20) + (1 << 20) / 5), "45.2 MiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
        assert_eq!(human_size((1 << 30) - 1), "1.0 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc_time(1_796_161_478), "2026-12-01 21:44:38Z");
    }
}
