//! The models this server serves, by name: a repository of model folders (`--model-repository`,
//! or the one `--model-dir`), each loaded on its own inference thread with its own queue and
//! text cache, all of them admitted against the same budgets (`infer::Shared`) and taking turns
//! on a device they share (`batch::Devices`).
//!
//! A request names its model (or gets the default one) and is handed that model's current
//! version ([`Repository::resolve`]): an `Arc` it keeps until it is answered. That is how a
//! version swapped out ([`poll`]) keeps serving the calls and streams already on it, and is freed
//! (its inference thread ends, and the memory goes back to the system) once the last of them is
//! done.
//!
//! - `source`: the folders on disk, their `serve.json` overrides and fingerprints;
//! - `load`: loading one version; `poll`: applying changes to the folders while serving.

mod load;
mod poll;
pub mod source;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError, Weak,
    },
    thread::JoinHandle,
    time::Duration,
};

use ::metrics::counter;
use tokio::sync::{mpsc, watch};

use crate::batch::BatchConfig;
use crate::error::{Error, Result};
use crate::health::{self, HealthPolicy};
use crate::infer::{Infer, Shared};
use crate::metrics;
use crate::model::{LoadOptions, RunningOn};
use load::{Loaded, Loader};
use source::ModelSource;

/// Where the models are and how they run, from the command line (`config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub models: Models,
    /// The model of requests that name none (`--default-model`).
    pub default_model: Option<String>,
    /// How each model loads (its `dir` aside), before its `serve.json`.
    pub load: LoadOptions,
    /// How each model's queue batches (`pipelined` is each model's own).
    pub batch: BatchConfig,
    pub health: HealthPolicy,
    /// Most parameter bytes held by every version together (0: no limit).
    pub max_model_bytes: u64,
}

/// One model directory, or a repository of them, polled for changes every `poll` if given.
#[derive(Debug, Clone)]
pub enum Models {
    Dir(std::path::PathBuf),
    Repository {
        root: std::path::PathBuf,
        poll: Option<Duration>,
    },
}

/// One version of a model, serving: what a call holds while it runs.
pub struct Served {
    pub infer: Arc<Infer>,
    pub on: RunningOn,
}

/// Where a model stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A first version, or a new one beside the version serving, is being loaded and warmed up.
    Loading,
    Ready,
    /// The last load failed, for this reason; an older version may still serve.
    Failed(String),
    /// Removed from the repository: its calls finish, then it is freed.
    Unloading,
}

/// A model as ListModels shows it.
pub struct ModelView {
    pub name: String,
    pub state: State,
    /// The version answering calls, if any.
    pub serving: Option<Arc<Served>>,
}

/// What the health service reports: each model's own status, and the whole server's.
pub struct Health {
    /// Every model of the repository: SERVING when a version serves and its device is healthy.
    pub models: Vec<(String, bool)>,
    /// Names removed since the last report: their health entries go.
    pub removed: Vec<String>,
    /// SERVING once the models found at startup are all warm, while every version serving is
    /// healthy.
    pub all: bool,
}

pub struct Repository {
    inner: Mutex<Inner>,
    /// The folders found by [`Repository::open`], until [`Repository::start`] loads them.
    sources: Mutex<BTreeMap<String, ModelSource>>,
    loader: Loader,
    /// `--default-model`, or the only model.
    default: Option<String>,
    policy: HealthPolicy,
    /// Bumped on every change health could see.
    changes: watch::Sender<u64>,
    /// A model whose device keeps failing past `--exit-after-failures`: the server exits.
    exit: mpsc::UnboundedSender<anyhow::Error>,
    /// Parameter bytes of versions out of service whose inference thread has not ended yet
    /// (`--max-model-bytes`).
    retiring_bytes: Arc<AtomicU64>,
}

#[derive(Default)]
struct Inner {
    models: BTreeMap<String, Slot>,
    /// Removed models whose inference threads have not ended yet.
    unloading: Vec<String>,
    /// Names removed that the health service has not been told of yet.
    removed: Vec<String>,
    /// Inference threads of versions out of service, ending once their calls are done.
    retiring: Vec<tokio::task::JoinHandle<()>>,
    /// The models found at startup are all warm.
    started: bool,
    /// Counts versions, so that a health report finds its own version.
    versions: u64,
    /// Parameter bytes of versions being loaded: about to be held beside those serving
    /// (`--max-model-bytes`).
    loading_bytes: u64,
    /// Counts the loads started, so that a load finishing finds whether it is still the latest
    /// of its model.
    loads: u64,
    /// Shutting down ([`Repository::unload_all`]): nothing more is loaded or put in service.
    closing: bool,
}

impl Inner {
    /// The model of requests that name none: `--default-model` (`flag`), or the only model.
    fn default_model<'a>(&'a self, flag: &'a Option<String>) -> Option<&'a str> {
        match flag {
            Some(name) => Some(name),
            None if self.models.len() == 1 => self.models.keys().next().map(String::as_str),
            None => None,
        }
    }

    /// Every model found at startup is warm, and every version serving is healthy.
    fn ready(&self) -> bool {
        self.started
            && self
                .models
                .values()
                .filter_map(|slot| slot.serving.as_ref())
                .all(|v| v.healthy)
    }
}

struct Slot {
    state: State,
    /// Of the version serving or being loaded, or whose load failed (not tried again until the
    /// folder changes, unless `--max-model-bytes` refused it: then at the next poll).
    fingerprint: u64,
    /// The load last started for this model: only it may put its version in service.
    load: u64,
    /// The last load was refused for `--max-model-bytes` (warned once, retried every poll).
    refused_for_bytes: bool,
    serving: Option<Version>,
}

struct Version {
    served: Arc<Served>,
    worker: JoinHandle<()>,
    /// Follows the version's failed batches (`health::follow`); stopped when it retires.
    follower: tokio::task::AbortHandle,
    healthy: bool,
    id: u64,
}

impl Repository {
    /// The models of `args`, found on disk and listed as loading (nothing is loaded yet:
    /// [`Repository::start`]), and where a model whose device keeps failing says the server
    /// must exit. Refuses an empty repository and a default model it does not have.
    pub fn open(
        settings: Settings,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Arc<Self>, mpsc::UnboundedReceiver<anyhow::Error>)> {
        let sources = match &settings.models {
            Models::Dir(dir) => {
                let one = ModelSource::single(dir)?;
                BTreeMap::from([(one.name.clone(), one)])
            }
            Models::Repository { root, .. } => {
                let found = source::scan(root)?;
                if found.is_empty() {
                    anyhow::bail!(
                        "the model repository {} has no model folders (sub-directories with a \
                         manifest.json written by `python -m siglip_export`)",
                        root.display()
                    );
                }
                found
            }
        };
        if let Some(default) = &settings.default_model {
            if !sources.contains_key(default) {
                anyhow::bail!(
                    "--default-model {default:?} is not a model of the repository (it has: {})",
                    names(sources.keys())
                );
            }
        }
        let models = sources
            .iter()
            .map(|(name, source)| {
                let slot = Slot {
                    state: State::Loading,
                    fingerprint: source.fingerprint,
                    load: 0,
                    refused_for_bytes: false,
                    serving: None,
                };
                (name.clone(), slot)
            })
            .collect();
        let (exit, exits) = mpsc::unbounded_channel();
        let repository = Self {
            inner: Mutex::new(Inner {
                models,
                ..Inner::default()
            }),
            sources: Mutex::new(sources),
            default: settings.default_model.clone(),
            policy: settings.health,
            loader: Loader {
                settings,
                shared,
                devices: Arc::default(),
            },
            changes: watch::channel(0).0,
            exit,
            retiring_bytes: Arc::default(),
        };
        Ok((Arc::new(repository), exits))
    }

    /// Loads every model found by [`Repository::open`], in parallel, and returns once all are
    /// warm; then, with `--model-repository-poll-seconds`, keeps applying changes to the
    /// folders. A model that fails to load fails the start.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let sources =
            std::mem::take(&mut *self.sources.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed();
        let loads = sources
            .into_values()
            .map(|source| self.load(source, 0))
            .collect::<Vec<_>>();
        let failed: Vec<String> = futures_util::future::join_all(loads)
            .await
            .into_iter()
            .filter_map(|r| r.err())
            .collect();
        if !failed.is_empty() {
            anyhow::bail!("loading the models: {}", failed.join("; "));
        }
        self.lock().started = true;
        self.changed();
        if let Models::Repository {
            root,
            poll: Some(every),
        } = &self.loader.settings.models
        {
            tokio::spawn(poll::run(Arc::downgrade(self), root.clone(), *every));
        }
        Ok(())
    }

    /// Loads one version of `source` (load number `load` of [`Inner::loads`]) and puts it in
    /// service once warm, unless another load of the model has started since, the folder has
    /// gone, or the server is shutting down; or marks the model failed (the version serving
    /// stays).
    async fn load(self: &Arc<Self>, source: ModelSource, load: u64) -> Result<(), String> {
        let repository = Arc::clone(self);
        let name = source.name.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut reserved = 0;
            let loaded = repository.loader.load(&source, |needs| {
                repository.reserve(needs)?;
                reserved = needs;
                Ok(())
            });
            (loaded, reserved)
        })
        .await
        .unwrap_or_else(|e| (Err(Error::Model(format!("loading panicked: {e}"))), 0));
        let (loaded, reserved) = loaded;
        let mut inner = self.lock();
        inner.loading_bytes -= reserved;
        let current = !inner.closing
            && inner
                .models
                .get(&name)
                .is_some_and(|slot| slot.load == load);
        let outcome = match loaded {
            Ok(loaded) if current => {
                self.install(&mut inner, &name, loaded);
                Ok(())
            }
            // Changed or removed while loading: the newer state wins.
            Ok(loaded) => {
                drop(loaded.infer);
                let retiring = retire(&name, loaded.worker, None);
                inner.retiring.push(retiring);
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                // Memory held by versions still finishing their calls comes back: a refusal for
                // --max-model-bytes is tried again at the next poll, and warned of once.
                let for_bytes = matches!(e, Error::ResourceExhausted(_));
                if let Some(slot) = inner.models.get_mut(&name).filter(|_| current) {
                    if !(for_bytes && slot.refused_for_bytes) {
                        counter!(metrics::MODEL_LOAD_FAILURES, "model" => name.clone())
                            .increment(1);
                        tracing::warn!(
                            model = %name,
                            serving_older_version = slot.serving.is_some(),
                            "model failed to load: {reason}"
                        );
                    }
                    if for_bytes {
                        slot.fingerprint = slot.fingerprint.wrapping_add(1);
                    }
                    slot.refused_for_bytes = for_bytes;
                    slot.state = State::Failed(reason.clone());
                }
                Err(format!("{name}: {reason}"))
            }
        };
        drop(inner);
        self.changed();
        outcome
    }

    /// Puts a loaded version in service; the one it replaces retires.
    fn install(self: &Arc<Self>, inner: &mut Inner, name: &str, loaded: Loaded) {
        inner.versions += 1;
        let id = inner.versions;
        let manifest = loaded.infer.manifest();
        metrics::register_model(name);
        if let Some(index) = loaded
            .on
            .device
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
        {
            metrics::watch_cuda_memory(index);
        }
        tracing::info!(
            model = name,
            model_id = %manifest.model_id,
            image_convention = %loaded.infer.convention(),
            image_processor = %loaded.infer.processor(),
            "model ready"
        );
        let follower = self.follow(name, id, loaded.failures);
        let version = Version {
            served: Arc::new(Served {
                infer: loaded.infer,
                on: loaded.on,
            }),
            worker: loaded.worker,
            follower,
            healthy: true,
            id,
        };
        let slot = inner.models.get_mut(name).expect("installed into its slot");
        slot.state = State::Ready;
        slot.refused_for_bytes = false;
        let old = slot.serving.replace(version);
        if let Some(old) = old {
            counter!(metrics::MODEL_SWAPS, "model" => name.to_string()).increment(1);
            tracing::info!(
                model = name,
                "new version serving; the old one finishes its calls, then is freed"
            );
            let retiring = self.retire_version(name, old);
            inner.retiring.push(retiring);
        }
        // After the old version's series went to 0: a new version of the same checkpoint has
        // the same labels.
        let served = &inner.models[name]
            .serving
            .as_ref()
            .expect("just installed")
            .served;
        metrics::model_info(name, served.infer.manifest(), &served.on, true);
    }

    /// Health follows the version's failed batches; past `--exit-after-failures`, the server
    /// exits.
    fn follow(
        self: &Arc<Self>,
        name: &str,
        id: u64,
        failures: watch::Receiver<u32>,
    ) -> tokio::task::AbortHandle {
        let repository: Weak<Self> = Arc::downgrade(self);
        let (name, policy) = (name.to_string(), self.policy);
        tokio::spawn(async move {
            let exit = health::follow(failures, policy, |serving| {
                if let Some(repository) = repository.upgrade() {
                    repository.set_healthy(&name, id, serving);
                }
            })
            .await;
            if let Some(repository) = repository.upgrade() {
                let _ = repository.exit.send(exit.context(format!("model {name}")));
            }
        })
        .abort_handle()
    }

    fn set_healthy(&self, name: &str, id: u64, healthy: bool) {
        let mut inner = self.lock();
        if let Some(version) = inner
            .models
            .get_mut(name)
            .and_then(|slot| slot.serving.as_mut())
            .filter(|v| v.id == id)
        {
            version.healthy = healthy;
        }
        drop(inner);
        self.changed();
    }

    /// The version of model `name` ("" for the default model) that serves calls now.
    pub fn resolve(&self, name: &str) -> Result<Arc<Served>> {
        let inner = self.lock();
        let default = inner.default_model(&self.default);
        let name = match (name, default) {
            ("", Some(default)) => default,
            ("", None) => {
                return Err(Error::InvalidArgument(format!(
                    "this server has several models and no default (--default-model): name one \
                     in the request's `model` field ({})",
                    names(inner.models.keys())
                )))
            }
            (name, _) => name,
        };
        let slot = inner.models.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "no model named {name:?} on this server (models: {})",
                names(inner.models.keys())
            ))
        })?;
        match (&slot.serving, &slot.state) {
            (Some(version), _) => Ok(Arc::clone(&version.served)),
            (None, State::Failed(reason)) => Err(Error::Unavailable(format!(
                "model {name:?} failed to load: {reason}"
            ))),
            (None, _) => Err(Error::Loading(format!(
                "model {name:?} is still loading: retry shortly (its health service name, \
                 siglip.v1.Siglip/{name}, says when it is SERVING)"
            ))),
        }
    }

    /// Whether `name` ("" for the default) is a model of the repository: the `model` label of
    /// a call's metrics is its name when it is, and empty otherwise (a client cannot add series).
    pub fn label(&self, name: &str) -> String {
        let inner = self.lock();
        match name {
            "" => inner
                .default_model(&self.default)
                .unwrap_or_default()
                .to_string(),
            name if inner.models.contains_key(name) => name.to_string(),
            _ => String::new(),
        }
    }

    /// Every model, in name order, the ones being unloaded included; and the default model.
    pub fn list(&self) -> (Vec<ModelView>, Option<String>) {
        let inner = self.lock();
        let mut views: Vec<ModelView> = inner
            .models
            .iter()
            .map(|(name, slot)| ModelView {
                name: name.clone(),
                state: slot.state.clone(),
                serving: slot.serving.as_ref().map(|v| Arc::clone(&v.served)),
            })
            .collect();
        views.extend(inner.unloading.iter().map(|name| ModelView {
            name: name.clone(),
            state: State::Unloading,
            serving: None,
        }));
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let default = inner.default_model(&self.default).map(str::to_string);
        (views, default)
    }

    /// What the health service should report now.
    pub fn health(&self) -> Health {
        let mut inner = self.lock();
        let models: Vec<(String, bool)> = inner
            .models
            .iter()
            .map(|(name, slot)| {
                (
                    name.clone(),
                    slot.serving.as_ref().is_some_and(|v| v.healthy),
                )
            })
            .collect();
        Health {
            models,
            removed: std::mem::take(&mut inner.removed),
            all: inner.ready(),
        }
    }

    /// Whether the whole server is ready ([`Health::all`]), without taking the removed names.
    pub fn ready(&self) -> bool {
        self.lock().ready()
    }

    /// Changes whenever [`Repository::health`] may have.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes `needs` bytes of `--max-model-bytes` for a version about to load, or refuses it
    /// when the versions serving, loading and retiring hold too much for it to fit.
    fn reserve(&self, needs: u64) -> Result<()> {
        let max = self.loader.settings.max_model_bytes;
        let mut inner = self.lock();
        let serving: u64 = inner
            .models
            .values()
            .filter_map(|slot| slot.serving.as_ref())
            .map(|v| v.served.on.parameter_bytes)
            .sum();
        let held = serving + inner.loading_bytes + self.retiring_bytes.load(Ordering::SeqCst);
        if max > 0 && held + needs > max {
            return Err(Error::ResourceExhausted(format!(
                "it needs {needs} bytes for its parameters (its tower files), and the models \
                 loaded, loading or being freed hold {held}: {} bytes would pass \
                 --max-model-bytes {max}",
                held + needs
            )));
        }
        inner.loading_bytes += needs;
        Ok(())
    }

    /// Takes every model out of service and waits (up to `wait`) for their inference threads to
    /// end. They end once the last call holding them is gone: after the server has drained.
    pub async fn unload_all(&self, wait: Duration) {
        let retiring: Vec<_> = {
            let mut inner = self.lock();
            inner.closing = true;
            let models = std::mem::take(&mut inner.models);
            let mut retiring = std::mem::take(&mut inner.retiring);
            for (name, slot) in models {
                if let Some(version) = slot.serving {
                    retiring.push(self.retire_version(&name, version));
                }
            }
            retiring
        };
        let all = futures_util::future::join_all(retiring);
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::warn!(
                "a model was still in use {wait:?} after draining; exiting without unloading it \
                 (a compiled package's unpacked copy under /tmp stays behind)"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

impl Repository {
    /// Takes a version out of service: its info series says 0, its health is no longer
    /// followed, and its inference thread is joined once the calls holding the version are done;
    /// its bytes count as held until then. Takes no lock: callers may hold the repository's.
    fn retire_version(&self, name: &str, version: Version) -> tokio::task::JoinHandle<()> {
        version.follower.abort();
        let served = &version.served;
        metrics::model_info(name, served.infer.manifest(), &served.on, false);
        let bytes = served.on.parameter_bytes;
        let retiring = Arc::clone(&self.retiring_bytes);
        retiring.fetch_add(bytes, Ordering::SeqCst);
        drop(version.served);
        retire(name, version.worker, Some((retiring, bytes)))
    }
}

/// Waits for an inference thread to end (its model dropped), then hands the freed memory back to
/// the system: glibc keeps freed heap pages in its arenas otherwise, and a swapped-out model's
/// hundreds of megabytes would stay in the process's resident memory. `held`: the bytes it
/// held, taken off the count of bytes retiring.
fn retire(
    name: &str,
    worker: JoinHandle<()>,
    held: Option<(Arc<AtomicU64>, u64)>,
) -> tokio::task::JoinHandle<()> {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let _ = worker.join();
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes their locks itself.
        unsafe { libc::malloc_trim(0) };
        if let Some((retiring, bytes)) = held {
            retiring.fetch_sub(bytes, Ordering::SeqCst);
        }
        tracing::info!(model = %name, "a model version was unloaded");
    })
}

fn names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}
