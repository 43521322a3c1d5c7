//! The scenarios: message flows (fan-out, fan-in, point-to-point, slow consumer), idle
//! connections and the connection storm.
//!
//! Every flow has the same life: connect and subscribe everybody, then publish from a
//! common start time through a warm-up and the measured window, stop publishing, wait up to
//! `--drain-secs` for what is still in flight, and report. Only messages *sent* inside the
//! measured window count towards latency, losses, duplicates and ordering; throughput is the
//! number of deliveries that *arrived* inside it. Each connection is one task; publishers
//! encode into one reused buffer and write many PUBLISH packets per system call; subscribers
//! parse straight out of their read buffer and fold their counts into the shared collector
//! once per read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Buf;
use serde_json::{json, Value};
use tern_codec::ProtocolVersion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::mqtt::{self, kind, Conn, PublishFrame};
use crate::payload::{epoch, now_ns, Stamp};
use crate::procfs;
use crate::stats::{self, round3, Batch, Collector, SeqWindow};

/// What every scenario needs to know about the broker and the generator.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Broker address (always loopback).
    pub(crate) addr: SocketAddr,
    /// Where subscribing connections go: `addr`, or another node of a cluster
    /// (`--sub-port`, to measure cross-node routing).
    pub(crate) sub_addr: SocketAddr,
    /// Protocol version of every connection.
    pub(crate) version: ProtocolVersion,
    /// Broker process to watch (CPU, RSS), if known.
    pub(crate) broker_pid: Option<u32>,
    /// Connections opened at once during set-up.
    pub(crate) connect_concurrency: usize,
    /// Print a progress line on stderr.
    pub(crate) progress: bool,
    /// Prefix of client identifiers and topics, unique per run.
    pub(crate) run_id: String,
}

/// Timing and load of a message flow.
#[derive(Debug, Clone)]
pub(crate) struct FlowOpts {
    /// QoS of publications and subscriptions.
    pub(crate) qos: u8,
    /// Payload size (at least 16 bytes: the timestamp header).
    pub(crate) payload_bytes: usize,
    /// Messages per second per publisher; 0 means as fast as possible.
    pub(crate) rate: f64,
    /// Length of the measured window.
    pub(crate) duration_secs: f64,
    /// Publishing before the measured window.
    pub(crate) warmup_secs: f64,
    /// Longest wait for in-flight messages after publishing stops.
    pub(crate) drain_secs: f64,
    /// Unacknowledged QoS 1/2 messages per publisher (capped by the broker's Receive Maximum).
    pub(crate) inflight: usize,
    /// At maximum rate with QoS 0: most messages per publisher not yet received by all of
    /// its subscribers (closed loop); 0 = open-loop flood.
    pub(crate) window: usize,
}

/// Who publishes where and who subscribes to what.
#[derive(Debug, Clone)]
pub(crate) struct FlowPlan {
    /// Scenario name for the report.
    pub(crate) name: &'static str,
    /// One topic per publisher.
    pub(crate) pub_topics: Vec<String>,
    /// One filter per subscriber.
    pub(crate) sub_filters: Vec<String>,
    /// Deliveries each message should produce (among the subscribers that read).
    pub(crate) fanout_factor: u64,
    /// Subscribers (the first ones) that never read.
    pub(crate) slow_subscribers: usize,
    /// Extra fields for the report (publishers, subscribers, shared...).
    pub(crate) params: Value,
}

/// Shared state of one flow run.
#[derive(Debug)]
struct Ctx {
    collector: Collector,
    publishers: usize,
    /// Publishing starts here (ns since the payload epoch).
    start_ns: u64,
    /// Measured window: `[warm_end_ns, end_ns)`.
    warm_end_ns: u64,
    end_ns: u64,
    /// Publishers give up waiting for acknowledgements here.
    give_up_ns: u64,
    qos: u8,
    interval_ns: u64,
    inflight: usize,
    /// End-to-end window per publisher in messages (0: none); see [`FlowOpts::window`].
    window: u64,
    /// Deliveries expected per message of a publisher (the plan's fan-out factor).
    fanout_factor: u64,
    /// Per publisher: deliveries received by all subscribers so far (only with a window).
    delivered_per_publisher: Vec<AtomicU64>,
    /// Per publisher: woken when subscribers report deliveries (only with a window).
    window_wakers: Vec<Notify>,
    /// Subscriber connections lost during the run.
    disconnects: AtomicU64,
    /// Highest broker RSS seen, KiB.
    rss_max_kib: AtomicU64,
}

impl Ctx {
    #[inline]
    fn in_window(&self, t: u64) -> bool {
        t >= self.warm_end_ns && t < self.end_ns
    }
}

/// Opens `count` connections (each subscribing to `filter(i)` when given), `concurrency` at
/// a time.
pub(crate) async fn open_many(
    target: &Target,
    role: &str,
    count: usize,
    first_index: usize,
    filter: impl Fn(usize) -> Option<String>,
    qos: u8,
) -> Result<Vec<Conn>> {
    let qos = mqtt::qos(qos)?;
    let mut conns = Vec::with_capacity(count);
    let mut tasks = JoinSet::new();
    let mut next = first_index;
    let end = first_index + count;
    while conns.len() < count {
        while next < end && tasks.len() < target.connect_concurrency.max(1) {
            let filter = filter(next);
            let addr = if filter.is_some() {
                target.sub_addr
            } else {
                target.addr
            };
            let version = target.version;
            let id = format!("{}-{role}{next}", target.run_id);
            tasks.spawn(async move {
                let mut conn = Conn::connect(addr, version, &id).await?;
                if let Some(f) = filter {
                    conn.subscribe(&f, qos).await?;
                }
                anyhow::Ok(conn)
            });
            next += 1;
        }
        match tasks.join_next().await {
            Some(res) => conns.push(res??),
            None => bail!("connection set-up ended early"),
        }
    }
    Ok(conns)
}

/// Runs one message flow and returns its JSON report.
pub(crate) async fn run_flow(target: &Target, opts: &FlowOpts, plan: FlowPlan) -> Result<Value> {
    if plan.pub_topics.is_empty() || plan.sub_filters.is_empty() {
        bail!("a flow needs at least one publisher and one subscriber");
    }
    let setup_started = Instant::now();
    let subs = open_many(
        target,
        "s",
        plan.sub_filters.len(),
        0,
        |i| Some(plan.sub_filters[i].clone()),
        opts.qos,
    )
    .await?;
    let pubs = open_many(target, "p", plan.pub_topics.len(), 0, |_| None, opts.qos).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    // Let the broker settle its subscription tables before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let start_ns = now_ns() + 50_000_000;
    let warm_end_ns = start_ns + secs_to_ns(opts.warmup_secs);
    let end_ns = warm_end_ns + secs_to_ns(opts.duration_secs);
    let ctx = Arc::new(Ctx {
        collector: Collector::new()?,
        publishers: plan.pub_topics.len(),
        start_ns,
        warm_end_ns,
        end_ns,
        give_up_ns: end_ns + secs_to_ns(opts.drain_secs),
        qos: opts.qos,
        interval_ns: if opts.rate > 0.0 {
            (1e9 / opts.rate).max(1.0) as u64
        } else {
            0
        },
        inflight: opts.inflight.max(1),
        window: if opts.qos == 0 && opts.rate <= 0.0 {
            opts.window as u64
        } else {
            0
        },
        fanout_factor: plan.fanout_factor.max(1),
        delivered_per_publisher: (0..plan.pub_topics.len())
            .map(|_| AtomicU64::new(0))
            .collect(),
        window_wakers: (0..plan.pub_topics.len()).map(|_| Notify::new()).collect(),
        disconnects: AtomicU64::new(0),
        rss_max_kib: AtomicU64::new(0),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = JoinSet::new();
    for (i, conn) in subs.into_iter().enumerate() {
        let slow = i < plan.slow_subscribers;
        sub_tasks.spawn(subscriber(conn, ctx.clone(), slow, stop_rx.clone()));
    }
    let mut pub_tasks = JoinSet::new();
    let publishers = plan.pub_topics.len();
    for (i, (conn, topic)) in pubs.into_iter().zip(&plan.pub_topics).enumerate() {
        let frame = PublishFrame::new(topic, opts.qos, target.version.is_v5(), opts.payload_bytes);
        // Spread rate-limited publishers evenly over one interval instead of firing together.
        let phase = ctx.interval_ns * i as u64 / publishers as u64;
        pub_tasks.spawn(publisher(conn, ctx.clone(), frame, i as u32, phase));
    }
    let progress = tokio::spawn(progress(
        ctx.clone(),
        target.broker_pid,
        target.progress,
        plan.name,
        stop_rx.clone(),
    ));

    // CPU accounting over the measured window.
    sleep_until_ns(warm_end_ns).await;
    let gen_cpu0 = procfs::cpu_secs(None)?;
    let broker_cpu0 = target
        .broker_pid
        .map(|p| procfs::cpu_secs(Some(p)))
        .transpose()?;
    let rss0 = target.broker_pid.map(procfs::rss_kib).transpose()?;
    sleep_until_ns(end_ns).await;
    let gen_cpu = procfs::cpu_secs(None)? - gen_cpu0;
    let broker_cpu = match (target.broker_pid, broker_cpu0) {
        (Some(p), Some(c0)) => Some(procfs::cpu_secs(Some(p))? - c0),
        _ => None,
    };
    let window_secs = (end_ns - warm_end_ns) as f64 / 1e9;
    let delivered_in_window = ctx.collector.delivered_in_window();

    let mut errors = Vec::new();
    while let Some(res) = pub_tasks.join_next().await {
        if let Err(e) = res? {
            errors.push(format!("publisher: {e:#}"));
        }
    }
    let reading = plan.sub_filters.len() - plan.slow_subscribers;
    let expected = ctx.collector.sent_measured.load(Relaxed) * plan.fanout_factor;
    // Wait for stragglers: everything expected has arrived, or the drain time is over.
    while now_ns() < ctx.give_up_ns && ctx.collector.received_unique() < expected {
        if ctx.disconnects.load(Relaxed) as usize >= reading {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    while let Some(res) = sub_tasks.join_next().await {
        if let Err(e) = res? {
            if errors.len() < 5 {
                errors.push(format!("subscriber: {e:#}"));
            }
        }
    }
    progress.await?;
    let rss_end = target.broker_pid.map(procfs::rss_kib).transpose()?;

    let mut report = ctx.collector.report(expected, window_secs);
    let obj = report
        .as_object_mut()
        .ok_or_else(|| anyhow!("report is not an object"))?;
    obj.insert("scenario".into(), json!(plan.name));
    obj.insert("params".into(), plan.params);
    obj.insert(
        "opts".into(),
        json!({
            "qos": opts.qos,
            "payload_bytes": opts.payload_bytes,
            "rate_per_publisher": opts.rate,
            "duration_secs": opts.duration_secs,
            "warmup_secs": opts.warmup_secs,
            "inflight": opts.inflight,
            "window": ctx.window,
        }),
    );
    obj.insert("setup_secs".into(), json!(round3(setup_secs)));
    obj.insert(
        "subscriber_disconnects".into(),
        json!(ctx.disconnects.load(Relaxed)),
    );
    obj.insert("generator".into(), generator_json(gen_cpu, window_secs));
    if let Some(pid) = target.broker_pid {
        let cpu = broker_cpu.unwrap_or(0.0);
        obj.insert(
            "broker".into(),
            json!({
                "pid": pid,
                "cpu_secs": round3(cpu),
                "cpu_pct": round3(100.0 * cpu / window_secs),
                "cpu_us_per_delivery": if delivered_in_window == 0 { Value::Null } else { json!(round3(cpu * 1e6 / delivered_in_window as f64)) },
                "rss_start_kib": rss0,
                "rss_end_kib": rss_end,
                "rss_max_kib": ctx.rss_max_kib.load(Relaxed).max(rss_end.unwrap_or(0)),
            }),
        );
    }
    obj.insert("errors".into(), json!(errors));
    Ok(report)
}

/// One publisher: paces (or floods) PUBLISH packets into a reused buffer, writes it in as
/// few system calls as the socket allows, and keeps at most `inflight` QoS 1/2 messages
/// unacknowledged (answering PUBREC with PUBREL).
async fn publisher(
    mut conn: Conn,
    ctx: Arc<Ctx>,
    frame: PublishFrame,
    index: u32,
    phase_ns: u64,
) -> Result<()> {
    const BATCH_BYTES: usize = 64 * 1024;
    let window = if ctx.qos == 0 {
        usize::MAX
    } else {
        ctx.inflight.min(usize::from(conn.receive_maximum))
    };
    let per_batch = (BATCH_BYTES / frame.len()).max(1);
    let mut wbuf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + frame.len() + 1024);
    let mut wpos = 0usize;
    let mut inflight = 0usize;
    let mut seq: u32 = 0;
    let mut packet_id: u16 = 0;
    let mut next_due = ctx.start_ns + phase_ns;
    let (mut rd, mut wr) = conn.stream.split();
    let rbuf = &mut conn.rbuf;
    let max_lag_ns = 100_000_000u64;
    sleep_until_ns(ctx.start_ns).await;
    loop {
        let now = now_ns();
        let sending = now < ctx.end_ns;
        if !sending && (inflight == 0 || now >= ctx.give_up_ns) && wpos == wbuf.len() {
            break;
        }
        if now >= ctx.give_up_ns {
            break;
        }
        // Closed loop at maximum rate: stay at most `ctx.window` messages ahead of what
        // the subscribers have received.
        let ahead_room = if ctx.window == 0 {
            usize::MAX
        } else {
            let delivered = ctx.delivered_per_publisher[index as usize].load(Relaxed);
            let owed = u64::from(seq) * ctx.fanout_factor;
            let ahead = owed.saturating_sub(delivered).div_ceil(ctx.fanout_factor);
            ctx.window.saturating_sub(ahead) as usize
        };
        // Refill the buffer once it has been written out.
        if sending && wpos == wbuf.len() && inflight < window && ahead_room > 0 {
            wbuf.clear();
            wpos = 0;
            let mut n = per_batch.min(window - inflight).min(ahead_room);
            if let Some(due_every) = std::num::NonZeroU64::new(ctx.interval_ns) {
                if next_due + max_lag_ns < now {
                    next_due = now - max_lag_ns; // do not burst to catch up a long stall
                }
                let due = if now >= next_due {
                    ((now - next_due) / due_every + 1) as usize
                } else {
                    0
                };
                n = n.min(due);
                next_due += n as u64 * ctx.interval_ns;
            }
            for _ in 0..n {
                if ctx.qos > 0 {
                    packet_id = packet_id.checked_add(1).unwrap_or(1);
                    inflight += 1;
                }
                let stamp = Stamp {
                    sent_ns: now,
                    seq,
                    publisher: index,
                };
                frame.put(&mut wbuf, packet_id, &stamp);
                seq = seq.wrapping_add(1);
            }
            if n > 0 {
                ctx.collector.sent_total.fetch_add(n as u64, Relaxed);
                if ctx.in_window(now) {
                    ctx.collector.sent_measured.fetch_add(n as u64, Relaxed);
                }
            }
        }
        let want_write = wpos < wbuf.len();
        let window_blocked = sending && !want_write && ahead_room == 0;
        let wake_ns = if window_blocked {
            ctx.end_ns
        } else if want_write || !sending || inflight >= window {
            ctx.give_up_ns
        } else if ctx.interval_ns > 0 {
            next_due.min(ctx.end_ns)
        } else {
            now
        };
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(8192);
        }
        tokio::select! {
            biased;
            r = rd.read_buf(rbuf) => {
                if r? == 0 {
                    bail!("publisher {index}: connection closed by the broker");
                }
                let mut off = 0;
                while let Some((b0, hl, total)) = mqtt::frame_header(&rbuf[off..])? {
                    let f = &rbuf[off..off + total];
                    match b0 >> 4 {
                        kind::PUBACK | kind::PUBCOMP => inflight = inflight.saturating_sub(1),
                        kind::PUBREC => {
                            if let Some(id) = mqtt::ack_packet_id(f, hl) {
                                mqtt::put_ack(&mut wbuf, kind::PUBREL, id);
                            }
                        }
                        _ => {}
                    }
                    off += total;
                }
                rbuf.advance(off);
            }
            r = wr.write(&wbuf[wpos..]), if want_write => {
                wpos += r?;
                if wpos == wbuf.len() {
                    wbuf.clear();
                    wpos = 0;
                }
            }
            _ = ctx.window_wakers[index as usize].notified(), if window_blocked => {}
            _ = sleep_until_ns(wake_ns), if wake_ns > now => {}
            _ = std::future::ready(()), if wake_ns <= now && !want_write => {}
        }
    }
    // Close politely so brokers do not log an error (best effort: a broker that is not
    // reading this socket any more must not hold the run up).
    let _ = tokio::time::timeout(Duration::from_millis(200), wr.write_all(&[0xE0, 0])).await;
    Ok(())
}

/// One subscriber: parses deliveries out of its read buffer, acknowledges QoS 1/2, and
/// counts. A slow subscriber never reads (it holds its connection until the end).
async fn subscriber(
    mut conn: Conn,
    ctx: Arc<Ctx>,
    slow: bool,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    if slow {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(());
    }
    let v5 = conn.version.is_v5();
    let mut windows = vec![SeqWindow::default(); ctx.publishers];
    let mut batch = Batch::default();
    batch.latencies_us.reserve(1024);
    // Deliveries per publisher since the last report (closed-loop window only).
    let mut per_publisher = vec![0u64; if ctx.window > 0 { ctx.publishers } else { 0 }];
    let mut acks: Vec<u8> = Vec::new();
    let result = async {
        loop {
            let now = now_ns();
            let mut off = 0;
            while let Some((b0, hl, total)) = mqtt::frame_header(&conn.rbuf[off..])? {
                let f = &conn.rbuf[off..off + total];
                match b0 >> 4 {
                    kind::PUBLISH => {
                        if let Some((q, id, payload)) = mqtt::publish_payload(f, hl, v5) {
                            match q {
                                1 => mqtt::put_ack(&mut acks, kind::PUBACK, id),
                                2 => mqtt::put_ack(&mut acks, kind::PUBREC, id),
                                _ => {}
                            }
                            if let Some(stamp) = Stamp::read(payload) {
                                batch.delivered += 1;
                                if let Some(n) = per_publisher.get_mut(stamp.publisher as usize) {
                                    *n += 1;
                                }
                                if ctx.in_window(now) {
                                    batch.delivered_in_window += 1;
                                }
                                if ctx.in_window(stamp.sent_ns) {
                                    if let Some(w) = windows.get_mut(stamp.publisher as usize) {
                                        batch.measured(
                                            w.observe(stamp.seq),
                                            now.saturating_sub(stamp.sent_ns),
                                        );
                                    }
                                }
                            }
                        }
                    }
                    kind::PUBREL => {
                        if let Some(id) = mqtt::ack_packet_id(f, hl) {
                            mqtt::put_ack(&mut acks, kind::PUBCOMP, id);
                        }
                    }
                    _ => {}
                }
                off += total;
            }
            conn.rbuf.advance(off);
            ctx.collector.flush(&mut batch);
            for (i, n) in per_publisher.iter_mut().enumerate() {
                if *n > 0 {
                    ctx.delivered_per_publisher[i].fetch_add(*n, Relaxed);
                    ctx.window_wakers[i].notify_one();
                    *n = 0;
                }
            }
            if !acks.is_empty() {
                conn.stream.write_all(&acks).await?;
                acks.clear();
            }
            if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
                conn.rbuf.reserve(16 * 1024);
            }
            tokio::select! {
                r = conn.stream.read_buf(&mut conn.rbuf) => {
                    if r? == 0 {
                        bail!("connection closed by the broker");
                    }
                }
                _ = stop.wait_for(|s| *s) => return anyhow::Ok(()),
            }
        }
    }
    .await;
    if result.is_err() {
        ctx.disconnects.fetch_add(1, Relaxed);
    }
    result
}

/// Prints a progress line every second (when asked) and tracks the broker's peak RSS.
async fn progress(
    ctx: Arc<Ctx>,
    broker_pid: Option<u32>,
    print: bool,
    name: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = (now_ns(), 0u64, 0u64);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let rss = broker_pid.and_then(|p| procfs::rss_kib(p).ok());
        if let Some(rss) = rss {
            ctx.rss_max_kib.fetch_max(rss, Relaxed);
        }
        n += 1;
        if !print || !n.is_multiple_of(2) {
            continue;
        }
        let now = now_ns();
        let sent = ctx.collector.sent_total.load(Relaxed);
        let delivered = ctx.collector.delivered();
        let dt = (now - last.0) as f64 / 1e9;
        let phase = if now < ctx.warm_end_ns {
            "warm-up"
        } else if now < ctx.end_ns {
            "measure"
        } else {
            "drain"
        };
        eprint!(
            "\r{name} {phase:8} t={:6.1}s sent/s {:>10.0} delivered/s {:>10.0} broker RSS {:>8} KiB   ",
            now.saturating_sub(ctx.start_ns) as f64 / 1e9,
            (sent - last.1) as f64 / dt,
            (delivered - last.2) as f64 / dt,
            rss.map_or("-".to_owned(), |r| r.to_string()),
        );
        last = (now, sent, delivered);
    }
    if print {
        eprintln!();
    }
}

/// Idle connections: opens `conns` connections in `steps` equal steps, each with one
/// subscription, and fits the broker's RSS against the number of connections.
pub(crate) async fn run_idle(
    target: &Target,
    conns: usize,
    steps: usize,
    settle_secs: f64,
    qos: u8,
) -> Result<Value> {
    let pid = target
        .broker_pid
        .ok_or_else(|| anyhow!("idle needs --broker-pid to read the broker's RSS"))?;
    let steps = steps.max(2);
    let started = Instant::now();
    let gen_cpu0 = procfs::cpu_secs(None)?;
    let baseline = procfs::rss_kib(pid)?;
    let mut held: Vec<Conn> = Vec::with_capacity(conns);
    let mut points: Vec<(usize, u64)> = Vec::new();
    for step in 1..=steps {
        let target_n = conns * step / steps;
        let more = target_n - held.len();
        let first = held.len();
        let run_id = &target.run_id;
        let opened = open_many(
            target,
            "i",
            more,
            first,
            |i| Some(format!("{run_id}/idle/{i}")),
            qos,
        )
        .await?;
        held.extend(opened);
        tokio::time::sleep(Duration::from_secs_f64(settle_secs)).await;
        let rss = procfs::rss_kib(pid)?;
        points.push((held.len(), rss));
        if target.progress {
            eprint!(
                "\ridle {:>6} connections, broker RSS {rss} KiB   ",
                held.len()
            );
        }
    }
    if target.progress {
        eprintln!();
    }
    let slope_kib = slope(&points);
    let elapsed = started.elapsed().as_secs_f64();
    let gen_cpu = procfs::cpu_secs(None)? - gen_cpu0;
    drop(held);
    Ok(json!({
        "scenario": "idle",
        "params": { "connections": conns, "steps": steps, "qos": qos },
        "rss_baseline_kib": baseline,
        "rss_points_kib": points,
        "rss_per_conn_bytes": round3(slope_kib * 1024.0),
        "rss_per_conn_incl_baseline_bytes": points.last().map(|&(n, r)| round3((r.saturating_sub(baseline)) as f64 * 1024.0 / n.max(1) as f64)),
        "open_secs": round3(elapsed),
        "generator": generator_json(gen_cpu, elapsed),
    }))
}

/// Least-squares slope of `y` against `x`.
pub(crate) fn slope(points: &[(usize, u64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
        .sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Connection storm: `concurrency` loops of connect, CONNECT, CONNACK, DISCONNECT, close.
pub(crate) async fn run_connstorm(
    target: &Target,
    concurrency: usize,
    duration_secs: f64,
    warmup_secs: f64,
) -> Result<Value> {
    let start_ns = now_ns();
    let warm_end_ns = start_ns + secs_to_ns(warmup_secs);
    let end_ns = warm_end_ns + secs_to_ns(duration_secs);
    let mut tasks = JoinSet::new();
    for w in 0..concurrency.max(1) {
        let addr = target.addr;
        let version = target.version;
        let prefix = format!("{}-c{w}-", target.run_id);
        tasks.spawn(async move {
            let mut hist = stats::histogram()?;
            let (mut ok, mut failed, mut i) = (0u64, 0u64, 0u64);
            let mut first_error = None;
            loop {
                let t0 = now_ns();
                if t0 >= end_ns {
                    break;
                }
                i += 1;
                let id = format!("{prefix}{i}");
                let res =
                    tokio::time::timeout(Duration::from_secs(5), Conn::connect(addr, version, &id))
                        .await;
                let t1 = now_ns();
                let measured = t0 >= warm_end_ns && t1 < end_ns;
                match res {
                    Ok(Ok(mut conn)) => {
                        if measured {
                            ok += 1;
                            hist.saturating_record(((t1 - t0) / 1000).max(1));
                        }
                        let _ = conn.stream.write_all(&[0xE0, 0]).await;
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| "CONNACK timeout".to_owned());
                    }
                }
            }
            anyhow::Ok((hist, ok, failed, first_error))
        });
    }
    let gen_cpu0 = procfs::cpu_secs(None)?;
    let broker_cpu0 = target
        .broker_pid
        .map(|p| procfs::cpu_secs(Some(p)))
        .transpose()?;
    let mut hist = stats::histogram()?;
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let (h, o, f, e) = res??;
        hist.add(&h)?;
        ok += o;
        failed += f;
        if let Some(e) = e {
            if errors.len() < 5 {
                errors.push(e);
            }
        }
    }
    let total_secs = (now_ns() - start_ns) as f64 / 1e9;
    let gen_cpu = procfs::cpu_secs(None)? - gen_cpu0;
    let mut report = json!({
        "scenario": "connstorm",
        "params": { "concurrency": concurrency, "duration_secs": duration_secs, "warmup_secs": warmup_secs },
        "connections": ok,
        "failed": failed,
        "connections_per_sec": round3(ok as f64 / duration_secs),
        "connack_latency_us": stats::latency_json(&hist),
        "generator": generator_json(gen_cpu, total_secs),
        "errors": errors,
    });
    if let (Some(pid), Some(c0)) = (target.broker_pid, broker_cpu0) {
        let cpu = procfs::cpu_secs(Some(pid))? - c0;
        report["broker"] = json!({
            "pid": pid,
            "cpu_secs": round3(cpu),
            "cpu_pct": round3(100.0 * cpu / total_secs),
            "rss_end_kib": procfs::rss_kib(pid).ok(),
        });
    }
    Ok(report)
}

/// The generator's own CPU use over a window: 100 % is one core.
fn generator_json(cpu_secs: f64, window_secs: f64) -> Value {
    json!({
        "cpu_secs": round3(cpu_secs),
        "cpu_pct": round3(100.0 * cpu_secs / window_secs.max(1e-9)),
    })
}

fn secs_to_ns(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9) as u64
}

async fn sleep_until_ns(t_ns: u64) {
    tokio::time::sleep_until(Instant::from_std(epoch() + Duration::from_nanos(t_ns))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_fits_a_line() {
        let pts = [(1000, 5000), (2000, 7000), (3000, 9000)];
        assert!((slope(&pts) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..1]), 0.0);
    }
}
