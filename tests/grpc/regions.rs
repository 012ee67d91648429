//! Regions on a stream: each rectangle of a frame classified on its own and answered per
//! region, exact to the core's answer for the same crop (the parity tests tie that crop to
//! Pillow's), events kept per (region, label), and every bad region refused.

use siglip_serve::grpc::pb::{self, stream_request::Msg};
use siglip_serve::model::image::Transparency;
use tonic::Code;

use crate::common::{asset, decode_as_served, server::Server};
use crate::{
    assert_close, assert_status, by_index, encoded, labels, probabilities, stream_all, LABELS,
};

fn region(x: u32, y: u32, width: u32, height: u32) -> pb::Region {
    pb::Region {
        x,
        y,
        width,
        height,
    }
}

fn config_with(regions: Vec<pb::Region>, mode: pb::DeliveryMode) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Config(pb::StreamConfig {
            model: String::new(),
            texts: labels(),
            mode: mode as i32,
            regions,
            ..Default::default()
        })),
    }
}

fn frame_with(id: u64, image: &[u8], regions: Vec<pb::Region>) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: id,
            timestamp_us: id as i64 * 33_333,
            image: encoded(image.to_vec()),
            regions,
            ..Default::default()
        })),
    }
}

/// The core's probabilities for `r` cropped out of `image` decoded as the server does.
fn expected_crop(image: &[u8], r: &pb::Region) -> Vec<f32> {
    let rgb = decode_as_served(image, Transparency::Composite);
    let crop = image::imageops::crop_imm(&rgb, r.x, r.y, r.width, r.height).to_image();
    probabilities(crop, &labels())
}

#[tokio::test]
async fn each_region_is_answered_as_its_own_crop_from_the_config_or_the_frame() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    // 451x300 (chelsea): an inner box, the full frame, a 1x1, a strip, one at the corner.
    let cat = asset("chelsea_progressive.jpg");
    let config_regions = vec![
        region(100, 50, 200, 150),
        region(0, 0, 451, 300),
        region(450, 299, 1, 1),
    ];
    let frame_regions = vec![region(7, 0, 1, 300), region(227, 76, 224, 224)];
    for mode in [pb::DeliveryMode::EveryFrame, pb::DeliveryMode::LatestOnly] {
        let messages = vec![
            config_with(config_regions.clone(), mode),
            frame_with(0, &cat, vec![]),
            frame_with(1, &cat, frame_regions.clone()),
            frame_with(2, &cat, vec![]),
        ];
        let results = stream_all(&mut client, messages).await;
        for r in &results {
            assert!(r.error.is_none() && r.scores.is_empty(), "{r:?}");
            let want = if r.frame_id == 1 {
                &frame_regions
            } else {
                &config_regions
            };
            let got: Vec<pb::Region> = r.regions.iter().map(|a| a.region.unwrap()).collect();
            assert_eq!(&got, want, "frame {}", r.frame_id);
            for (i, area) in r.regions.iter().enumerate() {
                assert_eq!(area.index as usize, i);
                assert_eq!(area.scores.len(), LABELS.len());
                assert_close(
                    &by_index(&area.scores, LABELS.len()),
                    &expected_crop(&cat, &want[i]),
                );
            }
        }
    }
}

#[tokio::test]
async fn too_many_or_empty_regions_in_the_config_end_the_stream() {
    let server = Server::ready(&["--max-regions", "4"]).await;
    let mut client = server.client().await;
    for (regions, needle) in [
        (
            vec![region(0, 0, 1, 1); 5],
            "5 regions exceed the limit of 4 per frame (--max-regions)",
        ),
        (
            vec![region(0, 0, 1, 1), region(0, 0, 0, 40)],
            "region 1 is empty (0x40)",
        ),
    ] {
        let outcome: Vec<_> = futures_util::StreamExt::collect(
            client
                .stream(tokio_stream::iter(vec![config_with(
                    regions,
                    pb::DeliveryMode::EveryFrame,
                )]))
                .await
                .expect("stream opens")
                .into_inner(),
        )
        .await;
        let status = outcome.into_iter().find_map(Result::err).expect("refused");
        assert_status(needle, &status, Code::InvalidArgument, needle);
    }
}

/// A bad region list on a frame, or a config region outside a smaller frame, costs only that
/// frame: an in-band INVALID_ARGUMENT, and the stream goes on.
#[tokio::test]
async fn bad_regions_on_a_frame_get_an_in_band_error_and_the_stream_goes_on() {
    let server = Server::ready(&["--max-regions", "4"]).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg"); // 451x300
    let small = asset("astronaut_224.jpg");
    let messages = vec![
        config_with(
            vec![region(300, 200, 151, 100)],
            pb::DeliveryMode::EveryFrame,
        ),
        frame_with(0, &cat, vec![region(0, 0, 1, 1); 5]),
        frame_with(1, &cat, vec![region(0, 0, 5, 0)]),
        frame_with(2, &cat, vec![region(400, 0, 52, 10)]),
        frame_with(3, &cat, vec![region(u32::MAX, 0, 2, 10)]),
        frame_with(4, &small, vec![]),
        frame_with(5, &cat, vec![]),
    ];
    let results = stream_all(&mut client, messages).await;
    let ids: Vec<u64> = results.iter().map(|r| r.frame_id).collect();
    assert_eq!(ids, (0..6).collect::<Vec<_>>());
    let needles = [
        "5 regions exceed the limit of 4 per frame".to_string(),
        "region 0 is empty (5x0)".to_string(),
        "region 0 (x=400 y=0 52x10) reaches outside the 451x300 frame".to_string(),
        format!("region 0 (x={} y=0 2x10) reaches outside", u32::MAX),
        "region 0 (x=300 y=200 151x100) reaches outside the 224x224 frame".to_string(),
    ];
    for (r, needle) in results.iter().zip(&needles) {
        let error = r
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{needle}: {r:?}"));
        assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
        assert!(
            error.message.contains(needle.as_str()),
            "{error:?} lacks {needle}"
        );
        assert_eq!(r.dropped.unwrap().error, 0, "answered in-band, not dropped");
    }
    let last = &results[5];
    assert!(last.error.is_none() && last.regions.len() == 1, "{last:?}");
}

/// The parity suite's region cases (every image kind; inner, full-frame, 1x1, strip, 224x224 and
/// corner boxes), streamed one frame per file with its boxes as the frame's regions: every
/// region's probabilities within 1e-6 of transformers (`SiglipImageProcessorPil`) on Pillow's
/// crop, computed in this run (`make_parity_suite.py`).
#[tokio::test]
async fn every_region_case_of_the_parity_suite_matches_transformers_over_the_stream() {
    regions_match_transformers("regions-tiny-processor", &[]).await;
}

/// The same cases against transformers' torchvision backend (`SiglipImageProcessor`), served with
/// `--image-processor torchvision`: the full-frame boxes make it every suite image end to end.
#[tokio::test]
async fn every_region_case_matches_the_torchvision_processor_when_chosen() {
    regions_match_transformers(
        "regions-tiny-processor-torchvision",
        &["--image-processor", "torchvision"],
    )
    .await;
}

/// Streams the cases of the region reference `stem` (`.json` sidecar, `.safetensors` values) to
/// a server of the suite's region model started with `flags`, and holds every probability to
/// 1e-6 of the reference.
async fn regions_match_transformers(stem: &str, flags: &[&str]) {
    #[derive(serde::Deserialize)]
    struct Sidecar {
        images: Vec<std::path::PathBuf>,
        regions: Vec<siglip_serve::model::image::Region>,
        texts: Vec<String>,
    }
    let suite = crate::common::generated("SIGLIP_PARITY_SUITE");
    let dir = suite.parent().unwrap();
    // The model the reference was computed with, whatever model the other tests serve.
    let listed: siglip_serve::tools::parity::Suite =
        serde_json::from_slice(&std::fs::read(&suite).expect("suite")).expect("suite.json");
    let model = listed
        .regions
        .into_iter()
        .find(|check| check.reference == std::path::Path::new(&format!("{stem}.safetensors")))
        .unwrap_or_else(|| panic!("{stem} is not in the suite's regions"))
        .model_dir;
    let sidecar: Sidecar = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{stem}.json"))).expect("region sidecar"),
    )
    .expect("sidecar");
    let tensors = tch::Tensor::read_safetensors(dir.join(format!("{stem}.safetensors")))
        .expect("region reference");
    let probs = &tensors.iter().find(|(name, _)| name == "probs").unwrap().1;
    let want: Vec<Vec<f32>> = (0..sidecar.images.len() as i64)
        .map(|i| Vec::<f32>::try_from(probs.get(i)).unwrap())
        .collect();

    let server = Server::ready_model(&dir.join(model), flags, &[]).await;
    let mut client = server.client().await;
    let mut messages = vec![pb::StreamRequest {
        msg: Some(Msg::Config(pb::StreamConfig {
            model: String::new(),
            texts: sidecar.texts.clone(),
            mode: pb::DeliveryMode::EveryFrame as i32,
            ..Default::default()
        })),
    }];
    // Rows of one file are next to each other.
    let mut files: Vec<(std::path::PathBuf, Vec<usize>)> = vec![];
    for (row, path) in sidecar.images.iter().enumerate() {
        match files.last_mut() {
            Some((p, rows)) if p == path => rows.push(row),
            _ => files.push((path.clone(), vec![row])),
        }
    }
    for (id, (path, rows)) in files.iter().enumerate() {
        let regions = rows
            .iter()
            .map(|&r| {
                let b = sidecar.regions[r];
                region(b.x, b.y, b.width, b.height)
            })
            .collect();
        messages.push(pb::StreamRequest {
            msg: Some(Msg::Frame(pb::Frame {
                frame_id: id as u64,
                image: Some(image_message(path)),
                regions,
                ..Default::default()
            })),
        });
    }
    let results = stream_all(&mut client, messages).await;
    assert_eq!(results.len(), files.len());
    let mut worst = 0f32;
    for (r, (path, rows)) in results.iter().zip(&files) {
        assert!(r.error.is_none(), "{}: {:?}", path.display(), r.error);
        assert_eq!(r.regions.len(), rows.len());
        for (area, &row) in r.regions.iter().zip(rows) {
            let got = by_index(&area.scores, sidecar.texts.len());
            for (g, w) in got.iter().zip(&want[row]) {
                worst = worst.max((g - w).abs());
            }
        }
    }
    assert!(files.len() >= 12, "{} files", files.len());
    assert!(
        worst <= 1e-6,
        "{stem}: worst region probability difference {worst}"
    );
}

/// An asset as the stream sends it: raw frames (`*_WxH.rgba`) as RGBA8 pixels, others encoded.
fn image_message(path: &std::path::Path) -> pb::Image {
    let bytes = std::fs::read(path).expect("asset");
    let name = path.file_stem().unwrap().to_str().unwrap();
    let source = match path.extension().and_then(|e| e.to_str()) {
        Some("rgba") => {
            let size = name.rsplit('_').next().unwrap();
            let (w, h) = size.split_once('x').unwrap();
            pb::image::Source::Raw(pb::RawFrame {
                width: w.parse().unwrap(),
                height: h.parse().unwrap(),
                format: pb::PixelFormat::Rgba8 as i32,
                data: bytes,
            })
        }
        _ => pb::image::Source::Encoded(bytes),
    };
    pb::Image {
        source: Some(source),
    }
}
