//! What the broker itself logs about sessions ([`crate::journal`]): a session becoming
//! persistent (a non-zero expiry) or not, its connection coming and going, its end, and its
//! subscriptions. The same transitions are told to the cluster, when there is one, which
//! stores what other nodes need if this one dies (`cluster_link.rs`). Each record is appended under the lock of the state it describes: the
//! session's delivery lock for the session's own records, its subscription lock for a
//! subscription.

use std::sync::Arc;

use tern_codec::LastWill;
use tokio::time::Instant;

use crate::journal::record::Record;
use crate::journal::{self, Journal};
use crate::message::Message;
use crate::session::delivery::Delivery;
use crate::session::{Session, SubscriptionRecord};

use super::Broker;

impl Broker {
    /// Appends `record` for `session` if the session is persistent; returns its position
    /// (0: not logged).
    pub(crate) fn log_for(&self, session: &Session, record: impl FnOnce() -> Record) -> u64 {
        match self.journal() {
            Some(journal) if session.is_logged() => journal.append(&record()),
            _ => 0,
        }
    }

    /// A connection attached to `session` (under its delivery lock) with Session Expiry
    /// `expiry_secs` and `will`: a session with a non-zero expiry is logged from now on
    /// (opened, or its expiry updated, online, and the will its connection carries, which
    /// a restart after a crash publishes as if the connection had closed); one whose expiry
    /// became 0 stops being logged.
    pub(crate) fn log_attached(
        &self,
        session: &Session,
        delivery: &mut Delivery,
        expiry_secs: u32,
        will: Option<&LastWill>,
    ) {
        self.cluster_will(session, will);
        self.cluster_session_changed(session);
        let Some(journal) = self.journal() else {
            return;
        };
        if expiry_secs == 0 {
            stop_logging(journal, session, delivery);
            return;
        }
        if delivery.log_id().is_none() {
            delivery.set_log(Some((session.id, 0)));
            session.set_logged(true);
        }
        delivery.set_offline_since_unix_ms(None);
        journal.append(&Record::SessionOpen {
            session: session.id,
            client_id: session.client_id.to_string(),
            expiry_secs,
        });
        journal.append(&Record::SessionOnline {
            session: session.id,
        });
        log_will(journal, session, delivery, will);
    }

    /// The pending will of a persistent `session` is gone (published, or discarded).
    pub(crate) fn log_will_gone(&self, session: &Session) {
        self.cluster_will(session, None);
        if let Some(journal) = self.journal() {
            let mut delivery = session.delivery();
            if session.is_logged() {
                log_will(journal, session, &mut delivery, None);
            }
        }
    }

    /// The connection of a persistent `session` went away, leaving `will` pending (or
    /// none: discarded at a normal DISCONNECT, or published already): its expiry (as the
    /// client may have changed it at DISCONNECT) counts from now.
    pub(crate) fn log_offline(&self, session: &Arc<Session>, will: Option<&LastWill>) {
        self.cluster_session_changed(session);
        if will.is_none() {
            self.cluster_will(session, None);
        }
        let Some(journal) = self.journal() else {
            return;
        };
        let mut delivery = session.delivery();
        if !session.is_logged() {
            return;
        }
        let at_unix_ms = journal::unix_ms_now();
        delivery.set_offline_since_unix_ms(Some(at_unix_ms));
        journal.append(&Record::SessionOpen {
            session: session.id,
            client_id: session.client_id.to_string(),
            expiry_secs: session.expiry_secs(),
        });
        journal.append(&Record::SessionOffline {
            session: session.id,
            at_unix_ms,
        });
        // A shutdown closes connections without publishing their wills; the journal keeps
        // the will pending, so that after the restart it goes out if the client does not
        // come back within its delay, as after a crash.
        if will.is_some() || !self.is_shutting_down() {
            log_will(journal, session, &mut delivery, will);
        }
    }

    /// `session` ended: nothing of it is kept.
    pub(crate) fn log_ended(&self, session: &Session) {
        self.cluster_session_ended(session);
        if let Some(journal) = self.journal() {
            let mut delivery = session.delivery();
            stop_logging(journal, session, &mut delivery);
        }
    }

    /// Logs a subscription made or replaced (call under the session's subscription lock).
    pub(crate) fn log_subscribe(
        &self,
        session: &Session,
        filter: &str,
        record: SubscriptionRecord,
    ) {
        self.cluster_subscriptions_changed(session);
        self.log_for(session, || Record::Subscribe {
            session: session.id,
            filter: filter.to_owned(),
            options: record.options.to_v5_byte(),
            subscription_id: record.subscription_id.unwrap_or(0),
        });
    }

    /// Logs a subscription removed (call under the session's subscription lock).
    pub(crate) fn log_unsubscribe(&self, session: &Session, filter: &str) {
        self.cluster_subscriptions_changed(session);
        self.log_for(session, || Record::Unsubscribe {
            session: session.id,
            filter: filter.to_owned(),
        });
    }
}

/// Logs `session`'s pending will (the will as the PUBLISH it becomes, and its Will Delay
/// Interval), under its delivery lock, and keeps it for checkpoints.
fn log_will(
    journal: &Journal,
    session: &Session,
    delivery: &mut Delivery,
    will: Option<&LastWill>,
) {
    let will = will.map(|w| {
        let delay_secs = w.properties.will_delay_interval_secs.unwrap_or(0);
        let now = Instant::now();
        let message = Message::new(super::will::to_publish(w.clone()), now, None);
        (journal::stored(&message, now), delay_secs)
    });
    if will.is_none() && delivery.logged_will().is_none() {
        return;
    }
    journal.append(&Record::Will {
        session: session.id,
        will: will.clone(),
    });
    delivery.set_logged_will(will);
}

fn stop_logging(journal: &Journal, session: &Session, delivery: &mut Delivery) {
    if delivery.log_id().is_some() {
        journal.append(&Record::SessionEnd {
            session: session.id,
        });
        delivery.set_log(None);
        session.set_logged(false);
    }
}
