//! Writing output files so that a reader never sees half of one: each file is written beside its destination
//! under a temporary name and renamed over it, so an interrupted or failed write leaves the old file (or none),
//! never a truncated one. And the checks an output path gets before a long job starts, not after it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name `path` is written under: hidden, in the same directory (a rename is only atomic within a
/// file system), unique to this process.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file, flushed to disk, renamed over `path`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Checks, before any work, that `path` can be written: not a directory, its directory exists and accepts a
/// new file, and it is none of `inputs` (an output written over the dataset it came from would destroy it).
/// The error names the path and the problem.
pub fn check_output(path: &Path, inputs: &[&Path]) -> Result<(), String> {
    let shown = path.display();
    if path.is_dir() {
        return Err(format!("{shown}: is a directory, not a file to write"));
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    if let Some(input) = inputs.iter().find(|i| same(path, i)) {
        return Err(format!("{shown}: is also the input {}; choose another output file", input.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("{shown}: the directory {} does not exist", dir.display()));
    }
    let tmp = temporary(path);
    std::fs::File::create(&tmp).map_err(|e| format!("{shown}: cannot write here: {e}"))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Checks several outputs: each as [`check_output`], and no two the same.
pub fn check_outputs(paths: &[&Path], inputs: &[&Path]) -> Result<(), String> {
    for (i, p) in paths.iter().enumerate() {
        check_output(p, inputs)?;
        if let Some(q) = paths[..i].iter().find(|q| *q == p) {
            return Err(format!("{}: is given for two outputs", q.display()));
        }
    }
    Ok(())
}
