//! The abuse mixed into the soak: each attack repeated on a connection of its own, and the
//! outcome that shows the server contained it; any other outcome is unexpected.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tonic::{transport::Channel, Code};

use super::{client, failed, Soak};
use crate::tools::attacks;

/// The attacks mixed into the soak, each with the statuses that contain it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Attack {
    /// A progressive JPEG made of thousands of empty scans.
    ScanBomb,
    /// A PNG whose compressed metadata inflates far past the decoder's memory limit.
    MetadataBomb,
    /// A label that is not UTF-8.
    NotUtf8,
    /// A message over the message limit.
    Oversized,
    /// A Stream that opens and sends nothing.
    SilentStream,
    /// A Stream that sends frames and never reads its results.
    DeafStream,
    /// An Upload that stops one byte short and stalls.
    StalledUpload,
}

impl Attack {
    pub(super) const ALL: [Attack; 7] = [
        Attack::ScanBomb,
        Attack::MetadataBomb,
        Attack::NotUtf8,
        Attack::Oversized,
        Attack::SilentStream,
        Attack::DeafStream,
        Attack::StalledUpload,
    ];

    /// What shows that the server contained the attack.
    fn contained(self) -> Contained {
        match self {
            Attack::ScanBomb | Attack::NotUtf8 => Contained::Refused(&[Code::InvalidArgument]),
            Attack::Oversized => Contained::Refused(&[Code::ResourceExhausted]),
            Attack::SilentStream | Attack::StalledUpload => Contained::Refused(attacks::IDLE_CODES),
            // Inflated only up to --max-image-bytes, the profile dropped: a bounded cost.
            Attack::MetadataBomb => Contained::Answered,
            // The client never reads, so it never hears why; the server must end the stream
            // (lifetime, or a send that cannot make progress) and free its slot, which the
            // legitimate streams would miss otherwise.
            Attack::DeafStream => Contained::Unobserved,
        }
    }
}

/// How an attack must end.
enum Contained {
    /// With one of these statuses.
    Refused(&'static [Code]),
    /// Answered like any image, its cost bounded (memory shows in the RSS figures).
    Answered,
    /// Nothing the attacker can see.
    Unobserved,
}

/// Pause between two rounds of one attack.
const ATTACK_PAUSE: Duration = Duration::from_millis(500);

/// One abuser: `attack` in rounds until the end.
pub(super) async fn abuse(soak: Arc<Soak>, channel: Channel, attack: Attack) {
    let mut client = client(channel.clone());
    while soak.running() {
        let outcome = match attack {
            Attack::ScanBomb => attacks::classify_bytes(&mut client, attacks::scan_bomb()).await,
            Attack::MetadataBomb => {
                attacks::classify_bytes(&mut client, attacks::metadata_bomb()).await
            }
            Attack::NotUtf8 => attacks::not_utf8_label(channel.clone()).await,
            Attack::Oversized => attacks::classify_bytes(&mut client, vec![0xff; 5 << 20]).await,
            Attack::SilentStream => attacks::silent_stream(&mut client).await,
            Attack::DeafStream => attacks::deaf_stream(&mut client, soak.image(0)).await,
            Attack::StalledUpload => attacks::stalled_upload(&mut client).await,
        };
        soak.attacks[attack as usize].fetch_add(1, Ordering::Relaxed);
        let as_expected = match (attack.contained(), &outcome) {
            (Contained::Refused(codes), Err(status)) => codes.contains(&status.code()),
            (Contained::Answered | Contained::Unobserved, Ok(())) => true,
            _ => false,
        };
        if !as_expected {
            let got = outcome.map_or_else(failed, |()| "accepted".to_owned());
            soak.unexpected(&format!("{attack:?}: {got}"));
        }
        tokio::time::sleep(ATTACK_PAUSE).await;
    }
}
