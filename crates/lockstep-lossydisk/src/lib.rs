//! `LossyDisk`: a FUSE pass-through filesystem that simulates a power cut by
//! losing every file write that was not fsynced.
//!
//! # The model (a disk with a volatile write cache)
//!
//! * **File data is volatile.** `write`, `truncate`/`ftruncate` (setattr of the
//!   size) and size-changing `fallocate` are *not* applied to the backing
//!   directory. They are kept in memory as an ordered list of operations per
//!   inode. Reads and `stat` see the volatile state exactly: the backing
//!   content with the pending operations applied in order.
//! * **`fsync`/`fdatasync` make one file durable**: the inode's pending
//!   operations are applied to the backing file in order, the backing file is
//!   `sync_all`ed and the list is dropped. Writes through an `O_SYNC`/`O_DSYNC`
//!   descriptor are durable too (the kernel follows each with a FUSE fsync).
//! * **Metadata is durable at once** (a simplification): create, mknod, mkdir,
//!   rmdir, unlink, rename, link, symlink, chmod/chown/utimes are applied to
//!   the backing directory immediately and survive a power cut, so e.g. a
//!   file created but never fsynced comes back *empty* (its name survives, its
//!   data does not), and `fsync` of a directory is a no-op. The model does not
//!   reorder or lose metadata operations, and never tears a single write.
//! * **Not durability points**: `sync(1)`/`syncfs(2)` and `sync_file_range`
//!   (the kernel sends FUSE no per-file fsync for them, so unlike on a real
//!   disk `sync` saves nothing here), and `close`.
//! * **The power cut** ([`LossyDisk::power_cut`]) drops every pending
//!   operation, refuses all further requests, aborts the FUSE connection and
//!   detaches the mount. Processes still using it get `ECONNABORTED`/`ENOTCONN`
//!   (reads of pages the kernel still caches may succeed), so kill them first.
//!   Afterwards the backing directory holds exactly the durable state.
//!
//! # Implementation notes
//!
//! * FUSE inode numbers are the backing files' `st_ino` (the mount root is
//!   swapped with inode 1), so hard links share one inode and therefore one
//!   pending-operation list. `backing` must not contain other mount points.
//! * An inode → known backing paths map is kept up to date by lookup, create,
//!   link, rename and unlink.
//! * Pending data lives in memory; it is capped at [`MAX_PENDING_BYTES`], beyond
//!   which writes fail with `ENOSPC`. Adjacent appends are coalesced, so a
//!   file written sequentially costs one buffer.
//! * No FUSE writeback cache and no `FOPEN_KEEP_CACHE`, so the kernel never
//!   holds written data the daemon does not know about. POSIX/flock locks are
//!   left to the kernel (handled locally). `fallocate` supports mode 0
//!   (extends the size with zeros, volatile), `FALLOC_FL_KEEP_SIZE`
//!   (preallocation: no visible change, accepted as a no-op) and
//!   `KEEP_SIZE|PUNCH_HOLE` (a volatile write of zeros); other modes get
//!   `EOPNOTSUPP`. `O_DIRECT` works (the kernel forwards such I/O to us) but is
//!   not "more durable" than buffered I/O: only fsync is.
//! * Writes do not touch the backing file, so its mtime/ctime move only at
//!   fsync. Only the mounting user (root, in our tests) may use the mount:
//!   no `allow_other`, hence no `/etc/fuse.conf` change is needed.
//! * One dispatch thread and one `Mutex` around all state: requests are
//!   serialized, which is simple and correct, not fast.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session,
    TimeOrNow, WriteFlags,
};

/// Upper bound on pending (not yet fsynced) write bytes held in memory.
pub const MAX_PENDING_BYTES: u64 = 1 << 30;

/// Attribute and entry cache lifetime given to the kernel. All changes go
/// through this mount, so the kernel's caches stay coherent; keep it short
/// anyway.
const TTL: Duration = Duration::from_secs(1);

type Res<T> = Result<T, Errno>;

/// How a failing disk answers writes ([`LossyDisk::fail_writes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFault {
    /// `ENOSPC`: the disk is full.
    Full,
    /// `EIO`: the disk is dying.
    Failing,
}

impl DiskFault {
    pub fn errno(self) -> i32 {
        match self {
            DiskFault::Full => libc::ENOSPC,
            DiskFault::Failing => libc::EIO,
        }
    }
}

/// A directory `backing` seen through a FUSE mount at `mountpoint`, where
/// file data reaches `backing` only when the file is fsynced/fdatasynced.
///
/// Dropping it is the same as [`LossyDisk::power_cut`] with errors ignored:
/// nothing that was not fsynced is flushed.
pub struct LossyDisk {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    /// `st_dev` of the mounted filesystem (names its fusectl connection).
    dev: u64,
    /// The FUSE dispatch thread; `None` once unmounted.
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl LossyDisk {
    /// Mounts a lossy view of `backing` (an existing directory) at
    /// `mountpoint` (an existing empty directory); returns once the mount is
    /// usable.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LossyDisk> {
        let root = backing.canonicalize()?;
        // A process that died without unmounting leaves a dead FUSE mount
        // ("Transport endpoint is not connected"): clear it first.
        if fs::metadata(mountpoint)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
        {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        let mountpoint = mountpoint.canonicalize()?;
        let root_md = fs::metadata(&root)?;
        if !root_md.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "backing is not a directory",
            ));
        }
        let state = Arc::new(Mutex::new(State {
            root,
            root_ino: root_md.ino(),
            names: HashMap::new(),
            pending: HashMap::new(),
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            unsynced: 0,
            dead: false,
            fail: None,
            free_bytes: None,
        }));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lossyfs".into()),
            MountOption::Subtype("lossyfs".into()),
            MountOption::DefaultPermissions,
        ];
        // Session::new mounts and completes the INIT handshake.
        let session = Session::new(LossyFs(state.clone()), &mountpoint, &config)?;
        let thread = std::thread::Builder::new()
            .name("lossyfs".into())
            .spawn(move || session.run())?;
        let mut disk = LossyDisk {
            state,
            mountpoint,
            dev: 0,
            thread: Some(thread),
        };
        // A stat through the mount proves the dispatch loop answers (on
        // error, dropping `disk` unmounts again).
        disk.dev = fs::metadata(&disk.mountpoint)?.dev();
        Ok(disk)
    }

    /// The power cut: every file write and truncation not yet made durable by
    /// fsync/fdatasync of that file is discarded, the FUSE connection is
    /// aborted and the mount detached, even if files are still open (the
    /// processes using it should be killed first; survivors get I/O errors).
    /// Afterwards `mountpoint` is an empty directory again and
    /// `backing` holds exactly the durable state; call [`LossyDisk::mount`]
    /// again to "boot" the machine.
    pub fn power_cut(mut self) -> io::Result<()> {
        self.cut()
    }

    /// Makes the disk fail (`Some(fault)`) or work again (`None`): while it
    /// fails, every data write, truncation, allocation and fsync answers the
    /// fault's errno and changes nothing (pending writes stay pending); reads,
    /// lookups and metadata changes keep working.
    pub fn fail_writes(&self, fault: Option<DiskFault>) {
        lock(&self.state).fail = fault.map(DiskFault::errno);
    }

    /// Makes `statfs` (`df`, `statvfs(3)`) report this many bytes free and
    /// available (`Some`), or the backing file system's figures again (`None`):
    /// a disk that looks nearly full to the programs using it, without filling
    /// one. Writes are not limited by it.
    pub fn report_free_bytes(&self, free: Option<u64>) {
        lock(&self.state).free_bytes = free;
    }

    /// Bytes of file data written but not yet durable (overwrites of the same
    /// range count each time).
    pub fn unsynced_bytes(&self) -> u64 {
        lock(&self.state).unsynced
    }

    fn cut(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        {
            // Taking the lock waits for the request in progress; from now on
            // every request fails and nothing reaches the backing directory.
            let mut s = lock(&self.state);
            s.dead = true;
            s.pending.clear();
            s.files.clear();
            s.dirs.clear();
            s.unsynced = 0;
        }
        // MNT_FORCE makes FUSE abort the connection (pending and future
        // requests fail with ENOTCONN, the dispatch loop ends); MNT_DETACH
        // unmounts even if files are still open.
        let flags = nix::mount::MntFlags::MNT_FORCE | nix::mount::MntFlags::MNT_DETACH;
        if let Err(errno) = nix::mount::umount2(&self.mountpoint, flags) {
            let err = io::Error::from_raw_os_error(errno as i32);
            match err.raw_os_error() {
                Some(libc::EPERM) => {
                    // Not root: fusermount can only detach. Abort through
                    // fusectl if it is mounted, else the loop ends when the
                    // last user closes its files.
                    let st = std::process::Command::new("fusermount3")
                        .args(["-u", "-z", "--"])
                        .arg(&self.mountpoint)
                        .status()?;
                    if !st.success() {
                        return Err(io::Error::other(format!("fusermount3 -u failed: {st}")));
                    }
                    let abort = format!("/sys/fs/fuse/connections/{}/abort", libc::minor(self.dev));
                    let _ = fs::write(abort, "1");
                }
                Some(libc::EINVAL) => {} // already unmounted by someone else
                _ => return Err(err),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            // The loop ends with an error once the device is gone; ignore it.
            let _ = thread.join();
        } else {
            // Left running: it answers EIO until the last user goes away.
            eprintln!(
                "lossyfs: {} still busy, detached",
                self.mountpoint.display()
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for LossyDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyDisk")
            .field("mountpoint", &self.mountpoint)
            .field("unsynced_bytes", &self.unsynced_bytes())
            .finish()
    }
}

impl Drop for LossyDisk {
    fn drop(&mut self) {
        let _ = self.cut();
    }
}

/// One volatile modification of a file's data.
enum Op {
    Write(u64, Vec<u8>),
    /// Set the length (shrinks, or extends with zeros).
    Truncate(u64),
}

/// The volatile state of one inode: ops not yet applied to the backing file.
struct Pending {
    /// File length with the ops applied.
    len: u64,
    ops: Vec<Op>,
}

impl Pending {
    fn bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| {
                if let Op::Write(_, d) = op {
                    d.len() as u64
                } else {
                    0
                }
            })
            .sum()
    }

    /// Applies the ops to `buf`, which holds the backing bytes at `off..`
    /// (zeros past the backing EOF).
    fn overlay(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        for op in &self.ops {
            match op {
                Op::Write(o, d) => {
                    let (s, e) = ((*o).max(off), (o + d.len() as u64).min(end));
                    if s < e {
                        buf[(s - off) as usize..(e - off) as usize]
                            .copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
                    }
                }
                Op::Truncate(t) if *t < end => buf[((*t).max(off) - off) as usize..].fill(0),
                Op::Truncate(_) => {}
            }
        }
    }
}

struct State {
    /// The backing directory (canonical).
    root: PathBuf,
    root_ino: u64,
    /// FUSE ino → backing paths known to name it (first one is used).
    names: HashMap<u64, Vec<PathBuf>>,
    pending: HashMap<u64, Pending>,
    /// Open file handles: fh → (ino, backing file).
    files: HashMap<u64, (u64, File)>,
    /// Open directory handles: fh → listing snapshot taken at opendir.
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    unsynced: u64,
    /// Set by the power cut: every request fails from then on.
    dead: bool,
    /// A failing disk ([`LossyDisk::fail_writes`]): every data write, truncation,
    /// allocation and fsync fails with this errno until cleared.
    fail: Option<i32>,
    /// Bytes `statfs` reports free and available instead of the backing file
    /// system's ([`LossyDisk::report_free_bytes`]).
    free_bytes: Option<u64>,
}

impl State {
    /// Backing `st_ino` → FUSE ino: the root becomes 1 (and 1 takes the
    /// root's number, so the mapping stays one-to-one).
    fn fuse_ino(&self, ino: u64) -> u64 {
        match ino {
            i if i == self.root_ino => 1,
            1 => self.root_ino,
            i => i,
        }
    }

    fn path(&self, ino: u64) -> Res<PathBuf> {
        if ino == 1 {
            return Ok(self.root.clone());
        }
        self.names
            .get(&ino)
            .and_then(|v| v.first())
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    fn add_name(&mut self, ino: u64, path: PathBuf) {
        let v = self.names.entry(ino).or_default();
        if !v.contains(&path) {
            v.push(path);
        }
    }

    fn remove_name(&mut self, ino: u64, path: &Path) {
        if let Some(v) = self.names.get_mut(&ino) {
            v.retain(|p| p != path);
            if v.is_empty() {
                self.names.remove(&ino);
            }
        }
    }

    /// Drops the pending ops of an inode that has no links left and no open
    /// handles (its data can never be reached again).
    fn drop_if_gone(&mut self, ino: u64, nlink: u64) {
        if nlink == 0
            && !self.files.values().any(|(i, _)| *i == ino)
            && let Some(p) = self.pending.remove(&ino)
        {
            self.unsynced -= p.bytes();
        }
    }

    fn attr(&self, md: &fs::Metadata) -> FileAttr {
        let ino = self.fuse_ino(md.ino());
        let (size, blocks) = match self.pending.get(&ino) {
            Some(p) => (p.len, p.len.div_ceil(512)),
            None => (md.size(), md.blocks()),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
            flags: 0,
        }
    }

    /// Metadata of an inode: by path, or through an open handle if it has no
    /// known name (e.g. unlinked while open).
    fn metadata(&self, ino: u64, fh: Option<u64>) -> Res<fs::Metadata> {
        if let Ok(p) = self.path(ino) {
            return Ok(fs::symlink_metadata(p)?);
        }
        let file = fh
            .and_then(|fh| self.files.get(&fh))
            .or_else(|| self.files.values().find(|(i, _)| *i == ino))
            .ok_or(Errno::ENOENT)?;
        Ok(file.1.metadata()?)
    }

    /// Looks up `path` after a successful lookup/create and records its name.
    fn entry(&mut self, path: PathBuf) -> Res<FileAttr> {
        let md = fs::symlink_metadata(&path)?;
        let attr = self.attr(&md);
        self.add_name(attr.ino.0, path);
        Ok(attr)
    }

    /// A freshly created inode number may be a recycled one: forget stale state.
    fn created(&mut self, path: PathBuf, req: &Request) -> Res<FileAttr> {
        let _ = std::os::unix::fs::lchown(&path, Some(req.uid()), Some(req.gid()));
        let ino = self.fuse_ino(fs::symlink_metadata(&path)?.ino());
        self.names.remove(&ino);
        self.drop_if_gone(ino, 0);
        self.entry(path)
    }

    /// The pending-op list of `ino`, created from the backing length if absent.
    fn pending_mut(&mut self, ino: u64, fh: Option<u64>) -> Res<&mut Pending> {
        if !self.pending.contains_key(&ino) {
            let len = self.metadata(ino, fh)?.size();
            self.pending.insert(
                ino,
                Pending {
                    len,
                    ops: Vec::new(),
                },
            );
        }
        Ok(self.pending.get_mut(&ino).unwrap())
    }

    fn volatile_len(&self, ino: u64, fh: Option<u64>) -> Res<u64> {
        match self.pending.get(&ino) {
            Some(p) => Ok(p.len),
            None => Ok(self.metadata(ino, fh)?.size()),
        }
    }

    /// The failing disk's answer to a data operation, if it fails.
    fn failing(&self) -> Res<()> {
        self.fail.map_or(Ok(()), |e| Err(Errno::from_i32(e)))
    }

    fn write(&mut self, ino: u64, fh: u64, off: u64, data: &[u8]) -> Res<()> {
        self.failing()?;
        if self.unsynced + data.len() as u64 > MAX_PENDING_BYTES {
            return Err(Errno::ENOSPC);
        }
        let p = self.pending_mut(ino, Some(fh))?;
        p.len = p.len.max(off + data.len() as u64);
        match p.ops.last_mut() {
            // Coalesce sequential writes (appends) into one buffer.
            Some(Op::Write(o, d)) if *o + d.len() as u64 == off => d.extend_from_slice(data),
            _ => p.ops.push(Op::Write(off, data.to_vec())),
        }
        self.unsynced += data.len() as u64;
        Ok(())
    }

    fn truncate(&mut self, ino: u64, fh: Option<u64>, len: u64) -> Res<()> {
        self.failing()?;
        if !self.pending.contains_key(&ino) && self.metadata(ino, fh)?.size() == len {
            return Ok(()); // no change (RocksDB ftruncates to the size on close)
        }
        let p = self.pending_mut(ino, fh)?;
        p.ops.push(Op::Truncate(len));
        p.len = len;
        Ok(())
    }

    fn read(&self, ino: u64, fh: u64, off: u64, size: u32) -> Res<Vec<u8>> {
        let file = &self.files.get(&fh).ok_or(Errno::EBADF)?.1;
        let len = self.volatile_len(ino, Some(fh))?;
        let n = len.saturating_sub(off).min(size as u64) as usize;
        let mut buf = vec![0; n];
        let mut done = 0;
        while done < n {
            match file.read_at(&mut buf[done..], off + done as u64)? {
                0 => break, // past the backing EOF: zeros
                k => done += k,
            }
        }
        if let Some(p) = self.pending.get(&ino) {
            p.overlay(off, &mut buf);
        }
        Ok(buf)
    }

    /// Makes `ino` durable: applies its ops to the backing file and syncs it.
    fn fsync(&mut self, ino: u64, fh: u64) -> Res<()> {
        self.failing()?;
        let file = &self.files.get(&fh).ok_or(Errno::EBADF)?.1;
        let Some(p) = self.pending.remove(&ino) else {
            return Ok(());
        };
        self.unsynced -= p.bytes();
        // An error part-way leaves the file half-updated, like a failing disk.
        for op in &p.ops {
            match op {
                Op::Write(o, d) => file.write_all_at(d, *o)?,
                Op::Truncate(t) => file.set_len(*t)?,
            }
        }
        Ok(file.sync_all()?)
    }

    fn open_file(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, (ino, file));
        fh
    }

    fn rename(&mut self, from: PathBuf, to: PathBuf, flags: RenameFlags) -> Res<()> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let src = self.fuse_ino(fs::symlink_metadata(&from)?.ino());
        let target = fs::symlink_metadata(&to).ok();
        // Requests are serialized, so "no replace" is a check before the rename.
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && target.is_some() {
            return Err(Errno::EEXIST);
        }
        fs::rename(&from, &to)?;
        if let Some(md) = target {
            let tino = self.fuse_ino(md.ino());
            if tino == src {
                return Ok(()); // two links to one inode: rename does nothing
            }
            self.remove_name(tino, &to);
            self.drop_if_gone(tino, if md.is_dir() { 0 } else { md.nlink() - 1 });
        }
        // Move `from` and everything below it (a directory) to `to`.
        for p in self.names.values_mut().flatten() {
            if let Ok(rest) = p.strip_prefix(&from) {
                *p = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
        Ok(())
    }

    fn opendir(&mut self, ino: u64) -> Res<u64> {
        let mut list = vec![(ino, FileType::Directory, ".".into())];
        list.push((ino, FileType::Directory, "..".into()));
        for e in fs::read_dir(self.path(ino)?)? {
            let e = e?;
            let kind = FileType::from_std(e.file_type()?).unwrap_or(FileType::RegularFile);
            list.push((
                self.fuse_ino(std::os::unix::fs::DirEntryExt::ino(&e)),
                kind,
                e.file_name(),
            ));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, list);
        Ok(fh)
    }

    fn fallocate(&mut self, ino: u64, fh: u64, off: u64, len: u64, mode: i32) -> Res<()> {
        self.failing()?;
        let end = off + len;
        let cur = self.volatile_len(ino, Some(fh))?;
        match mode {
            0 if end > cur => self.truncate(ino, Some(fh), end),
            0 | libc::FALLOC_FL_KEEP_SIZE => Ok(()), // preallocation: no visible change
            m if m == libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE => {
                match end.min(cur).checked_sub(off) {
                    Some(n) if n > 0 => self.write(ino, fh, off, &vec![0; n as usize]),
                    _ => Ok(()),
                }
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nsec as u32),
        Err(_) => UNIX_EPOCH,
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `fuser::Filesystem`; all methods lock the shared state.
struct LossyFs(Arc<Mutex<State>>);

impl LossyFs {
    /// Runs `f` on the state, unless the power has been cut.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Res<T>) -> Res<T> {
        let mut s = lock(&self.0);
        if s.dead {
            return Err(Errno::EIO);
        }
        f(&mut s)
    }
}

fn entry(reply: ReplyEntry, r: Res<FileAttr>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.with(|s| s.child(parent.0, name).and_then(|p| s.entry(p))),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| Ok(s.attr(&s.metadata(ino.0, fh.map(|f| f.0))?))) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (ino, fh) = (ino.0, fh.map(|f| f.0));
        let r = self.with(|s| {
            // Metadata changes go to the backing file at once (durable).
            if mode.is_some()
                || uid.is_some()
                || gid.is_some()
                || atime.is_some()
                || mtime.is_some()
            {
                let path = s.path(ino)?;
                if let Some(m) = mode {
                    fs::set_permissions(&path, fs::Permissions::from_mode(m & 0o7777))?;
                }
                if uid.is_some() || gid.is_some() {
                    std::os::unix::fs::lchown(&path, uid, gid)?;
                }
                if atime.is_some() || mtime.is_some() {
                    let t = |t: TimeOrNow| match t {
                        TimeOrNow::SpecificTime(t) => t,
                        TimeOrNow::Now => SystemTime::now(),
                    };
                    let mut times = FileTimes::new();
                    if let Some(a) = atime {
                        times = times.set_accessed(t(a));
                    }
                    if let Some(m) = mtime {
                        times = times.set_modified(t(m));
                    }
                    File::open(&path)?.set_times(times)?;
                }
            }
            // The size is file data: volatile.
            if let Some(len) = size {
                s.truncate(ino, fh, len)?;
            }
            Ok(s.attr(&s.metadata(ino, fh)?))
        });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|s| Ok(fs::read_link(s.path(ino.0)?)?)) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(parent.0, name)?;
                // Only regular files (RocksDB makes nothing else): created as `create` does.
                if mode & libc::S_IFMT != libc::S_IFREG || rdev != 0 {
                    return Err(Errno::EPERM);
                }
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode & !umask & 0o7777)
                    .open(&path)?;
                s.created(path, req)
            }),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(parent.0, name)?;
                fs::DirBuilder::new()
                    .mode(mode & !umask & 0o7777)
                    .create(&path)?;
                s.created(path, req)
            }),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with(|s| {
                let path = s.child(parent.0, name)?;
                let md = fs::symlink_metadata(&path)?;
                fs::remove_file(&path)?;
                let ino = s.fuse_ino(md.ino());
                s.remove_name(ino, &path);
                s.drop_if_gone(ino, md.nlink() - 1);
                Ok(())
            }),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with(|s| {
                let path = s.child(parent.0, name)?;
                let ino = s.fuse_ino(fs::symlink_metadata(&path)?.ino());
                fs::remove_dir(&path)?;
                s.remove_name(ino, &path);
                Ok(())
            }),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(parent.0, link_name)?;
                std::os::unix::fs::symlink(target, &path)?;
                s.created(path, req)
            }),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|s| {
                let (from, to) = (s.child(parent.0, name)?, s.child(newparent.0, newname)?);
                s.rename(from, to, flags)
            }),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let to = s.child(newparent.0, newname)?;
                fs::hard_link(s.path(ino.0)?, &to)?;
                s.entry(to)
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.with(|s| {
            let path = s.path(ino.0)?;
            // Always read-write (we need to write at fsync, whatever the mode
            // of this handle); read-only if the backing refuses. Never pass
            // O_APPEND/O_TRUNC: the kernel sends explicit offsets and setattr.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .or_else(|_| File::open(&path))?;
            Ok(s.open_file(ino.0, file))
        });
        match r {
            // No FOPEN_KEEP_CACHE: the kernel drops cached pages on open.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|s| s.read(ino.0, fh.0, offset, size)) {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|s| s.write(ino.0, fh.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // close does not make data durable
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = lock(&self.0);
        if let Some((ino, file)) = s.files.remove(&fh.0) {
            let nlink = file.metadata().map_or(1, |m| m.nlink());
            drop(file);
            s.drop_if_gone(ino, nlink);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        empty(reply, self.with(|s| s.fsync(ino.0, fh.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| s.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = lock(&self.0);
        let Some(list) = s.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            // The offset of an entry is the index of the next one.
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0).dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.with(|_| Ok(()))); // directory entries are durable already
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.with(|s| {
            nix::sys::statvfs::statvfs(&s.root)
                .map(|st| (st, s.free_bytes))
                .map_err(|errno| io::Error::from_raw_os_error(errno as i32).into())
        });
        match r {
            Ok((st, free)) => reply.statfs(
                st.blocks(),
                // In fragments, the unit of the block counts.
                free.map_or(st.blocks_free(), |f| f / st.fragment_size().max(1)),
                free.map_or(st.blocks_available(), |f| f / st.fragment_size().max(1)),
                st.files(),
                st.files_free(),
                st.block_size() as u32,
                st.name_max() as u32,
                st.fragment_size() as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions).
        empty(reply, self.with(|s| s.metadata(ino.0, None).map(drop)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.with(|s| {
            let path = s.child(parent.0, name)?;
            let existed = fs::symlink_metadata(&path).is_ok();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .create_new(flags & libc::O_EXCL != 0)
                .mode(mode & !umask & 0o7777)
                .open(&path)?;
            let attr = if existed {
                s.entry(path)?
            } else {
                s.created(path, req)?
            };
            Ok((attr, s.open_file(attr.ino.0, file)))
        });
        match r {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|s| s.fallocate(ino.0, fh.0, offset, length, mode)),
        );
    }
}
