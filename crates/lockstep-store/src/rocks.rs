//! The RocksDB store: one database per node, one column family per [`Family`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use crate::{
    Batch, Durability, Entry, EntryVisitor, Error, Family, FamilyEntry, Op, Result, Store,
};

/// Bits per key of the Bloom filters on point-lookup families.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Tuning knobs with documented defaults.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Memtable size per column family, in bytes.
    pub write_buffer_bytes: usize,
    /// Block cache shared by all families, in bytes.
    pub block_cache_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            write_buffer_bytes: 16 << 20,
            block_cache_bytes: 64 << 20,
        }
    }
}

/// What RocksDB estimates about one column family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilySizes {
    /// `rocksdb.total-sst-files-size`: bytes of every SST file, obsolete versions included.
    pub sst_files_bytes: u64,
    /// `rocksdb.estimate-live-data-size`: bytes of live data in SST files.
    pub live_data_bytes: u64,
    /// `rocksdb.size-all-mem-tables`: bytes in active and immutable memtables.
    pub memtables_bytes: u64,
    /// `rocksdb.estimate-num-keys`: estimated number of keys.
    pub keys_estimate: u64,
}

/// Entries the scrub reads between two calls of its pace ([`RocksStore::scrub`]) at most.
pub const SCRUB_CHUNK: u64 = 4_096;
/// Bytes the scrub reads between two calls of its pace at most.
pub const SCRUB_CHUNK_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    /// Writes made with `Durability::Sync` since open: each is one WAL fsync (metrics, bench).
    synced_writes: std::sync::atomic::AtomicU64,
    /// The first corruption any read met (RocksDB's text, naming the file where it can).
    corruption: std::sync::OnceLock<String>,
    /// Passes of [`RocksStore::scrub`] completed, and bytes they read, since open.
    scrubs: ScrubCounters,
}

/// What the scrub did since the store was opened (metrics).
#[derive(Debug, Default)]
pub struct ScrubCounters {
    pub passes: AtomicU64,
    pub bytes: AtomicU64,
    /// When the last pass completed, in seconds since the Unix epoch; 0: none yet.
    pub last_pass_unix_seconds: AtomicU64,
}

impl RocksStore {
    /// Synced writes (WAL fsyncs) since the store was opened.
    pub fn synced_writes(&self) -> u64 {
        self.synced_writes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<RocksStore> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_keep_log_file_num(4);
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let cfs = Family::ALL.iter().map(|f| {
            let mut cf_opts = Options::default();
            cf_opts.set_write_buffer_size(options.write_buffer_bytes);
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            let mut block = rocksdb::BlockBasedOptions::default();
            block.set_block_cache(&cache);
            if *f != Family::RaftLog {
                // Apply and reads look keys up one at a time (instances, dedup entries,
                // definitions, meta): a Bloom filter (10 bits a key, ~1% false positives)
                // answers "not here" for an SST without reading its blocks. The log is read
                // in ranges only. Files written before have none and still read.
                block.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
                block.set_whole_key_filtering(true);
            }
            cf_opts.set_block_based_table_factory(&block);
            ColumnFamilyDescriptor::new(f.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| {
            let text = e.clone().into_string();
            if text.contains("lock") {
                Error::Rocks(format!(
                    "{text}: another lockstepd already uses the data directory {}",
                    path.display()
                ))
            } else if e.kind() == rocksdb::ErrorKind::Corruption {
                Error::Corruption(format!("cannot open RocksDB at {}: {text}", path.display()))
            } else {
                Error::Rocks(format!("cannot open RocksDB at {}: {text}", path.display()))
            }
        })?;
        Ok(RocksStore {
            db,
            path: path.to_path_buf(),
            synced_writes: std::sync::atomic::AtomicU64::new(0),
            corruption: std::sync::OnceLock::new(),
            scrubs: ScrubCounters::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens an existing store (a backup checkpoint, say) for reading only: nothing in `path`
    /// is written, and no lock is taken. Writes through [`Store::write`] fail.
    pub fn open_read_only(path: &Path) -> Result<RocksStore> {
        if !path.join("CURRENT").is_file() {
            return Err(Error::Rocks(format!(
                "{} is not a RocksDB database (no CURRENT file)",
                path.display()
            )));
        }
        let cfs = Family::ALL
            .iter()
            .map(|f| ColumnFamilyDescriptor::new(f.name(), Options::default()));
        // RocksDB's info log goes to the temporary directory, so that `path` (perhaps a
        // read-only mount) is left exactly as it was.
        let mut db_opts = Options::default();
        db_opts.set_db_log_dir(std::env::temp_dir());
        let db = DB::open_cf_descriptors_read_only(&db_opts, path, cfs, false).map_err(|e| {
            Error::Rocks(format!(
                "cannot open RocksDB at {} read-only: {}",
                path.display(),
                e.into_string()
            ))
        })?;
        Ok(RocksStore {
            db,
            path: path.to_path_buf(),
            synced_writes: std::sync::atomic::AtomicU64::new(0),
            corruption: std::sync::OnceLock::new(),
            scrubs: ScrubCounters::default(),
        })
    }

    fn cf(&self, family: Family) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(family.name())
            .expect("every family's column family is created at open")
    }

    /// Sizes of every column family, from RocksDB's own estimates (for metrics). A property
    /// RocksDB cannot answer counts as 0.
    pub fn family_sizes(&self) -> Vec<(Family, FamilySizes)> {
        let int = |family: Family, name: &str| {
            self.db
                .property_int_value_cf(self.cf(family), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        Family::ALL
            .iter()
            .map(|f| {
                let sizes = FamilySizes {
                    sst_files_bytes: int(*f, "rocksdb.total-sst-files-size"),
                    live_data_bytes: int(*f, "rocksdb.estimate-live-data-size"),
                    memtables_bytes: int(*f, "rocksdb.size-all-mem-tables"),
                    keys_estimate: int(*f, "rocksdb.estimate-num-keys"),
                };
                (*f, sizes)
            })
            .collect()
    }

    /// The first corruption a read of this store met (a block checksum mismatch, a damaged
    /// file: RocksDB's text, which names the file where it can), if any. Reads verify block
    /// checksums, so corrupt data is never returned; the caller decides what the node does.
    pub fn corruption(&self) -> Option<&str> {
        self.corruption.get().map(String::as_str)
    }

    /// What [`RocksStore::scrub`] has done since open.
    pub fn scrubs(&self) -> &ScrubCounters {
        &self.scrubs
    }

    /// Turns a RocksDB error into the store's, noting a corruption for [`Self::corruption`].
    fn noted(&self, e: rocksdb::Error) -> Error {
        let error = Error::from(e);
        if let Error::Corruption(text) = &error {
            let _ = self.corruption.set(text.clone());
        }
        error
    }

    /// The scrub: reads every key and value of every family with block checksums verified
    /// and without filling the block cache, calling `pace` with the bytes read so far after
    /// every [`SCRUB_CHUNK`] entries or [`SCRUB_CHUNK_BYTES`], whichever comes first (a caller that sleeps there bounds the scrub's I/O; one
    /// that answers `false` ends the pass early, and `Ok(None)` says so). Returns the bytes
    /// read by a whole pass; the first error ends it (a corruption is also noted for
    /// [`Self::corruption`]).
    pub fn scrub(&self, mut pace: impl FnMut(u64) -> bool) -> Result<Option<u64>> {
        let mut bytes = 0u64;
        let mut entries = 0u64;
        let mut paced = 0u64;
        for family in Family::ALL {
            let mut ro = ReadOptions::default();
            ro.set_verify_checksums(true);
            ro.fill_cache(false);
            for item in self
                .db
                .iterator_cf_opt(self.cf(family), ro, IteratorMode::Start)
            {
                let (k, v) = item.map_err(|e| self.noted(e))?;
                bytes += (k.len() + v.len()) as u64;
                entries += 1;
                // Asked often enough that large values (log entries) cannot make one chunk
                // an unpaced burst, nor keep a stopping node waiting long.
                if entries.is_multiple_of(SCRUB_CHUNK) || bytes >= paced + SCRUB_CHUNK_BYTES {
                    paced = bytes;
                    if !pace(bytes) {
                        return Ok(None);
                    }
                }
            }
        }
        self.scrubs.passes.fetch_add(1, Ordering::Relaxed);
        self.scrubs.bytes.fetch_add(bytes, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.scrubs
            .last_pass_unix_seconds
            .store(now, Ordering::Relaxed);
        Ok(Some(bytes))
    }

    fn read_options(start: &[u8], end: Option<&[u8]>) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        ro
    }
}

impl Store for RocksStore {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(family), key)
            .map_err(|e| self.noted(e))
    }

    fn range(
        &self,
        family: Family,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let iter = self.db.iterator_cf_opt(
            self.cf(family),
            Self::read_options(start, end),
            IteratorMode::From(start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(|e| self.noted(e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, family: Family, start: &[u8], end: Option<&[u8]>) -> Result<Option<Entry>> {
        if end.is_some_and(|e| e <= start) {
            return Ok(None);
        }
        let mut iter = self.db.iterator_cf_opt(
            self.cf(family),
            Self::read_options(start, end),
            IteratorMode::End,
        );
        match iter.next() {
            Some(item) => {
                let (k, v) = item.map_err(|e| self.noted(e))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put { family, key, value } => wb.put_cf(self.cf(*family), key, value),
                Op::Delete { family, key } => wb.delete_cf(self.cf(*family), key),
                Op::DeleteRange { family, start, end } => {
                    if start < end {
                        wb.delete_range_cf(self.cf(*family), start, end)
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durability == Durability::Sync);
        // A write meets a corrupt block too: RocksDB answers every write with the status of a
        // compaction that read one.
        self.db.write_opt(wb, &wo).map_err(|e| self.noted(e))?;
        if durability == Durability::Sync {
            self.synced_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn export(&self, families: &[Family]) -> Result<Vec<FamilyEntry>> {
        let mut out = Vec::new();
        self.export_each(families, &mut |family, k, v| {
            out.push((family, k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    fn export_each(&self, families: &[Family], each: &mut EntryVisitor<'_>) -> Result<()> {
        let snapshot = self.db.snapshot();
        for family in families {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snapshot);
            // A one-off scan of everything: do not evict the hot working set for it.
            ro.fill_cache(false);
            for item in self
                .db
                .iterator_cf_opt(self.cf(*family), ro, IteratorMode::Start)
            {
                let (k, v) = item.map_err(|e| self.noted(e))?;
                each(*family, &k, &v)?;
            }
        }
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        // Synced first, so that the writes before this call are durable even where the
        // checkpoint takes them from the write-ahead log rather than from flushed files.
        self.db.flush_wal(true).map_err(|e| self.noted(e))?;
        self.synced_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Flushes the memtables (synced SST files) and hard-links every live file into `dir`.
        let checkpoint =
            rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| self.noted(e))?;
        checkpoint
            .create_checkpoint(dir)
            .map_err(|e| self.noted(e))?;
        Ok(())
    }

    fn read_checkpoint(dir: &Path, families: &[Family], each: &mut EntryVisitor<'_>) -> Result<()> {
        RocksStore::open_read_only(dir)?.export_each(families, each)
    }

    fn approximate_size_bytes(&self) -> u64 {
        Family::ALL
            .iter()
            .filter_map(|f| {
                self.db
                    .property_int_value_cf(self.cf(*f), "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
            })
            .sum::<u64>()
            + Family::ALL
                .iter()
                .filter_map(|f| {
                    self.db
                        .property_int_value_cf(self.cf(*f), "rocksdb.size-all-mem-tables")
                        .ok()
                        .flatten()
                })
                .sum::<u64>()
    }
}
