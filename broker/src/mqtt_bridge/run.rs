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

/// Exponential backoff with jitter between `min` and `max`.
#[derive(Debug)]
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            min_ms,
            max_ms,
            next_ms: min_ms,
        }
    }

    /// The next delay: the current bound, with up to a quarter taken off at random (so
    /// that bridges cut off together do not all come back at the same instant); the bound
    /// doubles.
    fn next(&mut self) -> Duration {
        let bound = self.next_ms;
        self.next_ms = (self.next_ms.saturating_mul(2)).min(self.max_ms);
        let mut random = [0u8; 8];
        let _ = getrandom::getrandom(&mut random);
        let jitter = u64::from_le_bytes(random) % (bound / 4 + 1);
        Duration::from_millis(bound - jitter)
    }

    fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

/// One running bridge.
pub(crate) struct Bridge {
    broker: Broker,
    config: Arc<MqttBridgeConfig>,
    rules: Rules,
    status: Arc<LinkStatus>,
    tls: Option<Tls>,
    /// Per remote: whether it refused the bridge bit (then plain 3.1.1 is used).
    private_refused: Vec<bool>,
}

/// The remote side while the loop runs.
struct Link {
    remote: RemoteLink,
    /// A PINGREQ went and no PINGRESP came yet.
    ping_outstanding: bool,
    next_ping: Option<Instant>,
}

impl Bridge {
    /// A bridge for `config`; its status goes to `status`.
    pub(crate) fn new(
        broker: Broker,
        config: Arc<MqttBridgeConfig>,
        status: Arc<LinkStatus>,
        tls: Option<Tls>,
    ) -> Bridge {
        Bridge {
            rules: Rules::new(config.topics.clone()),
            private_refused: vec![false; config.remotes.len()],
            broker,
            config,
            status,
            tls,
        }
    }

    /// Runs until `stop` says so or the broker shuts down.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<Stop>) {
        let name = self.config.name.clone();
        let mut local = match local::connect(
            &self.broker,
            &self.config.local_client_id,
            &self.config.local_username,
            self.config.max_inflight,
            &self.rules.local_filters(),
        )
        .await
        {
            Ok(local) => local,
            Err(e) => {
                self.status.set_last_error(format!("local session: {e}"));
                tracing::warn!(bridge = %name, error = %e, "bridge cannot open its local session");
                return;
            }
        };
        let remote_v5 = remote::version_of(self.config.protocol).is_v5();
        let status = self.status.clone();
        let mut outbound = Outbound::new(remote_v5, &self.config.client_id, status.clone());
        let mut inbound = Inbound::new(
            remote_v5,
            &self.config.client_id,
            local.receive_maximum,
            status.clone(),
        );
        let mut link: Option<Link> = None;
        let mut attempt: Option<Attempt> = None;
        let mut backoff = Backoff::new(self.config.reconnect_min_ms, self.config.reconnect_max_ms);
        let mut retry_at = Instant::now();
        let local_ping = Duration::from_secs(u64::from(local.keep_alive_secs.max(2) / 2));
        let mut next_local_ping = Instant::now() + local_ping;
        loop {
            if link.is_none() && attempt.is_none() && Instant::now() >= retry_at {
                status.set_state(LinkState::Connecting);
                attempt = Some(self.attempt(inbound_window(&local)));
            }
            let mut sends = Sends::default();
            let ping_at = ping_due(&link);
            let pinging = link.as_ref().is_some_and(|l| l.next_ping.is_some());
            let event = tokio::select! {
                // Cancel safe: `changed` only reads the channel.
                _ = stop.changed() => Event::Stop(*stop.borrow()),
                // Cancel safe (PacketReader::next).
                packet = local.reader.next() => Event::Local(packet),
                // Cancel safe, as above; pending while there is no link.
                packet = next_remote(&mut link) => Event::Remote(packet),
                // The attempt is kept across iterations: polling it again resumes it.
                result = poll_attempt(&mut attempt) => Event::Attempted(result),
                () = sleep_until(retry_at), if link.is_none() && attempt.is_none() => Event::Tick,
                () = sleep_until(ping_at), if pinging => Event::Ping,
                () = sleep_until(next_local_ping), if local.keep_alive_secs > 0 => Event::LocalPing,
            };
            match event {
                Event::Stop(reason) => {
                    self.finish(&local.writer, link.take(), reason).await;
                    return;
                }
                Event::Local(Err(e)) => {
                    tracing::debug!(bridge = %name, error = %e, "bridge's local session ended");
                    self.finish(&local.writer, link.take(), Stop::Restart).await;
                    return;
                }
                Event::Local(Ok(packet)) => {
                    if matches!(packet, Packet::Disconnect(_)) {
                        self.finish(&local.writer, link.take(), Stop::Restart).await;
                        return;
                    }
                    handle_local(packet, &self.rules, &mut outbound, &mut inbound, &mut sends);
                }
                Event::Remote(Ok(packet)) => {
                    if let Some(l) = link.as_mut() {
                        if let Err(e) = handle_remote(
                            packet,
                            l,
                            &self.rules,
                            &mut outbound,
                            &mut inbound,
                            &mut sends,
                        ) {
                            self.lost(
                                &mut link,
                                &mut outbound,
                                &mut inbound,
                                &mut retry_at,
                                &mut backoff,
                                e,
                            );
                        }
                    }
                }
                Event::Remote(Err(e)) => {
                    self.lost(
                        &mut link,
                        &mut outbound,
                        &mut inbound,
                        &mut retry_at,
                        &mut backoff,
                        e.to_string(),
                    );
                }
                Event::Attempted((result, refused)) => {
                    attempt = None;
                    for i in refused {
                        self.private_refused[i] = true;
                    }
                    match result {
                        Ok(remote) => {
                            let up = self.up(remote, &mut outbound, &mut inbound, &mut sends);
                            backoff.reset();
                            link = Some(up);
                        }
                        Err(_) => {
                            status.set_state(LinkState::Down);
                            retry_at = Instant::now() + backoff.next();
                        }
                    }
                }
                Event::Tick => {}
                Event::Ping => {
                    if let Some(l) = link.as_mut() {
                        if l.ping_outstanding {
                            self.lost(
                                &mut link,
                                &mut outbound,
                                &mut inbound,
                                &mut retry_at,
                                &mut backoff,
                                "no PINGRESP within the keep alive".into(),
                            );
                        } else {
                            l.ping_outstanding = true;
                            l.next_ping =
                                l.next_ping.map(|_| Instant::now() + keep_alive(&l.remote));
                            sends.remote.push(Packet::PingReq);
                        }
                    }
                }
                Event::LocalPing => {
                    next_local_ping = Instant::now() + local_ping;
                    sends.local.push(Packet::PingReq);
                }
            }
            if let Err(e) = flush(&local.writer, &mut link, sends, &status).await {
                match e {
                    Side::Local => {
                        self.finish(&local.writer, link.take(), Stop::Restart).await;
                        return;
                    }
                    Side::Remote(e) => {
                        self.lost(
                            &mut link,
                            &mut outbound,
                            &mut inbound,
                            &mut retry_at,
                            &mut backoff,
                            e,
                        );
                    }
                }
            }
        }
    }

    /// A connect attempt over the remotes, in order.
    fn attempt(&self, receive_maximum: u16) -> Attempt {
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
                let mut result = remote::connect(
                    &config,
                    tls.as_ref(),
                    remote,
                    private,
                    receive_maximum,
                    &filters,
                )
                .await;
                if private && !remote::version_of(config.protocol).is_v5() {
                    if let Err(e) = &result {
                        if e.may_be_bridge_bit() {
                            tracing::info!(bridge = %config.name, %remote, error = %e, "remote refused the bridge bit: trying plain 3.1.1");
                            result = remote::connect(
                                &config,
                                tls.as_ref(),
                                remote,
                                false,
                                receive_maximum,
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
            remote.receive_maximum.min(self.config.max_inflight),
            sends,
        );
        let mut link = Link {
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
    fn lost(
        &self,
        link: &mut Option<Link>,
        outbound: &mut Outbound,
        inbound: &mut Inbound,
        retry_at: &mut Instant,
        backoff: &mut Backoff,
        error: String,
    ) {
        if link.take().is_none() {
            return;
        }
        let status = &self.status;
        status.set_state(LinkState::Down);
        status.set_last_error(format!("{}: {error}", status.remote()));
        LinkStatus::count(&status.counters.disconnects);
        tracing::warn!(bridge = %self.config.name, remote = %status.remote(), %error, queued = outbound.len(), "bridge link lost");
        outbound.link_down();
        inbound.link_down();
        *retry_at = Instant::now() + backoff.next();
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

/// Which side failed while sending.
enum Side {
    Local,
    Remote(String),
}

fn inbound_window(local: &LocalLink) -> u16 {
    local.receive_maximum
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
        Packet::Publish(publish) => inbound.handle_remote_publish(publish, rules, sends),
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
