//! No panic may cross the C boundary: every exported function that
//! reports errors through `errbuf` must run its body inside `ffi::guard` (directly
//! or through a helper that does), and every exported function documents `# Panics`.
//! Reads the adapter sources, so that a new export without a guard fails here.

use std::fs;
use std::path::Path;

/// Calls that contain a panic; each file's own helpers that call `guard` are added.
const GUARDING_CALLS: &[&str] = &["guard(", "catch_unwind("];

/// Names of the non-exported functions of a file whose body calls `guard` (or
/// catch_unwind), or one of `known` or of each other, as call patterns (`name(`).
fn guarding_helpers(text: &str, known: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let mut calls = known.to_vec();
        calls.extend(out.iter().cloned());
        let found = helpers_calling(text, &calls);
        if found.len() == out.len() {
            return out;
        }
        out = found;
    }
}

/// One pass of [`guarding_helpers`]: the functions that call a guarding call or
/// one of `calls`.
fn helpers_calling(text: &str, calls: &[String]) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
        if line.starts_with(' ') || !(t.starts_with("fn ") || t.starts_with("unsafe fn ")) {
            continue;
        }
        if i > 0 && lines[i - 1].trim() == "#[unsafe(no_mangle)]" {
            continue;
        }
        let name = t
            .split("fn ")
            .nth(1)
            .and_then(|r| r.split(['(', '<']).next());
        let end = lines[i..]
            .iter()
            .position(|l| *l == "}")
            .map_or(lines.len(), |p| i + p);
        let body = lines[i..end].join("\n");
        if let Some(name) = name
            && (GUARDING_CALLS.iter().any(|g| body.contains(g))
                || calls.iter().any(|c| body.contains(c.as_str())))
        {
            out.push(format!("{}(", name.trim()));
        }
    }
    out
}

struct Export {
    guards: Vec<String>,
    file: String,
    name: String,
    doc: String,
    signature: String,
    body: String,
}

impl Export {
    fn guarded(&self) -> bool {
        GUARDING_CALLS.iter().any(|g| self.body.contains(g))
            || self.guards.iter().any(|g| self.body.contains(g.as_str()))
    }
}

/// The guarding helpers of `src/ffi/engine.rs`, the bodies the engines share.
fn shared_helpers() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    guarding_helpers(&fs::read_to_string(dir.join("engine.rs")).unwrap(), &[])
}

/// Splits a source file into exported functions: doc comment, signature, body.
fn exports_of(file: &Path, shared: &[String]) -> Vec<Export> {
    let text = fs::read_to_string(file).unwrap();
    let mut guards = guarding_helpers(&text, shared);
    guards.extend(shared.iter().cloned());
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "#[unsafe(no_mangle)]" {
            continue;
        }
        let mut doc = Vec::new();
        let mut j = i;
        while j > 0 && lines[j - 1].trim_start().starts_with("///") {
            j -= 1;
            doc.insert(0, lines[j]);
        }
        // signature up to the opening brace, body up to the closing brace at column 0
        let mut k = i + 1;
        let mut signature = String::new();
        while !lines[k].ends_with('{') {
            signature.push_str(lines[k]);
            k += 1;
        }
        signature.push_str(lines[k]);
        let mut body = String::new();
        k += 1;
        while lines[k] != "}" {
            body.push_str(lines[k]);
            body.push('\n');
            k += 1;
        }
        let name = signature
            .split("fn ")
            .nth(1)
            .and_then(|s| s.split('(').next())
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push(Export {
            guards: guards.clone(),
            file: file.display().to_string(),
            name,
            doc: doc.join("\n"),
            signature,
            body,
        });
    }
    out
}

fn all_exports() -> Vec<Export> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let shared = shared_helpers();
    files.iter().flat_map(|f| exports_of(f, &shared)).collect()
}

#[test]
fn the_scan_finds_the_known_exports() {
    let names: Vec<String> = all_exports().into_iter().map(|e| e.name).collect();
    for known in [
        "kps_selftest_panic",
        "kps_config_parse",
        "kps_mp_stream_poll",
        "kps_supervisor_drain",
        "kps_pb_stream_poll",
    ] {
        assert!(
            names.iter().any(|n| n == known),
            "{known} not found in {names:?}"
        );
    }
}

#[test]
fn every_export_with_an_errbuf_runs_inside_guard() {
    let mut unguarded = Vec::new();
    for e in all_exports() {
        if e.signature.contains("errbuf") && !e.guarded() {
            unguarded.push(format!("{} ({})", e.name, e.file));
        }
    }
    assert!(
        unguarded.is_empty(),
        "exports with an errbuf but no guard: {unguarded:?}"
    );
}

#[test]
fn every_export_documents_errors_panics_and_safety() {
    let mut missing = Vec::new();
    for e in all_exports() {
        for section in ["# Errors", "# Panics", "# Safety"] {
            if !e.doc.contains(section) {
                missing.push(format!("{}: {section}", e.name));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

#[test]
fn an_export_outside_guard_does_not_unwrap_or_index_unchecked() {
    // Functions without a guard must not contain the usual panic sources.
    let mut risky = Vec::new();
    for e in all_exports() {
        if e.guarded() {
            continue;
        }
        for pat in [".unwrap()", ".expect(", "panic!(", "unreachable!("] {
            if e.body.contains(pat) {
                risky.push(format!("{}: {pat}", e.name));
            }
        }
    }
    assert!(risky.is_empty(), "panic sources outside guard: {risky:?}");
}

#[test]
fn helpers_that_call_guard_are_recognised() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    let shared = shared_helpers();
    for helper in [
        "stream_feed(",
        "stream_poll(",
        "stream_output(",
        "stream_build(",
    ] {
        assert!(shared.contains(&helper.to_string()), "{shared:?}");
    }
    let msgpack = guarding_helpers(
        &fs::read_to_string(dir.join("msgpack.rs")).unwrap(),
        &shared,
    );
    assert!(msgpack.contains(&"build(".to_string()), "{msgpack:?}");
    // a helper that does not call guard is not one
    assert!(guarding_helpers("fn plain() -> i32 {\n    1\n}\n", &[]).is_empty());
    assert_eq!(
        guarding_helpers(
            "unsafe fn wrap<F>(f: F) -> i32 {\n    guard(a, b, f)\n}\n",
            &[]
        ),
        vec!["wrap(".to_string()]
    );
    // nor is one that calls a helper that does not guard
    assert!(
        guarding_helpers(
            "fn outer() -> i32 {\n    plain()\n}\nfn plain() -> i32 {\n    1\n}\n",
            &[]
        )
        .is_empty()
    );
    // a helper calling a guarding helper is one, in either order
    assert_eq!(
        guarding_helpers(
            "fn outer() -> i32 {\n    wrap(f)\n}\nunsafe fn wrap<F>(f: F) -> i32 {\n    guard(a, b, f)\n}\n",
            &[]
        ),
        vec!["outer(".to_string(), "wrap(".to_string()]
    );
}
