//! No panic may cross the C boundary (issue 8): every exported function that
//! reports errors through `errbuf` must run its body inside `ffi::guard` (directly
//! or through a helper that does), and every exported function documents `# Panics`.
//! Reads the adapter sources, so that a new export without a guard fails here.

use std::fs;
use std::path::Path;

/// Helpers in `src/ffi/` known to wrap their closure in `guard`.
const GUARDING_CALLS: &[&str] = &["guard(", "build(", "catch_unwind("];

struct Export {
    file: String,
    name: String,
    doc: String,
    signature: String,
    body: String,
}

/// Splits a source file into exported functions: doc comment, signature, body.
fn exports_of(file: &Path) -> Vec<Export> {
    let text = fs::read_to_string(file).unwrap();
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
    files.iter().flat_map(|f| exports_of(f)).collect()
}

#[test]
fn the_scan_finds_the_known_exports() {
    let names: Vec<String> = all_exports().into_iter().map(|e| e.name).collect();
    for known in [
        "kps_selftest_panic",
        "kps_config_parse",
        "kps_mp_stream_poll",
        "kps_supervisor_drain",
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
        if e.signature.contains("errbuf") && !GUARDING_CALLS.iter().any(|g| e.body.contains(g)) {
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
        if GUARDING_CALLS.iter().any(|g| e.body.contains(g)) {
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
