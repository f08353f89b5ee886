//! A bounded pool for CPU- and memory-heavy work (Argon2 hashes take ~19 MiB each, image
//! decoding more): at most `workers` run at once, at most `queue` more wait, and anything
//! beyond is answered "busy" at once instead of piling up memory.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::UserError;

#[derive(Debug, Clone, clap::Args)]
pub struct PoolArgs {
    /// Password hashes and avatar decodes running at once (0: the number of CPUs).
    #[arg(long, env = "CHATMESH_HEAVY_WORKERS", default_value_t = 0)]
    pub heavy_workers: usize,
    /// Further such requests allowed to wait; beyond them the answer is "server busy".
    #[arg(long, env = "CHATMESH_HEAVY_QUEUE", default_value_t = 32)]
    pub heavy_queue: usize,
}

#[derive(Clone)]
pub struct HeavyPool {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl HeavyPool {
    pub fn new(args: &PoolArgs) -> Self {
        let workers = match args.heavy_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Self {
            admitted: Arc::new(Semaphore::new(workers + args.heavy_queue)),
            running: Arc::new(Semaphore::new(workers)),
        }
    }

    /// Runs `work` on a blocking thread when a worker is free; `Busy` when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, UserError> + Send + 'static,
    ) -> Result<T, UserError> {
        let _admitted = self.admitted.clone().try_acquire_owned().map_err(|_| UserError::Busy)?;
        let running = self.running.clone().acquire_owned().await.map_err(|_| UserError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let _running = running;
            work()
        })
        .await
        .map_err(|e| UserError::Hash(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn excess_work_is_refused_at_once() {
        let pool = HeavyPool::new(&PoolArgs { heavy_workers: 1, heavy_queue: 1 });
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let blocked = |rx: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || Ok(rx.lock().unwrap().recv().ok())).await })
        };
        let a = blocked(rx.clone());
        let b = blocked(rx.clone());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(matches!(pool.run(|| Ok(())).await, Err(UserError::Busy)));
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok());
        pool.run(|| Ok(())).await.unwrap();
    }
}
