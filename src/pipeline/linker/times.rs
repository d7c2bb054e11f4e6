//! The times of the linker's rule (SPEC §3.4–5): stays' `intime`/`outtime`, a study's time from
//! `StudyDate`·`StudyTime`, the `StudyDateTime` column each profile writes, and which stay a study
//! falls in.

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};

use crate::config::Profile;
use crate::ids::StayId;
use crate::pyfmt::python_float_repr;

/// One ED stay of a subject; `None` times are open-ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stay {
    pub stay_id: StayId,
    pub intime: Option<NaiveDateTime>,
    pub outtime: Option<NaiveDateTime>,
}

impl Stay {
    /// `intime < t < outtime` (an open end holds every time on its side).
    pub(super) fn holds(&self, t: NaiveDateTime) -> bool {
        self.intime.is_none_or(|i| i < t) && self.outtime.is_none_or(|o| t < o)
    }
}

/// `YYYY-MM-DD HH:MM:SS`; empty means open-ended.
pub(super) fn parse_datetime(raw: &[u8]) -> Result<Option<NaiveDateTime>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(raw).map_err(|_| "time is not UTF-8".to_string())?;
    // The value stays out of the reason: it is patient data, and reasons reach the logs.
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S")
        .map(Some)
        .map_err(|e| format!("time is not YYYY-MM-DD HH:MM:SS ({} bytes): {e}", raw.len()))
}

/// The study time from `StudyDate` (`YYYYMMDD`) and `StudyTime` (`HHMMSS[.ffffff]` written as a
/// number, so leading zeros are lost). Profile `paper` pads the integer part to 6 digits;
/// `release` reproduces the original build, where a time before 10:00 never parsed.
pub(super) fn study_time(date: &[u8], time: &[u8], profile: Profile) -> Option<NaiveDateTime> {
    let date = std::str::from_utf8(date).ok()?.trim();
    let time = std::str::from_utf8(time).ok()?.trim();
    let date = NaiveDate::parse_from_str(date, "%Y%m%d").ok()?;
    let (int, frac) = time.split_once('.').unwrap_or((time, ""));
    if int.is_empty() || int.len() > 6 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if profile == Profile::Release && int.len() < 6 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = format!("{int:0>6}");
    let (h, m, s) = (padded[0..2].parse().ok()?, padded[2..4].parse().ok()?, padded[4..6].parse().ok()?);
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: u32 = digits.parse().ok()?;
    Some(date.and_time(NaiveTime::from_hms_nano_opt(h, m, s, nanos)?))
}

/// `YYYY-MM-DD HH:MM:SS[.fff]`.
fn format_study_time(t: NaiveDateTime) -> String {
    if t.and_utc().timestamp_subsec_nanos() == 0 {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
    }
}

/// Profile `release`: the original build's float of the concatenated `StudyDate`·`StudyTime` text.
fn release_study_datetime(date: &[u8], time: &[u8]) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(date).trim(), String::from_utf8_lossy(time).trim());
    match text.parse::<f64>() {
        Ok(v) => python_float_repr(v),
        Err(_) => "nan".to_string(),
    }
}

/// The `StudyDateTime` column of cxr_meta as `profile` writes it.
pub(crate) fn study_datetime_column(date: &[u8], time: &[u8], profile: Profile) -> String {
    match profile {
        Profile::Paper => study_time(date, time, profile).map(format_study_time).unwrap_or_default(),
        Profile::Release => release_study_datetime(date, time),
    }
}

/// SPEC §3.5: exactly one stay with `intime < t < outtime`; else, with a window, the one nearest.
pub(super) fn pick_stay(stays: &[Stay], t: NaiveDateTime, window_days: u32) -> Option<StayId> {
    let strict: Vec<&Stay> = stays.iter().filter(|s| s.holds(t)).collect();
    match strict.len() {
        1 => return Some(strict[0].stay_id),
        0 if window_days > 0 => {}
        _ => return None,
    }
    let window = Duration::days(i64::from(window_days));
    let mut best: Option<(Duration, StayId)> = None;
    let mut tie = false;
    for s in stays {
        let lo = s.intime.map(|i| i - window);
        let hi = s.outtime.map(|o| o + window);
        if lo.is_some_and(|lo| t < lo) || hi.is_some_and(|hi| t > hi) {
            continue;
        }
        // Distance from the study to the stay itself (0 would have matched strictly, bar edges).
        let distance = match (s.intime, s.outtime) {
            (Some(i), _) if t <= i => i - t,
            (_, Some(o)) if t >= o => t - o,
            _ => Duration::zero(),
        };
        match best {
            Some((d, _)) if distance > d => {}
            Some((d, _)) if distance == d => tie = true,
            _ => {
                best = Some((distance, s.stay_id));
                tie = false;
            }
        }
    }
    if tie {
        None
    } else {
        best.map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }
    fn stay(id: u64, i: &str, o: &str) -> Stay {
        Stay {
            stay_id: StayId::parse(id.to_string().as_bytes()).unwrap(),
            intime: (!i.is_empty()).then(|| t(i)),
            outtime: (!o.is_empty()).then(|| t(o)),
        }
    }

    #[test]
    fn study_time_pads_in_paper_and_fails_in_release() {
        let p = study_time(b"21800723", b"80556.875", Profile::Paper).unwrap();
        assert_eq!(format_study_time(p), "2180-07-23 08:05:56.875");
        assert!(study_time(b"21800723", b"80556.875", Profile::Release).is_none());
        let r = study_time(b"21800506", b"213014.531", Profile::Release).unwrap();
        assert_eq!(format_study_time(r), "2180-05-06 21:30:14.531");
        // Python's repr(float("21800506213014.531")) is "21800506213014.53": pandas wrote that.
        assert_eq!(release_study_datetime(b"21800506", b"213014.531"), "21800506213014.53");
        assert_eq!(release_study_datetime(b"21800723", b"80556.875"), "2180072380556.875");
        assert_eq!(release_study_datetime(b"21800506", b"151208.0"), "21800506151208.0");
    }

    #[test]
    fn strict_window_exactly_one() {
        let stays = [stay(31, "2180-05-06 19:17:00", "2180-05-06 23:30:00"), stay(32, "2180-06-01 10:00:00", "")];
        let id = |v: Option<StayId>| v.map(StayId::get);
        assert_eq!(id(pick_stay(&stays, t("2180-05-06 21:30:14"), 0)), Some(31));
        assert_eq!(id(pick_stay(&stays, t("2180-05-06 19:17:00"), 0)), None, "exactly at intime");
        assert_eq!(id(pick_stay(&stays, t("2190-01-01 00:00:00"), 0)), Some(32), "open-ended outtime");
        assert_eq!(id(pick_stay(&stays, t("2180-05-08 00:00:00"), 0)), None);
        assert_eq!(id(pick_stay(&stays, t("2180-05-08 00:00:00"), 7)), Some(31), "within window");
        let overlapping = [
            stay(41, "2180-01-01 00:00:00", "2180-01-02 00:00:00"),
            stay(42, "2180-01-01 12:00:00", "2180-01-03 00:00:00"),
        ];
        assert_eq!(id(pick_stay(&overlapping, t("2180-01-01 18:00:00"), 7)), None, "two strict matches");
    }
}
