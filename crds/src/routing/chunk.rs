//! Chunks of an encoded routing table, so a table larger than one Kubernetes object (etcd takes
//! about 1.5 MiB) can be published, and the manifest that ties them together.
//!
//! The manifest names the table version, the digest and size of the whole encoding, how the
//! chunks store it ([`Compression`]) and the digest and size of every chunk in order.
//! [`reassemble`] refuses a missing, extra, reordered, stale or corrupted chunk, and a stored
//! table that does not expand to exactly the encoding the manifest describes; it returns the
//! encoded table only when every check passes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One piece of an encoded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub table_version: u64,
    /// Position in the manifest, from 0.
    pub index: u32,
    pub data: Vec<u8>,
}

/// The digest and size of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkDigest {
    /// Lowercase hex SHA-256 of the chunk's bytes.
    pub sha256: String,
    pub bytes: u64,
}

/// How the chunks, joined, store the encoded table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The encoded table itself. A manifest without a `compression` field means this, so
    /// manifests written this way are the ones readers before compression understood.
    #[default]
    None,
    /// One [zstd](https://facebook.github.io/zstd/) frame of the encoded table: a 1M-tenant
    /// table shrinks 1.8 times with random UUID-shaped ids and about 40 times with sequential
    /// ones (`cargo bench -p cellstack-router --bench table`), and every reader then receives,
    /// and the API server stores and serves, that much less. Readers older than this variant
    /// refuse such a manifest (its chunks do not add up to `totalBytes`) and keep the table
    /// they serve.
    Zstd,
}

impl Compression {
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    /// The name flags and the manifest use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!(
                "unknown routing-table compression {other:?}: use zstd or none"
            )),
        }
    }
}

/// zstd level the chunks are compressed at: zstd's default, which compresses a 1M-tenant
/// table in about half the time compiling and encoding it takes (`router/benches/table.rs`
/// prints both).
const ZSTD_LEVEL: i32 = 3;

/// Largest encoded table a reader expands a compressed table into, whatever its manifest says:
/// a manifest cannot make a reader allocate more than this.
pub const MAX_TABLE_BYTES: u64 = 1 << 30;

/// What a reader needs to reassemble and verify one version of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub table_version: u64,
    /// Encoding format of the reassembled bytes (see [`super::table::FORMAT_VERSION`]).
    pub format: u16,
    /// Size of the whole encoded table (once expanded, when compressed).
    pub total_bytes: u64,
    /// Lowercase hex SHA-256 of the whole encoded table (once expanded, when compressed).
    pub sha256: String,
    /// How the joined chunks store the encoded table.
    #[serde(default, skip_serializing_if = "Compression::is_none")]
    pub compression: Compression,
    pub chunks: Vec<ChunkDigest>,
}

impl Manifest {
    /// Bytes the chunks hold together (what is stored and transferred).
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }
}

/// Why chunks do not make up the table their manifest describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("manifest lists {expected} chunks for table version {version}, got {found}")]
    Count {
        version: u64,
        expected: usize,
        found: usize,
    },
    #[error(
        "chunk at position {position} is chunk #{index} of table version {version}, expected #{position} of version {expected_version}"
    )]
    OutOfPlace {
        position: usize,
        index: u32,
        version: u64,
        expected_version: u64,
    },
    #[error("chunk #{index} of table version {version} is corrupted (digest mismatch)")]
    Corrupted { index: u32, version: u64 },
    #[error("reassembled table version {version} is {found} bytes, manifest says {expected}")]
    Size {
        version: u64,
        expected: u64,
        found: u64,
    },
    #[error("reassembled table version {version} does not match the manifest digest")]
    Digest { version: u64 },
    #[error("chunk budget must be at least 1 byte")]
    ZeroBudget,
    #[error(
        "table version {version} is {bytes} bytes encoded, more than the {MAX_TABLE_BYTES} bytes a reader expands"
    )]
    TooLarge { version: u64, bytes: u64 },
    #[error("the {compression} chunks of table version {version} do not expand: {reason}")]
    Expand {
        version: u64,
        compression: Compression,
        reason: String,
    },
    #[error("table version {version} cannot be compressed with {compression}: {reason}")]
    Compress {
        version: u64,
        compression: Compression,
        reason: String,
    },
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Stores `encoded` as `compression` says, splits what is stored into chunks of at most
/// `budget` bytes and describes them in a manifest. An empty table still yields one chunk, so
/// every version has at least one object.
pub fn split(
    table_version: u64,
    format: u16,
    encoded: &[u8],
    compression: Compression,
    budget: usize,
) -> Result<(Manifest, Vec<Chunk>), ChunkError> {
    if budget == 0 {
        return Err(ChunkError::ZeroBudget);
    }
    if encoded.len() as u64 > MAX_TABLE_BYTES {
        return Err(ChunkError::TooLarge {
            version: table_version,
            bytes: encoded.len() as u64,
        });
    }
    let compressed;
    let stored: &[u8] = match compression {
        Compression::None => encoded,
        Compression::Zstd => {
            compressed =
                zstd::bulk::compress(encoded, ZSTD_LEVEL).map_err(|e| ChunkError::Compress {
                    version: table_version,
                    compression,
                    reason: e.to_string(),
                })?;
            &compressed
        }
    };
    let pieces: Vec<&[u8]> = if stored.is_empty() {
        vec![&[]]
    } else {
        stored.chunks(budget).collect()
    };
    let chunks: Vec<Chunk> = pieces
        .iter()
        .enumerate()
        .map(|(i, data)| Chunk {
            table_version,
            index: i as u32,
            data: data.to_vec(),
        })
        .collect();
    let manifest = Manifest {
        table_version,
        format,
        total_bytes: encoded.len() as u64,
        sha256: sha256_hex(encoded),
        compression,
        chunks: chunks
            .iter()
            .map(|c| ChunkDigest {
                sha256: sha256_hex(&c.data),
                bytes: c.data.len() as u64,
            })
            .collect(),
    };
    Ok((manifest, chunks))
}

/// Joins `chunks` (in manifest order) back into the encoded table, expanded when the manifest
/// says it is compressed, verifying everything the manifest says.
pub fn reassemble(manifest: &Manifest, chunks: &[Chunk]) -> Result<Vec<u8>, ChunkError> {
    let version = manifest.table_version;
    if chunks.len() != manifest.chunks.len() {
        return Err(ChunkError::Count {
            version,
            expected: manifest.chunks.len(),
            found: chunks.len(),
        });
    }
    if manifest.total_bytes > MAX_TABLE_BYTES {
        return Err(ChunkError::TooLarge {
            version,
            bytes: manifest.total_bytes,
        });
    }
    let mut out = Vec::with_capacity(manifest.stored_bytes().min(MAX_TABLE_BYTES) as usize);
    for (position, (chunk, want)) in chunks.iter().zip(&manifest.chunks).enumerate() {
        if chunk.index as usize != position || chunk.table_version != version {
            return Err(ChunkError::OutOfPlace {
                position,
                index: chunk.index,
                version: chunk.table_version,
                expected_version: version,
            });
        }
        if chunk.data.len() as u64 != want.bytes || sha256_hex(&chunk.data) != want.sha256 {
            return Err(ChunkError::Corrupted {
                index: chunk.index,
                version,
            });
        }
        out.extend_from_slice(&chunk.data);
    }
    match manifest.compression {
        Compression::None => {}
        // The manifest's size bounds the expansion: a frame that would expand past it fails
        // here rather than allocating what it asks for.
        compression @ Compression::Zstd => {
            out = zstd::bulk::decompress(&out, manifest.total_bytes as usize).map_err(|e| {
                ChunkError::Expand {
                    version,
                    compression,
                    reason: e.to_string(),
                }
            })?;
        }
    }
    if out.len() as u64 != manifest.total_bytes {
        return Err(ChunkError::Size {
            version,
            expected: manifest.total_bytes,
            found: out.len() as u64,
        });
    }
    if sha256_hex(&out) != manifest.sha256 {
        return Err(ChunkError::Digest { version });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::{FORMAT_VERSION, RoutingTable, fixtures};
    use proptest::prelude::*;

    fn encoded(n: usize) -> Vec<u8> {
        fixtures::table(5, n).encode().unwrap()
    }

    #[test]
    fn chunks_respect_the_budget_and_reassemble() {
        let bytes = encoded(2000);
        let (manifest, chunks) = split(5, FORMAT_VERSION, &bytes, Compression::None, 1000).unwrap();
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.data.len() <= 1000));
        assert_eq!(reassemble(&manifest, &chunks).unwrap(), bytes);
        let table = RoutingTable::decode(&reassemble(&manifest, &chunks).unwrap()).unwrap();
        assert_eq!(table.tenants.len(), 2000);
    }

    #[test]
    fn a_missing_chunk_is_refused() {
        let (manifest, mut chunks) =
            split(5, FORMAT_VERSION, &encoded(500), Compression::None, 300).unwrap();
        chunks.remove(1);
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::Count { .. })
        ));
    }

    #[test]
    fn reordered_chunks_are_refused() {
        let (manifest, mut chunks) =
            split(5, FORMAT_VERSION, &encoded(500), Compression::None, 300).unwrap();
        chunks.swap(0, 1);
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::OutOfPlace {
                position: 0,
                index: 1,
                ..
            })
        ));
        // Even with their indices rewritten to match positions, the digests catch the swap.
        for (i, c) in chunks.iter_mut().enumerate() {
            c.index = i as u32;
        }
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::Corrupted { index: 0, .. })
        ));
    }

    #[test]
    fn a_chunk_of_another_version_is_refused() {
        let (manifest, mut chunks) =
            split(5, FORMAT_VERSION, &encoded(500), Compression::None, 300).unwrap();
        chunks[2].table_version = 4;
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::OutOfPlace { .. })
        ));
    }

    #[test]
    fn empty_input_and_zero_budget() {
        for compression in [Compression::None, Compression::Zstd] {
            let (manifest, chunks) = split(1, FORMAT_VERSION, &[], compression, 10).unwrap();
            assert_eq!(chunks.len(), 1);
            assert_eq!(reassemble(&manifest, &chunks).unwrap(), Vec::<u8>::new());
        }
        assert_eq!(
            split(1, FORMAT_VERSION, &[1], Compression::None, 0),
            Err(ChunkError::ZeroBudget)
        );
    }

    #[test]
    fn manifest_serializes_for_the_pointer_object() {
        let (manifest, _) = split(5, FORMAT_VERSION, b"abc", Compression::None, 2).unwrap();
        let json = serde_json::to_string(&manifest).unwrap();
        assert!(json.contains("\"tableVersion\":5"), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    }

    #[test]
    fn an_uncompressed_manifest_is_the_one_readers_before_compression_wrote() {
        let (manifest, _) = split(5, FORMAT_VERSION, b"abc", Compression::None, 2).unwrap();
        let json = serde_json::to_string(&manifest).unwrap();
        assert!(!json.contains("compression"), "{json}");
        let (zstd, _) = split(5, FORMAT_VERSION, b"abc", Compression::Zstd, 2).unwrap();
        let json = serde_json::to_string(&zstd).unwrap();
        assert!(json.contains("\"compression\":\"zstd\""), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), zstd);
    }

    #[test]
    fn compression_names_parse_back_and_unknown_ones_are_refused() {
        for c in [Compression::None, Compression::Zstd] {
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
        let refused = "gzip".parse::<Compression>().unwrap_err();
        assert!(refused.contains("zstd or none"), "{refused}");
    }

    #[test]
    fn a_compressed_table_is_stored_smaller_and_expands_to_the_same_bytes() {
        let bytes = encoded(20_000);
        let (manifest, chunks) = split(5, FORMAT_VERSION, &bytes, Compression::Zstd, 4096).unwrap();
        assert_eq!(manifest.total_bytes, bytes.len() as u64);
        let stored: usize = chunks.iter().map(|c| c.data.len()).sum();
        assert_eq!(manifest.stored_bytes(), stored as u64);
        assert!(
            stored * 2 < bytes.len(),
            "{stored} bytes stored for {} encoded",
            bytes.len()
        );
        assert_eq!(reassemble(&manifest, &chunks).unwrap(), bytes);
    }

    #[test]
    fn a_compressed_table_that_expands_past_its_manifest_is_refused() {
        let bytes = encoded(500);
        let (mut manifest, chunks) =
            split(5, FORMAT_VERSION, &bytes, Compression::Zstd, 300).unwrap();
        // A manifest claiming fewer bytes than the frame holds: the expansion stops at its size.
        manifest.total_bytes -= 1;
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::Expand { .. })
        ));
        // One claiming more than any reader expands is refused before anything is expanded.
        manifest.total_bytes = MAX_TABLE_BYTES + 1;
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::TooLarge { .. })
        ));
    }

    #[test]
    fn uncompressed_chunks_under_a_compressed_manifest_are_refused() {
        let bytes = encoded(500);
        let (mut manifest, chunks) =
            split(5, FORMAT_VERSION, &bytes, Compression::None, 300).unwrap();
        manifest.compression = Compression::Zstd;
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::Expand { .. })
        ));
    }

    fn compressions() -> impl Strategy<Value = Compression> {
        prop_oneof![Just(Compression::None), Just(Compression::Zstd)]
    }

    proptest! {
        /// Flipping any bit of any chunk is detected.
        #[test]
        fn any_corruption_is_detected(budget in 1usize..700, pick in any::<prop::sample::Index>(), bit in 0u8..8, compression in compressions()) {
            let bytes = encoded(60);
            let (manifest, mut chunks) = split(5, FORMAT_VERSION, &bytes, compression, budget).unwrap();
            prop_assert_eq!(reassemble(&manifest, &chunks).unwrap(), bytes.clone());
            let total: usize = chunks.iter().map(|c| c.data.len()).sum();
            let mut at = pick.index(total);
            for c in &mut chunks {
                if at < c.data.len() {
                    c.data[at] ^= 1 << bit;
                    break;
                }
                at -= c.data.len();
            }
            let corrupted = matches!(reassemble(&manifest, &chunks), Err(ChunkError::Corrupted { .. }));
            prop_assert!(corrupted, "a flipped bit went unnoticed");
        }

        #[test]
        fn any_budget_round_trips(n in 0usize..300, budget in 1usize..5000, compression in compressions()) {
            let bytes = encoded(n);
            let (manifest, chunks) = split(5, FORMAT_VERSION, &bytes, compression, budget).unwrap();
            prop_assert!(chunks.iter().all(|c| c.data.len() <= budget));
            prop_assert_eq!(reassemble(&manifest, &chunks).unwrap(), bytes);
        }
    }
}
