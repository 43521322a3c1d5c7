//! Flow-control scenarios (issue #17).
//!
//! - `retained-replay`: N retained messages are stored (published at QoS 1, each
//!   acknowledged), then one subscriber to their wildcard reads as fast as it can (and
//!   acknowledges at QoS 1): how many arrive, how long it takes, and how much the broker's
//!   RSS grows meanwhile.
//! - `stuck-qos1`: S subscribers at QoS 1 that never read, a publisher of large QoS 1
//!   messages to them at a fixed rate, and an innocent pair (small QoS 1 messages on a
//!   topic of their own): the broker's peak RSS, the innocent subscriber's latency, and
//!   how many stuck subscribers the broker disconnected by the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Buf;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::mqtt::{self, kind, Conn, PublishFrame};
use crate::payload::{now_ns, Stamp};
use crate::procfs;
use crate::scenarios::Target;
use crate::stats::round3;

/// Broker RSS sampled every 20 ms while alive; the peak in KiB (0 without a PID).
struct RssPeak {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn start(pid: Option<u32>) -> RssPeak {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(pid) = pid {
            let (peak, stop) = (peak_kib.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    if let Ok(kib) = procfs::rss_kib(pid) {
                        peak.fetch_max(kib, Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        RssPeak { peak_kib, stop }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Relaxed);
        self.peak_kib.load(Relaxed)
    }
}

fn rss_now(pid: Option<u32>) -> u64 {
    pid.and_then(|pid| procfs::rss_kib(pid).ok()).unwrap_or(0)
}

/// What a QoS 1 publisher saw: sent, acknowledged, refused (5.0 reason code >= 0x80).
#[derive(Debug, Default, Clone, Copy)]
struct Published {
    sent: u64,
    acked: u64,
    refused: u64,
}

/// Publishes QoS 1 messages from `conn`, cycling through `frames`: `count` of them (or
/// until `until`), at `rate` per second (0: as fast as a window of `window`
/// unacknowledged allows), and waits for their acknowledgements.
async fn publish_qos1(
    conn: &mut Conn,
    frames: &[PublishFrame],
    count: u64,
    rate: f64,
    until: Option<Instant>,
    window: u64,
) -> Result<Published> {
    let mut p = Published::default();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while p.acked + p.refused < count {
        let expired = until.is_some_and(|u| Instant::now() >= u);
        let due = if rate > 0.0 {
            (started.elapsed().as_secs_f64() * rate) as u64 + 1
        } else {
            u64::MAX
        };
        out.clear();
        while !expired && p.sent < count && p.sent < due && p.sent - p.acked - p.refused < window {
            let i = p.sent as usize % frames.len();
            let id = (p.sent % 65_535 + 1) as u16;
            let stamp = Stamp {
                sent_ns: now_ns(),
                seq: p.sent as u32,
                publisher: 0,
            };
            frames[i].put(&mut out, id, &stamp);
            p.sent += 1;
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).await?;
        }
        if expired && p.sent == p.acked + p.refused {
            break;
        }
        let wait = if rate > 0.0 { 2 } else { 1000 };
        let read = tokio::time::timeout(Duration::from_millis(wait), conn.stream.read(&mut chunk));
        if let Ok(n) = read.await {
            let n = n?;
            if n == 0 {
                bail!("publisher's connection closed by the broker");
            }
            conn.rbuf.extend_from_slice(&chunk[..n]);
            count_acks(conn, &mut p)?;
        }
    }
    Ok(p)
}

fn count_acks(conn: &mut Conn, p: &mut Published) -> Result<()> {
    while let Some((byte0, header_len, total)) = mqtt::frame_header(&conn.rbuf)? {
        if byte0 >> 4 == kind::PUBACK {
            let refused = total > header_len + 2 && conn.rbuf[header_len + 2] >= 0x80;
            if refused {
                p.refused += 1;
            } else {
                p.acked += 1;
            }
        }
        conn.rbuf.advance(total);
    }
    Ok(())
}

/// Reads PUBLISH packets until `want` arrived, nothing came for `idle` or `stop` is set;
/// acknowledges those at QoS 1. Returns how many arrived; with `latencies`, collects the
/// latency of each (ns, from the payload's stamp).
async fn read_publishes(
    conn: &mut Conn,
    want: u64,
    idle: Duration,
    mut latencies: Option<&mut Vec<u64>>,
    stop: Option<&AtomicBool>,
) -> Result<u64> {
    let v5 = conn.version.is_v5();
    let mut got = 0;
    let mut acks = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    while got < want && !stop.is_some_and(|s| s.load(Relaxed)) {
        let wait = if stop.is_some() {
            Duration::from_millis(50)
        } else {
            idle
        };
        let n = match tokio::time::timeout(wait, conn.stream.read(&mut chunk)).await {
            Ok(n) => n?,
            Err(_) if stop.is_some() => continue,
            Err(_) => break,
        };
        if n == 0 {
            bail!("subscriber's connection closed by the broker");
        }
        conn.rbuf.extend_from_slice(&chunk[..n]);
        acks.clear();
        while let Some((byte0, header_len, total)) = mqtt::frame_header(&conn.rbuf)? {
            if byte0 >> 4 == kind::PUBLISH {
                let frame = &conn.rbuf[..total];
                if let Some((qos, id, payload)) = mqtt::publish_payload(frame, header_len, v5) {
                    if qos == 1 {
                        mqtt::put_ack(&mut acks, kind::PUBACK, id);
                    }
                    if let (Some(l), Some(stamp)) = (latencies.as_deref_mut(), Stamp::read(payload))
                    {
                        l.push(now_ns().saturating_sub(stamp.sent_ns));
                    }
                }
                got += 1;
            }
            conn.rbuf.advance(total);
        }
        if !acks.is_empty() {
            conn.stream.write_all(&acks).await?;
        }
    }
    Ok(got)
}

/// `retained-replay`: `count` retained messages of `payload_bytes`, one subscriber at `qos`.
pub(crate) async fn run_retained_replay(
    target: &Target,
    count: u64,
    payload_bytes: usize,
    qos: u8,
) -> Result<Value> {
    let v5 = target.version.is_v5();
    let prefix = format!("{}/rc", target.run_id);
    let mut publisher =
        Conn::connect(target.addr, target.version, &format!("{prefix}-pub")).await?;
    let frames: Vec<PublishFrame> = (0..count.min(100_000))
        .map(|i| {
            let mut f = PublishFrame::new(&format!("{prefix}/{i}"), 1, v5, payload_bytes);
            f.set_retain();
            f
        })
        .collect();
    let stored = publish_qos1(&mut publisher, &frames, count, 0.0, None, 100).await?;
    drop(frames);
    let rss_before_kib = rss_now(target.broker_pid);
    let peak = RssPeak::start(target.broker_pid);
    let mut sub = Conn::connect(target.addr, target.version, &format!("{prefix}-sub")).await?;
    let started = Instant::now();
    sub.subscribe(&format!("{prefix}/#"), mqtt::qos(qos)?)
        .await?;
    let received = read_publishes(&mut sub, count, Duration::from_secs(5), None, None).await?;
    let secs = started.elapsed().as_secs_f64();
    let rss_peak_kib = peak.finish();
    Ok(json!({
        "scenario": "retained-replay",
        "params": { "retained": count, "payload_bytes": payload_bytes, "qos": qos },
        "stored_acked": stored.acked,
        "received": received,
        "all_received": received == count,
        "secs_to_receive": round3(secs),
        "received_per_sec": round3(received as f64 / secs.max(1e-9)),
        "broker_rss_before_kib": rss_before_kib,
        "broker_rss_peak_kib": rss_peak_kib,
        "broker_rss_growth_kib": rss_peak_kib.saturating_sub(rss_before_kib),
    }))
}

/// Options of `stuck-qos1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StuckOpts {
    /// Subscribers that never read.
    pub(crate) stuck: usize,
    /// Payload of the large messages.
    pub(crate) payload_bytes: usize,
    /// Large messages per second.
    pub(crate) rate: f64,
    /// How long the large messages are published.
    pub(crate) duration_secs: f64,
    /// Innocent messages per second (64 B, QoS 1).
    pub(crate) innocent_rate: f64,
}

/// `stuck-qos1`: see the module doc.
pub(crate) async fn run_stuck_qos1(target: &Target, o: StuckOpts) -> Result<Value> {
    let v5 = target.version.is_v5();
    let run = &target.run_id;
    let big_topic = format!("{run}/big/x");
    let mut stuck = Vec::new();
    for i in 0..o.stuck {
        let mut conn =
            Conn::connect(target.addr, target.version, &format!("{run}-stuck{i}")).await?;
        conn.subscribe(&format!("{run}/big/#"), mqtt::qos(1)?)
            .await?;
        stuck.push(conn);
    }
    let mut inn_sub = Conn::connect(target.addr, target.version, &format!("{run}-isub")).await?;
    inn_sub
        .subscribe(&format!("{run}/inn"), mqtt::qos(1)?)
        .await?;
    let mut inn_pub = Conn::connect(target.addr, target.version, &format!("{run}-ipub")).await?;
    let mut big_pub = Conn::connect(target.addr, target.version, &format!("{run}-bpub")).await?;
    let rss_before_kib = rss_now(target.broker_pid);
    let peak = RssPeak::start(target.broker_pid);
    let until = Instant::now() + Duration::from_secs_f64(o.duration_secs);
    let done = Arc::new(AtomicBool::new(false));
    let reader_done = done.clone();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::new();
        let got = read_publishes(
            &mut inn_sub,
            u64::MAX,
            Duration::ZERO,
            Some(&mut latencies),
            Some(&reader_done),
        )
        .await;
        (got, latencies)
    });
    let inn_frames = [PublishFrame::new(&format!("{run}/inn"), 1, v5, 64)];
    let innocent = tokio::spawn(async move {
        publish_qos1(
            &mut inn_pub,
            &inn_frames,
            u64::MAX,
            o.innocent_rate,
            Some(until),
            100,
        )
        .await
    });
    let big_frames = [PublishFrame::new(&big_topic, 1, v5, o.payload_bytes)];
    let big = publish_qos1(&mut big_pub, &big_frames, u64::MAX, o.rate, Some(until), 16).await;
    let innocent = innocent.await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Relaxed);
    let (inn_got, mut latencies) = reader.await?;
    let rss_peak_kib = peak.finish();
    let mut disconnected = 0;
    for conn in &mut stuck {
        if drains_to_eof(conn, Duration::from_secs(3)).await {
            disconnected += 1;
        }
    }
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&ns| round3(ns as f64 / 1e6))
    };
    // A publisher that failed (the broker went away) makes the run fail, not a report of
    // zeros.
    let (big, innocent) = (big?, innocent?);
    Ok(json!({
        "scenario": "stuck-qos1",
        "params": { "stuck": o.stuck, "payload_bytes": o.payload_bytes, "rate": o.rate,
                    "duration_secs": o.duration_secs, "innocent_rate": o.innocent_rate },
        "big_sent": big.sent, "big_acked": big.acked, "big_refused": big.refused,
        "innocent_sent": innocent.sent, "innocent_received": inn_got.unwrap_or(0),
        "innocent_latency_ms": { "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0) },
        "stuck_disconnected": disconnected,
        "broker_rss_before_kib": rss_before_kib,
        "broker_rss_peak_kib": rss_peak_kib,
    }))
}

/// Whether the broker closed `conn`: reads (and discards) what it buffered until the end
/// of stream, for at most `wait`.
async fn drains_to_eof(conn: &mut Conn, wait: Duration) -> bool {
    let mut chunk = vec![0u8; 256 * 1024];
    let drain = async {
        loop {
            match conn.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, drain).await.unwrap_or(false)
}
