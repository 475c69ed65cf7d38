//! Answer bodies: bytes in memory, or a file read in chunks.
//!
//! A download is never read whole into memory: a [`FileBody`] reads
//! [`CHUNK`] bytes at a time on the blocking pool, one read in flight, and
//! reads the next only when hyper has taken the last. A download costs one
//! chunk of memory however large the file (a sink's output can be
//! gigabytes), and a client that stops reading holds no thread.

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::task::JoinHandle;

/// Bytes of a file read at once.
pub const CHUNK: u64 = 64 << 10;

/// The body of an answer.
#[derive(Debug)]
pub enum ReplyBody {
    /// In memory.
    Full(Full<Bytes>),
    /// A file, streamed.
    File(FileBody),
}

impl From<Vec<u8>> for ReplyBody {
    fn from(bytes: Vec<u8>) -> Self {
        ReplyBody::Full(Full::new(Bytes::from(bytes)))
    }
}

type Chunk = (std::fs::File, std::io::Result<Vec<u8>>);

/// A file's bytes, `len` of them, read chunk by chunk.
#[derive(Debug)]
pub struct FileBody {
    file: Option<std::fs::File>,
    remaining: u64,
    reading: Option<JoinHandle<Chunk>>,
}

impl FileBody {
    /// Stream the `len` first bytes of `file`.
    pub fn new(file: std::fs::File, len: u64) -> Self {
        FileBody {
            file: Some(file),
            remaining: len,
            reading: None,
        }
    }
}

fn read_chunk(mut file: std::fs::File, want: u64) -> Chunk {
    let mut buf = vec![0; usize::try_from(want).unwrap_or(0)];
    let r = file.read(&mut buf).map(|n| {
        buf.truncate(n);
        buf
    });
    (file, r)
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.reading.is_none() {
            if this.remaining == 0 {
                return Poll::Ready(None);
            }
            let Some(file) = this.file.take() else { return Poll::Ready(None) };
            let want = this.remaining.min(CHUNK);
            this.reading = Some(tokio::task::spawn_blocking(move || read_chunk(file, want)));
        }
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let joined = ready!(Pin::new(reading).poll(cx));
        this.reading = None;
        let (file, chunk) = joined.map_err(std::io::Error::other)?;
        this.file = Some(file);
        let chunk = chunk?;
        if chunk.is_empty() {
            // The file shrank while it was sent: end here.
            this.remaining = 0;
            return Poll::Ready(None);
        }
        this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ReplyBody::Full(f) => Pin::new(f).poll_frame(cx).map_err(|never| match never {}),
            ReplyBody::File(f) => Pin::new(f).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplyBody::Full(f) => f.is_end_stream(),
            ReplyBody::File(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplyBody::Full(f) => f.size_hint(),
            ReplyBody::File(f) => f.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_file_is_streamed_in_chunks_of_its_checked_length() {
        let path = std::env::temp_dir().join(format!("sluice-body-{}", std::process::id()));
        let bytes: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| i as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut body = FileBody::new(std::fs::File::open(&path).unwrap(), bytes.len() as u64);
        assert_eq!(body.size_hint().exact(), Some(bytes.len() as u64));
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() as u64 <= CHUNK);
            got.extend_from_slice(&data);
            frames += 1;
        }
        assert_eq!((got == bytes, frames), (true, 3));
        // Only the length checked when it was opened is sent.
        let short = FileBody::new(std::fs::File::open(&path).unwrap(), 5);
        let all = short.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &bytes[..5]);
        std::fs::remove_file(path).unwrap();
    }
}
