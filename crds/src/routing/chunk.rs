//! Chunks of an encoded routing table, so a table larger than one Kubernetes object (etcd takes
//! about 1.5 MiB) can be published, and the manifest that ties them together.
//!
//! The manifest names the table version, the digest of the whole encoding and the digest and
//! size of every chunk in order. [`reassemble`] refuses a missing, extra, reordered, stale or
//! corrupted chunk; it returns the bytes only when every check passes.

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

/// What a reader needs to reassemble and verify one version of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub table_version: u64,
    /// Encoding format of the reassembled bytes (see [`super::table::FORMAT_VERSION`]).
    pub format: u16,
    pub total_bytes: u64,
    /// Lowercase hex SHA-256 of the whole encoded table.
    pub sha256: String,
    pub chunks: Vec<ChunkDigest>,
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
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Splits `encoded` into chunks of at most `budget` bytes and describes them in a manifest.
/// An empty encoding still yields one (empty) chunk, so every version has at least one object.
pub fn split(
    table_version: u64,
    format: u16,
    encoded: &[u8],
    budget: usize,
) -> Result<(Manifest, Vec<Chunk>), ChunkError> {
    if budget == 0 {
        return Err(ChunkError::ZeroBudget);
    }
    let pieces: Vec<&[u8]> = if encoded.is_empty() {
        vec![&[]]
    } else {
        encoded.chunks(budget).collect()
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

/// Joins `chunks` (in manifest order) back into the encoded table, verifying everything the
/// manifest says.
pub fn reassemble(manifest: &Manifest, chunks: &[Chunk]) -> Result<Vec<u8>, ChunkError> {
    let version = manifest.table_version;
    if chunks.len() != manifest.chunks.len() {
        return Err(ChunkError::Count {
            version,
            expected: manifest.chunks.len(),
            found: chunks.len(),
        });
    }
    let mut out = Vec::with_capacity(manifest.total_bytes.min(1 << 30) as usize);
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
        let (manifest, chunks) = split(5, FORMAT_VERSION, &bytes, 1000).unwrap();
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.data.len() <= 1000));
        assert_eq!(reassemble(&manifest, &chunks).unwrap(), bytes);
        let table = RoutingTable::decode(&reassemble(&manifest, &chunks).unwrap()).unwrap();
        assert_eq!(table.tenants.len(), 2000);
    }

    #[test]
    fn a_missing_chunk_is_refused() {
        let (manifest, mut chunks) = split(5, FORMAT_VERSION, &encoded(500), 300).unwrap();
        chunks.remove(1);
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::Count { .. })
        ));
    }

    #[test]
    fn reordered_chunks_are_refused() {
        let (manifest, mut chunks) = split(5, FORMAT_VERSION, &encoded(500), 300).unwrap();
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
        let (manifest, mut chunks) = split(5, FORMAT_VERSION, &encoded(500), 300).unwrap();
        chunks[2].table_version = 4;
        assert!(matches!(
            reassemble(&manifest, &chunks),
            Err(ChunkError::OutOfPlace { .. })
        ));
    }

    #[test]
    fn empty_input_and_zero_budget() {
        let (manifest, chunks) = split(1, FORMAT_VERSION, &[], 10).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(reassemble(&manifest, &chunks).unwrap(), Vec::<u8>::new());
        assert_eq!(
            split(1, FORMAT_VERSION, &[1], 0),
            Err(ChunkError::ZeroBudget)
        );
    }

    #[test]
    fn manifest_serializes_for_the_pointer_object() {
        let (manifest, _) = split(5, FORMAT_VERSION, b"abc", 2).unwrap();
        let json = serde_json::to_string(&manifest).unwrap();
        assert!(json.contains("\"tableVersion\":5"), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    }

    proptest! {
        /// Flipping any bit of any chunk is detected.
        #[test]
        fn any_corruption_is_detected(budget in 1usize..700, pick in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = encoded(60);
            let (manifest, mut chunks) = split(5, FORMAT_VERSION, &bytes, budget).unwrap();
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
        fn any_budget_round_trips(n in 0usize..300, budget in 1usize..5000) {
            let bytes = encoded(n);
            let (manifest, chunks) = split(5, FORMAT_VERSION, &bytes, budget).unwrap();
            prop_assert!(chunks.iter().all(|c| c.data.len() <= budget));
            prop_assert_eq!(reassemble(&manifest, &chunks).unwrap(), bytes);
        }
    }
}
