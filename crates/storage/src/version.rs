//! The on-disk encoding of a key's sibling set ([`Record`], from `kv-types`).

pub use kv_types::{Record, Version};
use kv_vclock::{Dot, Siblings, VClock};
use serde::{Deserialize, Serialize};

use crate::{Compression, Error, Result};

/// Format byte of records written before versions carried a write id.
const RECORD_V1: u8 = 1;

/// Format byte that starts every record written now: versions carry their write id.
const RECORD_V2: u8 = 2;

/// Values shorter than this are stored as they are: LZ4 rarely shrinks them and the frame
/// header (4 bytes) would eat any gain.
const COMPRESS_MIN_BYTES: usize = 64;

/// Largest value a record may claim to decompress to; guards against a corrupt length field
/// making us allocate gigabytes.
const MAX_DECOMPRESSED_BYTES: usize = 256 * 1024 * 1024;

/// A version as stored: the value possibly compressed.
#[derive(Serialize, Deserialize)]
struct Stored {
    dot: Dot,
    context: VClock,
    /// 0 = raw, 1 = LZ4 with the decompressed size prepended.
    codec: u8,
    value: Vec<u8>,
    content_type: String,
    tombstone: bool,
    written_at: u64,
    write_id: u128,
}

/// A version as [`RECORD_V1`] stored it: no write id.
#[derive(Deserialize)]
struct StoredV1 {
    dot: Dot,
    context: VClock,
    codec: u8,
    value: Vec<u8>,
    content_type: String,
    tombstone: bool,
    written_at: u64,
}

impl From<StoredV1> for Stored {
    fn from(v: StoredV1) -> Stored {
        Stored {
            dot: v.dot,
            context: v.context,
            codec: v.codec,
            value: v.value,
            content_type: v.content_type,
            tombstone: v.tombstone,
            written_at: v.written_at,
            write_id: 0,
        }
    }
}

/// Encodes a record: a format byte, then postcard of its versions.
pub(crate) fn encode(record: &Record, compression: Compression) -> Vec<u8> {
    let stored: Vec<Stored> = record
        .versions()
        .iter()
        .map(|v| {
            let (codec, value) = compress(&v.value, compression);
            Stored {
                dot: v.dot.clone(),
                context: v.context.clone(),
                codec,
                value,
                content_type: v.content_type.clone(),
                tombstone: v.tombstone,
                written_at: v.written_at,
                write_id: v.write_id,
            }
        })
        .collect();
    let mut out = vec![RECORD_V2];
    // Serialising owned plain data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(&stored).unwrap_or_default());
    out
}

/// Decodes [`encode`]'s output.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
    let (&format, body) = bytes.split_first().ok_or_else(|| Error::Corrupt("empty record".into()))?;
    let corrupt = |e: postcard::Error| Error::Corrupt(e.to_string());
    let stored: Vec<Stored> = match format {
        RECORD_V2 => postcard::from_bytes(body).map_err(corrupt)?,
        RECORD_V1 => {
            postcard::from_bytes::<Vec<StoredV1>>(body).map_err(corrupt)?.into_iter().map(Stored::from).collect()
        }
        other => return Err(Error::Corrupt(format!("unknown record format {other}"))),
    };
    let mut versions = Vec::with_capacity(stored.len());
    for s in stored {
        let value = match s.codec {
            0 => s.value,
            1 => decompress(&s.value)?,
            other => return Err(Error::Corrupt(format!("unknown value codec {other}"))),
        };
        versions.push(Version {
            dot: s.dot,
            context: s.context,
            value: value.into(),
            content_type: s.content_type,
            tombstone: s.tombstone,
            written_at: s.written_at,
            write_id: s.write_id,
        });
    }
    Ok(Siblings::from_versions(versions))
}

fn compress(value: &[u8], compression: Compression) -> (u8, Vec<u8>) {
    if compression == Compression::Lz4 && value.len() >= COMPRESS_MIN_BYTES {
        let packed = lz4_flex::compress_prepend_size(value);
        if packed.len() < value.len() {
            return (1, packed);
        }
    }
    (0, value.to_vec())
}

fn decompress(packed: &[u8]) -> Result<Vec<u8>> {
    let size = packed
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| Error::Corrupt("short compressed value".into()))?;
    if size > MAX_DECOMPRESSED_BYTES {
        return Err(Error::Corrupt(format!("compressed value claims {size} bytes")));
    }
    lz4_flex::decompress_size_prepended(packed).map_err(|e| Error::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(value: &[u8]) -> Version {
        Version {
            dot: Dot { node: "n1".into(), counter: 1, timestamp: 7 },
            context: VClock::new(),
            value: value.to_vec().into(),
            content_type: "text/plain".into(),
            tombstone: false,
            written_at: 7,
            write_id: 42,
        }
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        let record = Siblings::from_versions([version(&[b'a'; 1000])]);
        for compression in [Compression::None, Compression::Lz4] {
            let bytes = encode(&record, compression);
            assert_eq!(decode(&bytes).unwrap(), record);
            if compression == Compression::Lz4 {
                assert!(bytes.len() < 200, "{} bytes", bytes.len());
            }
        }
    }

    #[test]
    fn version_1_records_still_decode_without_a_write_id() {
        let v = version(b"old");
        let old = vec![StoredV1Encode {
            dot: v.dot.clone(),
            context: v.context.clone(),
            codec: 0,
            value: v.value.to_vec(),
            content_type: v.content_type.clone(),
            tombstone: false,
            written_at: 7,
        }];
        let mut bytes = vec![RECORD_V1];
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        let record = decode(&bytes).unwrap();
        assert_eq!(record.versions(), &[Version { write_id: 0, ..v }]);
    }

    #[derive(Serialize)]
    struct StoredV1Encode {
        dot: Dot,
        context: VClock,
        codec: u8,
        value: Vec<u8>,
        content_type: String,
        tombstone: bool,
        written_at: u64,
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 1, 2]).is_err());
        assert!(decode(&[RECORD_V1, 0xff, 0xff]).is_err());
        assert!(decode(&[RECORD_V2, 0xff, 0xff]).is_err());
        let mut bytes = encode(&Siblings::from_versions([version(&[b'x'; 500])]), Compression::Lz4);
        let len = bytes.len();
        bytes[len - 3] ^= 0xff;
        let _ = decode(&bytes);
    }
}
