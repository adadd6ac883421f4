//! The period a report or an overview covers: `from` and `to` as RFC 3339 instants, dates
//! (`2026-11-30`: a `to` date includes its whole day), or relative to now (`now`, `-7d`, `-12h`,
//! `-2w`, `-1m`, `-1y`), as schedules use them.

use chrono::{DateTime, Duration, Months, NaiveDate, Utc};

use agentdesk_agent_sdk::core::Error;

/// The default period: the 30 days up to now.
pub const DEFAULT_DAYS: i64 = 30;

/// The longest period an overview or a report may cover, in days (about 20 years).
pub const MAX_DAYS: i64 = 366 * 20;

/// `[from, to)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
}

impl Period {
    /// Resolves the raw `from` and `to` against `now`; errors name the field.
    pub fn resolve(
        from: Option<&str>,
        to: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, Error> {
        let to = match to.map(str::trim).filter(|s| !s.is_empty()) {
            Some(raw) => instant(raw, now, true).map_err(|m| Error::invalid("to", m))?,
            None => now,
        };
        let from = match from.map(str::trim).filter(|s| !s.is_empty()) {
            Some(raw) => instant(raw, now, false).map_err(|m| Error::invalid("from", m))?,
            None => to - Duration::days(DEFAULT_DAYS),
        };
        if from > to {
            return Err(Error::invalid("from", "must not be after `to`"));
        }
        if to - from > Duration::days(MAX_DAYS) {
            return Err(Error::invalid(
                "from",
                format!("the period may span at most {MAX_DAYS} days"),
            ));
        }
        Ok(Self { from, to })
    }
}

/// One bound. A date means its midnight (UTC), or the next midnight for an `end` bound, so
/// that `to=2026-11-30` includes the 30th.
pub fn instant(raw: &str, now: DateTime<Utc>, end: bool) -> Result<DateTime<Utc>, String> {
    if raw == "now" {
        return Ok(now);
    }
    if let Some(rest) = raw.strip_prefix('-') {
        return relative(rest, now).ok_or_else(|| {
            format!("`{raw}` is not a relative time: use -<n>h, -<n>d, -<n>w, -<n>m or -<n>y")
        });
    }
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        let day = date
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| format!("`{raw}` is not a date"))?;
        return Ok(if end { day + Duration::days(1) } else { day });
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!("`{raw}` is neither a date (2026-11-30), an RFC 3339 time, `now` nor a relative time (-7d)")
        })
}

fn relative(rest: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let unit = rest.chars().last()?;
    let n: u32 = rest[..rest.len() - unit.len_utf8()].parse().ok()?;
    // Bounded so that no arithmetic below can overflow.
    if n > 100_000 {
        return None;
    }
    match unit {
        'h' => now.checked_sub_signed(Duration::hours(n.into())),
        'd' => now.checked_sub_signed(Duration::days(n.into())),
        'w' => now.checked_sub_signed(Duration::weeks(n.into())),
        'm' => now.checked_sub_months(Months::new(n)),
        'y' => now.checked_sub_months(Months::new(n.checked_mul(12)?)),
        _ => None,
    }
}

/// Whether `raw` is a bound [`instant`] accepts (schedules check theirs when created).
pub fn valid_bound(raw: &str) -> bool {
    instant(raw, Utc::now(), false).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn dates_relative_times_and_instants() {
        let now = at("2026-03-31T12:00:00Z");
        let p = Period::resolve(Some("2026-03-01"), Some("2026-03-30"), now).unwrap();
        assert_eq!(p.from, at("2026-03-01T00:00:00Z"));
        assert_eq!(
            p.to,
            at("2026-03-31T00:00:00Z"),
            "a `to` date includes its day"
        );
        let p = Period::resolve(Some("-7d"), Some("now"), now).unwrap();
        assert_eq!(p.from, at("2026-03-24T12:00:00Z"));
        assert_eq!(p.to, now);
        let p = Period::resolve(Some("-1m"), None, now).unwrap();
        assert_eq!(
            p.from,
            at("2026-02-28T12:00:00Z"),
            "a month back from the 31st"
        );
        let p = Period::resolve(Some("2026-03-01T10:00:00+02:00"), None, now).unwrap();
        assert_eq!(p.from, at("2026-03-01T08:00:00Z"));
        let p = Period::resolve(None, None, now).unwrap();
        assert_eq!(p.to - p.from, Duration::days(DEFAULT_DAYS));
        assert_eq!(
            Period::resolve(Some("-2w"), Some("-1w"), now).unwrap().from,
            at("2026-03-17T12:00:00Z")
        );
        assert!(Period::resolve(Some("-1y"), None, now).is_ok());
    }

    #[test]
    fn bad_bounds_name_their_field() {
        let now = Utc::now();
        for (from, to, field) in [
            (Some("2026-13-01"), None, "from"),
            (None, Some("yesterday"), "to"),
            (Some("-7x"), None, "from"),
            (Some("-d"), None, "from"),
            (Some("-99999999999d"), None, "from"),
            (Some("2026-02-01"), Some("2026-01-01"), "from"),
            (Some("1900-01-01"), Some("2026-01-01"), "from"),
        ] {
            let e = Period::resolve(from, to, now).unwrap_err();
            assert!(
                matches!(&e, Error::Validation(errors) if errors[0].field == field),
                "{from:?} {to:?}: {e:?}"
            );
        }
    }
}
