//! A snapshot's data as openraft carries it: a file in the snapshot format
//! ([`crate::snapshot_file`]), or a checkpoint of the store not yet exported to one.
//!
//! Building a snapshot takes a checkpoint ([`lockstep_store::Store::checkpoint`]), which
//! costs what changed since the last one. The whole state is exported to a file only when a
//! follower needs it: the network calls [`SnapshotData::ready`] before streaming, on a
//! blocking thread, once per snapshot however many followers ask. Neither the Raft core nor
//! the state machine waits for an export.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Writes the export of a checkpoint to the file it returns (or returns the file an earlier
/// call wrote). Runs on a blocking thread.
pub(crate) type Export = Arc<dyn Fn() -> io::Result<PathBuf> + Send + Sync>;

/// The data of one snapshot.
pub struct SnapshotData {
    file: Option<tokio::fs::File>,
    export: Option<Export>,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData")
            .field("file", &self.file)
            .field("exported", &self.export.is_none())
            .finish()
    }
}

impl SnapshotData {
    /// Data that is a snapshot file (received from a leader, or already exported).
    pub fn from_file(file: tokio::fs::File) -> Self {
        SnapshotData {
            file: Some(file),
            export: None,
        }
    }

    /// Data that is a checkpoint, exported by `export` when it is first read.
    pub(crate) fn from_checkpoint(export: Export) -> Self {
        SnapshotData {
            file: None,
            export: Some(export),
        }
    }

    /// Whether the data is a file now (an export has run, or none was needed).
    pub fn is_file(&self) -> bool {
        self.file.is_some()
    }

    /// Makes the data a readable file: exports the checkpoint on a blocking thread if that
    /// has not happened yet. Call it before reading; reads and seeks fail until then.
    pub async fn ready(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let Some(export) = self.export.clone() else {
            return Err(io::Error::other(
                "snapshot data without a file or a checkpoint",
            ));
        };
        let path = tokio::task::spawn_blocking(move || export())
            .await
            .map_err(io::Error::other)??;
        self.file = Some(tokio::fs::File::open(&path).await?);
        self.export = None;
        Ok(())
    }

    /// The file, once [`SnapshotData::ready`] has made one.
    pub fn into_file(self) -> Option<tokio::fs::File> {
        self.file
    }

    fn file(&mut self) -> io::Result<Pin<&mut tokio::fs::File>> {
        match &mut self.file {
            Some(f) => Ok(Pin::new(f)),
            None => Err(io::Error::other(
                "the snapshot is a checkpoint not yet exported: call SnapshotData::ready before reading it",
            )),
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().file() {
            Ok(f) => f.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().file() {
            Ok(f) => f.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().file() {
            Ok(f) => f.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().file() {
            Ok(f) => f.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        self.get_mut().file()?.start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut().file() {
            Ok(f) => f.poll_complete(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
