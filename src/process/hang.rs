//! Hang detection (`hang_timeout`): a watcher thread per server asks it, up to
//! ten times a second and on a connection of its own, a question that every PDK
//! answers in its connection handler without running plugin code:
//!
//! - MessagePack-RPC (kong-pdk Python and JS): a call in a namespace other than
//!   `plugin` (`kps.Ping`): both answer it at once with an error reply ("RPC for
//!   kps is not supported"), without logging and without taking any lock.
//! - Protobuf (go-pdk): `RpcCall { cmd_get_plugin_names }`: go-pdk answers an
//!   empty frame from the goroutine of the connection.
//!
//! A whole reply (or a clean close) is an answer; the watcher keeps its connection
//! between questions (go-pdk logs every connection that ends). A server is
//! *silent* when a question has waited `hang_timeout` without an answer (so it
//! answered nothing for at least that long); the
//! supervisor then kills a managed server or marks an external one `hung`. A
//! server that is slow on some events keeps answering these questions (they run
//! on their own connection, beside the events), so it is never silent; a server
//! that answers nothing (stopped, deadlocked, a blocked event loop, a socket file
//! that is gone) is. Nothing of this runs in the request path.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use prost::Message;

use super::probe::connect_probe;
use crate::codec::protobuf::messages::{Call, CmdGetPluginNames, RpcCall};

/// Longest pause between two questions (shorter for small timeouts): a server
/// that stops answering is found between `hang_timeout` and `hang_timeout` plus
/// this after its last answer.
const PERIOD_MAX: Duration = Duration::from_millis(100);

/// The wire protocol of a server, from the info query's `Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    MsgPack,
    Protobuf,
}

impl Wire {
    /// `MsgPack:1` or `ProtoBuf:1` (any case, any version); None otherwise.
    pub fn of(protocol: &str) -> Option<Wire> {
        let p = protocol.to_ascii_lowercase();
        if p.starts_with("msgpack") {
            Some(Wire::MsgPack)
        } else if p.starts_with("protobuf") {
            Some(Wire::Protobuf)
        } else {
            None
        }
    }

    /// Whether `buf` holds a whole reply (a frame; a MessagePack value).
    fn complete(self, buf: &[u8]) -> bool {
        match self {
            Wire::Protobuf => {
                buf.len() >= 4
                    && buf.len() - 4
                        >= u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
            }
            Wire::MsgPack => rmp_serde::from_slice::<serde::de::IgnoredAny>(buf).is_ok(),
        }
    }

    /// The bytes of the question.
    pub fn question(self) -> Vec<u8> {
        match self {
            // [0, 1, "kps.Ping", []]: a MessagePack-RPC request, msgid 1.
            Wire::MsgPack => {
                let mut b = vec![0x94, 0x00, 0x01, 0xa8];
                b.extend_from_slice(b"kps.Ping");
                b.push(0x90);
                b
            }
            Wire::Protobuf => {
                let call = RpcCall {
                    sequence: 1,
                    call: Some(Call::CmdGetPluginNames(CmdGetPluginNames {})),
                };
                let body = call.encode_to_vec();
                let mut b = (body.len() as u32).to_le_bytes().to_vec();
                b.extend_from_slice(&body);
                b
            }
        }
    }
}

/// What a watcher tells the supervisor. `generation` is the one the watcher was
/// given when it began watching this process (stale reports are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub server: usize,
    pub generation: u64,
    pub kind: BeatKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeatKind {
    /// No answer for `ms` (at least `hang_timeout`); `why`: the last connect
    /// error, when the socket could not be connected at all.
    Silent { ms: u64, why: Option<String> },
    /// Answering again after a `Silent`.
    Answered,
}

/// One watcher thread. Dropping it ends the thread (after its current question).
pub struct HangWatch {
    generation: Arc<AtomicU64>,
    next: AtomicU64,
    _stop: Sender<()>,
    _thread: JoinHandle<()>,
}

impl HangWatch {
    /// Starts watching `socket` (paused until [`HangWatch::watch`]).
    pub fn start(
        server: usize,
        socket: String,
        wire: Wire,
        timeout: Duration,
        beats: Sender<Beat>,
    ) -> Result<Self, String> {
        let generation = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = bounded(0);
        let watcher = Watcher {
            server,
            socket,
            wire,
            question: wire.question(),
            timeout,
            generation: Arc::clone(&generation),
            beats,
        };
        let thread = std::thread::Builder::new()
            .name("kps-hang-watch".into())
            .spawn(move || watcher.run(&stop_rx))
            .map_err(|e| format!("cannot start the hang watch thread: {e}"))?;
        Ok(HangWatch {
            generation,
            next: AtomicU64::new(0),
            _stop: stop_tx,
            _thread: thread,
        })
    }

    /// Starts watching a new process (or again after a pause); returns the
    /// generation its beats will carry. The silence is counted from now.
    pub fn watch(&self) -> u64 {
        let next = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.generation.store(next, Ordering::SeqCst);
        next
    }

    /// Stops asking until the next [`HangWatch::watch`].
    pub fn pause(&self) {
        self.generation.store(0, Ordering::SeqCst);
    }

    /// The generation being watched (0: paused).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

struct Watcher {
    server: usize,
    socket: String,
    wire: Wire,
    question: Vec<u8>,
    timeout: Duration,
    generation: Arc<AtomicU64>,
    beats: Sender<Beat>,
}

impl Watcher {
    fn period(&self) -> Duration {
        (self.timeout / 10).clamp(Duration::from_millis(10), PERIOD_MAX)
    }

    fn run(self, stop: &Receiver<()>) {
        let mut watching = 0u64;
        let mut last_answer = Instant::now();
        let mut silent = false;
        let mut conn: Option<UnixStream> = None;
        loop {
            match stop.recv_timeout(self.period()) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let generation = self.generation.load(Ordering::SeqCst);
            if generation == 0 {
                watching = 0;
                continue;
            }
            if generation != watching {
                watching = generation;
                last_answer = Instant::now();
                silent = false;
                conn = None;
            }
            // every question waits the whole hang_timeout for its answer
            let outcome = self.ask(&mut conn, Instant::now() + self.timeout);
            if self.generation.load(Ordering::SeqCst) != watching {
                continue;
            }
            let now = Instant::now();
            let kind = match outcome {
                Ok(()) => {
                    last_answer = now;
                    if !silent {
                        continue;
                    }
                    silent = false;
                    BeatKind::Answered
                }
                Err(why) => {
                    let quiet = now.saturating_duration_since(last_answer);
                    if silent || quiet < self.timeout {
                        continue;
                    }
                    silent = true;
                    BeatKind::Silent {
                        ms: quiet.as_millis() as u64,
                        why,
                    }
                }
            };
            let beat = Beat {
                server: self.server,
                generation: watching,
                kind,
            };
            if self.beats.send(beat).is_err() {
                return;
            }
        }
    }
}

impl Watcher {
    /// Asks once, on the kept connection or a new one. Ok when a whole reply came
    /// back (or the server closed the connection) before `deadline`; Err(None)
    /// when not; Err(Some(message)) when the socket could not be connected. The
    /// connection is kept only after a whole reply.
    fn ask(&self, conn: &mut Option<UnixStream>, deadline: Instant) -> Result<(), Option<String>> {
        // A kept connection still reaches a server whose socket file was removed:
        // requests cannot connect any more, so the watch must not either.
        let kept = conn
            .take()
            .filter(|_| std::path::Path::new(&self.socket).exists());
        let mut stream = match kept {
            Some(s) => s,
            None => connect(&self.socket).map_err(|e| match e {
                ConnectError::Busy => None,
                ConnectError::Failed(msg) => Some(msg),
            })?,
        };
        let left = |d: Instant| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let _ = stream.set_write_timeout(Some(left(deadline)));
        if stream.write_all(&self.question).is_err() {
            return Err(None);
        }
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let _ = stream.set_read_timeout(Some(left(deadline)));
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if self.wire.complete(&reply) {
                        *conn = Some(stream);
                        return Ok(());
                    }
                    if reply.len() > 64 * 1024 {
                        // not an answer to this question: start over next time
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(None),
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
        }
    }
}

enum ConnectError {
    /// The listen queue is full: the server is not accepting.
    Busy,
    Failed(String),
}

/// A non-blocking connect (a full listen queue must not block the watcher), then
/// a blocking stream with timeouts.
fn connect(socket: &str) -> Result<UnixStream, ConnectError> {
    let stream = connect_probe(socket).map_err(|err| match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => ConnectError::Busy,
        _ => ConnectError::Failed(format!("cannot connect to {socket}: {}", plain(&err))),
    })?;
    stream
        .set_nonblocking(false)
        .map_err(|_| ConnectError::Busy)?;
    Ok(stream)
}

/// An OS error without Rust's " (os error N)" suffix, as nginx words them.
fn plain(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Connections open to the server's socket (accepted or waiting to be), from
/// `/proc/net/unix`: for the hang line, an idea of how much was waiting on it.
pub fn connections_open(socket: &str) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let n = table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; the listener has flag __SO_ACCEPTCON.
            f.len() >= 8 && f[7] == socket && f[3] != "00010000"
        })
        .count();
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tmp_socket;
    use std::os::unix::net::UnixListener;

    /// A running watch of `server` on `path` with a `timeout_ms` hang timeout,
    /// and the channel its reports arrive on.
    fn hang_watch(
        server: usize,
        path: &str,
        wire: Wire,
        timeout_ms: u64,
    ) -> (HangWatch, Receiver<Beat>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = HangWatch::start(
            server,
            path.into(),
            wire,
            Duration::from_millis(timeout_ms),
            tx,
        );
        (w.unwrap(), rx)
    }

    #[test]
    fn questions_have_the_wire_shapes() {
        assert_eq!(
            Wire::MsgPack.question(),
            b"\x94\x00\x01\xa8kps.Ping\x90".to_vec()
        );
        // frame length 5, then sequence 1 (08 01) and field 31 empty (fa 01 00)
        assert_eq!(
            Wire::Protobuf.question(),
            vec![5, 0, 0, 0, 0x08, 0x01, 0xfa, 0x01, 0x00]
        );
        assert_eq!(Wire::of("MsgPack:1"), Some(Wire::MsgPack));
        assert_eq!(Wire::of("ProtoBuf:1"), Some(Wire::Protobuf));
        assert_eq!(Wire::of("grpc"), None);
    }

    fn watcher(path: &str, wire: Wire) -> Watcher {
        let (tx, _rx) = crossbeam_channel::unbounded();
        Watcher {
            server: 0,
            socket: path.to_string(),
            wire,
            question: wire.question(),
            timeout: Duration::from_millis(300),
            generation: Arc::new(AtomicU64::new(1)),
            beats: tx,
        }
    }

    #[test]
    fn replies_are_complete_only_when_whole() {
        assert!(Wire::Protobuf.complete(&[0, 0, 0, 0]));
        assert!(!Wire::Protobuf.complete(&[2, 0, 0, 0, 9]));
        assert!(Wire::Protobuf.complete(&[2, 0, 0, 0, 9, 9]));
        let reply = b"\x94\x01\x01\xbcRPC for kps is not supported\xc0";
        assert!(Wire::MsgPack.complete(reply));
        assert!(!Wire::MsgPack.complete(&reply[..10]));
    }

    #[test]
    fn an_answer_a_silence_a_partial_reply_and_a_missing_socket() {
        let path = tmp_socket("hang-ask");
        let w = watcher(&path, Wire::MsgPack);
        let deadline = || Instant::now() + Duration::from_millis(300);
        let mut conn = None;
        assert!(
            matches!(w.ask(&mut conn, deadline()), Err(Some(m)) if m.ends_with("No such file or directory")),
            "missing socket"
        );
        let listener = UnixListener::bind(&path).unwrap();
        // accepted by the kernel, never read: no answer
        let t0 = Instant::now();
        assert_eq!(w.ask(&mut conn, deadline()), Err(None));
        assert!(t0.elapsed() >= Duration::from_millis(250));
        assert!(conn.is_none());
        let server = std::thread::spawn(move || {
            // the first connection is the silent question's, closed by now
            let _first = listener.accept().unwrap();
            let (mut c, _) = listener.accept().unwrap();
            let mut b = [0u8; 64];
            for _ in 0..2 {
                let _ = c.read(&mut b);
                c.write_all(b"\x94\x01\x01\xa1x\xc0").unwrap();
            }
            // the third question gets half a reply
            let _ = c.read(&mut b);
            c.write_all(b"\x94\x01").unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        assert_eq!(w.ask(&mut conn, deadline()), Ok(()));
        assert!(conn.is_some(), "kept after a whole reply");
        assert_eq!(
            w.ask(&mut conn, deadline()),
            Ok(()),
            "the same connection again"
        );
        assert_eq!(
            w.ask(&mut conn, deadline()),
            Err(None),
            "half a reply is no answer"
        );
        assert!(conn.is_none());
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_watcher_reports_silence_once_and_recovery() {
        let path = tmp_socket("hang-watch");
        let listener = UnixListener::bind(&path).unwrap();
        let (w, rx) = hang_watch(3, &path, Wire::MsgPack, 200);
        let generation = w.watch();
        // nobody accepts: silent after about 200 ms, reported once
        let beat = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert_eq!((beat.server, beat.generation), (3, generation));
        assert!(
            matches!(beat.kind, BeatKind::Silent { ms, why: None } if ms >= 200),
            "{beat:?}"
        );
        assert!(
            rx.recv_timeout(Duration::from_millis(400)).is_err(),
            "one report per silence"
        );
        // answering again
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                if let Ok((mut c, _)) = listener.accept() {
                    c.set_nonblocking(false).unwrap();
                    let mut b = [0u8; 64];
                    let _ = c.read(&mut b);
                    let _ = c.write_all(b"\x94\x01\x01\xa1x\xc0");
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let beat = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert_eq!(beat.kind, BeatKind::Answered);
        w.pause();
        stop.store(true, Ordering::SeqCst);
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_missing_socket_is_silent_with_the_reason() {
        let path = tmp_socket("hang-gone");
        let (w, rx) = hang_watch(0, &path, Wire::Protobuf, 100);
        w.watch();
        let beat = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert!(
            matches!(&beat.kind, BeatKind::Silent { why: Some(m), .. } if m.contains(&path)),
            "{beat:?}"
        );
    }
}
