//! What one caller may ask of the server: `--max-*`, timeouts and budgets.

use std::time::Duration;

use clap::Args;

use crate::grpc::api::CallLimits;
use crate::infer::Limits;
use crate::model::image::ImageLimits;

/// Limits on what one caller may ask for. Each is a flag, so operators can size them to their
/// hardware and clients.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest encoded image accepted, in bytes (whole, or reassembled from chunks).
    #[arg(long, env = "SIGLIP_MAX_IMAGE_BYTES", default_value_t = ImageLimits::DEFAULT.max_bytes)]
    pub max_image_bytes: usize,

    /// Largest image accepted, in pixels (width × height), checked from the header before decoding.
    #[arg(long, env = "SIGLIP_MAX_IMAGE_PIXELS", default_value_t = ImageLimits::DEFAULT.max_pixels)]
    pub max_image_pixels: u64,

    /// Longest image side accepted, in pixels.
    #[arg(long, env = "SIGLIP_MAX_IMAGE_SIDE", default_value_t = ImageLimits::DEFAULT.max_side)]
    pub max_image_side: u32,

    /// Most scans in a JPEG, counted from its markers before decoding; more is refused with
    /// INVALID_ARGUMENT. Encoders write 1 (baseline) or about 10 (progressive); each scan costs
    /// a pass over every block, so thousands of empty scans in a small file cost seconds.
    #[arg(long, env = "SIGLIP_MAX_JPEG_SCANS", default_value_t = ImageLimits::DEFAULT.max_jpeg_scans)]
    pub max_jpeg_scans: usize,

    /// Most texts (labels) in one request or stream configuration.
    #[arg(long, env = "SIGLIP_MAX_TEXTS", default_value_t = Limits::DEFAULT.max_texts)]
    pub max_texts: usize,

    /// Longest text accepted, in bytes (texts over 64 tokens are truncated, EOS kept).
    #[arg(long, env = "SIGLIP_MAX_TEXT_BYTES", default_value_t = Limits::DEFAULT.max_text_bytes)]
    pub max_text_bytes: usize,

    /// Most images in one EmbedImage request.
    #[arg(long, env = "SIGLIP_MAX_IMAGES", default_value_t = Limits::DEFAULT.max_images)]
    pub max_images: usize,

    /// Most regions of one stream frame (from its config or the frame), each classified on its
    /// own and counted as one pending image; more is refused with INVALID_ARGUMENT. At most
    /// --max-pending-images.
    #[arg(long, env = "SIGLIP_MAX_REGIONS", default_value_t = Limits::DEFAULT.max_regions)]
    pub max_regions: usize,

    /// Largest gRPC message accepted, in bytes (bigger images go through Upload in chunks).
    #[arg(long, env = "SIGLIP_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,

    /// Most concurrent Stream calls; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SIGLIP_MAX_STREAMS", default_value_t = 64)]
    pub max_streams: usize,

    /// Longest a Stream call may last, in seconds (0: no limit); then it ends with UNAVAILABLE
    /// ("reconnect") so that a mesh can rebalance, and the client reconnects.
    #[arg(long, env = "SIGLIP_MAX_STREAM_SECONDS", default_value_t = 1800)]
    pub max_stream_seconds: u64,

    /// Frames of one every-frame stream in flight at once (ordering is kept).
    #[arg(long, env = "SIGLIP_STREAM_PIPELINE", default_value_t = 4)]
    pub stream_pipeline: usize,

    /// Images accepted and not yet answered (being decoded, queued or in a forward pass), over
    /// all requests and streams; a request that would pass it is refused with
    /// RESOURCE_EXHAUSTED. Bounds the memory of preprocessed images (3 × size² floats each:
    /// 1.8 MB at 384 px). At least --max-images.
    #[arg(long, env = "SIGLIP_MAX_PENDING_IMAGES", default_value_t = Limits::DEFAULT.max_pending_images)]
    pub max_pending_images: usize,

    /// Pixels (width × height, from the header) of the images being decoded at once, over all
    /// requests; an image waits in line, within its deadline, until it fits. Bounds the memory
    /// of decoding. At least --max-image-pixels.
    #[arg(long, env = "SIGLIP_MAX_DECODING_PIXELS", default_value_t = Limits::DEFAULT.max_decoding_pixels)]
    pub max_decoding_pixels: u64,

    /// Texts of label sets not seen before, being tokenised, queued for the text tower or in a
    /// pass, over all requests and streams; a request that would pass it is refused with
    /// RESOURCE_EXHAUSTED (a label set seen before, as written, comes from the cache and never
    /// is). At least --max-texts.
    #[arg(long, env = "SIGLIP_MAX_PENDING_TEXTS", default_value_t = Limits::DEFAULT.max_pending_texts)]
    pub max_pending_texts: usize,

    /// Bytes held by unfinished Uploads and chunked Stream frames, over all calls; a call whose
    /// next chunk does not fit is refused at once with RESOURCE_EXHAUSTED (retry later). At
    /// least --max-image-bytes.
    #[arg(long, env = "SIGLIP_MAX_REASSEMBLY_BYTES", default_value_t = 256 << 20)]
    pub max_reassembly_bytes: usize,

    /// Seconds a Stream's config or an Upload's header may take to arrive after the call opens;
    /// then DEADLINE_EXCEEDED.
    #[arg(
        long,
        env = "SIGLIP_FIRST_MESSAGE_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub first_message_timeout_seconds: u64,

    /// Seconds a Stream or Upload may go without a message after its first, and a send to a
    /// Stream client that does not read may wait; then DEADLINE_EXCEEDED. Long enough for a
    /// paused live video.
    #[arg(long, env = "SIGLIP_IDLE_TIMEOUT_SECONDS", default_value_t = 300)]
    pub idle_timeout_seconds: u64,

    /// The deadline, in seconds, of a unary call or Upload that carries none (no grpc-timeout);
    /// then DEADLINE_EXCEEDED (0: none).
    #[arg(long, env = "SIGLIP_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
}

impl LimitArgs {
    /// What the core allows one caller.
    pub fn infer_limits(&self) -> Limits {
        Limits {
            image: ImageLimits {
                max_bytes: self.max_image_bytes,
                max_pixels: self.max_image_pixels,
                max_side: self.max_image_side,
                max_jpeg_scans: self.max_jpeg_scans,
            },
            max_texts: self.max_texts,
            max_text_bytes: self.max_text_bytes,
            max_images: self.max_images,
            max_regions: self.max_regions,
            max_pending_images: self.max_pending_images,
            max_decoding_pixels: self.max_decoding_pixels,
            max_pending_texts: self.max_pending_texts,
        }
    }

    /// What the API allows one call.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            max_message_bytes: self.max_message_bytes,
            max_streams: self.max_streams,
            max_stream_seconds: self.max_stream_seconds,
            stream_pipeline: self.stream_pipeline,
            max_reassembly_bytes: self.max_reassembly_bytes,
            first_message_timeout: Duration::from_secs(self.first_message_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            request_timeout: (self.request_timeout_seconds > 0)
                .then(|| Duration::from_secs(self.request_timeout_seconds)),
        }
    }

    /// Refuses settings that could never work together.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_pending_images < self.max_images {
            anyhow::bail!(
                "--max-pending-images {} is less than --max-images {}: a full EmbedImage request \
                 could never be accepted; raise it or lower --max-images",
                self.max_pending_images,
                self.max_images
            );
        }
        if self.max_regions == 0 || self.max_regions > self.max_pending_images {
            anyhow::bail!(
                "--max-regions {} must be between 1 and --max-pending-images {}: a frame's \
                 regions are admitted together, so more could never be accepted",
                self.max_regions,
                self.max_pending_images
            );
        }
        if self.max_decoding_pixels < self.max_image_pixels {
            anyhow::bail!(
                "--max-decoding-pixels {} is less than --max-image-pixels {}: the largest image \
                 accepted could never be decoded; raise it or lower --max-image-pixels",
                self.max_decoding_pixels,
                self.max_image_pixels
            );
        }
        if self.max_decoding_pixels > u64::from(u32::MAX) {
            anyhow::bail!(
                "--max-decoding-pixels {} is over {}, the most it can count",
                self.max_decoding_pixels,
                u32::MAX
            );
        }
        if self.max_pending_texts < self.max_texts {
            anyhow::bail!(
                "--max-pending-texts {} is less than --max-texts {}: a full label set could \
                 never be accepted; raise it or lower --max-texts",
                self.max_pending_texts,
                self.max_texts
            );
        }
        if self.max_reassembly_bytes < self.max_image_bytes {
            anyhow::bail!(
                "--max-reassembly-bytes {} is less than --max-image-bytes {}: an image at the \
                 limit could never be uploaded; raise it or lower --max-image-bytes",
                self.max_reassembly_bytes,
                self.max_image_bytes
            );
        }
        if self.first_message_timeout_seconds == 0 || self.idle_timeout_seconds == 0 {
            anyhow::bail!(
                "--first-message-timeout-seconds and --idle-timeout-seconds must be at least 1: \
                 no client could send in time"
            );
        }
        Ok(())
    }
}
