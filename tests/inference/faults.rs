//! Failures inside libtorch, driven by a real exported model: `siglip-export faulty` wraps the
//! tiny model's vision tower in a TorchScript module that raises, in the interpreter, for inputs
//! the test chooses (python/siglip_export/faulty.py): a "device-side assert" for any all-white
//! image, "CUDA out of memory" for a batch of more than 2 with an all-black image, and for any
//! pure red image whatever the batch. A pass that runs out of memory is run again in halves, so
//! only the rows that fail alone fail; the worker counts batches in which nothing succeeded.

use siglip_serve::batch::{BatchConfig, Batcher, Reply};
use siglip_serve::error::{Error, Result};
use siglip_serve::model::Model;

use crate::{assert_close, common, config, stop};

fn faulty_model() -> Model {
    common::cpu_model("SIGLIP_TEST_FAULTY_MODEL_DIR")
}

/// Inputs in CHW order, normalised (-1..1), as the tower sees them.
struct Inputs {
    /// Ordinary images: smooth gradients no fault matches.
    good: Vec<Vec<f32>>,
    white: Vec<f32>,
    black: Vec<f32>,
    red: Vec<f32>,
}

fn inputs(model: &Model) -> Inputs {
    let n = model.preprocess().values_per_image();
    let good = (0..3)
        .map(|k| {
            (0..n)
                .map(|i| ((i * (k + 1)) % 251) as f32 / 251.0 * 1.8 - 0.9)
                .collect()
        })
        .collect();
    let mut red = vec![-1.0; n];
    red[..n / 3].fill(1.0);
    Inputs {
        good,
        white: vec![1.0; n],
        black: vec![-1.0; n],
        red,
    }
}

/// A batch of four callers of one image each, all in one pass: the batch closes when full, long
/// before its delay.
fn one_batch_of_four(pipelined: bool) -> BatchConfig {
    BatchConfig {
        pipelined,
        ..config(4, 5_000, 64)
    }
}

/// Each of `images` sent by its own caller at once; their replies in order.
async fn callers(batcher: &Batcher, images: &[&Vec<f32>]) -> Vec<Result<Reply>> {
    let calls: Vec<_> = images
        .iter()
        .map(|&pixels| {
            let (batcher, pixels) = (batcher.clone(), pixels.clone());
            tokio::spawn(async move { batcher.embed_images(vec![pixels.into()], None).await })
        })
        .collect();
    let mut replies = Vec::new();
    for call in calls {
        replies.push(call.await.expect("caller"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_pass_is_run_in_halves_and_only_the_image_that_fails_alone_fails() {
    for pipelined in [false, true] {
        let model = faulty_model();
        let inputs = inputs(&model);
        // good[0], good[1], good[2], black: each embedded alone.
        let alone: Vec<Vec<f32>> = inputs
            .good
            .iter()
            .chain([&inputs.black])
            .map(|p| model.embed_pixels(p, 1).expect("alone").data)
            .collect();
        let (batcher, worker) = crate::start(model, one_batch_of_four(pipelined));

        // Too large with a black image: out of memory at 4, both halves of 2 pass. Everyone is
        // answered, in one batch of 4.
        let replies = callers(
            &batcher,
            &[
                &inputs.good[0],
                &inputs.black,
                &inputs.good[1],
                &inputs.good[2],
            ],
        )
        .await;
        for (reply, expected) in replies
            .iter()
            .zip([&alone[0], &alone[3], &alone[1], &alone[2]])
        {
            let reply = reply.as_ref().expect("answered after halving");
            assert_eq!(reply.batch_size, 4, "the four callers shared a batch");
            assert_close(&reply.embeddings.data, expected);
        }

        // A red image runs out of memory even alone: 4 → 2 + 2 → 1 + 1; its caller alone fails.
        let replies = callers(
            &batcher,
            &[
                &inputs.good[0],
                &inputs.good[1],
                &inputs.red,
                &inputs.good[2],
            ],
        )
        .await;
        for (i, expected) in [(0, &alone[0]), (1, &alone[1]), (3, &alone[2])] {
            let reply = replies[i].as_ref().expect("a good image is answered");
            assert_eq!(reply.batch_size, 4);
            assert_close(&reply.embeddings.data, expected);
        }
        match &replies[2] {
            Err(Error::Inference(message)) => {
                assert!(message.contains("CUDA out of memory"), "{message}")
            }
            other => panic!("the red image: expected an inference error, got {other:?}"),
        }
        // Some of that batch succeeded: the device works, no failure is counted.
        assert_eq!(*batcher.consecutive_failures().borrow(), 0);
        stop(batcher, worker).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_that_is_not_out_of_memory_fails_the_whole_batch_and_is_counted_until_a_success() {
    for pipelined in [false, true] {
        let model = faulty_model();
        let inputs = inputs(&model);
        let ids = model.tokenize(&["a photo"]).unwrap();
        let (batcher, worker) = crate::start(model, one_batch_of_four(pipelined));
        let failures = batcher.consecutive_failures();

        // A device-side assert is not retried: every caller of the batch gets it.
        let replies = callers(
            &batcher,
            &[
                &inputs.good[0],
                &inputs.white,
                &inputs.good[1],
                &inputs.good[2],
            ],
        )
        .await;
        for reply in &replies {
            match reply {
                Err(Error::Inference(message)) => {
                    assert!(message.contains("device-side assert"), "{message}")
                }
                other => panic!("expected an inference error, got {:?}", other.is_ok()),
            }
        }
        assert_eq!(*failures.borrow(), 1);

        // Alone (a batch of one, with no delay), each white image is another failed batch.
        drop(failures);
        stop(batcher, worker).await;
        let (batcher, worker) = crate::start(
            faulty_model(),
            BatchConfig {
                pipelined,
                ..config(4, 0, 64)
            },
        );
        let failures = batcher.consecutive_failures();
        for n in 1..=3 {
            assert!(batcher
                .embed_images(vec![inputs.white.clone().into()], None)
                .await
                .is_err());
            assert_eq!(*failures.borrow(), n);
        }
        // Texts still work (the text tower is untouched) and end the run of failures.
        batcher.embed_texts(ids, None).await.expect("texts");
        assert_eq!(*failures.borrow(), 0);
        stop(batcher, worker).await;
    }
}
