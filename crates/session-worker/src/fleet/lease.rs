//! A held lease and its local deadline.
//!
//! The coordinator's clock decides when a lease expires; the worker keeps a deadline on
//! its own monotonic clock that is never later than that: a grant or renewal that says
//! "expires in d" (measured against the wall clock when it arrives) moves the local
//! deadline to `now + d - margin`. Past its deadline the worker acts as if the lease were
//! gone: it writes nothing, publishes no status and closes the socket, so a worker that
//! was paused (SIGSTOP, a long GC, a partition) cannot act on a lease that may have moved.
//!
//! The coordinator moves a lease when it runs out *or* when its worker misses heartbeats,
//! whichever comes first; so the expiry in a grant or renewal is already the earlier of
//! the two, and a heartbeat acknowledgement moves the deadline of each lease it renewed to
//! "heartbeat sent + acknowledged validity" (both measured from no earlier than the send).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::time::system_time;
use wafleet_bus_schema::SessionAddress;

/// How much earlier than the coordinator's expiry the worker stops trusting a lease.
pub const SAFETY_MARGIN: Duration = Duration::from_millis(500);

/// The local deadline of one lease, shared by the session task and its blob store.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    deadline: Arc<Mutex<Instant>>,
}

impl LeaseClock {
    /// A clock from a grant (or renewal) received now.
    pub fn from_grant(grant: &internal::LeaseGrant) -> LeaseClock {
        LeaseClock {
            deadline: Arc::new(Mutex::new(local_deadline(grant))),
        }
    }

    /// Moves the deadline forward after a renewal (never backward).
    pub fn renewed(&self, grant: &internal::LeaseGrant) {
        let next = local_deadline(grant);
        let mut deadline = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        if next > *deadline {
            *deadline = next;
        }
    }

    /// Moves the deadline forward to `trusted_until - margin` (never backward): after a
    /// heartbeat acknowledgement that renewed this lease, `trusted_until` is when the
    /// heartbeat was sent plus the acknowledged validity.
    pub fn extend_to(&self, trusted_until: Instant) {
        let next = trusted_until
            .checked_sub(SAFETY_MARGIN)
            .unwrap_or(trusted_until);
        let mut deadline = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        if next > *deadline {
            *deadline = next;
        }
    }

    /// Ends the lease locally now.
    pub fn expire(&self) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// The local deadline.
    pub fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the lease is still trusted.
    pub fn is_live(&self) -> bool {
        Instant::now() < self.deadline()
    }
}

fn local_deadline(grant: &internal::LeaseGrant) -> Instant {
    let now = Instant::now();
    let remaining = grant
        .expires_at
        .as_ref()
        .and_then(system_time)
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::ZERO);
    now + remaining.saturating_sub(SAFETY_MARGIN)
}

/// A lease as this worker holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeldLease {
    /// The session.
    pub address: SessionAddress,
    /// The fencing epoch.
    pub epoch: u64,
}

impl HeldLease {
    /// The heartbeat form.
    pub fn to_bus(&self) -> internal::HeldLease {
        internal::HeldLease {
            tenant: self.address.tenant.as_str().to_string(),
            session: self.address.session.as_str().to_string(),
            epoch: self.epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wafleet_bus_schema::time::timestamp;

    fn grant(in_ms: u64) -> internal::LeaseGrant {
        internal::LeaseGrant {
            expires_at: Some(timestamp(SystemTime::now() + Duration::from_millis(in_ms))),
            ..Default::default()
        }
    }

    #[test]
    fn the_local_deadline_is_before_the_coordinators() {
        let clock = LeaseClock::from_grant(&grant(10_000));
        assert!(clock.is_live());
        let left = clock.deadline() - Instant::now();
        assert!(left <= Duration::from_millis(9_500), "{left:?}");
        assert!(left > Duration::from_millis(9_000), "{left:?}");
    }

    #[test]
    fn expired_or_missing_expiry_is_not_live_and_renewals_only_extend() {
        assert!(!LeaseClock::from_grant(&grant(100)).is_live());
        assert!(!LeaseClock::from_grant(&internal::LeaseGrant::default()).is_live());
        let clock = LeaseClock::from_grant(&grant(10_000));
        let before = clock.deadline();
        clock.renewed(&grant(1_000));
        assert_eq!(clock.deadline(), before);
        clock.renewed(&grant(20_000));
        assert!(clock.deadline() > before);
        clock.expire();
        assert!(!clock.is_live());
    }

    #[test]
    fn a_heartbeat_ack_extends_by_its_validity_minus_the_margin_and_never_shortens() {
        let clock = LeaseClock::from_grant(&grant(1_000));
        let before = clock.deadline();
        clock.extend_to(Instant::now() + Duration::from_millis(200));
        assert_eq!(
            clock.deadline(),
            before,
            "an earlier bound does not shorten"
        );
        let sent = Instant::now();
        clock.extend_to(sent + Duration::from_secs(5));
        assert_eq!(
            clock.deadline(),
            sent + Duration::from_secs(5) - SAFETY_MARGIN
        );
        // A heartbeat sent long ago buys nothing any more.
        let stale = LeaseClock::from_grant(&grant(100));
        stale.extend_to(Instant::now() + Duration::from_millis(400));
        assert!(!stale.is_live());
    }
}
