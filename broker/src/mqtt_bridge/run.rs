//! One bridge's task: its local client, the link to the remote (tried in the configured
//! order, again after an exponential backoff with jitter), keep alive both ways, and the
//! loop that feeds packets from each side to [`Outbound`] and [`Inbound`] and sends what
//! they answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tern_codec::{Disconnect, Packet, QoS, ReasonCode};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::backoff::Backoff;
use super::echo::Echoes;
use super::inbound::Inbound;
use super::local::{self, LocalLink};
use super::outbound::Outbound;
use super::remote::{self, ConnectError, RemoteLink};
use super::topics::Rules;
use super::transport::Tls;
use super::wire::{PacketWriter, WireError};
use super::{Sends, Stop};
use crate::broker::Broker;
use crate::config::mqtt_bridges::MqttBridgeConfig;
use crate::metrics::bridge_links::{LinkState, LinkStatus};

/// A connect attempt in progress: the link, or the last error, and which remotes refused
/// the bridge bit.
type Attempt = Pin<Box<dyn Future<Output = (Result<RemoteLink, ConnectError>, Vec<usize>)> + Send>>;

/// One running bridge.
pub(crate) struct Bridge {
    broker: Broker,
    config: Arc<MqttBridgeConfig>,
    rules: Rules,
    status: Arc<LinkStatus>,
    tls: Option<Tls>,
    /// Per remote: whether it refused the bridge bit (then plain 3.1.1 is used).
    private_refused: Vec<bool>,
    /// Told once the local session is subscribed (the broker opens its listeners then).
    ready: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The remote side while the loop runs.
struct Link {
    remote: RemoteLink,
    /// What went out, for a remote that would send it back (3.1.1 without the bridge bit).
    echoes: Option<Echoes>,
    /// A PINGREQ went and no PINGRESP came yet.
    ping_outstanding: bool,
    next_ping: Option<Instant>,
}

impl Bridge {
    /// A bridge for `config`; its status goes to `status`; `ready` is told once its
    /// local session is subscribed.
    pub(crate) fn new(
        broker: Broker,
        config: Arc<MqttBridgeConfig>,
        status: Arc<LinkStatus>,
        tls: Option<Tls>,
        ready: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Bridge {
        Bridge {
            ready,
            rules: Rules::new(config.topics.clone()),
            private_refused: vec![false; config.remotes.len()],
            broker,
            config,
            status,
            tls,
        }
    }

    /// Runs until `stop` says so or the broker shuts down. If the local session ends
    /// otherwise (the broker closed it), it is opened again after a backoff: a bridge
    /// never stops on its own.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<Stop>) {
        let mut backoff = Backoff::new(self.config.reconnect_min_ms, self.config.reconnect_max_ms);
        loop {
            if self.run_once(&mut stop).await || self.broker.is_shutting_down() {
                return;
            }
            self.status.set_state(LinkState::Down);
            let wait = backoff.next();
            tokio::select! {
                // Cancel safe: `changed` only reads the channel.
                _ = stop.changed() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One life of the local session; `true` when told to stop, `false` when the local
    /// session was lost.
    async fn run_once(&mut self, stop: &mut watch::Receiver<Stop>) -> bool {
        let Some(mut live) = self.open().await else {
            return false;
        };
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let mut sends = Sends::default();
        for packet in std::mem::take(&mut live.local.early) {
            handle_local(
                packet,
                &self.rules,
                &mut live.outbound,
                &mut live.inbound,
                &mut sends,
            );
        }
        if flush(&live.local.writer, &mut live.link, sends, &self.status)
            .await
            .is_err()
        {
            return false;
        }
        loop {
            if live.link.is_none() && live.attempt.is_none() && Instant::now() >= live.retry_at {
                self.status.set_state(LinkState::Connecting);
                live.attempt = Some(self.attempt((
                    live.local.receive_maximum,
                    live.local.maximum_packet_size_bytes,
                )));
            }
            let event = live.next_event(stop).await;
            let mut sends = Sends::default();
            if let Some(ended) = self.handle(event, &mut live, &mut sends) {
                let reason = match ended {
                    Ended::Stop(reason) => reason,
                    Ended::LocalLost => Stop::Restart,
                };
                self.finish(&live.local.writer, live.link.take(), reason)
                    .await;
                return matches!(ended, Ended::Stop(_));
            }
            match flush(&live.local.writer, &mut live.link, sends, &self.status).await {
                Ok(()) => {}
                Err(Side::Local) => {
                    self.finish(&live.local.writer, live.link.take(), Stop::Restart)
                        .await;
                    return false;
                }
                Err(Side::Remote(e)) => self.lost(&mut live, e),
            }
        }
    }

    /// Opens the local session; `None` if the broker refused it (it is shutting down).
    async fn open(&self) -> Option<Live> {
        let config = &self.config;
        let local = local::connect(
            &self.broker,
            &config.local_client_id,
            &config.local_username,
            config.max_inflight,
            &self.rules.local_filters(),
        )
        .await;
        let local = match local {
            Ok(local) => local,
            Err(e) => {
                self.status.set_last_error(format!("local session: {e}"));
                tracing::warn!(bridge = %config.name, error = %e, "bridge cannot open its local session");
                return None;
            }
        };
        let remote_v5 = remote::version_of(config.protocol).is_v5();
        let status = self.status.clone();
        let local_ping = Duration::from_secs(u64::from(local.keep_alive_secs.max(2) / 2));
        Some(Live {
            outbound: Outbound::new(remote_v5, &config.client_id, status.clone()),
            inbound: Inbound::new(remote_v5, &config.client_id, local.receive_maximum, status),
            link: None,
            attempt: None,
            backoff: Backoff::new(config.reconnect_min_ms, config.reconnect_max_ms),
            retry_at: Instant::now(),
            next_local_ping: Instant::now() + local_ping,
            local_ping,
            local,
        })
    }

    /// Handles one event; `Some` when this life of the bridge ends.
    fn handle(&mut self, event: Event, live: &mut Live, sends: &mut Sends) -> Option<Ended> {
        match event {
            Event::Stop(reason) => return Some(Ended::Stop(reason)),
            Event::Local(Err(e)) => {
                self.status
                    .set_last_error(format!("local session ended: {e}"));
                tracing::debug!(bridge = %self.config.name, error = %e, "bridge's local session ended");
                return Some(Ended::LocalLost);
            }
            Event::Local(Ok(Packet::Disconnect(d))) => {
                self.status.set_last_error(format!(
                    "local session ended: DISCONNECT 0x{:02x}",
                    d.reason_code.0
                ));
                return Some(Ended::LocalLost);
            }
            Event::Local(Ok(packet)) => {
                handle_local(
                    packet,
                    &self.rules,
                    &mut live.outbound,
                    &mut live.inbound,
                    sends,
                );
            }
            Event::Remote(Ok(packet)) => {
                if let Some(link) = live.link.as_mut() {
                    let handled = handle_remote(
                        packet,
                        link,
                        &self.rules,
                        &mut live.outbound,
                        &mut live.inbound,
                        sends,
                    );
                    if let Err(e) = handled {
                        self.lost(live, e);
                    }
                }
            }
            Event::Remote(Err(e)) => self.lost(live, e.to_string()),
            Event::Attempted((result, refused)) => {
                live.attempt = None;
                for i in refused {
                    self.private_refused[i] = true;
                }
                match result {
                    Ok(remote) => {
                        let up = self.up(remote, &mut live.outbound, &mut live.inbound, sends);
                        live.backoff.reset();
                        live.link = Some(up);
                    }
                    Err(_) => {
                        self.status.set_state(LinkState::Down);
                        live.retry_at = Instant::now() + live.backoff.next();
                    }
                }
            }
            Event::Tick => {}
            Event::Ping => self.ping(live, sends),
            Event::LocalPing => {
                live.next_local_ping = Instant::now() + live.local_ping;
                sends.local.push(Packet::PingReq);
            }
        }
        None
    }

    fn remote_v5(&self) -> bool {
        remote::version_of(self.config.protocol).is_v5()
    }

    /// Keep alive towards the remote: a PINGREQ, or the link is lost when the last one
    /// got no PINGRESP within the keep alive.
    fn ping(&self, live: &mut Live, sends: &mut Sends) {
        let Some(link) = live.link.as_mut() else {
            return;
        };
        if link.ping_outstanding {
            self.lost(live, "no PINGRESP within the keep alive".into());
            return;
        }
        link.ping_outstanding = true;
        link.next_ping = Some(Instant::now() + keep_alive(&link.remote));
        sends.remote.push(Packet::PingReq);
    }

    /// A connect attempt over the remotes, in order.
    fn attempt(&self, local: (u16, u32)) -> Attempt {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let status = self.status.clone();
        let refused_before = self.private_refused.clone();
        let filters = self.rules.remote_filters();
        Box::pin(async move {
            let mut refused = Vec::new();
            let mut last = None;
            for (i, remote) in config.remotes.iter().enumerate() {
                status.set_remote(remote);
                let private = config.try_private && !refused_before[i];
                let mut result =
                    remote::connect(&config, tls.as_ref(), remote, private, local, &filters).await;
                if private && !remote::version_of(config.protocol).is_v5() {
                    if let Err(e) = &result {
                        if e.may_be_bridge_bit() {
                            tracing::info!(bridge = %config.name, %remote, error = %e, "remote refused the bridge bit: trying plain 3.1.1");
                            result = remote::connect(
                                &config,
                                tls.as_ref(),
                                remote,
                                false,
                                local,
                                &filters,
                            )
                            .await;
                            if result.is_ok() {
                                refused.push(i);
                            }
                        }
                    }
                }
                match result {
                    Ok(link) => return (Ok(link), refused),
                    Err(e) => {
                        LinkStatus::count(&status.counters.connect_failures);
                        status.set_last_error(format!("{remote}: {e}"));
                        tracing::warn!(bridge = %config.name, %remote, error = %e, "bridge connect failed");
                        last = Some(e);
                    }
                }
            }
            let error = last.unwrap_or(ConnectError::Unexpected("no remote"));
            (Err(error), refused)
        })
    }

    /// The link is up: what waited goes.
    fn up(
        &self,
        remote: RemoteLink,
        outbound: &mut Outbound,
        inbound: &mut Inbound,
        sends: &mut Sends,
    ) -> Link {
        let status = &self.status;
        status.set_state(LinkState::Up);
        LinkStatus::count(&status.counters.connects);
        tracing::info!(bridge = %self.config.name, remote = %status.remote(), session_present = remote.session_present, "bridge connected");
        inbound.link_up(remote.session_present);
        outbound.link_up(
            remote.session_present,
            remote.maximum_packet_size_bytes,
            remote.receive_maximum.min(self.config.max_inflight),
            sends,
        );
        let echoes = (!self.remote_v5() && !remote.bridge_bit).then(Echoes::default);
        let mut link = Link {
            echoes,
            next_ping: (remote.keep_alive_secs > 0).then(|| Instant::now() + keep_alive(&remote)),
            ping_outstanding: false,
            remote,
        };
        for packet in std::mem::take(&mut link.remote.early) {
            if let Err(e) = handle_remote(packet, &mut link, &self.rules, outbound, inbound, sends)
            {
                status.set_last_error(e);
            }
        }
        link
    }

    /// The link failed: it is dropped and retried after the backoff.
    fn lost(&self, live: &mut Live, error: String) {
        if live.link.take().is_none() {
            return;
        }
        let status = &self.status;
        status.set_state(LinkState::Down);
        status.set_last_error(format!("{}: {error}", status.remote()));
        LinkStatus::count(&status.counters.disconnects);
        tracing::warn!(bridge = %self.config.name, remote = %status.remote(), %error, queued = live.outbound.len(), "bridge link lost");
        live.outbound.link_down();
        live.inbound.link_down();
        live.retry_at = Instant::now() + live.backoff.next();
    }

    /// Says goodbye to both sides; a removed bridge ends its local session.
    async fn finish(&self, local: &PacketWriter, link: Option<Link>, reason: Stop) {
        self.status.set_state(LinkState::Down);
        if let Some(link) = link {
            let _ = link
                .remote
                .writer
                .send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
                .await;
        }
        let mut goodbye = Disconnect::new(ReasonCode::SUCCESS);
        if reason == Stop::Remove {
            goodbye.properties.session_expiry_interval_secs = Some(0);
        }
        let _ = local.send(&Packet::Disconnect(goodbye)).await;
    }
}

/// What the bridge's loop owns while it runs.
struct Live {
    local: LocalLink,
    link: Option<Link>,
    /// The connect attempt in progress, kept across iterations (polling it resumes it).
    attempt: Option<Attempt>,
    outbound: Outbound,
    inbound: Inbound,
    backoff: Backoff,
    /// When to try again while there is no link.
    retry_at: Instant,
    local_ping: Duration,
    next_local_ping: Instant,
}

impl Live {
    /// Waits for the next thing to do.
    ///
    /// # Cancel safety
    /// Not meant to be cancelled; every branch inside is cancel safe (see each).
    async fn next_event(&mut self, stop: &mut watch::Receiver<Stop>) -> Event {
        let ping_at = ping_due(&self.link);
        let pinging = self.link.as_ref().is_some_and(|l| l.next_ping.is_some());
        let idle = self.link.is_none() && self.attempt.is_none();
        let local_keep_alive = self.local.keep_alive_secs > 0;
        tokio::select! {
            // Cancel safe: `changed` only reads the channel.
            _ = stop.changed() => Event::Stop(*stop.borrow()),
            // Cancel safe (PacketReader::next).
            packet = self.local.reader.next() => Event::Local(packet),
            // Cancel safe, as above; pending while there is no link.
            packet = next_remote(&mut self.link) => Event::Remote(packet),
            // Cancel safe: the attempt stays in `self.attempt` and resumes.
            result = poll_attempt(&mut self.attempt) => Event::Attempted(result),
            () = sleep_until(self.retry_at), if idle => Event::Tick,
            () = sleep_until(ping_at), if pinging => Event::Ping,
            () = sleep_until(self.next_local_ping), if local_keep_alive => Event::LocalPing,
        }
    }
}

/// What woke the loop.
enum Event {
    Stop(Stop),
    Local(Result<Packet, WireError>),
    Remote(Result<Packet, WireError>),
    Attempted((Result<RemoteLink, ConnectError>, Vec<usize>)),
    Tick,
    Ping,
    LocalPing,
}

/// Why one life of the bridge ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// Told to stop.
    Stop(Stop),
    /// The local session ended (the broker closed it).
    LocalLost,
}

/// Which side failed while sending.
enum Side {
    Local,
    Remote(String),
}

fn keep_alive(remote: &RemoteLink) -> Duration {
    Duration::from_secs(u64::from(remote.keep_alive_secs))
}

fn ping_due(link: &Option<Link>) -> Instant {
    link.as_ref()
        .and_then(|l| l.next_ping)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
}

/// The next packet of the remote; pending forever without a link.
///
/// # Cancel safety
/// Cancel safe ([`super::wire::PacketReader::next`]).
async fn next_remote(link: &mut Option<Link>) -> Result<Packet, WireError> {
    match link {
        Some(link) => link.remote.reader.next().await,
        None => std::future::pending().await,
    }
}

/// The attempt's result; pending without one.
///
/// # Cancel safety
/// Cancel safe: the attempt stays in `attempt` and resumes when polled again.
async fn poll_attempt(
    attempt: &mut Option<Attempt>,
) -> (Result<RemoteLink, ConnectError>, Vec<usize>) {
    match attempt {
        Some(attempt) => attempt.await,
        None => std::future::pending().await,
    }
}

fn handle_local(
    packet: Packet,
    rules: &Rules,
    outbound: &mut Outbound,
    inbound: &mut Inbound,
    sends: &mut Sends,
) {
    match packet {
        Packet::Publish(publish) => {
            outbound.handle_local_publish(publish, rules, Instant::now(), sends)
        }
        Packet::PubRel(rel) => sends
            .local
            .push(Packet::PubComp(tern_codec::PubComp::new(rel.packet_id))),
        ack @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
            inbound.handle_local_ack(&ack, sends)
        }
        Packet::SubAck(suback) if suback.reason_codes.iter().any(|c| c.0 >= 0x80) => {
            tracing::warn!(codes = ?suback.reason_codes, "bridge's local subscription refused (ACL?)");
        }
        _ => {}
    }
}

fn handle_remote(
    packet: Packet,
    link: &mut Link,
    rules: &Rules,
    outbound: &mut Outbound,
    inbound: &mut Inbound,
    sends: &mut Sends,
) -> Result<(), String> {
    match packet {
        Packet::Publish(publish) => {
            let echo = link
                .echoes
                .as_mut()
                .is_some_and(|e| e.is_echo(publish.topic(), publish.payload()));
            if echo {
                inbound.drop_echo(&publish, sends);
            } else {
                inbound.handle_remote_publish(publish, rules, sends);
            }
        }
        Packet::PubRel(rel) => inbound.handle_remote_release(rel.packet_id, sends),
        ack @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
            outbound.handle_remote_ack(&ack, sends)
        }
        Packet::PingResp => link.ping_outstanding = false,
        Packet::Disconnect(d) => {
            return Err(format!(
                "DISCONNECT from the remote: reason 0x{:02x}",
                d.reason_code.0
            ))
        }
        Packet::SubAck(_) | Packet::UnsubAck(_) => {}
        other => return Err(format!("unexpected {} from the remote", other.name())),
    }
    Ok(())
}

/// Sends what the machines answered: to the local broker (a failure ends the bridge), to
/// the remote (a failure drops the link; QoS 0 messages that do not fit are dropped).
async fn flush(
    local: &PacketWriter,
    link: &mut Option<Link>,
    sends: Sends,
    status: &LinkStatus,
) -> Result<(), Side> {
    for packet in &sends.local {
        local.send(packet).await.map_err(|_| Side::Local)?;
    }
    let Some(link) = link.as_mut() else {
        return Ok(());
    };
    for packet in &sends.remote {
        if let (Packet::Publish(p), Some(echoes)) = (packet, link.echoes.as_mut()) {
            if !p.dup {
                echoes.sent(p.topic(), p.payload());
            }
        }
        if let Packet::Publish(p) = packet {
            if p.qos() == QoS::AtMostOnce {
                if !link.remote.writer.try_send(packet) {
                    LinkStatus::count(&status.counters.messages_dropped);
                }
                continue;
            }
        }
        link.remote
            .writer
            .send(packet)
            .await
            .map_err(|e| Side::Remote(e.to_string()))?;
    }
    Ok(())
}
