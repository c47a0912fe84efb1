//! What the `/supported` refresher logs about a failing facilitator: its first failure, a
//! change of error, a reminder every ten minutes while it keeps failing, and its recovery —
//! not every probe (a machine without internet would otherwise log one warning every few
//! seconds for ever).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a facilitator that keeps failing the same way is mentioned again.
pub const REMIND_EVERY: Duration = Duration::from_secs(600);

/// One line to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// It failed, for the first time or with a new error.
    Failing { error: String },
    /// Still failing the same way since `since`.
    StillFailing { error: String, since: Duration },
    /// Answering again after failing.
    Recovered,
}

#[derive(Debug)]
struct Failing {
    error: String,
    since: Instant,
    last_logged: Instant,
}

/// Per-facilitator failure state.
#[derive(Debug, Default)]
pub struct ProbeLog {
    failing: HashMap<String, Failing>,
}

impl ProbeLog {
    /// Records one probe's outcome; what to log about it, if anything.
    pub fn record(
        &mut self,
        name: &str,
        outcome: Result<(), String>,
        now: Instant,
    ) -> Option<ProbeEvent> {
        match outcome {
            Ok(()) => self.failing.remove(name).map(|_| ProbeEvent::Recovered),
            Err(error) => match self.failing.get_mut(name) {
                Some(f) if f.error == error => {
                    if now.duration_since(f.last_logged) < REMIND_EVERY {
                        return None;
                    }
                    f.last_logged = now;
                    Some(ProbeEvent::StillFailing {
                        error,
                        since: now.duration_since(f.since),
                    })
                }
                Some(f) => {
                    f.error = error.clone();
                    f.last_logged = now;
                    Some(ProbeEvent::Failing { error })
                }
                None => {
                    self.failing.insert(
                        name.to_owned(),
                        Failing {
                            error: error.clone(),
                            since: now,
                            last_logged: now,
                        },
                    );
                    Some(ProbeEvent::Failing { error })
                }
            },
        }
    }

    /// Forgets facilitators no longer configured.
    pub fn retain(&mut self, names: &[&str]) {
        self.failing.retain(|n, _| names.contains(&n.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_facilitator_failing_the_same_way_is_logged_once_then_every_ten_minutes() {
        let mut log = ProbeLog::default();
        let t0 = Instant::now();
        let down = || Err("connection refused".to_owned());
        assert_eq!(
            log.record("x", down(), t0),
            Some(ProbeEvent::Failing {
                error: "connection refused".into()
            })
        );
        for s in (5..600).step_by(5) {
            assert_eq!(log.record("x", down(), t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(
            log.record("x", down(), t0 + Duration::from_secs(600)),
            Some(ProbeEvent::StillFailing {
                error: "connection refused".into(),
                since: Duration::from_secs(600)
            })
        );
        assert_eq!(
            log.record("x", Err("timeout".into()), t0 + Duration::from_secs(605)),
            Some(ProbeEvent::Failing {
                error: "timeout".into()
            })
        );
        assert_eq!(
            log.record("x", Ok(()), t0 + Duration::from_secs(610)),
            Some(ProbeEvent::Recovered)
        );
        assert_eq!(log.record("x", Ok(()), t0 + Duration::from_secs(615)), None);
        log.record("y", down(), t0);
        log.retain(&["x"]);
        assert_eq!(log.record("y", Ok(()), t0), None, "y was forgotten");
    }
}
