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

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads, not tokio's blocking pool: that one starts a new thread whenever
/// none is idle, and each new thread's allocator arena kept a freed 19 MiB hash buffer (200
/// logins in a row grew RSS by 600 MiB). Here at most `workers` threads ever hash.
#[derive(Clone)]
pub struct HeavyPool {
    admitted: Arc<Semaphore>,
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl HeavyPool {
    pub fn new(args: &PoolArgs) -> Self {
        let workers = match args.heavy_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        return_big_buffers();
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(workers + args.heavy_queue);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..workers {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("chatmesh-heavy-{i}")).spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job, not while running it.
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the pool is gone
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a worker thread for password hashing");
            }
        }
        Self { admitted: Arc::new(Semaphore::new(workers + args.heavy_queue)), jobs }
    }

    /// Runs `work` on a pool thread when one is free; `Busy` when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, UserError> + Send + 'static,
    ) -> Result<T, UserError> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| UserError::Busy)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _admitted = admitted;
            let _ = tx.send(work());
        });
        // Admission bounds the queue: this never blocks.
        self.jobs.try_send(job).map_err(|_| UserError::Busy)?;
        rx.await.map_err(|_| UserError::Hash("the hashing thread stopped".into()))?
    }
}

/// glibc raises its mmap threshold after a large block is freed, so later 19 MiB hash buffers
/// come from the heap and stay resident: measured, 35 hashes in a row left RSS 380 MiB higher.
/// A fixed threshold keeps every buffer of 1 MiB or more mapped on its own and returned on free.
fn return_big_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
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
