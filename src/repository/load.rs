//! Loading one version of one model: its inference thread, which loads and warms the model, and
//! the core in front of it. Blocking (minutes for a large model on a CPU): run it off the async
//! threads.

use std::{sync::Arc, thread::JoinHandle};

use tokio::sync::watch;

use super::{source::ModelSource, Settings};
use crate::batch::{BatchConfig, Batcher, Devices, Site};
use crate::error::{Error, Result};
use crate::infer::{Infer, Shared};
use crate::model::{HostSide, Model, RunningOn};

/// A model version, loaded and warm.
pub(super) struct Loaded {
    pub(super) infer: Arc<Infer>,
    pub(super) on: RunningOn,
    /// The inference thread: it ends, and the model is freed, once the last handle to the core
    /// is gone.
    pub(super) worker: JoinHandle<()>,
    /// Its count of consecutive failed batches (`health`).
    pub(super) failures: watch::Receiver<u32>,
}

/// What every load needs besides the model: the settings, the budgets all cores share and the
/// devices' turns.
pub(super) struct Loader {
    pub(super) settings: Settings,
    pub(super) shared: Arc<Shared>,
    pub(super) devices: Arc<Devices>,
}

impl Loader {
    /// Loads `source` on its inference thread, once `admit` has taken the bytes its
    /// parameters will need on the device (`--max-model-bytes`; it refuses what would not fit).
    pub(super) fn load(
        &self,
        source: &ModelSource,
        admit: impl FnOnce(u64) -> Result<()>,
    ) -> Result<Loaded> {
        let options = source.load_options(&self.settings.load)?;
        if self.settings.max_model_bytes > 0 {
            admit(source.expected_bytes(&options)?)?;
        }
        let batch = self.settings.batch;
        let name = source.name.clone();
        let site = Site {
            model: name.as_str().into(),
            devices: Arc::clone(&self.devices),
        };
        let (batcher, (host, on), worker) = Batcher::load(
            site,
            move || Model::load(&options),
            move |model| setup(batch, &name, model),
        )?;
        let failures = batcher.consecutive_failures();
        let infer = Infer::new(&source.name, batcher, host, Arc::clone(&self.shared));
        Ok(Loaded {
            infer: Arc::new(infer),
            on,
            worker,
            failures,
        })
    }
}

/// Checks a loaded model against the flags and logs it; its batching, host side and where it runs.
fn setup(
    batch: BatchConfig,
    name: &str,
    model: &Model,
) -> Result<(BatchConfig, (HostSide, RunningOn))> {
    if let Some(max) = model.max_batch().filter(|&max| batch.max_batch_size > max) {
        return Err(Error::Model(format!(
            "--max-batch-size {} is more than the compiled vision tower accepts ({max}): lower it, \
             or compile again with `python -m siglip_export compile --max-batch {}`",
            batch.max_batch_size, batch.max_batch_size
        )));
    }
    let host = model.host_side();
    let on = model.running_on();
    let manifest = &host.manifest;
    tracing::info!(
        model = name,
        model_id = %manifest.model_id,
        random_weights = manifest.source.random_weights,
        architecture = %manifest.architecture,
        image_size = manifest.image.size,
        max_num_patches = ?manifest.image.naflex.as_ref().map(|n| &n.max_num_patches),
        device = %on.device,
        dtype = %on.dtype,
        backend = on.backend,
        parameter_bytes = on.parameter_bytes,
        max_batch_size = batch.max_batch_size,
        max_queue = batch.queue_capacity,
        "model loaded and warmed up"
    );
    if manifest.source.random_weights {
        tracing::warn!(
            model = name,
            "RANDOM WEIGHTS: this model was not trained; its probabilities are meaningless"
        );
    }
    let batching = BatchConfig {
        pipelined: model.runs_asynchronously(),
        ..batch
    };
    Ok((batching, (host, on)))
}
