//! Clock floor: the kernel sets the time from the RTC (RTC_HCTOSYS); if that is before the image was
//! built, the clock is certainly wrong (certificates would be born expired), so raise it to the build time.
use crate::error::Result;

use ferry_contract::paths::BUILD_EPOCH as BUILD_EPOCH_FILE;

pub fn build_epoch() -> Option<i64> {
    std::fs::read_to_string(BUILD_EPOCH_FILE).ok()?.trim().parse().ok()
}

/// What the floor did: a note for the console, and whether the RTC was before the build (so the clock is
/// surely wrong until SNTP answers, and the boot waits for it: stage_b's `time` phase).
pub struct Floor {
    pub note: String,
    pub raised: bool,
}

pub fn apply_floor() -> Result<Floor> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let Some(floor) = build_epoch() else {
        return Ok(Floor { note: format!("no {BUILD_EPOCH_FILE}; clock left at {now}"), raised: false });
    };
    if now >= floor {
        return Ok(Floor { note: format!("clock {now} (RTC), build floor {floor}"), raised: false });
    }
    crate::sys::set_clock(floor, 0)?;
    crate::log::warn(&format!("clock {now} was before the build time {floor}; raised to it"));
    Ok(Floor { note: format!("clock raised to build floor {floor}"), raised: true })
}
