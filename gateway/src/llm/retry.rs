//! How long to wait before retrying an LLM request: exponential backoff with jitter, or what the
//! provider asked for in `Retry-After` (delta-seconds or HTTP-date) / `retry-after-ms`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// First backoff step; doubles with each retry.
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff step.
pub(super) const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Longest `Retry-After` the client waits for; beyond it the call fails with `RateLimited` so
/// the conversation hears about it instead of hanging.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The wait before retry number `attempt + 1`: `base × 2^attempt`, capped at [`BACKOFF_CAP`],
/// of which the upper half is random. The jitter spreads out conversations that hit the same
/// rate limit at once, so they do not all come back in the same instant.
pub(super) fn backoff(attempt: u32, base: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    let step = base.saturating_mul(factor).min(BACKOFF_CAP);
    let half = step / 2;
    let span = u64::try_from(half.as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    // Without randomness (getrandom failing is near impossible) the wait is just shorter.
    let jitter = getrandom::u64().unwrap_or(0) % span;
    half + Duration::from_nanos(jitter)
}

/// The wait a response asks for, from `retry-after-ms` or `Retry-After`.
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).min(1e9)));
    }
    let value = text("retry-after")?;
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP/1.1 senders must use.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut parts = s.split_ascii_whitespace();
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || zone != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = u32::try_from(MONTHS.iter().position(|m| *m == month)? + 1).ok()?;
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: i64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86400 + h * 3600 + m * 60 + sec))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        for attempt in 0..40 {
            let step = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(20))
                .min(BACKOFF_CAP);
            let d = backoff(attempt, BACKOFF_BASE);
            assert!(d >= step / 2 && d <= step, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 30);
        let with = |name: &'static str, v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(v));
            retry_after(&h, now)
        };
        assert_eq!(with("retry-after", "1"), Some(Duration::from_secs(1)));
        assert_eq!(
            with("retry-after", " 3600 "),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            with("retry-after-ms", "250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            with("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "now".
        assert_eq!(
            with("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(with("retry-after", "soon"), None);
        assert_eq!(with("retry-after", "-5"), None);
        assert_eq!(with("x-other", "5"), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(
            days_from_civil(1994, 11, 6) * 86400 + 8 * 3600 + 49 * 60 + 37,
            784_111_777
        );
    }
}
