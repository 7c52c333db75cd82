//! The Lua stack of one running C function, with the unsafe calls of the Lua C
//! API (`mlua::ffi`) wrapped once, so that the walker and the codecs are safe code.
//!
//! Why raw: mlua's `Value`/`Table` types take one registry reference per value
//! and its callbacks allocate their arguments and results; reading and building
//! values on the stack directly (as lua-cjson does in C) costs a few ns per value.
//!
//! Safety rests on these rules, each kept inside this module:
//! - A [`Stack`] exists only inside a C function call on the state that called it
//!   ([`Stack::new`] is `unsafe` for that reason) and is not `Send`.
//! - Reading never raises: raw access only (`lua_rawgeti`, `lua_next`,
//!   `lua_objlen` on tables, `lua_tolstring` on strings only, so no conversion in
//!   place), nothing that allocates, and the one read that needs a pushed key and
//!   may honour metamethods ([`Stack::field`]) runs under `lua_pcall`. Reads use
//!   slots the entry point reserved before (`READ_SLOTS`), so they never grow the
//!   stack (growing may raise).
//! - Building never touches the stack: pushes are recorded (`Op`) and replayed
//!   by `super::replay` once every Rust frame that may panic or drop is gone,
//!   inside the entry point's protected call (see `super::protect`).
//! - Every read method leaves the values below the top it found in place (it
//!   pops only what it pushed). So a value that was on the stack when a method
//!   was called is still there when it returns.
//! - A [`Val`] borrowed from a stack slot (a string's bytes, a table's index) is
//!   handed to a closure for exactly as long as that slot is held; its lifetime is
//!   higher-ranked, so it cannot escape the closure. Arguments stay for the whole
//!   call. String bytes do not move: Lua strings are immutable and the slot keeps
//!   them alive (stack growth moves slots, not string data).

use std::cell::{Cell, RefCell};
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

/// Slots reserved for reading before the body runs: the walkers hold about
/// three per nesting level (key, value, item) and [`Stack::field`] four.
pub(super) const READ_SLOTS: c_int = 3 * super::MAX_DEPTH as c_int + 32;

/// Slots the recorded values may use (LuaJIT allows `LUAI_MAXCSTACK`, 8000,
/// per C call; replay needs them all at once).
const VIRTUAL_SLOTS: c_int = 7900;

/// The largest table size passed to `lua_createtable`: sizes come from
/// messages a plugin server wrote, so they are hints, not promises (a 16 MiB
/// array of nils must not allocate 16 M slots up front).
pub(super) const MAX_PRESIZE: usize = 4096;

/// One recorded stack operation (replayed by `super::replay`).
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Nil,
    Bool(bool),
    Num(f64),
    /// The bytes `Record::bytes[start..end]`.
    Str {
        start: usize,
        end: usize,
    },
    /// Bytes that outlive the replay (an argument's).
    Borrowed {
        ptr: *const u8,
        len: usize,
    },
    Table {
        narr: c_int,
        nrec: c_int,
    },
    /// Pops the top into `[t][i]` (raw); a nil is popped, not stored.
    SetItem {
        t: c_int,
        i: c_int,
    },
    /// As `SetItem`, `t` being the slot below the value.
    SetItemBelow(c_int),
    /// Pops key and value into `[t]` (raw); a nil value, or a nil or NaN key,
    /// is popped, not stored.
    SetPair {
        t: c_int,
    },
    /// As `SetPair`, `t` being the slot below the key.
    SetPairBelow,
    /// `lua_settop(l, n)` with a negative `n`.
    SetTop(c_int),
}

/// The pushes of one call, in order, with the bytes of their strings.
#[derive(Default)]
pub struct Record {
    pub ops: Vec<Op>,
    pub bytes: Vec<u8>,
    /// The highest slot the replay fills.
    pub max_top: c_int,
}

impl Record {
    pub fn clear(&mut self) {
        self.ops.clear();
        self.bytes.clear();
        self.max_top = 0;
    }

    /// Heap held, to decide whether to keep it for the next call.
    pub fn capacity(&self) -> usize {
        self.ops.capacity() * std::mem::size_of::<Op>() + self.bytes.capacity()
    }
}

/// The stack of one C function call.
pub struct Stack {
    l: *mut lua_State,
    /// The number of arguments (they keep their slots for the whole call).
    args: c_int,
    /// The slots below everything the body reads or records (the arguments
    /// and what the entry point keeps above them).
    base: c_int,
    /// The highest real slot reads may use (reserved by the caller).
    room: c_int,
    /// The recorded pushes and the virtual top they reached.
    rec: RefCell<Record>,
    vtop: Cell<c_int>,
    /// `lua_next` loops running: while one runs no metamethod may run (it could
    /// change the table under `lua_next`, which would then raise).
    iterating: Cell<u32>,
}

/// What [`get_protected`] reads: `t[name]`, raw or with metamethods.
struct FieldKey {
    ptr: *const u8,
    len: usize,
    raw: bool,
}

/// The `lua_CFunction` that [`Stack::field`] runs under `lua_pcall` with (table,
/// `FieldKey`): pushes the key (an allocation, which may raise) and reads
/// `t[key]`. A Lua error raised here (by the allocation or a metamethod) unwinds
/// to the `lua_pcall` through this frame only, which holds nothing to drop. A
/// metamethod may have run a GC cycle that shrank the stack: the reserve for
/// reading is made again before returning (this frame is above the reader's, so
/// it covers the reader's slots too). [`super::protect`] makes it the upvalue of
/// the trampoline that runs every bridge body.
pub unsafe extern "C-unwind" fn get_protected(l: *mut lua_State) -> c_int {
    // SAFETY: called by lua_pcall from `Stack::field` with exactly (table,
    // FieldKey) as arguments; the key's bytes outlive the call; every call that
    // may raise raises into the lua_pcall.
    unsafe {
        let key = ffi::lua_touserdata(l, 2).cast::<FieldKey>();
        if key.is_null() {
            return 0;
        }
        push_bytes(l, std::slice::from_raw_parts((*key).ptr, (*key).len));
        if (*key).raw {
            ffi::lua_rawget_(l, 1);
        } else {
            ffi::lua_gettable_(l, 1);
        }
        ffi::lua_checkstack(l, READ_SLOTS);
    }
    1
}

impl Stack {
    /// # Safety
    /// `l` is the state that is running the calling C function, on this thread;
    /// its first `args` slots are the arguments and its top is `base` (at least
    /// `args`); the caller reserved [`READ_SLOTS`] slots above it
    /// (`lua_checkstack`); the `Stack` is dropped before that function returns.
    /// `rec` is empty.
    pub unsafe fn new(l: *mut lua_State, args: c_int, base: c_int, rec: Record) -> Stack {
        Stack {
            l,
            args,
            base,
            room: base + READ_SLOTS,
            rec: RefCell::new(rec),
            vtop: Cell::new(base),
            iterating: Cell::new(0),
        }
    }

    /// The real top (reads push and pop above it).
    #[inline]
    fn top(&self) -> c_int {
        // SAFETY: `l` is live (Stack::new).
        unsafe { ffi::lua_gettop(self.l) }
    }

    /// Room for `n` more slots of reading, within the reserve.
    #[inline]
    fn check_read(&self, n: c_int) -> Result<(), Overflow> {
        if self.top() + n > self.room {
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
        // SAFETY: `each_slot` holds the key at `top + 1` and the value at
        // `top + 2` during both calls.
        self.each_slot(
            t,
            |top| f(unsafe { self.val(top + 1) }, unsafe { self.val(top + 2) }),
            |e, top| at(e, unsafe { self.val(top + 1) }),
        )
    }

    /// Calls `f(key)` for every key of `t` (raw, `next` order) and stops at the
    /// first error; the values are not read.
    pub fn each_key<E: From<Overflow>>(
        &self,
        t: Table<'_>,
        mut f: impl for<'v> FnMut(Val<'v>) -> Result<(), E>,
    ) -> Result<(), E> {
        // SAFETY: `each_slot` holds the key at `top + 1` during the call.
        self.each_slot(t, |top| f(unsafe { self.val(top + 1) }), |e, _| e)
    }

    /// The `lua_next` loop of `each_pair` and `each_key`: calls `step(top)` with
    /// the key at `top + 1` and the value at `top + 2`, and on its first error
    /// `fail(error, top)` while both are still there, then stops.
    #[inline]
    fn each_slot<E: From<Overflow>>(
        &self,
        t: Table<'_>,
        mut step: impl FnMut(c_int) -> Result<(), E>,
        fail: impl FnOnce(E, c_int) -> E,
    ) -> Result<(), E> {
        self.check_read(3)?;
        let top = self.top();
        // SAFETY: space checked; `t.idx` holds a table; lua_next gets back the key
        // it returned (`step` cannot touch the slots: it only has the stack's safe
        // methods, which restore the top they found); the key's slot is held
        // while `fail` reads it.
        self.iterating.set(self.iterating.get() + 1);
        let r = unsafe {
            ffi::lua_pushnil(self.l);
            loop {
                if ffi::lua_next(self.l, t.idx) == 0 {
                    break Ok(());
                }
                if let Err(e) = step(top) {
                    let e = fail(e, top);
                    ffi::lua_settop(self.l, top);
                    break Err(e);
                }
                ffi::lua_settop(self.l, top + 1);
            }
        };
        self.iterating.set(self.iterating.get() - 1);
        r
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
        self.check_read(1)?;
        let top = self.top();
        // SAFETY: space checked; `t.idx` holds a table; the slot is held during f.
        unsafe {
            ffi::lua_rawgeti_(self.l, t.idx, i);
            let r = f(self.val(top + 1));
            ffi::lua_settop(self.l, top);
            Ok(r)
        }
    }

    /// Calls `f(t[name])` with metamethods, like mlua's `Table::get` (raw inside
    /// an `each_pair`/`each_key` loop, see `iterating`). The read runs under
    /// `lua_pcall` even when raw: pushing the key allocates, and an allocation
    /// may raise; an error comes back as its message.
    pub fn field<R>(
        &self,
        t: Table<'_>,
        name: &str,
        f: impl for<'v> FnOnce(Val<'v>) -> R,
    ) -> Result<R, String> {
        self.check_read(4).map_err(|e| e.to_string())?;
        let top = self.top();
        // SAFETY: space checked; `t.idx` holds a table; the running C function
        // is the trampoline whose upvalue is `get_protected` (protect.rs);
        // pushvalue and pushlightuserdata do not allocate; lua_pcall catches any
        // error; `key` outlives the call; the result slot is held during f.
        unsafe {
            let raw = self.iterating.get() > 0 || ffi::lua_getmetatable(self.l, t.idx) == 0;
            ffi::lua_settop(self.l, top);
            let key = FieldKey {
                ptr: name.as_ptr(),
                len: name.len(),
                raw,
            };
            ffi::lua_pushvalue(self.l, ffi::lua_upvalueindex(1));
            ffi::lua_pushvalue(self.l, t.idx);
            ffi::lua_pushlightuserdata(self.l, (&raw const key).cast_mut().cast::<c_void>());
            if ffi::lua_pcall(self.l, 2, 1, 0) != 0 {
                let msg = match self.val(top + 1) {
                    Val::Str(b) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("error object is a {} value", other.type_name()),
                };
                ffi::lua_settop(self.l, top);
                return Err(format!("runtime error: {msg}"));
            }
            let r = f(self.val(top + 1));
            ffi::lua_settop(self.l, top);
            Ok(r)
        }
    }

    // Building values. Nothing is pushed here: each push is recorded as an
    // `Op` and `replay` pushes them all at the end of the call, under the
    // protected call, after every Rust frame that could panic or drop has
    // returned (a push allocates, and an allocation may raise: out of memory,
    // a `__gc` finalizer that errors). Slots are "virtual": numbered as they
    // will be on the real stack when replayed.

    /// Room for `n` more pushes.
    #[inline]
    pub fn check(&self, n: c_int) -> Result<(), Overflow> {
        if self.vtop.get() + n > VIRTUAL_SLOTS {
            return Err(Overflow);
        }
        Ok(())
    }

    #[inline]
    fn record(&self, op: Op, grow: c_int) {
        let top = self.vtop.get() + grow;
        self.vtop.set(top);
        let mut rec = self.rec.borrow_mut();
        rec.max_top = rec.max_top.max(top);
        rec.ops.push(op);
    }

    #[inline]
    fn record_str(&self, b: &[u8]) {
        let mut rec = self.rec.borrow_mut();
        let start = rec.bytes.len();
        rec.bytes.extend_from_slice(b);
        let end = rec.bytes.len();
        drop(rec);
        self.record(Op::Str { start, end }, 1);
    }

    /// Forgets everything recorded (the entry point's error path).
    pub fn discard(&self) {
        let mut rec = self.rec.borrow_mut();
        rec.ops.clear();
        rec.bytes.clear();
        rec.max_top = 0;
        self.vtop.set(self.base);
    }

    /// The recording, for `replay`.
    pub fn into_record(self) -> Record {
        self.rec.into_inner()
    }

    pub fn push_nil(&self) -> Result<(), Overflow> {
        self.check(1)?;
        self.record(Op::Nil, 1);
        Ok(())
    }

    pub fn push_bool(&self, b: bool) -> Result<(), Overflow> {
        self.check(1)?;
        self.record(Op::Bool(b), 1);
        Ok(())
    }

    pub fn push_num(&self, n: f64) -> Result<(), Overflow> {
        self.check(1)?;
        self.record(Op::Num(n), 1);
        Ok(())
    }

    pub fn push_str(&self, b: &[u8]) -> Result<(), Overflow> {
        self.check(1)?;
        self.record_str(b);
        Ok(())
    }

    /// Pushes a new table sized for `narr` array and `nrec` hash entries (each
    /// capped at [`MAX_PRESIZE`]: a size is a hint, the table grows as filled).
    pub fn new_table(&self, narr: usize, nrec: usize) -> Result<NewTable, Overflow> {
        self.check(1)?;
        // SAFETY: checked.
        unsafe { self.new_table_unchecked(narr, nrec) };
        Ok(NewTable {
            idx: self.vtop.get(),
        })
    }

    fn pushed_above(&self, t: &NewTable, n: c_int) {
        assert!(
            self.vtop.get() >= t.idx + n,
            "nothing pushed above the table"
        );
    }

    /// Pops the top value into `t[i]` (raw); a nil leaves a hole.
    pub fn set_item(&self, t: &NewTable, i: usize) {
        let i = c_int::try_from(i).expect("array index fits an int");
        self.pushed_above(t, 1);
        self.record(Op::SetItem { t: t.idx, i }, -1);
    }

    /// Pops the top two values (key, value) into `t` (raw); a nil value is
    /// left out, and so is a nil or NaN key (replay skips the pair rather than
    /// let `lua_rawset` raise; callers check keys before).
    pub fn set_pair(&self, t: &NewTable) {
        self.pushed_above(t, 2);
        self.record(Op::SetPair { t: t.idx }, -2);
    }

    // The decoder's variants: no per-push check (one `check` per table covers
    // the slots its entries take). Each method is `unsafe` because only the
    // caller knows that a `check` covers the push or what the top slots hold;
    // recording itself cannot go wrong, and replay checks the real stack once.

    /// Pushes nil.
    ///
    /// # Safety
    /// A [`Stack::check`] made room for this slot (no push since used it up).
    pub unsafe fn push_nil_unchecked(&self) {
        self.record(Op::Nil, 1);
    }

    /// # Safety
    /// As [`Stack::push_nil_unchecked`].
    pub unsafe fn push_bool_unchecked(&self, b: bool) {
        self.record(Op::Bool(b), 1);
    }

    /// # Safety
    /// As [`Stack::push_nil_unchecked`].
    pub unsafe fn push_num_unchecked(&self, n: f64) {
        self.record(Op::Num(n), 1);
    }

    /// Pushes the bytes `b` without copying them into the recording.
    ///
    /// # Safety
    /// As [`Stack::push_nil_unchecked`], and `b` stays valid until the running C
    /// function returns (the bytes of an argument string).
    pub unsafe fn push_str_unchecked(&self, b: &[u8]) {
        self.record(
            Op::Borrowed {
                ptr: b.as_ptr(),
                len: b.len(),
            },
            1,
        );
    }

    /// Pushes a new table sized for `narr` array and `nrec` hash entries (each
    /// capped at [`MAX_PRESIZE`]); the caller then stores exactly
    /// `t[top-1] = top` (items) or `t[top-2] = top-1` (pairs) with the
    /// `*_unchecked` setters.
    ///
    /// # Safety
    /// As [`Stack::push_nil_unchecked`].
    pub unsafe fn new_table_unchecked(&self, narr: usize, nrec: usize) {
        // The cap is what keeps a declared length from being an allocation.
        let size = |n: usize| n.min(MAX_PRESIZE) as c_int;
        self.record(
            Op::Table {
                narr: size(narr),
                nrec: size(nrec),
            },
            1,
        );
    }

    /// Pops the top value into `t[i]` (raw), `t` being the slot just below it; a
    /// nil leaves a hole.
    ///
    /// # Safety
    /// The top slot holds a value and the one below it a table.
    pub unsafe fn set_item_unchecked(&self, i: c_int) {
        self.record(Op::SetItemBelow(i), -1);
    }

    /// Pops the top two values (key, value) into the table just below them (raw).
    ///
    /// # Safety
    /// The top two slots hold a key and a value above a table.
    pub unsafe fn set_pair_unchecked(&self) {
        self.record(Op::SetPairBelow, -2);
    }

    /// Pops `n` values.
    ///
    /// # Safety
    /// At least `n` values were pushed by the caller above the slots it must keep.
    pub unsafe fn pop_unchecked(&self, n: c_int) {
        self.record(Op::SetTop(-n - 1), -n);
    }
}

/// Pushes `b` as a Lua string.
///
/// # Safety
/// `l` is live and has room for one slot.
pub unsafe fn push_bytes(l: *mut lua_State, b: &[u8]) {
    // An empty slice may have a dangling pointer: give Lua a real one.
    let p: *const c_char = if b.is_empty() {
        c"".as_ptr()
    } else {
        b.as_ptr().cast()
    };
    // SAFETY: caller; `p` points to `b.len()` readable bytes.
    unsafe { ffi::lua_pushlstring_(l, p, b.len()) }
}
