//! The data plane end to end: two planes in one process, over loopback
//! TCP, and fake peers that break the protocol.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_guest::batch::BatchWriter;

use super::frame::{SUBSCRIBE, control_frame, hello, records_head, subscribe_frame};
use super::{ChannelKey, DataPlane, NetworkConfig, NetworkError};
use crate::checkpoint::{Barrier, BarrierKind};
use crate::runtime::channel::{
    ChannelClosed, ElementSender, GateEvent, InputGate, LocalInputGate, RecordBatch, StreamElement, local_channel,
};

const T: Duration = Duration::from_secs(3);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn key(channel: u32) -> ChannelKey {
    ChannelKey {
        job: "job-1/token".into(),
        attempt: 1,
        channel,
    }
}

fn batch(values: &[&[u8]]) -> RecordBatch {
    let mut w = BatchWriter::new();
    for (i, v) in values.iter().enumerate() {
        w.push(Some(b"k"), v, Some(i as i64));
    }
    RecordBatch {
        len: w.len(),
        bytes: w.finish(),
    }
}

fn records(e: &StreamElement) -> Option<&RecordBatch> {
    match e {
        StreamElement::Records(b) => Some(b),
        _ => None,
    }
}

/// The next event of the gate that is not a timeout, within `T`.
fn next(gate: &mut LocalInputGate) -> Result<GateEvent, ChannelClosed> {
    let deadline = Instant::now() + T;
    loop {
        match gate.next(Duration::from_millis(20))? {
            GateEvent::Timeout if Instant::now() < deadline => {}
            GateEvent::Timeout => panic!("nothing arrived within {T:?}"),
            e => return Ok(e),
        }
    }
}

/// Consecutive record batches merged (the producer coalesces them).
fn merged(elements: Vec<StreamElement>) -> Vec<StreamElement> {
    let mut out: Vec<StreamElement> = Vec::new();
    for e in elements {
        match (out.last_mut(), e) {
            (Some(StreamElement::Records(a)), StreamElement::Records(b)) => {
                a.bytes.extend_from_slice(&b.bytes);
                a.len += b.len;
            }
            (_, e) => out.push(e),
        }
    }
    out
}

fn script(channel: u32) -> Vec<StreamElement> {
    let mut out = Vec::new();
    let mut seed = channel as u64 * 7919 + 1;
    let value = |seed: &mut u64| {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        vec![(*seed >> 56) as u8; (*seed >> 40) as usize % 100]
    };
    for round in 0..30 {
        for _ in 0..5 {
            let vs: Vec<Vec<u8>> = (0..(seed % 7 + 1)).map(|_| value(&mut seed)).collect();
            let refs: Vec<&[u8]> = vs.iter().map(|v| &v[..]).collect();
            out.push(StreamElement::Records(batch(&refs)));
        }
        out.push(match round % 4 {
            0 => StreamElement::Watermark(-5 + round as i64 * 1000),
            1 => StreamElement::Idle(round % 8 == 1),
            2 => StreamElement::Barrier(Barrier {
                id: round as u64,
                kind: BarrierKind::Checkpoint,
                aligned: true,
            }),
            _ => StreamElement::Barrier(Barrier {
                id: u64::MAX - round as u64,
                kind: BarrierKind::Savepoint { stop: round % 8 == 3 },
                aligned: false,
            }),
        });
    }
    // Larger than a frame: goes in pieces.
    let big: Vec<Vec<u8>> = (0..8).map(|i| vec![i; 700]).collect();
    out.push(StreamElement::Records(batch(&big.iter().map(|v| &v[..]).collect::<Vec<_>>())));
    out.push(StreamElement::EndOfData);
    out
}

#[test]
fn elements_of_every_kind_arrive_in_order_over_one_connection() {
    let cfg = NetworkConfig {
        buffer_bytes: 600,
        buffer_timeout: Duration::from_millis(5),
        max_frame_bytes: 2048,
        ..Default::default()
    };
    let producer = DataPlane::bind(local(), cfg.clone()).unwrap();
    let consumer = DataPlane::bind(local(), cfg).unwrap();
    let n = 8;
    // Half the senders exist before their consumer subscribes, half after.
    let mut early: Vec<_> = (0..n / 2).map(|c| Some(producer.sender(key(c)))).collect();
    let receivers = consumer
        .receivers((0..n).map(|c| (key(c), producer.local_addr())).collect())
        .unwrap();
    let (local_tx, local_rx) = local_channel(4, 1 << 20);
    let mut all = receivers;
    all.push(local_rx);
    let mut gate = LocalInputGate::new(all);
    let threads: Vec<_> = (0..n)
        .map(|c| {
            let tx = early
                .get_mut(c as usize)
                .and_then(Option::take)
                .unwrap_or_else(|| producer.sender(key(c)));
            std::thread::spawn(move || {
                for e in script(c) {
                    tx.send(e).unwrap();
                }
            })
        })
        .collect();
    let local_thread = std::thread::spawn(move || {
        for e in script(99) {
            local_tx.send(e).unwrap();
        }
    });
    let mut got: Vec<Vec<StreamElement>> = vec![Vec::new(); n as usize + 1];
    loop {
        match next(&mut gate).unwrap() {
            GateEvent::Element(i, e) => got[i].push(e),
            GateEvent::Ended => break,
            GateEvent::Timeout => unreachable!(),
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    local_thread.join().unwrap();
    for (c, got) in got.into_iter().enumerate() {
        let script = script(if c == n as usize { 99 } else { c as u32 });
        let frames = got.len();
        assert_eq!(merged(got), merged(script.clone()), "channel {c}");
        if c < n as usize {
            assert!(
                frames < script.len(),
                "channel {c}: batches coalesced ({frames} of {})",
                script.len()
            );
        }
    }
    assert_eq!(consumer.connections(), 1, "one connection carries every channel");
    assert_eq!(producer.connections(), 1);
    assert!(consumer.bytes_received() > 100_000);
    assert_eq!(producer.bytes_sent(), consumer.bytes_received());
}

#[test]
fn credits_backpressure_one_channel_while_others_flow() {
    let cfg = NetworkConfig {
        exclusive_credits: 2,
        floating_credits: 3,
        buffer_bytes: 1,
        ..Default::default()
    };
    let producer = DataPlane::bind(local(), cfg.clone()).unwrap();
    let consumer = DataPlane::bind(local(), cfg).unwrap();
    let (a, b) = (producer.sender(key(0)), producer.sender(key(1)));
    let addr = producer.local_addr();
    let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), addr), (key(1), addr)]).unwrap());
    gate.set_blocked(0, true);
    // Nobody reads A: its producer stops after its exclusive credits
    // plus the floating ones its backlog earned.
    let mut accepted = 0;
    let mut progress = Instant::now();
    let start = Instant::now();
    while progress.elapsed() < Duration::from_millis(300) && start.elapsed() < T {
        let e = StreamElement::Records(batch(&[b"a"]));
        match a.try_send(e.clone()).unwrap() {
            None => {
                accepted += 1;
                progress = Instant::now();
            }
            Some(back) => {
                assert_eq!(back, e, "the element comes back");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    assert_eq!(accepted, 5, "exclusive + floating frames, then A waits");
    // B, on the same connection, keeps flowing.
    let sent_b = std::thread::spawn(move || {
        for i in 0..100u32 {
            b.send(StreamElement::Records(batch(&[&i.to_le_bytes()]))).unwrap();
        }
        b.send(StreamElement::EndOfData).unwrap();
    });
    let mut from_b = 0;
    loop {
        match next(&mut gate).unwrap() {
            GateEvent::Element(1, StreamElement::EndOfData) => break,
            GateEvent::Element(1, e) => {
                assert_eq!(records(&e).unwrap().records().next().unwrap().value, (from_b as u32).to_le_bytes());
                from_b += 1;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(from_b, 100);
    sent_b.join().unwrap();
    assert!(a.try_send(StreamElement::Watermark(1)).unwrap().is_some(), "A still has no credit");
    assert_eq!(consumer.connections(), 1);
    // Reading A lets it continue.
    gate.set_blocked(0, false);
    let sent_a = std::thread::spawn(move || {
        for _ in 0..20 {
            a.send(StreamElement::Records(batch(&[b"a"]))).unwrap();
        }
        a.send(StreamElement::EndOfData).unwrap();
    });
    let mut from_a = 0;
    loop {
        match next(&mut gate).unwrap() {
            GateEvent::Element(0, StreamElement::Records(r)) => from_a += r.len,
            GateEvent::Element(0, StreamElement::EndOfData) => {}
            GateEvent::Ended => break,
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(from_a, 25);
    sent_a.join().unwrap();
}

#[test]
fn small_batches_are_coalesced_and_a_lone_one_goes_after_the_timeout() {
    let cfg = NetworkConfig {
        buffer_bytes: 4096,
        buffer_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let producer = DataPlane::bind(local(), cfg.clone()).unwrap();
    let consumer = DataPlane::bind(local(), cfg).unwrap();
    let tx = producer.sender(key(0));
    let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), producer.local_addr())]).unwrap());
    let mut sent = Vec::new();
    for i in 0..150u32 {
        let b = batch(&[&i.to_le_bytes()]);
        sent.extend_from_slice(&b.bytes);
        assert_eq!(
            tx.try_send(StreamElement::Records(b)).unwrap(),
            None,
            "a small batch needs no credit"
        );
    }
    let (mut got, mut frames) = (Vec::new(), 0);
    while got.len() < sent.len() {
        match next(&mut gate).unwrap() {
            GateEvent::Element(0, StreamElement::Records(b)) => {
                got.extend_from_slice(&b.bytes);
                frames += 1;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(got, sent, "the bytes arrive as sent");
    assert!(frames <= 3, "150 batches in {frames} frames");
    let started = Instant::now();
    tx.send(StreamElement::Records(batch(&[b"lone"]))).unwrap();
    match next(&mut gate).unwrap() {
        GateEvent::Element(0, StreamElement::Records(b)) => assert_eq!(b.len, 1),
        e => panic!("unexpected {e:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(40) && waited < Duration::from_millis(1000),
        "flushed after {waited:?}"
    );
    tx.send(StreamElement::EndOfData).unwrap();
    assert!(matches!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::EndOfData)));
}

/// A connection to `plane` that the plane closed.
fn closed_by(plane: &DataPlane, bytes: &[u8]) {
    let mut s = TcpStream::connect(plane.local_addr()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(bytes).unwrap();
    let mut sink = Vec::new();
    // Everything the plane sends (a hello, perhaps), then the end.
    match s.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
            "the plane kept the connection open"
        ),
    }
}

/// A fake producer that answers the hello and the subscription with `frames`.
fn fake_producer(frames: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind(local()).unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut hello_in = [0u8; 10];
        s.read_exact(&mut hello_in).unwrap();
        s.write_all(hello().finish(0)).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut sub = vec![0; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut sub).unwrap();
        assert_eq!(sub[0], SUBSCRIBE);
        s.write_all(&frames).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    (addr, t)
}

fn records_frame(bytes: &[u8], count: u32) -> Vec<u8> {
    let mut f = records_head(0, 0, count).finish(bytes.len()).to_vec();
    f.extend_from_slice(bytes);
    f
}

#[test]
fn a_malformed_frame_closes_its_connection_and_fails_its_channels() {
    let producer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
    let consumer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
    // At the producer: garbage, an oversized length, a long job id, a
    // data frame from a consumer.
    closed_by(&producer, b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n");
    let mut oversized = hello().finish(0).to_vec();
    oversized.extend_from_slice(&u32::MAX.to_le_bytes());
    closed_by(&producer, &oversized);
    let mut long_job = hello().finish(0).to_vec();
    long_job.extend_from_slice(&subscribe_frame(
        0,
        2,
        &ChannelKey {
            job: "j".repeat(1000),
            ..key(0)
        },
    ));
    let at = long_job.len() - 1000 - 2;
    long_job[at..at + 2].copy_from_slice(&2000u16.to_le_bytes());
    closed_by(&producer, &long_job);
    let mut data = hello().finish(0).to_vec();
    data.extend_from_slice(control_frame(0, 0, &StreamElement::Watermark(1)).finish(0));
    closed_by(&producer, &data);
    // At the consumer: a malformed batch, a wrong count, a frame without
    // credit (two exclusive credits), an unknown element.
    let good = batch(&[b"x", b"y"]);
    let mut bad_value = good.bytes.clone();
    bad_value.truncate(good.bytes.len() - 1);
    let mut no_credit = Vec::new();
    for _ in 0..3 {
        no_credit.extend_from_slice(&records_frame(&good.bytes, 2));
    }
    let mut unknown = control_frame(0, 0, &StreamElement::EndOfData).finish(0).to_vec();
    unknown[13] = 77;
    for frames in [records_frame(&bad_value, 2), records_frame(&good.bytes, 3), no_credit, unknown] {
        let (addr, fake) = fake_producer(frames);
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), addr)]).unwrap());
        // Not read at first: every frame meets the credits of the subscription.
        gate.set_blocked(0, true);
        std::thread::sleep(Duration::from_millis(100));
        gate.set_blocked(0, false);
        let mut failed = false;
        for _ in 0..4 {
            match next(&mut gate) {
                Err(ChannelClosed) => {
                    failed = true;
                    break;
                }
                Ok(GateEvent::Element(0, StreamElement::Records(_))) => {}
                Ok(e) => panic!("unexpected {e:?}"),
            }
        }
        assert!(failed, "the gate fails");
        fake.join().unwrap();
    }
    // Both planes still serve.
    let tx = producer.sender(key(5));
    let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(5), producer.local_addr())]).unwrap());
    tx.send(StreamElement::Watermark(7)).unwrap();
    assert_eq!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::Watermark(7)));
}

/// Sends until the sender fails, within `T`.
fn fails(tx: &dyn ElementSender) {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if tx.send(StreamElement::Watermark(0)) == Err(ChannelClosed) {
            return;
        }
    }
    panic!("the sender did not fail");
}

#[test]
fn lost_connections_releases_and_dropped_ends_fail_the_other_side() {
    let consumer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
    // The producer's plane goes away: the gate fails at once, though an
    // element is still queued, and so does the sender.
    let producer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
    let tx = producer.sender(key(0));
    let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), producer.local_addr())]).unwrap());
    tx.send(StreamElement::Watermark(1)).unwrap();
    tx.send(StreamElement::Watermark(2)).unwrap();
    assert_eq!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::Watermark(1)));
    drop(producer);
    let deadline = Instant::now() + T;
    while consumer.connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(next(&mut gate), Err(ChannelClosed), "at once, with an element still queued");
    fails(&*tx);
    drop(tx);

    let producer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
    let addr = producer.local_addr();
    // Released at the consumer: the gate fails and the sender learns.
    let tx = producer.sender(key(1));
    let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(1), addr)]).unwrap());
    consumer.release("job-1/token", 1);
    assert_eq!(next(&mut gate), Err(ChannelClosed));
    fails(&*tx);
    drop((tx, gate));
    // Released at the producer: a waiting sender fails, and the gate.
    let key2 = ChannelKey { attempt: 2, ..key(2) };
    let tx = producer.sender(key2.clone());
    let mut gate = LocalInputGate::new(consumer.receivers(vec![(key2.clone(), addr)]).unwrap());
    gate.set_blocked(0, true);
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let waiting = std::thread::spawn(move || {
        for i in 0.. {
            tx.send(StreamElement::Watermark(i))?;
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Ok::<(), ChannelClosed>(())
    });
    // Exclusive and floating credits used up, the sender waits.
    let deadline = Instant::now() + T;
    while sent.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(sent.load(Ordering::SeqCst), 10, "2 exclusive + 8 floating credits");
    producer.release(&key2.job, 2);
    assert_eq!(waiting.join().unwrap(), Err(ChannelClosed), "the waiting sender fails");
    gate.set_blocked(0, false);
    let mut result = next(&mut gate);
    while let Ok(GateEvent::Element(0, StreamElement::Watermark(_))) = result {
        result = next(&mut gate);
    }
    assert_eq!(result, Err(ChannelClosed));
    // A dropped receiver fails its sender.
    let tx = producer.sender(key(3));
    let gate = LocalInputGate::new(consumer.receivers(vec![(key(3), addr)]).unwrap());
    tx.send(StreamElement::Idle(true)).unwrap();
    drop(gate);
    fails(&*tx);
    // A sender dropped without the end of data fails the gate.
    let tx = producer.sender(key(4));
    let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(4), addr)]).unwrap());
    tx.send(StreamElement::Idle(false)).unwrap();
    drop(tx);
    assert_eq!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::Idle(false)));
    assert_eq!(next(&mut gate), Err(ChannelClosed));
    // A malformed address fails with the peer named.
    let err = consumer
        .receivers(vec![(key(6), "127.0.0.1:1".parse().unwrap())])
        .err()
        .expect("nobody listens on port 1");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let long = ChannelKey {
        job: "j".repeat(2000),
        ..key(7)
    };
    let err = consumer.receivers(vec![(long, addr)]).err().expect("a job id over 1 KiB");
    assert!(matches!(err, NetworkError::JobTooLong { .. }), "{err}");
}
