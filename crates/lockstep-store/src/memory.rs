//! The in-memory store for unit tests: one ordered map per family behind a lock.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use crate::{
    Batch, Durability, Entry, EntryVisitor, Error, Family, FamilyEntry, Op, Result, Store,
};

/// The one file of a [`MemStore`] checkpoint directory.
const CHECKPOINT_FILE: &str = "entries.bincode";

type Maps = BTreeMap<Family, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug, Default)]
pub struct MemStore {
    maps: RwLock<Maps>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

impl Store for MemStore {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read().get(&family).and_then(|m| m.get(key).cloned()))
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
        let maps = self.read();
        let Some(map) = maps.get(&family) else {
            return Ok(Vec::new());
        };
        Ok(map
            .range::<[u8], _>(bounds(start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, family: Family, start: &[u8], end: Option<&[u8]>) -> Result<Option<Entry>> {
        if end.is_some_and(|e| e <= start) {
            return Ok(None);
        }
        let maps = self.read();
        let Some(map) = maps.get(&family) else {
            return Ok(None);
        };
        Ok(map
            .range::<[u8], _>(bounds(start, end))
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: Batch, _durability: Durability) -> Result<()> {
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        for op in batch.ops {
            match op {
                Op::Put { family, key, value } => {
                    maps.entry(family).or_default().insert(key, value);
                }
                Op::Delete { family, key } => {
                    maps.entry(family).or_default().remove(&key);
                }
                Op::DeleteRange { family, start, end } => {
                    let map = maps.entry(family).or_default();
                    if start < end {
                        let doomed: Vec<Vec<u8>> = map
                            .range::<[u8], _>(bounds(&start, Some(&end)))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for key in doomed {
                            map.remove(&key);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn export(&self, families: &[Family]) -> Result<Vec<FamilyEntry>> {
        let maps = self.read();
        let mut out = Vec::new();
        for family in families {
            for (k, v) in maps.get(family).into_iter().flatten() {
                out.push((*family, k.clone(), v.clone()));
            }
        }
        Ok(out)
    }

    fn export_each(&self, families: &[Family], each: &mut EntryVisitor<'_>) -> Result<()> {
        for (family, k, v) in self.export(families)? {
            each(family, &k, &v)?;
        }
        Ok(())
    }

    fn approximate_size_bytes(&self) -> u64 {
        self.read()
            .values()
            .flat_map(|m| m.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        let entries: Vec<(u8, Vec<u8>, Vec<u8>)> = self
            .export(&Family::ALL)?
            .into_iter()
            .map(|(f, k, v)| (f.id(), k, v))
            .collect();
        let bytes = bincode::serialize(&entries).map_err(|e| Error::Invalid(e.to_string()))?;
        let io = |e: std::io::Error| Error::Invalid(format!("checkpoint {}: {e}", dir.display()));
        std::fs::create_dir(dir).map_err(io)?;
        std::fs::write(dir.join(CHECKPOINT_FILE), bytes).map_err(io)
    }

    fn read_checkpoint(
        dir: &std::path::Path,
        families: &[Family],
        each: &mut EntryVisitor<'_>,
    ) -> Result<()> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::Invalid(format!("checkpoint {}: {e}", path.display())))?;
        let entries: Vec<(u8, Vec<u8>, Vec<u8>)> =
            bincode::deserialize(&bytes).map_err(|e| Error::Invalid(e.to_string()))?;
        // Exported in family order then key order; keep the order asked for.
        for family in families {
            for (id, k, v) in &entries {
                if *id == family.id() {
                    each(*family, k, v)?;
                }
            }
        }
        Ok(())
    }
}
