//! A criterion measurement that counts the CPU time of the benchmarking thread instead of wall
//! time. On a shared machine other processes stretch wall time but not this thread's CPU time,
//! so results stay comparable between runs; on an idle machine the two agree. Values are
//! nanoseconds, formatted like criterion's wall-time measurement.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use nix::time::{ClockId, clock_gettime};

/// Thread CPU time (`CLOCK_THREAD_CPUTIME_ID`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime;

fn now() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

impl Measurement for CpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        now()
    }
    fn end(&self, start: Duration) -> Duration {
        now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        const WALL: &WallTime = &WallTime;
        WALL.formatter()
    }
}

/// The criterion configuration every bench here uses.
pub fn criterion() -> criterion::Criterion<CpuTime> {
    criterion::Criterion::default().with_measurement(CpuTime)
}
