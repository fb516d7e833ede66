//! A store whose files rot: RocksDB's block checksums catch flipped bytes, the scrub finds
//! them in a block no read has asked for yet, and the store notes the first corruption (with
//! the file it is in) for the node to act on (`lockstep-server/src/failstop.rs`).

use std::path::{Path, PathBuf};

use lockstep_store::{Batch, Durability, Error, Family, RocksOptions, RocksStore, Store};

/// Fills `dir` with a store whose Instances family is flushed to an SST file of several data
/// blocks, and returns the keys written: more than `SCRUB_CHUNK` (4,096) of them, so that a
/// scrub asks its pace at least once.
fn written_store(dir: &Path) -> Vec<Vec<u8>> {
    let store = RocksStore::open(dir, &RocksOptions::default()).unwrap();
    let mut batch = Batch::default();
    let mut keys = Vec::new();
    for i in 0..5_000u32 {
        let key = format!("instance-{i:06}").into_bytes();
        // Values that lz4 cannot shrink to nothing, so the file has many 4 KiB blocks.
        let value: Vec<u8> = (0..200u32)
            .map(|j| (i.wrapping_mul(2_654_435_761).wrapping_add(j * 40_503) >> 13) as u8)
            .collect();
        batch.put(Family::Instances, key.clone(), value);
        keys.push(key);
    }
    store.write(batch, Durability::Sync).unwrap();
    // A checkpoint flushes the memtables into SST files.
    let checkpoint = tempfile::tempdir().unwrap();
    store.checkpoint(&checkpoint.path().join("cp")).unwrap();
    keys
}

fn largest_sst(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the flushed store has an SST file")
}

#[test]
fn a_clean_store_scrubs_whole_and_counts_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    written_store(dir.path());
    let store = RocksStore::open(dir.path(), &RocksOptions::default()).unwrap();
    let mut paced = 0;
    let bytes = store
        .scrub(|_| {
            paced += 1;
            true
        })
        .unwrap()
        .expect("a whole pass");
    assert!(bytes >= 5_000 * 200, "{bytes} bytes read");
    assert!(paced >= 1, "the pace is asked between chunks");
    assert_eq!(
        store
            .scrubs()
            .passes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(store.corruption().is_none());
    // A pace that says stop ends the pass early, and it is not counted.
    assert_eq!(store.scrub(|_| false).unwrap(), None);
    assert_eq!(
        store
            .scrubs()
            .passes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn the_scrub_finds_flipped_bytes_in_a_block_no_read_asked_for_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = written_store(dir.path());
    let sst = largest_sst(dir.path());
    let mut bytes = std::fs::read(&sst).unwrap();
    assert!(bytes.len() > 16 << 10, "{} bytes", bytes.len());
    // Inside the first data block (blocks start at offset 0; the index, filter and footer
    // are at the end), so opening the store does not notice.
    for b in &mut bytes[100..116] {
        *b ^= 0xff;
    }
    std::fs::write(&sst, &bytes).unwrap();

    let store = RocksStore::open(dir.path(), &RocksOptions::default()).unwrap();
    // A key in a later block reads fine: nothing is noted yet.
    let last = keys.last().unwrap();
    assert!(store.get(Family::Instances, last).unwrap().is_some());
    assert!(store.corruption().is_none());

    let found = store.scrub(|_| true).unwrap_err();
    assert!(matches!(found, Error::Corruption(_)), "{found:?}");
    let noted = store.corruption().expect("the corruption is noted");
    let file = sst.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        noted.contains(&file) && noted.contains("checksum"),
        "the finding names the file ({file}): {noted}"
    );
    // A read of the bad block is refused too, never answered with the flipped bytes.
    let first = store.get(Family::Instances, &keys[0]).unwrap_err();
    assert!(matches!(first, Error::Corruption(_)), "{first:?}");
}
