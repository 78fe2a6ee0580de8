//! Cron schedules: the five-field `minute hour day-of-month month day-of-week` syntax of Vixie
//! cron and POSIX `crontab`, and when a schedule next runs in a given time zone.
//!
//! A [`Schedule`] is parsed once ([`Schedule::parse`]) and kept as one small bitset per field, so
//! matching a date or a time is a bit test. [`Schedule::next_after`] walks local calendar days in
//! the schedule's time zone, skipping months and days that cannot match, so finding the next run
//! costs a few hundred cheap steps at most, never a scan minute by minute. Time zones come from the
//! IANA database bundled into the binary ([`time_zone`]), so no system tzdata is needed.
//!
//! Daylight-saving changes follow jiff's "compatible" rule (as RFC 5545 and `java.time` do): a
//! local time skipped by a spring-forward gap runs at the instant it maps to after the gap, and a
//! local time repeated by an autumn fold runs once, at its first occurrence.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};

/// The longest schedule text accepted, in bytes: far more than any real schedule needs, and it
/// bounds the work and the error messages that a hostile text can cause.
const MAX_TEXT_LEN: usize = 256;

/// How far ahead [`Schedule::next_after`] looks, in years: every schedule that can run at all runs
/// within that window, one naming only the 29th of February too (but for the eight years around
/// 2100, which is not a leap year).
const HORIZON_YEARS: i64 = 5;

/// How far back [`Schedule::next_after`] looks for a spring-forward gap whose skipped local times
/// map to instants after the time asked about. Real gaps last at most a day.
const GAP_LOOKBACK: SignedDuration = SignedDuration::from_hours(48);

/// A parsed five-field cron schedule: minute hour day-of-month month day-of-week.
///
/// Each field is a bitset of the values it matches (bit `n` set for value `n`; Sunday is 0 in the
/// day-of-week set). Two schedules are equal when their fields name the same values and the same
/// day fields start with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Minutes 0-59.
    minutes: u64,
    /// Hours 0-23.
    hours: u64,
    /// Days of the month 1-31.
    days: u64,
    /// Months 1-12.
    months: u64,
    /// Days of the week 0-6, Sunday first.
    weekdays: u64,
    /// Whether the day-of-month field starts with `*`: cron then requires both day fields to
    /// match, rather than either.
    days_star: bool,
    /// Whether the day-of-week field starts with `*` (see `days_star`).
    weekdays_star: bool,
}

/// Why a schedule or a time zone name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule text is not a valid five-field cron schedule.
    #[error("schedule {text:?}: {reason}")]
    Invalid {
        /// The text refused (shortened when it is too long to be a schedule).
        text: String,
        /// What is wrong with it, naming the field at fault.
        reason: String,
    },
    /// The name is not a time zone of the bundled IANA database.
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Paris or UTC")]
    TimeZone(String),
}

/// One of the five fields: its name (for error messages), its range and its value names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names of the values `min`, `min + 1`, …, matched without regard to case.
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};

const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};

const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};

const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};

/// 7 is Sunday as well as 0, as in Vixie cron.
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Schedule {
    /// Parses e.g. "*/5 * * * *", "0 8-18 * * mon-fri", "30 2 1,15 * *", "0 0 * jan,jul sun".
    ///
    /// The text is five fields separated by ASCII whitespace: minute (0-59), hour (0-23),
    /// day-of-month (1-31), month (1-12 or `jan`-`dec`) and day-of-week (0-7, 0 and 7 both
    /// Sunday, or `sun`-`sat`); names are matched without regard to case. Each field is a
    /// comma-separated list of items, each `*`, a value `a` or a range `a-b`, optionally
    /// followed by a step `/n` (n from 1 to the field's largest value): `*/n` and `a-b/n` take
    /// every n-th value of the range, `a/n` every n-th value from `a` to the field's largest.
    ///
    /// When both day fields are restricted (neither starts with `*`) a day matches when either
    /// does, as in Vixie cron: "0 0 1 * mon" runs on the 1st and on every Monday.
    ///
    /// Macros such as `@hourly`, a seconds field and the extensions `?`, `L`, `W` and `#` are
    /// refused, as is any text longer than 256 bytes.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let invalid = |reason: String| ScheduleError::Invalid {
            text: text.to_owned(),
            reason,
        };
        if text.len() > MAX_TEXT_LEN {
            return Err(ScheduleError::Invalid {
                text: text.chars().take(32).chain(['…']).collect(),
                reason: format!("is {} bytes long, more than {MAX_TEXT_LEN}", text.len()),
            });
        }
        let fields: Vec<&str> = text.split_ascii_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(invalid(format!(
                "has {} fields, not the 5 of \"minute hour day-of-month month day-of-week\"",
                fields.len()
            )));
        };
        let weekdays = DAY_OF_WEEK.parse(weekday).map_err(&invalid)?;
        Ok(Self {
            minutes: MINUTE.parse(minute).map_err(&invalid)?,
            hours: HOUR.parse(hour).map_err(&invalid)?,
            days: DAY_OF_MONTH.parse(day).map_err(&invalid)?,
            months: MONTH.parse(month).map_err(&invalid)?,
            // Fold 7 (Sunday) onto 0 so a date's weekday is tested with one bit.
            weekdays: (weekdays | weekdays >> 7) & 0x7f,
            days_star: day.starts_with('*'),
            weekdays_star: weekday.starts_with('*'),
        })
    }

    /// The first scheduled minute strictly after `after_ms` (Unix milliseconds), read in time
    /// zone `zone`, as Unix milliseconds (always a whole minute); None when none falls within the
    /// next 5 years (e.g. "0 0 30 2 *").
    ///
    /// The scheduled local times are turned into instants with jiff's compatible rule: one in a
    /// spring-forward gap runs at the instant it maps to after the gap (02:30 on a day clocks go
    /// from 02:00 to 03:00 runs at 03:30), one in an autumn fold runs once, at its first
    /// occurrence. The result is a whole minute of local time, hence of UTC too, except in the
    /// few zones whose offset once had seconds (e.g. Africa/Monrovia before 1972). None is also
    /// the answer for instants at the end of what jiff represents (around the year 9999).
    pub fn next_after(&self, after_ms: u64, zone: &TimeZone) -> Option<u64> {
        let after = Timestamp::from_millisecond(i64::try_from(after_ms).ok()?).ok()?;
        let earliest = earliest_local(after, zone);
        let horizon = Span::new().years(HORIZON_YEARS);
        let last_day = zone.to_datetime(after).date().saturating_add(horizon);

        // The best instant found so far, and the local time it reads as. In local order, the
        // scheduled times map to increasing instants, except within a spring-forward gap: a
        // skipped time maps past the gap, beyond later local times just after it. So the walk
        // goes on past the first instant found while local times may still map to earlier ones,
        // that is up to the local time that instant reads as.
        let mut best: Option<(Timestamp, DateTime)> = None;
        let mut day = earliest.date();
        while day <= last_day {
            if best.is_some_and(|(_, bound)| day > bound.date()) {
                break;
            }
            if !self.month_matches(day) {
                match day.last_of_month().tomorrow() {
                    Ok(next) => day = next,
                    Err(_) => break,
                }
                continue;
            }
            if self.day_matches(day) {
                for time in self.times_from(day, earliest) {
                    let local = DateTime::from_parts(day, time);
                    if let Some((instant, bound)) = best
                        && local > bound
                    {
                        return millis(instant);
                    }
                    let Ok(instant) = zone.to_ambiguous_timestamp(local).compatible() else {
                        continue;
                    };
                    if instant <= after {
                        continue;
                    }
                    best = match best {
                        None => Some((instant, zone.to_datetime(instant))),
                        Some((found, bound)) => Some((found.min(instant), bound)),
                    };
                }
            }
            match day.tomorrow() {
                Ok(next) => day = next,
                Err(_) => break,
            }
        }
        best.and_then(|(instant, _)| millis(instant))
    }

    /// Whether the schedule runs in `date`'s month.
    fn month_matches(&self, date: Date) -> bool {
        has(self.months, date.month())
    }

    /// Whether the schedule runs on `date`, by its day of the month and day of the week: both
    /// must match, or either one when both fields are restricted (cron's long-standing rule).
    fn day_matches(&self, date: Date) -> bool {
        let by_day = has(self.days, date.day());
        let by_weekday = has(self.weekdays, date.weekday().to_sunday_zero_offset());
        if self.days_star || self.weekdays_star {
            by_day && by_weekday
        } else {
            by_day || by_weekday
        }
    }

    /// The scheduled times of day on `day`, in order, leaving out those before `earliest` (which
    /// can be on `day` only for the first day walked).
    fn times_from(&self, day: Date, earliest: DateTime) -> impl Iterator<Item = Time> {
        let (first_hour, first_minute) = if day == earliest.date() {
            (earliest.hour(), earliest.minute())
        } else {
            (0, 0)
        };
        let minutes = self.minutes;
        members(self.hours & from(first_hour)).flat_map(move |hour| {
            let minutes = if hour == first_hour {
                minutes & from(first_minute)
            } else {
                minutes
            };
            members(minutes).filter_map(move |minute| Time::new(hour, minute, 0, 0).ok())
        })
    }
}

impl Field {
    /// The set of values `text` (one field of a schedule) names, or why it is invalid.
    fn parse(&self, text: &str) -> Result<u64, String> {
        text.split(',').try_fold(0, |set, item| {
            self.parse_item(item)
                .map(|values| set | values)
                .map_err(|why| format!("{} field {text:?}: {why}", self.name))
        })
    }

    /// The set of values one list item names: `*`, `a` or `a-b`, optionally followed by `/n`.
    fn parse_item(&self, item: &str) -> Result<u64, String> {
        if item.is_empty() {
            return Err("a list item is empty".to_owned());
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(self.parse_step(step)?)),
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (self.min, self.max)
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) = (self.parse_value(low)?, self.parse_value(high)?);
            if low > high {
                return Err(format!("range {range:?} runs backwards"));
            }
            (low, high)
        } else {
            let value = self.parse_value(range)?;
            (value, if step.is_some() { self.max } else { value })
        };
        Ok((low..=high)
            .step_by(step.unwrap_or(1))
            .fold(0, |set, value| set | 1 << value))
    }

    /// A value: a decimal number within the field's range, or one of its names.
    fn parse_value(&self, text: &str) -> Result<u32, String> {
        let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse().ok()
        } else {
            self.names
                .iter()
                .zip(self.min..)
                .find_map(|(name, value)| name.eq_ignore_ascii_case(text).then_some(value))
        };
        match value {
            Some(value) if (self.min..=self.max).contains(&value) => Ok(value),
            _ if self.names.is_empty() => Err(format!(
                "{text:?} is not a number from {} to {}",
                self.min, self.max
            )),
            _ => Err(format!(
                "{text:?} is not a number from {} to {} nor a name from {} to {}",
                self.min,
                self.max,
                self.names.first().unwrap_or(&""),
                self.names.last().unwrap_or(&""),
            )),
        }
    }

    /// A step: a decimal number from 1 to the field's largest value.
    fn parse_step(&self, text: &str) -> Result<usize, String> {
        let step = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<u32>().ok()
        } else {
            None
        };
        match step {
            Some(step) if (1..=self.max).contains(&step) => {
                usize::try_from(step).map_err(|_| format!("step {text:?} is too large"))
            }
            _ => Err(format!(
                "step {text:?} is not a number from 1 to {}",
                self.max
            )),
        }
    }
}

/// The time zone named `name` (IANA, e.g. "Europe/Paris", or "UTC"), from the bundled database.
///
/// Names are matched without regard to case, as the database does.
pub fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    jiff::tz::db()
        .get(name)
        .map_err(|_| ScheduleError::TimeZone(name.to_owned()))
}

/// The earliest local time in `zone` whose instant (by the compatible rule) can be after `after`.
///
/// That is `after`'s own local time, unless a spring-forward gap ended shortly before or at
/// `after` with skipped local times that map to instants after it: then the start of that gap,
/// which may even be on the previous day.
fn earliest_local(after: Timestamp, zone: &TimeZone) -> DateTime {
    let own = zone.to_datetime(after);
    // Transitions strictly before the probe: those at `after` itself included.
    let probe = after
        .checked_add(SignedDuration::from_nanos(1))
        .unwrap_or(after);
    let window = after.checked_sub(GAP_LOOKBACK).unwrap_or(Timestamp::MIN);
    zone.preceding(probe)
        .take_while(|transition| transition.timestamp() > window)
        .filter_map(|transition| {
            let at = transition.timestamp();
            let before = zone.to_offset(at.checked_sub(SignedDuration::from_nanos(1)).ok()?);
            let gap = transition.offset().duration_since(before);
            let gap_end = at.checked_add(gap).ok()?;
            (gap.is_positive() && gap_end > after).then(|| before.to_datetime(at))
        })
        .fold(own, DateTime::min)
}

/// Whether bit `value` is set in `set` (false for values outside 0-63).
fn has(set: u64, value: i8) -> bool {
    u32::try_from(value)
        .ok()
        .and_then(|bit| set.checked_shr(bit))
        .is_some_and(|rest| rest & 1 == 1)
}

/// The set of the values from `first` (0-63) upwards.
fn from(first: i8) -> u64 {
    u32::try_from(first)
        .ok()
        .and_then(|bit| u64::MAX.checked_shl(bit))
        .unwrap_or(0)
}

/// The values whose bits are set in `set`, smallest first.
fn members(mut set: u64) -> impl Iterator<Item = i8> {
    std::iter::from_fn(move || {
        while set != 0 {
            let bit = set.trailing_zeros();
            set &= set - 1;
            if let Ok(value) = i8::try_from(bit) {
                return Some(value);
            }
        }
        None
    })
}

/// `instant` as Unix milliseconds, when it is not before 1970.
fn millis(instant: Timestamp) -> Option<u64> {
    u64::try_from(instant.as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set of `values`.
    fn set(values: impl IntoIterator<Item = u32>) -> u64 {
        values.into_iter().fold(0, |set, value| set | 1 << value)
    }

    fn parse(text: &str) -> Schedule {
        Schedule::parse(text).unwrap_or_else(|e| panic!("{text:?} parses: {e}"))
    }

    fn zone(name: &str) -> TimeZone {
        time_zone(name).expect("a known time zone")
    }

    /// Unix milliseconds of an RFC 3339 timestamp.
    fn ms(text: &str) -> u64 {
        let instant: Timestamp = text.parse().expect("a timestamp");
        u64::try_from(instant.as_millisecond()).expect("after 1970")
    }

    /// The RFC 3339 form (in UTC) of Unix milliseconds, for readable failures.
    fn utc(ms: Option<u64>) -> Option<String> {
        let ms = i64::try_from(ms?).expect("in range");
        Some(
            Timestamp::from_millisecond(ms)
                .expect("in range")
                .to_string(),
        )
    }

    /// When `schedule` next runs after `after`, both in RFC 3339 form.
    fn next(schedule: &str, zone_name: &str, after: &str) -> Option<String> {
        utc(parse(schedule).next_after(ms(after), &zone(zone_name)))
    }

    /// The successive runs of `schedule` after `after`, `count` of them at most.
    fn runs(schedule: &str, zone_name: &str, after: &str, count: usize) -> Vec<String> {
        let (schedule, zone) = (parse(schedule), zone(zone_name));
        std::iter::successors(schedule.next_after(ms(after), &zone), |&run| {
            schedule.next_after(run, &zone)
        })
        .take(count)
        .filter_map(|run| utc(Some(run)))
        .collect()
    }

    #[test]
    fn parses_each_syntax_form() {
        let every = parse("* * * * *");
        assert_eq!(every.minutes, set(0..=59));
        assert_eq!(every.hours, set(0..=23));
        assert_eq!(every.days, set(1..=31));
        assert_eq!(every.months, set(1..=12));
        assert_eq!(every.weekdays, set(0..=6));
        assert!(every.days_star && every.weekdays_star);

        assert_eq!(parse("*/5 * * * *").minutes, set((0..60).step_by(5)));
        assert_eq!(parse("7 * * * *").minutes, set([7]));
        assert_eq!(parse("* 8-18 * * *").hours, set(8..=18));
        assert_eq!(parse("* * 1,15,20-22 * *").days, set([1, 15, 20, 21, 22]));
        assert_eq!(parse("* 1-10/3 * * *").hours, set([1, 4, 7, 10]));
        assert_eq!(parse("10/20 * * * *").minutes, set([10, 30, 50]));
        assert_eq!(parse("* * */10 * *").days, set([1, 11, 21, 31]));
        assert_eq!(parse("0,*/30,05 * * * *").minutes, set([0, 5, 30]));
        assert_eq!(parse("* * * */4 *").months, set([1, 5, 9]));

        // Names, in any case, alone, in lists and ranges, and with steps.
        assert_eq!(parse("0 0 * jan,JUL *").months, set([1, 7]));
        assert_eq!(parse("0 0 * Mar-May *").months, set(3..=5));
        assert_eq!(parse("0 0 * * mon-fri").weekdays, set(1..=5));
        assert_eq!(parse("0 0 * * SUN,sat").weekdays, set([0, 6]));
        // `a/n` runs to the field's largest value, 7 (Sunday) for days of the week.
        assert_eq!(parse("0 0 * * mon/2").weekdays, set([0, 1, 3, 5]));
        assert_eq!(parse("0 0 * * tue/2").weekdays, set([2, 4, 6]));
        assert_eq!(parse("0 0 * jan,jul sun"), parse("0 0 * 1,7 0"));

        // 7 is Sunday too.
        assert_eq!(parse("0 0 * * 7"), parse("0 0 * * 0"));
        assert_eq!(parse("0 0 * * 5-7").weekdays, set([0, 5, 6]));
        assert_eq!(parse("0 0 * * 0-7").weekdays, set(0..=6));

        // Any ASCII whitespace separates fields.
        assert_eq!(parse(" 30\t2  1,15 *\n* "), parse("30 2 1,15 * *"));

        // A day field is restricted unless it starts with `*`.
        let restricted = parse("0 0 1 * mon");
        assert!(!restricted.days_star && !restricted.weekdays_star);
        let stepped = parse("0 0 */2 * mon");
        assert!(stepped.days_star && !stepped.weekdays_star);
        assert_ne!(parse("0 0 * * mon"), parse("0 0 1-31 * mon"));
    }

    #[test]
    fn refuses_invalid_schedules() {
        for text in [
            // The number of fields.
            "",
            "   ",
            "* * * *",
            "* * * * * *",
            "0 * * * * 2026",
            // Values out of range.
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 0 *",
            "* * * 13 *",
            "* * * * 8",
            "0-60 * * * *",
            "99999999999999999999 * * * *",
            // Backward ranges, bad steps.
            "5-1 * * * *",
            "0 0 * * sat-sun",
            "0 0 * dec-jan *",
            "*/0 * * * *",
            "1-10/0 * * * *",
            "*/60 * * * *",
            "0 */24 * * *",
            "*/ * * * *",
            "/5 * * * *",
            "*/5/5 * * * *",
            "*/-1 * * * *",
            "*/x * * * *",
            "*/99999999999999999999 * * * *",
            // Empty list items.
            "1,,2 * * * *",
            "1, * * * *",
            ",1 * * * *",
            "0 0 * * mon,",
            // Malformed items.
            "-1 * * * *",
            "+1 * * * *",
            "1- * * * *",
            "-5 * * * *",
            "1-2-3 * * * *",
            "*-5 * * * *",
            "5-* * * * *",
            "** * * * *",
            "1.5 * * * *",
            "０ * * * *",
            // Names in the wrong field, or not cron's.
            "0 0 * mon *",
            "0 0 * * jan",
            "0 0 * * monday",
            "0 0 * janu *",
            "jan * * * *",
            // Extensions cron does not have.
            "@hourly",
            "@reboot * * * *",
            "0 0 ? * *",
            "0 0 L * *",
            "0 0 15W * *",
            "0 0 * * 5L",
            "0 0 * * 5#3",
            "0 0 * * ?",
        ] {
            assert!(
                matches!(Schedule::parse(text), Err(ScheduleError::Invalid { .. })),
                "{text:?} is accepted"
            );
        }

        // Too long, though every field is fine.
        let long = format!("0 0 * * *{}", " ".repeat(MAX_TEXT_LEN));
        let Err(ScheduleError::Invalid { text, reason }) = Schedule::parse(&long) else {
            panic!("a text of {} bytes is accepted", long.len());
        };
        assert!(
            text.len() < 64 && reason.contains("256"),
            "{text:?}: {reason}"
        );
        assert!(Schedule::parse(&format!("0 0 * * *{}", " ".repeat(MAX_TEXT_LEN - 9))).is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let error = Schedule::parse("0 25 * * *").expect_err("hour 25");
        assert_eq!(
            error.to_string(),
            "schedule \"0 25 * * *\": hour field \"25\": \"25\" is not a number from 0 to 23"
        );
        let error = Schedule::parse("0 0 * * fri-mon").expect_err("a backward range");
        assert_eq!(
            error.to_string(),
            "schedule \"0 0 * * fri-mon\": day-of-week field \"fri-mon\": range \"fri-mon\" runs \
             backwards"
        );
        let error = Schedule::parse("@daily").expect_err("a macro");
        assert!(error.to_string().contains("has 1 fields"), "{error}");
        assert_eq!(
            time_zone("Mars/Olympus_Mons"),
            Err(ScheduleError::TimeZone("Mars/Olympus_Mons".to_owned()))
        );
        assert_eq!(
            ScheduleError::TimeZone("Mars".to_owned()).to_string(),
            "unknown time zone \"Mars\": use an IANA name such as Europe/Paris or UTC"
        );
    }

    #[test]
    fn time_zones_come_from_the_bundled_database() {
        for name in [
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            assert_eq!(zone(name).iana_name(), Some(name));
        }
        assert_eq!(zone("europe/paris").iana_name(), Some("Europe/Paris"));
        assert!(time_zone("").is_err());
        assert!(time_zone("Europe/Pariss").is_err());
    }

    #[test]
    fn every_minute_runs_at_the_next_whole_minute() {
        let after = "2026-01-15T10:20:30.5Z";
        assert_eq!(
            next("* * * * *", "UTC", after).as_deref(),
            Some("2026-01-15T10:21:00Z")
        );
        let on_the_minute = "2026-01-15T10:21:00Z";
        assert_eq!(
            next("* * * * *", "UTC", on_the_minute).as_deref(),
            Some("2026-01-15T10:22:00Z")
        );
        assert_eq!(
            next("* * * * *", "UTC", "2026-12-31T23:59:59.999Z").as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            parse("* * * * *").next_after(0, &TimeZone::UTC),
            Some(60_000)
        );
    }

    #[test]
    fn steps_of_fifteen_minutes() {
        assert_eq!(
            runs("*/15 * * * *", "UTC", "2026-01-15T10:20:00Z", 4),
            [
                "2026-01-15T10:30:00Z",
                "2026-01-15T10:45:00Z",
                "2026-01-15T11:00:00Z",
                "2026-01-15T11:15:00Z",
            ]
        );
    }

    #[test]
    fn a_weekday_range_skips_the_weekend() {
        // 2026-01-16 is a Friday.
        let schedule = "0 8-18 * * mon-fri";
        assert_eq!(
            next(schedule, "UTC", "2026-01-16T17:59:00Z").as_deref(),
            Some("2026-01-16T18:00:00Z")
        );
        assert_eq!(
            next(schedule, "UTC", "2026-01-16T18:00:00Z").as_deref(),
            Some("2026-01-19T08:00:00Z")
        );
        assert_eq!(
            next(schedule, "UTC", "2026-01-17T12:00:00Z").as_deref(),
            Some("2026-01-19T08:00:00Z")
        );
    }

    #[test]
    fn either_day_field_matches_when_both_are_restricted() {
        // 2026-01-02 is a Friday; the 13th is a Tuesday.
        let after = "2026-01-01T12:00:00Z";
        assert_eq!(
            runs("0 0 13 * fri", "UTC", after, 4),
            [
                "2026-01-02T00:00:00Z",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
                "2026-01-16T00:00:00Z",
            ]
        );
        // Only one restricted: it alone decides.
        assert_eq!(
            next("0 0 13 * *", "UTC", after).as_deref(),
            Some("2026-01-13T00:00:00Z")
        );
        assert_eq!(
            next("0 0 * * fri", "UTC", after).as_deref(),
            Some("2026-01-02T00:00:00Z")
        );
        // A day-of-month starting with `*` is not restricted, so both must match: the first odd
        // day that is a Friday after the 2nd is 2026-01-09, then 2026-01-23.
        assert_eq!(
            runs("0 0 */2 * fri", "UTC", "2026-01-02T12:00:00Z", 2),
            ["2026-01-09T00:00:00Z", "2026-01-23T00:00:00Z"]
        );
    }

    #[test]
    fn month_names_pick_months() {
        assert_eq!(
            runs("0 0 1 jan,jul *", "UTC", "2026-02-01T00:00:00Z", 3),
            [
                "2026-07-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
                "2027-07-01T00:00:00Z",
            ]
        );
        // The first Sunday in January or July after February 2026: 2026-07-05.
        assert_eq!(
            next("0 0 * jan,jul sun", "UTC", "2026-02-01T00:00:00Z").as_deref(),
            Some("2026-07-05T00:00:00Z")
        );
    }

    #[test]
    fn leap_days_and_schedules_that_never_run() {
        assert_eq!(next("0 0 30 2 *", "UTC", "2026-01-01T00:00:00Z"), None);
        assert_eq!(
            next("0 0 31 4,6,9,11 *", "Europe/Paris", "2026-01-01T00:00:00Z"),
            None
        );
        // The 29th of February, more than two years ahead, is within reach.
        assert_eq!(
            next("0 12 29 feb *", "UTC", "2025-03-01T00:00:00Z").as_deref(),
            Some("2028-02-29T12:00:00Z")
        );
        // Instants jiff cannot represent, or past it, have no next run; none panics.
        let schedule = parse("* * * * *");
        let last = Timestamp::MAX.as_millisecond().unsigned_abs();
        for after in [u64::MAX, u64::MAX / 2, i64::MAX.unsigned_abs(), last] {
            assert_eq!(schedule.next_after(after, &TimeZone::UTC), None, "{after}");
        }
        assert!(
            schedule
                .next_after(ms("9999-01-01T00:00:00Z"), &TimeZone::UTC)
                .is_some()
        );
    }

    #[test]
    fn local_times_follow_the_zone() {
        let schedule = "0 8 * * *";
        let winter = "2026-01-10T00:00:00Z";
        assert_eq!(
            next(schedule, "UTC", winter).as_deref(),
            Some("2026-01-10T08:00:00Z")
        );
        assert_eq!(
            next(schedule, "Europe/Paris", winter).as_deref(),
            Some("2026-01-10T07:00:00Z")
        );
        let summer = "2026-07-10T00:00:00Z";
        assert_eq!(
            next(schedule, "Europe/Paris", summer).as_deref(),
            Some("2026-07-10T06:00:00Z")
        );
        // The day is the local one: at 23:30 UTC it is already Saturday in Paris.
        assert_eq!(
            next("0 9 * * fri", "Europe/Paris", "2026-01-16T23:30:00Z").as_deref(),
            Some("2026-01-23T08:00:00Z")
        );
        assert_eq!(
            next("0 0 * * sat", "America/New_York", "2026-01-16T23:30:00Z").as_deref(),
            Some("2026-01-17T05:00:00Z")
        );
    }

    #[test]
    fn a_time_skipped_by_spring_forward_runs_once_after_the_gap() {
        // On 2026-03-29 Paris goes from 02:00 CET (+01) to 03:00 CEST (+02).
        let paris = zone("Europe/Paris");
        let skipped: DateTime = "2026-03-29T02:30".parse().expect("a datetime");
        let compatible = paris
            .to_ambiguous_timestamp(skipped)
            .compatible()
            .expect("compatible");
        assert_eq!(compatible.to_string(), "2026-03-29T01:30:00Z");
        assert_eq!(
            runs("30 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", 3),
            [
                "2026-03-29T01:30:00Z",
                "2026-03-30T00:30:00Z",
                "2026-03-31T00:30:00Z",
            ]
        );
        // From anywhere in the gap's hour, the skipped time runs once.
        for after in [
            "2026-03-29T00:59:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:29:59Z",
        ] {
            assert_eq!(
                next("30 2 * * *", "Europe/Paris", after).as_deref(),
                Some("2026-03-29T01:30:00Z"),
                "{after}"
            );
        }
        assert_eq!(
            next("30 2 * * *", "Europe/Paris", "2026-03-29T01:30:00Z").as_deref(),
            Some("2026-03-30T00:30:00Z")
        );
        // Every minute: 01:59 CET is followed by 03:00 CEST, one minute later.
        assert_eq!(
            runs("* * * * *", "Europe/Paris", "2026-03-29T00:58:00Z", 3),
            [
                "2026-03-29T00:59:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:01:00Z",
            ]
        );
    }

    #[test]
    fn a_time_repeated_by_fall_back_runs_once_at_its_first_occurrence() {
        // On 2026-10-25 Paris goes from 03:00 CEST (+02) back to 02:00 CET (+01).
        assert_eq!(
            runs("30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // Even asked from within the repeated hour, after the first 02:30.
        for after in [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:10:00Z",
            "2026-10-25T01:30:00Z",
        ] {
            assert_eq!(
                next("30 2 * * *", "Europe/Paris", after).as_deref(),
                Some("2026-10-26T01:30:00Z"),
                "{after}"
            );
        }
        // Every 30 minutes: the repeated hour's times run once, the next run after it is 03:00.
        assert_eq!(
            runs("*/30 * * * *", "Europe/Paris", "2026-10-24T23:45:00Z", 4),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T02:30:00Z",
            ]
        );
    }

    #[test]
    fn a_half_hour_gap_runs_times_in_instant_order() {
        // On 2026-10-04 Lord Howe Island goes from 02:00 (+10:30) to 02:30 (+11): 02:20 is
        // skipped and runs at 15:50 UTC, after 02:40 (15:40 UTC) though it comes first locally.
        let skipped: DateTime = "2026-10-04T02:20".parse().expect("a datetime");
        let compatible = zone("Australia/Lord_Howe")
            .to_ambiguous_timestamp(skipped)
            .compatible()
            .expect("compatible");
        assert_eq!(compatible.to_string(), "2026-10-03T15:50:00Z");
        assert_eq!(
            runs(
                "20,40 2 * * *",
                "Australia/Lord_Howe",
                "2026-10-03T15:00:00Z",
                3
            ),
            [
                "2026-10-03T15:40:00Z",
                "2026-10-03T15:50:00Z",
                "2026-10-04T15:20:00Z",
            ]
        );
    }

    #[test]
    fn a_day_skipped_whole_still_runs() {
        // Samoa skipped 2011-12-30 entirely, going from 23:59:59 on the 29th (-10) to midnight
        // on the 31st (+14). Noon on the 30th maps past the gap, to noon on the 31st: asked from
        // just after the gap, it is still to come. A year later Samoa keeps summer time (+14).
        assert_eq!(
            next("0 12 30 dec *", "Pacific/Apia", "2011-12-30T10:30:00Z").as_deref(),
            Some("2011-12-30T22:00:00Z")
        );
        assert_eq!(
            next("0 12 30 dec *", "Pacific/Apia", "2011-12-30T22:00:00Z").as_deref(),
            Some("2012-12-29T22:00:00Z")
        );
    }

    #[test]
    fn successive_runs_strictly_increase() {
        let schedules = [
            "* * * * *",
            "*/7 * * * *",
            "30 2 * * *",
            "0,30 1-3 * * *",
            "15 */5 1,15 * mon",
            "0 0 29 feb *",
            "59 23 31 * *",
            "0 12 * * sun",
        ];
        for zone_name in [
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            let zone = zone(zone_name);
            for text in schedules {
                let schedule = parse(text);
                let mut after = ms("2026-03-01T00:00:00Z");
                // 200 runs, or until 2090 (the 29th of February skips 2100).
                for _ in 0..200 {
                    if after > ms("2090-01-01T00:00:00Z") {
                        break;
                    }
                    let Some(run) = schedule.next_after(after, &zone) else {
                        panic!("{text:?} in {zone_name} stops after {after}");
                    };
                    assert!(run > after, "{text:?} in {zone_name}: {run} after {after}");
                    assert_eq!(run % 60_000, 0, "{text:?} in {zone_name}: {run}");
                    after = run;
                }
            }
        }
    }

    /// In UTC every local minute is one instant, so the next run is the first matching minute.
    #[test]
    fn agrees_with_a_minute_by_minute_search_in_utc() {
        let matches = |schedule: &Schedule, at: DateTime| {
            schedule.month_matches(at.date())
                && schedule.day_matches(at.date())
                && has(schedule.hours, at.hour())
                && has(schedule.minutes, at.minute())
        };
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for text in [
            "*/15 * * * *",
            "0 8-18 * * mon-fri",
            "30 2 1,15 * *",
            "0 0 * jan,jul sun",
            "0 0 13 * fri",
            "5 4 */3 * 2-4",
            "45 23 28-31 * *",
        ] {
            let schedule = parse(text);
            for _ in 0..10 {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let after = ms("2026-01-01T00:00:00Z") + (seed >> 33) % (2 * 365 * 86_400_000);
                let got = schedule.next_after(after, &TimeZone::UTC);
                let start = Timestamp::from_millisecond(i64::try_from(after).expect("in range"))
                    .expect("in range");
                let mut at = TimeZone::UTC
                    .to_datetime(start)
                    .with()
                    .second(0)
                    .subsec_nanosecond(0)
                    .build()
                    .expect("a whole minute");
                let expected = loop {
                    at = at
                        .checked_add(SignedDuration::from_mins(1))
                        .expect("in range");
                    if matches(&schedule, at) {
                        break at;
                    }
                };
                assert_eq!(
                    utc(got),
                    Some(
                        expected
                            .to_zoned(TimeZone::UTC)
                            .expect("UTC")
                            .timestamp()
                            .to_string()
                    ),
                    "{text:?} after {}",
                    start
                );
            }
        }
    }
}
