//! Binary encoding of the records [`RedbStore`](crate::RedbStore) keeps on
//! disk. All integers are little-endian; every record starts with a format
//! byte so the layout can evolve.
//!
//! * key-value record (table `kv`, keyed by the key):
//!   `[format=1] [create_revision u64] [mod_revision u64] [version u64] [value ..]`
//! * event record (table `events`, keyed by `(revision, index in txn)`):
//!   `[format=1] [kind u8: 0 put, 1 delete] [create_revision u64]
//!   [mod_revision u64] [version u64] [key length u32] [key utf-8 ..] [value ..]`
//!
//! Decoding never panics: malformed input is a [`StoreError::Corrupt`]
//! naming the record.

use crate::{Event, EventKind, KeyValue, StoreError};

const FORMAT: u8 = 1;
const KV_HEADER: usize = 1 + 3 * 8;
const EVENT_HEADER: usize = 1 + 1 + 3 * 8 + 4;

/// Encodes the stored part of `kv` (everything but the key).
pub(crate) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(KV_HEADER + kv.value.len());
    out.push(FORMAT);
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes a record written by [`encode_kv`] for `key`.
pub(crate) fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    decode_kv_with(key, bytes, true)
}

/// [`decode_kv`] leaving the value out (empty).
pub(crate) fn decode_kv_header(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    decode_kv_with(key, bytes, false)
}

fn decode_kv_with(key: &str, bytes: &[u8], with_value: bool) -> Result<KeyValue, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { key: key.to_owned(), reason };
    let mut reader = Reader::new(bytes);
    let format = reader.u8().ok_or_else(|| corrupt("empty record".into()))?;
    if format != FORMAT {
        return Err(corrupt(format!("unknown record format {format}")));
    }
    let (Some(create_revision), Some(mod_revision), Some(version)) = (reader.u64(), reader.u64(), reader.u64()) else {
        return Err(corrupt(format!("record of {} bytes is truncated", bytes.len())));
    };
    let value = if with_value { reader.rest().to_vec() } else { Vec::new() };
    Ok(KeyValue { key: key.to_owned(), value, create_revision, mod_revision, version })
}

/// Encodes `event` (its revision is the table key).
pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    let kv = &event.kv;
    let mut out = Vec::with_capacity(EVENT_HEADER + kv.key.len() + kv.value.len());
    out.push(FORMAT);
    out.push(match event.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    // Keys longer than 4 GiB cannot be stored by redb in the first place.
    let key_len = u32::try_from(kv.key.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(kv.key.as_bytes());
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes an event written by [`encode_event`] at `(revision, index)`.
pub(crate) fn decode_event(revision: u64, index: u32, bytes: &[u8]) -> Result<Event, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { key: format!("events/{revision}/{index}"), reason };
    let mut reader = Reader::new(bytes);
    let format = reader.u8().ok_or_else(|| corrupt("empty record".into()))?;
    if format != FORMAT {
        return Err(corrupt(format!("unknown record format {format}")));
    }
    let kind = match reader.u8() {
        Some(0) => EventKind::Put,
        Some(1) => EventKind::Delete,
        Some(other) => return Err(corrupt(format!("unknown event kind {other}"))),
        None => return Err(corrupt("record is truncated".into())),
    };
    let (Some(create_revision), Some(mod_revision), Some(version), Some(key_len)) =
        (reader.u64(), reader.u64(), reader.u64(), reader.u32())
    else {
        return Err(corrupt(format!("record of {} bytes is truncated", bytes.len())));
    };
    let key = reader.take(key_len as usize).ok_or_else(|| corrupt(format!("key of {key_len} bytes is truncated")))?;
    let key = std::str::from_utf8(key).map_err(|e| corrupt(format!("key is not UTF-8: {e}")))?;
    Ok(Event {
        revision,
        kind,
        kv: KeyValue { key: key.to_owned(), value: reader.rest().to_vec(), create_revision, mod_revision, version },
    })
}

/// Reads the key of an encoded event without decoding the rest, for
/// filtering by prefix. `None` if the record is too short (the full decode
/// then reports why).
pub(crate) fn event_key(bytes: &[u8]) -> Option<&[u8]> {
    let mut reader = Reader::new(bytes);
    reader.take(EVENT_HEADER - 4)?;
    let key_len = reader.u32()?;
    reader.take(key_len as usize)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }

    fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv_strategy() -> impl Strategy<Value = KeyValue> {
        ("[a-z/é]{1,12}", proptest::collection::vec(any::<u8>(), 0..64), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(key, value, create_revision, mod_revision, version)| KeyValue {
                key,
                value,
                create_revision,
                mod_revision,
                version,
            },
        )
    }

    proptest! {
        #[test]
        fn a_key_value_record_decodes_to_what_was_encoded(kv in kv_strategy()) {
            prop_assert_eq!(decode_kv(&kv.key, &encode_kv(&kv)).unwrap(), kv);
        }

        #[test]
        fn an_event_record_decodes_to_what_was_encoded(kv in kv_strategy(), put in any::<bool>(), index in any::<u32>()) {
            let event = Event { revision: kv.mod_revision, kind: if put { EventKind::Put } else { EventKind::Delete }, kv };
            let bytes = encode_event(&event);
            prop_assert_eq!(event_key(&bytes), Some(event.kv.key.as_bytes()));
            prop_assert_eq!(decode_event(event.revision, index, &bytes).unwrap(), event);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_kv("k", &bytes);
            let _ = decode_event(1, 0, &bytes);
            let _ = event_key(&bytes);
        }
    }

    #[test]
    fn a_truncated_record_is_reported_as_corrupt_with_its_key() {
        let kv = KeyValue { key: "a".into(), value: b"v".to_vec(), create_revision: 1, mod_revision: 2, version: 2 };
        let bytes = encode_kv(&kv);
        let err = decode_kv("a", &bytes[..10]).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "a"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn an_unknown_format_is_reported_as_corrupt() {
        let err = decode_kv("a", &[9; KV_HEADER]).unwrap_err();
        assert!(err.to_string().contains("unknown record format 9"), "{err}");
    }
}
