//! CPU time of this process, for `kpl bench` (and `examples/sdk_call_cost.rs`, which includes
//! this file).

/// utime + stime of the whole process (all threads) so far, in seconds: fields 14 and 15 of
/// `/proc/self/stat`, in clock ticks (USER_HZ = 100); 0 where that file is missing.
pub fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}
