//! What `rewind --to` and `restore-site --to` accept: an RFC 3339 time, a time relative to
//! now ("10 minutes ago"), `before-event:ID`, or `latest`. Pure: the caller passes `now`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A moment to restore, as the owner named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum TimeSpec {
    /// This moment (UTC).
    At {
        #[serde(with = "time::serde::rfc3339")]
        time: OffsetDateTime,
    },
    /// Just before the event with this id (`lifeboat events` / `lifeboat timeline`).
    BeforeEvent { id: u64 },
    /// Everything captured.
    Latest,
}

const HELP: &str = "write an RFC 3339 time like 2026-11-27T10:15:00Z, a relative one like \
\"10 minutes ago\" or \"2h ago\", before-event:ID (ids from `lifeboat timeline`), or latest";

/// Reads a time spec; errors name the input and the accepted forms.
pub fn parse_time_spec(input: &str, now: OffsetDateTime) -> Result<TimeSpec, String> {
    let text = input.trim();
    let bad = |why: &str| format!("cannot read the time {input:?}: {why}; {HELP}");
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.eq_ignore_ascii_case("latest") || text.eq_ignore_ascii_case("now") {
        return Ok(TimeSpec::Latest);
    }
    if let Some(id) = text.strip_prefix("before-event:") {
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad("the event id is not a number"))?;
        return Ok(TimeSpec::BeforeEvent { id });
    }
    if let Some(ago) = text.strip_suffix("ago") {
        let compact: String = ago.split_whitespace().collect();
        if compact.is_empty() {
            return Err(bad("say how long ago"));
        }
        let d: Duration = humantime::parse_duration(&compact)
            .map_err(|e| bad(&format!("the duration is not understood ({e})")))?;
        let d = time::Duration::try_from(d).map_err(|_| bad("the duration is too long"))?;
        return now
            .checked_sub(d)
            .map(|time| TimeSpec::At { time })
            .ok_or_else(|| bad("the duration is too long"));
    }
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| bad("it is not a time this command understands (a time zone such as Z or +02:00 is required)"))?;
    Ok(TimeSpec::At {
        time: time.to_offset(time::UtcOffset::UTC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-27 12:00:00 UTC);

    #[test]
    fn absolute_times_with_a_zone_are_read_as_utc() {
        assert_eq!(
            parse_time_spec("2026-11-27T10:15:00Z", NOW),
            Ok(TimeSpec::At {
                time: datetime!(2026-11-27 10:15:00 UTC)
            })
        );
        assert_eq!(
            parse_time_spec("2026-11-27T12:15:00.5+02:00", NOW),
            Ok(TimeSpec::At {
                time: datetime!(2026-11-27 10:15:00.5 UTC)
            })
        );
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let at = |s| match parse_time_spec(s, NOW).unwrap() {
            TimeSpec::At { time } => time,
            other => panic!("{other:?}"),
        };
        assert_eq!(at("10 minutes ago"), datetime!(2026-11-27 11:50:00 UTC));
        assert_eq!(at("2h ago"), datetime!(2026-11-27 10:00:00 UTC));
        assert_eq!(
            at("1 hour 30 minutes ago"),
            datetime!(2026-11-27 10:30:00 UTC)
        );
        assert_eq!(at(" 90s ago "), datetime!(2026-11-27 11:58:30 UTC));
    }

    #[test]
    fn events_and_latest() {
        assert_eq!(
            parse_time_spec("before-event:42", NOW),
            Ok(TimeSpec::BeforeEvent { id: 42 })
        );
        assert_eq!(parse_time_spec("latest", NOW), Ok(TimeSpec::Latest));
    }

    #[test]
    fn malformed_times_say_what_is_accepted() {
        for bad in [
            "",
            "yesterday-ish",
            "2026-11-27 10:15",
            "2026-11-27T10:15:00",
            "ten minutes ago",
            "ago",
            "before-event:x",
        ] {
            let err = parse_time_spec(bad, NOW).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
