//! The core every API calls: admission (`admission`), decoding and preprocessing on a bounded
//! CPU pool (`input`, `pool`), tokenisation and the text-embedding cache (`text_cache`), the
//! inference queue (`crate::batch`), and SigLIP's scores. Knows nothing of gRPC.
//!
//! One [`Infer`] per model version; every model's core admits its work against the same budgets
//! and decodes on the same CPU pool ([`Shared`]): the limits are the machine's, not a model's.

mod admission;
mod input;
mod limits;
mod pool;
mod text_cache;
mod types;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ::metrics::{counter, histogram};

use crate::batch::{Batcher, Reply, Tag};
use crate::cpu_time;
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{
    image::{self, Convention, ImageLimits, ImageProcessor, Pixels, Preprocess, Region},
    manifest::Manifest,
    scores::{rank, score_all, Embeddings, LogitHead, Score, ScoreFilter},
    tokenizer::{TextTokenizer, TokenIds},
    HostSide,
};
use crate::telemetry;
use admission::Admission;
pub use input::ImageInput;
pub use limits::Limits;
use pool::{CpuPool, Lane};
pub use text_cache::CacheStats;
use text_cache::TextCache;
pub use types::{Classification, Config, FrameScores, Labels, Timings};

/// Which caller a job belongs to: a stream's frames are one flow, so that streams are served
/// in turn (`crate::batch`'s fair queue).
pub use crate::batch::Flow;

/// What the cores of every model share: the limits, the budgets work is admitted against, the
/// CPU pool, and how images become RGB.
pub struct Shared {
    limits: Limits,
    convention: Convention,
    admission: Admission,
    pool: CpuPool,
    text_cache_size: usize,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            admission: Admission::new(&config.limits),
            pool: CpuPool::new(config.preprocess_threads),
            limits: config.limits,
            convention: config.convention,
            text_cache_size: config.text_cache_size,
        })
    }
}

pub struct Infer {
    /// The model's name: the `model` label of its metrics.
    name: Arc<str>,
    batcher: Batcher,
    tokenizer: Arc<TextTokenizer>,
    preprocess: Preprocess,
    head: LogitHead,
    manifest: Manifest,
    shared: Arc<Shared>,
    limits: Limits,
    convention: Convention,
    text_cache: TextCache,
}

impl Infer {
    /// The core of model `name` over a started batcher and the host side of the model it runs.
    pub fn new(name: &str, batcher: Batcher, host: HostSide, shared: Arc<Shared>) -> Self {
        let name: Arc<str> = name.into();
        Self {
            text_cache: TextCache::new(shared.text_cache_size, Arc::clone(&name)),
            name,
            batcher,
            tokenizer: host.tokenizer,
            preprocess: host.preprocess,
            head: host.head,
            manifest: host.manifest,
            limits: shared.limits.clone(),
            convention: shared.convention,
            shared,
        }
    }

    /// The core of one model alone (tools and tests): budgets and a CPU pool of its own.
    pub fn alone(name: &str, batcher: Batcher, host: HostSide, config: Config) -> Self {
        Self::new(name, batcher, host, Shared::new(config))
    }

    /// The model's name in the repository.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn label(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    pub fn text_cache_stats(&self) -> CacheStats {
        self.text_cache.stats()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// How images become RGB (`--image-convention`).
    pub fn convention(&self) -> Convention {
        self.convention
    }

    /// Whose pixel arithmetic preprocessing follows (`--image-processor`).
    pub fn processor(&self) -> ImageProcessor {
        self.preprocess.processor
    }

    /// How this model's images are preprocessed for a request that asks for `max_patches`
    /// (a SigLIP 2 NaFlex model's patch budget M; `None`: the model's default). An M the
    /// model does not allow, or any M for a fixed-resolution model, is refused.
    pub fn preprocessing(&self, max_patches: Option<u32>) -> Result<Preprocess> {
        let Some(requested) = max_patches else {
            return Ok(self.preprocess);
        };
        let Some(naflex) = &self.manifest.image.naflex else {
            return Err(Error::InvalidArgument(format!(
                "max_num_patches {requested}: model {} resizes every image to {}x{}; a patch \
                 budget applies to SigLIP 2 NaFlex models only (leave it 0)",
                self.name, self.manifest.image.size, self.manifest.image.size
            )));
        };
        if !naflex.max_num_patches.contains(&requested) {
            return Err(Error::InvalidArgument(format!(
                "max_num_patches {requested} is not allowed for model {}: choose one of {:?} (its \
                 default, when none is given, is {})",
                self.name, naflex.max_num_patches, naflex.default_max_num_patches
            )));
        }
        Ok(self.preprocess.with_budget(requested))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Images accepted and not yet answered.
    pub fn pending_images(&self) -> usize {
        self.shared.admission.pending_images()
    }

    /// Texts of label sets not cached as written, being tokenised, queued for the text tower or
    /// in a pass.
    pub fn pending_texts(&self) -> usize {
        self.shared.admission.pending_texts()
    }

    /// Checks a label list against the limits and embeds it: a label set seen before (as
    /// written) comes from the cache at once; otherwise its texts are admitted
    /// (`--max-pending-texts`), tokenised on the CPU pool, and those not cached by token ids go
    /// through the text tower in one job (each distinct text once).
    pub async fn labels(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<(Labels, Timings)> {
        self.check_texts(&texts)?;
        if let Some(rows) = self.text_cache.get_written(&texts) {
            drop(telemetry::stage("text_cache_hit"));
            return Ok((self.label_set(texts, rows), Timings::default()));
        }
        // Admitted before tokenising: a flood of new labels is refused before it costs CPU or
        // queues in front of others' decoding.
        let _admitted = self.shared.admission.texts(texts.len())?;
        // Up to --max-texts × --max-text-bytes of text: in the text lane of the CPU pool.
        let (tokenizer, label) = (Arc::clone(&self.tokenizer), self.label());
        let (texts, ids) = self
            .shared
            .pool
            .run(Lane::Texts, (), move || {
                let tokenizing = Instant::now();
                let ids = cpu_time::charged("tokenize", || tokenizer.encode(&texts))?;
                histogram!(metrics::TOKENIZE, "model" => label).record(tokenizing.elapsed());
                Ok((texts, ids))
            })
            .await?;
        let mut rows: Vec<Option<Arc<[f32]>>> =
            ids.iter().map(|t| self.text_cache.get(&t.ids)).collect();
        let mut missing: Vec<TokenIds> = Vec::new();
        for (t, row) in ids.iter().zip(&rows) {
            if row.is_none() && !missing.iter().any(|m| m.ids == t.ids) {
                missing.push(t.clone());
            }
        }
        let mut timings = Timings::default();
        if !missing.is_empty() {
            let reply = self.batcher.embed_texts(missing.clone(), deadline).await?;
            timings.queue = reply.queue;
            timings.inference = reply.inference;
            for (t, embedding) in missing.into_iter().zip(reply.embeddings.rows()) {
                let embedding: Arc<[f32]> = embedding.into();
                for (row, id) in rows.iter_mut().zip(&ids) {
                    if row.is_none() && id.ids == t.ids {
                        *row = Some(Arc::clone(&embedding));
                    }
                }
                self.text_cache.put(t.ids, embedding);
            }
        }
        let rows: Vec<Arc<[f32]>> = rows
            .into_iter()
            .map(|r| r.expect("every row filled"))
            .collect();
        self.text_cache.put_written(&texts, &rows);
        Ok((self.label_set(texts, rows), timings))
    }

    fn label_set(&self, texts: Vec<String>, rows: Vec<Arc<[f32]>>) -> Labels {
        let data = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Labels {
            texts,
            embeddings: Embeddings::new(self.manifest.embedding_dim, data),
        }
    }

    /// Refuses a label list over the limits (--max-texts, --max-text-bytes) or empty.
    pub fn check_texts(&self, texts: &[String]) -> Result<()> {
        self.limits.check_texts(texts)
    }

    /// Decodes and preprocesses one image on the CPU pool by `prep` (from
    /// [`Infer::preprocessing`]): pixels ready for the model.
    pub async fn preprocess(
        &self,
        input: ImageInput,
        prep: &Preprocess,
    ) -> Result<(Pixels, Duration)> {
        self.on_cpu_pool(input, prep, |input, limits, convention, prep| {
            input.prepare(limits, convention, prep)
        })
        .await
    }

    /// Decodes one frame on the CPU pool and preprocesses each of its regions
    /// ([`ImageInput::prepare_regions`]): one row per region, in order. The caller checks the
    /// regions' shape (`image::check_shape`) and admits the rows (one pending image each).
    pub async fn preprocess_regions(
        &self,
        input: ImageInput,
        prep: &Preprocess,
        regions: Vec<Region>,
    ) -> Result<(Vec<Pixels>, Duration)> {
        self.on_cpu_pool(input, prep, move |input, limits, convention, prep| {
            input.prepare_regions(limits, convention, prep, &regions)
        })
        .await
    }

    /// Runs `work` on one image in the CPU pool, once the image's header-declared pixels fit in
    /// `--max-decoding-pixels`; records the time it took.
    async fn on_cpu_pool<T, F>(
        &self,
        input: ImageInput,
        prep: &Preprocess,
        work: F,
    ) -> Result<(T, Duration)>
    where
        T: Send + 'static,
        F: FnOnce(ImageInput, &ImageLimits, Convention, &Preprocess) -> Result<T> + Send + 'static,
    {
        counter!(metrics::BYTES_RECEIVED, "model" => self.label())
            .increment(input.received_bytes() as u64);
        // The header is read here, before the image waits for anything: an image over the
        // limits is refused at once, and the others are charged by their size.
        let pixels = input.declared_pixels(&self.limits.image)?;
        // Waiting for the decoding budget, then for a thread of the pool.
        let waiting = telemetry::stage("admission");
        let decoding = self.shared.admission.decoding(pixels).await?;
        let limits = self.limits.image.clone();
        let convention = self.convention;
        let prep = *prep;
        let (prepared, elapsed) = self
            .shared
            .pool
            .run(Lane::Images, decoding, move || {
                drop(waiting);
                let started = Instant::now();
                let prepared = work(input, &limits, convention, &prep)?;
                Ok((prepared, started.elapsed()))
            })
            .await?;
        histogram!(metrics::PREPROCESS, "model" => self.label()).record(elapsed);
        Ok((prepared, elapsed))
    }

    /// Embeds preprocessed images (from [`Infer::preprocess`]).
    pub async fn embed_pixels(
        &self,
        pixels: Vec<Pixels>,
        deadline: Option<Instant>,
    ) -> Result<(Embeddings, Timings)> {
        Ok(embedded(self.batcher.embed_images(pixels, deadline).await?))
    }

    /// A stream frame against its label set: every label, in label order (the stream selects
    /// and orders them after smoothing). A frame that goes stale (`stale_at`, from the stream's
    /// `max_age_ms`) before its pixels are ready is refused with [`Error::Stale`] rather than
    /// queued for a result nobody wants any more; the batcher drops it too if it is still
    /// waiting then. The frame is queued as part of the stream's `flow`. With
    /// `regions`, each region is cropped out of the decoded frame and scored on its own. `prep`
    /// comes from [`Infer::preprocessing`] (checked once, for the stream's configuration).
    pub async fn classify_frame(
        &self,
        image: ImageInput,
        prep: &Preprocess,
        regions: &[Region],
        labels: &Labels,
        flow: Flow,
        stale_at: Option<Instant>,
    ) -> Result<FrameScores> {
        let started = Instant::now();
        let tag = Tag {
            flow,
            deadline: None,
            stale_at,
        };
        image::check_shape(regions, self.limits.max_regions).map_err(Error::InvalidArgument)?;
        telemetry::record_images(regions.len().max(1));
        telemetry::record_texts(labels.texts.len());
        let _admitted = self.shared.admission.images(regions.len().max(1))?;
        let (pixels, preprocess) = if regions.is_empty() {
            let (pixels, preprocess) = self.preprocess(image, prep).await?;
            (vec![pixels], preprocess)
        } else {
            self.preprocess_regions(image, prep, regions.to_vec())
                .await?
        };
        if let Some(at) = tag.stale_at.filter(|at| Instant::now() >= *at) {
            return Err(Error::Stale(format!(
                "the frame was ready {} ms after it went stale",
                at.elapsed().as_millis()
            )));
        }
        let (embeddings, mut timings) = embedded(self.batcher.embed_tagged(pixels, tag).await?);
        timings.preprocess = preprocess;
        timings.total = started.elapsed();
        Ok(FrameScores {
            areas: self.score_rows(&embeddings, labels),
            timings,
        })
    }

    /// One image against texts: preprocessing (by `prep`, from [`Infer::preprocessing`]) and
    /// the text tower run concurrently.
    pub async fn classify(
        &self,
        image: ImageInput,
        texts: Vec<String>,
        filter: ScoreFilter,
        prep: &Preprocess,
        deadline: Option<Instant>,
    ) -> Result<Classification> {
        let started = Instant::now();
        telemetry::record_images(1);
        telemetry::record_texts(texts.len());
        let _admitted = self.shared.admission.images(1)?;
        let ((labels, text_timings), (pixels, preprocess)) =
            tokio::try_join!(self.labels(texts, deadline), self.preprocess(image, prep))?;
        let (embedding, image_timings) = self.embed_pixels(vec![pixels], deadline).await?;
        Ok(Classification {
            scores: self.rank(embedding.row(0), &labels, filter),
            timings: Timings {
                queue: text_timings.queue + image_timings.queue,
                preprocess,
                inference: text_timings.inference + image_timings.inference,
                total: started.elapsed(),
                batch_size: image_timings.batch_size,
            },
        })
    }

    /// The logit of every label of `labels` against each image embedding: images × labels,
    /// row-major, in label order.
    pub fn logits(&self, images: &Embeddings, labels: &Labels) -> Vec<f32> {
        self.head.logits(images, &labels.embeddings)
    }

    /// Every label of `labels` scored against each image embedding: one row per image, in
    /// label order.
    fn score_rows(&self, images: &Embeddings, labels: &Labels) -> Vec<Vec<Score>> {
        images
            .rows()
            .map(|row| score_all(self.head, row, &labels.texts, &labels.embeddings))
            .collect()
    }

    fn rank(&self, image: &[f32], labels: &Labels, filter: ScoreFilter) -> Vec<Score> {
        rank(self.head, image, &labels.texts, &labels.embeddings, filter)
    }

    /// Embeds many images; each is decoded in parallel on the CPU pool and preprocessed by
    /// `prep` (from [`Infer::preprocessing`]).
    pub async fn embed_images(
        &self,
        images: Vec<ImageInput>,
        prep: &Preprocess,
        deadline: Option<Instant>,
    ) -> Result<(Embeddings, Timings)> {
        self.embed_images_in(images, prep, Flow::new(), deadline)
            .await
    }

    /// [`Infer::embed_images`], queued as part of `flow` (a stream's: streams are served in
    /// turn).
    pub async fn embed_images_in(
        &self,
        images: Vec<ImageInput>,
        prep: &Preprocess,
        flow: Flow,
        deadline: Option<Instant>,
    ) -> Result<(Embeddings, Timings)> {
        if images.is_empty() {
            return Err(Error::InvalidArgument("no images given".into()));
        }
        if images.len() > self.limits.max_images {
            return Err(Error::InvalidArgument(format!(
                "{} images exceed the limit of {} per request (--max-images)",
                images.len(),
                self.limits.max_images
            )));
        }
        telemetry::record_images(images.len());
        let _admitted = self.shared.admission.images(images.len())?;
        let started = Instant::now();
        let prepared = futures_util::future::try_join_all(images.into_iter().enumerate().map(
            |(i, img)| async move {
                self.preprocess(img, prep)
                    .await
                    .map_err(|e| e.about(format!("image {i}")))
            },
        ))
        .await?;
        let preprocess = started.elapsed();
        let tag = Tag {
            flow,
            deadline,
            stale_at: None,
        };
        let pixels = prepared.into_iter().map(|(p, _)| p).collect();
        let (embeddings, mut timings) = embedded(self.batcher.embed_tagged(pixels, tag).await?);
        timings.preprocess = preprocess;
        timings.total = started.elapsed();
        Ok((embeddings, timings))
    }

    pub async fn embed_texts(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<(Embeddings, Timings)> {
        let started = Instant::now();
        telemetry::record_texts(texts.len());
        let (labels, mut timings) = self.labels(texts, deadline).await?;
        timings.total = started.elapsed();
        Ok((labels.embeddings, timings))
    }
}

/// A batcher reply as embeddings and the timings it knows.
fn embedded(reply: Reply) -> (Embeddings, Timings) {
    let timings = Timings {
        queue: reply.queue,
        inference: reply.inference,
        batch_size: reply.batch_size,
        ..Timings::default()
    };
    (reply.embeddings, timings)
}
