//! Tensors on the wire: BYTES inputs, framed in `raw_input_contents` or listed in
//! `contents.bytes_contents`; outputs, always raw; and the `parameters` maps.
//!
//! Public for the fuzz target (`fuzz/fuzz_targets/request.rs`), which feeds it arbitrary
//! requests the way ModelInfer does before the model.
//!
//! Every count is checked before anything is allocated for it: a request's shape says how many
//! elements it carries, and that number is held to the model's limit (`--max-images`,
//! `--max-texts`) before the buffer is split.

use std::collections::HashMap;

use super::pb::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor, InferParameter,
    InferTensorContents, ModelInferRequest,
};
use crate::error::{Error, Result};

/// The datatype of every input of this server's models.
pub const BYTES: &str = "BYTES";
pub const FP32: &str = "FP32";

/// Request parameters that Triton and tritonclient reserve (and any name starting with
/// `triton_`): accepted and ignored, so that their clients and tools work unchanged.
const RESERVED: [&str; 7] = [
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "headers",
    "binary_data_output",
];

/// Splits `buffer` into `count` BYTES elements, each a 4-byte little-endian length and then that
/// many bytes (tritonclient's `serialize_byte_tensor`). The buffer must hold exactly `count`
/// elements: a length that runs past the end, or bytes left over, is refused.
pub fn split_bytes(buffer: &[u8], count: usize) -> std::result::Result<Vec<&[u8]>, String> {
    // Each element takes at least its 4-byte length: more than that cannot be in the buffer.
    if count > buffer.len() / 4 {
        return Err(format!(
            "the shape says {count} elements, but {} bytes hold at most {} (each has a 4-byte length)",
            buffer.len(),
            buffer.len() / 4
        ));
    }
    let mut elements = Vec::with_capacity(count);
    let mut rest = buffer;
    for i in 0..count {
        let Some((length, after)) = rest.split_first_chunk::<4>() else {
            return Err(format!(
                "element {i} of {count}: {} bytes left, too few for its 4-byte length",
                rest.len()
            ));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > after.len() {
            return Err(format!(
                "element {i} of {count}: its length prefix says {length} bytes, but only {} are left",
                after.len()
            ));
        }
        let (element, after) = after.split_at(length);
        elements.push(element);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes left over after the {count} elements the shape declares",
            rest.len()
        ));
    }
    Ok(elements)
}

/// `elements` framed as BYTES (the inverse of [`split_bytes`]).
pub fn join_bytes<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// FP32 values as raw little-endian bytes.
pub fn fp32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// One BYTES input of a request, checked against what the model expects.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub name: &'static str,
    /// Most elements accepted (the model's `--max-images` or `--max-texts`).
    pub max_elements: usize,
}

/// The BYTES inputs of `request`, in `expected` order, each as its elements. Every input the
/// model takes must be there, once, with datatype BYTES and a shape of one dimension; its data
/// comes either from `raw_input_contents` (then for every input) or from
/// `contents.bytes_contents` (then for none).
pub fn bytes_inputs(
    request: &mut ModelInferRequest,
    expected: &[Expected],
) -> Result<Vec<Vec<Vec<u8>>>> {
    let raw = std::mem::take(&mut request.raw_input_contents);
    if !raw.is_empty() {
        if request
            .inputs
            .iter()
            .any(|i| has_contents(i.contents.as_ref()))
        {
            return Err(invalid(
                "the request mixes raw_input_contents with typed contents: send every input one way",
            ));
        }
        if raw.len() != request.inputs.len() {
            return Err(invalid(format!(
                "raw_input_contents has {} entries for {} inputs: send one per input, in order",
                raw.len(),
                request.inputs.len()
            )));
        }
    }
    for (i, input) in request.inputs.iter().enumerate() {
        if request.inputs[..i].iter().any(|e| e.name == input.name) {
            return Err(invalid(format!("input {:?} is given twice", input.name)));
        }
        if !expected.iter().any(|e| e.name == input.name) {
            return Err(invalid(format!(
                "unknown input {:?}: this model takes {}",
                input.name,
                names(expected)
            )));
        }
    }
    let mut raw: Vec<Option<Vec<u8>>> = raw.into_iter().map(Some).collect();
    expected
        .iter()
        .map(|want| {
            let at = request
                .inputs
                .iter()
                .position(|i| i.name == want.name)
                .ok_or_else(|| {
                    invalid(format!(
                        "input {:?} is missing: this model takes {}",
                        want.name,
                        names(expected)
                    ))
                })?;
            let input = &mut request.inputs[at];
            let count = element_count(input, want)?;
            match raw.get_mut(at).and_then(Option::take) {
                Some(buffer) => Ok(split_bytes(&buffer, count)
                    .map_err(|e| invalid(format!("input {:?}: {e}", want.name)))?
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect()),
                None => listed(input, count),
            }
        })
        .collect()
}

/// The number of elements `input`'s shape declares, within the model's limit.
fn element_count(input: &InferInputTensor, want: &Expected) -> Result<usize> {
    // tritonclient sets an input's parameters only for shared memory, which this server does
    // not have: say so, rather than that the data is missing.
    if let Some(key) = input.parameters.keys().find(|k| !k.starts_with("triton_")) {
        return Err(invalid(format!(
            "input {:?}: parameter {key:?} is not supported (shared memory is not: send the \
             data in the request)",
            input.name
        )));
    }
    if input.datatype != BYTES {
        return Err(invalid(format!(
            "input {:?} has datatype {:?}: this model takes BYTES (encoded images, or texts as UTF-8)",
            input.name, input.datatype
        )));
    }
    let [count] = input.shape[..] else {
        return Err(invalid(format!(
            "input {:?} has shape {:?}: this model takes one dimension, [-1] (max_batch_size is 0)",
            input.name, input.shape
        )));
    };
    let count = usize::try_from(count).map_err(|_| {
        invalid(format!(
            "input {:?} has a negative dimension ({count})",
            input.name
        ))
    })?;
    if count > want.max_elements {
        return Err(invalid(format!(
            "input {:?} has {count} elements, over the limit of {} per request ({})",
            input.name,
            want.max_elements,
            match want.name {
                "TEXT" => "--max-texts",
                _ => "--max-images",
            }
        )));
    }
    Ok(count)
}

/// A typed-contents input: BYTES elements are `bytes_contents`, one per element.
fn listed(input: &mut InferInputTensor, count: usize) -> Result<Vec<Vec<u8>>> {
    let mut typed = input.contents.take().unwrap_or_default();
    let bytes_contents = std::mem::take(&mut typed.bytes_contents);
    if has_contents(Some(&typed)) {
        return Err(invalid(format!(
            "input {:?}: a BYTES tensor's contents go in bytes_contents",
            input.name
        )));
    }
    if bytes_contents.len() != count {
        return Err(invalid(format!(
            "input {:?}: the shape says {count} elements, bytes_contents has {} (or send \
             raw_input_contents)",
            input.name,
            bytes_contents.len()
        )));
    }
    Ok(bytes_contents)
}

fn has_contents(contents: Option<&InferTensorContents>) -> bool {
    contents.is_some_and(|c| {
        !(c.bool_contents.is_empty()
            && c.int_contents.is_empty()
            && c.int64_contents.is_empty()
            && c.uint_contents.is_empty()
            && c.uint64_contents.is_empty()
            && c.fp32_contents.is_empty()
            && c.fp64_contents.is_empty()
            && c.bytes_contents.is_empty())
    })
}

fn names(expected: &[Expected]) -> String {
    expected
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Texts as UTF-8 strings.
pub fn texts(elements: Vec<Vec<u8>>) -> Result<Vec<String>> {
    elements
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            String::from_utf8(e)
                .map_err(|_| invalid(format!("input \"TEXT\": element {i} is not UTF-8")))
        })
        .collect()
}

/// A request's own parameters, by name, once Triton's reserved ones are set aside. Each name
/// may be one this server knows (`known`); any other is refused, so that a misspelt option is
/// not silently ignored.
pub struct Parameters<'a> {
    params: &'a HashMap<String, InferParameter>,
}

impl<'a> Parameters<'a> {
    pub fn new(params: &'a HashMap<String, InferParameter>, known: &[&str]) -> Result<Self> {
        for name in params.keys() {
            if RESERVED.contains(&name.as_str()) || name.starts_with("triton_") {
                continue;
            }
            if !known.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "unknown parameter {name:?}: this model takes {}",
                    match known {
                        [] => "none".to_string(),
                        known => known.join(", "),
                    }
                )));
            }
        }
        Ok(Self { params })
    }

    fn get(&self, name: &str) -> Option<&'a ParameterChoice> {
        self.params.get(name)?.parameter_choice.as_ref()
    }

    /// A number (double or integer).
    pub fn number(&self, name: &str) -> Result<Option<f64>> {
        Ok(match self.get(name) {
            None => None,
            Some(ParameterChoice::DoubleParam(v)) => Some(*v),
            Some(ParameterChoice::Int64Param(v)) => Some(*v as f64),
            Some(ParameterChoice::Uint64Param(v)) => Some(*v as f64),
            Some(_) => return Err(invalid(format!("parameter {name:?} must be a number"))),
        })
    }

    /// A count: a non-negative integer.
    pub fn count(&self, name: &str) -> Result<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
            Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(_) => Err(invalid(format!(
                "parameter {name:?} must be a non-negative integer"
            ))),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<&'a str>> {
        match self
            .params
            .get(name)
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => Ok(None),
            Some(ParameterChoice::StringParam(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("parameter {name:?} must be a string"))),
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::oip::pb::model_infer_request::InferInputTensor;

    fn framed(elements: &[&[u8]]) -> Vec<u8> {
        join_bytes(elements.iter().copied())
    }

    #[test]
    fn bytes_framing_round_trips_at_every_length() {
        for elements in [
            vec![],
            vec![&b""[..]],
            vec![&b"a"[..], &b""[..], &b"hello"[..]],
            vec![&[0u8; 300][..]],
        ] {
            let buffer = framed(&elements);
            assert_eq!(split_bytes(&buffer, elements.len()).unwrap(), elements);
        }
    }

    #[test]
    fn every_cut_of_a_framed_buffer_is_refused() {
        let buffer = framed(&[b"abc", b"", b"defgh"]);
        // Cut anywhere (inside a length, inside an element, between them): never accepted as
        // three elements, never a panic.
        for cut in 0..buffer.len() {
            let err = split_bytes(&buffer[..cut], 3).unwrap_err();
            assert!(
                err.contains("element") || err.contains("at most"),
                "{cut}: {err}"
            );
        }
        assert!(split_bytes(&buffer, 3).is_ok());
        // One element too many or too few for the shape.
        assert!(split_bytes(&buffer, 2).unwrap_err().contains("left over"));
        assert!(split_bytes(&buffer, 4).is_err());
    }

    #[test]
    fn a_length_prefix_past_the_buffer_is_refused() {
        let mut buffer = framed(&[b"abc"]);
        buffer[0] = 4;
        assert!(split_bytes(&buffer, 1)
            .unwrap_err()
            .contains("says 4 bytes"));
        let huge = u32::MAX.to_le_bytes();
        assert!(split_bytes(&huge, 1).unwrap_err().contains("only 0"));
        // A shape that claims more elements than the buffer can hold is refused before any
        // allocation for them.
        assert!(split_bytes(&[0; 8], usize::MAX)
            .unwrap_err()
            .contains("at most 2"));
    }

    fn input(
        name: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: BYTES.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    const TEXT: Expected = Expected {
        name: "TEXT",
        max_elements: 4,
    };
    const IMAGE: Expected = Expected {
        name: "IMAGE",
        max_elements: 2,
    };

    #[test]
    fn raw_and_listed_inputs_give_the_same_elements() {
        let mut raw = ModelInferRequest {
            inputs: vec![input("TEXT", vec![2], None), input("IMAGE", vec![1], None)],
            raw_input_contents: vec![framed(&[b"a cat", b"a dog"]), framed(&[b"jpeg"])],
            ..Default::default()
        };
        let listed_contents = |e: &[&[u8]]| InferTensorContents {
            bytes_contents: e.iter().map(|e| e.to_vec()).collect(),
            ..Default::default()
        };
        let mut listed = ModelInferRequest {
            inputs: vec![
                input("IMAGE", vec![1], Some(listed_contents(&[b"jpeg"]))),
                input(
                    "TEXT",
                    vec![2],
                    Some(listed_contents(&[b"a cat", b"a dog"])),
                ),
            ],
            ..Default::default()
        };
        let want = vec![
            vec![b"jpeg".to_vec()],
            vec![b"a cat".to_vec(), b"a dog".to_vec()],
        ];
        assert_eq!(bytes_inputs(&mut raw, &[IMAGE, TEXT]).unwrap(), want);
        assert_eq!(bytes_inputs(&mut listed, &[IMAGE, TEXT]).unwrap(), want);
    }

    fn refused(mut request: ModelInferRequest, expected: &[Expected], says: &str) {
        match bytes_inputs(&mut request, expected) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(says), "{m:?} lacks {says:?}"),
            other => panic!("expected INVALID_ARGUMENT with {says:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_inputs_are_refused_with_what_is_wrong() {
        let text = |shape, contents| ModelInferRequest {
            inputs: vec![input("TEXT", shape, contents)],
            ..Default::default()
        };
        let listed = Some(InferTensorContents {
            bytes_contents: vec![b"x".to_vec()],
            ..Default::default()
        });
        let mut mixed = text(vec![1], listed.clone());
        mixed.raw_input_contents = vec![framed(&[b"x"])];
        refused(mixed, &[TEXT], "mixes");
        refused(
            text(vec![2], listed.clone()),
            &[TEXT],
            "bytes_contents has 1",
        );
        refused(text(vec![1, 1], listed.clone()), &[TEXT], "one dimension");
        refused(text(vec![-1], listed.clone()), &[TEXT], "negative");
        refused(text(vec![5], None), &[TEXT], "--max-texts");
        refused(
            text(vec![1], listed.clone()),
            &[TEXT, IMAGE],
            "\"IMAGE\" is missing",
        );
        refused(text(vec![1], listed.clone()), &[IMAGE], "unknown input");
        let mut typed = text(vec![1], None);
        typed.inputs[0].contents = Some(InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        });
        refused(typed, &[TEXT], "bytes_contents");
        let mut fp32 = text(vec![1], listed.clone());
        fp32.inputs[0].datatype = FP32.into();
        refused(fp32, &[TEXT], "datatype");
        let mut twice = text(vec![1], listed.clone());
        twice.inputs.push(twice.inputs[0].clone());
        refused(twice, &[TEXT], "twice");
        let mut short = text(vec![1], None);
        short.raw_input_contents = vec![framed(&[b"x"]), framed(&[b"y"])];
        refused(short, &[TEXT], "2 entries for 1 inputs");
        let mut overrun = text(vec![1], None);
        overrun.raw_input_contents = vec![vec![9, 0, 0, 0, b'x']];
        refused(overrun, &[TEXT], "says 9 bytes");
    }

    #[test]
    fn texts_must_be_utf8() {
        assert_eq!(texts(vec![b"ok".to_vec()]).unwrap(), vec!["ok"]);
        assert!(texts(vec![b"ok".to_vec(), vec![0xff]]).is_err());
    }

    #[test]
    fn reserved_parameters_pass_and_unknown_ones_are_refused() {
        let p = |name: &str, choice| {
            HashMap::from([(
                name.to_string(),
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )])
        };
        for name in [
            "priority",
            "timeout",
            "sequence_id",
            "triton_enable_empty_final_response",
        ] {
            assert!(Parameters::new(&p(name, ParameterChoice::BoolParam(true)), &[]).is_ok());
        }
        assert!(Parameters::new(&p("topk", ParameterChoice::Int64Param(1)), &["top_k"]).is_err());
        let top = p("top_k", ParameterChoice::Int64Param(3));
        let params = Parameters::new(&top, &["top_k"]).unwrap();
        assert_eq!(params.count("top_k").unwrap(), Some(3));
        assert!(params.string("top_k").is_err());
        let negative = p("top_k", ParameterChoice::Int64Param(-1));
        assert!(Parameters::new(&negative, &["top_k"])
            .unwrap()
            .count("top_k")
            .is_err());
        let t = p("threshold", ParameterChoice::DoubleParam(0.25));
        let params = Parameters::new(&t, &["threshold"]).unwrap();
        assert_eq!(params.number("threshold").unwrap(), Some(0.25));
    }
}
