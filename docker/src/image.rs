//! Making sure the sandbox image is on this host: present, pulled, or built.
//!
//! `ensure_image` runs on the host that will own the container (images are per engine). The
//! order is the user's contract: an image already present is used as it is; otherwise it is
//! pulled when auto-pull is on (with per-layer progress); otherwise, or when the pull fails, it
//! is built from the sandbox Dockerfile when one was given. The build goes through the Engine
//! API with a context tarred here (the `tar` crate), so the worker needs no `docker` CLI. With
//! none of these possible the error is [`EngineError::ImageMissing`], which says how to fix it.
//!
//! `build_requirements_image` derives an image with a project's Python requirements installed
//! into the sandbox user's virtualenv, tagged by content so the same requirements on the same
//! base are built once and then reused.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::status_of;
use crate::{Engine, EngineError};

/// How many lines of build output an error message quotes.
const BUILD_TAIL_LINES: usize = 20;

/// Where a missing image may come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnsureImage {
    /// Pull the image when it is missing (`STIGMER_SANDBOX_AUTO_PULL`).
    pub auto_pull: bool,
    /// Build the image from this Dockerfile when it is missing and cannot be pulled.
    pub build: Option<BuildSpec>,
}

/// A Dockerfile build: the file, its context directory, and build arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The Dockerfile (inside the context or not).
    pub dockerfile: PathBuf,
    /// The context directory sent to the engine (`.dockerignore` is not applied; keep it small).
    pub context: PathBuf,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
}

impl BuildSpec {
    /// A build of `dockerfile` with `context`, no build arguments.
    #[must_use]
    pub fn new(dockerfile: impl Into<PathBuf>, context: impl Into<PathBuf>) -> Self {
        BuildSpec {
            dockerfile: dockerfile.into(),
            context: context.into(),
            build_args: BTreeMap::new(),
        }
    }

    /// Adds a build argument.
    #[must_use]
    pub fn with_build_arg(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.build_args.insert(key.into(), value.into());
        self
    }
}

/// Progress of a pull or a build, for a progress bar or a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageProgress {
    /// A pull event for one layer (`layer` is empty for image-wide messages).
    Pull {
        /// Layer id.
        layer: String,
        /// "Downloading", "Extracting", "Pull complete", …
        status: String,
        /// Bytes done, when known.
        current: Option<i64>,
        /// Bytes in all, when known.
        total: Option<i64>,
    },
    /// A line of builder output.
    Build {
        /// The line, without its trailing newline.
        line: String,
    },
}

/// How the image came to be on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageHow {
    /// It was already present.
    Present,
    /// It was pulled.
    Pulled,
    /// It was built from a Dockerfile.
    Built,
}

/// The image that [`Engine::ensure_image`] made sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image id (`sha256:…`), for the audit record and to pin containers to this version.
    pub id: String,
    /// `repo@sha256:…` when the image came from a registry; `None` for local builds.
    pub repo_digest: Option<String>,
    /// Present, pulled or built.
    pub how: ImageHow,
}

impl Engine {
    /// Makes sure `image` exists on this host: present → used; else pulled when
    /// `opts.auto_pull`; else (or when the pull fails) built from `opts.build`; else
    /// [`EngineError::ImageMissing`] (or [`EngineError::PullFailed`] when a pull was tried and
    /// nothing could be built). `progress` sees pull and build events.
    pub async fn ensure_image(
        &self,
        image: &str,
        opts: &EnsureImage,
        progress: &mut (dyn FnMut(ImageProgress) + Send),
    ) -> Result<ImageInfo, EngineError> {
        if let Some(info) = self.inspect_image(image, ImageHow::Present).await? {
            return Ok(info);
        }
        let mut pull_error = None;
        if opts.auto_pull {
            match self.pull(image, progress).await {
                Ok(()) => {
                    if let Some(info) = self.inspect_image(image, ImageHow::Pulled).await? {
                        return Ok(info);
                    }
                }
                Err(e) => {
                    tracing::warn!(image, error = %e, "pull failed");
                    pull_error = Some(e);
                }
            }
        }
        if let Some(build) = &opts.build {
            if let Some(e) = &pull_error {
                progress(ImageProgress::Build {
                    line: format!("pulling {image} failed ({e}); building it instead"),
                });
            }
            self.build_image(image, build, progress).await?;
            return self
                .inspect_image(image, ImageHow::Built)
                .await?
                .ok_or_else(|| EngineError::BuildFailed {
                    tag: image.to_string(),
                    dockerfile: build.dockerfile.display().to_string(),
                    message: "the build finished but the image is not there".into(),
                });
        }
        match pull_error {
            Some(e) => Err(e),
            None => Err(EngineError::ImageMissing {
                image: image.to_string(),
                detail: if opts.auto_pull {
                    String::new()
                } else {
                    " and auto-pull is off".to_string()
                },
            }),
        }
    }

    /// The image's id and digest when it is on this host (nothing is pulled or built).
    pub async fn image_present(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        self.inspect_image(image, ImageHow::Present).await
    }

    /// The image's id and digest, or `None` when it is not on this host.
    async fn inspect_image(
        &self,
        image: &str,
        how: ImageHow,
    ) -> Result<Option<ImageInfo>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(ImageInfo {
                id: inspect.id.unwrap_or_default(),
                repo_digest: inspect.repo_digests.and_then(|d| d.into_iter().next()),
                how,
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(EngineError::api(
                format!("could not inspect image {image}"),
                e,
            )),
        }
    }

    async fn pull(
        &self,
        image: &str,
        progress: &mut (dyn FnMut(ImageProgress) + Send),
    ) -> Result<(), EngineError> {
        let (from_image, tag) = split_reference(image);
        let mut builder = CreateImageOptionsBuilder::new().from_image(from_image);
        if let Some(tag) = tag {
            builder = builder.tag(tag);
        }
        let mut stream = self.docker.create_image(Some(builder.build()), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|source| EngineError::PullFailed {
                image: image.to_string(),
                source,
            })?;
            let detail = info.progress_detail.unwrap_or_default();
            progress(ImageProgress::Pull {
                layer: info.id.unwrap_or_default(),
                status: info.status.unwrap_or_default(),
                current: detail.current,
                total: detail.total,
            });
        }
        Ok(())
    }

    /// Builds `tag` from `build` through the Engine API (classic builder, no pull of the base:
    /// the base image must be on this host or reachable by the engine).
    pub async fn build_image(
        &self,
        tag: &str,
        build: &BuildSpec,
        progress: &mut (dyn FnMut(ImageProgress) + Send),
    ) -> Result<String, EngineError> {
        let context = build.context.clone();
        let dockerfile = build.dockerfile.clone();
        let (tar, dockerfile_in_tar) =
            tokio::task::spawn_blocking(move || tar_context(&context, &dockerfile))
                .await
                .map_err(|e| EngineError::Unexpected(format!("the tar task failed: {e}")))??;
        let labels = HashMap::from([("io.stigmer.managed", "true")]);
        self.build_from_tar(
            tag,
            &build.dockerfile.display().to_string(),
            &dockerfile_in_tar,
            &build.build_args,
            &labels,
            tar,
            progress,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_from_tar(
        &self,
        tag: &str,
        dockerfile_display: &str,
        dockerfile_in_tar: &str,
        build_args: &BTreeMap<String, String>,
        labels: &HashMap<&str, &str>,
        tar: Vec<u8>,
        progress: &mut (dyn FnMut(ImageProgress) + Send),
    ) -> Result<String, EngineError> {
        let args: HashMap<&str, &str> = build_args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let options = BuildImageOptionsBuilder::new()
            .dockerfile(dockerfile_in_tar)
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .labels(labels)
            .build();
        let failed = |message: String| EngineError::BuildFailed {
            tag: tag.to_string(),
            dockerfile: dockerfile_display.to_string(),
            message,
        };
        let mut tail: VecDeque<String> = VecDeque::with_capacity(BUILD_TAIL_LINES);
        let mut image_id = None;
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(id) = info.aux.and_then(|a| a.id) {
                        image_id = Some(id);
                    }
                    let text = info.stream.or(info.status).unwrap_or_default();
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        if tail.len() == BUILD_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.to_string());
                        progress(ImageProgress::Build {
                            line: line.to_string(),
                        });
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    let last: Vec<String> = tail.into_iter().collect();
                    return Err(failed(format!(
                        "{}\n--- last lines of the build ---\n{}",
                        error.trim_end(),
                        last.join("\n")
                    )));
                }
                Err(e) if matches!(status_of(&e), Some(400..=499)) => {
                    return Err(failed(e.to_string()));
                }
                Err(e) => {
                    return Err(EngineError::api(format!("could not build image {tag}"), e));
                }
            }
        }
        match image_id {
            Some(id) => Ok(id),
            None => match self.inspect_image(tag, ImageHow::Built).await? {
                Some(info) => Ok(info.id),
                None => Err(failed("the build finished but produced no image".into())),
            },
        }
    }

    /// An image `FROM base` with the Python requirements file installed into the image's
    /// Python (the sandbox user's virtualenv, which is first on `PATH` in the stigmer images),
    /// tagged `stigmer-req:<hash>` where the hash covers the base image's id and the file's
    /// content. An image with that tag already on the host is reused without building.
    pub async fn build_requirements_image(
        &self,
        base: &str,
        requirements: &Path,
        progress: &mut (dyn FnMut(ImageProgress) + Send),
    ) -> Result<String, EngineError> {
        let content = tokio::fs::read(requirements)
            .await
            .map_err(|source| EngineError::Io {
                what: "requirements file",
                path: requirements.to_path_buf(),
                source,
            })?;
        let base_info = self
            .inspect_image(base, ImageHow::Present)
            .await?
            .ok_or_else(|| EngineError::ImageMissing {
                image: base.to_string(),
                detail: " (needed as the base of a requirements image)".into(),
            })?;
        let tag = requirements_tag(&base_info.id, &content);
        if self.inspect_image(&tag, ImageHow::Present).await?.is_some() {
            return Ok(tag);
        }
        let dockerfile = format!(
            "FROM {base}\n\
             COPY requirements.txt /tmp/stigmer-requirements.txt\n\
             RUN python3 -m pip install --no-cache-dir --disable-pip-version-check \
             -r /tmp/stigmer-requirements.txt\n"
        );
        let tar = tar_in_memory(&[
            ("Dockerfile", dockerfile.as_bytes()),
            ("requirements.txt", &content),
        ])
        .map_err(|source| EngineError::Io {
            what: "requirements build context",
            path: requirements.to_path_buf(),
            source,
        })?;
        let labels = HashMap::from([
            ("io.stigmer.managed", "true"),
            ("io.stigmer.requirements-base", base),
        ]);
        self.build_from_tar(
            &tag,
            &format!("requirements image for {}", requirements.display()),
            "Dockerfile",
            &BTreeMap::new(),
            &labels,
            tar,
            progress,
        )
        .await?;
        Ok(tag)
    }
}

/// `stigmer-req:<first 16 hex of sha256(base id, requirements)>`.
fn requirements_tag(base_id: &str, content: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"stigmer-req-v1\0");
    h.update(base_id.as_bytes());
    h.update(b"\0");
    h.update(content);
    let hex = hex::encode(h.finalize());
    format!("stigmer-req:{}", &hex[..16])
}

/// Splits `repo[:tag]` (or `repo@digest`) into what the pull API wants. Without a tag the
/// engine would pull every tag of the repository, so `latest` is made explicit.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], Some(&image[last_slash + i + 1..])),
        None => (image, Some("latest")),
    }
}

/// Tars the context directory (symlinks kept as links). Returns the tar and the Dockerfile's
/// path inside it; a Dockerfile outside the context is added under a reserved name.
fn tar_context(context: &Path, dockerfile: &Path) -> Result<(Vec<u8>, String), EngineError> {
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { what, path, source }
    };
    let context = std::fs::canonicalize(context).map_err(io_err("build context", context))?;
    let dockerfile_abs =
        std::fs::canonicalize(dockerfile).map_err(io_err("Dockerfile", dockerfile))?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", &context)
        .map_err(io_err("build context", &context))?;
    let in_tar = match dockerfile_abs.strip_prefix(&context) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => {
            let name = ".stigmer.Dockerfile".to_string();
            builder
                .append_path_with_name(&dockerfile_abs, &name)
                .map_err(io_err("Dockerfile", &dockerfile_abs))?;
            name
        }
    };
    let tar = builder
        .into_inner()
        .map_err(io_err("build context", &context))?;
    Ok((tar, in_tar))
}

/// A tar of a few in-memory files.
fn tar_in_memory(files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, *data)?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(split_reference("debian"), ("debian", Some("latest")));
        assert_eq!(
            split_reference("debian:bookworm"),
            ("debian", Some("bookworm"))
        );
        assert_eq!(
            split_reference("localhost:5000/x/y"),
            ("localhost:5000/x/y", Some("latest"))
        );
        assert_eq!(
            split_reference("ghcr.io/stigmer/agent-sandbox-basic:latest"),
            ("ghcr.io/stigmer/agent-sandbox-basic", Some("latest"))
        );
        assert_eq!(split_reference("x@sha256:abc"), ("x@sha256:abc", None));
    }

    #[test]
    fn requirements_tag_depends_on_base_and_content() {
        let a = requirements_tag("sha256:1", b"requests\n");
        assert!(a.starts_with("stigmer-req:"));
        assert_eq!(a.len(), "stigmer-req:".len() + 16);
        assert_eq!(a, requirements_tag("sha256:1", b"requests\n"));
        assert_ne!(a, requirements_tag("sha256:2", b"requests\n"));
        assert_ne!(a, requirements_tag("sha256:1", b"flask\n"));
    }

    #[test]
    fn context_tar_holds_the_dockerfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/a.txt"), "a").expect("write");
        let (tar, name) = tar_context(dir.path(), &dir.path().join("Dockerfile")).expect("tar");
        assert_eq!(name, "Dockerfile");
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert!(names.iter().any(|n| n.ends_with("sub/a.txt")), "{names:?}");

        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("Dockerfile.x"), "FROM y\n").expect("write");
        let (_, name) = tar_context(dir.path(), &outside.path().join("Dockerfile.x")).expect("tar");
        assert_eq!(name, ".stigmer.Dockerfile");
    }
}
