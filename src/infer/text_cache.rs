//! Text embeddings kept for label sets that come back.

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use ::metrics::{counter, gauge};
use lru::LruCache;

use crate::metrics;

/// Text embeddings by token ids: texts that tokenise alike (e.g. differ only in case or
/// punctuation the tokenizer drops) share one entry.
pub(super) struct TextCache {
    /// `None` when the cache is off.
    entries: Option<Mutex<Lru>>,
    /// The same embeddings by the label as written: a label set seen before is answered without
    /// tokenising, so it never waits behind other callers' tokenisation (a flood of new labels
    /// must not slow down the label sets everyone reuses).
    by_text: Option<Mutex<LruCache<String, Arc<[f32]>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// The model's name: the `model` label of the cache's metrics.
    model: Arc<str>,
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
    pub(super) fn new(capacity: usize, model: Arc<str>) -> Self {
        Self {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            by_text: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            model,
        }
    }

    pub(super) fn get(&self, ids: &[i64]) -> Option<Arc<[f32]>> {
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
    pub(super) fn get_written(&self, texts: &[String]) -> Option<Vec<Arc<[f32]>>> {
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
        counter!(name, "model" => Arc::clone(&self.model)).increment(texts as u64);
        counter.fetch_add(texts as u64, Ordering::Relaxed);
    }

    pub(super) fn put(&self, ids: Vec<i64>, embedding: Arc<[f32]>) {
        if let Some(entries) = &self.entries {
            let mut entries = entries.lock().expect("cache lock");
            entries.put(ids, embedding);
            gauge!(metrics::CACHE_ENTRIES, "model" => Arc::clone(&self.model))
                .set(entries.len() as f64);
        }
    }

    pub(super) fn put_written(&self, texts: &[String], embeddings: &[Arc<[f32]>]) {
        if let Some(by_text) = &self.by_text {
            let mut by_text = by_text.lock().expect("cache lock");
            for (text, embedding) in texts.iter().zip(embeddings) {
                by_text.put(text.clone(), Arc::clone(embedding));
            }
        }
    }

    pub(super) fn stats(&self) -> CacheStats {
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
