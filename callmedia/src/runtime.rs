//! The media engine's own runtime.

/// The runtime media sessions tick on: threads of their own, one per core, so a frame is never
/// late because an API request, a projection or a database round trip holds a worker of the
/// main runtime (tokio tasks are not preempted). Created on first use, never dropped.
pub fn media_runtime() -> &'static tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("vbin-media")
            .enable_time()
            .build()
            .expect("the media runtime starts")
    })
    .handle()
}
