//! Quantities as a person reads them on the console: sizes, rates and durations.

/// `512 B`, `4.1 KiB`, `12.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `0 B/s`, `1.2 MiB/s`.
pub(crate) fn rate(per_second: f64) -> String {
    format!("{}/s", bytes(per_second.max(0.0).round() as u64))
}

/// `340ms`, `12s`, `3m 05s`, `2h 10m`, `3d 4h`: two units at most, as the eye needs.
pub(crate) fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_naturally() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(4200), "4.1 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(rate(1536.0), "1.5 KiB/s");
        assert_eq!(rate(-1.0), "0 B/s");
        assert_eq!(duration_ms(340), "340ms");
        assert_eq!(duration_ms(12_400), "12s");
        assert_eq!(duration_ms(185_000), "3m 05s");
        assert_eq!(duration_ms(7_800_000), "2h 10m");
        assert_eq!(duration_ms(273_600_000), "3d 4h");
    }
}
