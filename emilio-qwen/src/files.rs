//! What a path a model is read from turns out to be, for checks and messages.
//!
//! Every file of a checkpoint (`config.json`, the weights, the tokenizer, a GGUF file) must be a
//! regular file, or a symbolic link to one (the hub cache links snapshots to blobs). Anything
//! else is refused before it is opened: reading a FIFO (named pipe) blocks until a writer
//! appears, so without this check `--model DIR` with a FIFO as `config.json` hangs forever, and
//! a directory named `model.safetensors` would otherwise be reported as "no weights".

use std::fs::FileType;
use std::io::ErrorKind;
use std::path::Path;

use candle_core::{bail, Result};
use sha2::{Digest, Sha256};

/// What `path` is, following symbolic links: `Ok(true)` for a regular file, `Ok(false)` when
/// nothing is there (or a symbolic link points nowhere), an error naming the path and what it
/// is otherwise (a directory, a FIFO, a socket, a device, or a path that cannot be examined).
pub fn regular_file_exists(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(meta) => bail!(
            "{} is {}, not a regular file; put the file itself there",
            path.display(),
            kind(&meta.file_type())
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => bail!("cannot examine {}: {e}", path.display()),
    }
}

/// [`regular_file_exists`], with a missing file an error too ("PATH not found").
pub fn check_regular_file(path: &Path) -> Result<()> {
    if regular_file_exists(path)? {
        Ok(())
    } else {
        bail!("{} not found", path.display())
    }
}

/// "a directory", "a FIFO (named pipe)", ... for messages.
pub fn kind(file_type: &FileType) -> &'static str {
    if file_type.is_dir() {
        return "a directory";
    }
    if file_type.is_file() {
        return "a regular file";
    }
    if file_type.is_symlink() {
        return "a symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
    }
    "not a regular file"
}

/// The SHA-256 of `files`' contents, one after the other, as lowercase hex: how an eval
/// reference recognises the model it was made from. Each file is read in full.
pub fn sha256_of_files(files: &[&Path]) -> Result<String> {
    let mut hasher = Sha256::new();
    for path in files {
        check_regular_file(path)?;
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::msg(format!("cannot read {}: {e}", path.display())))?;
        std::io::copy(&mut file, &mut hasher)
            .map_err(|e| candle_core::Error::msg(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_of_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes as lowercase hex (how the hub writes sha256 digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_directories_and_missing_paths() {
        let root = std::env::temp_dir().join(format!("emilio-qwen-files-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let dir = &root;
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(regular_file_exists(&file).unwrap());
        assert!(!regular_file_exists(&dir.join("missing")).unwrap());
        let err = regular_file_exists(dir).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let err = check_regular_file(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");
        #[cfg(unix)]
        {
            let link = dir.join("link");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            assert!(
                regular_file_exists(&link).unwrap(),
                "a link to a file is a file"
            );
            let dangling = dir.join("dangling");
            std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
            assert!(!regular_file_exists(&dangling).unwrap());
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
