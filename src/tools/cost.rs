//! What a bench phase cost the server in CPU, read from outside it: the server process's CPU
//! (`/proc/<pid>/stat`), the model's threads (`/proc/<pid>/task/*`: the inference worker and
//! the intra-op threads libtorch starts from it all carry its name, `siglip-infer`), the
//! server's own stages outside the model (`siglip_cpu_seconds{stage}` on its metrics endpoint,
//! from per-thread clocks), and the load generator's own CPU (this process).
//!
//! On a small machine the load generator, decoding and libtorch share the cores, so images/s
//! against the tower alone mixes what the server costs with what the client takes from it.
//! CPU time per image does not: it is what the server spent, however busy the machine was.

use std::{collections::BTreeMap, time::Instant};

use serde::Serialize;

use crate::batch::INFERENCE_THREAD as MODEL_THREADS;
use crate::metrics::{CPU, CPU_STAGES};

/// Figures at one moment; two of them make a [`CpuCost`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// CPU seconds of the whole server process (threads that have ended included).
    server: Option<f64>,
    /// CPU seconds of the threads named [`MODEL_THREADS`].
    model_threads: Option<f64>,
    /// `siglip_cpu_seconds_sum` by stage (absent on a server that does not export it).
    stages: BTreeMap<String, f64>,
    /// CPU seconds of this process (the load generator).
    client: Option<f64>,
}

/// CPU per image served, in ms, and how the machine's CPU was shared.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CpuCost {
    pub images: u64,
    pub cores: usize,
    /// The whole server process.
    pub server_ms_per_image: Option<f64>,
    /// The model's threads, less the worker's own share outside the forward passes.
    pub model_ms_per_image: Option<f64>,
    /// The server outside the model: `server − model`.
    pub own_ms_per_image: Option<f64>,
    /// `own`, by stage: decode, preprocess, tokenize, batch, and `grpc` for the rest (the async
    /// runtime: HTTP/2, protobuf, the handlers, admission; and anything not charged elsewhere).
    pub own_by_stage_ms: BTreeMap<String, f64>,
    /// Shares of the machine (all cores) over the phase, in percent.
    pub server_share_pct: Option<f64>,
    pub client_share_pct: Option<f64>,
}

impl Snapshot {
    /// Reads the figures now. `pid`: the server's process (same machine); `metrics`: its
    /// metrics endpoint (host:port). Whatever cannot be read is left out.
    pub async fn take(pid: Option<u32>, metrics: Option<&str>) -> Self {
        let stages = match metrics {
            Some(addr) => stage_sums(addr).await.unwrap_or_default(),
            None => BTreeMap::new(),
        };
        Self {
            at: Instant::now(),
            server: pid.and_then(|pid| stat_seconds(&format!("/proc/{pid}/stat"))),
            model_threads: pid.and_then(model_thread_seconds),
            stages,
            client: stat_seconds("/proc/self/stat"),
        }
    }
}

impl CpuCost {
    /// What happened between `before` and `after`, over `images` images served.
    pub fn between(before: &Snapshot, after: &Snapshot, images: u64) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wall = after.at.duration_since(before.at).as_secs_f64();
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let per_image = |seconds: f64| seconds * 1e3 / images.max(1) as f64;
        let share = |seconds: f64| 100.0 * seconds / (wall * cores as f64);
        let server = delta(before.server, after.server);
        let stage = |name: &str| {
            Some(after.stages.get(name)? - before.stages.get(name).copied().unwrap_or(0.0))
        };
        // Stage figures need both readings: a total since the server started is not a delta.
        let stages_read = !before.stages.is_empty() && !after.stages.is_empty();
        let batch = stages_read.then(|| stage("batch")).flatten();
        // Without the stage figures the worker's own share stays counted in the model's.
        let model = delta(before.model_threads, after.model_threads)
            .map(|threads| threads - batch.unwrap_or(0.0));
        let own = server.zip(model).map(|(s, m)| s - m);
        let mut own_by_stage_ms = BTreeMap::new();
        if let Some(own) = own {
            if stages_read {
                let mut charged = 0.0;
                for name in CPU_STAGES {
                    let seconds = stage(name).unwrap_or(0.0);
                    charged += seconds;
                    own_by_stage_ms.insert(name.to_string(), per_image(seconds));
                }
                own_by_stage_ms.insert("grpc".into(), per_image(own - charged));
            }
        }
        Self {
            images,
            cores,
            server_ms_per_image: server.map(per_image),
            model_ms_per_image: model.map(per_image),
            own_ms_per_image: own.map(per_image),
            own_by_stage_ms,
            server_share_pct: server.map(share),
            client_share_pct: delta(before.client, after.client).map(share),
        }
    }

    pub fn print(&self) {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let stages: Vec<String> = self
            .own_by_stage_ms
            .iter()
            .map(|(stage, v)| format!("{stage} {v:.2}"))
            .collect();
        println!(
            "server CPU    {} ms per image: model {}, the server's own {} ({})",
            ms(self.server_ms_per_image),
            ms(self.model_ms_per_image),
            ms(self.own_ms_per_image),
            if stages.is_empty() {
                "no stage figures".into()
            } else {
                stages.join(", ")
            }
        );
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}%"));
        println!(
            "machine CPU   {} cores: server {}, load generator {}",
            self.cores,
            pct(self.server_share_pct),
            pct(self.client_share_pct)
        );
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / per_second.max(1) as f64)
}

/// CPU seconds of the server's threads named [`MODEL_THREADS`].
fn model_thread_seconds(pid: u32) -> Option<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if name.trim_end() == MODEL_THREADS {
            total += stat_seconds(&path.join("stat").to_string_lossy()).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// `siglip_cpu_seconds_sum{stage="…"}` for each stage on the metrics page at `addr`.
async fn stage_sums(addr: &str) -> Option<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .ok()?;
        let mut page = String::new();
        conn.read_to_string(&mut page).await.ok()?;
        Some(page)
    };
    // A metrics endpoint that does not answer costs the figures, not the benchmark.
    let page = tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .ok()??;
    let prefix = format!("{CPU}_sum{{stage=\"");
    let sums: BTreeMap<String, f64> = page
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (stage, value) = rest.split_once("\"}")?;
            Some((stage.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    (!sums.is_empty()).then_some(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ms of CPU by this thread's own clock shows in the process's `/proc` figure, to within
    /// its tick (10 ms where the kernel ticks 100 times a second).
    #[test]
    fn this_process_reads_its_own_cpu() {
        let before = stat_seconds("/proc/self/stat").expect("stat");
        let start = crate::cpu_time::thread_now();
        let mut x = 0u64;
        while (crate::cpu_time::thread_now() - start).as_millis() < 100 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = stat_seconds("/proc/self/stat").expect("stat");
        assert!(after - before >= 0.08, "{before} → {after}");
    }

    #[test]
    fn the_rest_of_the_server_is_its_grpc_share() {
        let at = Instant::now();
        let snap = |server, model, stages: &[(&str, f64)], client| Snapshot {
            at,
            server: Some(server),
            model_threads: Some(model),
            stages: stages.iter().map(|(s, v)| (s.to_string(), *v)).collect(),
            client: Some(client),
        };
        let before = snap(10.0, 6.0, &[("decode", 1.0), ("batch", 0.5)], 3.0);
        let mut after = snap(
            30.0,
            20.0,
            &[
                ("decode", 3.0),
                ("preprocess", 1.0),
                ("tokenize", 0.0),
                ("batch", 1.5),
            ],
            5.0,
        );
        after.at = at + std::time::Duration::from_secs(10);
        let cost = CpuCost::between(&before, &after, 1000);
        // 20 s of server CPU over 1000 images; the model's threads 14 s, 1 s of which was the
        // worker's batch stage: model 13 s, own 7 s = decode 2 + preprocess 1 + batch 1 + 3.
        assert_eq!(cost.server_ms_per_image, Some(20.0));
        assert_eq!(cost.model_ms_per_image, Some(13.0));
        assert_eq!(cost.own_ms_per_image, Some(7.0));
        let stage = |name: &str| cost.own_by_stage_ms[name];
        assert_eq!(
            [
                stage("decode"),
                stage("preprocess"),
                stage("batch"),
                stage("grpc")
            ],
            [2.0, 1.0, 1.0, 3.0]
        );
    }
}
