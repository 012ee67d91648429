//! The core every API calls: validation, decoding and preprocessing on a bounded CPU pool,
//! tokenisation, the inference queue, and SigLIP's scores. Knows nothing of gRPC.

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ::metrics::{counter, gauge, histogram};
use lru::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::batch::{Batcher, Reply, Tag};
use crate::cpu_time;
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{
    image::{self, Convention, ImageLimits, Preprocess, RawFormat, Region, RgbImage},
    manifest::Manifest,
    scores::{rank, score_all, Embeddings, LogitHead, Score, ScoreFilter},
    tokenizer::{TextTokenizer, TokenIds},
    HostSide,
};

/// An image as a caller sends it.
#[derive(Debug, Clone)]
pub enum ImageInput {
    Encoded(Vec<u8>),
    Raw {
        width: u32,
        height: u32,
        format: RawFormat,
        data: Vec<u8>,
    },
}

impl ImageInput {
    /// Width × height, from an encoded image's header alone and checked against the limits (a
    /// raw frame's are checked when it is prepared): what decoding it will cost.
    pub fn declared_pixels(&self, limits: &ImageLimits) -> Result<u64> {
        Ok(match self {
            ImageInput::Encoded(b) => image::declared_pixels(b, limits)?,
            ImageInput::Raw { width, height, .. } => u64::from(*width) * u64::from(*height),
        })
    }

    /// Bytes as received: what the bytes metric counts.
    fn received_bytes(&self) -> usize {
        match self {
            ImageInput::Encoded(b) => b.len(),
            ImageInput::Raw { data, .. } => data.len(),
        }
    }

    /// Decoded (within the limits) to RGB8 by `convention`.
    pub fn decode(self, limits: &ImageLimits, convention: Convention) -> Result<RgbImage> {
        Ok(match self {
            ImageInput::Encoded(bytes) => image::decode(&bytes, limits, convention)?,
            ImageInput::Raw {
                width,
                height,
                format,
                data,
            } => image::from_raw(width, height, format, &data, limits, convention)?,
        })
    }

    /// Decoded (within the limits) and preprocessed: CHW floats ready for the model. CPU work,
    /// for a blocking thread.
    pub fn prepare(
        self,
        limits: &ImageLimits,
        convention: Convention,
        prep: &Preprocess,
    ) -> Result<Vec<f32>> {
        let rgb = cpu_time::charged("decode", || self.decode(limits, convention))?;
        Ok(cpu_time::charged("preprocess", || {
            image::preprocess(&rgb, prep)
        }))
    }

    /// Decoded once, then each region cropped out and preprocessed on its own: one row of CHW
    /// floats per region, in order, equal to the reference's `crop` of the same image. A region
    /// reaching outside the decoded frame (whose size only decoding tells, EXIF orientation
    /// included) is refused. CPU work, for a blocking thread.
    pub fn prepare_regions(
        self,
        limits: &ImageLimits,
        convention: Convention,
        prep: &Preprocess,
        regions: &[Region],
    ) -> Result<Vec<Vec<f32>>> {
        let rgb = cpu_time::charged("decode", || self.decode(limits, convention))?;
        image::check_within(rgb.width(), rgb.height(), regions).map_err(Error::InvalidArgument)?;
        Ok(regions
            .iter()
            .map(|&r| {
                cpu_time::charged("preprocess", || {
                    image::preprocess(&image::crop(&rgb, r), prep)
                })
            })
            .collect())
    }
}

/// What one caller may ask of the core. The command line's `--max-*` flags fill it
/// (`config::LimitArgs`); their defaults are these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub image: ImageLimits,
    /// Texts (labels) in one request or stream configuration.
    pub max_texts: usize,
    /// One text, in bytes.
    pub max_text_bytes: usize,
    /// Images in one EmbedImage request.
    pub max_images: usize,
    /// Regions of one stream frame, each classified on its own (`--max-regions`).
    pub max_regions: usize,
    /// Images accepted and not yet answered, over all callers: bounds the memory of
    /// preprocessed images.
    pub max_pending_images: usize,
    /// Header-declared pixels of the images being decoded at once: bounds the memory of
    /// decoding (at least `image.max_pixels`, at most `u32::MAX`).
    pub max_decoding_pixels: u64,
    /// Texts not in the cache, accepted and not yet embedded by the text tower, over all
    /// callers: bounds text work the way `max_pending_images` bounds image work.
    pub max_pending_texts: usize,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        image: ImageLimits::DEFAULT,
        max_texts: 256,
        max_text_bytes: 2048,
        max_images: 64,
        max_regions: 16,
        max_pending_images: 512,
        max_decoding_pixels: 100_000_000,
        max_pending_texts: 1024,
    };

    /// Refuses a label list over the limits (--max-texts, --max-text-bytes) or empty: a check of
    /// the request alone, before any work (and apart from `Infer`, so that the fuzz target runs it).
    pub fn check_texts(&self, texts: &[String]) -> Result<()> {
        if texts.is_empty() {
            return Err(Error::InvalidArgument(
                "no texts given: send at least one label".into(),
            ));
        }
        if texts.len() > self.max_texts {
            return Err(Error::InvalidArgument(format!(
                "{} texts exceed the limit of {} per request (--max-texts)",
                texts.len(),
                self.max_texts
            )));
        }
        if let Some((i, t)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > self.max_text_bytes)
        {
            return Err(Error::InvalidArgument(format!(
                "text {i} is {} bytes long, over the limit of {} bytes (--max-text-bytes)",
                t.len(),
                self.max_text_bytes
            )));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How the core runs, beyond the model.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub limits: Limits,
    pub convention: Convention,
    /// Threads decoding and resizing images (0: one per core).
    pub preprocess_threads: usize,
    /// Text embeddings kept, keyed by token ids (0: off).
    pub text_cache_size: usize,
}

/// A label set with its text embeddings, computed once and reused (e.g. for a whole stream).
#[derive(Debug, Clone)]
pub struct Labels {
    pub texts: Vec<String>,
    pub embeddings: Embeddings,
}

/// Where the time of one request went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub queue: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
    pub total: Duration,
    /// Images in the vision forward pass that served the request.
    pub batch_size: usize,
}

/// A stream frame's scores: per area (the whole frame, or each region), every label in label
/// order.
#[derive(Debug)]
pub struct FrameScores {
    pub areas: Vec<Vec<Score>>,
    pub timings: Timings,
}

#[derive(Debug, Clone)]
pub struct Classification {
    /// Highest probability first, after filtering.
    pub scores: Vec<Score>,
    pub timings: Timings,
}

pub struct Infer {
    batcher: Batcher,
    tokenizer: Arc<TextTokenizer>,
    preprocess: Preprocess,
    head: LogitHead,
    manifest: Manifest,
    limits: Limits,
    convention: Convention,
    /// Decoding and resizing run on tokio's blocking pool, at most this many at once
    /// (`--preprocess-threads`), in arrival order.
    cpu_permits: Arc<Semaphore>,
    /// Tokenising runs there too, in its own lane of half as many (at least one): images never
    /// wait in line behind a flood of new labels, and text never takes more than half the pool.
    text_permits: Arc<Semaphore>,
    /// One permit per image accepted and not yet answered (`--max-pending-images`): preprocessed
    /// images are large (1.8 MB at 384 px), so this, not the queue's job count, bounds memory.
    pending_images: Arc<Semaphore>,
    /// One permit per header-declared pixel being decoded (`--max-decoding-pixels`).
    decoding_pixels: Arc<Semaphore>,
    /// One permit per text accepted and not yet embedded (`--max-pending-texts`).
    pending_texts: Arc<Semaphore>,
    text_cache: TextCache,
}

/// A share of one of the core's budgets, shown on its gauge while held and released when
/// dropped (answered, failed or cancelled).
struct Held {
    _permit: OwnedSemaphorePermit,
    gauge: &'static str,
    amount: u32,
}

impl Held {
    fn new(permit: OwnedSemaphorePermit, gauge: &'static str) -> Self {
        let amount = permit.num_permits() as u32;
        gauge!(gauge).increment(f64::from(amount));
        Self {
            _permit: permit,
            gauge,
            amount,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        gauge!(self.gauge).decrement(f64::from(self.amount));
    }
}

/// Text embeddings by token ids: texts that tokenise alike (e.g. differ only in case or
/// punctuation the tokenizer drops) share one entry.
struct TextCache {
    /// `None` when the cache is off.
    entries: Option<Mutex<Lru>>,
    /// The same embeddings by the label as written: a label set seen before is answered without
    /// tokenising, so it never waits behind other callers' tokenisation (a flood of new labels
    /// must not slow down the label sets everyone reuses).
    by_text: Option<Mutex<LruCache<String, Arc<[f32]>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Token ids → embedding.
type Lru = LruCache<Vec<i64>, Arc<[f32]>>;

/// Counters of the text-embedding cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

impl TextCache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            by_text: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn get(&self, ids: &[i64]) -> Option<Arc<[f32]>> {
        let found = self
            .entries
            .as_ref()?
            .lock()
            .expect("cache lock")
            .get(ids)
            .cloned();
        self.count(found.is_some(), 1);
        found
    }

    /// Every text's embedding by the text as written, or `None` unless all are cached (then
    /// nothing is counted: the texts go through the tokenizer and [`TextCache::get`]).
    fn get_written(&self, texts: &[String]) -> Option<Vec<Arc<[f32]>>> {
        let mut by_text = self.by_text.as_ref()?.lock().expect("cache lock");
        let found: Option<Vec<_>> = texts.iter().map(|t| by_text.get(t).cloned()).collect();
        drop(by_text);
        if found.is_some() {
            self.count(true, texts.len());
        }
        found
    }

    fn count(&self, hit: bool, texts: usize) {
        let (counter, name) = if hit {
            (&self.hits, metrics::CACHE_HITS)
        } else {
            (&self.misses, metrics::CACHE_MISSES)
        };
        counter!(name).increment(texts as u64);
        counter.fetch_add(texts as u64, Ordering::Relaxed);
    }

    fn put(&self, ids: Vec<i64>, embedding: Arc<[f32]>) {
        if let Some(entries) = &self.entries {
            let mut entries = entries.lock().expect("cache lock");
            entries.put(ids, embedding);
            gauge!(metrics::CACHE_ENTRIES).set(entries.len() as f64);
        }
    }

    fn put_written(&self, texts: &[String], embeddings: &[Arc<[f32]>]) {
        if let Some(by_text) = &self.by_text {
            let mut by_text = by_text.lock().expect("cache lock");
            for (text, embedding) in texts.iter().zip(embeddings) {
                by_text.put(text.clone(), Arc::clone(embedding));
            }
        }
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self
                .entries
                .as_ref()
                .map_or(0, |e| e.lock().expect("cache lock").len()),
        }
    }
}

impl Infer {
    /// The core over a started batcher and the host side of the model it runs.
    pub fn new(batcher: Batcher, host: HostSide, config: Config) -> Self {
        let threads = if config.preprocess_threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.preprocess_threads
        };
        Self {
            batcher,
            tokenizer: host.tokenizer,
            preprocess: host.preprocess,
            head: host.head,
            manifest: host.manifest,
            pending_images: Arc::new(Semaphore::new(config.limits.max_pending_images)),
            decoding_pixels: Arc::new(Semaphore::new(config.limits.max_decoding_pixels as usize)),
            pending_texts: Arc::new(Semaphore::new(config.limits.max_pending_texts)),
            limits: config.limits,
            convention: config.convention,
            cpu_permits: Arc::new(Semaphore::new(threads)),
            text_permits: Arc::new(Semaphore::new(threads.div_ceil(2))),
            text_cache: TextCache::new(config.text_cache_size),
        }
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

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Images accepted and not yet answered.
    pub fn pending_images(&self) -> usize {
        self.limits.max_pending_images - self.pending_images.available_permits()
    }

    /// Texts of label sets not cached as written, being tokenised, queued for the text tower or
    /// in a pass.
    pub fn pending_texts(&self) -> usize {
        self.limits.max_pending_texts - self.pending_texts.available_permits()
    }

    /// Admits `images` more images, or refuses them at once when that would pass
    /// `--max-pending-images` (the caller retries, as for a full queue).
    fn admit(&self, images: usize) -> Result<Held> {
        let permit = Arc::clone(&self.pending_images)
            .try_acquire_many_owned(images as u32)
            // Never closed: no permits is the only way to fail.
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "server overloaded: {} of {} pending images in use, {images} more do not fit \
                     (--max-pending-images); retry with backoff",
                    self.pending_images(),
                    self.limits.max_pending_images
                ))
            })?;
        Ok(Held::new(permit, metrics::PENDING_IMAGES))
    }

    /// Admits `texts` more texts, or refuses them at once when that would pass
    /// `--max-pending-texts`: a flood of unique labels must not queue text-tower work without
    /// bound in front of everyone else's images.
    fn admit_texts(&self, texts: usize) -> Result<Held> {
        let permit = Arc::clone(&self.pending_texts)
            .try_acquire_many_owned(texts as u32)
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "server overloaded: {} of {} pending texts in use, {texts} more do not fit \
                     (--max-pending-texts); retry with backoff",
                    self.pending_texts(),
                    self.limits.max_pending_texts
                ))
            })?;
        Ok(Held::new(permit, metrics::PENDING_TEXTS))
    }

    /// Takes an image's header-declared pixels from `--max-decoding-pixels`, waiting in line
    /// (FIFO: a large image is not overtaken forever by small ones) until decodes in progress
    /// leave room. The wait ends with the caller's deadline, and how many wait is bounded by
    /// `--max-pending-images`; refusing at once instead would refuse a large image whenever
    /// another large one is being decoded, though it only has to wait its turn.
    async fn start_decoding(&self, pixels: u64) -> Result<Held> {
        // At most max_image_pixels <= max_decoding_pixels <= u32::MAX (LimitArgs::check).
        let pixels = pixels.clamp(1, self.limits.max_decoding_pixels) as u32;
        let permit = Arc::clone(&self.decoding_pixels)
            .acquire_many_owned(pixels)
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        Ok(Held::new(permit, metrics::DECODING_PIXELS))
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
            return Ok((self.label_set(texts, rows), Timings::default()));
        }
        // Admitted before tokenising: a flood of new labels is refused before it costs CPU or
        // queues in front of others' decoding.
        let _admitted = self.admit_texts(texts.len())?;
        // Up to --max-texts × --max-text-bytes of text: CPU work, kept off the async threads, in
        // the text lane of the pool.
        let permit = Arc::clone(&self.text_permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        let tokenizing = Instant::now();
        let tokenizer = Arc::clone(&self.tokenizer);
        let (texts, ids) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ids = cpu_time::charged("tokenize", || tokenizer.encode(&texts));
            (texts, ids)
        })
        .await
        .map_err(|e| Error::Inference(format!("tokenisation task failed: {e}")))?;
        let ids = ids?;
        histogram!(metrics::TOKENIZE).record(tokenizing.elapsed());
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

    /// Decodes and preprocesses one image on the CPU pool: CHW floats ready for the model.
    pub async fn preprocess(&self, input: ImageInput) -> Result<(Vec<f32>, Duration)> {
        self.on_cpu_pool(input, |input, limits, convention, prep| {
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
        regions: Vec<Region>,
    ) -> Result<(Vec<Vec<f32>>, Duration)> {
        self.on_cpu_pool(input, move |input, limits, convention, prep| {
            input.prepare_regions(limits, convention, prep, &regions)
        })
        .await
    }

    /// Runs `work` on one image on the blocking pool, once the image's header-declared pixels
    /// fit in `--max-decoding-pixels` and a CPU permit is free; records the time it took.
    async fn on_cpu_pool<T, F>(&self, input: ImageInput, work: F) -> Result<(T, Duration)>
    where
        T: Send + 'static,
        F: FnOnce(ImageInput, &ImageLimits, Convention, &Preprocess) -> Result<T> + Send + 'static,
    {
        counter!(metrics::BYTES_RECEIVED).increment(input.received_bytes() as u64);
        // The header is read here, before the image waits for anything: an image over the
        // limits is refused at once, and the others are charged by their size.
        let pixels = input.declared_pixels(&self.limits.image)?;
        let decoding = self.start_decoding(pixels).await?;
        // The permits move into the blocking task: a caller that goes away (cancelled, past its
        // deadline, or failed on another image) must not free a slot while its decode still runs.
        let permit = Arc::clone(&self.cpu_permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        let limits = self.limits.image.clone();
        let convention = self.convention;
        let prep = self.preprocess.clone();
        let started = Instant::now();
        let prepared = tokio::task::spawn_blocking(move || -> Result<T> {
            let _permits = (permit, decoding);
            work(input, &limits, convention, &prep)
        })
        .await
        .map_err(|e| Error::Inference(format!("preprocessing task failed: {e}")))??;
        let elapsed = started.elapsed();
        histogram!(metrics::PREPROCESS).record(elapsed);
        Ok((prepared, elapsed))
    }

    /// Embeds preprocessed images (from [`Infer::preprocess`]).
    pub async fn embed_pixels(
        &self,
        pixels: Vec<Vec<f32>>,
        deadline: Option<Instant>,
    ) -> Result<(Embeddings, Timings)> {
        Ok(embedded(self.batcher.embed_images(pixels, deadline).await?))
    }

    /// A stream frame against its label set: every label, in label order (the stream selects
    /// and orders them after smoothing). A frame that goes stale (`stale_at`, from the stream's
    /// `max_age_ms`) before its pixels are ready is refused with [`Error::Stale`] rather than
    /// queued for a result nobody wants any more; the batcher drops it too if it is still
    /// waiting then (`tag`, which also names the stream's flow for fair sharing). With
    /// `regions`, each region is cropped out of the decoded frame and scored on its own.
    pub async fn classify_frame(
        &self,
        image: ImageInput,
        regions: &[Region],
        labels: &Labels,
        tag: Tag,
    ) -> Result<FrameScores> {
        let started = Instant::now();
        image::check_shape(regions, self.limits.max_regions).map_err(Error::InvalidArgument)?;
        let _admitted = self.admit(regions.len().max(1))?;
        let (pixels, preprocess) = if regions.is_empty() {
            let (pixels, preprocess) = self.preprocess(image).await?;
            (vec![pixels], preprocess)
        } else {
            self.preprocess_regions(image, regions.to_vec()).await?
        };
        if let Some(at) = tag.stale_at.filter(|at| Instant::now() >= *at) {
            return Err(Error::Stale(format!(
                "the frame was ready {} ms after it went stale",
                at.elapsed().as_millis()
            )));
        }
        let (embeddings, mut timings) = embedded(self.batcher.embed_frame(pixels, tag).await?);
        timings.preprocess = preprocess;
        timings.total = started.elapsed();
        Ok(FrameScores {
            areas: embeddings
                .rows()
                .map(|row| score_all(self.head, row, &labels.texts, &labels.embeddings))
                .collect(),
            timings,
        })
    }

    /// One image against texts: preprocessing and the text tower run concurrently.
    pub async fn classify(
        &self,
        image: ImageInput,
        texts: Vec<String>,
        filter: ScoreFilter,
        deadline: Option<Instant>,
    ) -> Result<Classification> {
        let started = Instant::now();
        let _admitted = self.admit(1)?;
        let ((labels, text_timings), (pixels, preprocess)) =
            tokio::try_join!(self.labels(texts, deadline), self.preprocess(image))?;
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

    fn rank(&self, image: &[f32], labels: &Labels, filter: ScoreFilter) -> Vec<Score> {
        rank(self.head, image, &labels.texts, &labels.embeddings, filter)
    }

    /// Embeds many images; each is decoded in parallel on the CPU pool.
    pub async fn embed_images(
        &self,
        images: Vec<ImageInput>,
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
        let _admitted = self.admit(images.len())?;
        let started = Instant::now();
        let prepared = futures_util::future::try_join_all(images.into_iter().enumerate().map(
            |(i, img)| async move {
                self.preprocess(img)
                    .await
                    .map_err(|e| e.about(format!("image {i}")))
            },
        ))
        .await?;
        let preprocess = started.elapsed();
        let (embeddings, mut timings) = self
            .embed_pixels(prepared.into_iter().map(|(p, _)| p).collect(), deadline)
            .await?;
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
