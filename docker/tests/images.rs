//! Integration tests of image handling against the real engine: a missing image without
//! auto-pull is a clear, non-retryable error; a Dockerfile build goes through the Engine API.

mod common;

use common::{Harness, unique};
use stigmer_docker::{BuildSpec, EngineError, EnsureImage, ImageHow, ImageProgress};

#[tokio::test]
async fn missing_image_without_auto_pull_is_image_missing() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let image = format!("stigmer-test-missing:{}", unique("t"));
    let err = h
        .engine
        .ensure_image(&image, &EnsureImage::default(), &mut |_| {})
        .await
        .expect_err("missing");
    assert!(matches!(err, EngineError::ImageMissing { .. }), "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&image) && msg.contains("make sandbox-build-basic"),
        "{msg}"
    );
}

#[tokio::test]
async fn failed_pull_without_build_says_so() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let image = format!("stigmer-test-missing:{}", unique("t"));
    let opts = EnsureImage {
        auto_pull: true,
        build: None,
    };
    let mut events = 0;
    let err = h
        .engine
        .ensure_image(&image, &opts, &mut |_| events += 1)
        .await
        .expect_err("nothing to pull here");
    eprintln!("failed pull reads: {err}");
    assert!(matches!(err, EngineError::PullFailed { .. }), "{err}");
    assert!(err.to_string().contains(&image), "{err}");
}

#[tokio::test]
async fn present_image_is_used_as_it_is() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let info = h
        .engine
        .ensure_image(&h.image, &EnsureImage::default(), &mut |_| {})
        .await
        .expect("present");
    assert_eq!(info.how, ImageHow::Present);
    assert!(info.id.starts_with("sha256:"), "{}", info.id);
}

#[tokio::test]
async fn builds_from_a_dockerfile_when_pull_is_impossible() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nCOPY hello.txt /hello.txt\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("hello.txt"), "built by stigmer\n").expect("write");
    let tag = format!("stigmer-test-build:{}", unique("t").replace('-', ""));
    let opts = EnsureImage {
        // Pulling a name no registry has fails (and no registry is reachable here): the build
        // is the fallback either way.
        auto_pull: true,
        build: Some(
            BuildSpec::new(dir.path().join("Dockerfile"), dir.path())
                .with_build_arg("BASE", h.image.clone()),
        ),
    };
    let mut lines = Vec::new();
    let result = h
        .engine
        .ensure_image(&tag, &opts, &mut |p| {
            if let ImageProgress::Build { line } = p {
                lines.push(line);
            }
        })
        .await;
    let info = result.expect("built");
    assert_eq!(info.how, ImageHow::Built);
    assert_eq!(info.repo_digest, None);
    assert!(
        lines.iter().any(|l| l.contains("COPY hello.txt")),
        "{lines:?}"
    );
    let again = h
        .engine
        .ensure_image(&tag, &EnsureImage::default(), &mut |_| {})
        .await
        .expect("present");
    assert_eq!(again.how, ImageHow::Present);
    assert_eq!(again.id, info.id);
    let id = h.container(&h.spec_for(&tag)).await;
    assert_eq!(
        h.sh(&id, "cat /hello.txt").await.stdout,
        "built by stigmer\n"
    );
    h.engine.remove_container(&id).await.expect("remove");

    // A failing build says which step failed (a missing file fails without running a step).
    std::fs::write(
        dir.path().join("Dockerfile.bad"),
        format!("FROM {}\nCOPY not-in-the-context.txt /\n", h.image),
    )
    .expect("write");
    let bad_tag = format!("{tag}-bad");
    let err = h
        .engine
        .ensure_image(
            &bad_tag,
            &EnsureImage {
                auto_pull: false,
                build: Some(BuildSpec::new(
                    dir.path().join("Dockerfile.bad"),
                    dir.path(),
                )),
            },
            &mut |_| {},
        )
        .await
        .expect_err("bad build");
    eprintln!("failed build reads: {err}");
    assert!(matches!(err, EngineError::BuildFailed { .. }), "{err}");
    assert!(err.to_string().contains("not-in-the-context.txt"), "{err}");

    let _ = h
        .engine
        .docker()
        .remove_image(
            &tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

/// A derived image (Debian's python3 searches /usr/lib/python3/dist-packages) whose
/// `python3 -m pip` is a stand-in that records what it was asked to
/// install, so the requirements layering is tested without a package index.
async fn image_with_fake_pip(h: &Harness) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("pip")).expect("mkdir");
    std::fs::write(dir.path().join("pip/__init__.py"), "").expect("write");
    std::fs::write(
        dir.path().join("pip/__main__.py"),
        "import sys\nargs = sys.argv[1:]\nreq = args[args.index('-r') + 1]\n\
         open('/tmp/installed.txt', 'w').write(open(req).read())\nprint('fake pip installed', req)\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nCOPY pip /usr/lib/python3/dist-packages/pip\n",
            h.image
        ),
    )
    .expect("write");
    let tag = format!("stigmer-test-fakepip:{}", unique("t").replace('-', ""));
    h.engine
        .build_image(
            &tag,
            &BuildSpec::new(dir.path().join("Dockerfile"), dir.path()),
            &mut |_| {},
        )
        .await
        .expect("fake pip image");
    tag
}

#[tokio::test]
async fn requirements_image_is_layered_once_and_reused() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let base = image_with_fake_pip(&h).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let req = dir.path().join("requirements.txt");
    std::fs::write(&req, format!("requests==2.32.3\n# {}\n", unique("r"))).expect("write");

    let mut lines = Vec::new();
    let tag = h
        .engine
        .build_requirements_image(&base, &req, &mut |p| {
            if let ImageProgress::Build { line } = p {
                lines.push(line);
            }
        })
        .await
        .expect("requirements image");
    assert!(tag.starts_with("stigmer-req:"), "{tag}");
    assert!(
        lines.iter().any(|l| l.contains("fake pip installed")),
        "{lines:?}"
    );

    // Same base, same file: reused without a build.
    let mut rebuilt = false;
    let again = h
        .engine
        .build_requirements_image(&base, &req, &mut |_| rebuilt = true)
        .await
        .expect("reuse");
    assert_eq!(again, tag);
    assert!(!rebuilt, "the image was built again");

    // The requirements really are in the image, for uid 1000 to see.
    let id = h.container(&h.spec_for(&tag)).await;
    let r = h.sh(&id, "cat /tmp/installed.txt").await;
    assert!(
        r.stdout.starts_with("requests==2.32.3\n"),
        "{} {}",
        r.stdout,
        r.stderr
    );

    // (A different file or base gives a different tag: see the unit test of the tag.)
    h.engine.remove_container(&id).await.expect("remove");
    for image in [&tag, &base] {
        let _ = h
            .engine
            .docker()
            .remove_image(
                image,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
}

#[tokio::test]
async fn requirements_on_a_missing_base_or_file_fail_clearly() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let req = dir.path().join("requirements.txt");
    let err = h
        .engine
        .build_requirements_image(&h.image, &req, &mut |_| {})
        .await
        .expect_err("no file");
    assert!(matches!(err, EngineError::Io { .. }), "{err}");
    assert!(err.to_string().contains("requirements.txt"), "{err}");

    std::fs::write(&req, "requests\n").expect("write");
    let err = h
        .engine
        .build_requirements_image("stigmer-test-no-such-base:1", &req, &mut |_| {})
        .await
        .expect_err("no base");
    assert!(matches!(err, EngineError::ImageMissing { .. }), "{err}");
}
