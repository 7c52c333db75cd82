//! Replays every checked-in fuzz corpus file (`fuzz/corpus/<target>/*`: seeds from
//! real dumps and conversations, and the regression input of every finding) through
//! the same checks the fuzz targets run, so CI catches regressions without a fuzzer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod checks;

/// Runs `target`'s check on each of its corpus files; fails naming every file that fails.
fn replay(target: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| checks::check(target, &data))).is_err() {
            failed.push(file.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files fail: {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn every_target_has_a_corpus_and_a_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = checks::TARGETS.iter().map(|t| t.to_string()).collect();
    known.sort();
    assert_eq!(on_disk, known, "fuzz/corpus/ directories");
    let mut binaries: Vec<String> = std::fs::read_dir(dir.with_file_name("fuzz_targets"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    binaries.sort();
    assert_eq!(binaries, known, "fuzz/fuzz_targets/ files");
}

#[test]
fn corpus_config() {
    replay("config");
}

#[test]
fn corpus_dump() {
    replay("dump");
}

#[test]
fn corpus_helper_wire() {
    replay("helper_wire");
}

#[test]
fn corpus_msgpack_stream() {
    replay("msgpack_stream");
}

#[test]
fn corpus_msgpack_value() {
    replay("msgpack_value");
}

/// The seed made of kong-pdk's recorded replies (tests/vectors/msgpack.json) must
/// drive the stream through the whole conversation, or the fuzzer starts shallow.
#[test]
fn msgpack_conversation_seed_reaches_the_end() {
    use checks::msgpack_stream::{Seen, trace};
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/msgpack_stream/seed-kong-pdk-conversation");
    let (seen, unread) = trace(&std::fs::read(path).unwrap());
    assert!(!unread);
    assert_eq!(seen.first(), Some(&Seen::Started(0)));
    let calls = seen
        .iter()
        .filter(|s| matches!(s, Seen::Call { .. }))
        .count();
    assert_eq!(calls, 5, "{seen:?}");
    assert_eq!(
        seen[seen.len() - 3..],
        [
            Seen::Ret(0),
            Seen::Closed,
            Seen::ErrorReply(b"no plugin instance #0".to_vec())
        ]
    );
}

#[test]
fn corpus_pb_stream() {
    replay("pb_stream");
}

#[test]
fn corpus_pb_value() {
    replay("pb_value");
}

/// The seed made of go-hello's recorded frames (tests/vectors/protobuf_conversation.txt)
/// must drive the stream through the whole session.
#[test]
fn pb_conversation_seed_reaches_the_end() {
    use checks::pb_stream::{Seen, trace};
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/pb_stream/seed-go-hello-conversation");
    let seen = trace(&std::fs::read(path).unwrap());
    let calls = seen
        .iter()
        .filter(|s| matches!(s, Seen::Call { .. }))
        .count();
    let done = seen.iter().filter(|s| **s == Seen::Done).count();
    assert_eq!((calls, done), (15, 3), "{seen:?}");
    assert_eq!(seen[0], Seen::Status(7, 1795621450));
    assert_eq!(seen[seen.len() - 2], Seen::Status(7, 1795621450));
}
