//! A body-metered (`upto` bytes or seconds) payment while its response streams: parked in a
//! watch that the request takes back when the body ends, or that a timer takes at the
//! response's delivery deadline to settle what was written by then, so that a stream gone
//! quiet across that moment (a silent origin, a client holding its request body open) still
//! settles while the payer's permit can.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::payment::{Accepted, Payments};
use crate::snapshot::Snapshot;

/// The reason a body-metered response was cut off: it reached the moment its payment must
/// settle by (the payer's permit ends soon after).
pub const DELIVERY_DEADLINE: &str = "metered_delivery_deadline";

/// A parked body-metered payment and what its response has written. The request's body
/// filter and the timer may run on different threads: the counters are sequentially
/// consistent, so the timer reads what the filter wrote before it checked `stopped`.
#[derive(Debug, Default)]
pub struct DeliveryWatch {
    parked: Mutex<Option<Box<Accepted>>>,
    /// Body bytes whose write finished.
    written: AtomicU64,
    /// The last chunk handed over, its write not known to have finished.
    in_flight: AtomicU64,
    /// The origin's body ended: everything was handed over.
    ended: AtomicBool,
    /// The deadline's timer took the payment: nothing more goes out.
    stopped: AtomicBool,
    timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DeliveryWatch {
    /// Parks `accepted` until the request takes it back; at `deadline`, unless it was taken,
    /// settles what was written (its time counted from `started`) and finishes it. Outside a
    /// runtime the payment comes back as the error: the request keeps it.
    pub fn start(
        payments: Arc<Payments>,
        snap: Arc<Snapshot>,
        accepted: Box<Accepted>,
        started: Instant,
        deadline: Instant,
    ) -> Result<Arc<DeliveryWatch>, Box<Accepted>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(accepted);
        };
        let watch = Arc::new(DeliveryWatch {
            parked: Mutex::new(Some(accepted)),
            ..DeliveryWatch::default()
        });
        let w = watch.clone();
        let task = runtime.spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            let Some(mut a) = w.take_parked() else {
                return;
            };
            w.stopped.store(true, Ordering::SeqCst);
            let ended = w.ended.load(Ordering::SeqCst);
            let counts = (
                w.written.load(Ordering::SeqCst),
                w.in_flight.load(Ordering::SeqCst),
            );
            // As the request would have: a body that ended counts its last chunk; one cut
            // before a byte went out is charged nothing.
            let (bytes, elapsed) =
                metered_delivery(counts, Some(started), Some(deadline), ended, Instant::now());
            let env = snap.payment_env();
            payments.settle_metered(&env, &mut a, bytes, elapsed).await;
            let cut = (!ended).then_some(DELIVERY_DEADLINE);
            payments.finish(&env, &mut a, cut).await;
        });
        if let Ok(mut t) = watch.timer.lock() {
            *t = Some(task);
        }
        Ok(watch)
    }

    fn take_parked(&self) -> Option<Box<Accepted>> {
        self.parked.lock().ok()?.take()
    }

    fn take_timer(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.timer.lock().ok()?.take()
    }

    /// The request takes its payment back (the body ended, or broke off): the timer stops.
    /// `None` once the timer took it.
    pub fn take(&self) -> Option<Box<Accepted>> {
        let a = self.take_parked()?;
        if let Some(t) = self.take_timer() {
            t.abort();
        }
        Some(a)
    }

    /// Waits until the timer that took the payment has settled and finished it, so that a
    /// request ends (and a draining server stops) only after its settlement.
    pub async fn settled(&self) {
        if let Some(t) = self.take_timer() {
            let _ = t.await;
        }
    }

    /// Records what the body filter knows: bytes written, the last chunk handed over, and
    /// whether the origin's body ended. Returns whether the timer took the payment (nothing
    /// more may go out).
    pub fn progress(&self, written: u64, in_flight: u64, ended: bool) -> bool {
        self.written.store(written, Ordering::SeqCst);
        self.in_flight.store(in_flight, Ordering::SeqCst);
        if ended {
            self.ended.store(true, Ordering::SeqCst);
        }
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Where a body-metered response stands against its delivery deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Time left to deliver.
    Left(Duration),
    /// The deadline passed: nothing more goes out.
    Stop,
}

/// A body-metered response's standing at `now` (`None`: no deadline applies).
pub fn delivery_left(deadline: Option<Instant>, now: Instant) -> Option<Delivery> {
    let left = deadline?.saturating_duration_since(now);
    Some(if left.is_zero() {
        Delivery::Stop
    } else {
        Delivery::Left(left)
    })
}

/// What a body-metered response delivered, at `now`: bytes written and the last chunk handed
/// over (counted only if the body ended cleanly: a write cut short may not have reached the
/// client), and its time from `started`, which ends at its deadline. A response cut before any
/// byte went out delivered nothing, whatever the origin took to start it.
pub fn metered_delivery(
    (written, in_flight): (u64, u64),
    started: Option<Instant>,
    deadline: Option<Instant>,
    ended: bool,
    now: Instant,
) -> (u64, Duration) {
    let bytes = if ended {
        written.saturating_add(in_flight)
    } else {
        written
    };
    let end = deadline.map_or(now, |d| d.min(now));
    let elapsed = match started {
        Some(start) if bytes > 0 || end == now => end.saturating_duration_since(start),
        _ => Duration::ZERO,
    };
    (bytes, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body-metered response delivers while time is left and stops once its deadline
    /// passed; what it delivered counts the last chunk only once the body ended cleanly, its
    /// time ends at the deadline, and one cut before a byte went out delivered nothing.
    #[test]
    fn a_body_metered_response_stops_at_its_deadline_and_counts_what_went_out() {
        let now = Instant::now();
        let secs = Duration::from_secs;
        assert_eq!(delivery_left(None, now), None);
        let deadline = now + secs(3);
        assert_eq!(
            delivery_left(Some(deadline), now),
            Some(Delivery::Left(secs(3)))
        );
        assert_eq!(
            delivery_left(Some(deadline), deadline),
            Some(Delivery::Stop)
        );
        assert_eq!(
            delivery_left(Some(now), now + secs(1)),
            Some(Delivery::Stop)
        );

        let (start, at, deadline) = (now, now + secs(9), Some(now + secs(5)));
        assert_eq!(
            metered_delivery((100, 10), Some(start), None, true, at),
            (110, secs(9))
        );
        assert_eq!(
            metered_delivery((100, 10), Some(start), deadline, false, at),
            (100, secs(5))
        );
        assert_eq!(
            metered_delivery((0, 10), Some(start), deadline, false, at),
            (0, Duration::ZERO)
        );
        // An empty body that ended by itself is charged its time, as before.
        assert_eq!(
            metered_delivery((0, 0), Some(start), None, true, at),
            (0, secs(9))
        );
    }
}
