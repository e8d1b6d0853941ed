//! Compressed Kinesis records: a small header of kpl's own, then a zstd frame.
//!
//! ```text
//! offset  size  field
//!  0      4     magic F5 4B 50 5A  ("\xF5KPZ"; 0xF5 never starts valid UTF-8, and it is not
//!               the KPL magic, so KCL / aws-kinesis-agg pass the record through untouched)
//!  4      1     version, 1
//!  5      1     codec: 1 = zstd
//!  6      1     flags, 0 (reserved)
//!  7      4     dictionary id, u32 little-endian; 0 = no dictionary
//! 11      4     length of the uncompressed payload, u32 little-endian
//! 15      ..    one zstd frame with its content checksum
//! ```
//! The uncompressed payload is exactly what the Kinesis record's data would have been without
//! compression: a KPL aggregate, or a lone user record's data.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::aggregate::KinesisRecord;

/// The first four bytes of a compressed record.
pub const FRAME_MAGIC: [u8; 4] = [0xF5, 0x4B, 0x50, 0x5A];
/// The only version so far.
pub const FRAME_VERSION: u8 = 1;
/// Codec byte for zstd.
pub const CODEC_ZSTD: u8 = 1;
/// Bytes before the zstd frame.
pub const HEADER_LEN: usize = 15;

/// The fields of a frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Format version.
    pub version: u8,
    /// Compression codec.
    pub codec: u8,
    /// zstd dictionary id, 0 for none.
    pub dictionary_id: u32,
    /// Length of the payload once decompressed.
    pub uncompressed_len: u32,
}

impl FrameHeader {
    /// Reads a header if `data` starts with the frame magic and a version and codec this
    /// build knows; `None` means "not a compressed record".
    pub fn parse(data: &[u8]) -> Option<FrameHeader> {
        if data.len() < HEADER_LEN || data[..4] != FRAME_MAGIC {
            return None;
        }
        let header = FrameHeader {
            version: data[4],
            codec: data[5],
            dictionary_id: u32::from_le_bytes(data[7..11].try_into().ok()?),
            uncompressed_len: u32::from_le_bytes(data[11..15].try_into().ok()?),
        };
        (header.version == FRAME_VERSION && header.codec == CODEC_ZSTD && data[6] == 0)
            .then_some(header)
    }

    fn write(&self, out: &mut BytesMut) {
        out.put_slice(&FRAME_MAGIC);
        out.put_u8(self.version);
        out.put_u8(self.codec);
        out.put_u8(0);
        out.put_u32_le(self.dictionary_id);
        out.put_u32_le(self.uncompressed_len);
    }
}

/// The first four bytes of a zstd dictionary in zstd's own format (what training makes).
const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xA4, 0x30, 0xEC];

/// A zstd dictionary and the id frames name it by.
///
/// Small records compress poorly one at a time (zstd has nothing to learn from in 200 bytes);
/// a dictionary trained on typical records gives zstd that history up front. Writers and
/// readers must hold the same dictionary: a frame records its id, and a reader without it
/// fails with [`DecodeError::UnknownDictionary`](crate::codec::deaggregate::DecodeError).
#[derive(Clone, PartialEq, Eq)]
pub struct Dictionary {
    id: u32,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &self.id)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Why bytes are not a usable dictionary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DictionaryError {
    /// Not in zstd's dictionary format (a raw-content dictionary needs an explicit id).
    #[error(
        "not a zstd dictionary (no magic 37 A4 30 EC): make one with `kpl dict train`, or give a raw-content dictionary an id with Dictionary::raw"
    )]
    NotADictionary,
    /// Id 0 means "no dictionary" in a frame.
    #[error("dictionary id 0 is reserved for frames without a dictionary: use 1 to 2^32-1")]
    ZeroId,
    /// Training failed (usually: too few or too uniform samples).
    #[error(
        "zstd could not train a dictionary: {0}; give it more samples (a few thousand typical records)"
    )]
    Training(String),
}

impl Dictionary {
    /// A dictionary in zstd's format (as `kpl dict train` writes it); its id is the one zstd
    /// stored in it.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<Dictionary, DictionaryError> {
        let bytes: Arc<[u8]> = bytes.into();
        if bytes.len() < 8 || bytes[..4] != ZSTD_DICT_MAGIC {
            return Err(DictionaryError::NotADictionary);
        }
        let id = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if id == 0 {
            return Err(DictionaryError::ZeroId);
        }
        Ok(Dictionary { id, bytes })
    }

    /// Any bytes as a raw-content dictionary, named `id` in frames.
    pub fn raw(id: u32, bytes: impl Into<Arc<[u8]>>) -> Result<Dictionary, DictionaryError> {
        if id == 0 {
            return Err(DictionaryError::ZeroId);
        }
        Ok(Dictionary {
            id,
            bytes: bytes.into(),
        })
    }

    /// Trains a dictionary of at most `max_size` bytes on sample records.
    pub fn train<S: AsRef<[u8]>>(
        samples: &[S],
        max_size: usize,
    ) -> Result<Dictionary, DictionaryError> {
        let bytes = zstd::dict::from_samples(samples, max_size)
            .map_err(|e| DictionaryError::Training(e.to_string()))?;
        Dictionary::from_bytes(bytes)
    }

    /// The id frames carry.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The dictionary's bytes (what to save and give readers).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Why a compressor could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up zstd: {0}")]
pub struct CompressorError(#[from] std::io::Error);

/// Compresses Kinesis records with zstd into frames, reusing one zstd context.
pub struct Compressor {
    context: zstd::bulk::Compressor<'static>,
    dictionary_id: u32,
}

impl Compressor {
    /// A zstd compressor at `level` (1 to 22).
    pub fn zstd(level: i32) -> Result<Compressor, CompressorError> {
        let mut context = zstd::bulk::Compressor::new(level)?;
        context.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        Ok(Compressor {
            context,
            dictionary_id: 0,
        })
    }

    /// A zstd compressor at `level` that uses `dictionary`, whose id each frame records
    /// (readers must hold the same dictionary).
    pub fn zstd_with_dictionary(
        level: i32,
        dictionary: &Dictionary,
    ) -> Result<Compressor, CompressorError> {
        let mut context = zstd::bulk::Compressor::with_dictionary(level, dictionary.as_bytes())?;
        context.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        Ok(Compressor {
            context,
            dictionary_id: dictionary.id(),
        })
    }

    /// Wraps `record`'s data in a frame when that makes it smaller; otherwise returns it as is.
    pub fn compress(&mut self, mut record: KinesisRecord) -> KinesisRecord {
        if let Some(framed) = self.compress_bytes(&record.data) {
            record.data = framed;
        }
        record
    }

    /// The frame for `payload`, or `None` if it would not be smaller than the payload.
    pub fn compress_bytes(&mut self, payload: &[u8]) -> Option<Bytes> {
        let uncompressed_len = u32::try_from(payload.len()).ok()?;
        let compressed = self.context.compress(payload).ok()?;
        if HEADER_LEN + compressed.len() >= payload.len() {
            return None;
        }
        let mut out = BytesMut::with_capacity(HEADER_LEN + compressed.len());
        FrameHeader {
            version: FRAME_VERSION,
            codec: CODEC_ZSTD,
            dictionary_id: self.dictionary_id,
            uncompressed_len,
        }
        .write(&mut out);
        out.put_slice(&compressed);
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_incompressible_payloads_stay_raw() {
        let mut c = Compressor::zstd(1).unwrap();
        assert!(c.compress_bytes(b"tiny").is_none());
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let noise: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
        assert!(c.compress_bytes(&noise).is_none());
    }

    #[test]
    fn header_round_trips() {
        let mut c = Compressor::zstd(3).unwrap();
        let payload = b"{\"level\":\"info\",\"msg\":\"hello\"}\n".repeat(100);
        let frame = c.compress_bytes(&payload).unwrap();
        let h = FrameHeader::parse(&frame).unwrap();
        assert_eq!(
            h,
            FrameHeader {
                version: 1,
                codec: 1,
                dictionary_id: 0,
                uncompressed_len: payload.len() as u32
            }
        );
        assert!(frame.len() < payload.len() / 5);
        // Unknown version: not ours.
        let mut other = frame.to_vec();
        other[4] = 2;
        assert!(FrameHeader::parse(&other).is_none());
    }
}
