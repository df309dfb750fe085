//! Conversions between `std::time` and the protobuf well-known time types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use pbjson_types::{Duration as ProtoDuration, Timestamp};

/// A timestamp for a point in time (before 1970 too).
pub fn timestamp(at: SystemTime) -> Timestamp {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => Timestamp {
            seconds: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            nanos: after.subsec_nanos() as i32,
        },
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => Timestamp {
                    seconds: -secs,
                    nanos: 0,
                },
                n => Timestamp {
                    seconds: -secs - 1,
                    nanos: (1_000_000_000 - n) as i32,
                },
            }
        }
    }
}

/// The point in time of a timestamp; `None` when its nanos are out of range (not
/// 0..1e9) or the system clock cannot represent it.
pub fn system_time(ts: &Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    if ts.seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(ts.seconds.unsigned_abs(), nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.seconds.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// A protobuf duration.
pub fn proto_duration(d: Duration) -> ProtoDuration {
    ProtoDuration::from(d)
}

/// The `std` duration of a protobuf duration; `None` when negative or out of range.
pub fn std_duration(d: &ProtoDuration) -> Option<Duration> {
    Duration::try_from(*d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_on_both_sides_of_the_epoch() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_764_504_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 250_000_000),
            UNIX_EPOCH - Duration::from_secs(86_400),
        ] {
            assert_eq!(system_time(&timestamp(t)), Some(t));
        }
        let before = timestamp(UNIX_EPOCH - Duration::new(5, 250_000_000));
        assert_eq!((before.seconds, before.nanos), (-6, 750_000_000));
        assert_eq!(
            system_time(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
        assert_eq!(
            system_time(&Timestamp {
                seconds: 0,
                nanos: 1_000_000_000
            }),
            None
        );
    }

    #[test]
    fn durations() {
        let d = Duration::from_millis(1500);
        assert_eq!(std_duration(&proto_duration(d)), Some(d));
        assert_eq!(
            std_duration(&ProtoDuration {
                seconds: -1,
                nanos: 0
            }),
            None
        );
    }
}
