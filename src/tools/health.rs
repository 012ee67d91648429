//! `siglip-serve health`: asks a server's gRPC health service and prints the status it gives;
//! SERVING is success (for container health checks).

use clap::Args;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use super::client::ClientArgs;

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The server (https:// for TLS, with --tls-ca).
    #[arg(
        long,
        env = "SIGLIP_HEALTH_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// "" for the whole server, "siglip.v1.Siglip" for the API, or "siglip.v1.Siglip/<model>"
    /// for one model of the repository.
    #[arg(long, default_value = "")]
    pub service: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints the status's name; true when it is SERVING. An error is a server that could not be
/// reached or asked.
pub async fn run(args: HealthArgs) -> anyhow::Result<bool> {
    let channel = args.client.connect(&args.addr).await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service,
        })
        .await?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    Ok(status == ServingStatus::Serving)
}
