//! An image that arrives in chunks — an Upload, or a chunked Stream frame — put back together
//! in one place, which owns the byte limit (`--max-image-bytes`), the declared size and what
//! goes wrong with either.

use crate::error::Error;
use crate::model::image::ImageError;

/// The bytes of one image so far.
pub(super) struct Reassembly {
    max_bytes: usize,
    /// The size the client announced (Upload's header); a chunked frame announces none.
    declared: Option<usize>,
    bytes: Vec<u8>,
    /// More than `max_bytes` arrived (only without a declared size): the rest is read and
    /// dropped, and the image is refused when complete.
    too_large: bool,
}

/// Why chunks do not make an image.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChunkError {
    /// The declared size is zero.
    NoSize,
    /// The image is over the byte limit (declared so, or found so).
    TooLarge { bytes: usize, max: usize },
    /// The chunks carry more than the declared size.
    MoreThanDeclared { declared: usize },
    /// The chunks ended short of the declared size.
    FewerThanDeclared { received: usize, declared: usize },
}

impl ChunkError {
    /// As the error of a `protocol` call ("Upload", "Stream"): a limit stays a limit, anything
    /// else is that protocol's violation.
    pub(super) fn into_error(self, protocol: &str) -> Error {
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
        }
    }
}

impl Reassembly {
    /// An image of unannounced size.
    pub(super) fn open(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            declared: None,
            bytes: Vec::new(),
            too_large: false,
        }
    }

    /// An image whose size the client announced: refused at once when that is over the limit.
    pub(super) fn declared(total: u64, max_bytes: usize) -> Result<Self, ChunkError> {
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
        Ok(Self {
            declared: Some(total),
            // Grown as chunks arrive: the declared size is the client's word, not yet memory
            // to commit.
            bytes: Vec::with_capacity(total.min(1 << 20)),
            ..Self::open(max_bytes)
        })
    }

    pub(super) fn push(&mut self, chunk: &[u8]) -> Result<(), ChunkError> {
        let len = self.bytes.len() + chunk.len();
        if let Some(declared) = self.declared.filter(|&d| len > d) {
            return Err(ChunkError::MoreThanDeclared { declared });
        }
        if len > self.max_bytes {
            self.too_large = true;
            self.bytes = Vec::new();
        }
        if !self.too_large {
            self.bytes.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// The whole image, once its last chunk is in.
    pub(super) fn finish(self) -> Result<Vec<u8>, ChunkError> {
        if self.too_large {
            return Err(ChunkError::TooLarge {
                bytes: self.max_bytes + 1,
                max: self.max_bytes,
            });
        }
        match self.declared {
            Some(declared) if self.bytes.len() != declared => Err(ChunkError::FewerThanDeclared {
                received: self.bytes.len(),
                declared,
            }),
            _ => Ok(self.bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_image_must_arrive_exactly() {
        assert_eq!(Reassembly::declared(0, 10).err(), Some(ChunkError::NoSize));
        assert_eq!(
            Reassembly::declared(11, 10).err(),
            Some(ChunkError::TooLarge { bytes: 11, max: 10 })
        );
        let mut image = Reassembly::declared(6, 10).unwrap();
        image.push(b"abc").unwrap();
        assert_eq!(
            image.push(b"defg"),
            Err(ChunkError::MoreThanDeclared { declared: 6 })
        );
        let mut short = Reassembly::declared(6, 10).unwrap();
        short.push(b"abc").unwrap();
        assert_eq!(
            short.finish(),
            Err(ChunkError::FewerThanDeclared {
                received: 3,
                declared: 6
            })
        );
        let mut whole = Reassembly::declared(6, 10).unwrap();
        whole.push(b"abc").unwrap();
        whole.push(b"def").unwrap();
        assert_eq!(whole.finish().unwrap(), b"abcdef");
    }

    #[test]
    fn an_open_image_over_the_limit_is_read_then_refused() {
        let mut image = Reassembly::open(4);
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
}
