//! Finding the BoxLite runtime (shim, guest agent, libkrunfw, ext4 tools) and checking that it
//! matches the `boxlite` crate this gateway was built with. Pure file checks, so `doctor` can
//! run them in any build.

use std::path::{Path, PathBuf};

/// The `boxlite` crate version this gateway is pinned to; the runtime must match, since the
/// host library, the shim and the in-VM guest speak a versioned gRPC protocol.
pub const BOXLITE_VERSION: &str = "0.10.8";

/// Files a usable runtime directory holds.
const REQUIRED: [&str; 4] = ["boxlite-shim", "boxlite-guest", "mke2fs", "debugfs"];

/// A runtime directory that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir {
    /// Where it is.
    pub path: PathBuf,
    /// The version recorded by the installer.
    pub version: String,
}

/// Why no usable runtime was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeDirError {
    /// Nothing at the configured or default place.
    #[error("BoxLite runtime not found at {}; install it with `deploy/boxlite/install-runtime.sh` or set BOXLITE_RUNTIME_DIR", .0.display())]
    Missing(PathBuf),
    /// The directory lacks files.
    #[error("BoxLite runtime at {} is incomplete (missing {}); reinstall it with `deploy/boxlite/install-runtime.sh`", .path.display(), .missing.join(", "))]
    Incomplete {
        /// Where.
        path: PathBuf,
        /// What is missing.
        missing: Vec<String>,
    },
    /// The runtime is for another crate version.
    #[error("BoxLite runtime at {} is version {found}, this gateway needs {BOXLITE_VERSION}; install the matching one with `deploy/boxlite/install-runtime.sh --version {BOXLITE_VERSION}`", .path.display())]
    WrongVersion {
        /// Where.
        path: PathBuf,
        /// What it says it is.
        found: String,
    },
}

/// The default install location: `$XDG_DATA_HOME/boxedclaw/boxlite/v<version>` (or under
/// `~/.local/share`), as `deploy/boxlite/install-runtime.sh` uses.
pub fn default_runtime_dir(xdg_data_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    let base = match (xdg_data_home, home) {
        (Some(x), _) => x.to_path_buf(),
        (None, Some(h)) => h.join(".local").join("share"),
        (None, None) => return None,
    };
    Some(
        base.join("boxedclaw")
            .join("boxlite")
            .join(format!("v{BOXLITE_VERSION}")),
    )
}

/// Checks `dir`: present, complete, and of [`BOXLITE_VERSION`] (read from its `VERSION` file).
///
/// # Errors
/// [`RuntimeDirError`] saying what is wrong and how to fix it.
pub fn check_runtime_dir(dir: &Path) -> Result<RuntimeDir, RuntimeDirError> {
    if !dir.is_dir() {
        return Err(RuntimeDirError::Missing(dir.to_path_buf()));
    }
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| (*f).to_owned())
        .collect();
    let has_krunfw = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libkrunfw"))
        })
        .unwrap_or(false);
    if !has_krunfw {
        missing.push("libkrunfw.so*".to_owned());
    }
    if !missing.is_empty() {
        return Err(RuntimeDirError::Incomplete {
            path: dir.to_path_buf(),
            missing,
        });
    }
    let version = std::fs::read_to_string(dir.join("VERSION"))
        .map(|v| v.trim().trim_start_matches('v').to_owned())
        .unwrap_or_else(|_| "unknown (no VERSION file)".to_owned());
    if version != BOXLITE_VERSION {
        return Err(RuntimeDirError::WrongVersion {
            path: dir.to_path_buf(),
            found: version,
        });
    }
    Ok(RuntimeDir {
        path: dir.to_path_buf(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_runtime(version: Option<&str>, skip: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in REQUIRED.iter().chain(&["libkrunfw.so.5"]) {
            if !skip.contains(f) {
                std::fs::write(dir.path().join(f), b"x").unwrap();
            }
        }
        if let Some(v) = version {
            std::fs::write(dir.path().join("VERSION"), format!("{v}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn a_complete_matching_runtime_is_found() {
        let dir = fake_runtime(Some(BOXLITE_VERSION), &[]);
        let found = check_runtime_dir(dir.path()).unwrap();
        assert_eq!(found.version, BOXLITE_VERSION);
    }

    #[test]
    fn missing_incomplete_and_wrong_versions_say_how_to_fix() {
        let gone = std::path::Path::new("/nonexistent/boxlite-runtime");
        let e = check_runtime_dir(gone).unwrap_err();
        assert!(matches!(e, RuntimeDirError::Missing(_)));
        assert!(e.to_string().contains("install-runtime.sh"));

        let dir = fake_runtime(Some(BOXLITE_VERSION), &["boxlite-guest", "libkrunfw.so.5"]);
        let e = check_runtime_dir(dir.path()).unwrap_err();
        assert_eq!(
            e,
            RuntimeDirError::Incomplete {
                path: dir.path().into(),
                missing: vec!["boxlite-guest".into(), "libkrunfw.so*".into()]
            }
        );

        let dir = fake_runtime(Some("0.11.0"), &[]);
        let e = check_runtime_dir(dir.path()).unwrap_err();
        assert!(matches!(&e, RuntimeDirError::WrongVersion { found, .. } if found == "0.11.0"));
        assert!(e.to_string().contains("--version 0.10.8"));

        let dir = fake_runtime(None, &[]);
        assert!(matches!(
            check_runtime_dir(dir.path()),
            Err(RuntimeDirError::WrongVersion { .. })
        ));
    }

    #[test]
    fn default_location_follows_xdg() {
        assert_eq!(
            default_runtime_dir(None, Some(Path::new("/home/a"))).unwrap(),
            Path::new("/home/a/.local/share/boxedclaw/boxlite/v0.10.8")
        );
        assert_eq!(
            default_runtime_dir(Some(Path::new("/x")), Some(Path::new("/home/a"))).unwrap(),
            Path::new("/x/boxedclaw/boxlite/v0.10.8")
        );
    }
}
