//! One ModelInferRequest, answered: its inputs read (`tensors`), handed to the core of the model
//! it names, and every requested output written raw, in the order asked.
//!
//! The zero-shot model answers the whole images × texts matrix in label order. A requested
//! output with a `classification` count k (Triton's classification extension) is instead each
//! image's k best labels, best first, as BYTES `"value:index:label"`; the request's `top_k`
//! caps k, and with `threshold` a label below it is the empty string (every row keeps k entries,
//! so that the tensor stays rectangular).

use std::{
    sync::{Arc, Mutex, Weak},
    time::Instant,
};

use super::models::{self, Kind, EMBEDDING, LOGIT, TEXT};
use super::pb::{self, infer_parameter::ParameterChoice, model_infer_response::InferOutputTensor};
use super::tensors::{self, Expected, Parameters, BYTES, FP32};
use crate::error::{Error, Result};
use crate::infer::{Flow, ImageInput, Infer, Labels, Limits};
use crate::model::image::RawFormat;
use crate::model::scores::{sigmoid, ScoreFilter};
use crate::repository::Served;
use crate::telemetry;

/// The parameters each kind takes.
const ZERO_SHOT_PARAMETERS: [&str; 6] = [
    "threshold",
    "top_k",
    "image_format",
    "image_width",
    "image_height",
    "max_num_patches",
];
const IMAGE_PARAMETERS: [&str; 4] = [
    "image_format",
    "image_width",
    "image_height",
    "max_num_patches",
];

/// The label set a stream embedded last, and the model version that embedded it: a stream that
/// sends the same texts with every request embeds them once (with or without the server's text
/// cache). The version is held weakly: a stream must not keep a swapped-out version's weights
/// in memory (a weak reference also keeps its address from being reused by another).
#[derive(Default)]
pub(super) struct LastLabels(Mutex<Option<(Weak<Served>, Arc<Labels>)>>);

impl LastLabels {
    fn get(&self, served: &Arc<Served>, texts: &[String]) -> Option<Arc<Labels>> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(by, labels)| by.as_ptr() == Arc::as_ptr(served) && labels.texts == texts)
            .map(|(_, labels)| Arc::clone(labels))
    }

    fn put(&self, served: &Arc<Served>, labels: &Arc<Labels>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::downgrade(served), Arc::clone(labels)));
    }
}

/// How a request runs: as part of which flow (a stream's, or its own), until when, with which
/// label set remembered, and how large its answer may be.
pub(super) struct Context<'a> {
    pub(super) flow: Flow,
    pub(super) deadline: Option<Instant>,
    pub(super) last_labels: Option<&'a LastLabels>,
    /// `--max-message-bytes`: a classification answer (labels as text, per image) is held to it,
    /// as requests are.
    pub(super) max_answer_bytes: usize,
}

/// One output asked for, and how.
struct Requested {
    name: &'static str,
    /// Triton's classification extension: the k best labels as BYTES (0: the plain tensor).
    class_count: usize,
}

/// A request read and checked against model `kind` and the limits, before any model work.
pub struct Checked {
    requested: Vec<Requested>,
    filter: ScoreFilter,
    /// A NaFlex model's patch budget (`max_num_patches`; absent or 0: the model's default).
    max_patches: Option<u32>,
    /// IMAGE's elements (empty for the text-embedding model).
    pub images: Vec<ImageInput>,
    /// TEXT's elements (empty for the image-embedding model).
    pub texts: Vec<String>,
}

/// Reads `request`'s parameters, requested outputs and inputs (taking its input data) as
/// model `kind` takes them. Public for the fuzz target.
pub fn check(request: &mut pb::ModelInferRequest, kind: Kind, limits: &Limits) -> Result<Checked> {
    let known: &[&str] = match kind {
        Kind::ZeroShot => &ZERO_SHOT_PARAMETERS,
        Kind::ImageEmbedding => &IMAGE_PARAMETERS,
        Kind::TextEmbedding => &[],
    };
    let params = Parameters::new(&request.parameters, known)?;
    let requested = requested(request, kind)?;
    let filter = ScoreFilter::new(
        params.number("threshold")?.unwrap_or(0.0) as f32,
        params.count("top_k")?.unwrap_or(0) as usize,
    )?;
    let raw = raw_format(&params)?;
    let max_patches = match params.count("max_num_patches")? {
        None | Some(0) => None,
        Some(m) => Some(u32::try_from(m).map_err(|_| {
            Error::InvalidArgument(format!("parameter \"max_num_patches\" = {m} is too large"))
        })?),
    };
    let expected: Vec<Expected> = kind
        .inputs()
        .iter()
        .map(|&name| Expected {
            name,
            max_elements: match name {
                TEXT => limits.max_texts,
                _ => limits.max_images,
            },
        })
        .collect();
    let mut checked = Checked {
        requested,
        filter,
        max_patches,
        images: Vec::new(),
        texts: Vec::new(),
    };
    for (name, elements) in kind
        .inputs()
        .iter()
        .zip(tensors::bytes_inputs(request, &expected)?)
    {
        match *name {
            TEXT => checked.texts = tensors::texts(elements)?,
            _ => {
                checked.images = elements
                    .into_iter()
                    .map(|data| match raw {
                        None => ImageInput::Encoded(data),
                        Some((format, width, height)) => ImageInput::Raw {
                            width,
                            height,
                            format,
                            data,
                        },
                    })
                    .collect()
            }
        }
    }
    Ok(checked)
}

/// Answers `request` with `served`, which is model `kind`, echoing its model name and id.
pub(super) async fn infer(
    served: Arc<Served>,
    kind: Kind,
    mut request: pb::ModelInferRequest,
    context: Context<'_>,
) -> Result<pb::ModelInferResponse> {
    let infer = &served.infer;
    let Checked {
        requested,
        filter,
        max_patches,
        images,
        texts,
    } = check(&mut request, kind, infer.limits())?;
    // Refused before any label is embedded or image decoded.
    let prep = infer.preprocessing(max_patches)?;
    check_answer_size(&requested, images.len(), &texts, context.max_answer_bytes)?;
    let outputs: Vec<(InferOutputTensor, Vec<u8>)> = match kind {
        Kind::ZeroShot => {
            let (labels, (embeddings, _)) = tokio::try_join!(
                labels(&served, texts, &context),
                infer.embed_images_in(images, &prep, context.flow, context.deadline),
            )?;
            let scores = Scores {
                logits: infer.logits(&embeddings, &labels),
                labels: &labels.texts,
            };
            requested
                .iter()
                .map(|r| scores_output(r, &scores, filter))
                .collect()
        }
        Kind::ImageEmbedding => {
            let (embeddings, _) = infer
                .embed_images_in(images, &prep, context.flow, context.deadline)
                .await?;
            let shape = vec![embeddings.len() as i64, embedding_dim(infer)];
            let data = tensors::fp32_bytes(embeddings.rows().flatten().copied());
            vec![(output(EMBEDDING, FP32, shape), data)]
        }
        Kind::TextEmbedding => {
            let labels = labels(&served, texts, &context).await?;
            let shape = vec![labels.texts.len() as i64, embedding_dim(infer)];
            let data = tensors::fp32_bytes(labels.embeddings.rows().flatten().copied());
            vec![(output(EMBEDDING, FP32, shape), data)]
        }
    };
    let (outputs, raw_output_contents) = outputs.into_iter().unzip();
    Ok(pb::ModelInferResponse {
        model_name: request.model_name,
        model_version: models::VERSION.into(),
        id: request.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    })
}

fn embedding_dim(infer: &Infer) -> i64 {
    infer.manifest().embedding_dim as i64
}

/// The label set of `texts`: the stream's last one when it is the same, else embedded (and
/// remembered for the stream).
async fn labels(
    served: &Arc<Served>,
    texts: Vec<String>,
    context: &Context<'_>,
) -> Result<Arc<Labels>> {
    telemetry::record_texts(texts.len());
    if let Some(labels) = context.last_labels.and_then(|l| l.get(served, &texts)) {
        return Ok(labels);
    }
    let (labels, _) = served.infer.labels(texts, context.deadline).await?;
    let labels = Arc::new(labels);
    if let Some(last) = context.last_labels {
        last.put(served, &labels);
    }
    Ok(labels)
}

/// The outputs asked for, in the order asked (every output of the model when none is named).
fn requested(request: &pb::ModelInferRequest, kind: Kind) -> Result<Vec<Requested>> {
    if request.outputs.is_empty() {
        return Ok(kind
            .outputs()
            .iter()
            .map(|&name| Requested {
                name,
                class_count: 0,
            })
            .collect());
    }
    request
        .outputs
        .iter()
        .enumerate()
        .map(|(i, asked)| {
            let name = *kind
                .outputs()
                .iter()
                .find(|&&o| o == asked.name)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown output {:?}: this model gives {}",
                        asked.name,
                        kind.outputs().join(" and ")
                    ))
                })?;
            if request.outputs[..i].iter().any(|o| o.name == asked.name) {
                return Err(Error::InvalidArgument(format!(
                    "output {name:?} is requested twice"
                )));
            }
            let mut class_count = 0;
            for (key, value) in &asked.parameters {
                match (key.as_str(), &value.parameter_choice) {
                    ("classification", Some(ParameterChoice::Int64Param(k))) if *k >= 0 => {
                        class_count = *k as usize
                    }
                    ("classification", _) => {
                        return Err(Error::InvalidArgument(format!(
                            "output {name:?}: classification must be a non-negative int64 (a class count)"
                        )))
                    }
                    (key, _) if key.starts_with("triton_") || key == "binary_data" => {}
                    (key, _) => {
                        return Err(Error::InvalidArgument(format!(
                            "output {name:?}: unknown parameter {key:?} (outputs take classification)"
                        )))
                    }
                }
            }
            if class_count > 0 && kind != Kind::ZeroShot {
                return Err(Error::InvalidArgument(format!(
                    "output {name:?}: classification applies to the zero-shot model's \
                     PROBABILITY and LOGIT"
                )));
            }
            Ok(Requested { name, class_count })
        })
        .collect()
}

/// `image_format` ("encoded", the default; "rgb8" or "rgba8" with `image_width` and
/// `image_height`): how IMAGE's elements are to be read.
fn raw_format(params: &Parameters) -> Result<Option<(RawFormat, u32, u32)>> {
    let format = match params.string("image_format")? {
        None | Some("encoded") => None,
        Some("rgb8") => Some(RawFormat::Rgb8),
        Some("rgba8") => Some(RawFormat::Rgba8),
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "image_format {other:?} is not supported: use encoded (the default), rgb8 or rgba8"
            )))
        }
    };
    let side = |name: &str| -> Result<Option<u32>> {
        params
            .count(name)?
            .map(|v| {
                u32::try_from(v).map_err(|_| {
                    Error::InvalidArgument(format!("parameter {name:?} is too large ({v})"))
                })
            })
            .transpose()
    };
    let (width, height) = (side("image_width")?, side("image_height")?);
    match (format, width, height) {
        (None, None, None) => Ok(None),
        (Some(format), Some(width), Some(height)) => Ok(Some((format, width, height))),
        (None, _, _) => Err(Error::InvalidArgument(
            "image_width and image_height describe raw frames: set image_format to rgb8 or rgba8"
                .into(),
        )),
        (Some(_), _, _) => Err(Error::InvalidArgument(
            "raw frames (image_format rgb8 or rgba8) need image_width and image_height".into(),
        )),
    }
}

fn output(name: &str, datatype: &str, shape: Vec<i64>) -> InferOutputTensor {
    InferOutputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    }
}

/// The zero-shot model's answer before it is written: every image's logit for every label.
struct Scores<'a> {
    /// Images × labels, row-major, in label order.
    logits: Vec<f32>,
    labels: &'a [String],
}

impl Scores<'_> {
    fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.logits.chunks(self.labels.len().max(1))
    }
}

/// Refuses a request whose classification outputs could be larger than a request may be: a
/// few bytes of images and labels reused from the cache must not buy an answer of many
/// megabytes (each of k entries per image carries its label).
fn check_answer_size(
    requested: &[Requested],
    images: usize,
    texts: &[String],
    max: usize,
) -> Result<()> {
    let longest = texts.iter().map(String::len).max().unwrap_or(0);
    // A value, an index and two colons fit in 64 bytes; 4 more frame each entry.
    let entry = longest + 64 + 4;
    let bytes: usize = requested
        .iter()
        .map(|r| images * r.class_count.min(texts.len()) * entry)
        .sum();
    if bytes > max {
        return Err(Error::InvalidArgument(format!(
            "the classification outputs could take {bytes} bytes ({images} images × class_count \
             entries of up to {entry} bytes), over --max-message-bytes ({max}): ask for a \
             smaller class_count, or send fewer images or shorter labels per request"
        )));
    }
    Ok(())
}

/// PROBABILITY or LOGIT of every image against every label, as FP32 images × texts, or with a
/// class count as each image's best labels.
fn scores_output(
    requested: &Requested,
    scores: &Scores,
    filter: ScoreFilter,
) -> (InferOutputTensor, Vec<u8>) {
    let value = |logit: f32| match requested.name {
        LOGIT => logit,
        _ => sigmoid(logit),
    };
    let images = scores.rows().count() as i64;
    let labels = scores.labels.len();
    if requested.class_count == 0 {
        let shape = vec![images, labels as i64];
        let data = tensors::fp32_bytes(scores.logits.iter().map(|&l| value(l)));
        return (output(requested.name, FP32, shape), data);
    }
    let mut k = requested.class_count.min(labels);
    if filter.top_k > 0 {
        k = k.min(filter.top_k);
    }
    let mut elements: Vec<Vec<u8>> = Vec::new();
    for row in scores.rows() {
        // Best first (ties in label order); the threshold is the probability's, whichever
        // output this is.
        let mut best: Vec<usize> = (0..row.len()).collect();
        best.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        elements.extend(
            best[..k]
                .iter()
                .map(|&i| match sigmoid(row[i]) >= filter.threshold {
                    true => format!("{}:{}:{}", value(row[i]), i, scores.labels[i]).into_bytes(),
                    false => Vec::new(),
                }),
        );
    }
    let shape = vec![images, k as i64];
    let data = tensors::join_bytes(elements.iter().map(Vec::as_slice));
    (output(requested.name, BYTES, shape), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::oip::models::PROBABILITY;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("label {i}")).collect()
    }

    #[test]
    fn classification_gives_the_best_labels_as_value_index_label() {
        let texts = labels(3);
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let scores = Scores {
            logits: vec![logit(0.2), logit(0.9), logit(0.5)],
            labels: &texts,
        };
        let asked = Requested {
            name: PROBABILITY,
            class_count: 2,
        };
        let (tensor, data) = scores_output(&asked, &scores, ScoreFilter::default());
        assert_eq!(tensor.datatype, BYTES);
        assert_eq!(tensor.shape, vec![1, 2]);
        let elements = tensors::split_bytes(&data, 2).unwrap();
        let parsed: Vec<(f32, &str)> = elements
            .iter()
            .map(|e| {
                let e = std::str::from_utf8(e).unwrap();
                let (value, rest) = e.split_once(':').unwrap();
                (value.parse().unwrap(), rest)
            })
            .collect();
        assert!((parsed[0].0 - 0.9).abs() < 1e-6 && parsed[0].1 == "1:label 1");
        assert!((parsed[1].0 - 0.5).abs() < 1e-6 && parsed[1].1 == "2:label 2");
        // top_k caps the count, and a label under the threshold is empty.
        let filter = ScoreFilter::new(0.6, 5).unwrap();
        let asked = Requested {
            name: LOGIT,
            class_count: 3,
        };
        let (tensor, data) = scores_output(&asked, &scores, filter);
        assert_eq!(tensor.shape, vec![1, 3]);
        let elements = tensors::split_bytes(&data, 3).unwrap();
        assert_eq!(
            elements,
            [format!("{}:1:label 1", logit(0.9)).as_bytes(), b"", b""]
        );
    }

    #[test]
    fn plain_scores_are_images_by_texts_in_label_order() {
        let texts = labels(2);
        let scores = Scores {
            logits: vec![0.0, 1.0, -1.0, 2.0],
            labels: &texts,
        };
        let asked = |name| Requested {
            name,
            class_count: 0,
        };
        let (tensor, data) = scores_output(&asked(LOGIT), &scores, ScoreFilter::default());
        assert_eq!((tensor.datatype.as_str(), tensor.shape), (FP32, vec![2, 2]));
        assert_eq!(data, tensors::fp32_bytes([0.0, 1.0, -1.0, 2.0]));
        let (_, data) = scores_output(&asked(PROBABILITY), &scores, ScoreFilter::default());
        assert_eq!(
            data,
            tensors::fp32_bytes([0.0, 1.0, -1.0, 2.0].map(sigmoid))
        );
    }

    #[test]
    fn a_classification_answer_larger_than_a_request_may_be_is_refused() {
        let texts: Vec<String> = (0..256).map(|i| format!("{i:02048}")).collect();
        let all = [Requested {
            name: PROBABILITY,
            class_count: 256,
        }];
        let refused = check_answer_size(&all, 64, &texts, 4 << 20).unwrap_err();
        assert!(
            refused.to_string().contains("--max-message-bytes"),
            "{refused}"
        );
        let few = [Requested {
            name: PROBABILITY,
            class_count: 3,
        }];
        assert!(check_answer_size(&few, 64, &texts, 4 << 20).is_ok());
        let plain = [Requested {
            name: PROBABILITY,
            class_count: 0,
        }];
        assert!(check_answer_size(&plain, 64, &texts, 4 << 20).is_ok());
    }
}
