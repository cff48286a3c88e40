//! Where the registry packages that `scripts/models` installs live on this machine (speech
//! and voice models, ONNX Runtime, the pinned NATS server). Nothing is downloaded at run time:
//! these paths are only read.

use std::path::{Path, PathBuf};

/// Where `scripts/models` installs unless `VBIN_MODELS_DIR` says otherwise:
/// `$HOME/.cache/vbin/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VBIN_MODELS_DIR") {
        return d.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    Path::new(&home).join(".cache/vbin/models")
}

/// The NATS server `scripts/models` pins (2.15.1; Debian's is 2.9.10), used by the cluster and
/// multi-filter tests and by the benchmarks' own NATS. It may be absent: callers say what to do.
pub fn pinned_nats_server() -> PathBuf {
    default_models_dir().join("nats-server")
}
