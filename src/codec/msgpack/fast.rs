//! The reply a plugin server sends most, read in one pass.
//!
//! Nearly every message during an event is the reply to HandleEvent or Step:
//! `[1, id, nil, {EventId = n, Data = "ret" | {Method = name, Args = value}}]`.
//! The general path frames the message (a pass over every byte) and then reads
//! the envelope (a second pass over its part). This reads the envelope from the
//! unframed bytes and measures only `Args`, so the envelope is walked once.
//!
//! It only ever accepts: anything it does not recognise exactly (another shape,
//! another key, a repeated key, a message cut short, a limit that might be
//! reached, a reply to another request) gives `None`, and the general path then
//! answers, errors included. What it accepts the general path would accept with
//! the same result: every byte of the message is read by a field reader or
//! measured by [`complete_len`], `Args` within the nesting the framer would
//! still allow below the three envelope levels, and the length within the size limit.

use std::ops::Range;

use super::framer::{Limits, complete_len};
use super::read;
use super::session::Event;
use crate::codec::methods;

/// Arrays and maps around `Args`: the message, the result map, the Data map.
const ENVELOPE_DEPTH: usize = 3;

/// Whether `key` is `name`: compared as a fixed-size array, which compiles to a
/// few integer compares where a slice compare calls `memcmp`.
fn is<const N: usize>(key: &[u8], name: &[u8; N]) -> bool {
    <&[u8; N]>::try_from(key).is_ok_and(|k| k == name)
}

/// Reads the reply to HandleEvent or Step request `id` at the start of `bytes`;
/// returns its event (spans index `bytes`) and the message length, or `None`
/// for the general path.
pub fn event_reply(bytes: &[u8], id: u32, limits: Limits) -> Option<(Event, usize)> {
    let inner = Limits {
        max_depth: limits.max_depth.checked_sub(ENVELOPE_DEPTH)?,
        ..limits
    };
    let (4, at) = read::array_at(bytes, 0)? else {
        return None;
    };
    let (1u8, at) = read::int_at(bytes, at)? else {
        return None;
    };
    let (got, at) = read::int_at::<u32>(bytes, at)?;
    if got != id || bytes.get(at) != Some(&0xc0) {
        return None;
    }
    let (entries, mut at) = read::map_at(bytes, at + 1)?;
    let (mut event_id, mut data) = (None, None);
    for _ in 0..entries {
        let key = read::text_at(bytes, at)?;
        at = key.end;
        match &bytes[key] {
            k if is(k, b"EventId") && event_id.is_none() => {
                let (n, end) = read::int_at::<i64>(bytes, at)?;
                event_id = Some(n);
                at = end;
            }
            k if is(k, b"Data") && data.is_none() => {
                let (d, end) = self::data(bytes, at, inner)?;
                data = Some(d);
                at = end;
            }
            _ => return None,
        }
    }
    if at > limits.max_message_size {
        return None;
    }
    let event_id = event_id?;
    let event = match data? {
        Data::Ret => Event::Ret { event_id },
        Data::Call { name, args } => Event::Call {
            event_id,
            method: methods::index_of(&bytes[name.clone()]),
            name,
            args,
        },
    };
    Some((event, at))
}

enum Data {
    Ret,
    Call {
        name: Range<usize>,
        args: Range<usize>,
    },
}

/// The Data value at `at` and where it ends.
fn data(bytes: &[u8], at: usize, inner: Limits) -> Option<(Data, usize)> {
    if let Some(text) = read::text_at(bytes, at) {
        return is(&bytes[text.clone()], b"ret").then_some((Data::Ret, text.end));
    }
    let (entries, mut at) = read::map_at(bytes, at)?;
    let (mut name, mut args) = (None, None);
    for _ in 0..entries {
        let key = read::text_at(bytes, at)?;
        at = key.end;
        match &bytes[key] {
            k if is(k, b"Method") && name.is_none() => {
                let text = read::text_at(bytes, at)?;
                at = text.end;
                name = Some(text);
            }
            k if is(k, b"Args") && args.is_none() => {
                let end = at + complete_len(&bytes[at..], inner)?;
                args = Some(at..end);
                at = end;
            }
            _ => return None,
        }
    }
    // As the general path: no Args is an empty span where Data ends.
    let args = args.unwrap_or(at..at);
    Some((Data::Call { name: name?, args }, at))
}
