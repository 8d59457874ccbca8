//! How the data directory's records other than a key's versions say their format.
//!
//! A key's record starts with its format byte ([`crate::version`]). The others (the store's
//! identity and run, the hints, a node's ownership record) are bare postcard up to release
//! 0.1.0. From 0.2.0 each may start with [`MAGIC`] and a format byte, so that a later release
//! can change one and still read the old: 0.2.0 reads both forms. It still *writes* the bare
//! form ([`WRITE_MARKED`] is off): a node rolled back to 0.1.0 must read its own data
//! directory, and 0.1.0 would misread a marked record (postcard ignores what follows a value,
//! so `KV...` would read as another identity: a new actor, counters issued again). The next
//! release turns marking on, since 0.2.0, its rollback target, reads it. The magic is ten
//! `0xff` bytes: every one of these records starts with a varint (an integer, or a length),
//! and no varint of postcard is ten `0xff` bytes, so a bare record never starts with the magic
//! and a marked one never reads as bare ([`LEGACY`]).

use serde::{Deserialize, Serialize};

/// The first bytes of a record that says its format: no postcard varint.
pub const MAGIC: [u8; 10] = [0xff; 10];

/// The format of records written before formats were recorded (release 0.1.0).
pub const LEGACY: u8 = 0;

/// Whether records are written marked with their format. Off in 0.2.0: its rollback target,
/// 0.1.0, reads only bare records (see the module's doc).
pub const WRITE_MARKED: bool = false;

/// `value` as this release writes it: [`marked`] with `format` when [`WRITE_MARKED`], else bare
/// postcard (the 0.1.0 form, which every reader of this module also reads).
pub fn encode<T: Serialize>(format: u8, value: &T) -> Vec<u8> {
    if WRITE_MARKED {
        marked(format, value)
    } else {
        // Serialising plain owned data into a Vec cannot fail.
        postcard::to_stdvec(value).unwrap_or_default()
    }
}

/// `value` in `format`: [`MAGIC`], the format byte, then postcard.
pub fn marked<T: Serialize>(format: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(format);
    // Serialising plain owned data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).unwrap_or_default());
    out
}

/// The format `bytes` are in, and their body: ([`LEGACY`], all of them) when they do not start
/// with [`MAGIC`].
pub fn split(bytes: &[u8]) -> (u8, &[u8]) {
    match bytes.strip_prefix(&MAGIC).and_then(<[u8]>::split_first) {
        Some((format, body)) => (*format, body),
        None => (LEGACY, bytes),
    }
}

/// Decodes a record written as `format` by [`encode`], or in the 0.1.0 form (`legacy`, which
/// maps the old shape to the current one). `what` names it in errors.
pub fn decode<T, L>(bytes: &[u8], format: u8, legacy: impl FnOnce(L) -> T, what: &str) -> Result<T, String>
where
    T: for<'a> Deserialize<'a>,
    L: for<'a> Deserialize<'a>,
{
    match split(bytes) {
        (LEGACY, _) => whole::<L>(bytes).map(legacy).map_err(|e| format!("{what}: {e}")),
        (found, body) if found == format => whole::<T>(body).map_err(|e| format!("{what} (format {found}): {e}")),
        (found, _) => Err(format!(
            "{what}: format {found}, which this release does not read (it reads {format}): a later release wrote \
             it (roll forward again, docs/operations.md#upgrading)"
        )),
    }
}

fn whole<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(format!("{} trailing bytes", rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Now {
        a: u64,
        b: String,
    }

    /// 0.2.0 writes bare records (its rollback target reads only those) and reads both forms.
    #[test]
    fn this_release_writes_the_form_the_previous_one_reads() {
        const { assert!(!WRITE_MARKED) };
        let bare = encode(1, &5u64);
        assert_eq!(bare, postcard::to_stdvec(&5u64).unwrap());
        assert_eq!(decode(&bare, 1, |a: u64| a, "t").unwrap(), 5);
    }

    #[test]
    fn a_record_says_its_format_and_the_legacy_form_is_still_read() {
        let now = Now { a: 7, b: "x".into() };
        let bytes = marked(1, &now);
        assert_eq!((&bytes[..10], bytes[10]), (&MAGIC[..], 1));
        assert_eq!(decode(&bytes, 1, |a: u64| Now { a, b: String::new() }, "t").unwrap(), now);
        // 0.1.0 wrote the bare postcard of its shape (here a u64).
        let legacy = postcard::to_stdvec(&9u64).unwrap();
        assert_eq!(
            decode(&legacy, 1, |a: u64| Now { a, b: String::new() }, "t").unwrap(),
            Now { a: 9, b: String::new() }
        );
        // A format this release does not know is refused, never misread.
        let mut future = marked(9, &now);
        future.truncate(12);
        let refused = decode(&future, 1, |a: u64| Now { a, b: String::new() }, "t");
        assert!(refused.is_err_and(|e| e.contains("format 9")), "a future format must be refused");
    }

    /// Every record these formats mark starts with a varint (the identity and run records with
    /// a u64, a hint and the ownership record with a length): the magic is never one, so a
    /// bare record is never taken for a marked one, nor the reverse.
    #[test]
    fn the_magic_is_no_postcard_varint() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend([1, 0, 0, 0]);
        assert!(postcard::take_from_bytes::<u64>(&bytes).is_err());
        assert!(postcard::take_from_bytes::<Vec<u8>>(&bytes).is_err());
        assert!(postcard::take_from_bytes::<Vec<(u64, u64)>>(&bytes).is_err());
    }
}
