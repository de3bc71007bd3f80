//! Backup and restore of one tenant's data, for `cellstack backup` and `cellstack restore`
//! (docs/durability.md#backup-and-restore).
//!
//! A backup is the cell's export of the tenant (the pages a move copies) written as JSON lines:
//! a [`Header`] first — the tenant, its cell, its data marker, and the count and digest of its
//! data as the cells compute them — then one [`Entry`] per line. The export is taken while the
//! tenant serves, so it is checked against the cell's own count and digest afterwards, and taken
//! again (up to [`EXPORT_ATTEMPTS`] times) while writes keep changing them.
//!
//! A restore imports a file back into the tenant's cell under its data marker (`importing`, the
//! pages, then `activate`), once the cell's count and digest equal the file's: the path out of
//! `DataLost` that keeps the data.

use std::io::{BufRead, Write};

use cellstack_api::admin::{
    Checksum, EMPTY_DIGEST, Entry, TenantRecord, TenantState, Value, entry_digest, fold_digest,
};
use serde::{Deserialize, Serialize};

use crate::cell_admin::CellAdmin;

/// The `format` of a backup file's header.
pub const FORMAT: &str = "cellstack.dev/tenant-backup/v1";
/// Exports of a tenant whose data changes meanwhile before a backup gives up.
pub const EXPORT_ATTEMPTS: u32 = 3;
/// Keys per export page and per import call.
pub const PAGE: usize = 500;

/// The first line of a backup file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub format: String,
    pub tenant: String,
    /// The cell the data was exported from.
    pub cell: String,
    /// The tenant's data marker then (its TenantAssignment's `status.dataMarker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// Count and digest of the data keys (items and counters), as the cell reported them.
    pub checksum: Checksum,
    /// Lines after the header: the data keys and the limiter state.
    pub entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "tenant {tenant}'s data changed during each of {attempts} exports (the last one held {got:?}, \
         the cell then reported {cell:?}): retry when its writes are quieter"
    )]
    Changing {
        tenant: String,
        attempts: u32,
        got: Checksum,
        cell: Checksum,
    },
    #[error("backup file, line {line}: {reason}")]
    Format { line: usize, reason: String },
    #[error(
        "after importing tenant {tenant} into cell {cell}, the cell holds {got:?}, not the file's \
         {want:?}; the tenant stays importing (unserved): restore again from a good file"
    )]
    Mismatch {
        tenant: String,
        cell: String,
        got: Checksum,
        want: Checksum,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Admin(#[from] crate::error::Error),
}

/// Count and digest of the data keys among `entries`, computed as the cells compute them
/// (`cellstack_api::admin::Checksum`): items (`i:`) and counters (`c:`), not limiter state.
pub fn checksum_of(entries: &[Entry]) -> Result<Checksum, String> {
    let mut parts = Vec::new();
    for e in entries {
        if !(e.key.starts_with("i:") || e.key.starts_with("c:")) {
            continue;
        }
        let Value::String { base64 } = &e.value else {
            return Err(format!("data key {} is not a string", e.key));
        };
        let raw = base64_decode(base64).map_err(|why| format!("key {}: {why}", e.key))?;
        parts.push(entry_digest(&e.key, &raw));
    }
    Ok(Checksum {
        keys: parts.len() as u64,
        digest: fold_digest(&parts),
    })
}

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("value is not base64: {e}"))
}

/// Every key of the tenant, exported page by page, and its count and digest: an export that
/// agrees with the cell's own figures afterwards, taken again while it does not.
pub async fn export(
    admin: &CellAdmin,
    tenant: &str,
) -> Result<(Vec<Entry>, Checksum), BackupError> {
    let mut last = None;
    for _ in 0..EXPORT_ATTEMPTS {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = admin.export(tenant, cursor.as_deref(), PAGE).await?;
            entries.extend(page.entries);
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let got = checksum_of(&entries).map_err(|reason| BackupError::Format {
            line: 0,
            reason: format!("the cell exported {reason}"),
        })?;
        let cell = admin.checksum(tenant).await?;
        if got == cell {
            return Ok((entries, got));
        }
        last = Some((got, cell));
    }
    let (got, cell) = last.unwrap_or_else(|| {
        let empty = Checksum {
            keys: 0,
            digest: EMPTY_DIGEST.into(),
        };
        (empty.clone(), empty)
    });
    Err(BackupError::Changing {
        tenant: tenant.to_owned(),
        attempts: EXPORT_ATTEMPTS,
        got,
        cell,
    })
}

/// Writes a backup file: the header line, then one entry per line.
pub fn write(mut out: impl Write, header: &Header, entries: &[Entry]) -> Result<(), BackupError> {
    serde_json::to_writer(&mut out, header).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    for e in entries {
        serde_json::to_writer(&mut out, e).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a backup file, checking its format, its entry count, and that its data's count and
/// digest are the header's (a truncated or edited file is refused).
pub fn read(input: impl BufRead) -> Result<(Header, Vec<Entry>), BackupError> {
    let mut lines = input.lines().enumerate();
    let (_, first) = lines.next().ok_or_else(|| BackupError::Format {
        line: 1,
        reason: "the file is empty".into(),
    })?;
    let header: Header = serde_json::from_str(&first?).map_err(|e| BackupError::Format {
        line: 1,
        reason: format!("not a backup header: {e}"),
    })?;
    if header.format != FORMAT {
        return Err(BackupError::Format {
            line: 1,
            reason: format!("format {:?}, expected {FORMAT:?}", header.format),
        });
    }
    let mut entries = Vec::new();
    for (i, line) in lines {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        entries.push(
            serde_json::from_str::<Entry>(&line).map_err(|e| BackupError::Format {
                line: i + 1,
                reason: format!("not an entry: {e}"),
            })?,
        );
    }
    if entries.len() as u64 != header.entries {
        return Err(BackupError::Format {
            line: entries.len() + 1,
            reason: format!(
                "{} entries, the header says {} (truncated?)",
                entries.len(),
                header.entries
            ),
        });
    }
    let got = checksum_of(&entries).map_err(|reason| BackupError::Format { line: 0, reason })?;
    if got != header.checksum {
        return Err(BackupError::Format {
            line: 0,
            reason: format!(
                "the entries add up to {got:?}, the header says {:?} (edited?)",
                header.checksum
            ),
        });
    }
    Ok((header, entries))
}

/// Imports `entries` into `tenant` in its cell under `marker` at `epoch` (`importing`, the
/// pages, then `activate` once the cell's count and digest are `want`). Returns the cell's
/// figures.
pub async fn restore(
    admin: &CellAdmin,
    tenant: &str,
    epoch: u64,
    marker: &str,
    entries: Vec<Entry>,
    want: &Checksum,
) -> Result<Checksum, BackupError> {
    let record = TenantRecord::new(TenantState::Importing, epoch, Some(marker.to_owned()));
    admin.put(tenant, &record).await?;
    for page in entries.chunks(PAGE) {
        admin.import(tenant, page.to_vec()).await?;
    }
    let got = admin.checksum(tenant).await?;
    if &got != want {
        return Err(BackupError::Mismatch {
            tenant: tenant.to_owned(),
            cell: admin.cell().to_owned(),
            got,
            want: want.clone(),
        });
    }
    admin.activate(tenant, epoch).await?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, raw: &[u8]) -> Entry {
        use base64::Engine as _;
        Entry {
            key: key.into(),
            value: Value::String {
                base64: base64::engine::general_purpose::STANDARD.encode(raw),
            },
            ttl_ms: None,
        }
    }

    fn limiter() -> Entry {
        Entry {
            key: "rl:requests".into(),
            value: Value::Hash {
                fields: vec![("tokens".into(), "MQ==".into())],
            },
            ttl_ms: Some(900),
        }
    }

    #[test]
    fn the_checksum_counts_items_and_counters_as_the_cells_do_and_skips_limiter_state() {
        let entries = vec![item("i:a", b"x"), item("c:n", b"42"), limiter()];
        let sum = checksum_of(&entries).unwrap();
        assert_eq!(sum.keys, 2);
        assert_eq!(
            sum.digest,
            fold_digest([&entry_digest("i:a", b"x"), &entry_digest("c:n", b"42")])
        );
        assert_eq!(checksum_of(&[limiter()]).unwrap().digest, EMPTY_DIGEST);
    }

    fn file(entries: &[Entry]) -> Vec<u8> {
        let header = Header {
            format: FORMAT.into(),
            tenant: "t".into(),
            cell: "alpha".into(),
            marker: Some("00112233445566778899aabbccddeeff".into()),
            checksum: checksum_of(entries).unwrap(),
            entries: entries.len() as u64,
        };
        let mut out = Vec::new();
        write(&mut out, &header, entries).unwrap();
        out
    }

    #[test]
    fn a_written_file_reads_back_the_same() {
        let entries = vec![item("i:a", b"x"), limiter(), item("c:n", b"7")];
        let (header, read_back) = read(file(&entries).as_slice()).unwrap();
        assert_eq!(read_back, entries);
        assert_eq!(header.checksum.keys, 2);
        assert_eq!(header.tenant, "t");
    }

    #[test]
    fn a_truncated_or_edited_file_is_refused_with_the_reason() {
        let entries = vec![item("i:a", b"x"), item("i:b", b"y")];
        let text = String::from_utf8(file(&entries)).unwrap();
        let truncated: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        let err = read(truncated.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        let edited = text.replace(
            &item("i:b", b"y").value_base64(),
            &item("i:b", b"z").value_base64(),
        );
        let err = read(edited.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("edited"), "{err}");

        let err = read("{\"format\":\"other\"}\n".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(
            read("".as_bytes())
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    trait Base64Of {
        fn value_base64(&self) -> String;
    }

    impl Base64Of for Entry {
        fn value_base64(&self) -> String {
            match &self.value {
                Value::String { base64 } => base64.clone(),
                _ => String::new(),
            }
        }
    }
}
