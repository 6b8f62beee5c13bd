//! Facts about the machine this process runs on, shared by the worker (render slots), the
//! edge and `serve` (renders at once).

/// The cores this process may use (cgroup- and affinity-aware via std).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
