//! GetModelInfo, EmbedText and EmbedImage.

use siglip_serve::grpc::pb;

use crate::common::{asset, server::Server};
use crate::{encoded, labels, model_info, LABELS};

#[tokio::test]
async fn model_info_describes_the_loaded_model() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let info = model_info(&mut client).await;
    let dir = crate::common::generated("SIGLIP_TEST_MODEL_DIR");
    let manifest = siglip_serve::model::manifest::Manifest::load(&dir).expect("manifest");
    assert_eq!(info.model_id, manifest.model_id);
    assert_eq!(info.image_convention, "processor");
    assert!(info.random_weights);
    assert_eq!(info.device, "cpu");
    assert_eq!(info.max_text_tokens, 64);
}

#[tokio::test]
async fn embeddings_are_one_per_input_unit_length_and_of_the_models_dimension() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let info = model_info(&mut client).await;
    let texts = client
        .embed_text(pb::EmbedTextRequest {
            model: String::new(),
            texts: labels(),
        })
        .await
        .expect("embed text")
        .into_inner();
    let images = client
        .embed_image(pb::EmbedImageRequest {
            max_num_patches: 0,
            model: String::new(),
            images: vec![
                encoded(asset("chelsea_progressive.jpg")).unwrap(),
                encoded(asset("rocket.bmp")).unwrap(),
            ],
        })
        .await
        .expect("embed image")
        .into_inner();
    assert_eq!(texts.embeddings.len(), LABELS.len());
    assert_eq!(images.embeddings.len(), 2);
    for e in texts.embeddings.iter().chain(&images.embeddings) {
        assert_eq!(e.values.len(), info.embedding_dim as usize);
        let norm: f32 = e.values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not L2-normalised: {norm}");
    }
}
