//! The ledger's transaction sequences: where a run's start, read from what the store holds.

use switchyard_actors::store::{Store, StoreError};

use super::{decode_batch, TX_PREFIX};

/// Where a run's transaction sequences start: above sled's id counter (what stores written before
/// this counter drew their sequences from) and above every sequence the store holds. The store holds
/// every sequence an earlier run can have left: `recover` has written what only the journal held (a
/// kill -9 leaves journal lines above anything sled wrote) before the server opens its ledger, and
/// what neither holds was never written anywhere, so its id is referenced nowhere.
pub(super) fn first_seq(store: &Store, tree: &sled::Tree) -> Result<u64, StoreError> {
    Ok(store
        .next_id()?
        .max(newest_stored_seq(tree)?.saturating_add(1)))
}

/// The highest sequence of a stored transaction (0 when none): the largest of each account's newest
/// (replay's assumption too: an account's batches are keyed in decision order, and a batch holds its
/// transactions in that order). Two lookups per account, not a scan of the ledger.
pub(super) fn newest_stored_seq(tree: &sled::Tree) -> Result<u64, StoreError> {
    let mut newest = 0;
    let mut from = TX_PREFIX.as_bytes().to_vec();
    while let Some(item) = tree.range(from.as_slice()..).next() {
        let (key, _) = item?;
        let Some(rest) = key.strip_prefix(TX_PREFIX.as_bytes()) else {
            break;
        };
        let Some(end) = rest.iter().position(|b| *b == b'/') else {
            // Not a batch key; step over it.
            from = key.to_vec();
            from.push(0);
            continue;
        };
        let account = &key[..TX_PREFIX.len() + end + 1];
        newest = newest.max(newest_seq_under(tree, account)?);
        // Past every key of this account: its prefix ends in `/`, and `0` follows `/`. Hex digits
        // follow the prefix of an account whose hex this one's is the start of, so none is skipped.
        from = account.to_vec();
        if let Some(last) = from.last_mut() {
            *last = b'/' + 1;
        }
    }
    Ok(newest)
}

/// The sequence of the newest transaction under `prefix` (one account's batches; 0 when none).
pub(super) fn newest_seq_under(tree: &sled::Tree, prefix: &[u8]) -> Result<u64, StoreError> {
    let Some(item) = tree.scan_prefix(prefix).next_back() else {
        return Ok(0);
    };
    let (k, v) = item?;
    let txs = decode_batch(&k, &v)?;
    Ok(txs.iter().filter_map(|t| seq_of(&t.id)).max().unwrap_or(0))
}

/// The sequence in a transaction id (`tx_<ts>_<seq>`).
pub(super) fn seq_of(id: &str) -> Option<u64> {
    id.rsplit('_').next()?.parse().ok()
}
