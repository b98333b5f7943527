//! RFC 3339 times (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00`) to
//! milliseconds since the epoch. Parsed here rather than with a date crate: the grammar is
//! small and fixed, and nothing else in the tool needs calendars.

/// Parses an RFC 3339 date-time (`T`, `t` or a space between date and time; `Z`, `z` or
/// `±HH:MM` offset; any number of fraction digits, truncated to milliseconds).
pub fn parse_ms(s: &str) -> Result<i64, String> {
    parse(s.trim())
        .ok_or_else(|| format!("invalid RFC 3339 time {s:?} (expected e.g. 2024-05-01T12:00:00Z)"))
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<i64> {
    let part = s.get(at..at + n)?;
    part.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn expect(s: &[u8], at: usize, allowed: &[u8]) -> Option<()> {
    allowed.contains(s.get(at)?).then_some(())
}

fn parse(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    expect(b, 4, b"-")?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b"-")?;
    let day = digits(b, 8, 2)?;
    expect(b, 10, b"Tt ")?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b":")?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b":")?;
    let second = digits(b, 17, 2)?;
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match b.get(at)? {
        b'Z' | b'z' => {
            at += 1;
            0
        }
        &sign @ (b'+' | b'-') => {
            let h = digits(b, at + 1, 2)?;
            expect(b, at + 3, b":")?;
            let m = digits(b, at + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            at += 6;
            if sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    if at != b.len() {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_ms("1970-01-01T00:00:02.5Z"), Ok(2500));
        assert_eq!(parse_ms("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_ms("2024-05-01t14:00:00+02:00"), Ok(1_714_564_800_000));
        assert_eq!(
            parse_ms("2024-05-01 11:30:00.123456-00:30"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(parse_ms("2000-02-29T23:59:59.999z"), Ok(951_868_799_999));
        assert_eq!(parse_ms("1969-12-31T23:59:59Z"), Ok(-1000));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00Zjunk",
            "yesterday",
        ] {
            let e = parse_ms(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }
}
