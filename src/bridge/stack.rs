//! The Lua stack of one running C function, with the unsafe calls of the Lua C
//! API (`mlua::ffi`) wrapped once, so that the walker and the codecs are safe code.
//!
//! Why raw: mlua's `Value`/`Table` types take one registry reference per value
//! and its callbacks allocate their arguments and results; reading and building
//! values on the stack directly (as lua-cjson does in C) costs a few ns per value.
//!
//! Safety rests on three rules, each kept inside this module:
//! - A [`Stack`] exists only inside a C function call on the state that called it
//!   ([`Stack::new`] is `unsafe` for that reason) and is not `Send`.
//! - Every method leaves the values below the top it found in place (it pops only
//!   what it pushed), and pushes only after `lua_checkstack`. So a value that was
//!   on the stack when a method was called is still there when it returns.
//! - A [`Val`] borrowed from a stack slot (a string's bytes, a table's index) is
//!   handed to a closure for exactly as long as that slot is held; its lifetime is
//!   higher-ranked, so it cannot escape the closure. Arguments stay for the whole
//!   call. String bytes do not move: Lua strings are immutable and the slot keeps
//!   them alive (stack growth moves slots, not string data).
//!
//! Errors are never raised (no `lua_error`, no longjmp through Rust frames): the
//! calls used here do not raise, except on memory exhaustion (which OpenResty
//! treats as fatal anyway) and in metamethods, which run only under `lua_pcall`.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

use mlua::ffi::{self, lua_State};

/// The stack cannot grow any more (LuaJIT allows about 8000 slots per C call).
#[derive(Debug)]
pub struct Overflow;

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lua stack overflow")
    }
}

impl From<Overflow> for String {
    fn from(e: Overflow) -> String {
        e.to_string()
    }
}

/// A table held in a stack slot for the lifetime `'v`.
#[derive(Clone, Copy)]
pub struct Table<'v> {
    idx: c_int,
    _slot: PhantomData<&'v ()>,
}

/// A Lua value read from a stack slot that is held for `'v`.
#[derive(Clone, Copy)]
pub enum Val<'v> {
    Nil,
    Bool(bool),
    Num(f64),
    Str(&'v [u8]),
    /// A light userdata; NULL is `cjson.null`/`ngx.null`.
    Light(*mut c_void),
    Table(Table<'v>),
    /// A value no codec can carry (function, thread, userdata, cdata); its type name.
    Other(&'static str),
}

/// Whether `n` is a whole number in i64 range, told apart exactly as mlua 0.11
/// does for LuaJIT (its `Value::Integer`); only type names in messages depend on it.
fn integral(n: f64) -> bool {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    (-TWO_63..TWO_63).contains(&n) && ((n as i64) as f64).to_bits() == n.to_bits()
}

impl Val<'_> {
    /// The type name used in error messages (the names mlua used: a whole
    /// number is an "integer", a cdata "other").
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Nil => "nil",
            Val::Bool(_) => "boolean",
            Val::Num(n) if integral(*n) => "integer",
            Val::Num(_) => "number",
            Val::Str(_) => "string",
            Val::Light(_) => "lightuserdata",
            Val::Table(_) => "table",
            Val::Other(name) => name,
        }
    }
}

/// A table this module created; it stays at `idx` until the caller's function
/// returns (see [`Stack::new_table`]).
pub struct NewTable {
    idx: c_int,
}

/// The stack of one C function call.
pub struct Stack {
    l: *mut lua_State,
    /// The number of arguments (they keep their slots for the whole call).
    args: c_int,
}

/// The `lua_CFunction` that [`Stack::field`] runs under `lua_pcall`: `t[k]` with
/// metamethods. A Lua error raised here unwinds to the `lua_pcall`, through no
/// Rust frame that needs cleanup.
unsafe extern "C-unwind" fn get_protected(l: *mut lua_State) -> c_int {
    // SAFETY: called by lua_pcall with exactly (table, key) as arguments.
    unsafe { ffi::lua_gettable_(l, 1) };
    1
}

impl Stack {
    /// # Safety
    /// `l` is the state that is running the calling C function, on this thread,
    /// and the `Stack` is dropped before that function returns.
    pub unsafe fn new(l: *mut lua_State) -> Stack {
        // SAFETY: caller.
        let args = unsafe { ffi::lua_gettop(l) };
        Stack { l, args }
    }

    #[inline]
    pub fn top(&self) -> c_int {
        // SAFETY: `l` is live (Stack::new).
        unsafe { ffi::lua_gettop(self.l) }
    }

    /// Drops the values above `top`. Only for a top this caller saw earlier (the
    /// bridge's entry points, which own every slot above their arguments).
    pub fn set_top(&self, top: c_int) {
        assert!(top >= 0 && top <= self.top(), "set_top may only pop");
        // SAFETY: pops only (checked above).
        unsafe { ffi::lua_settop(self.l, top) }
    }

    #[inline]
    pub fn check(&self, n: c_int) -> Result<(), Overflow> {
        // SAFETY: `l` is live; lua_checkstack does not raise except on OOM.
        if unsafe { ffi::lua_checkstack(self.l, n) } == 0 {
            return Err(Overflow);
        }
        Ok(())
    }

    /// The value in slot `idx` (absolute, valid). The caller picks `'v` and must
    /// hold the slot that long.
    #[inline]
    unsafe fn val<'v>(&self, idx: c_int) -> Val<'v> {
        // SAFETY: `idx` is a valid slot (caller); lua_to* do not raise for the
        // types they are called on (lua_tolstring only on strings: no conversion).
        unsafe {
            match ffi::lua_type(self.l, idx) {
                ffi::LUA_TNIL | ffi::LUA_TNONE => Val::Nil,
                ffi::LUA_TBOOLEAN => Val::Bool(ffi::lua_toboolean(self.l, idx) != 0),
                ffi::LUA_TNUMBER => Val::Num(ffi::lua_tonumber(self.l, idx)),
                ffi::LUA_TSTRING => {
                    let mut len = 0usize;
                    let p = ffi::lua_tolstring(self.l, idx, &mut len);
                    Val::Str(std::slice::from_raw_parts(p.cast::<u8>(), len))
                }
                ffi::LUA_TLIGHTUSERDATA => Val::Light(ffi::lua_touserdata(self.l, idx)),
                ffi::LUA_TTABLE => Val::Table(Table {
                    idx,
                    _slot: PhantomData,
                }),
                ffi::LUA_TFUNCTION => Val::Other("function"),
                ffi::LUA_TTHREAD => Val::Other("thread"),
                ffi::LUA_TUSERDATA => Val::Other("userdata"),
                _ => Val::Other("other"),
            }
        }
    }

    /// The number of arguments of the running call.
    pub fn args(&self) -> c_int {
        self.args
    }

    /// Argument `i` (1-based) of the running call; nil when absent. Arguments
    /// stay in their slots for the whole call, the lifetime of `&self`.
    pub fn arg(&self, i: c_int) -> Val<'_> {
        if i < 1 || i > self.args {
            return Val::Nil;
        }
        // SAFETY: a valid slot below every slot the bridge pushes.
        unsafe { self.val(i) }
    }

    /// `#t` without metamethods (`lua_objlen`).
    #[inline]
    pub fn raw_len(&self, t: Table<'_>) -> usize {
        // SAFETY: `t.idx` holds a table.
        unsafe { ffi::lua_objlen(self.l, t.idx) }
    }

    /// The identity of a table (for cycle detection).
    pub fn pointer(&self, t: Table<'_>) -> *const c_void {
        // SAFETY: `t.idx` holds a table.
        unsafe { ffi::lua_topointer(self.l, t.idx) }
    }

    /// Calls `f(key, value)` for every entry of `t` (raw, `next` order) and stops
    /// at the first error, which `at(error, key)` may add the key to. The key is
    /// read again from its slot for that, so that `f` gets its arguments without
    /// the key being kept aside on every call.
    #[inline]
    pub fn each_pair<E: From<Overflow>>(
        &self,
        t: Table<'_>,
        mut f: impl for<'v> FnMut(Val<'v>, Val<'v>) -> Result<(), E>,
        at: impl for<'v> FnOnce(E, Val<'v>) -> E,
    ) -> Result<(), E> {
        self.check(3)?;
        let top = self.top();
        // SAFETY: space checked; `t.idx` holds a table; lua_next gets back the key
        // it returned (f cannot touch the slots: it only has the stack's safe
        // methods, which restore the top they found); the key's slot is held
        // while `at` reads it.
        unsafe {
            ffi::lua_pushnil(self.l);
            while ffi::lua_next(self.l, t.idx) != 0 {
                if let Err(e) = f(self.val(top + 1), self.val(top + 2)) {
                    let e = at(e, self.val(top + 1));
                    ffi::lua_settop(self.l, top);
                    return Err(e);
                }
                ffi::lua_settop(self.l, top + 1);
            }
        }
        Ok(())
    }

    /// Calls `f(key)` for every key of `t` (raw, `next` order) and stops at the
    /// first error; the values are not read.
    pub fn each_key<E: From<Overflow>>(
        &self,
        t: Table<'_>,
        mut f: impl for<'v> FnMut(Val<'v>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.check(3)?;
        let top = self.top();
        // SAFETY: as `each_pair`.
        unsafe {
            ffi::lua_pushnil(self.l);
            while ffi::lua_next(self.l, t.idx) != 0 {
                let r = f(self.val(top + 1));
                if r.is_err() {
                    ffi::lua_settop(self.l, top);
                    return r;
                }
                ffi::lua_settop(self.l, top + 1);
            }
        }
        Ok(())
    }

    /// Calls `f(t[i])` (raw).
    #[inline]
    pub fn item<R>(
        &self,
        t: Table<'_>,
        i: usize,
        f: impl for<'v> FnOnce(Val<'v>) -> R,
    ) -> Result<R, Overflow> {
        let i = c_int::try_from(i).map_err(|_| Overflow)?;
        self.check(1)?;
        let top = self.top();
        // SAFETY: space checked; `t.idx` holds a table; the slot is held during f.
        unsafe {
            ffi::lua_rawgeti_(self.l, t.idx, i);
            let r = f(self.val(top + 1));
            ffi::lua_settop(self.l, top);
            Ok(r)
        }
    }

    /// Calls `f(t[name])` with metamethods, like mlua's `Table::get`: a plain
    /// read when `t` has no metatable, else `lua_gettable` under `lua_pcall`; an
    /// error raised by a metamethod comes back as its message.
    pub fn field<R>(
        &self,
        t: Table<'_>,
        name: &str,
        f: impl for<'v> FnOnce(Val<'v>) -> R,
    ) -> Result<R, String> {
        self.check(4).map_err(|e| e.to_string())?;
        let top = self.top();
        // SAFETY: space checked; `t.idx` holds a table; lua_pcall catches any
        // error of the metamethod; the result slot is held during f.
        unsafe {
            if ffi::lua_getmetatable(self.l, t.idx) == 0 {
                push_bytes(self.l, name.as_bytes());
                ffi::lua_rawget_(self.l, t.idx);
            } else {
                ffi::lua_settop(self.l, top);
                ffi::lua_pushcfunction(self.l, get_protected);
                ffi::lua_pushvalue(self.l, t.idx);
                push_bytes(self.l, name.as_bytes());
                if ffi::lua_pcall(self.l, 2, 1, 0) != 0 {
                    let msg = match self.val(top + 1) {
                        Val::Str(b) => String::from_utf8_lossy(b).into_owned(),
                        other => format!("error object is a {} value", other.type_name()),
                    };
                    ffi::lua_settop(self.l, top);
                    return Err(format!("runtime error: {msg}"));
                }
            }
            let r = f(self.val(top + 1));
            ffi::lua_settop(self.l, top);
            Ok(r)
        }
    }

    // Building values: each push adds one slot (after checking there is room).

    pub fn push_nil(&self) -> Result<(), Overflow> {
        self.check(1)?;
        // SAFETY: space checked.
        unsafe { ffi::lua_pushnil(self.l) };
        Ok(())
    }

    pub fn push_bool(&self, b: bool) -> Result<(), Overflow> {
        self.check(1)?;
        // SAFETY: space checked.
        unsafe { ffi::lua_pushboolean(self.l, c_int::from(b)) };
        Ok(())
    }

    pub fn push_num(&self, n: f64) -> Result<(), Overflow> {
        self.check(1)?;
        // SAFETY: space checked.
        unsafe { ffi::lua_pushnumber(self.l, n) };
        Ok(())
    }

    pub fn push_str(&self, b: &[u8]) -> Result<(), Overflow> {
        self.check(1)?;
        // SAFETY: space checked; Lua copies the bytes.
        unsafe { push_bytes(self.l, b) };
        Ok(())
    }

    /// Pushes a new table sized for `narr` array and `nrec` hash entries.
    pub fn new_table(&self, narr: usize, nrec: usize) -> Result<NewTable, Overflow> {
        self.check(1)?;
        let size = |n: usize| c_int::try_from(n).unwrap_or(c_int::MAX);
        // SAFETY: space checked.
        unsafe { ffi::lua_createtable(self.l, size(narr), size(nrec)) };
        Ok(NewTable { idx: self.top() })
    }

    /// Whether the top slot (above `t`) holds nil.
    fn top_is_nil(&self, t: &NewTable, above: c_int) -> bool {
        assert!(
            self.top() >= t.idx + above,
            "nothing pushed above the table"
        );
        // SAFETY: the slot exists (checked).
        unsafe { ffi::lua_type(self.l, -1) == ffi::LUA_TNIL }
    }

    /// Pops the top value into `t[i]` (raw); a nil leaves a hole.
    pub fn set_item(&self, t: &NewTable, i: usize) {
        let i = c_int::try_from(i).expect("array index fits an int");
        if self.top_is_nil(t, 1) {
            self.set_top(self.top() - 1);
            return;
        }
        // SAFETY: a value above `t` (checked), `t.idx` holds a table.
        unsafe { ffi::lua_rawseti_(self.l, t.idx, i) }
    }

    /// Pops the top two values (key, value) into `t` (raw); a nil value is
    /// left out. The key must not be nil or NaN (`lua_rawset` would raise).
    pub fn set_pair(&self, t: &NewTable) {
        if self.top_is_nil(t, 2) {
            self.set_top(self.top() - 2);
            return;
        }
        // SAFETY: two values above `t` (checked), `t.idx` holds a table, the key
        // is not nil/NaN (caller; asserted below so a slip cannot raise).
        unsafe {
            let key_ok = match ffi::lua_type(self.l, -2) {
                ffi::LUA_TNIL => false,
                ffi::LUA_TNUMBER => !ffi::lua_tonumber(self.l, -2).is_nan(),
                _ => true,
            };
            assert!(key_ok, "table key is nil or NaN");
            ffi::lua_rawset(self.l, t.idx);
        }
    }

    // Building without per-push checks (the decoder): one `check` per table
    // covers the slots its entries take. Each method is `unsafe` because only the
    // caller knows that a `check` covers the push or what the top slots hold.

    /// Pushes nil.
    ///
    /// # Safety
    /// A [`Stack::check`] made room for this slot (no push since used it up).
    pub unsafe fn push_nil_unchecked(&self) {
        // SAFETY: caller.
        unsafe { ffi::lua_pushnil(self.l) }
    }

    /// # Safety
    /// As [`Stack::push_nil_unchecked`].
    pub unsafe fn push_bool_unchecked(&self, b: bool) {
        // SAFETY: caller.
        unsafe { ffi::lua_pushboolean(self.l, c_int::from(b)) }
    }

    /// # Safety
    /// As [`Stack::push_nil_unchecked`].
    pub unsafe fn push_num_unchecked(&self, n: f64) {
        // SAFETY: caller.
        unsafe { ffi::lua_pushnumber(self.l, n) }
    }

    /// # Safety
    /// As [`Stack::push_nil_unchecked`].
    pub unsafe fn push_str_unchecked(&self, b: &[u8]) {
        // SAFETY: caller; Lua copies the bytes.
        unsafe { push_bytes(self.l, b) }
    }

    /// Pushes a new table sized for `narr` array and `nrec` hash entries; the
    /// caller then stores exactly `t[top-1] = top` (items) or `t[top-2] = top-1`
    /// (pairs) with the `*_unchecked` setters.
    ///
    /// # Safety
    /// As [`Stack::push_nil_unchecked`].
    pub unsafe fn new_table_unchecked(&self, narr: usize, nrec: usize) {
        let size = |n: usize| c_int::try_from(n).unwrap_or(c_int::MAX);
        // SAFETY: caller.
        unsafe { ffi::lua_createtable(self.l, size(narr), size(nrec)) }
    }

    /// Pops the top value into `t[i]` (raw), `t` being the slot just below it; a
    /// nil leaves a hole.
    ///
    /// # Safety
    /// The top slot holds a value and the one below it a table.
    pub unsafe fn set_item_unchecked(&self, i: c_int) {
        // SAFETY: caller; rawseti of any value (nil included) does not raise.
        unsafe { ffi::lua_rawseti_(self.l, -2, i) }
    }

    /// Pops the top two values (key, value) into the table just below them (raw).
    ///
    /// # Safety
    /// The top two slots hold a key that is neither nil nor NaN (lua_rawset would
    /// raise) and a value that is not nil, above a table.
    pub unsafe fn set_pair_unchecked(&self) {
        // SAFETY: caller.
        unsafe { ffi::lua_rawset(self.l, -3) }
    }

    /// Pops `n` values.
    ///
    /// # Safety
    /// At least `n` values were pushed by the caller above the slots it must keep.
    pub unsafe fn pop_unchecked(&self, n: c_int) {
        // SAFETY: caller.
        unsafe { ffi::lua_settop(self.l, -n - 1) }
    }
}

/// Pushes `b` as a Lua string.
///
/// # Safety
/// `l` is live and has room for one slot.
unsafe fn push_bytes(l: *mut lua_State, b: &[u8]) {
    // An empty slice may have a dangling pointer: give Lua a real one.
    let p: *const c_char = if b.is_empty() {
        c"".as_ptr()
    } else {
        b.as_ptr().cast()
    };
    // SAFETY: caller; `p` points to `b.len()` readable bytes.
    unsafe { ffi::lua_pushlstring_(l, p, b.len()) }
}
