//! The payload codec: every payload stigmer sends to Temporal is encrypted with AES-256-GCM in the
//! format of Temporal's published encryption samples (Go, Python, TypeScript), so any SDK running
//! that sample codec with the key can start and read executions, and nothing else can.
//!
//! - The key is 32 raw bytes. A payload becomes a 12-byte random nonce followed by the ciphertext
//!   and tag of the serialized `Payload`, with no associated data and no compression, under the
//!   metadata `encoding: binary/encrypted` and `encryption-key-id: <id>`.
//! - Decoding never fails (in this SDK a decode error is a workflow task that fails forever):
//!   payloads that are not `binary/encrypted` pass through, as in the samples; one with an
//!   unknown key or a bad tag becomes a sentinel the workflow refuses. A payload that did decrypt
//!   is marked with the key id ([`stigmer_workflows::codec_marks`]), so the workflow can tell an
//!   input that came from a key holder from one that came in plain text.
//! - The key file holds one or more keys, one per line (`KEY_ID BASE64_KEY`; `#` starts a
//!   comment). Decoding uses any of them, encoding the last (the newest): rotate by appending a
//!   key, and retire one only when no history in retention uses it.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use stigmer_workflows::codec_marks;
use temporalio_common::data_converters::{
    DataConverter, DefaultFailureConverter, PayloadCodec, PayloadConversionError, PayloadConverter,
    SerializationContextData,
};
use temporalio_common::protos::temporal::api::common::v1::Payload;

/// The metadata key holding a payload's encoding.
const ENCODING: &str = "encoding";
/// The encoding of an encrypted payload (the samples' value).
const ENCRYPTED: &[u8] = b"binary/encrypted";
/// The metadata key naming the key a payload was encrypted with (the samples' name).
const KEY_ID: &str = "encryption-key-id";
/// Bytes of an AES-256 key.
const KEY_LEN: usize = 32;

/// One key of the key file.
pub struct Key {
    pub id: String,
    raw: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn new(id: String, raw: [u8; KEY_LEN]) -> Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, &raw)
            .map_err(|_| anyhow::anyhow!("not an AES-256 key"))?;
        Ok(Self {
            id,
            raw,
            aead: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random key, its id a fingerprint of it (which says nothing about the key).
    pub fn generate() -> Result<Self> {
        let mut raw = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
        let digest = Sha256::digest(raw);
        Self::new(format!("stigmer-{}", hex::encode(&digest[..6])), raw)
    }

    /// The key, base64 (what the samples' `KEY` is given as).
    #[must_use]
    pub fn base64(&self) -> String {
        BASE64.encode(self.raw)
    }

    /// The raw key, for deriving the codec server's tokens from it.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.raw
    }

    fn line(&self) -> String {
        format!("{} {}\n", self.id, self.base64())
    }
}

/// The keys of one cluster: decode with any, encode with the newest (the last).
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// Reads the key file, making it (mode 0600, one fresh key) when there is none. Two
    /// processes making it at once end with the same file: it is written aside and linked into
    /// place, and the loser reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "could not read the codec key file {} (codec_key_file): give a readable \
                         file, or remove it to have a new key made",
                        path.display()
                    )
                });
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        let key = Key::generate()?;
        let aside = path.with_extension(format!("new-{}", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&aside)?;
            file.write_all(
                b"# stigmer codec keys: KEY_ID BASE64_KEY, newest last. Keep this file secret.\n",
            )?;
            file.write_all(key.line().as_bytes())?;
            file.sync_all()
        })();
        let linked = written.and_then(|()| std::fs::hard_link(&aside, path));
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("could not write the codec key file {}", path.display())
                });
            }
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the codec key file {}", path.display()))?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| {
                anyhow::anyhow!(
                    "{} line {}: {what}; each line is KEY_ID BASE64_KEY (32 bytes), as `stigmer \
                     codec key` prints them",
                    path.display(),
                    n + 1
                )
            };
            let Some((id, encoded)) = line.split_once(char::is_whitespace) else {
                return Err(bad("no key after the key id"));
            };
            let raw = BASE64
                .decode(encoded.trim())
                .map_err(|_| bad("the key is not base64"))?;
            let raw: [u8; KEY_LEN] = raw.try_into().map_err(|_| bad("the key is not 32 bytes"))?;
            keys.push(Key::new(id.to_string(), raw)?);
        }
        if keys.is_empty() {
            bail!(
                "the codec key file {} holds no key: remove it to have one made, or copy in the \
                 cluster's",
                path.display()
            );
        }
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(
                "the codec key file {} can be read by others: chmod 600 it",
                path.display()
            );
        }
        Ok(Self { keys })
    }

    /// The key new payloads are encrypted with.
    #[must_use]
    pub fn newest(&self) -> &Key {
        // `parse` refuses a file without keys.
        &self.keys[self.keys.len() - 1]
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        self.keys.iter().find(|k| k.id.as_bytes() == id)
    }
}

/// The AES-256-GCM codec over a [`Keyring`].
#[derive(Clone)]
pub struct Codec {
    keys: Arc<Keyring>,
    rng: SystemRandom,
}

impl Codec {
    #[must_use]
    pub fn new(keys: Keyring) -> Self {
        Self {
            keys: Arc::new(keys),
            rng: SystemRandom::new(),
        }
    }

    /// The data converter every Temporal client (and the worker built on it) uses.
    #[must_use]
    pub fn data_converter(self) -> DataConverter {
        DataConverter::new(
            PayloadConverter::default(),
            DefaultFailureConverter::default(),
            self,
        )
    }

    /// Encrypts one payload with the newest key.
    pub fn encrypt(&self, mut payload: Payload) -> Result<Payload, PayloadConversionError> {
        // The marks are this worker's own notes about where a payload came from; they never
        // travel.
        payload.metadata.remove(codec_marks::DECRYPTED_WITH);
        payload.metadata.remove(codec_marks::CODEC_ERROR);
        let key = self.keys.newest();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| encode_error("the system's random source failed"))?;
        let mut sealed = payload.encode_to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .map_err(|_| encode_error("AES-GCM sealing failed"))?;
        let mut data = Vec::with_capacity(NONCE_LEN + sealed.len());
        data.extend_from_slice(&nonce);
        data.extend_from_slice(&sealed);
        Ok(encrypted_payload(&key.id, data))
    }

    /// Decrypts one payload; never an error (see the module doc).
    #[must_use]
    pub fn decrypt(&self, mut payload: Payload) -> Payload {
        if payload.metadata.get(ENCODING).map(Vec::as_slice) != Some(ENCRYPTED) {
            // Plain text passes through, but never with a mark claiming it was decrypted.
            payload.metadata.remove(codec_marks::DECRYPTED_WITH);
            payload.metadata.remove(codec_marks::CODEC_ERROR);
            return payload;
        }
        let key_id = payload.metadata.get(KEY_ID).cloned().unwrap_or_default();
        let Some(key) = self.keys.find(&key_id) else {
            return sentinel(format!(
                "the payload was encrypted with key {:?}, which this worker does not hold",
                String::from_utf8_lossy(&key_id)
            ));
        };
        if payload.data.len() < NONCE_LEN {
            return sentinel("the encrypted payload is too short to hold a nonce".into());
        }
        let mut sealed = payload.data.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = payload.data[..NONCE_LEN]
            .try_into()
            .unwrap_or([0; NONCE_LEN]);
        let Ok(plain) = key.aead.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut sealed,
        ) else {
            return sentinel(format!(
                "the payload did not decrypt with key {:?} (tampered with, or another key of the \
                 same id)",
                key.id
            ));
        };
        match Payload::decode(&plain[..]) {
            Ok(mut inner) => {
                inner.metadata.remove(codec_marks::CODEC_ERROR);
                inner.metadata.insert(
                    codec_marks::DECRYPTED_WITH.to_string(),
                    key.id.as_bytes().to_vec(),
                );
                inner
            }
            Err(_) => sentinel("the decrypted payload is not a serialized Payload".into()),
        }
    }
}

/// A payload in the samples' encrypted form: `data` is the nonce, ciphertext and tag.
fn encrypted_payload(key_id: &str, data: Vec<u8>) -> Payload {
    Payload {
        metadata: [
            (ENCODING.to_string(), ENCRYPTED.to_vec()),
            (KEY_ID.to_string(), key_id.as_bytes().to_vec()),
        ]
        .into(),
        data,
        ..Default::default()
    }
}

fn encode_error(what: &str) -> PayloadConversionError {
    PayloadConversionError::EncodingError(anyhow::anyhow!("{what}").into())
}

/// What an undecryptable payload becomes: JSON `null` that no stigmer type accepts, with the
/// reason in its metadata for the workflow to report.
fn sentinel(reason: String) -> Payload {
    Payload {
        metadata: [
            (ENCODING.to_string(), b"json/plain".to_vec()),
            (codec_marks::CODEC_ERROR.to_string(), reason.into_bytes()),
        ]
        .into(),
        data: b"null".to_vec(),
        ..Default::default()
    }
}

impl PayloadCodec for Codec {
    fn encode(
        &self,
        _: &SerializationContextData,
        payloads: Vec<Payload>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        let encoded: Result<Vec<_>, _> = payloads.into_iter().map(|p| self.encrypt(p)).collect();
        async move { encoded }.boxed()
    }

    fn decode(
        &self,
        _: &SerializationContextData,
        payloads: Vec<Payload>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        let decoded: Vec<_> = payloads.into_iter().map(|p| self.decrypt(p)).collect();
        async move { Ok(decoded) }.boxed()
    }
}

/// Seals a local session's saved shell state at rest (it holds exported variables, which may be
/// secrets) with the payload codec: the same key and AES-256-GCM as every Temporal payload.
pub struct SessionSeal(Codec);

impl SessionSeal {
    #[must_use]
    pub fn new(keys: Keyring) -> Self {
        Self(Codec::new(keys))
    }
}

impl stigmer_activities::session::StateSeal for SessionSeal {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        let payload = Payload {
            data: plain.to_vec(),
            ..Default::default()
        };
        self.0
            .encrypt(payload)
            .map(|sealed| sealed.encode_to_vec())
            .map_err(|e| e.to_string())
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let payload = Payload::decode(sealed).map_err(|e| format!("not a sealed state: {e}"))?;
        if payload.metadata.get(ENCODING).map(Vec::as_slice) != Some(ENCRYPTED) {
            return Err("the saved state is not encrypted".into());
        }
        let opened = self.0.decrypt(payload);
        if let Some(why) = opened.metadata.get(codec_marks::CODEC_ERROR) {
            return Err(String::from_utf8_lossy(why).into_owned());
        }
        Ok(opened.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Payload {
        Payload {
            metadata: [(ENCODING.to_string(), b"json/plain".to_vec())].into(),
            data: text.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn keyring(dir: &Path) -> (Codec, std::path::PathBuf) {
        let path = dir.join("codec.key");
        (Codec::new(Keyring::load_or_create(&path).unwrap()), path)
    }

    #[test]
    fn a_payload_round_trips_in_the_samples_format_and_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let (codec, path) = keyring(dir.path());
        let sealed = codec.encrypt(json(r#"{"secret":"hunter2"}"#)).unwrap();
        assert_eq!(sealed.metadata[ENCODING], ENCRYPTED);
        assert_eq!(sealed.metadata[KEY_ID], codec.keys.newest().id.as_bytes());
        assert!(!String::from_utf8_lossy(&sealed.data).contains("hunter2"));
        // nonce + serialized payload + 16-byte tag
        let inner_len = json(r#"{"secret":"hunter2"}"#).encode_to_vec().len();
        assert_eq!(sealed.data.len(), NONCE_LEN + inner_len + 16);
        let opened = codec.decrypt(sealed);
        assert_eq!(opened.data, br#"{"secret":"hunter2"}"#);
        assert_eq!(
            opened.metadata[codec_marks::DECRYPTED_WITH],
            codec.keys.newest().id.as_bytes()
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
        // The same file gives the same key back.
        let again = Keyring::load_or_create(&path).unwrap();
        assert_eq!(again.newest().base64(), codec.keys.newest().base64());
    }

    #[test]
    fn plain_text_passes_and_loses_any_claim_to_have_been_decrypted() {
        let dir = tempfile::tempdir().unwrap();
        let (codec, _) = keyring(dir.path());
        let mut forged = json("{}");
        forged
            .metadata
            .insert(codec_marks::DECRYPTED_WITH.into(), b"stigmer-x".to_vec());
        let passed = codec.decrypt(forged);
        assert_eq!(passed.data, b"{}");
        assert!(!passed.metadata.contains_key(codec_marks::DECRYPTED_WITH));
    }

    #[test]
    fn an_unknown_key_or_a_flipped_bit_becomes_a_sentinel_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, _) = keyring(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (theirs, _) = keyring(other.path());
        let foreign = theirs.decrypt(ours.encrypt(json("1")).unwrap());
        assert!(!foreign.metadata.contains_key(codec_marks::DECRYPTED_WITH));
        let reason =
            String::from_utf8_lossy(&foreign.metadata[codec_marks::CODEC_ERROR]).to_string();
        assert!(reason.contains("does not hold"), "{reason}");
        let mut tampered = ours.encrypt(json("1")).unwrap();
        let last = tampered.data.len() - 1;
        tampered.data[last] ^= 1;
        let opened = ours.decrypt(tampered);
        assert!(!opened.metadata.contains_key(codec_marks::DECRYPTED_WITH));
        assert_eq!(opened.data, b"null");
    }

    #[test]
    fn rotation_decodes_with_any_key_and_encodes_with_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (old, path) = keyring(dir.path());
        let sealed_old = old.encrypt(json("\"old\"")).unwrap();
        let newer = Key::generate().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(newer.line().as_bytes()).unwrap();
        let rotated = Codec::new(Keyring::load_or_create(&path).unwrap());
        assert_eq!(rotated.decrypt(sealed_old).data, b"\"old\"");
        let sealed_new = rotated.encrypt(json("\"new\"")).unwrap();
        assert_eq!(sealed_new.metadata[KEY_ID], newer.id.as_bytes());
    }

    #[test]
    fn a_bad_key_file_says_which_line_and_what_a_line_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codec.key");
        std::fs::write(&path, "# keys\nk1 bm90IDMyIGJ5dGVz\n").unwrap();
        let err = Keyring::load_or_create(&path).err().unwrap().to_string();
        assert!(
            err.contains("line 2") && err.contains("not 32 bytes"),
            "{err}"
        );
        std::fs::write(&path, "# nothing\n").unwrap();
        let err = Keyring::load_or_create(&path).err().unwrap().to_string();
        assert!(err.contains("holds no key"), "{err}");
    }

    /// The format is the samples': Python's `cryptography` AESGCM, as Temporal's Python
    /// encryption sample uses it, opens what this codec sealed and seals what it opens.
    #[test]
    fn pythons_sample_codec_reads_and_writes_the_same_payloads() {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import cryptography, temporalio"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "skipped: python3 with cryptography and temporalio (scripts/test.sh installs them)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (codec, _) = keyring(dir.path());
        let key = codec.keys.newest();
        let sealed = codec.encrypt(json(r#""from rust""#)).unwrap();
        let script = r#"
import base64, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
key = AESGCM(base64.b64decode(sys.argv[1]))
data = base64.b64decode(sys.argv[2])
inner = Payload.FromString(key.decrypt(data[:12], data[12:], None))
assert inner.data == b'"from rust"', inner.data
reply = Payload(metadata={"encoding": b"json/plain"}, data=b'"from python"')
nonce = os.urandom(12)
print(base64.b64encode(nonce + key.encrypt(nonce, reply.SerializeToString(), None)).decode())
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script, &key.base64(), &BASE64.encode(&sealed.data)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = BASE64
            .decode(String::from_utf8_lossy(&out.stdout).trim())
            .unwrap();
        let from_python = encrypted_payload(&key.id, data);
        let opened = codec.decrypt(from_python);
        assert_eq!(opened.data, br#""from python""#);
        assert!(opened.metadata.contains_key(codec_marks::DECRYPTED_WITH));
    }
}
