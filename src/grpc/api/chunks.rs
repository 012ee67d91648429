//! An image that arrives in chunks — an Upload, or a chunked Stream frame — put back together
//! in one place, which owns the byte limit (`--max-image-bytes`), the declared size, the
//! server-wide budget of bytes held by unfinished images (`--max-reassembly-bytes`) and what
//! goes wrong with any of them.
//!
//! Public for the fuzz target (`fuzz/fuzz_targets/reassembly.rs`), which drives it the way
//! Upload and Stream do.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use ::metrics::gauge;

use crate::error::Error;
use crate::metrics;
use crate::model::image::ImageError;

/// Bytes held by every unfinished image on the server, and their limit: without it, clients that
/// send most of a large image and then stall hold the server's memory for as long as they like
/// (40 stalled 32 MiB Uploads grew it by 1.6 GB).
#[derive(Debug)]
pub struct Budget {
    max: usize,
    held: AtomicUsize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: AtomicUsize::new(0),
        })
    }

    /// Takes `bytes` from the budget, or refuses at once when they do not fit.
    fn take(&self, bytes: usize) -> Result<(), ChunkError> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&after| after <= self.max)
            })
            .map_err(|held| ChunkError::Busy {
                held,
                max: self.max,
            })?;
        gauge!(metrics::REASSEMBLY_BYTES).increment(bytes as f64);
        Ok(())
    }

    /// Bytes held now, by every unfinished image together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        gauge!(metrics::REASSEMBLY_BYTES).decrement(bytes as f64);
    }
}

/// The bytes of one image so far. The memory it holds is charged to the [`Budget`] as it grows
/// and given back when it is finished or dropped.
pub struct Reassembly {
    max_bytes: usize,
    /// The size the client announced (Upload's header); a chunked frame announces none.
    declared: Option<usize>,
    bytes: Vec<u8>,
    budget: Arc<Budget>,
    /// What `bytes` is charged to `budget`: its capacity.
    charged: usize,
    /// More than `max_bytes` arrived (only without a declared size): the rest is read and
    /// dropped, and the image is refused when complete.
    too_large: bool,
}

impl Drop for Reassembly {
    fn drop(&mut self) {
        self.budget.give_back(self.charged);
    }
}

/// Why chunks do not make an image.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The declared size is zero.
    NoSize,
    /// The image is over the byte limit (declared so, or found so).
    TooLarge { bytes: usize, max: usize },
    /// The chunks carry more than the declared size.
    MoreThanDeclared { declared: usize },
    /// The chunks ended short of the declared size.
    FewerThanDeclared { received: usize, declared: usize },
    /// The next chunk does not fit in the server's budget for unfinished images.
    Busy { held: usize, max: usize },
}

impl ChunkError {
    /// As the error of a `protocol` call ("Upload", "Stream"): a limit stays a limit, anything
    /// else is that protocol's violation.
    pub fn into_error(self, protocol: &str) -> Error {
        let violation =
            |what: String| Error::InvalidArgument(format!("{protocol} protocol: {what}"));
        match self {
            ChunkError::TooLarge { bytes, max } => {
                Error::Image(ImageError::TooLarge { bytes, max })
            }
            ChunkError::NoSize => violation(
                "the header must declare total_bytes, the size of the encoded image".into(),
            ),
            ChunkError::MoreThanDeclared { declared } => violation(format!(
                "chunks carry more than the {declared} bytes declared in the header"
            )),
            ChunkError::FewerThanDeclared { received, declared } => violation(format!(
                "the stream ended after {received} of the {declared} bytes declared in the header"
            )),
            ChunkError::Busy { held, max } => Error::ResourceExhausted(format!(
                "server busy: unfinished uploads and chunked frames hold {held} of {max} bytes \
                 (--max-reassembly-bytes) and this chunk does not fit; retry with backoff"
            )),
        }
    }
}

impl Reassembly {
    /// An image of unannounced size.
    pub fn open(max_bytes: usize, budget: Arc<Budget>) -> Self {
        Self {
            max_bytes,
            declared: None,
            bytes: Vec::new(),
            budget,
            charged: 0,
            too_large: false,
        }
    }

    /// An image whose size the client announced: refused at once when that is over the limit.
    /// Nothing is charged yet: the declared size is the client's word, not yet memory to commit.
    pub fn declared(total: u64, max_bytes: usize, budget: Arc<Budget>) -> Result<Self, ChunkError> {
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        if total == 0 {
            return Err(ChunkError::NoSize);
        }
        if total > max_bytes {
            return Err(ChunkError::TooLarge {
                bytes: total,
                max: max_bytes,
            });
        }
        let mut image = Self::open(max_bytes, budget);
        image.declared = Some(total);
        Ok(image)
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ChunkError> {
        let len = self.bytes.len() + chunk.len();
        if let Some(declared) = self.declared.filter(|&d| len > d) {
            return Err(ChunkError::MoreThanDeclared { declared });
        }
        if len > self.max_bytes {
            self.too_large = true;
            self.release();
        }
        if self.too_large {
            return Ok(());
        }
        if len > self.bytes.capacity() {
            // Doubling (as Vec does), but never past the declared size or the limit; the
            // budget is charged before the memory is taken.
            let ceiling = self.declared.unwrap_or(self.max_bytes);
            let capacity = (self.bytes.capacity() * 2).clamp(len, ceiling.max(len));
            self.budget.take(capacity - self.charged)?;
            self.bytes.reserve_exact(capacity - self.bytes.len());
            self.charged = capacity;
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    /// Frees the bytes and gives them back to the budget.
    fn release(&mut self) {
        self.bytes = Vec::new();
        self.budget.give_back(std::mem::take(&mut self.charged));
    }

    /// The whole image, once its last chunk is in; its bytes leave the budget (from here on
    /// they are one image being decoded, which admission counts).
    pub fn finish(mut self) -> Result<Vec<u8>, ChunkError> {
        if self.too_large {
            return Err(ChunkError::TooLarge {
                bytes: self.max_bytes + 1,
                max: self.max_bytes,
            });
        }
        if let Some(declared) = self.declared.filter(|&d| self.bytes.len() != d) {
            return Err(ChunkError::FewerThanDeclared {
                received: self.bytes.len(),
                declared,
            });
        }
        let bytes = std::mem::take(&mut self.bytes);
        self.release();
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlimited() -> Arc<Budget> {
        Budget::new(usize::MAX)
    }

    #[test]
    fn a_declared_image_must_arrive_exactly() {
        assert_eq!(
            Reassembly::declared(0, 10, unlimited()).err(),
            Some(ChunkError::NoSize)
        );
        assert_eq!(
            Reassembly::declared(11, 10, unlimited()).err(),
            Some(ChunkError::TooLarge { bytes: 11, max: 10 })
        );
        let mut image = Reassembly::declared(6, 10, unlimited()).unwrap();
        image.push(b"abc").unwrap();
        assert_eq!(
            image.push(b"defg"),
            Err(ChunkError::MoreThanDeclared { declared: 6 })
        );
        let mut short = Reassembly::declared(6, 10, unlimited()).unwrap();
        short.push(b"abc").unwrap();
        assert_eq!(
            short.finish(),
            Err(ChunkError::FewerThanDeclared {
                received: 3,
                declared: 6
            })
        );
        let mut whole = Reassembly::declared(6, 10, unlimited()).unwrap();
        whole.push(b"abc").unwrap();
        whole.push(b"def").unwrap();
        assert_eq!(whole.finish().unwrap(), b"abcdef");
    }

    #[test]
    fn an_open_image_over_the_limit_is_read_then_refused() {
        let mut image = Reassembly::open(4, unlimited());
        image.push(b"abc").unwrap();
        image.push(b"de").unwrap();
        image.push(b"f").unwrap();
        assert_eq!(
            image.finish(),
            Err(ChunkError::TooLarge { bytes: 5, max: 4 })
        );
        let error = ChunkError::TooLarge { bytes: 5, max: 4 }.into_error("Stream");
        assert!(error.is_limit(), "{error}");
    }

    #[test]
    fn bytes_held_are_bounded_by_the_budget_and_given_back() {
        let budget = Budget::new(10);
        let held = || budget.held();
        let mut first = Reassembly::declared(8, 100, Arc::clone(&budget)).unwrap();
        assert_eq!(
            held(),
            0,
            "a declared size is not charged before its bytes arrive"
        );
        first.push(b"abcd").unwrap();
        assert_eq!(held(), 4);
        let mut second = Reassembly::open(100, Arc::clone(&budget));
        second.push(b"xyz").unwrap();
        assert_eq!(held(), 7);
        // Doubling the first to 8 bytes would pass 10: refused, and nothing changes.
        assert_eq!(first.push(b"e"), Err(ChunkError::Busy { held: 7, max: 10 }));
        let error = ChunkError::Busy { held: 7, max: 10 }.into_error("Upload");
        assert!(
            error.is_overload() && error.to_string().contains("--max-reassembly-bytes"),
            "{error}"
        );
        drop(second);
        assert_eq!(held(), 4, "a dropped reassembly gives its bytes back");
        first.push(b"efgh").unwrap();
        assert_eq!(held(), 8, "grown to the declared size, no further");
        assert_eq!(first.finish().unwrap(), b"abcdefgh");
        assert_eq!(held(), 0, "a finished reassembly gives its bytes back");
        let mut over = Reassembly::open(4, Arc::clone(&budget));
        over.push(b"abc").unwrap();
        over.push(b"de").unwrap();
        assert_eq!(
            held(),
            0,
            "bytes over the image limit are dropped, not held"
        );
    }
}
