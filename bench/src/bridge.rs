//! The bridge scenarios (Tern only): `sse` holds N Server-Sent Events streams open on
//! `GET /sse?filter=F`, `ws` holds N WebSocket JSON clients on `GET /ws` subscribed to F.
//!
//! The subscriber count grows in cumulative steps (`--subscribers 0,100,500,...`); after each
//! step and `--settle-secs` the broker's RSS is the median of five samples, and the report
//! fits a least-squares line through the points: bytes of broker memory per subscriber. At
//! the largest step one MQTT publisher (QoS 0) sends `--rate` msg/s to a topic the filter
//! matches, with the timestamp header as hex text (see [`crate::payload`]) so that it travels
//! as a JSON string; every client decodes it from the event and the report has the
//! publish-to-event latency and delivered against expected.
//!
//! Each client is one task with one socket (tokio's epoll reactor); set-up is bounded by
//! `--connect-concurrency` and a time limit per step. Only 127.0.0.1 is used.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::mqtt::{Conn, PublishFrame};
use crate::payload::{epoch, now_ns, Stamp};
use crate::procfs;
use crate::scenarios::{slope, Target};
use crate::stats::{round3, Batch, Collector, SeqWindow};

/// Which bridge the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BridgeKind {
    /// `GET /sse?filter=F`, Server-Sent Events.
    Sse,
    /// `GET /ws`, WebSocket JSON API.
    Ws,
}

impl BridgeKind {
    fn name(self) -> &'static str {
        match self {
            BridgeKind::Sse => "sse",
            BridgeKind::Ws => "ws",
        }
    }
}

/// Options of a bridge run.
#[derive(Debug, Clone)]
pub(crate) struct BridgeOpts {
    pub(crate) kind: BridgeKind,
    /// Tern's HTTP listener port on 127.0.0.1.
    pub(crate) http_port: u16,
    /// Cumulative subscriber counts, one RSS point each.
    pub(crate) steps: Vec<usize>,
    /// Filter every client subscribes to.
    pub(crate) filter: String,
    /// Topic the publisher sends to (must match `filter`).
    pub(crate) topic: String,
    /// Messages per second of the publisher.
    pub(crate) rate: f64,
    /// Payload bytes (at least the 32 hex digits of the header).
    pub(crate) payload_bytes: usize,
    /// Pause after each step before sampling RSS.
    pub(crate) settle_secs: f64,
    /// Publishing before the measured window (not counted).
    pub(crate) warmup_secs: f64,
    /// Measured window.
    pub(crate) duration_secs: f64,
    /// Longest wait for in-flight events after publishing stops.
    pub(crate) drain_secs: f64,
}

/// Counts shared by the client tasks.
#[derive(Debug)]
struct Shared {
    collector: Collector,
    /// Clients whose stream is open (SSE: first comment seen; WS: subscribe acknowledged).
    connected: AtomicU64,
    /// Clients that failed to connect.
    failed: AtomicU64,
    /// Clients whose stream ended after connecting.
    disconnects: AtomicU64,
    /// `lagged` notices (the client fell behind its ring).
    lagged: AtomicU64,
    /// Measured window `[warm_end_ns, end_ns)`; empty until the flow starts.
    warm_end_ns: AtomicU64,
    end_ns: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    #[inline]
    fn in_window(&self, t: u64) -> bool {
        t >= self.warm_end_ns.load(Relaxed) && t < self.end_ns.load(Relaxed)
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 5 {
            errors.push(e);
        }
    }
}

/// One item of a bridge stream, as the parsers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    /// SSE comment line (`: tern`, `: keep-alive`) or WebSocket `ack`: the stream is live.
    Open,
    /// A message; its stamp when the payload carried one.
    Message(Option<Stamp>),
    /// The client fell behind its ring.
    Lagged,
    /// WebSocket `error` frame.
    Error,
}

/// The stamp in the `"payload":"..."` string of one JSON message.
fn payload_stamp(json: &[u8]) -> Option<Stamp> {
    const KEY: &[u8] = b"\"payload\":\"";
    let at = find(json, KEY)?;
    Stamp::read_hex(&json[at + KEY.len()..])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Incremental parser of an SSE body (`text/event-stream`).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// `event:` of the event being read (`None`: the default, `message`).
    lagged: bool,
    /// Its `data:` line, decoded.
    data: Option<Option<Stamp>>,
}

impl SseParser {
    /// Parses the complete lines at the front of `buf`, calling `on` per item; returns the
    /// bytes consumed (an incomplete last line is left for the next call).
    pub(crate) fn feed(&mut self, buf: &[u8], on: &mut impl FnMut(Item)) -> usize {
        let mut off = 0;
        while let Some(nl) = buf[off..].iter().position(|&b| b == b'\n') {
            let mut line = &buf[off..off + nl];
            off += nl + 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                // End of an event: dispatch it.
                if let Some(stamp) = self.data.take() {
                    on(if self.lagged {
                        Item::Lagged
                    } else {
                        Item::Message(stamp)
                    });
                }
                self.lagged = false;
            } else if line[0] == b':' {
                on(Item::Open);
            } else if let Some(ev) = line.strip_prefix(b"event:") {
                self.lagged = ev.trim_ascii() == b"lagged";
            } else if let Some(data) = line.strip_prefix(b"data:") {
                self.data = Some(payload_stamp(data));
            }
        }
        off
    }
}

/// Parses one WebSocket JSON text frame (`ack`, `message`, `batch`, `lagged`, `error`).
pub(crate) fn ws_frame(text: &[u8], on: &mut impl FnMut(Item)) {
    let head = &text[..text.len().min(40)];
    if find(head, b"\"type\":\"batch\"").is_some() {
        // Every element is one message with one "payload" key.
        const KEY: &[u8] = b"\"payload\":\"";
        let mut rest = text;
        while let Some(at) = find(rest, KEY) {
            rest = &rest[at + KEY.len()..];
            on(Item::Message(Stamp::read_hex(rest)));
        }
    } else if find(head, b"\"type\":\"message\"").is_some() {
        on(Item::Message(payload_stamp(text)));
    } else if find(head, b"\"type\":\"ack\"").is_some() {
        on(Item::Open);
    } else if find(head, b"\"type\":\"lagged\"").is_some() {
        on(Item::Lagged);
    } else if find(head, b"\"type\":\"error\"").is_some() {
        on(Item::Error);
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Per-client bookkeeping of deliveries, folded into the collector once per read.
struct Tally {
    window: SeqWindow,
    batch: Batch,
    lagged: u64,
    open: bool,
    error: bool,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            window: SeqWindow::default(),
            batch: Batch::default(),
            lagged: 0,
            open: false,
            error: false,
        }
    }

    fn item(&mut self, shared: &Shared, now: u64, item: Item) {
        match item {
            Item::Open => self.open = true,
            Item::Lagged => self.lagged += 1,
            Item::Error => self.error = true,
            Item::Message(None) => {}
            Item::Message(Some(stamp)) => {
                self.batch.delivered += 1;
                if shared.in_window(now) {
                    self.batch.delivered_in_window += 1;
                }
                if shared.in_window(stamp.sent_ns) {
                    self.batch
                        .measured(self.window.observe(stamp.seq), now - stamp.sent_ns.min(now));
                }
            }
        }
    }

    fn flush(&mut self, shared: &Shared) {
        shared.collector.flush(&mut self.batch);
        if self.lagged > 0 {
            shared.lagged.fetch_add(self.lagged, Relaxed);
            self.lagged = 0;
        }
    }
}

/// How long one client may take to connect and get its stream going.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One SSE client: request, then parse the body until stopped.
async fn sse_client(
    addr: SocketAddr,
    filter: String,
    shared: Arc<Shared>,
    opened: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    went_live: &mut bool,
) -> Result<()> {
    let mut permit = Some(opened);
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET /sse?filter={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
        url_encode(&filter)
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut head_done = false;
    let mut parser = SseParser::default();
    let mut tally = Tally::new();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let n = tokio::select! {
            r = stream.read_buf(&mut buf) => r?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep_until(deadline), if permit.is_some() => bail!("no SSE stream within {CONNECT_TIMEOUT:?}"),
        };
        if n == 0 {
            bail!("stream closed by the broker");
        }
        let now = now_ns();
        let mut start = 0;
        if !head_done {
            let Some(end) = find(&buf, b"\r\n\r\n") else {
                if buf.len() > 16 * 1024 {
                    bail!("response head too long");
                }
                continue;
            };
            let status = buf.split(|&b| b == b'\n').next().unwrap_or_default();
            if !status.starts_with(b"HTTP/1.1 200") {
                bail!(
                    "SSE refused: {}",
                    String::from_utf8_lossy(status).trim_end()
                );
            }
            head_done = true;
            start = end + 4;
        }
        let used = parser.feed(&buf[start..], &mut |item| tally.item(&shared, now, item));
        buf.drain(..start + used);
        tally.flush(&shared);
        if tally.open && permit.is_some() {
            permit = None;
            *went_live = true;
            shared.connected.fetch_add(1, Relaxed);
        }
    }
}

/// One WebSocket JSON client: upgrade, subscribe, parse frames until stopped.
async fn ws_client(
    addr: SocketAddr,
    filter: String,
    shared: Arc<Shared>,
    opened: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    went_live: &mut bool,
) -> Result<()> {
    let mut permit = Some(opened);
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    // Small buffers: thousands of clients share the generator's memory.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/ws"),
        stream,
        Some(config),
    )
    .await?;
    let sub = json!({ "op": "subscribe", "filters": [filter] }).to_string();
    ws.send(WsMessage::text(sub)).await?;
    let mut tally = Tally::new();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep_until(deadline), if permit.is_some() => bail!("no subscribe ack within {CONNECT_TIMEOUT:?}"),
        };
        let now = now_ns();
        match msg {
            None => bail!("stream closed by the broker"),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WsMessage::Text(t))) => {
                ws_frame(t.as_bytes(), &mut |item| tally.item(&shared, now, item));
                if tally.error {
                    bail!("error frame: {}", t.as_str());
                }
            }
            Some(Ok(WsMessage::Close(c))) => bail!("closed by the broker: {c:?}"),
            Some(Ok(_)) => {}
        }
        tally.flush(&shared);
        if tally.open && permit.is_some() {
            permit = None;
            *went_live = true;
            shared.connected.fetch_add(1, Relaxed);
        }
    }
}

/// Median of five RSS samples 200 ms apart, KiB.
async fn rss_median(pid: u32) -> Result<u64> {
    let mut xs = Vec::with_capacity(5);
    for i in 0..5 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        xs.push(procfs::rss_kib(pid)?);
    }
    xs.sort_unstable();
    Ok(xs[2])
}

/// Runs the `sse` or `ws` scenario and returns its JSON report.
pub(crate) async fn run_bridge(target: &Target, o: &BridgeOpts) -> Result<Value> {
    let pid = target.broker_pid.ok_or_else(|| {
        anyhow!(
            "{} needs --broker-pid to read the broker's RSS",
            o.kind.name()
        )
    })?;
    let mut steps = o.steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let largest = *steps
        .last()
        .ok_or_else(|| anyhow!("no --subscribers steps"))?;
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, o.http_port));
    let shared = Arc::new(Shared {
        collector: Collector::new()?,
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        lagged: AtomicU64::new(0),
        warm_end_ns: AtomicU64::new(u64::MAX),
        end_ns: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    let gen_cpu0 = procfs::cpu_secs(None)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut spawned = 0usize;
    let mut points: Vec<(usize, u64)> = Vec::new();
    let mut step_json = Vec::new();
    for &n in &steps {
        let t0 = Instant::now();
        while spawned < n {
            let permit = gate.clone().acquire_owned().await?;
            let (shared, stop, filter) = (shared.clone(), stop_rx.clone(), o.filter.clone());
            let kind = o.kind;
            spawned += 1;
            tasks.spawn(async move {
                let mut went_live = false;
                let live = &mut went_live;
                let res = match kind {
                    BridgeKind::Sse => {
                        sse_client(http, filter, shared.clone(), permit, stop, live).await
                    }
                    BridgeKind::Ws => {
                        ws_client(http, filter, shared.clone(), permit, stop, live).await
                    }
                };
                if let Err(e) = &res {
                    let count = if went_live {
                        &shared.disconnects
                    } else {
                        &shared.failed
                    };
                    count.fetch_add(1, Relaxed);
                    shared.error(format!("{e:#}"));
                }
            });
        }
        // Wait until every client of the step is live or has failed (bounded).
        let limit = Instant::now() + Duration::from_secs(30) + CONNECT_TIMEOUT;
        loop {
            while tasks.try_join_next().is_some() {}
            let done = (shared.connected.load(Relaxed) + shared.failed.load(Relaxed)) as usize;
            if done >= n || Instant::now() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open_secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs_f64(o.settle_secs)).await;
        let live = live(&shared);
        let rss = rss_median(pid).await?;
        points.push((live, rss));
        step_json.push(json!({
            "subscribers": n, "live": live, "rss_kib": rss, "open_secs": round3(open_secs),
        }));
        if target.progress {
            eprint!(
                "\r{} {live:>6} subscribers live, broker RSS {rss} KiB   ",
                o.kind.name()
            );
        }
    }
    if target.progress {
        eprintln!();
    }
    let slope_kib = slope(&points);

    // Fan-out at the largest step.
    let flow = if largest > 0 {
        Some(fanout(target, o, &shared).await?)
    } else {
        None
    };
    let _ = stop_tx.send(true);
    let elapsed = started.elapsed().as_secs_f64();
    let gen_cpu = procfs::cpu_secs(None)? - gen_cpu0;
    tasks.abort_all();
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut report = json!({
        "scenario": o.kind.name(),
        "params": {
            "subscribers": steps, "filter": o.filter, "topic": o.topic, "http_port": o.http_port,
            "rate": o.rate, "payload_bytes": o.payload_bytes, "settle_secs": o.settle_secs,
            "warmup_secs": o.warmup_secs, "duration_secs": o.duration_secs,
        },
        "steps": step_json,
        "rss_points_kib": points,
        "rss_slope_bytes_per_subscriber": round3(slope_kib * 1024.0),
        "connect_failed": shared.failed.load(Relaxed),
        "subscriber_disconnects": shared.disconnects.load(Relaxed),
        "lagged": shared.lagged.load(Relaxed),
        "generator": {
            "cpu_secs": round3(gen_cpu),
            "cpu_pct": round3(100.0 * gen_cpu / elapsed.max(1e-9)),
        },
        "errors": errors,
    });
    if let Some(flow) = flow {
        if let (Some(r), Some(f)) = (report.as_object_mut(), flow.as_object()) {
            for (k, v) in f {
                r.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(report)
}

/// Clients live now (connected and not ended).
fn live(shared: &Shared) -> usize {
    let connected = shared.connected.load(Relaxed);
    let ended = shared.disconnects.load(Relaxed);
    connected.saturating_sub(ended) as usize
}

/// The publish-to-event measurement at the largest step.
async fn fanout(target: &Target, o: &BridgeOpts, shared: &Arc<Shared>) -> Result<Value> {
    let mut conn = Conn::connect(
        target.addr,
        target.version,
        &format!("{}-bridge-pub", target.run_id),
    )
    .await?;
    let frame = PublishFrame::new_text(&o.topic, 0, target.version.is_v5(), o.payload_bytes);
    let interval_ns = (1e9 / o.rate.max(0.001)) as u64;
    let start_ns = now_ns() + 50_000_000;
    let warm_end_ns = start_ns + (o.warmup_secs.max(0.0) * 1e9) as u64;
    let end_ns = warm_end_ns + (o.duration_secs.max(0.1) * 1e9) as u64;
    shared.end_ns.store(end_ns, Relaxed);
    shared.warm_end_ns.store(warm_end_ns, Relaxed);
    let live_at_start = live(shared) as u64;
    let broker_cpu0 = target
        .broker_pid
        .map(|p| procfs::cpu_secs(Some(p)))
        .transpose()?;
    let gen_cpu0 = procfs::cpu_secs(None)?;
    let mut wbuf = Vec::with_capacity(frame.len());
    let mut seq = 0u32;
    loop {
        let due = start_ns + u64::from(seq) * interval_ns;
        if due >= end_ns {
            break;
        }
        sleep_until_ns(due).await;
        let now = now_ns();
        wbuf.clear();
        frame.put(
            &mut wbuf,
            0,
            &Stamp {
                sent_ns: now,
                seq,
                publisher: 0,
            },
        );
        conn.stream.write_all(&wbuf).await?;
        shared.collector.sent_total.fetch_add(1, Relaxed);
        if now >= warm_end_ns && now < end_ns {
            shared.collector.sent_measured.fetch_add(1, Relaxed);
        }
        seq += 1;
    }
    let broker_cpu = match (target.broker_pid, broker_cpu0) {
        (Some(p), Some(c0)) => Some(procfs::cpu_secs(Some(p))? - c0),
        _ => None,
    };
    let gen_cpu = procfs::cpu_secs(None)? - gen_cpu0;
    let expected = shared.collector.sent_measured.load(Relaxed) * live_at_start;
    let give_up = Instant::now() + Duration::from_secs_f64(o.drain_secs.max(0.0));
    while Instant::now() < give_up && shared.collector.received_unique() < expected {
        if live(shared) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = conn.stream.write_all(&[0xE0, 0]).await;
    let window_secs = (end_ns - warm_end_ns) as f64 / 1e9;
    let mut r = shared.collector.report(expected, window_secs);
    r["fanout_subscribers"] = json!(live_at_start);
    let total = (end_ns - start_ns) as f64 / 1e9;
    // The generator's share while publishing (100 = one core): near 100 it is the limit.
    r["generator_fanout_cpu_pct"] = json!(round3(100.0 * gen_cpu / total));
    if let (Some(pid), Some(cpu)) = (target.broker_pid, broker_cpu) {
        r["broker"] = json!({
            "pid": pid,
            "cpu_pct": round3(100.0 * cpu / total),
            "rss_end_kib": procfs::rss_kib(pid).ok(),
        });
    }
    Ok(r)
}

async fn sleep_until_ns(t_ns: u64) {
    tokio::time::sleep_until(Instant::from_std(epoch() + Duration::from_nanos(t_ns))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u32) -> Stamp {
        Stamp {
            sent_ns: 1_000_000 + u64::from(seq),
            seq,
            publisher: 0,
        }
    }

    fn hex(s: &Stamp) -> String {
        let mut b = [0u8; crate::payload::HEX_BYTES];
        s.write_hex(&mut b);
        String::from_utf8(b.to_vec()).unwrap_or_default()
    }

    #[test]
    fn sse_events_across_reads() {
        let body = format!(
            ": tern\nretry: 2000\n\nid: 1\nevent: message\ndata: {{\"topic\":\"bench/sse/topic\",\"payload\":\"{}\",\"qos\":0,\"retain\":false,\"properties\":{{}}}}\n\n\
             event: lagged\ndata: {{\"missed\": 3}}\n\n: keep-alive\n\n\
             id: 2\nevent: message\ndata: {{\"topic\":\"t\",\"payload\":\"{}....\",\"qos\":0}}\n\n",
            hex(&stamp(0)),
            hex(&stamp(1))
        );
        let bytes = body.as_bytes();
        // Feed in awkward pieces, as reads would split them.
        let mut parser = SseParser::default();
        let mut items = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for chunk in bytes.chunks(7) {
            pending.extend_from_slice(chunk);
            let used = parser.feed(&pending, &mut |i| items.push(i));
            pending.drain(..used);
        }
        assert!(pending.is_empty());
        assert_eq!(
            items,
            vec![
                Item::Open,
                Item::Message(Some(stamp(0))),
                Item::Lagged,
                Item::Open,
                Item::Message(Some(stamp(1))),
            ]
        );
    }

    #[test]
    fn ws_frames() {
        let mut items = Vec::new();
        let mut on = |i| items.push(i);
        ws_frame(br#"{"type":"ack","op":"subscribe"}"#, &mut on);
        let one = format!(
            r#"{{"type":"message","topic":"a","payload":"{}","qos":0,"retain":false,"properties":{{}}}}"#,
            hex(&stamp(5))
        );
        ws_frame(one.as_bytes(), &mut on);
        let batch = format!(
            r#"{{"type":"batch","messages":[{{"type":"message","topic":"a","payload":"{}","qos":0}},{{"type":"message","topic":"a\"payload\":\"","payload":"{}","qos":0}}]}}"#,
            hex(&stamp(6)),
            hex(&stamp(7))
        );
        ws_frame(batch.as_bytes(), &mut on);
        ws_frame(
            br#"{"type":"message","topic":"b","payload":"/wA=","encoding":"base64"}"#,
            &mut on,
        );
        ws_frame(br#"{"type":"lagged","missed":4}"#, &mut on);
        ws_frame(br#"{"type":"error","reason":"x"}"#, &mut on);
        assert_eq!(
            items,
            vec![
                Item::Open,
                Item::Message(Some(stamp(5))),
                Item::Message(Some(stamp(6))),
                Item::Message(Some(stamp(7))),
                Item::Message(None),
                Item::Lagged,
                Item::Error,
            ]
        );
    }

    #[test]
    fn encodes_filters() {
        assert_eq!(url_encode("bench/sse/#"), "bench%2Fsse%2F%23");
        assert_eq!(url_encode("a/+/b c"), "a%2F%2B%2Fb%20c");
    }
}
