//! Checksummed streams: a source that writes N pseudo-random bytes and a sink
//! that reads to EOF, both returning the byte count and SHA-256, so a test
//! compares what left one end with what reached the other.
//!
//! The bytes come from a 1 MiB random pool (seeded) read at pseudo-random
//! offsets per chunk: not periodic, so loss, duplication or reordering
//! changes the digest, yet cheap enough to push gigabytes in a debug build.

use rand::{Rng, RngCore, SeedableRng, rngs::SmallRng};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const POOL: usize = 1 << 20;

/// What went through one end of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// A deterministic stream of pseudo-random bytes, produced in chunks.
#[derive(Debug)]
pub struct RandomSource {
    pool: Vec<u8>,
    rng: SmallRng,
    left: u64,
    hasher: Sha256,
    total: u64,
}

impl RandomSource {
    /// `len` bytes in total, determined by `seed`.
    pub fn new(len: u64, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut pool = vec![0; POOL];
        rng.fill_bytes(&mut pool);
        Self {
            pool,
            rng,
            left: len,
            hasher: Sha256::new(),
            total: 0,
        }
    }

    /// The next chunk of at most `max` bytes (empty once all were produced),
    /// already counted in the digest.
    pub fn next_chunk(&mut self, max: usize) -> &[u8] {
        let len = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(max)
            .min(POOL / 2);
        let start = self.rng.random_range(0..POOL / 2);
        let chunk = &self.pool[start..start + len];
        self.hasher.update(chunk);
        self.left -= len as u64;
        self.total += len as u64;
        chunk
    }

    /// Length and SHA-256 of everything produced so far.
    pub fn digest(&self) -> Digest {
        Digest {
            bytes: self.total,
            sha256: self.hasher.clone().finalize().into(),
        }
    }
}

/// Writes `len` pseudo-random bytes (from `seed`) in writes of at most
/// `chunk` bytes, then shuts the writer down (FIN). Returns what was sent.
pub async fn source<W: AsyncWrite + Unpin>(
    writer: &mut W,
    len: u64,
    seed: u64,
    chunk: usize,
) -> std::io::Result<Digest> {
    let mut random = RandomSource::new(len, seed);
    loop {
        let bytes = random.next_chunk(chunk);
        if bytes.is_empty() {
            break;
        }
        writer.write_all(bytes).await?;
    }
    writer.shutdown().await?;
    Ok(random.digest())
}

/// Reads until EOF and returns what arrived.
pub async fn sink<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok(Digest {
        bytes: total,
        sha256: hasher.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_the_source_sends_the_sink_reads_with_the_same_digest() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let send = tokio::spawn(async move { source(&mut a, 300_000, 9, 10_000).await });
        let got = sink(&mut b).await.expect("sink");
        let sent = send.await.expect("join").expect("source");
        assert_eq!(sent.bytes, 300_000);
        assert_eq!(got, sent);
    }

    #[test]
    fn different_seeds_give_different_streams_and_one_seed_repeats() {
        let digest = |seed| {
            let mut random = RandomSource::new(100_000, seed);
            while !random.next_chunk(4096).is_empty() {}
            random.digest()
        };
        assert_eq!(digest(1), digest(1));
        assert_ne!(digest(1), digest(2));
    }
}
