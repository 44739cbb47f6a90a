//! One sandbox's files through the toolbox's file API: upload, download, information and
//! permissions (`/files/upload`, `/files/download`, `/files/info`, `/files/permissions`).
//!
//! Daytona resolves every path inside the sandbox (relative ones against its working
//! directory), so nothing here can reach another machine's files. Uploads are multipart forms
//! built here, byte for byte, so binary files arrive as they are; the answer to a download is
//! the file's bytes.

use reqwest::Method;
use serde::Deserialize;

use crate::error::Result;
use crate::http::{Body, Idempotency};
use crate::toolbox::Toolbox;

/// What `/files/info` says of a path (`FileInfo`). Daytona follows a symbolic link.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct FileInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub size: u64,
    /// The permission bits in octal, e.g. `0755`.
    #[serde(default)]
    pub permissions: String,
    /// Go's rendering of the mode, e.g. `-rwxr-xr-x`.
    #[serde(default)]
    pub mode: String,
}

impl FileInfo {
    /// The permission bits, from `permissions` (octal) or else `mode` (`-rwxr-x---`).
    #[must_use]
    pub fn mode_bits(&self) -> Option<u32> {
        let octal = self.permissions.trim();
        if !octal.is_empty()
            && let Ok(bits) = u32::from_str_radix(octal, 8)
        {
            return Some(bits & 0o7777);
        }
        let rwx = self.mode.get(self.mode.len().checked_sub(9)?..)?;
        let mut bits = 0;
        for (i, c) in rwx.chars().enumerate() {
            if c != '-' {
                bits |= 1 << (8 - i);
            }
        }
        Some(bits)
    }
}

impl Toolbox {
    fn file_url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<url::Url> {
        let mut url = self.url(segments)?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// What the sandbox has at `path`.
    ///
    /// # Errors
    /// 404 ([`Error::is_not_found`]) for a missing path; other error answers and transport
    /// errors.
    pub async fn file_info(&self, path: &str) -> Result<FileInfo> {
        self.call_with(
            format!("look at {path} in sandbox `{}`", self.sandbox_id()),
            Method::GET,
            self.file_url(&["files", "info"], &[("path", path)])?,
            None,
            self.call_timeout(),
            Idempotency::Retryable,
        )
        .await?
        .json()
    }

    /// Writes `data` as the file `path` (replacing a file already there).
    ///
    /// # Errors
    /// Error answers (a missing directory, a read-only place) and transport errors.
    pub async fn upload_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let (content_type, form) = multipart_file(path, data);
        // Large files take longer than a call: a minute per 64 MiB on top.
        let timeout = self.call_timeout()
            + std::time::Duration::from_secs(60 * (1 + data.len() as u64 / (64 << 20)));
        self.call_with(
            format!("upload {path} to sandbox `{}`", self.sandbox_id()),
            Method::POST,
            self.file_url(&["files", "upload"], &[("path", path)])?,
            Some(Body::Raw {
                content_type,
                data: bytes::Bytes::from(form),
            }),
            timeout,
            Idempotency::Retryable,
        )
        .await
        .map(drop)
    }

    /// The bytes of the file `path`. Check its size with [`Toolbox::file_info`] first: the
    /// answer is read whole.
    ///
    /// # Errors
    /// 404 for a missing file; other error answers and transport errors.
    pub async fn download_file(&self, path: &str, expected_bytes: u64) -> Result<Vec<u8>> {
        let timeout = self.call_timeout()
            + std::time::Duration::from_secs(60 * (1 + expected_bytes / (64 << 20)));
        Ok(self
            .call_with(
                format!("download {path} from sandbox `{}`", self.sandbox_id()),
                Method::GET,
                self.file_url(&["files", "download"], &[("path", path)])?,
                None,
                timeout,
                Idempotency::Retryable,
            )
            .await?
            .body)
    }

    /// Sets the permission bits of `path` (`/files/permissions?mode=0755`).
    ///
    /// # Errors
    /// Error answers and transport errors.
    pub async fn set_file_mode(&self, path: &str, mode: u32) -> Result<()> {
        let mode = format!("{:04o}", mode & 0o7777);
        self.call_with(
            format!(
                "set the mode of {path} to {mode} in sandbox `{}`",
                self.sandbox_id()
            ),
            Method::POST,
            self.file_url(
                &["files", "permissions"],
                &[("path", path), ("mode", &mode)],
            )?,
            None,
            self.call_timeout(),
            Idempotency::Retryable,
        )
        .await
        .map(drop)
    }
}

/// A `multipart/form-data` body with one part, `file`, holding `data` as it is. The boundary
/// is random and checked not to occur in the data.
fn multipart_file(path: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = loop {
        let candidate: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect();
        let candidate = format!("stigmer-{candidate}");
        if !data
            .windows(candidate.len())
            .any(|w| w == candidate.as_bytes())
        {
            break candidate;
        }
    };
    let name = path
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("file")
        .replace(['"', '\r', '\n'], "_");
    let mut form = Vec::with_capacity(data.len() + 256);
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(data);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), form)
}

/// The one file of a `multipart/form-data` body (the fake's side of an upload): the part named
/// `file`, or `None` when the body is not such a form.
#[cfg(feature = "fake")]
pub(crate) fn multipart_file_part(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let mut at = find(body, delimiter.as_bytes(), 0)?;
    loop {
        let part_start = at + delimiter.len();
        if body.get(part_start..part_start + 2) == Some(b"--") {
            return None;
        }
        let headers_end = find(body, b"\r\n\r\n", part_start)?;
        let headers = String::from_utf8_lossy(&body[part_start..headers_end]).to_lowercase();
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), headers_end + 4)?;
        if headers.contains("name=\"file\"") {
            return Some(body[headers_end + 4..next].to_vec());
        }
        at = next + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_carries_binary_data_as_it_is() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let (ct, form) = multipart_file("/tmp/a.bin", &data);
        assert_eq!(multipart_file_part(&ct, &form), Some(data));
        assert_eq!(
            multipart_file_part("multipart/form-data; boundary=x", b"junk"),
            None
        );
    }

    #[test]
    fn mode_bits_come_from_the_octal_or_the_letters() {
        let info = |permissions: &str, mode: &str| FileInfo {
            name: "f".into(),
            is_dir: false,
            size: 0,
            permissions: permissions.into(),
            mode: mode.into(),
        };
        assert_eq!(info("0755", "").mode_bits(), Some(0o755));
        assert_eq!(info("", "-rwxr-x---").mode_bits(), Some(0o750));
        assert_eq!(info("", "").mode_bits(), None);
    }
}
