//! The timers of sessions whose connection has gone: the Will Delay Interval and the
//! Session Expiry Interval (3.1.2.11.2, 3.1.3.2.2), in one broker-wide structure keyed by
//! [`TimerKey`], served by one task (not a task per session).
//!
//! A session that goes offline with a will to delay or an expiry to wait for is filed
//! here ([`Timers::went_offline`]). Its will is published when the delay passes or the
//! session ends, whichever is first, and not at all if the session resumes before
//! ([MQTT-3.1.3-9]); the session ends when its expiry passes while still offline. A resume
//! ([`Broker::session_resumed`]) or an end takes the session's entry out at once. A
//! clustered node recovering its journal holds the timers ([`Broker::hold_timers`]) until it
//! has rejoined and dropped the sessions other nodes own now, so that no recovered will
//! goes out before that, nor only to this node's subscribers.
//!
//! The structure is plain data with the time passed in ([`Timers::file`], [`Timers::due`]),
//! so it is tested with a made-up clock; the task only sleeps until the next deadline and
//! hands what is due to the broker. It holds the broker weakly and ends when nothing is
//! filed, so a dropped broker is not kept alive by it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tern_codec::LastWill;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{will, Broker, Inner};
use crate::session::Session;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKey {
    /// Publish the will of the session with this id.
    WillDelay(u64),
    /// End the session with this id.
    SessionExpiry(u64),
}

/// A session waiting offline.
#[derive(Debug)]
struct Offline {
    session: Arc<Session>,
    /// The generation of the connection that went away.
    generation: u64,
    /// The will and its deadline's key.
    will: Option<(Box<LastWill>, Deadline)>,
    /// The expiry's deadline key (`None`: never expires).
    expiry: Option<Deadline>,
}

/// A deadline's key: when, and a sequence number keeping equal instants apart.
type Deadline = (Instant, u64);

/// What fell due.
#[derive(Debug)]
pub enum Due {
    /// Publish this will of `session`.
    Will(Arc<Session>, Box<LastWill>),
    /// End `session` (connection `generation` went away) unless it resumed.
    Expiry(Arc<Session>, u64),
}

/// The deadlines: plain data, time passed in.
#[derive(Debug, Default)]
struct Wheel {
    /// Deadline -> what is due then (the sequence number keeps equal deadlines apart).
    deadlines: BTreeMap<Deadline, TimerKey>,
    /// Session id -> what it waits for.
    offline: HashMap<u64, Offline>,
    next_seq: u64,
}

impl Wheel {
    fn insert(&mut self, at: Instant, key: TimerKey) -> Deadline {
        self.next_seq += 1;
        let deadline = (at, self.next_seq);
        self.deadlines.insert(deadline, key);
        deadline
    }

    /// Takes the entry of session `id` and its deadlines out.
    fn remove(&mut self, id: u64) -> Option<Offline> {
        let offline = self.offline.remove(&id)?;
        if let Some((_, deadline)) = &offline.will {
            self.deadlines.remove(deadline);
        }
        if let Some(deadline) = &offline.expiry {
            self.deadlines.remove(deadline);
        }
        Some(offline)
    }

    /// Pops what is due at `now`, oldest first.
    fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                TimerKey::WillDelay(id) => {
                    if let Some(offline) = self.offline.get_mut(&id) {
                        if let Some((will, _)) = offline.will.take() {
                            due.push(Due::Will(offline.session.clone(), will));
                        }
                        if offline.expiry.is_none() {
                            self.offline.remove(&id);
                        }
                    }
                }
                TimerKey::SessionExpiry(id) => {
                    if let Some(offline) = self.remove(id) {
                        if let Some((will, _)) = offline.will {
                            due.push(Due::Will(offline.session.clone(), will));
                        }
                        due.push(Due::Expiry(offline.session, offline.generation));
                    }
                }
            }
        }
        due
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }
}

/// The broker's offline-session timers.
#[derive(Debug, Default)]
pub struct Timers {
    wheel: Mutex<Wheel>,
    /// Wakes the task when an earlier deadline is filed.
    filed: Notify,
    /// The task runs (it ends when nothing is filed, and is started again).
    running: AtomicBool,
    /// No task is started ([`Broker::hold_timers`]): what is filed waits, whatever its
    /// deadline, until [`Broker::release_timers`].
    held: AtomicBool,
}

impl Timers {
    fn wheel(&self) -> MutexGuard<'_, Wheel> {
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files `session`, whose connection of `generation` went away at `now`, with its will
    /// and delay and its expiry (`u32::MAX`: never). Returns whether anything was filed.
    pub fn file(
        &self,
        session: &Arc<Session>,
        generation: u64,
        will: Option<(LastWill, Duration)>,
        expiry_secs: u32,
        now: Instant,
    ) -> bool {
        if will.is_none() && expiry_secs == u32::MAX {
            return false;
        }
        let id = session.id;
        let mut wheel = self.wheel();
        wheel.remove(id);
        let will = will.map(|(w, delay)| {
            let deadline = wheel.insert(now + delay, TimerKey::WillDelay(id));
            (Box::new(w), deadline)
        });
        let expiry = (expiry_secs != u32::MAX).then(|| {
            let at = now + Duration::from_secs(u64::from(expiry_secs));
            wheel.insert(at, TimerKey::SessionExpiry(id))
        });
        let offline = Offline {
            session: session.clone(),
            generation,
            will,
            expiry,
        };
        wheel.offline.insert(session.id, offline);
        true
    }

    /// Takes session `id` out: it resumed (its will is cancelled, [MQTT-3.1.3-9]) or ended.
    /// Returns its pending will.
    pub fn take(&self, id: u64) -> Option<Box<LastWill>> {
        self.wheel().remove(id).and_then(|o| o.will).map(|(w, _)| w)
    }

    /// What is due at `now`, taken out.
    pub fn due(&self, now: Instant) -> Vec<Due> {
        self.wheel().due(now)
    }

    /// The earliest deadline filed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.wheel().next_deadline()
    }

    /// Number of offline sessions filed.
    pub fn len(&self) -> usize {
        self.wheel().offline.len()
    }

    /// Whether nothing is filed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Broker {
    /// Files the offline timers of `session`, whose connection of `generation` went away:
    /// a will to publish after `will`'s delay, an expiry after `expiry_secs` (`u32::MAX`:
    /// never). Must be called within the runtime (it may start the timer task).
    pub fn went_offline(
        &self,
        session: &Arc<Session>,
        generation: u64,
        will: Option<(LastWill, Duration)>,
        expiry_secs: u32,
    ) {
        let timers = &self.inner.timers;
        if !timers.file(session, generation, will, expiry_secs, Instant::now()) {
            return;
        }
        timers.filed.notify_one();
        if !timers.held.load(Ordering::Acquire) {
            self.start_timers();
        }
    }

    /// Starts the timer task unless it runs.
    fn start_timers(&self) {
        let timers = &self.inner.timers;
        if !timers.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(Arc::downgrade(&self.inner), timers.clone()));
        }
    }

    /// Holds the offline timers: nothing filed falls due (no will goes out, no session
    /// ends) until [`Broker::release_timers`]. A clustered node recovering its journal holds
    /// them until it has rejoined, so that the wills go through the cluster and only for
    /// the sessions it still owns.
    pub fn hold_timers(&self) {
        self.inner.timers.held.store(true, Ordering::Release);
    }

    /// Lets held timers run: what fell due meanwhile goes at once. Must be called within
    /// the runtime.
    pub fn release_timers(&self) {
        // Cleared before the task starts: a session filed meanwhile either sees the flag
        // cleared and starts the task itself, or is taken by the task started here.
        self.inner.timers.held.store(false, Ordering::Release);
        self.start_timers();
    }

    /// A connection resumed `session`: its pending will is cancelled ([MQTT-3.1.3-9]) and
    /// its expiry stops.
    pub fn session_resumed(&self, session: &Session) {
        drop(self.inner.timers.take(session.id));
    }

    /// Publishes what fell due.
    fn fire(&self, due: Vec<Due>) {
        for item in due {
            match item {
                Due::Will(session, last_will) => {
                    will::publish(self, &session, *last_will);
                    self.log_will_gone(&session);
                }
                Due::Expiry(session, generation) => {
                    self.end_session_unless_resumed(&session, generation)
                }
            }
        }
    }
}

/// Sleeps until the next deadline and fires what is due; ends when nothing is filed (or
/// the broker is gone).
async fn run(inner: Weak<Inner>, timers: Arc<Timers>) {
    loop {
        let Some(broker) = inner.upgrade().map(|inner| Broker { inner }) else {
            return;
        };
        let filed = timers.filed.notified();
        tokio::pin!(filed);
        filed.as_mut().enable();
        broker.fire(timers.due(Instant::now()));
        drop(broker);
        let Some(next) = timers.next_deadline() else {
            timers.running.store(false, Ordering::Release);
            // Filed between the check and the store: run on (the filer saw `running`).
            if timers.next_deadline().is_some() && !timers.running.swap(true, Ordering::AcqRel) {
                continue;
            }
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut filed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{ByteStr, QoS};

    fn session(id: u64) -> Arc<Session> {
        Arc::new(Session::new(
            id,
            Arc::from(format!("c{id}")),
            10,
            1 << 20,
            Arc::new(crate::delivery::budget::ByteBudget::new(0)),
        ))
    }

    fn will() -> LastWill {
        LastWill {
            topic: ByteStr::from("w"),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The will goes out at its delay when that comes before the expiry; the session ends
    /// at its expiry (3.1.3.2.2).
    #[test]
    fn will_delay_before_expiry() {
        let timers = Timers::default();
        let t0 = Instant::now();
        let s = session(1);
        assert!(timers.file(&s, 7, Some((will(), secs(5))), 10, t0));
        assert!(timers.due(t0 + secs(4)).is_empty());
        let due = timers.due(t0 + secs(5));
        assert!(matches!(due.as_slice(), [Due::Will(_, _)]));
        assert!(timers.due(t0 + secs(9)).is_empty());
        let due = timers.due(t0 + secs(10));
        assert!(matches!(due.as_slice(), [Due::Expiry(_, 7)]));
        assert!(timers.is_empty());
        assert!(timers.next_deadline().is_none());
    }

    /// [MQTT-3.1.3-9]: the will is sent when the session ends, if that comes before its
    /// delay.
    #[test]
    fn expiry_before_will_delay_sends_the_will_at_expiry() {
        let timers = Timers::default();
        let t0 = Instant::now();
        let s = session(1);
        timers.file(&s, 1, Some((will(), secs(60))), 3, t0);
        let due = timers.due(t0 + secs(3));
        assert!(
            matches!(due.as_slice(), [Due::Will(_, _), Due::Expiry(_, 1)]),
            "{due:?}"
        );
        assert!(
            timers.due(t0 + secs(60)).is_empty(),
            "the will went out once"
        );
    }

    /// [MQTT-3.1.3-9]: a session resumed before the delay passes cancels the will.
    #[test]
    fn resume_cancels_will_and_expiry() {
        let timers = Timers::default();
        let t0 = Instant::now();
        let s = session(1);
        timers.file(&s, 1, Some((will(), secs(5))), 10, t0);
        assert!(
            timers.take(s.id).is_some(),
            "the pending will is handed back"
        );
        assert!(timers.due(t0 + secs(100)).is_empty());
        assert!(timers.is_empty());
    }

    /// A session that never expires and has no will is not filed; one with a will and no
    /// expiry leaves the structure once the will is out.
    #[test]
    fn nothing_to_wait_for_files_nothing() {
        let timers = Timers::default();
        let t0 = Instant::now();
        assert!(!timers.file(&session(1), 1, None, u32::MAX, t0));
        assert!(timers.is_empty());
        timers.file(&session(2), 1, Some((will(), secs(1))), u32::MAX, t0);
        assert_eq!(timers.due(t0 + secs(1)).len(), 1);
        assert!(timers.is_empty());
    }

    /// Filing a session again (it went offline again) replaces its old deadlines.
    #[test]
    fn refiling_replaces_old_deadlines() {
        let timers = Timers::default();
        let t0 = Instant::now();
        let s = session(1);
        timers.file(&s, 1, None, 5, t0);
        timers.file(&s, 2, None, 50, t0 + secs(1));
        assert!(timers.due(t0 + secs(10)).is_empty());
        let due = timers.due(t0 + secs(51));
        assert!(matches!(due.as_slice(), [Due::Expiry(_, 2)]), "{due:?}");
    }
}
