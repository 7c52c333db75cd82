//! Tests of `config::parse` as a whole: Kong's cases, then the hardening.

use super::testdir::TestDir;
use super::*;

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn names(list: &[&str]) -> Value {
    Value::List(list.iter().map(|s| t(s)).collect())
}

/// Settings with `prefix = /kong` and the given names and extra keys.
fn settings(list: &[&str], extra: &[(&str, Value)]) -> Settings {
    let mut s = Settings::new();
    s.insert("prefix".into(), t("/kong"));
    s.insert("pluginserver_names".into(), names(list));
    for (k, v) in extra {
        s.insert(k.to_string(), v.clone());
    }
    s
}

/// A default dir and a PATH dir, both empty.
struct Env {
    bin: TestDir,
    path: TestDir,
}

impl Env {
    fn new() -> Self {
        Env {
            bin: TestDir::new("conf-bin"),
            path: TestDir::new("conf-path"),
        }
    }

    fn opts(&self) -> Options {
        Options {
            default_dir: self.bin.path().display().to_string(),
            path: self.path.path().display().to_string(),
        }
    }

    fn bin(&self, name: &str) -> String {
        self.bin.file(name, 0o755).display().to_string()
    }
}

fn errors(r: Result<Accepted, Rejected>) -> Vec<String> {
    match r {
        Ok(a) => panic!("accepted: {a:?}"),
        Err(r) => r.errors,
    }
}

// ---- Kong's behaviour ----

#[test]
fn no_names_means_no_servers() {
    let env = Env::new();
    for v in [None, Some(names(&[])), Some(t("NONE"))] {
        let mut s = Settings::new();
        if let Some(v) = v {
            s.insert("pluginserver_names".into(), v);
        }
        assert_eq!(
            parse(&s, &env.opts()),
            Ok(Accepted {
                defs: vec![],
                warnings: vec![]
            })
        );
    }
}

#[test]
fn the_default_binary_supplies_both_commands_and_the_socket_keeps_dashes() {
    let env = Env::new();
    let bin = env.bin("go-hello");
    let a = parse(&settings(&["Go-Hello"], &[]), &env.opts()).unwrap();
    assert!(a.warnings.is_empty());
    let d = &a.defs[0];
    assert_eq!(d.name, "go-hello");
    assert_eq!(d.socket, "/kong/go-hello.socket");
    assert_eq!(d.start_command.as_deref(), Some(bin.as_str()));
    assert_eq!(d.query_command, format!("{bin} -dump"));
    assert_eq!(d.path, env.opts().path);
}

#[test]
fn defaults_of_every_number_and_flag() {
    let env = Env::new();
    env.bin("s");
    let d = &parse(&settings(&["s"], &[]), &env.opts()).unwrap().defs[0];
    assert_eq!(
        (
            d.query_timeout,
            d.stop_timeout,
            d.respawn_delay,
            d.respawn_delay_max,
            d.respawn_reset
        ),
        (10_000, 5_000, 1_000, 30_000, 60_000)
    );
    assert_eq!(
        (
            d.ready_timeout,
            d.connect_timeout,
            d.send_timeout,
            d.read_timeout,
            d.log_window
        ),
        (5_000, 1_000, 5_000, 60_000, 1_000)
    );
    assert_eq!(d.hang_timeout, 5_000);
    assert_eq!((d.fail_open, d.max_message_size), (false, 16_777_216));
    assert_eq!(d.log_queue_max, 4_096);
}

#[test]
fn log_queue_max_is_read_and_its_errors_name_it() {
    let env = Env::new();
    env.bin("go-hello");
    let set = |v: Value| {
        parse(
            &settings(&["go-hello"], &[("pluginserver_go_hello_log_queue_max", v)]),
            &env.opts(),
        )
    };
    assert_eq!(set(t("100000")).unwrap().defs[0].log_queue_max, 100_000);
    assert_eq!(
        errors(set(t("3000000000"))),
        [
            "pluginserver_go_hello_log_queue_max (pluginserver go-hello): got '3000000000'; \
          expected a positive integer of log events (1..2147483647)"
        ]
    );
}

#[test]
fn settings_use_the_underscored_key_and_override_defaults() {
    let env = Env::new();
    let exe = env.bin("other");
    let s = settings(
        &["go-hello"],
        &[
            ("pluginserver_go_hello_socket", t("/run/gh.sock")),
            (
                "pluginserver_go_hello_start_cmd",
                t(&format!("{exe} -kong-prefix /kong")),
            ),
            (
                "pluginserver_go_hello_query_cmd",
                t(&format!("{exe} -dump")),
            ),
            ("pluginserver_go_hello_read_timeout", t("250")),
            ("pluginserver_go_hello_send_timeout", Value::Number(40.0)),
            ("pluginserver_go_hello_fail_open", t("on")),
            ("pluginserver_go_hello_max_message_size", t("1024")),
        ],
    );
    let d = &parse(&s, &env.opts()).unwrap().defs[0];
    assert_eq!(d.socket, "/run/gh.sock");
    assert_eq!(d.start_command, Some(format!("{exe} -kong-prefix /kong")));
    assert_eq!(d.query_command, format!("{exe} -dump"));
    assert_eq!(
        (d.read_timeout, d.send_timeout, d.max_message_size),
        (250, 40, 1024)
    );
    assert!(d.fail_open);
}

#[test]
fn no_query_command_is_kongs_error_and_no_start_command_kongs_warning() {
    let env = Env::new();
    let r = parse(&settings(&["py"], &[]), &env.opts()).unwrap_err();
    assert_eq!(r.errors, ["query_command undefined for pluginserver py"]);
    assert_eq!(
        r.warnings,
        ["start_command undefined for pluginserver py; assuming external process management"]
    );
}

#[test]
fn an_external_server_has_no_start_command_and_a_warning() {
    let env = Env::new();
    let exe = env.path.file("dump-info", 0o755);
    let _ = exe;
    let s = settings(
        &["ext"],
        &[("pluginserver_ext_query_cmd", t("dump-info --all"))],
    );
    let a = parse(&s, &env.opts()).unwrap();
    assert_eq!(a.defs[0].start_command, None);
    assert_eq!(a.defs[0].query_command, "dump-info --all");
    assert_eq!(
        a.warnings,
        ["start_command undefined for pluginserver ext; assuming external process management"]
    );
}

#[test]
fn defs_keep_the_order_of_pluginserver_names() {
    let env = Env::new();
    for n in ["c", "a", "b"] {
        env.bin(n);
    }
    let a = parse(&settings(&["c", "a", "b"], &[]), &env.opts()).unwrap();
    let order: Vec<&str> = a.defs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(order, ["c", "a", "b"]);
}

#[test]
fn prefix_trailing_slash_is_dropped() {
    let env = Env::new();
    env.bin("s");
    let mut s = settings(&["s"], &[]);
    s.insert("prefix".into(), t("/usr/local/kong/"));
    assert_eq!(
        parse(&s, &env.opts()).unwrap().defs[0].socket,
        "/usr/local/kong/s.socket"
    );
}

// ---- beyond Kong ----

#[test]
fn every_error_is_reported_at_once() {
    let env = Env::new();
    let s = settings(
        &["a", "a", "b"],
        &[
            ("pluginserver_a_read_timeout", t("0")),
            ("pluginserver_b_fail_open", t("maybe")),
            ("pluginserver_c_socket", t("/x")),
        ],
    );
    let e = errors(parse(&s, &env.opts()));
    assert_eq!(
        e,
        [
            "pluginserver_names: duplicate name 'a' (entry 2)",
            "query_command undefined for pluginserver a",
            "pluginserver_a_read_timeout (pluginserver a): got '0'; expected a positive integer of milliseconds (1..2147483647)",
            "query_command undefined for pluginserver b",
            "pluginserver_b_fail_open (pluginserver b): got 'maybe'; expected a boolean (on, off, true or false)",
            "pluginserver_c_socket: no pluginserver 'c' in pluginserver_names (pluginserver_names is: a, b)",
        ]
    );
}

#[test]
fn a_long_socket_path_is_rejected_with_its_length() {
    let env = Env::new();
    env.bin("s");
    let long = format!("/{}", "d".repeat(110));
    let e = errors(parse(
        &settings(&["s"], &[("pluginserver_s_socket", t(&long))]),
        &env.opts(),
    ));
    assert_eq!(
        e,
        [format!(
            "pluginserver_s_socket (pluginserver s): socket path '{long}' is 111 bytes long; \
             a unix socket path may have at most 107 bytes"
        )]
    );

    // 107 bytes pass.
    let ok = format!("/{}", "d".repeat(106));
    assert!(
        parse(
            &settings(&["s"], &[("pluginserver_s_socket", t(&ok))]),
            &env.opts()
        )
        .is_ok()
    );
}

#[test]
fn a_long_default_socket_path_names_the_prefix() {
    let env = Env::new();
    env.bin("s");
    let mut s = settings(&["s"], &[]);
    let prefix = format!("/{}", "p".repeat(100));
    s.insert("prefix".into(), t(&prefix));
    let e = errors(parse(&s, &env.opts()));
    assert_eq!(
        e,
        [format!(
            "pluginserver_s_socket (pluginserver s): default socket path '{prefix}/s.socket' is 110 bytes long; \
             a unix socket path may have at most 107 bytes; set a shorter prefix or this setting"
        )]
    );
}

#[test]
fn a_missing_prefix_is_an_error_only_when_a_default_socket_needs_it() {
    let env = Env::new();
    env.bin("s");
    let mut s = settings(&["s"], &[]);
    s.remove("prefix");
    assert_eq!(
        errors(parse(&s, &env.opts())),
        [
            "pluginserver_s_socket (pluginserver s): not set, and prefix is not set for the default <prefix>/<name>.socket"
        ]
    );
    s.insert("pluginserver_s_socket".into(), t("/run/s.sock"));
    assert!(parse(&s, &env.opts()).is_ok());
}

#[test]
fn two_servers_on_one_socket_are_rejected_after_defaults() {
    let env = Env::new();
    env.bin("a");
    env.bin("b");
    env.bin("c");
    // Explicit against explicit, and another spelling of the same path.
    let s = settings(
        &["a", "b", "c"],
        &[
            ("pluginserver_a_socket", t("/x.sock")),
            ("pluginserver_b_socket", t("/x.sock")),
            ("pluginserver_c_socket", t("//./x.sock")),
        ],
    );
    assert_eq!(
        errors(parse(&s, &env.opts())),
        [
            "pluginserver_b_socket (pluginserver b): socket '/x.sock' is already the socket of pluginserver a",
            "pluginserver_c_socket (pluginserver c): socket '//./x.sock' is already the socket of pluginserver a",
        ]
    );
    // An explicit socket equal to another server's default.
    let s = settings(
        &["a", "b"],
        &[("pluginserver_b_socket", t("/kong/a.socket"))],
    );
    assert_eq!(
        errors(parse(&s, &env.opts())),
        [
            "pluginserver_b_socket (pluginserver b): socket '/kong/a.socket' is already the socket of pluginserver a"
        ]
    );
    // Different sockets are fine.
    assert!(parse(&settings(&["a", "b"], &[]), &env.opts()).is_ok());
}

#[test]
fn unknown_servers_and_suffixes_suggest_the_right_key() {
    let env = Env::new();
    env.bin("go-hello");
    let s = settings(
        &["go-hello"],
        &[
            ("pluginserver_go_hello_start_command", t("x")),
            ("pluginserver_gohello_read_timeout", t("5")),
        ],
    );
    assert_eq!(
        errors(parse(&s, &env.opts())),
        [
            "pluginserver_go_hello_start_command (pluginserver go-hello): unknown setting; \
             did you mean pluginserver_go_hello_start_cmd?",
            "pluginserver_gohello_read_timeout: no pluginserver 'gohello' in pluginserver_names; \
             did you mean pluginserver_go_hello_read_timeout?",
        ]
    );
}

#[test]
fn command_programs_must_exist_and_be_executable() {
    let env = Env::new();
    env.bin("s");
    let plain = env.path.file("plain", 0o644).display().to_string();
    let path = env.opts().path;
    let s = settings(
        &["s"],
        &[
            ("pluginserver_s_start_cmd", t("no-such-server --flag")),
            ("pluginserver_s_query_cmd", t(&format!("{plain} -dump"))),
        ],
    );
    assert_eq!(
        errors(parse(&s, &env.opts())),
        [
            format!(
                "pluginserver_s_start_cmd (pluginserver s): program 'no-such-server' not found in PATH ({path}) \
                 (command 'no-such-server --flag')"
            ),
            format!(
                "pluginserver_s_query_cmd (pluginserver s): program '{plain}' is not executable (command '{plain} -dump')"
            ),
        ]
    );
}

#[test]
fn bare_names_resolve_through_opts_path_and_shell_constructs_pass() {
    let env = Env::new();
    env.path.file("srv", 0o755);
    let s = settings(
        &["s"],
        &[
            ("pluginserver_s_start_cmd", t("srv -p /kong")),
            ("pluginserver_s_query_cmd", t("PYTHONPATH=/x srv --dump")),
        ],
    );
    let d = &parse(&s, &env.opts()).unwrap().defs[0];
    assert_eq!(d.start_command.as_deref(), Some("srv -p /kong"));
    assert_eq!(d.path, env.opts().path);

    // The same name is not found with another PATH.
    let other = Options {
        path: "/nonexistent-dir".into(),
        ..env.opts()
    };
    assert_eq!(
        errors(parse(&s, &other)),
        [
            "pluginserver_s_start_cmd (pluginserver s): program 'srv' not found in PATH (/nonexistent-dir) \
          (command 'srv -p /kong')"
        ]
    );
}

#[test]
fn a_default_binary_that_cannot_run_is_rejected_once() {
    let env = Env::new();
    let bin = env.bin.file("s", 0o644).display().to_string();
    assert_eq!(
        errors(parse(&settings(&["s"], &[]), &env.opts())),
        [format!(
            "pluginserver_s_start_cmd and pluginserver_s_query_cmd (pluginserver s): default program '{bin}' is not executable"
        )]
    );
}

#[test]
fn empty_and_non_string_commands_and_sockets_are_rejected() {
    let env = Env::new();
    env.bin("s");
    let s = settings(
        &["s"],
        &[
            ("pluginserver_s_socket", Value::Number(5.0)),
            ("pluginserver_s_start_cmd", t("  ")),
            ("pluginserver_s_query_cmd", Value::Bool(true)),
        ],
    );
    assert_eq!(
        errors(parse(&s, &env.opts())),
        [
            "pluginserver_s_socket (pluginserver s): got 5; expected a non-empty socket path",
            "pluginserver_s_start_cmd (pluginserver s): got '  '; expected a non-empty command line",
            "pluginserver_s_query_cmd (pluginserver s): got true; expected a non-empty command line",
        ]
    );
}

#[test]
fn hang_timeout_may_be_zero_but_not_negative() {
    let env = Env::new();
    env.bin("s");
    let ok = parse(
        &settings(&["s"], &[("pluginserver_s_hang_timeout", t("0"))]),
        &env.opts(),
    )
    .unwrap();
    assert_eq!(ok.defs[0].hang_timeout, 0);
    let e = errors(parse(
        &settings(&["s"], &[("pluginserver_s_hang_timeout", t("-5"))]),
        &env.opts(),
    ));
    assert_eq!(
        e,
        [
            "pluginserver_s_hang_timeout (pluginserver s): got '-5'; expected a positive integer of milliseconds (1..2147483647), or 0 for off"
        ]
    );
}

#[test]
fn every_duration_and_size_is_range_checked() {
    let env = Env::new();
    env.bin("s");
    let numbers = [
        ("query_timeout", "milliseconds"),
        ("stop_timeout", "milliseconds"),
        ("respawn_delay", "milliseconds"),
        ("respawn_delay_max", "milliseconds"),
        ("respawn_reset", "milliseconds"),
        ("ready_timeout", "milliseconds"),
        ("connect_timeout", "milliseconds"),
        ("send_timeout", "milliseconds"),
        ("read_timeout", "milliseconds"),
        ("log_window", "milliseconds"),
        ("max_message_size", "bytes"),
        ("log_queue_max", "log events"),
    ];
    for (suffix, unit) in numbers {
        for bad in [
            t("0"),
            t("-1"),
            t("1.5"),
            t("abc"),
            Value::Number(0.5),
            Value::Bool(false),
        ] {
            let key = format!("pluginserver_s_{suffix}");
            let e = errors(parse(
                &settings(&["s"], &[(&key, bad.clone())]),
                &env.opts(),
            ));
            assert_eq!(
                e,
                [format!(
                    "{key} (pluginserver s): got {bad}; expected a positive integer of {unit} (1..2147483647)"
                )]
            );
        }
    }
}

#[test]
fn respawn_delay_max_may_not_be_below_respawn_delay() {
    let env = Env::new();
    env.bin("s");
    let s = settings(
        &["s"],
        &[
            ("pluginserver_s_respawn_delay", t("5000")),
            ("pluginserver_s_respawn_delay_max", t("500")),
        ],
    );
    assert_eq!(
        errors(parse(&s, &env.opts())),
        [
            "pluginserver_s_respawn_delay_max (pluginserver s): 500 is less than pluginserver_s_respawn_delay (5000); \
          expected a value >= 5000"
        ]
    );
    // Against the default maximum too.
    let s = settings(&["s"], &[("pluginserver_s_respawn_delay", t("40000"))]);
    assert_eq!(errors(parse(&s, &env.opts())).len(), 1);
    // Equal is fine; an invalid delay is reported once, without a comparison.
    let s = settings(
        &["s"],
        &[
            ("pluginserver_s_respawn_delay", t("500")),
            ("pluginserver_s_respawn_delay_max", t("500")),
        ],
    );
    assert!(parse(&s, &env.opts()).is_ok());
    let s = settings(
        &["s"],
        &[
            ("pluginserver_s_respawn_delay", t("x")),
            ("pluginserver_s_respawn_delay_max", t("500")),
        ],
    );
    assert_eq!(errors(parse(&s, &env.opts())).len(), 1);
}

#[test]
fn a_bad_prefix_is_reported() {
    let env = Env::new();
    let mut s = Settings::new();
    s.insert("prefix".into(), Value::Bool(true));
    assert_eq!(
        errors(parse(&s, &env.opts())),
        ["prefix: got true; expected a non-empty directory path"]
    );
}

#[test]
fn other_settings_are_ignored() {
    let env = Env::new();
    let mut s = Settings::new();
    s.insert("log_level".into(), Value::Bool(true));
    s.insert("plugins".into(), t("bundled"));
    assert!(parse(&s, &env.opts()).is_ok());
}

#[test]
fn a_default_dir_with_spaces_is_quoted_in_the_commands() {
    let d = TestDir::new("conf bin dir");
    let bin = d.file("s", 0o755).display().to_string();
    let opts = Options {
        default_dir: d.path().display().to_string(),
        path: "/bin".into(),
    };
    let def = &parse(&settings(&["s"], &[]), &opts).unwrap().defs[0];
    assert_eq!(def.start_command, Some(format!("'{bin}'")));
    assert_eq!(def.query_command, format!("'{bin}' -dump"));
}

#[test]
fn default_options_use_usr_local_bin_and_the_process_path() {
    let o = Options::default();
    assert_eq!(o.default_dir, "/usr/local/bin");
    assert_eq!(
        o.path,
        std::env::var("PATH").unwrap_or_else(|_| SH_DEFAULT_PATH.into())
    );
}

#[test]
fn standby_is_auto_by_default_and_on_needs_a_command_naming_the_socket() {
    let env = Env::new();
    let go = env.bin("go");
    let ok = parse(&settings(&["go"], &[]), &env.opts()).unwrap();
    assert_eq!(ok.defs[0].standby, StandbyMode::Auto);
    let ok = parse(
        &settings(&["go"], &[("pluginserver_go_standby", t("OFF"))]),
        &env.opts(),
    )
    .unwrap();
    assert_eq!(ok.defs[0].standby, StandbyMode::Off);
    // go-pdk derives its socket from -kong-prefix: a standby cannot be redirected
    let e = errors(parse(
        &settings(&["go"], &[("pluginserver_go_standby", t("on"))]),
        &env.opts(),
    ));
    assert_eq!(
        e,
        [format!(
            "pluginserver_go_standby (pluginserver go): on, but start_cmd '{go}' has no argument naming the socket '/kong/go.socket' (its path or file name), so a standby cannot listen elsewhere"
        )]
    );
    // a command that names its socket file may have one
    let cmd = format!("{go} -p /kong --sock-name go.socket");
    let ok = parse(
        &settings(
            &["go"],
            &[
                ("pluginserver_go_start_cmd", t(&cmd)),
                ("pluginserver_go_standby", Value::Bool(true)),
            ],
        ),
        &env.opts(),
    )
    .unwrap();
    assert_eq!(ok.defs[0].standby, StandbyMode::On);
    let e = errors(parse(
        &settings(&["go"], &[("pluginserver_go_standby", t("sometimes"))]),
        &env.opts(),
    ));
    assert_eq!(
        e,
        ["pluginserver_go_standby (pluginserver go): got 'sometimes'; expected auto, on or off"]
    );
    // an external server is not started here, so neither is its standby
    env.path.file("dump-info", 0o755);
    let e = errors(parse(
        &settings(
            &["ext"],
            &[
                ("pluginserver_ext_query_cmd", t("dump-info --all")),
                ("pluginserver_ext_standby", t("on")),
            ],
        ),
        &env.opts(),
    ));
    assert_eq!(
        e,
        [
            "pluginserver_ext_standby (pluginserver ext): on, but the server is external (no start_cmd)"
        ]
    );
    // a 100-byte socket fits, its standby's (108 bytes) does not
    let long = format!("/{}", "d".repeat(99));
    let e = errors(parse(
        &settings(
            &["go"],
            &[
                ("pluginserver_go_socket", t(&long)),
                (
                    "pluginserver_go_start_cmd",
                    t(&format!("{go} --sock {long}")),
                ),
                ("pluginserver_go_standby", t("on")),
            ],
        ),
        &env.opts(),
    ));
    assert_eq!(
        e,
        [format!(
            "pluginserver_go_standby (pluginserver go): on, but the standby socket '{long}.standby' would be longer than 107 bytes"
        )]
    );
}
