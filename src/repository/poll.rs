//! Model control by polling (`--model-repository-poll-seconds`), as Triton's `--model-control-mode
//! poll`: the repository's folders are read every period, and what changed is applied while the
//! server serves.
//!
//! - A new folder is loaded and warmed up, then served.
//! - A changed folder (its manifest or `serve.json`) is loaded beside the version serving; new
//!   calls go to the new version once it is warm, and the old one is freed when the calls and
//!   streams on it are done. A stream moves to the new version with its next config.
//! - A removed folder is taken out of service (new calls get NOT_FOUND) and freed when its
//!   calls are done.
//! - A load that fails leaves the version serving as it is, and marks the model FAILED (one
//!   warning, and `siglip_model_load_failures_total`); it is tried again when the folder changes.

use std::{
    path::PathBuf,
    sync::{Arc, Weak},
    time::Duration,
};

use ::metrics::gauge;

use super::{source, Repository, State};
use crate::metrics;

/// Polls `root` every `every` until the repository is gone.
pub(super) async fn run(repository: Weak<Repository>, root: PathBuf, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let scan = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || source::scan(&root)).await
        };
        let Some(repository) = repository.upgrade() else {
            return;
        };
        match scan {
            Ok(Ok(found)) => repository.apply(found),
            // A repository that cannot be read (unmounted, permissions) changes nothing: the
            // models serving keep serving.
            Ok(Err(e)) => tracing::warn!("model repository not read: {e}"),
            Err(e) => tracing::warn!("model repository not read: {e}"),
        }
    }
}

impl Repository {
    /// Applies the folders found to the models: loads what is new or changed, unloads what is
    /// gone.
    fn apply(self: &Arc<Self>, found: std::collections::BTreeMap<String, source::ModelSource>) {
        let mut loads = Vec::new();
        let mut inner = self.lock();
        if inner.closing {
            return;
        }
        let gone: Vec<String> = inner
            .models
            .keys()
            .filter(|name| !found.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            let slot = inner.models.remove(&name).expect("listed above");
            tracing::info!(model = %name, "model folder removed: unloading it once its calls are done");
            inner.removed.push(name.clone());
            gauge!(metrics::MODEL_BYTES, "model" => name.clone()).set(0.0);
            if let Some(version) = slot.serving {
                inner.unloading.push(name.clone());
                let retiring = self.retire_version(&name, version);
                let repository = Arc::downgrade(self);
                inner.retiring.push(tokio::spawn(async move {
                    let _ = retiring.await;
                    if let Some(repository) = repository.upgrade() {
                        let mut inner = repository.lock();
                        if let Some(i) = inner.unloading.iter().position(|n| *n == name) {
                            inner.unloading.remove(i);
                        }
                        drop(inner);
                        repository.changed();
                    }
                }));
            }
        }
        for (name, source) in found {
            let next = inner.loads + 1;
            let slot = inner.models.entry(name.clone()).or_insert(super::Slot {
                state: State::Loading,
                // Differs from any folder's: the new folder gets loaded just below.
                fingerprint: source.fingerprint.wrapping_add(1),
                load: 0,
                refused_for_bytes: false,
                serving: None,
            });
            if slot.fingerprint != source.fingerprint {
                if !slot.refused_for_bytes {
                    tracing::info!(
                        model = %name,
                        serving = slot.serving.is_some(),
                        "model folder new or changed: loading it"
                    );
                }
                slot.fingerprint = source.fingerprint;
                slot.load = next;
                slot.state = State::Loading;
                inner.loads = next;
                loads.push((source, next));
            }
        }
        inner.retiring.retain(|task| !task.is_finished());
        drop(inner);
        self.changed();
        for (source, load) in loads {
            let repository = Arc::clone(self);
            // Its outcome is in the model's state (and the log): nothing to wait for here.
            tokio::spawn(async move { repository.load(source, load).await });
        }
    }
}
