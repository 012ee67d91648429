//! The repository's models as the protocol sees them: three per model, each with its tensors,
//! metadata and configuration.
//!
//! Model `M` of the repository is `M-zero-shot`, `M-image-embedding` and `M-text-embedding`;
//! the default model's three are also `zero-shot`, `image-embedding` and `text-embedding`. Each
//! has one version, "1": the version of `M` serving now (a hot swap changes what answers, not
//! the name).

use std::{collections::HashMap, sync::Arc};

use tonic::Status;

use super::pb::{self, model_metadata_response::TensorMetadata};
use super::tensors::{BYTES, FP32};
use crate::grpc::api::Lifecycle;
use crate::repository::Served;

/// The one version each model has.
pub(super) const VERSION: &str = "1";
/// `platform` in metadata and configuration, and the KServe model format.
pub(super) const PLATFORM: &str = "siglip";

pub(super) const IMAGE: &str = "IMAGE";
pub(super) const TEXT: &str = "TEXT";
pub(super) const PROBABILITY: &str = "PROBABILITY";
pub(super) const LOGIT: &str = "LOGIT";
pub(super) const EMBEDDING: &str = "EMBEDDING";

/// What an OIP model does with the repository model behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `IMAGE` and `TEXT` in; `PROBABILITY` and `LOGIT`, images × texts, out.
    ZeroShot,
    /// `IMAGE` in; `EMBEDDING`, images × D, out.
    ImageEmbedding,
    /// `TEXT` in; `EMBEDDING`, texts × D, out.
    TextEmbedding,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::ZeroShot, Kind::ImageEmbedding, Kind::TextEmbedding];

    pub(super) fn suffix(self) -> &'static str {
        match self {
            Kind::ZeroShot => "zero-shot",
            Kind::ImageEmbedding => "image-embedding",
            Kind::TextEmbedding => "text-embedding",
        }
    }

    pub(super) fn inputs(self) -> &'static [&'static str] {
        match self {
            Kind::ZeroShot => &[IMAGE, TEXT],
            Kind::ImageEmbedding => &[IMAGE],
            Kind::TextEmbedding => &[TEXT],
        }
    }

    /// Outputs in the order an answer lists them when the request names none.
    pub(super) fn outputs(self) -> &'static [&'static str] {
        match self {
            Kind::ZeroShot => &[PROBABILITY, LOGIT],
            Kind::ImageEmbedding | Kind::TextEmbedding => &[EMBEDDING],
        }
    }

    /// The shape of every output: -1 for what varies by request, D for an embedding's width.
    fn output_dims(self, embedding_dim: usize) -> Vec<i64> {
        match self {
            Kind::ZeroShot => vec![-1, -1],
            _ => vec![-1, embedding_dim as i64],
        }
    }
}

/// An OIP model name split into the repository model ("" for the default) and its kind; None
/// when it is none of this server's names.
pub(super) fn parse(name: &str) -> Option<(&str, Kind)> {
    Kind::ALL.into_iter().find_map(|kind| {
        let suffix = kind.suffix();
        if name == suffix {
            return Some(("", kind));
        }
        let model = name.strip_suffix(suffix)?.strip_suffix('-')?;
        (!model.is_empty()).then_some((model, kind))
    })
}

/// The version of the model behind OIP model `name` that answers now, with the model's kind.
/// Errors as Triton words them: an unknown model is INVALID_ARGUMENT, an unknown version
/// NOT_FOUND, a model not ready UNAVAILABLE.
pub(super) fn resolve(
    lifecycle: &Lifecycle,
    name: &str,
    version: &str,
) -> Result<(Arc<Served>, Kind), Status> {
    let unknown = || {
        Status::invalid_argument(format!(
            "Request for unknown model: '{name}' is not found (this server's models are \
             <model>-zero-shot, <model>-image-embedding and <model>-text-embedding for each \
             model of its repository)"
        ))
    };
    let (model, kind) = parse(name).ok_or_else(unknown)?;
    // Whether the model exists first (the label is empty for a name the repository does not
    // have, and for a bare name on a server with no default model), then the version, then
    // whether it serves: Triton's order.
    if lifecycle.label(model).is_empty() {
        return Err(match model {
            "" => Status::invalid_argument(format!(
                "Request for unknown model: '{name}' is not found (this server has several \
                 models and no --default-model: name one, as <model>-{})",
                kind.suffix()
            )),
            _ => unknown(),
        });
    }
    if !version.is_empty() && version != VERSION {
        return Err(Status::not_found(format!(
            "Request for unknown model: '{name}' version {version} is not found (each model has \
             one version, {VERSION}: the one serving now)"
        )));
    }
    let served = match lifecycle.model(model) {
        // Removed since the label was read.
        Err(status) if status.code() == tonic::Code::NotFound => return Err(unknown()),
        other => other?,
    };
    Ok((served, kind))
}

/// The repository model's name for a call's metrics.
pub(super) fn label(lifecycle: &Lifecycle, name: &str) -> String {
    parse(name)
        .map(|(model, _)| lifecycle.label(model))
        .unwrap_or_default()
}

fn tensor(name: &str, datatype: &str, shape: Vec<i64>) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    }
}

pub(super) fn metadata(name: &str, served: &Served, kind: Kind) -> pb::ModelMetadataResponse {
    let dims = kind.output_dims(served.infer.manifest().embedding_dim);
    pb::ModelMetadataResponse {
        name: name.into(),
        versions: vec![VERSION.into()],
        platform: PLATFORM.into(),
        inputs: kind
            .inputs()
            .iter()
            .map(|input| tensor(input, BYTES, vec![-1]))
            .collect(),
        outputs: kind
            .outputs()
            .iter()
            .map(|output| tensor(output, FP32, dims.clone()))
            .collect(),
    }
}

/// The configuration tools read: `max_batch_size` 0 (the first dimension is the request's own,
/// not a batch dimension Triton would add), not decoupled (one response per request), and the
/// model's facts as parameters.
pub(super) fn config(name: &str, served: &Served, kind: Kind) -> pb::ModelConfig {
    let infer = &served.infer;
    let manifest = infer.manifest();
    let dims = kind.output_dims(manifest.embedding_dim);
    let facts = [
        ("model", infer.name().to_string()),
        ("model_id", manifest.model_id.clone()),
        ("embedding_dim", manifest.embedding_dim.to_string()),
        ("image_size", manifest.image.size.to_string()),
        ("device", served.on.device.clone()),
        ("dtype", served.on.dtype.name().to_string()),
        ("image_convention", infer.convention().name().to_string()),
        ("image_processor", infer.processor().name().to_string()),
        ("architecture", manifest.architecture.clone()),
    ]
    .into_iter()
    .chain(manifest.image.naflex.iter().flat_map(|n| {
        let budgets: Vec<String> = n.max_num_patches.iter().map(u32::to_string).collect();
        [
            ("patch_size", n.patch_size.to_string()),
            ("max_num_patches", budgets.join(",")),
            (
                "default_max_num_patches",
                n.default_max_num_patches.to_string(),
            ),
        ]
    }));
    pb::ModelConfig {
        name: name.into(),
        platform: PLATFORM.into(),
        backend: PLATFORM.into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::Latest(
                pb::model_version_policy::Latest { num_versions: 1 },
            )),
        }),
        max_batch_size: 0,
        input: kind
            .inputs()
            .iter()
            .map(|input| pb::ModelInput {
                name: input.to_string(),
                data_type: pb::DataType::TypeString.into(),
                dims: vec![-1],
                ..Default::default()
            })
            .collect(),
        output: kind
            .outputs()
            .iter()
            .map(|output| pb::ModelOutput {
                name: output.to_string(),
                data_type: pb::DataType::TypeFp32.into(),
                dims: dims.clone(),
                ..Default::default()
            })
            .collect(),
        model_transaction_policy: Some(pb::ModelTransactionPolicy { decoupled: false }),
        parameters: facts
            .map(|(k, v)| (k.to_string(), pb::ModelParameter { string_value: v }))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_model_and_kind() {
        assert_eq!(parse("zero-shot"), Some(("", Kind::ZeroShot)));
        assert_eq!(parse("text-embedding"), Some(("", Kind::TextEmbedding)));
        assert_eq!(
            parse("base-224-image-embedding"),
            Some(("base-224", Kind::ImageEmbedding))
        );
        // A model whose own name ends like a kind keeps it.
        assert_eq!(
            parse("zero-shot-zero-shot"),
            Some(("zero-shot", Kind::ZeroShot))
        );
        for bad in [
            "",
            "base-224",
            "-zero-shot",
            "base-224zero-shot",
            "zero-shot-",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
