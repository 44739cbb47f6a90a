//! One file into or out of a container, through the Engine API's archive endpoints (a session's
//! `cp`). The engine resolves the path inside the container's own root, symbolic links included,
//! so a path never reaches the host's files. Bytes and the file's mode survive the round trip.

use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::StreamExt;

use crate::{Engine, EngineError, SANDBOX_UID};

/// The largest file copied in or out: 256 MiB.
pub const MAX_COPY_BYTES: u64 = 256 * 1024 * 1024;

/// A file read out of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFile {
    pub data: Vec<u8>,
    /// Permission bits (`0o755`, …).
    pub mode: u32,
}

/// Checks a path inside the container: absolute, no `..`, not a directory path, no NUL.
pub fn check_container_path(path: &str) -> Result<(), EngineError> {
    let p = std::path::Path::new(path);
    let ok = p.is_absolute()
        && path != "/"
        && !path.ends_with('/')
        && !path.contains('\0')
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidSpec(format!(
            "{path:?}: give the absolute path of a file inside the sandbox (e.g. \
             /workspace/data.csv), without `..`"
        )))
    }
}

impl Engine {
    /// Writes `data` as the file `path` in the running container `id`, owned by the sandbox
    /// user with permission bits `mode`. The directory it goes into must exist.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), EngineError> {
        check_container_path(path)?;
        if data.len() as u64 > MAX_COPY_BYTES {
            return Err(EngineError::InvalidSpec(format!(
                "{} bytes is more than a copy may carry ({} MiB); split it, or fetch it from \
                 inside the sandbox",
                data.len(),
                MAX_COPY_BYTES / (1024 * 1024)
            )));
        }
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = if dir.is_empty() { "/" } else { dir };
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode & 0o7777);
        header.set_uid(u64::from(SANDBOX_UID));
        header.set_gid(u64::from(SANDBOX_UID));
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        let mut archive = tar::Builder::new(Vec::with_capacity(data.len() + 2048));
        archive
            .append_data(&mut header, name, data)
            .and_then(|()| archive.finish())
            .map_err(|e| EngineError::Unexpected(format!("could not pack {path}: {e}")))?;
        let tar = archive
            .into_inner()
            .map_err(|e| EngineError::Unexpected(format!("could not pack {path}: {e}")))?;
        let options = UploadToContainerOptionsBuilder::new()
            .path(dir)
            .no_overwrite_dir_non_dir("true")
            .build();
        self.docker
            .upload_to_container(id, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| match crate::error::status_of(&e) {
                Some(404) => EngineError::InvalidSpec(format!(
                    "{dir} does not exist in the sandbox: make it first (mkdir -p {dir})"
                )),
                Some(400 | 403 | 409 | 500) => EngineError::InvalidSpec(format!(
                    "{path} cannot be written in the sandbox ({e}): it may be a directory or \
                     on a read-only mount"
                )),
                _ => EngineError::api(format!("could not copy {path} into container {id}"), e),
            })
    }

    /// Reads the regular file `path` out of container `id`, at most [`MAX_COPY_BYTES`].
    pub async fn read_file(&self, id: &str, path: &str) -> Result<ContainerFile, EngineError> {
        check_container_path(path)?;
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let mut stream = self.docker.download_from_container(id, Some(options));
        let mut tar = Vec::new();
        // The archive's headers and padding on top of the file itself.
        let bound = MAX_COPY_BYTES + 64 * 1024;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| match crate::error::status_of(&e) {
                Some(404) => {
                    EngineError::InvalidSpec(format!("{path} does not exist in the sandbox"))
                }
                _ => EngineError::api(format!("could not copy {path} out of container {id}"), e),
            })?;
            tar.extend_from_slice(&chunk);
            if tar.len() as u64 > bound {
                return Err(EngineError::InvalidSpec(format!(
                    "{path} is larger than a copy may carry ({} MiB); compress or split it \
                     inside the sandbox first",
                    MAX_COPY_BYTES / (1024 * 1024)
                )));
            }
        }
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive
            .entries()
            .map_err(|e| EngineError::Unexpected(format!("the engine's archive of {path}: {e}")))?;
        let Some(entry) = entries.next() else {
            return Err(EngineError::InvalidSpec(format!(
                "{path} does not exist in the sandbox"
            )));
        };
        let mut entry = entry
            .map_err(|e| EngineError::Unexpected(format!("the engine's archive of {path}: {e}")))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            return Err(EngineError::InvalidSpec(format!(
                "{path} is a directory: copy one file (pack a directory with tar inside the \
                 sandbox first)"
            )));
        }
        if !kind.is_file() {
            return Err(EngineError::InvalidSpec(format!(
                "{path} is not a regular file (a link, a device or a pipe)"
            )));
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data)
            .map_err(|e| EngineError::Unexpected(format!("the engine's archive of {path}: {e}")))?;
        Ok(ContainerFile { data, mode })
    }

    /// The running container of a session, if it has one yet.
    pub async fn session_container(
        &self,
        store_id: &str,
        session: &str,
    ) -> Result<Option<String>, EngineError> {
        Ok(self
            .list_managed(store_id)
            .await?
            .into_iter()
            .find(|c| {
                c.state == "running"
                    && c.labels.get(crate::LABEL_SESSION).map(String::as_str) == Some(session)
            })
            .map(|c| c.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_absolute_file_paths_without_parent_steps() {
        for ok in ["/workspace/a.txt", "/tmp/x", "/home/sandbox/.bashrc"] {
            assert!(check_container_path(ok).is_ok(), "{ok}");
        }
        for bad in ["a.txt", "/", "/tmp/", "/tmp/../etc/passwd", "", "/a\0b"] {
            assert!(check_container_path(bad).is_err(), "{bad:?}");
        }
    }
}
