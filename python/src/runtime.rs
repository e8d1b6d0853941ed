//! The one tokio runtime of the process, shared by every producer.
//!
//! A multi-thread runtime with `KPL_THREADS` workers (default 1: at the rates one Python
//! thread can offer, one worker does the pipeline and the HTTP calls with the least CPU per
//! record, as `kpl --threads 1` does). It lives as long as the process: its threads never
//! hold the interpreter open at exit (see `shutdown_all` for records still in flight then).

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// Workers used when `KPL_THREADS` is not set.
const DEFAULT_WORKER_THREADS: usize = 1;

/// The runtime, built on first use.
pub fn get() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let workers = std::env::var("KPL_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or(DEFAULT_WORKER_THREADS);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("kpl-tokio")
            .enable_all()
            .build()
            .expect("kpl: cannot start the tokio runtime (threads or the I/O driver)")
    })
}
