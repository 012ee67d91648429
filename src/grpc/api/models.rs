//! `GetModelInfo` and `ListModels`: what the repository's models are, where they run, and where
//! each stands.

use tonic::Status;

use super::{lifecycle::Lifecycle, pb};
use crate::repository::{Served, State};

/// The info of model `name` ("": the default), as it serves now.
pub(super) fn info(lifecycle: &Lifecycle, name: &str) -> Result<pb::ModelInfo, Status> {
    Ok(model_info(&*lifecycle.model(name)?))
}

pub(super) fn list(lifecycle: &Lifecycle) -> Result<pb::ListModelsResponse, Status> {
    let (models, default) = lifecycle.models()?.list();
    Ok(pb::ListModelsResponse {
        models: models
            .into_iter()
            .map(|m| {
                let (state, reason) = match m.state {
                    State::Loading => (pb::ModelState::Loading, String::new()),
                    State::Ready => (pb::ModelState::Ready, String::new()),
                    State::Failed(reason) => (pb::ModelState::Failed, reason),
                    State::Unloading => (pb::ModelState::Unloading, String::new()),
                };
                pb::ModelStatus {
                    name: m.name,
                    state: state.into(),
                    reason,
                    serving: m.serving.is_some(),
                    info: m.serving.as_deref().map(model_info),
                }
            })
            .collect(),
        default_model: default.unwrap_or_default(),
    })
}

fn model_info(served: &Served) -> pb::ModelInfo {
    let (infer, on) = (&served.infer, &served.on);
    let m = infer.manifest();
    let naflex = m.image.naflex.clone();
    pb::ModelInfo {
        name: infer.name().into(),
        model_id: m.model_id.clone(),
        architecture: m.architecture.clone(),
        image_size: m.image.size,
        embedding_dim: m.embedding_dim as u32,
        max_text_tokens: m.text.max_length as u32,
        device: on.device.clone(),
        dtype: on.dtype.name().into(),
        backend: on.backend.into(),
        image_convention: infer.convention().name().into(),
        image_processor: infer.processor().name().into(),
        random_weights: m.source.random_weights,
        server_version: env!("CARGO_PKG_VERSION").into(),
        revision: m.source.revision.clone().unwrap_or_default(),
        parameter_bytes: on.parameter_bytes,
        patch_size: naflex.as_ref().map_or(0, |n| n.patch_size),
        default_max_num_patches: naflex.as_ref().map_or(0, |n| n.default_max_num_patches),
        max_num_patches: naflex.map(|n| n.max_num_patches).unwrap_or_default(),
    }
}
