//! The query's exit status survives a SIGCHLD handler elsewhere reaping the shell
//! (nginx's master on a HUP reload). Alone in its binary: the stand-in reaper calls
//! `waitpid(-1)` and would steal other tests' children.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kong_plugin_servers::process::query::run_query;

#[test]
fn status_survives_someone_else_reaping_the_shell() {
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let reaper = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let mut st = 0;
                unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let out = run_query(
            "sleep 0.2; echo done; exit 5",
            "/usr/bin:/bin",
            Duration::from_secs(10),
        )
        .unwrap();
        // Let the reaper catch the shell if it has not yet.
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        reaper.join().unwrap();
        out
    });
    assert_eq!(out.status, Some(5));
    assert_eq!(out.stdout, b"done\n");
}
