//! `stigmer audit verify` and `stigmer audit export`: the commands over the hash-chained audit
//! trail kept by `stigmer_activities::audit`. They only read the store.

use crate::client::OutputFormat;
use crate::config::Config;
use anyhow::Result;
use std::io::Write;
use stigmer_activities::audit;
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

/// `stigmer audit verify`: 0 when the chain holds, [`EXIT_CHAIN_BROKEN`] at the first break.
pub async fn verify(cfg: &Config, format: OutputFormat) -> Result<i32> {
    let store = Store::open(&cfg.database_url.value, false).await?;
    let report = audit::verify(&store).await?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => match &report.broken {
            None => println!(
                "audit chain intact: {} record(s); head seq {} hash {}",
                report.intact, report.head_seq, report.head_hash
            ),
            Some(b) => {
                println!(
                    "audit chain BROKEN at seq {} (execution {}): {}",
                    b.seq,
                    b.execution_id.as_deref().unwrap_or("unknown"),
                    b.problem
                );
                println!("{} record(s) before it are intact", report.intact);
            }
        },
    }
    Ok(if report.ok() { 0 } else { EXIT_CHAIN_BROKEN })
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
