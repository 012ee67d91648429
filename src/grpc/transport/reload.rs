//! Files that may change under a running server — the TLS certificate, key and CA, the token
//! file — re-read by path every `--watch-seconds`. Reading by path, not watching inodes, is what
//! sees a kubelet Secret update (an atomic swap of the `..data` symlink) and cert-manager's
//! renewals; a poll of a few small files every few seconds costs nothing, and a notification
//! crate would have to follow the symlink swap itself.
//!
//! New content is taken only once it loads: a bad file (or half of a pair written) is refused
//! with a warning that names the file and the problem, never its content, and the last good
//! material stays in use.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use anyhow::Context;
use metrics::counter;
use sha2::{Digest, Sha256};

use crate::metrics as names;

/// The current value loaded from some files, replaced when they change and still load.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads `what` from `paths` now (an error here stops the server from starting), then
    /// re-reads them every `every` for as long as the returned value lives. `label` names it
    /// in `siglip_reloads_total{what}`.
    pub fn start<F>(
        label: &'static str,
        what: &'static str,
        paths: Vec<PathBuf>,
        every: Duration,
        load: F,
    ) -> anyhow::Result<Arc<Self>>
    where
        F: Fn(&[Vec<u8>]) -> anyhow::Result<T> + Send + Sync + 'static,
    {
        let contents = read(&paths)?;
        let first = load(&contents).with_context(|| format!("loading the {what}"))?;
        let this = Arc::new(Self {
            current: RwLock::new(Arc::new(first)),
        });
        tokio::spawn(poll(
            Arc::downgrade(&this),
            label,
            what,
            paths,
            every,
            digest(&contents),
            load,
        ));
        Ok(this)
    }

    /// The material in use now.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn poll<T, F>(
    this: Weak<Reloading<T>>,
    label: &'static str,
    what: &'static str,
    paths: Vec<PathBuf>,
    every: Duration,
    mut seen: [u8; 32],
    load: F,
) where
    F: Fn(&[Vec<u8>]) -> anyhow::Result<T>,
{
    // A problem is reported once, not at every poll, until the files change.
    let mut unreadable = None;
    // Content that failed to load once: refused only if it is still there at the next poll, so
    // a renewal written file by file (certificate, then key) is not reported half-way.
    let mut failed_once = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(this) = this.upgrade() else { return };
        let contents = match read(&paths) {
            Ok(contents) => contents,
            Err(e) => {
                let problem = format!("{e:#}");
                if unreadable.as_ref() != Some(&problem) {
                    counter!(names::RELOADS, "what" => label, "outcome" => "unreadable")
                        .increment(1);
                    tracing::warn!(
                        "the {what} cannot be re-read ({problem}); still using the previous one"
                    );
                    unreadable = Some(problem);
                }
                continue;
            }
        };
        unreadable = None;
        let now = digest(&contents);
        if now == seen {
            continue;
        }
        match load(&contents) {
            Ok(value) => {
                *this.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
                counter!(names::RELOADS, "what" => label, "outcome" => "applied").increment(1);
                tracing::info!("the {what} changed on disk: new connections and calls use it");
                (seen, failed_once) = (now, None);
            }
            Err(_) if failed_once != Some(now) => failed_once = Some(now),
            Err(e) => {
                counter!(names::RELOADS, "what" => label, "outcome" => "rejected").increment(1);
                tracing::warn!(
                    "the {what} changed on disk but cannot be used ({e:#}); still using the \
                     previous one"
                );
                (seen, failed_once) = (now, None);
            }
        }
    }
}

fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

/// One digest of all the files: what is compared between polls, so that key material is not
/// kept twice.
fn digest(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for c in contents {
        hash.update((c.len() as u64).to_le_bytes());
        hash.update(c);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, text: &str) {
        // Written aside and renamed in place, as cert-manager and the kubelet do.
        let aside = path.with_extension("new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, path).unwrap();
    }

    async fn wait_for(reloading: &Reloading<String>, want: &str) {
        for _ in 0..200 {
            if *reloading.current() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("still {:?}, never {want:?}", reloading.current());
    }

    #[tokio::test]
    async fn new_content_is_taken_once_it_loads_and_bad_content_is_refused() {
        let dir = std::env::temp_dir().join(format!("siglip-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        write(&file, "one");
        // Loads text that does not say "bad".
        let reloading = Reloading::start(
            "test",
            "test value",
            vec![file.clone()],
            Duration::from_millis(20),
            |c: &[Vec<u8>]| {
                let text = String::from_utf8(c[0].clone())?;
                anyhow::ensure!(!text.contains("bad"), "refused");
                Ok(text)
            },
        )
        .unwrap();
        assert_eq!(*reloading.current(), "one");
        write(&file, "two");
        wait_for(&reloading, "two").await;
        write(&file, "bad");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*reloading.current(), "two", "a bad file is not taken");
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*reloading.current(), "two", "nor a missing one");
        write(&file, "three");
        wait_for(&reloading, "three").await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_does_not_load_at_first_stops_the_start() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _guard = runtime.enter();
        let missing = Reloading::<String>::start(
            "test",
            "test value",
            vec!["/nonexistent/siglip".into()],
            Duration::from_secs(1),
            |_| Ok(String::new()),
        );
        let message = format!("{:#}", missing.err().expect("refused"));
        assert!(message.contains("/nonexistent/siglip"), "{message}");
    }
}
