//! The inference queue: every caller gets exactly its own rows, dead callers never block or
//! receive, deadlines and stale frames drop work, a full queue refuses at once, a failed pass
//! fails only its own callers, a waiting flow is not left behind another's backlog — with the
//! worker overlapping batches (as on a GPU) and without.

use std::time::{Duration, Instant};

use siglip_serve::batch::{BatchConfig, Batcher, Flow, Reply, Site, Tag};
use siglip_serve::error::Error;
use siglip_serve::model::{
    image::{preprocess, Pixels, Transparency},
    scores::Embeddings,
    Model,
};

use crate::{assert_close, common, config, model, stop};

/// Preprocessed pixels of every test photo, and their embeddings computed one at a time.
fn photos(model: &Model) -> Vec<(Vec<f32>, Embeddings)> {
    [
        "chelsea_progressive.jpg",
        "rocket.bmp",
        "coffee_rgb8.png",
        "astronaut_baseline.jpg",
        "chelsea.gif",
    ]
    .iter()
    .map(|name| {
        let rgb = common::decode_as_served(&common::asset(name), Transparency::Composite);
        let pixels = siglip_serve::model::image::preprocess(&rgb, model.preprocess()).values;
        let alone = model.embed_pixels(&pixels, 1).unwrap();
        (pixels, alone)
    })
    .collect()
}

/// Images in a job that keeps the worker busy while a test queues callers behind it and checks
/// how they were queued: as many as 250 ms of passes take on this machine and model (each
/// image's share of a pass of 8, timed here), at least one pass and at most 1024 images (about
/// 600 MB of pixels at 224 px). The test's own steps meanwhile are a few polls of 5 ms; the tests
/// check that the job was still running when they were done.
fn long_job(model: &Model, pixels: &Pixels) -> usize {
    const BATCH: usize = 8;
    let eight = vec![pixels; BATCH];
    model.embed_rows(&eight).expect("a pass of 8");
    let pass = (0..2)
        .map(|_| {
            let started = Instant::now();
            model.embed_rows(&eight).expect("a pass of 8");
            started.elapsed()
        })
        .min()
        .unwrap();
    let per_image = pass / BATCH as u32;
    let wanted = Duration::from_millis(250).as_secs_f64() / per_image.as_secs_f64().max(1e-9);
    let images = (wanted.ceil() as usize).clamp(BATCH, 1024);
    eprintln!("long job: {images} images, {per_image:?} each in a pass of {BATCH}");
    images
}

/// Waits until `done` holds, polling every 5 ms; fails, saying the premise broke, if the long
/// job `busy` is answered first (rather than wait 30 s for what can no longer happen).
async fn while_busy<F: std::future::Future + Unpin>(
    busy: &mut F,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let until = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            futures_util::poll!(&mut *busy).is_pending(),
            "premise broken: the long job was answered before {what}"
        );
        assert!(Instant::now() < until, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `config` for the worker as it runs on the CPU, and as on a GPU, where the next batch is
/// prepared while one is in flight (on the CPU the pass itself is synchronous, but the order of
/// staging, answering and submitting is the same).
fn both_modes(config: BatchConfig) -> [BatchConfig; 2] {
    [
        config,
        BatchConfig {
            pipelined: true,
            ..config
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_get_their_own_rows() {
    // With no delay, batches form from whatever waits while the previous one runs.
    for config in [both_modes(config(4, 50, 64)), both_modes(config(4, 0, 64))].concat() {
        own_rows(config).await;
    }
}

async fn own_rows(config: BatchConfig) {
    let model = model();
    let photos = photos(&model);
    let texts = ["a cat", "a rocket", "", "a cup of coffee on a table"];
    let text_alone: Vec<Embeddings> = texts
        .iter()
        .map(|t| model.embed_texts(&[*t]).unwrap())
        .collect();
    let tokens: Vec<_> = texts
        .iter()
        .map(|t| model.tokenize(&[*t]).unwrap())
        .collect();
    let per_image = model.preprocess().values_per_image();
    // A batch of 4 (with a long delay, concurrent callers are batched together), and one caller
    // with more rows than a batch is split over several forward passes.
    let (batcher, worker) = crate::start(model, config);

    let mut calls = Vec::new();
    for round in 0..3 {
        for (i, (pixels, alone)) in photos.iter().enumerate() {
            let batcher = batcher.clone();
            let (pixels, alone) = (pixels.clone(), alone.clone());
            calls.push(tokio::spawn(async move {
                let reply = batcher
                    .embed_images(vec![pixels.into()], None)
                    .await
                    .expect("images");
                assert_eq!(reply.embeddings.len(), 1, "round {round} photo {i}");
                assert_close(&reply.embeddings.data, &alone.data);
            }));
        }
        for (ids, alone) in tokens.iter().zip(&text_alone) {
            let batcher = batcher.clone();
            let (ids, alone) = (ids.clone(), alone.clone());
            calls.push(tokio::spawn(async move {
                let reply = batcher.embed_texts(ids, None).await.expect("texts");
                assert_close(&reply.embeddings.data, &alone.data);
            }));
        }
    }
    // One caller with all five photos at once (more than one batch).
    let all: Vec<Pixels> = photos.iter().map(|(p, _)| p.clone().into()).collect();
    assert!(all.iter().all(|p| p.values.len() == per_image));
    let reply = batcher.embed_images(all, None).await.expect("five at once");
    for (i, (_, alone)) in photos.iter().enumerate() {
        assert_close(reply.embeddings.row(i), &alone.data);
    }
    for call in calls {
        call.await.expect("caller");
    }
    stop(batcher, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_cancelled_callers_are_dropped_and_block_no_one() {
    // No batch delay, so that the long job's batch below closes at once and the six queue.
    for config in both_modes(config(8, 0, 64)) {
        dropped_callers(config).await;
    }
}

async fn dropped_callers(config: BatchConfig) {
    let tiny = model();
    let photos = photos(&tiny);
    let (pixels, alone) = photos[0].clone();
    let long = long_job(&tiny, &pixels.clone().into());
    let (batcher, worker) = crate::start(tiny, config);

    let past = Instant::now() - Duration::from_millis(1);
    match batcher
        .embed_images(vec![pixels.clone().into()], Some(past))
        .await
    {
        Err(Error::DeadlineExceeded(msg)) => {
            assert!(msg.contains("dropped before inference"), "{msg}")
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }

    // Callers that give up while they wait: a long job keeps the worker busy while six callers
    // queue behind it and then go away. The next caller's pass must hold its row alone: had the
    // six been run, they would share its batch.
    let mut busy = Box::pin(batcher.embed_images(vec![pixels.clone().into(); long], None));
    // One poll queues the long job (the worker runs it whether or not it is polled again);
    // the six queue once the worker has taken it.
    assert!(futures_util::poll!(&mut busy).is_pending());
    common::wait_until("the worker taking the long job", async || {
        batcher.depth() == 0
    })
    .await;
    let quitters: Vec<_> = (0..6)
        .map(|_| {
            let batcher = batcher.clone();
            let pixels = pixels.clone();
            tokio::spawn(async move { batcher.embed_images(vec![pixels.into()], None).await })
        })
        .collect();
    while_busy(&mut busy, "six callers queued", || batcher.depth() == 6).await;
    for q in &quitters {
        q.abort();
    }
    assert!(
        futures_util::poll!(&mut busy).is_pending(),
        "premise broken: the long job ({long} images) was answered before the six callers behind \
         it went away"
    );
    for q in quitters {
        assert!(q.await.unwrap_err().is_cancelled());
    }
    let stayer = {
        let batcher = batcher.clone();
        let pixels = pixels.clone();
        tokio::spawn(async move { batcher.embed_images(vec![pixels.into()], None).await })
    };
    let reply = tokio::time::timeout(Duration::from_secs(30), stayer)
        .await
        .expect("the remaining caller is not blocked")
        .expect("join")
        .expect("reply");
    assert_close(&reply.embeddings.data, &alone.data);
    assert_eq!(
        reply.batch_size, 1,
        "the callers that went away were run with it"
    );
    busy.await.expect("the long job is served");
    assert_eq!(batcher.depth(), 0);
    stop(batcher, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pass_answers_its_callers_and_the_worker_goes_on() {
    // The compiled tiny tower takes at most 8 images per pass: a pass of 9 fails in the model.
    let nine = |photos: &[(Vec<f32>, Embeddings)]| {
        (0..9).map(|i| photos[i % photos.len()].0.clone()).collect()
    };
    fails_then_serves("SIGLIP_TEST_AOTI_MODEL_DIR", nine, "at most 8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_model_does_not_take_fails_its_caller_and_the_worker_goes_on() {
    // A row of the wrong length is refused while it is staged, before libtorch sees it.
    let short_row = |_: &[(Vec<f32>, Embeddings)]| vec![vec![0.5; 7]];
    let needle = "7 values are not an image this model takes";
    fails_then_serves("SIGLIP_TEST_MODEL_DIR", short_row, needle).await;
}

/// In both worker modes: the rows `bad` makes fail with an inference error that mentions
/// `needle`, then the next caller is served and the worker is still running.
async fn fails_then_serves(
    model_var: &str,
    bad: impl Fn(&[(Vec<f32>, Embeddings)]) -> Vec<Vec<f32>>,
    needle: &str,
) {
    for config in both_modes(config(16, 0, 64)) {
        let model = common::cpu_model(model_var);
        let photos = photos(&model);
        let (batcher, worker) = crate::start(model, config);
        let rows = bad(&photos).into_iter().map(Pixels::from).collect();
        match batcher.embed_images(rows, None).await {
            Err(Error::Inference(message)) => assert!(message.contains(needle), "{message}"),
            other => panic!(
                "expected an inference error, got {:?}",
                other.map(|r| r.batch_size)
            ),
        }
        let (pixels, alone) = photos[1].clone();
        let reply = batcher
            .embed_images(vec![pixels.into()], None)
            .await
            .expect("the next caller is served");
        assert_close(&reply.embeddings.data, &alone.data);
        assert!(!worker.is_finished());
        stop(batcher, worker).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let model = model();
    let photos = photos(&model);
    let (batcher, worker) = crate::start(model, config(1, 0, 1));
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let batcher = batcher.clone();
            let pixels = photos[i % photos.len()].0.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                (
                    batcher.embed_images(vec![pixels.into()], None).await,
                    started.elapsed(),
                )
            })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            (Ok(_), _) => {}
            (Err(Error::ResourceExhausted(msg)), _) => {
                assert!(msg.contains("--max-queue"), "{msg}");
                refused += 1;
            }
            (Err(e), _) => panic!("unexpected {e}"),
        }
    }
    assert!(
        refused > 0,
        "a queue of one accepted twelve concurrent callers"
    );
    stop(batcher, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_size_and_delay() {
    let model = model();
    let photos = photos(&model);
    // A lone caller is answered once the delay is over, in a batch of one.
    let (batcher, worker) = crate::start(model, config(8, 30, 64));
    let alone = batcher
        .embed_images(vec![photos[0].0.clone().into()], None)
        .await
        .unwrap();
    assert_eq!(alone.batch_size, 1);
    // Many at once: batched together, never more than max_batch_size rows per forward pass.
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let batcher = batcher.clone();
            let pixels = photos[i % photos.len()].0.clone();
            tokio::spawn(async move {
                batcher
                    .embed_images(vec![pixels.into()], None)
                    .await
                    .unwrap()
                    .batch_size
            })
        })
        .collect();
    let mut sizes = Vec::new();
    for call in calls {
        sizes.push(call.await.unwrap());
    }
    assert!(sizes.iter().all(|&s| (1..=8).contains(&s)), "{sizes:?}");
    assert!(
        sizes.iter().any(|&s| s > 1),
        "concurrent callers were never batched: {sizes:?}"
    );
    stop(batcher, worker).await;
}

/// Starts `jobs` in order (each queued at its first poll), behind a job of `long` images that
/// keeps the worker busy meanwhile ([`long_job`]), and waits for all of them.
async fn behind_a_long_job<F>(
    batcher: &Batcher,
    pixels: &Pixels,
    long: usize,
    jobs: Vec<F>,
) -> Vec<siglip_serve::error::Result<Reply>>
where
    F: std::future::Future<Output = siglip_serve::error::Result<Reply>>,
{
    let mut busy = Box::pin(batcher.embed_images(vec![pixels.clone(); long], None));
    assert!(futures_util::poll!(&mut busy).is_pending());
    common::wait_until("the worker taking the long job", async || {
        batcher.depth() == 0
    })
    .await;
    let mut jobs: Vec<_> = jobs.into_iter().map(Box::pin).collect();
    for job in &mut jobs {
        assert!(
            futures_util::poll!(job).is_pending(),
            "answered while the worker is busy"
        );
    }
    // Read before the long job is checked: if it is still running after, it was running then.
    let depth = batcher.depth();
    assert!(
        futures_util::poll!(&mut busy).is_pending(),
        "premise broken: the long job ({long} images) was answered before the jobs behind it \
         were all queued"
    );
    assert_eq!(depth, jobs.len(), "all queued behind the long job");
    busy.await.expect("the long job is served");
    futures_util::future::join_all(jobs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_flow_joins_the_next_batch() {
    // A1..A4 of one stream, then B1 of another, queued while the worker is busy; batches of 2.
    // FIFO would run [A1 A2] [A3 A4] [B1]: B1 last, alone. Served in turn: [A1 B1] [A2 A3] [A4].
    for config in both_modes(config(2, 0, 64)) {
        let model = model();
        let photos = photos(&model);
        let long = long_job(&model, &photos[0].0.clone().into());
        let (batcher, worker) = crate::start(model, config);
        let (a, b) = (Flow::new(), Flow::new());
        let frame = |flow: Flow, i: usize| {
            let tag = Tag {
                flow,
                deadline: None,
                stale_at: None,
            };
            batcher.embed_tagged(vec![photos[i].0.clone().into()], tag)
        };
        let jobs = vec![
            frame(a, 0),
            frame(a, 1),
            frame(a, 2),
            frame(a, 3),
            frame(b, 4),
        ];
        let replies: Vec<Reply> =
            behind_a_long_job(&batcher, &photos[0].0.clone().into(), long, jobs)
                .await
                .into_iter()
                .map(|r| r.expect("served"))
                .collect();
        for (reply, (_, alone)) in replies.iter().zip(&photos) {
            assert_close(&reply.embeddings.data, &alone.data);
        }
        // Jobs of one batch share its measured inference time, to the nanosecond; another batch
        // measures its own.
        let [a1, a2, a3, a4, b1] = &replies[..] else {
            unreachable!()
        };
        let batch = |r: &Reply| (r.inference, r.batch_size);
        assert_eq!(batch(b1), batch(a1), "B1 shares the first batch with A1");
        assert_eq!(b1.batch_size, 2);
        assert_ne!(batch(a2), batch(a1), "A2 waits for the next batch");
        assert_eq!(batch(a2), batch(a3));
        assert_eq!(a4.batch_size, 1);
        stop(batcher, worker).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_frame_is_answered_stale_and_not_run() {
    for config in both_modes(config(8, 0, 64)) {
        let model = model();
        let photos = photos(&model);
        let long = long_job(&model, &photos[0].0.clone().into());
        let (batcher, worker) = crate::start(model, config);
        let tag = |stale_at| Tag {
            flow: Flow::new(),
            deadline: None,
            stale_at,
        };
        // Stale by the time the worker takes it (it is queued stale: timing-free); the fresh
        // frame queued after it must run alone.
        let now = Instant::now();
        let later = now + Duration::from_secs(3600);
        let jobs = vec![
            batcher.embed_tagged(vec![photos[1].0.clone().into()], tag(Some(now))),
            batcher.embed_tagged(vec![photos[2].0.clone().into()], tag(Some(later))),
        ];
        let mut replies =
            behind_a_long_job(&batcher, &photos[0].0.clone().into(), long, jobs).await;
        let fresh = replies.pop().unwrap().expect("a fresh frame is served");
        match replies.pop().unwrap() {
            Err(Error::Stale(message)) => assert!(message.contains("max_age_ms"), "{message}"),
            other => panic!("expected Stale, got {:?}", other.map(|r| r.batch_size)),
        }
        assert_close(&fresh.embeddings.data, &photos[2].1.data);
        assert_eq!(fresh.batch_size, 1, "the stale frame was run with it");
        assert_eq!(batcher.depth(), 0);
        stop(batcher, worker).await;
    }
}

/// A model that fails to load, panics while loading, or is refused by `setup` gives its caller
/// the error (a panic with its message) instead of a queue.
#[test]
fn a_load_that_fails_or_panics_is_reported() {
    type Load = Box<dyn FnOnce() -> siglip_serve::error::Result<Model> + Send>;
    let refused = |e: Error| Err::<(BatchConfig, ()), _>(e);
    let cases: [(&str, Load, bool); 3] = [
        (
            "no such model",
            Box::new(|| Err(Error::Model("no such model".into()))),
            false,
        ),
        (
            "loading the model panicked: boom",
            Box::new(|| panic!("boom")),
            false,
        ),
        ("refused by setup", Box::new(|| Ok(model())), true),
    ];
    for (want, load, refuse) in cases {
        let loaded = Batcher::load(Site::alone("tiny"), load, move |_| {
            if refuse {
                refused(Error::Model("refused by setup".into()))
            } else {
                Ok((config(1, 0, 1), ()))
            }
        });
        match loaded {
            Ok(_) => panic!("{want}: a queue was returned"),
            Err(e) => assert!(e.to_string().contains(want), "{want}: got {e}"),
        }
    }
}

/// A NaFlex model's callers may each choose a patch budget: callers at different budgets share
/// one batch, run in a pass per budget, and each gets what its image gives alone at its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_at_different_patch_budgets_share_a_batch_in_a_pass_per_budget() {
    let model = common::cpu_model("SIGLIP_TEST_NAFLEX_MODEL_DIR");
    let names = [
        "chelsea_progressive.jpg",
        "astronaut_strip_37x500.png",
        "rocket_420.jpg",
    ];
    let budgets = [1024, 256, 576, 256];
    let rows: Vec<(Pixels, Vec<f32>)> = budgets
        .iter()
        .zip(names.iter().cycle())
        .map(|(&budget, name)| {
            let prep = model.preprocess().with_budget(budget);
            let rgb = common::decode_as_served(&common::asset(name), prep.transparency);
            let pixels = preprocess(&rgb, &prep);
            let alone = model.embed_rows(&[&pixels]).expect("alone").data;
            (pixels, alone)
        })
        .collect();
    // The batch closes when it holds all four callers (long before its delay).
    for config in both_modes(config(budgets.len(), 10_000, 64)) {
        let (batcher, worker) =
            crate::start(common::cpu_model("SIGLIP_TEST_NAFLEX_MODEL_DIR"), config);
        let calls: Vec<_> = rows
            .iter()
            .map(|(pixels, _)| {
                let (batcher, pixels) = (batcher.clone(), pixels.clone());
                tokio::spawn(async move { batcher.embed_images(vec![pixels], None).await })
            })
            .collect();
        // One batch, a pass per budget: the two 256-patch callers share theirs.
        let passes = budgets.map(|b| budgets.iter().filter(|&&other| other == b).count());
        for (((call, (_, alone)), budget), pass) in
            calls.into_iter().zip(&rows).zip(budgets).zip(passes)
        {
            let reply = call.await.expect("caller").expect("answered");
            assert_eq!(reply.batch_size, pass, "at {budget}: a pass of its budget");
            assert_close(&reply.embeddings.data, alone);
        }
        stop(batcher, worker).await;
    }
}

/// Patch budgets do not change who is served when: a stream of 1024-patch frames queued ahead of
/// a 256-patch caller of another flow does not keep it waiting. Served in turn as in
/// [`a_waiting_flow_joins_the_next_batch`], each budget in a pass of its own: [A1 B1] [A2 A3] [A4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_budget_is_not_starved_by_a_flood_of_large_ones() {
    for config in both_modes(config(2, 0, 64)) {
        let model = common::cpu_model("SIGLIP_TEST_NAFLEX_MODEL_DIR");
        let photo = common::decode_as_served(
            &common::asset("rocket_420.jpg"),
            model.preprocess().transparency,
        );
        let (large, small) = (
            preprocess(&photo, &model.preprocess().with_budget(1024)),
            preprocess(&photo, &model.preprocess().with_budget(256)),
        );
        let long = long_job(&model, &small);
        let (batcher, worker) = crate::start(model, config);
        let (a, b) = (Flow::new(), Flow::new());
        let frame = |flow: Flow, pixels: &Pixels| {
            let tag = Tag {
                flow,
                deadline: None,
                stale_at: None,
            };
            batcher.embed_tagged(vec![pixels.clone()], tag)
        };
        let jobs = vec![
            frame(a, &large),
            frame(a, &large),
            frame(a, &large),
            frame(a, &large),
            frame(b, &small),
        ];
        let replies: Vec<Reply> = behind_a_long_job(&batcher, &small, long, jobs)
            .await
            .into_iter()
            .map(|r| r.expect("served"))
            .collect();
        let [a1, a2, a3, a4, b1] = &replies[..] else {
            unreachable!()
        };
        // Jobs of one batch share its measured inference time; each is told its own pass's size.
        assert_eq!(
            b1.inference, a1.inference,
            "B1 shares the first batch with A1"
        );
        assert_eq!((a1.batch_size, b1.batch_size), (1, 1), "a pass per budget");
        assert_ne!(a2.inference, a1.inference, "A2 waits for the next batch");
        assert_eq!((a2.inference, a2.batch_size), (a3.inference, 2));
        assert_eq!(a4.batch_size, 1);
        stop(batcher, worker).await;
    }
}
