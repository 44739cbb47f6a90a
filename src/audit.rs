//! `stigmer audit head`, `verify`, `export` and `keygen`: the commands over the hash-chained
//! audit trail kept by `stigmer_activities::audit`. They only read the store. Also the loading
//! of the signing key (for the daemon and workers) and of the verify key.

use crate::client::OutputFormat;
use crate::config::{Config, Source};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;
use stigmer_activities::audit::{self, Anchor, Signer, VerifyKey, VerifyOptions};
use stigmer_activities::store::Store;

/// Exit code of `audit verify` when the chain is broken (1 is any other failure, 2 bad usage).
pub const EXIT_CHAIN_BROKEN: i32 = 3;

/// What an age (`--older-than`, or `--since` as a duration) accepts, for messages.
pub const AGE_ALLOWED: &str = "a whole number with s, m, h, d or w (90s, 30m, 24h, 7d, 2w)";

/// Parses an age such as `24h` into milliseconds; `None` when it is not one.
#[must_use]
pub fn parse_age_ms(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    digits.parse::<i64>().ok()?.checked_mul(unit_ms)
}

/// Parses `--since` into unix milliseconds: an RFC 3339 time, or an age back from `now_ms`.
pub fn parse_since(raw: &str, now_ms: i64) -> Result<i64, String> {
    let raw = raw.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    match parse_age_ms(raw) {
        Some(back) => Ok(now_ms.saturating_sub(back)),
        None => Err(format!(
            "--since {raw:?}: give an RFC 3339 time such as 2025-01-31T12:00:00Z, or a duration \
             back from now: {AGE_ALLOWED}"
        )),
    }
}

/// The JSON lines format of `audit export` (the only one so far; the flag leaves room).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
}

fn usage(msg: String) -> anyhow::Error {
    crate::cli::UsageError(msg).into()
}

/// The lines of a key file that hold the key: comments (`#`) and blank lines are skipped.
fn key_text(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The audit signing key the daemon or a worker signs each new head with, from
/// `audit_signing_key` (`STIGMER_AUDIT_SIGNING_KEY`); `None` when unset.
pub fn load_signer(cfg: &Config) -> Result<Option<Signer>> {
    let Some(path) = &cfg.audit_signing_key.value else {
        return Ok(None);
    };
    let source = &cfg.audit_signing_key.source;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "could not read the audit signing key {} (audit_signing_key, from {source}): make \
             it readable by this user, or write one with `stigmer audit keygen PATH`",
            path.display()
        )
    })?;
    let mut seed = [0u8; 32];
    if hex::decode_to_slice(key_text(&text), &mut seed).is_err() {
        bail!(
            "{} (audit_signing_key, from {source}) is not an audit signing key: it must hold 64 \
             hex characters (an ed25519 secret), as `stigmer audit keygen PATH` writes",
            path.display()
        );
    }
    let signer = Signer::from_seed(&seed);
    if beside_database(cfg, path) {
        eprintln!("stigmer: warning: {}", beside_database_warning(path));
    }
    Ok(Some(signer))
}

/// Whether `path` lies in the data dir, or in the directory of a SQLite database: where
/// whoever can rewrite the database can most likely read it too.
fn beside_database(cfg: &Config, path: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let Some(dir) = path.parent().and_then(|d| {
        canonical(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
    }) else {
        return false;
    };
    let mut guarded = vec![cfg.data_dir.value.clone()];
    if let Some(db) = cfg
        .database_url
        .value
        .strip_prefix("sqlite://")
        .or_else(|| cfg.database_url.value.strip_prefix("sqlite:"))
        && let Some(parent) = Path::new(db).parent()
    {
        guarded.push(parent.to_path_buf());
    }
    guarded
        .iter()
        .filter_map(|g| canonical(g))
        .any(|g| dir.starts_with(g))
}

fn beside_database_warning(path: &Path) -> String {
    format!(
        "the audit signing key {} is beside the database (in the data dir): whoever can \
         rewrite the database can most likely read the key and sign what they wrote, so the \
         signatures add little. Keep the key where only the workers can read it (docs/audit.md)",
        path.display()
    )
}

/// The key `audit verify` checks signatures with: `--verify-key` or `audit_verify_key`, given
/// as the public key itself or as a file holding it; `None` when unset.
fn load_verify_key(cfg: &Config) -> Result<Option<VerifyKey>> {
    let Some(raw) = &cfg.audit_verify_key.value else {
        return Ok(None);
    };
    let name = match &cfg.audit_verify_key.source {
        Source::Flag(flag) => flag.clone(),
        other => format!("audit_verify_key (from {other})"),
    };
    let looks_like_key = raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit());
    let text = if looks_like_key || !Path::new(raw).exists() {
        raw.clone()
    } else {
        key_text(
            &std::fs::read_to_string(raw)
                .with_context(|| format!("could not read the verify key file {raw} ({name})"))?,
        )
    };
    VerifyKey::from_hex(&text)
        .map(Some)
        .map_err(|e| usage(format!("{name}: {e}, or the path of a file holding it")))
}

/// Prints `text` on stdout in one write. A reader that stopped early (`stigmer audit head |
/// head -n 1`) is not an error.
fn print_out(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("could not write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// `stigmer audit head`: the chain head, to save outside the store and pass back to
/// `audit verify --expect` later.
pub async fn head(cfg: &Config, format: OutputFormat) -> Result<i32> {
    let store = Store::open(&cfg.database_url.value, false).await?;
    let head = audit::head(&store).await?;
    let mut text = match format {
        OutputFormat::Json => serde_json::to_string(&head)?,
        OutputFormat::Text => {
            let mut text = format!("{}:{}", head.seq, head.hash);
            if let (Some(signature), Some(key_id)) = (&head.signature, &head.key_id) {
                text.push_str(&format!("\nsignature {signature} (key {key_id})"));
            }
            text
        }
    };
    text.push('\n');
    print_out(&text)?;
    Ok(0)
}

/// `stigmer audit verify`: 0 when the chain holds (and holds `expect`, and its signatures
/// verify), [`EXIT_CHAIN_BROKEN`] at the first break.
pub async fn verify(cfg: &Config, format: OutputFormat, expect: Option<Anchor>) -> Result<i32> {
    let key = load_verify_key(cfg)?;
    let store = Store::open(&cfg.database_url.value, false).await?;
    let options = VerifyOptions { expect, key };
    let report = audit::verify_with(&store, &options).await?;
    let mut lines = Vec::new();
    match format {
        OutputFormat::Json => lines.push(serde_json::to_string(&report)?),
        OutputFormat::Text => match &report.broken {
            None => {
                lines.push(format!(
                    "audit chain intact: {} record(s); head seq {} hash {}",
                    report.intact, report.head_seq, report.head_hash
                ));
                if let Some(anchor) = &report.expected {
                    lines.push(format!("it holds the saved head {anchor}"));
                }
                if let Some(key) = &options.key
                    && report.head_seq == 0
                {
                    lines.push(format!(
                        "no records yet, so no signatures to check with key {}",
                        key.key_id()
                    ));
                } else if let Some(key) = &options.key {
                    lines.push(format!(
                        "{} signature(s) verified with key {}, the head's among them{}",
                        report.signatures_checked,
                        key.key_id(),
                        match report.signatures_other_key {
                            0 => String::new(),
                            n => format!("; {n} by other keys not checked"),
                        }
                    ));
                }
                if report.running > 0 {
                    lines.push(format!(
                        "{} execution(s) started and not yet ended (running, or their end \
                         record is being appended)",
                        report.running
                    ));
                }
            }
            Some(b) => {
                lines.push(format!(
                    "audit chain BROKEN at seq {} (execution {}): {}",
                    b.seq,
                    b.execution_id.as_deref().unwrap_or("unknown"),
                    b.problem
                ));
                lines.push(format!("{} record(s) before it are intact", report.intact));
            }
        },
    }
    lines.push(String::new());
    print_out(&lines.join("\n"))?;
    Ok(if report.ok() { 0 } else { EXIT_CHAIN_BROKEN })
}

/// `stigmer audit keygen PATH`: a new ed25519 signing key in PATH (created, mode 0600, never
/// overwritten); the public key on stdout.
pub fn keygen(path: &Path) -> Result<i32> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .context("could not read random bytes from /dev/urandom")?;
    let signer = Signer::from_seed(&seed);
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(usage(format!(
                "{} already exists: a key file is never overwritten (the old key may still be \
                 needed to verify). Give another path, or remove it first",
                path.display()
            )));
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "could not create {}: give a path in a directory you can write",
                    path.display()
                )
            });
        }
    };
    let public = signer.verify_key().to_hex();
    let text = format!(
        "# stigmer audit signing key (ed25519 secret, hex). Public key {public}, key id {}.\n\
         # Keep it where the database's writers cannot read it: see docs/audit.md.\n{}\n",
        signer.key_id(),
        hex::encode(seed)
    );
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("could not write {}", path.display()))?;
    println!("{public}");
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Ok(cfg) = Config::load(&crate::config::Flags::new())
        && beside_database(&cfg, path)
    {
        eprintln!("stigmer: warning: {}", beside_database_warning(path));
    }
    eprintln!(
        "stigmer: wrote an audit signing key to {} (mode 0600), key id {}.\n\
         Workers sign with it: audit_signing_key = \"{}\" (or STIGMER_AUDIT_SIGNING_KEY).\n\
         Auditors check with the public key above: stigmer audit verify --verify-key {public}",
        path.display(),
        signer.key_id(),
        path.display()
    );
    Ok(0)
}

/// `stigmer audit export`: JSON lines on stdout, one record per line with its hash.
pub async fn export(cfg: &Config, since_ms: Option<i64>, _format: ExportFormat) -> Result<i32> {
    let store = Store::open(&cfg.database_url.value, false).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = audit::export(&store, since_ms, |line| writeln!(out, "{line}")).await;
    match result {
        Ok(_) => {}
        // `stigmer audit export | head` closes the pipe early: that is not an error.
        Err(audit::ExportError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("could not write the export: {e}"))
        }
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_times_and_durations() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_since("24h", now), Ok(9 * 86_400_000));
        assert_eq!(parse_since("90s", now), Ok(now - 90_000));
        assert_eq!(parse_since("1970-01-02T00:00:00Z", now), Ok(86_400_000));
        for bad in [
            "",
            "h",
            "24",
            "24x",
            "-5m",
            "yesterday",
            "99999999999999999999w",
        ] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }
}
