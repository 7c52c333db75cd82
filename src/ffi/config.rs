//! `extern "C"` adapters for config validation. A cold path: the settings go in as
//! JSON text and the verdict comes out as JSON text (cjson on the Lua side).
//!
//! Input: `{"settings": {...}, "opts": {"default_dir": "...", "path": "..."}}`
//! (`opts` and its fields optional; validation ignores settings other than
//! `prefix` and `pluginserver_*`, which are all the shim sends).
//! Output: `{"ok": true, "warnings": [...]}` or
//! `{"ok": false, "errors": [...], "warnings": [...]}`.
//!
//! The accepted definitions stay in the handle: the info query and the supervisor
//! take the handle, and the shim reads them once through `kps_config_defs`.

use std::ffi::CString;
use std::sync::OnceLock;

use serde_json::{Map, Value as Json, json};

use super::errbuf::{KPS_ERR_ARGS, guard, write_error};
use crate::config::{self, Accepted, Options, Rejected, ServerDef, Settings, Value};

/// A parsed configuration: the definitions of its last accepted parse (none
/// before, or after a rejected one) and the bytes last lent to the caller.
#[allow(non_camel_case_types)]
pub struct kps_config {
    out: Vec<u8>,
    defs: Vec<ServerDef>,
}

impl kps_config {
    /// The accepted server definitions, in `pluginserver_names` order.
    pub(crate) fn defs(&self) -> &[ServerDef] {
        &self.defs
    }
}

/// One raw JSON setting as a config value; `null` means "not set".
fn to_value(j: &Json) -> Option<Value> {
    Some(match j {
        Json::Null => return None,
        Json::String(s) => Value::Text(s.clone()),
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Json::Array(items) => Value::List(
            items
                .iter()
                .map(|i| to_value(i).unwrap_or_else(|| Value::Other("null".into())))
                .collect(),
        ),
        // cjson encodes an empty Lua table as `{}`.
        Json::Object(m) if m.is_empty() => Value::List(vec![]),
        // The Lua side marks values JSON cannot carry (functions, userdata) by type.
        Json::Object(m) => match m.get("$type") {
            Some(Json::String(kind)) if m.len() == 1 => Value::Other(kind.clone()),
            _ => Value::Other("table".into()),
        },
    })
}

fn opt_string(opts: &Map<String, Json>, key: &str) -> Result<Option<String>, String> {
    match opts.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("opts.{key}: expected a string, got {other}")),
    }
}

/// The core of `kps_config_parse`: the settings of a JSON document, validated.
///
/// # Errors
/// The input is not JSON of the documented shape. Invalid *settings* are not an
/// error here: they are the inner `Err(Rejected)`.
pub fn parse_input(input: &[u8]) -> Result<Result<Accepted, Rejected>, String> {
    let doc: Json = serde_json::from_slice(input)
        .map_err(|e| format!("config input is not valid JSON: {e}"))?;
    let Json::Object(doc) = doc else {
        return Err("config input: expected a JSON object".into());
    };

    let mut settings = Settings::new();
    match doc.get("settings") {
        None | Some(Json::Null) => {}
        Some(Json::Object(m)) => {
            for (k, v) in m {
                if let Some(v) = to_value(v) {
                    settings.insert(k.clone(), v);
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "config input: settings must be an object, got {other}"
            ));
        }
    }

    let mut options = Options::default();
    match doc.get("opts") {
        None | Some(Json::Null) => {}
        Some(Json::Object(m)) => {
            if let Some(d) = opt_string(m, "default_dir")? {
                options.default_dir = d;
            }
            if let Some(p) = opt_string(m, "path")? {
                options.path = p;
            }
        }
        Some(other) => return Err(format!("config input: opts must be an object, got {other}")),
    }
    Ok(config::parse(&settings, &options))
}

/// Parses into `handle`: keeps the accepted definitions, returns the verdict JSON.
fn parse_into(handle: &mut kps_config, input: &[u8]) -> Result<Vec<u8>, String> {
    let verdict = match parse_input(input)? {
        Ok(a) => {
            handle.defs = a.defs;
            json!({ "ok": true, "warnings": a.warnings })
        }
        Err(r) => {
            handle.defs.clear();
            json!({ "ok": false, "errors": r.errors, "warnings": r.warnings })
        }
    };
    serde_json::to_vec(&verdict).map_err(|e| format!("config output: {e}"))
}

/// Returns the per-server setting suffixes (`socket,start_cmd,...`) as a static
/// NUL-terminated, comma-separated string, so that the Lua side can read them from
/// a settings table it cannot iterate (Kong's `kong.configuration` is a proxy).
///
/// # Errors
/// None.
///
/// # Panics
/// None.
///
/// # Safety
/// None: the pointer is to memory that lives as long as the library; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn kps_config_setting_names() -> *const std::ffi::c_char {
    static NAMES: OnceLock<CString> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let list: Vec<&str> = config::setting_names().collect();
            CString::new(list.join(",")).unwrap_or_default()
        })
        .as_ptr()
}

/// Creates a config handle, which owns the definitions of its accepted parse and
/// the output of its calls. Release it with `kps_config_free`: the info query
/// borrows it only during `kps_query_run`, and the supervisor keeps a copy of the
/// definitions, so freeing it never affects running servers.
///
/// # Errors
/// None.
///
/// # Panics
/// None (allocation failure aborts the process, as everywhere in Rust).
///
/// # Safety
/// None: the returned pointer is owned by the caller until `kps_config_free`.
#[unsafe(no_mangle)]
pub extern "C" fn kps_config_new() -> *mut kps_config {
    Box::into_raw(Box::new(kps_config {
        out: Vec::new(),
        defs: Vec::new(),
    }))
}

/// Releases a handle made by `kps_config_new`; null is ignored.
///
/// # Errors
/// None.
///
/// # Panics
/// None.
///
/// # Safety
/// `config` must be null or a pointer from `kps_config_new` not yet freed; output
/// borrowed from it becomes invalid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_config_free(config: *mut kps_config) {
    // SAFETY: per the contract, NULL or a live handle, freed once.
    unsafe { super::handle::free_handle(config) }
}

/// The plumbing of the functions that answer with bytes the handle owns: refuses
/// a NULL `config`, `out` or `out_len` (or a missing argument of `name`:
/// `args_present` false) with `KPS_ERR_ARGS`, else runs `f` inside `guard`,
/// keeps its bytes in `handle.out` and points `*out`/`*out_len` at them (valid
/// until the next call on the handle).
///
/// # Safety
/// `config` NULL or from `kps_config_new`; `out`/`out_len` NULL or valid for one
/// write each; `errbuf`/`errbuf_len` as in `kps_config_parse`.
#[expect(
    clippy::too_many_arguments,
    reason = "the answering functions' own C arguments"
)]
unsafe fn answer(
    name: &str,
    config: *mut kps_config,
    args_present: bool,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
    f: impl FnOnce(&mut kps_config) -> Result<Vec<u8>, String>,
) -> i32 {
    // SAFETY: NULL or live per the contract.
    let handle = match unsafe { config.as_mut() } {
        Some(h) if args_present && !out.is_null() && !out_len.is_null() => h,
        _ => {
            // SAFETY: forwarded errbuf contract.
            unsafe { write_error(errbuf, errbuf_len, &format!("{name}: null argument")) };
            return KPS_ERR_ARGS;
        }
    };
    // SAFETY: forwarded contract; `out`/`out_len` checked non-null.
    unsafe {
        guard(errbuf, errbuf_len, || {
            handle.out = f(handle)?;
            *out = handle.out.as_ptr();
            *out_len = handle.out.len();
            Ok(())
        })
    }
}

/// Validates Kong's `pluginserver_*` settings given as JSON (`input`, `input_len`
/// bytes), keeps the accepted definitions in `config` (read them with
/// `kps_config_defs`; a rejected parse leaves none) and points `*out`/`*out_len`
/// at the JSON verdict, which stays valid until the next call on `config` or its
/// release. Returns 0 when a verdict was produced, including "these settings are
/// invalid" (`"ok": false` with every error).
///
/// # Errors
/// `KPS_ERR_ARGS` (-2) for a null pointer; `KPS_ERR_FAILED` (-1) when the input is
/// not JSON of the documented shape; the message is written into `errbuf`.
///
/// # Panics
/// Never across the boundary: a panic becomes `KPS_ERR_PANIC` (-3) with a message.
///
/// # Safety
/// `config` must come from `kps_config_new`; `input` must be valid for `input_len`
/// bytes of reads; `out` and `out_len` valid for one write each; `errbuf` null or
/// valid for `*errbuf_len` bytes of writes, `errbuf_len` null or valid for reads and
/// writes. No other thread may use `config` during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_config_parse(
    config: *mut kps_config,
    input: *const u8,
    input_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    let name = "kps_config_parse";
    // SAFETY: per the contract; `input` is read only when non-null.
    unsafe {
        answer(
            name,
            config,
            !input.is_null(),
            out,
            out_len,
            errbuf,
            errbuf_len,
            |h| parse_into(h, std::slice::from_raw_parts(input, input_len)),
        )
    }
}

/// Points `*out`/`*out_len` at the accepted definitions of `config` as a JSON
/// array (`[]` before an accepted parse): the fields of `ServerDef`, an external
/// server's `start_command` as `null`. Valid until the next call on `config` or
/// its release. The shim reads them once per parse; nothing else reads them back
/// out of Rust.
///
/// # Errors
/// `KPS_ERR_ARGS` (-2) for a null pointer; the message is written into `errbuf`.
///
/// # Panics
/// Never across the boundary: a panic becomes `KPS_ERR_PANIC` (-3) with a message.
///
/// # Safety
/// `config` must come from `kps_config_new`; `out`/`out_len` valid for one write
/// each; `errbuf`/`errbuf_len` as in `kps_config_parse`. No other thread may use
/// `config` during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_config_defs(
    config: *mut kps_config,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    // SAFETY: per the contract.
    unsafe {
        answer(
            "kps_config_defs",
            config,
            true,
            out,
            out_len,
            errbuf,
            errbuf_len,
            |h| serde_json::to_vec(&h.defs).map_err(|e| format!("config defs: {e}")),
        )
    }
}

/// Points `*out`/`*out_len` at the settings key prefix (`pluginserver_<k>_`) of
/// one `pluginserver_names` entry (`name`, `name_len` bytes), normalised as the
/// validation does (trimmed, lower-cased, `-` as `_`), so that the shim can read
/// the per-server settings of a configuration it cannot iterate. Valid until the
/// next call on `config` or its release.
///
/// # Errors
/// `KPS_ERR_ARGS` (-2) for a null pointer; the message is written into `errbuf`.
///
/// # Panics
/// Never across the boundary: a panic becomes `KPS_ERR_PANIC` (-3) with a message.
///
/// # Safety
/// `config` must come from `kps_config_new`; `name` valid for `name_len` bytes of
/// reads; `out`/`out_len` valid for one write each; `errbuf`/`errbuf_len` as in
/// `kps_config_parse`. No other thread may use `config` during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_config_key_prefix(
    config: *mut kps_config,
    name: *const u8,
    name_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    let present = !name.is_null();
    // SAFETY: per the contract; `name` is read only when non-null.
    unsafe {
        answer(
            "kps_config_key_prefix",
            config,
            present,
            out,
            out_len,
            errbuf,
            errbuf_len,
            |_| {
                let name = std::slice::from_raw_parts(name, name_len);
                Ok(config::key_prefix(&String::from_utf8_lossy(name)).into_bytes())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::tests::call as engine_call;
    use super::*;
    use crate::ffi::{KPS_ERR_ARGS, KPS_ERR_FAILED};

    fn call(h: *mut kps_config, input: &str) -> (i32, String) {
        let mut out: *const u8 = std::ptr::null();
        let mut out_len = 0usize;
        let mut err = [0u8; 256];
        let mut err_len = err.len();
        let rc = unsafe {
            kps_config_parse(
                h,
                input.as_ptr(),
                input.len(),
                &mut out,
                &mut out_len,
                err.as_mut_ptr(),
                &mut err_len,
            )
        };
        if rc == 0 {
            let bytes = unsafe { std::slice::from_raw_parts(out, out_len) };
            (rc, String::from_utf8(bytes.to_vec()).unwrap())
        } else {
            (rc, String::from_utf8(err[..err_len].to_vec()).unwrap())
        }
    }

    fn defs_of(h: *mut kps_config) -> Json {
        let mut out: *const u8 = std::ptr::null();
        let mut out_len = 0usize;
        let rc = unsafe {
            kps_config_defs(
                h,
                &mut out,
                &mut out_len,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0);
        serde_json::from_slice(unsafe { std::slice::from_raw_parts(out, out_len) }).unwrap()
    }

    #[test]
    fn valid_settings_keep_defs_with_a_null_start_command_for_external_servers() {
        let h = kps_config_new();
        assert_eq!(defs_of(h), json!([]));
        let (rc, out) = call(
            h,
            r#"{"settings":{"prefix":"/kong","pluginserver_names":["Ext"],
                "pluginserver_ext_query_cmd":"/bin/sh -c true","pluginserver_ext_fail_open":true,
                "log_level":{"ignored":1}},
               "opts":{"default_dir":"/nonexistent","path":"/bin"}}"#,
        );
        assert_eq!(rc, 0);
        let v: Json = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(
            v.get("defs"),
            None,
            "definitions are read through kps_config_defs"
        );
        assert_eq!(
            v["warnings"][0],
            "start_command undefined for pluginserver ext; assuming external process management"
        );
        let defs = defs_of(h);
        unsafe { kps_config_free(h) };
        let def = &defs[0];
        assert_eq!(defs.as_array().unwrap().len(), 1);
        assert_eq!(def["name"], "ext");
        assert_eq!(def["socket"], "/kong/ext.socket");
        assert_eq!(def["start_command"], Json::Null);
        assert_eq!(def["query_command"], "/bin/sh -c true");
        assert_eq!(def["path"], "/bin");
        assert_eq!(def["fail_open"], true);
        assert_eq!(def["read_timeout"], 60000);
    }

    #[test]
    fn invalid_settings_are_a_result_not_a_call_failure_and_leave_no_defs() {
        let h = kps_config_new();
        let (rc, _) = call(
            h,
            r#"{"settings":{"prefix":"/k","pluginserver_names":"a","pluginserver_a_query_cmd":"/bin/true"},
                "opts":{"default_dir":"/nonexistent"}}"#,
        );
        assert_eq!(rc, 0);
        assert_eq!(defs_of(h).as_array().unwrap().len(), 1);
        let (rc, out) = call(
            h,
            r#"{"settings":{"prefix":"/k","pluginserver_names":"a"},"opts":{"default_dir":"/nonexistent"}}"#,
        );
        let defs = defs_of(h);
        unsafe { kps_config_free(h) };
        assert_eq!(rc, 0);
        let v: Json = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["errors"][0], "query_command undefined for pluginserver a");
        assert_eq!(defs, json!([]));
    }

    #[test]
    fn key_prefixes_come_from_the_name_rules() {
        let h = kps_config_new();
        let name = " Go-Hello";
        let mut out: *const u8 = std::ptr::null();
        let mut out_len = 0usize;
        let rc = unsafe {
            kps_config_key_prefix(
                h,
                name.as_ptr(),
                name.len(),
                &mut out,
                &mut out_len,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let prefix = unsafe { std::slice::from_raw_parts(out, out_len) }.to_vec();
        unsafe { kps_config_free(h) };
        assert_eq!(rc, 0);
        assert_eq!(prefix, b"pluginserver_go_hello_");
    }

    #[test]
    fn json_values_map_to_config_values() {
        assert_eq!(to_value(&json!(null)), None);
        assert_eq!(to_value(&json!({})), Some(Value::List(vec![])));
        assert_eq!(
            to_value(&json!({"$type": "function"})),
            Some(Value::Other("function".into()))
        );
        assert_eq!(
            to_value(&json!({"a": 1})),
            Some(Value::Other("table".into()))
        );
        assert_eq!(
            to_value(&json!(["a", null, 2])),
            Some(Value::List(vec![
                Value::Text("a".into()),
                Value::Other("null".into()),
                Value::Number(2.0)
            ]))
        );
    }

    #[test]
    fn malformed_input_fails_with_a_message() {
        let h = kps_config_new();
        let (rc, msg) = call(h, "{not json");
        assert_eq!(rc, KPS_ERR_FAILED);
        assert!(msg.starts_with("config input is not valid JSON"), "{msg}");
        let (rc, msg) = call(h, r#"{"opts":{"path":5}}"#);
        assert_eq!(
            (rc, msg.as_str()),
            (KPS_ERR_FAILED, "opts.path: expected a string, got 5")
        );
        let (rc, msg) = call(h, "[]");
        assert_eq!(
            (rc, msg.as_str()),
            (KPS_ERR_FAILED, "config input: expected a JSON object")
        );
        unsafe { kps_config_free(h) };
    }

    #[test]
    fn setting_names_list_every_suffix() {
        let names = unsafe { std::ffi::CStr::from_ptr(kps_config_setting_names()) };
        let names = names.to_str().unwrap();
        assert!(
            names.starts_with("socket,start_cmd,query_cmd,query_timeout,"),
            "{names}"
        );
        assert_eq!(names.split(',').count(), 18);
    }

    #[test]
    fn null_arguments_are_refused() {
        let (rc, msg) = call(std::ptr::null_mut(), "{}");
        assert_eq!(
            (rc, msg.as_str()),
            (KPS_ERR_ARGS, "kps_config_parse: null argument")
        );
        let (mut out, mut out_len) = (std::ptr::null(), 0usize);
        let err = engine_call(|e, l| unsafe {
            kps_config_defs(std::ptr::null_mut(), &mut out, &mut out_len, e, l)
        });
        assert_eq!(err.unwrap_err(), "-2: kps_config_defs: null argument");
        let err = engine_call(|e, l| unsafe {
            kps_config_key_prefix(
                std::ptr::null_mut(),
                b"a".as_ptr(),
                1,
                &mut out,
                &mut out_len,
                e,
                l,
            )
        });
        assert_eq!(err.unwrap_err(), "-2: kps_config_key_prefix: null argument");
        unsafe { kps_config_free(std::ptr::null_mut()) };

        // a live handle does not excuse a null name or a null out
        let h = kps_config_new();
        let err = engine_call(|e, l| unsafe {
            kps_config_key_prefix(h, std::ptr::null(), 1, &mut out, &mut out_len, e, l)
        });
        assert_eq!(err.unwrap_err(), "-2: kps_config_key_prefix: null argument");
        let err = engine_call(|e, l| unsafe {
            kps_config_key_prefix(
                h,
                b"a".as_ptr(),
                1,
                std::ptr::null_mut(),
                &mut out_len,
                e,
                l,
            )
        });
        assert_eq!(err.unwrap_err(), "-2: kps_config_key_prefix: null argument");
        unsafe { kps_config_free(h) };
    }
}
