//! Chunk reassembly as Upload and chunked Stream frames drive it: any sequence of images opened
//! (with a declared size, as an Upload header gives, or none, as a chunked frame), chunks pushed,
//! images finished or dropped, several at once against one shared budget.
//!
//! Checked against a model of what the bytes should be: an image whose chunks add up comes back
//! byte for byte; the declared size and the byte limit (--max-image-bytes) are enforced with
//! their errors; the budget (--max-reassembly-bytes) never goes over its max, covers the bytes
//! held, and is back to 0 once every image is finished or dropped.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use siglip_serve::grpc::api::chunks::{Budget, ChunkError, Reassembly};

#[derive(Arbitrary, Debug)]
struct Input {
    /// --max-image-bytes, 1 to 64 KiB.
    max_bytes: u16,
    /// --max-reassembly-bytes above it (the server insists on at least --max-image-bytes).
    budget_extra: u16,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// An Upload's header (`Some`, any `total_bytes`) or a chunked frame's first chunk (`None`).
    Open { declared: Option<u64> },
    /// A chunk as sent, into the `image`-th open image.
    Push { image: u8, chunk: Vec<u8> },
    /// A large chunk of one byte value, to reach the limits cheaply.
    Fill { image: u8, len: u16, byte: u8 },
    /// The last chunk arrived (Upload's stream ended, or a frame's `last=true`).
    Finish { image: u8 },
    /// The call went away, or failed.
    Drop { image: u8 },
}

/// One open image and what it should hold.
struct Open {
    reassembly: Reassembly,
    declared: Option<usize>,
    /// Every byte pushed, while within the byte limit.
    expected: Vec<u8>,
    /// Bytes pushed in all (past the byte limit too).
    received: usize,
}

impl Open {
    /// Bytes the image holds: none once it is over the limit (the rest is read and dropped).
    fn held(&self, max_bytes: usize) -> usize {
        if self.received > max_bytes {
            0
        } else {
            self.received
        }
    }
}

fuzz_target!(|input: Input| {
    let max_bytes = usize::from(input.max_bytes.max(1));
    let max = max_bytes + usize::from(input.budget_extra);
    let budget = Budget::new(max);
    let mut open: Vec<Open> = Vec::new();
    for op in input.ops {
        match op {
            Op::Open { declared } => {
                let opened = match declared {
                    None => Ok(Reassembly::open(max_bytes, Arc::clone(&budget))),
                    Some(total) => Reassembly::declared(total, max_bytes, Arc::clone(&budget)),
                };
                match (declared, opened) {
                    (Some(0), Err(e)) => assert_eq!(e, ChunkError::NoSize),
                    (Some(total), Err(e)) if total > max_bytes as u64 => {
                        assert!(
                            matches!(e, ChunkError::TooLarge { max, .. } if max == max_bytes),
                            "{e:?}"
                        )
                    }
                    (_, Err(e)) => panic!("{declared:?} of at most {max_bytes} refused: {e:?}"),
                    (Some(total), Ok(_)) if total == 0 || total > max_bytes as u64 => {
                        panic!("declared {total} of at most {max_bytes} accepted")
                    }
                    (_, Ok(reassembly)) => open.push(Open {
                        reassembly,
                        declared: declared.map(|d| d as usize),
                        expected: Vec::new(),
                        received: 0,
                    }),
                }
            }
            Op::Push { image, chunk } => push(&mut open, image, &chunk, max_bytes, &budget),
            Op::Fill { image, len, byte } => push(
                &mut open,
                image,
                &vec![byte; usize::from(len)],
                max_bytes,
                &budget,
            ),
            Op::Finish { image } => {
                let Some(image) = take(&mut open, image) else {
                    continue;
                };
                let result = image.reassembly.finish();
                if image.received > max_bytes {
                    let too_large = ChunkError::TooLarge {
                        bytes: max_bytes + 1,
                        max: max_bytes,
                    };
                    assert_eq!(result.err(), Some(too_large));
                } else {
                    match (image.declared, result) {
                        (Some(d), Err(e)) if image.received != d => assert_eq!(
                            e,
                            ChunkError::FewerThanDeclared {
                                received: image.received,
                                declared: d
                            }
                        ),
                        (declared, Ok(bytes)) => {
                            assert!(
                                declared.is_none_or(|d| d == image.received),
                                "short image accepted"
                            );
                            assert!(bytes == image.expected, "the image came back changed");
                        }
                        (_, Err(e)) => panic!("a complete image refused: {e:?}"),
                    }
                }
            }
            Op::Drop { image } => drop(take(&mut open, image)),
        }
        let held: usize = open.iter().map(|o| o.held(max_bytes)).sum();
        let charged = budget.held();
        assert!(charged <= max, "the budget holds {charged} of {max}");
        assert!(charged >= held, "{held} bytes held but {charged} charged");
        assert!(
            charged <= 2 * held,
            "{held} bytes held but {charged} charged (more than doubling)"
        );
    }
    drop(open);
    assert_eq!(
        budget.held(),
        0,
        "every image finished or dropped, yet bytes are charged"
    );
});

fn take(open: &mut Vec<Open>, image: u8) -> Option<Open> {
    (!open.is_empty()).then(|| open.swap_remove(usize::from(image) % open.len()))
}

/// Pushes `chunk` into the chosen image; an error ends the call, as Upload and Stream do.
fn push(open: &mut Vec<Open>, image: u8, chunk: &[u8], max_bytes: usize, budget: &Budget) {
    if open.is_empty() {
        return;
    }
    let index = usize::from(image) % open.len();
    let target = &mut open[index];
    let held_before = budget.held();
    let received = target.received + chunk.len();
    match target.reassembly.push(chunk) {
        Ok(()) => {
            if let Some(d) = target.declared {
                assert!(received <= d, "{received} bytes accepted of {d} declared");
            }
            target.received = received;
            if received <= max_bytes {
                target.expected.extend_from_slice(chunk);
            } else {
                target.expected = Vec::new();
            }
        }
        Err(ChunkError::MoreThanDeclared { declared }) => {
            assert_eq!(Some(declared), target.declared);
            assert!(
                received > declared,
                "{received} bytes of {declared} refused as more"
            );
            drop(open.swap_remove(index));
        }
        Err(ChunkError::Busy { held, max }) => {
            assert_eq!(held, held_before);
            // Growth at most doubles what the image holds, up to the bytes it needs.
            assert!(
                held + 2 * received > max,
                "{received} bytes refused with {held} of {max} held"
            );
            drop(open.swap_remove(index));
        }
        Err(e) => panic!("push: {e:?}"),
    }
}
