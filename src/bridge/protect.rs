//! How a bridge function runs, so that neither a Rust panic nor a Lua error
//! crosses a frame that cannot take it.
//!
//! The two kinds of unwinding cannot share frames: a `catch_unwind` that meets
//! a Lua error (LuaJIT raises with the system unwinder on x86-64, a foreign
//! exception to Rust) aborts the process, and so does a Rust panic caught by
//! LuaJIT's `lua_pcall`. So each function runs in three steps:
//!
//! 1. [`entry`], the `lua_CFunction` itself, owns the call's state and calls
//!    the [`body`] trampoline (its upvalue) under `lua_pcall`: every Lua error
//!    of the steps below ends there, above this frame.
//! 2. [`body`] reserves the stack slots reading may need (`lua_checkstack` may
//!    raise: nothing to drop yet), then runs the Rust body under
//!    `catch_unwind`. The body reads the arguments (reads never raise) and
//!    records what it pushes; an error or a panic becomes the recording of
//!    `nil, message`. Every Rust frame of the body has returned when it ends.
//! 3. `replay` pushes the recording; an allocation there may raise, and the
//!    error unwinds only through `replay` and `body`, which hold nothing to
//!    drop. [`entry`] then returns `nil, error` (the error value LuaJIT gave:
//!    "not enough memory", or what a `__gc` finalizer raised).
//!
//! So a caller never sees a raised error from the bridge: failures come back as
//! `nil, message`, like every other bridge error.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use mlua::ffi::{self, lua_State};
use mlua::{Function, Lua, Result as LuaResult};

use super::replay::replay;
use super::stack::{READ_SLOTS, Record, Stack, get_protected};

/// Arguments passed on to the body (no bridge function takes more).
const ARGS: c_int = 2;

/// Recordings above this size are not kept for the next call.
const KEEP_RECORD: usize = 256 * 1024;

thread_local! {
    // One recording per thread, reused; a call that re-enters the bridge (a
    // metamethod, a finalizer) finds it taken and starts an empty one.
    static RECORD: RefCell<Record> = RefCell::new(Record::default());
}

/// The state of one call, handed to [`body`] as a light userdata.
struct Call<'a> {
    run: &'a mut dyn FnMut(&Stack) -> Result<c_int, String>,
    record: Record,
    results: c_int,
}

/// Runs `run` as the body of the `lua_CFunction` that called this (see the
/// module). Returns the number of results on the stack.
///
/// # Safety
/// `l` is the state that called the C function running this, which was
/// created by [`function`] (the trampoline is its upvalue).
pub unsafe fn entry(l: *mut lua_State, run: impl FnOnce(&Stack) -> Result<c_int, String>) -> c_int {
    let mut run = Some(run);
    let mut run = |s: &Stack| match run.take() {
        Some(f) => f(s),
        None => Err("bridge body run twice".to_string()),
    };
    let record = RECORD.with(|r| {
        r.try_borrow_mut()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    });
    let mut call = Call {
        run: &mut run,
        record,
        results: 0,
    };
    // SAFETY: a C function has LUA_MINSTACK (20) free slots: these take 4 and
    // allocate nothing (a missing argument is pushed as nil); lua_pcall catches
    // every error raised below it.
    let (status, top) = unsafe {
        let top = ffi::lua_gettop(l);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_pushvalue(l, 1);
        ffi::lua_pushvalue(l, 2);
        ffi::lua_pushlightuserdata(l, (&raw mut call).cast::<c_void>());
        (ffi::lua_pcall(l, ARGS + 1, ffi::LUA_MULTRET, 0), top)
    };
    let mut record = call.record;
    if record.capacity() <= KEEP_RECORD {
        record.clear();
        RECORD.with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                *r = record;
            }
        });
    }
    if status != 0 {
        // SAFETY: the error value is on top; two free slots (LUA_MINSTACK).
        unsafe {
            ffi::lua_pushnil(l);
            ffi::lua_insert(l, -2);
        }
        return 2;
    }
    // SAFETY: `l` is live.
    unsafe { ffi::lua_gettop(l) - top }
}

/// The trampoline [`entry`] calls under `lua_pcall`: slots 1 and 2 are the
/// arguments, 3 the [`Call`].
///
/// # Safety
/// Called by `lua_pcall` from [`entry`] only.
unsafe extern "C-unwind" fn body(l: *mut lua_State) -> c_int {
    // SAFETY: [`entry`] passed a live `Call` that outlives this call; nothing
    // in this frame needs dropping when a Lua error unwinds through it.
    unsafe {
        let call = ffi::lua_touserdata(l, ARGS + 1).cast::<Call>();
        if call.is_null() {
            return 0;
        }
        if ffi::lua_checkstack(l, READ_SLOTS) == 0 {
            return raise(l, c"value bridge: Lua stack overflow");
        }
        run(l, &mut *call);
        if !replay(l, &(*call).record) {
            return raise(l, c"value bridge: Lua stack overflow");
        }
        (*call).results
    }
}

/// Step 2: the Rust body under `catch_unwind`; records its results (or
/// `nil, message`) into `call`. Never raises; every frame it makes is gone when
/// it returns.
///
/// # Safety
/// As [`body`], with the arguments and the `Call` on the stack and the read
/// reserve made.
#[inline(never)]
unsafe fn run(l: *mut lua_State, call: &mut Call<'_>) {
    // SAFETY: caller; slot 3 (the Call) stays below everything the body pushes
    // or reads.
    let s = unsafe { Stack::new(l, ARGS, ARGS + 1, std::mem::take(&mut call.record)) };
    let msg = match catch_unwind(AssertUnwindSafe(|| (call.run)(&s))) {
        Ok(Ok(n)) => {
            call.results = n;
            call.record = s.into_record();
            return;
        }
        Ok(Err(msg)) => msg,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("internal error in the value bridge: {what}")
        }
    };
    // A panic may have left the recording half-built: start over.
    s.discard();
    call.results = match s.push_nil().and_then(|()| s.push_str(msg.as_bytes())) {
        Ok(()) => 2,
        Err(_) => 0,
    };
    call.record = s.into_record();
}

/// Raises `msg`; for [`body`] only, with nothing to drop.
unsafe fn raise(l: *mut lua_State, msg: &std::ffi::CStr) -> c_int {
    // SAFETY: inside the protected call; one free slot (checked by the callers'
    // caller: a raise follows a failed check, which leaves the C frame's slots).
    unsafe {
        ffi::lua_pushstring(l, msg.as_ptr());
        ffi::lua_error(l)
    }
}

/// The Lua function of bridge C function `f`: a C closure whose upvalue is the
/// [`body`] trampoline, which [`entry`] calls; the trampoline's own upvalue is
/// the protected field read (`Stack::field`), so that neither is pushed by
/// allocating a function during a call.
pub fn function(lua: &Lua, f: ffi::lua_CFunction) -> LuaResult<Function> {
    // SAFETY: exec_raw runs the closure under a protected call with room for
    // the two pushes; the closure leaves exactly the new function.
    unsafe {
        lua.exec_raw::<Function>((), |l| {
            ffi::lua_pushcfunction(l, get_protected);
            ffi::lua_pushcclosure(l, body, 1);
            ffi::lua_pushcclosure(l, f, 1);
        })
    }
}
