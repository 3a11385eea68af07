//! UTC time stamps for file names and log records (no time-zone database,
//! no dependency).

use std::time::{SystemTime, UNIX_EPOCH};

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day, hour, minute, second) in UTC.
fn utc_fields(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    (
        y,
        mo,
        d,
        (t / 3600) as u32,
        (t / 60 % 60) as u32,
        (t % 60) as u32,
    )
}

/// `20260501T120000Z`: compact UTC time stamp for file names.
pub fn file_stamp(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `2026-05-01T12:00:00.123Z`: RFC 3339 UTC time for log records.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, dd, h, mi, s) = utc_fields(d.as_secs() as i64);
    format!(
        "{y:04}-{mo:02}-{dd:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps() {
        assert_eq!(file_stamp(0), "19700101T000000Z");
        assert_eq!(file_stamp(951_782_400), "20000229T000000Z"); // leap day
        assert_eq!(file_stamp(1_763_712_000 + 3_723), "20251121T090203Z");
        assert_eq!(file_stamp(4_102_444_799), "20991231T235959Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_763_712_000_123)),
            "2025-11-21T08:00:00.123Z"
        );
    }
}
