//! Tests of the log through its public API, on temporary directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use super::*;

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn temp_dir(name: &str) -> TempDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tern-wal-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

pub(crate) fn options(dir: &Path, durability: Durability, segment_bytes: u64) -> WalOptions {
    WalOptions {
        dir: dir.to_path_buf(),
        durability,
        fsync_interval_ms: 5,
        segment_bytes,
        start_position: Position(0),
    }
}

/// Opens with a fresh lock and an `on_fatal` that counts.
pub(crate) fn open(options: WalOptions) -> (Arc<Wal>, Replay, Arc<AtomicUsize>) {
    let fatal = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&fatal);
    let lock = Arc::new(DirLock::acquire(&options.dir).expect("lock"));
    let (wal, replay) = Wal::open(
        options,
        lock,
        Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .expect("open");
    (wal, replay, fatal)
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `wait_durable` on this thread until it is ready (bounded: 10 s).
pub(crate) fn block_durable(wal: &Wal, pos: Position) -> Result<(), WalFailed> {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Poll::Ready(result) = wal.poll_durable(pos, &mut cx) {
            return result;
        }
        assert!(std::time::Instant::now() < deadline, "not durable in 10 s");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn payload(i: usize) -> Vec<u8> {
    let len = 1 + (i * 37) % 300;
    (0..len).map(|j| (i + j) as u8).collect()
}

fn append_all(wal: &Wal, range: std::ops::Range<usize>) -> Vec<Position> {
    range
        .map(|i| wal.append_with(|buf| buf.extend_from_slice(&payload(i))))
        .collect()
}

fn assert_replay(replay: &Replay, expected: &[usize], positions: &[Position]) {
    assert_eq!(replay.len(), expected.len(), "number of records replayed");
    for ((pos, bytes), (i, want_pos)) in replay.iter().zip(expected.iter().zip(positions)) {
        assert_eq!(bytes.as_ref(), payload(*i).as_slice(), "record {i}");
        assert_eq!(pos, want_pos, "position of record {i}");
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .expect("list")
        .segments
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

const SEGMENT_BYTES: u64 = 8 << 10;

#[test]
fn round_trip_across_segments_and_reopen() {
    let dir = temp_dir("round-trip");
    let (wal, replay, _) = open(options(&dir, Durability::Sync, SEGMENT_BYTES));
    assert!(replay.is_empty());
    let first = append_all(&wal, 0..200);
    block_durable(&wal, *first.last().expect("some")).expect("durable");
    assert!(first.windows(2).all(|w| w[0] < w[1]));
    wal.close().expect("close");
    drop(wal);
    assert!(
        segments(&dir).len() > 3,
        "several segments: {:?}",
        segments(&dir)
    );

    let (wal, replay, _) = open(options(&dir, Durability::Write, SEGMENT_BYTES));
    assert_replay(&replay, &(0..200).collect::<Vec<_>>(), &first);
    assert_eq!(wal.appended(), *first.last().expect("some"));
    let second = append_all(&wal, 200..300);
    assert!(second[0] > first[199]);
    block_durable(&wal, second[99]).expect("durable");
    drop(wal);

    let (_wal, replay, _) = open(options(&dir, Durability::Sync, SEGMENT_BYTES));
    let all: Vec<Position> = first.iter().chain(&second).copied().collect();
    assert_replay(&replay, &(0..300).collect::<Vec<_>>(), &all);
}

#[test]
fn record_larger_than_a_segment_gets_its_own() {
    let dir = temp_dir("large");
    let (wal, _, _) = open(options(&dir, Durability::Sync, SEGMENT_BYTES));
    let big = vec![0xAB; 3 * SEGMENT_BYTES as usize];
    wal.append_with(|b| b.extend_from_slice(b"small"));
    let pos = wal.append_with(|b| b.extend_from_slice(&big));
    let after = wal.append_with(|b| b.extend_from_slice(b"after"));
    block_durable(&wal, after).expect("durable");
    assert!(pos < after);
    drop(wal);
    let (_wal, replay, _) = open(options(&dir, Durability::Sync, SEGMENT_BYTES));
    let payloads: Vec<&[u8]> = replay.iter().map(|(_, b)| b.as_ref()).collect();
    assert_eq!(payloads, vec![&b"small"[..], &big[..], &b"after"[..]]);
}

/// A log whose segments are gone goes on after the checkpoint it follows, never before it.
#[test]
fn fresh_log_starts_at_start_position() {
    let dir = temp_dir("start-position");
    let mut opts = options(&dir.0, Durability::Sync, 64 << 10);
    opts.start_position = Position(1_000_000);
    let (wal, replay, _) = open(opts.clone());
    assert!(replay.is_empty());
    assert_eq!(wal.appended(), Position(1_000_000));
    let pos = wal.append_with(|b| b.extend_from_slice(b"after the cut"));
    assert!(pos > Position(1_000_000));
    block_durable(&wal, pos).expect("durable");
    wal.close().expect("close");
    drop(wal);
    // Reopened with its segment present, the segment decides (start_position is ignored).
    opts.start_position = Position(0);
    let (wal, replay, _) = open(opts);
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].0, pos);
    assert_eq!(&replay[0].1[..], b"after the cut");
    drop(wal);
}

/// An fsync error fails every waiter and every later position, calls `on_fatal` once, and
/// nothing is ever published durable again: the broker stops rather than acknowledge.
#[test]
fn fsync_error_fails_the_log_for_good() {
    let dir = temp_dir("fsync-error");
    let (wal, _, fatal) = open(options(&dir.0, Durability::Sync, 64 << 10));
    let first = wal.append_with(|b| b.extend_from_slice(b"one"));
    block_durable(&wal, first).expect("first durable");
    let durable_before = wal.durable();
    wal.faults().fail_sync.store(true, Ordering::SeqCst);
    let second = wal.append_with(|b| b.extend_from_slice(b"two"));
    assert_eq!(block_durable(&wal, second), Err(WalFailed::Io));
    let third = wal.append_with(|b| b.extend_from_slice(b"three"));
    assert_eq!(block_durable(&wal, third), Err(WalFailed::Io));
    assert_eq!(wal.durable(), durable_before);
    // on_fatal runs on the committer thread right after it fails the waiters.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fatal.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fatal.load(Ordering::SeqCst), 1);
    assert!(wal.close().is_err());
}

/// A waiter dropped before its position is durable leaves no waker behind after the
/// next commit.
#[test]
fn stale_wakers_are_removed_at_commit() {
    let dir = temp_dir("stale-wakers");
    let (wal, _, _) = open(options(&dir.0, Durability::Sync, 64 << 10));
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let pos = wal.append_with(|b| b.extend_from_slice(b"x"));
    let _ = wal.poll_durable(pos, &mut cx);
    block_durable(&wal, pos).expect("durable");
    let later = wal.append_with(|b| b.extend_from_slice(b"y"));
    block_durable(&wal, later).expect("durable");
    assert_eq!(wal.shared.waiters.len(), 0);
}

/// Writes `payloads` into a fresh log in `dir` and closes it; returns the path of its one
/// segment and the end offset (in the file) of each frame.
fn write_frames(dir: &Path, payloads: &[Vec<u8>]) -> (PathBuf, Vec<u64>) {
    let (wal, _, _) = open(options(dir, Durability::Sync, 64 << 10));
    let mut last = Position(0);
    for p in payloads {
        last = wal.append_with(|b| b.extend_from_slice(p));
    }
    block_durable(&wal, last).expect("durable");
    wal.close().expect("close");
    drop(wal);
    let segment = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("one segment");
    let mut end = segment::SEGMENT_HEADER_BYTES;
    let ends = payloads
        .iter()
        .map(|p| {
            end += (frame::FRAME_HEADER_BYTES + p.len()) as u64;
            end
        })
        .collect();
    (segment, ends)
}

fn reopened_payloads(dir: &Path) -> Vec<Vec<u8>> {
    let (wal, replay, _) = open(options(dir, Durability::Sync, 64 << 10));
    drop(wal);
    replay.into_iter().map(|(_, b)| b.to_vec()).collect()
}

/// A torn tail is normal: whatever byte the last frames were cut at (the rest of the
/// preallocated segment zero, as after a crash mid-write), recovery keeps every complete
/// frame before the cut, nothing after it, and the log goes on from there.
#[test]
fn torn_tail_at_every_offset_keeps_every_complete_frame() {
    let payloads: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![i + 1; 3 + 5 * usize::from(i)])
        .collect();
    let source = temp_dir("torn-source");
    let (segment, ends) = write_frames(&source.0, &payloads);
    let original = std::fs::read(&segment).expect("read");
    let name = segment.file_name().expect("name").to_owned();
    // Every offset inside the last two frames.
    for cut in ends[1]..ends[3] {
        let dir = temp_dir("torn");
        let mut data = original.clone();
        data[cut as usize..].fill(0);
        std::fs::write(dir.0.join(&name), &data).expect("write");
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let got = reopened_payloads(&dir.0);
        assert_eq!(got, payloads[..complete].to_vec(), "cut at {cut}");
        // The log goes on after the kept frames, and a reopen sees old and new.
        let (wal, _, _) = open(options(&dir.0, Durability::Sync, 64 << 10));
        let pos = wal.append_with(|b| b.extend_from_slice(b"after"));
        block_durable(&wal, pos).expect("durable");
        drop(wal);
        let again = reopened_payloads(&dir.0);
        assert_eq!(again.len(), complete + 1, "cut at {cut}");
        assert_eq!(again[complete], b"after");
    }
    // A file cut short (not just zeroed) is the same.
    let dir = temp_dir("truncated");
    std::fs::write(dir.0.join(&name), &original[..(ends[2] - 3) as usize]).expect("write");
    assert_eq!(reopened_payloads(&dir.0), payloads[..2].to_vec());
}

/// A bit flipped in the middle of the log is caught by the frame's CRC: recovery keeps the
/// frames before it and never replays the damaged one or anything after it.
#[test]
fn bit_flip_in_the_middle_is_detected() {
    let payloads: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 10]).collect();
    let source = temp_dir("flip-source");
    let (segment, ends) = write_frames(&source.0, &payloads);
    let original = std::fs::read(&segment).expect("read");
    let name = segment.file_name().expect("name").to_owned();
    for at in ends[0]..ends[1] {
        for bit in [0x01u8, 0x80] {
            let dir = temp_dir("flip");
            let mut data = original.clone();
            data[at as usize] ^= bit;
            std::fs::write(dir.0.join(&name), &data).expect("write");
            assert_eq!(
                reopened_payloads(&dir.0),
                payloads[..1].to_vec(),
                "flip at {at}"
            );
        }
    }
}
