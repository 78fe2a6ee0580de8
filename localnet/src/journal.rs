//! The embedded chain's ledger on disk: every change to the chain (an airdrop, a landed
//! transaction) is appended and synced before the caller is answered, and replayed in order on
//! start, so a crash or `kill -9` loses no payment the chain confirmed.
//!
//! Record: `len: u32 LE`, `kind: u8`, `slot: u64 LE`, then the body (`len` counts kind, slot and
//! body). An airdrop's body is the 32-byte address and the lamports (`u64 LE`); a transaction's is
//! its wire bytes. A torn record at the end (a crash mid-write) is cut off on open.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use solana_pubkey::Pubkey;

const JOURNAL_FILE: &str = "journal.bin";
const KIND_AIRDROP: u8 = 1;
const KIND_TRANSACTION: u8 = 2;
/// Largest record body: a transaction is at most 1,232 bytes.
const MAX_RECORD: u32 = 4096;

/// One change to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Lamports from the faucet.
    Airdrop { to: Pubkey, lamports: u64 },
    /// A landed transaction, as sent.
    Transaction(Vec<u8>),
}

/// The append-only ledger file.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and reads back every whole record, cutting off a
    /// torn one at the end.
    pub(crate) fn open(dir: &Path) -> std::io::Result<(Self, Vec<(u64, Entry)>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut entries = Vec::new();
        let mut good_len = 0u64;
        {
            let mut reader = BufReader::new(&file);
            loop {
                let mut header = [0u8; 4];
                if reader.read_exact(&mut header).is_err() {
                    break;
                }
                let len = u32::from_le_bytes(header);
                if !(9..=MAX_RECORD).contains(&len) {
                    break;
                }
                let mut record = vec![0u8; len as usize];
                if reader.read_exact(&mut record).is_err() {
                    break;
                }
                let slot = u64::from_le_bytes(record[1..9].try_into().unwrap_or_default());
                let body = &record[9..];
                let entry = match record[0] {
                    KIND_AIRDROP if body.len() == 40 => Entry::Airdrop {
                        to: Pubkey::new_from_array(body[..32].try_into().unwrap_or_default()),
                        lamports: u64::from_le_bytes(body[32..].try_into().unwrap_or_default()),
                    },
                    KIND_TRANSACTION => Entry::Transaction(body.to_vec()),
                    _ => break,
                };
                entries.push((slot, entry));
                good_len += 4 + u64::from(len);
            }
        }
        if file.metadata()?.len() > good_len {
            tracing::warn!(path = %path.display(), "cutting a torn record off the chain journal");
            file.set_len(good_len)?;
            file.seek(SeekFrom::End(0))?;
        }
        Ok((Self { file }, entries))
    }

    /// Appends `entry` landed at `slot` and syncs it to disk.
    pub(crate) fn append(&mut self, slot: u64, entry: &Entry) -> std::io::Result<()> {
        let (kind, body) = match entry {
            Entry::Airdrop { to, lamports } => {
                let mut body = to.to_bytes().to_vec();
                body.extend_from_slice(&lamports.to_le_bytes());
                (KIND_AIRDROP, body)
            }
            Entry::Transaction(bytes) => (KIND_TRANSACTION, bytes.clone()),
        };
        let len = u32::try_from(body.len() + 9).unwrap_or(u32::MAX);
        let mut record = Vec::with_capacity(body.len() + 13);
        record.extend_from_slice(&len.to_le_bytes());
        record.push(kind);
        record.extend_from_slice(&slot.to_le_bytes());
        record.extend_from_slice(&body);
        self.file.write_all(&record)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let to = Pubkey::new_unique();
        {
            let (mut journal, entries) = Journal::open(dir.path()).unwrap();
            assert!(entries.is_empty());
            journal
                .append(3, &Entry::Airdrop { to, lamports: 7 })
                .unwrap();
            journal
                .append(4, &Entry::Transaction(vec![1, 2, 3]))
                .unwrap();
        }
        // A crash in the middle of a third record.
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[50, 0, 0, 0, KIND_TRANSACTION, 9]).unwrap();
        drop(file);
        let (mut journal, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            entries,
            [
                (3, Entry::Airdrop { to, lamports: 7 }),
                (4, Entry::Transaction(vec![1, 2, 3]))
            ]
        );
        journal.append(5, &Entry::Transaction(vec![9])).unwrap();
        let (_, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2], (5, Entry::Transaction(vec![9])));
    }
}
