//! Snapshot files: the state families streamed to disk, so that a snapshot of any size is
//! built, sent and installed without being held in memory.
//!
//! Format: [`MAGIC`], then one record per entry — family id (`u8`), key length (`u32`, little
//! endian), key, value length (`u32`), value — then [`END`] and the number of records (`u64`).
//! A file that ends early, names a family outside the state, or counts differently is refused.

use std::io::{self, Read, Write};

use lockstep_store::Family;

pub const MAGIC: &[u8; 8] = b"LKSNAP01";
const END: u8 = 0xFF;
/// The largest key or value one record may hold; guards what a damaged file can make a reader
/// allocate.
pub const RECORD_BYTES_MAX: u32 = 256 << 20;

/// Writes records after the magic; [`Writer::finish`] writes the trailer.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    count: u64,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(Writer {
            out,
            count: 0,
            bytes: MAGIC.len() as u64,
        })
    }

    pub fn record(&mut self, family: Family, key: &[u8], value: &[u8]) -> io::Result<()> {
        let len = |b: &[u8]| {
            u32::try_from(b.len())
                .ok()
                .filter(|n| *n <= RECORD_BYTES_MAX)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "a snapshot record of {} bytes exceeds RECORD_BYTES_MAX",
                            b.len()
                        ),
                    )
                })
        };
        let (k, v) = (len(key)?, len(value)?);
        self.out.write_all(&[family.id()])?;
        self.out.write_all(&k.to_le_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&v.to_le_bytes())?;
        self.out.write_all(value)?;
        self.count += 1;
        self.bytes += 9 + u64::from(k) + u64::from(v);
        Ok(())
    }

    /// Writes the trailer; returns the output and the file's size in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(&[END])?;
        self.out.write_all(&self.count.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.bytes + 9))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Calls `each` with every record of a snapshot file, in order; returns the record count.
pub fn read_each(
    mut input: impl Read,
    mut each: impl FnMut(Family, Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<u64> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a Lockstep snapshot file (bad magic)".into()));
    }
    let mut count = 0u64;
    loop {
        let mut id = [0u8; 1];
        input.read_exact(&mut id)?;
        if id[0] == END {
            let mut n = [0u8; 8];
            input.read_exact(&mut n)?;
            let declared = u64::from_le_bytes(n);
            if declared != count {
                return Err(invalid(format!(
                    "snapshot file declares {declared} records but holds {count}"
                )));
            }
            return Ok(count);
        }
        let family = Family::from_id(id[0])
            .filter(|f| Family::STATE.contains(f))
            .ok_or_else(|| invalid(format!("snapshot names unknown family {}", id[0])))?;
        let key = read_sized(&mut input)?;
        let value = read_sized(&mut input)?;
        each(family, key, value)?;
        count += 1;
    }
}

fn read_sized(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut n = [0u8; 4];
    input.read_exact(&mut n)?;
    let n = u32::from_le_bytes(n);
    if n > RECORD_BYTES_MAX {
        return Err(invalid(format!(
            "snapshot record of {n} bytes exceeds RECORD_BYTES_MAX"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.record(Family::Meta, b"applied", b"1").unwrap();
        w.record(Family::Instances, b"i-1", &[7u8; 300]).unwrap();
        let (bytes, size) = w.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        bytes
    }

    #[test]
    fn records_round_trip_in_order() {
        let mut got = Vec::new();
        let n = read_each(&sample()[..], |f, k, v| {
            got.push((f, k, v.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            got,
            [
                (Family::Meta, b"applied".to_vec(), 1),
                (Family::Instances, b"i-1".to_vec(), 300)
            ]
        );
    }

    #[test]
    fn a_truncated_or_foreign_file_is_refused() {
        let bytes = sample();
        for cut in [3, 20, bytes.len() - 1] {
            assert!(
                read_each(&bytes[..cut], |_, _, _| Ok(())).is_err(),
                "cut at {cut}"
            );
        }
        let mut forged = bytes.clone();
        let last = forged.len() - 8;
        forged[last] = 9;
        let err = read_each(&forged[..], |_, _, _| Ok(())).unwrap_err();
        assert!(
            err.to_string().contains("declares 9 records but holds 2"),
            "{err}"
        );
        assert!(read_each(&b"NOTASNAPxxxx"[..], |_, _, _| Ok(())).is_err());
        let mut raft_log = bytes;
        raft_log[8] = Family::RaftLog.id();
        let err = read_each(&raft_log[..], |_, _, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("unknown family"), "{err}");
    }
}
