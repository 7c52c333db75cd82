//! The transport floor: the lowest cost of one request/reply round trip over a unix
//! stream socket on this machine, with no codec work. A server process echoes a
//! reply of a fixed size for every request of a fixed size; the client reports its
//! own CPU time and the wall time per round trip.
//!
//! `cargo run --release --example transport_floor -- [round_trips] [request_bytes] [reply_bytes] [pin] [epoll] [server_us]`
//! With `pin` = 1 the client runs on core 0 and the server on core 1.
//! With `epoll` = 1 the client waits the way an nginx worker does: a non-blocking
//! socket registered edge-triggered for both directions (EPOLLIN|EPOLLOUT|EPOLLET|
//! EPOLLRDHUP, as nginx's epoll module registers every connection), one
//! `epoll_wait` per wake-up. On a unix socket the peer's read of our request
//! raises an EPOLLOUT edge, so a round trip can cost two wake-ups instead of one.
//! With `server_us` > 0 the server sleeps that long before each reply, as the "slow"
//! benchmark servers do (`bench/fixtures/`: Python's `time.sleep`, Node's `setTimeout`):
//! both cores go idle and the reply wakes the client from sleep. (A server that spins
//! instead keeps its core busy and changes the client's wake-up pattern.)
//! prints one line: `round_trips=N client_cpu_ns=.. wall_ns=.. epoll_waits=.. (per round trip)`.
//!
//! `transport_floor serve <socket_path> <request_bytes> <reply_bytes> <server_us>` runs only
//! the server, for clients elsewhere (bench/e2e.lua's nginx cosocket floor): it listens on
//! `socket_path` and answers every request of `request_bytes` on every connection (a thread
//! each) with `reply_bytes`, after `server_us` of sleep, until it is killed.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn pin_to(cpu: usize) {
    // SAFETY: set is a plain bitmask owned by this frame.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Answers every request on `conn` until the peer closes it.
fn echo(mut conn: UnixStream, request_bytes: usize, reply_bytes: usize, server_us: u64) {
    let mut req = vec![0u8; request_bytes];
    let reply = vec![7u8; reply_bytes];
    while conn.read_exact(&mut req).is_ok() {
        if server_us > 0 {
            std::thread::sleep(Duration::from_micros(server_us));
        }
        if conn.write_all(&reply).is_err() {
            break;
        }
    }
}

/// The nginx-like client loop; returns the number of `epoll_wait` calls.
fn epoll_client(conn: &mut UnixStream, req: &[u8], reply: &mut [u8], round_trips: usize) -> u64 {
    use std::os::fd::AsRawFd;
    conn.set_nonblocking(true).expect("nonblocking");
    let fd = conn.as_raw_fd();
    // SAFETY: plain epoll calls on descriptors owned by this function's caller.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0, "epoll_create1");
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLRDHUP) as u32,
        u64: 0,
    };
    // SAFETY: ev is a valid event to copy in.
    assert_eq!(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
        0
    );
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    let mut waits = 0u64;
    for _ in 0..round_trips {
        conn.write_all(req).expect("write");
        let mut got = 0;
        while got < reply.len() {
            match conn.read(&mut reply[got..]) {
                Ok(0) => panic!("server closed"),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    waits += 1;
                    // SAFETY: events is a writable array of 8 entries.
                    unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 8, -1) };
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    // SAFETY: ep is our own descriptor.
    unsafe { libc::close(ep) };
    waits
}

/// The `serve` mode: a thread per connection, until killed.
fn serve_forever(args: &[String]) {
    let usage =
        "usage: transport_floor serve <socket_path> <request_bytes> <reply_bytes> <server_us>";
    let [path, request_bytes, reply_bytes, server_us] = args else {
        panic!("{usage}");
    };
    let number = |a: &String| -> u64 { a.parse().unwrap_or_else(|_| panic!("{usage}")) };
    let (request_bytes, reply_bytes) =
        (number(request_bytes) as usize, number(reply_bytes) as usize);
    let server_us = number(server_us);
    let _ = std::fs::remove_file(path); // a socket left by an earlier run
    let listener = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {path}: {e}"));
    for conn in listener.incoming() {
        let conn = conn.expect("accept");
        std::thread::spawn(move || echo(conn, request_bytes, reply_bytes, server_us));
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("serve") {
        return serve_forever(&raw[1..]);
    }
    let args: Vec<usize> = raw.iter().map(|a| a.parse().expect("number")).collect();
    let round_trips = *args.first().unwrap_or(&200_000);
    let request_bytes = *args.get(1).unwrap_or(&48);
    let reply_bytes = *args.get(2).unwrap_or(&64);
    let pin = args.get(3) == Some(&1);
    let use_epoll = args.get(4) == Some(&1);
    let server_us = *args.get(5).unwrap_or(&0) as u64;

    let dir = std::env::temp_dir().join(format!("kps-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("floor.socket");
    let listener = UnixListener::bind(&path).expect("bind");

    // SAFETY: the child only runs the echo loop and exits; no locks are held here.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if pin {
            pin_to(1);
        }
        let (conn, _) = listener.accept().expect("accept");
        echo(conn, request_bytes, reply_bytes, server_us);
        std::process::exit(0);
    }
    drop(listener);
    if pin {
        pin_to(0);
    }

    let mut conn = UnixStream::connect(&path).expect("connect");
    let req = vec![1u8; request_bytes];
    let mut reply = vec![0u8; reply_bytes];
    let mut waits = 0u64;
    let cpu0 = thread_cpu_ns();
    let wall0 = Instant::now();
    if use_epoll {
        waits = epoll_client(&mut conn, &req, &mut reply, round_trips);
    } else {
        for _ in 0..round_trips {
            conn.write_all(&req).expect("write");
            conn.read_exact(&mut reply).expect("read");
        }
    }
    let wall = wall0.elapsed().as_nanos();
    let cpu = thread_cpu_ns() - cpu0;
    drop(conn);
    let mut status = 0;
    // SAFETY: pid is our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "round_trips={round_trips} request_bytes={request_bytes} reply_bytes={reply_bytes} client_cpu_ns={} wall_ns={} epoll_waits={:.2}",
        cpu / round_trips as u128,
        wall / round_trips as u128,
        waits as f64 / round_trips as f64
    );
}
