//! Settings every `cargo bench` target shares: short runs, so the whole suite takes a
//! few minutes on two cores.

use std::time::Duration;

use criterion::Criterion;

/// Ten samples, half a second of warm-up, two seconds of measurement, no plots.
pub fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}
