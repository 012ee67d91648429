//! How the command-line clients (`health`, `bench`) reach a server that runs TLS, mutual TLS or
//! tokens: the same flags for each, also from the environment (so that a container's
//! HEALTHCHECK, which runs `siglip-serve health` bare, follows the server's settings); and how
//! the load tools wait for a server still loading its model.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Request, Status,
};

use crate::grpc::oip::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::grpc::pb::{self, siglip_client::SiglipClient};

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// PEM CA certificates to verify the server's certificate with (an https:// address; there
    /// is no other trust store).
    #[arg(long, env = "SIGLIP_CLIENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for a server that requires mutual TLS (with --tls-key).
    #[arg(long, env = "SIGLIP_CLIENT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SIGLIP_CLIENT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The name the server's certificate must carry, when it is not the address's host.
    #[arg(long, env = "SIGLIP_CLIENT_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// A file whose first word is the bearer token to send (a file, not a flag: command lines
    /// are visible to every user of the machine; a line of the server's token file will do).
    #[arg(long, env = "SIGLIP_CLIENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Sends the bearer token, if there is one, with every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The API's client as these tools use it.
pub type Client = SiglipClient<InterceptedService<Channel, Bearer>>;

/// The Open Inference Protocol's client, as the bench uses it.
pub type OipClient = GrpcInferenceServiceClient<InterceptedService<Channel, Bearer>>;

impl ClientArgs {
    /// A connection to `addr` (http:// or https://).
    pub async fn connect(&self, addr: &str) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(addr.to_owned())
            .with_context(|| format!("{addr} is not an address"))?;
        let https = addr.starts_with("https://");
        let tls = self.tls()?;
        anyhow::ensure!(
            https || tls.is_none(),
            "TLS options given, but {addr} is not an https:// address"
        );
        if https {
            endpoint = endpoint
                .tls_config(tls.unwrap_or_default())
                .context("TLS options")?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))
    }

    /// The API's client on `channel`, sending the token.
    pub fn client(&self, channel: Channel) -> anyhow::Result<Client> {
        Ok(SiglipClient::with_interceptor(channel, self.bearer()?))
    }

    /// The Open Inference Protocol's client on `channel`, sending the token.
    pub fn oip_client(&self, channel: Channel) -> anyhow::Result<OipClient> {
        Ok(GrpcInferenceServiceClient::with_interceptor(
            channel,
            self.bearer()?,
        ))
    }

    fn tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        if self.tls_ca.is_none() && self.tls_cert.is_none() && self.tls_server_name.is_none() {
            return Ok(None);
        }
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Some(tls))
    }

    fn bearer(&self) -> anyhow::Result<Bearer> {
        let Some(path) = &self.token_file else {
            return Ok(Bearer(None));
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let token = text.split_whitespace().next().unwrap_or_default();
        anyhow::ensure!(
            !token.is_empty(),
            "the token file {} is empty",
            path.display()
        );
        let value = format!("Bearer {token}").parse().map_err(|_| {
            anyhow::anyhow!("the token in {} cannot be sent in a header", path.display())
        })?;
        Ok(Bearer(Some(value)))
    }
}

/// Waits (up to 10 minutes) until every model of the server serves; the info of its default
/// model (or of its first, where it has several and no default).
pub async fn wait_until_ready(client: &Client) -> anyhow::Result<pb::ModelInfo> {
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        match client
            .clone()
            .list_models(pb::ListModelsRequest {})
            .await
            .map(tonic::Response::into_inner)
        {
            Ok(list) if list.models.iter().all(|m| m.serving) => {
                // The default model's info, or the first model's where there is no default.
                let info = list
                    .models
                    .iter()
                    .find(|m| m.name == list.default_model)
                    .or(list.models.first())
                    .and_then(|m| m.info.clone());
                return info.ok_or_else(|| anyhow::anyhow!("the server has no model"));
            }
            Ok(_) if Instant::now() < until => {}
            Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < until => {}
            Ok(list) => anyhow::bail!("server not ready: models {:?}", list.models),
            Err(status) => anyhow::bail!("server not ready: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
