//! One JSON line per call, appended to the configured `logFile`. Never stdout: that
//! carries the CNI answer alone.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Appends `fields` (plus `time`) as one line to `path`, creating the file (mode
/// 0640) and its directory when missing. A log that cannot be written is reported on
/// stderr and otherwise ignored: logging never fails a call.
pub fn append(path: &Path, fields: Map<String, Value>) {
    let mut line = Map::with_capacity(fields.len() + 1);
    line.insert("time".into(), rfc3339(SystemTime::now()).into());
    line.extend(fields);
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    if let Err(e) = write(path, text.as_bytes()) {
        eprintln!("nno-cni-shim: cannot write log file {}: {e}", path.display());
    }
}

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // One write of the whole line on an O_APPEND file: lines of concurrent calls
    // do not interleave.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)?
        .write_all(bytes)
}

/// `2026-11-25T08:15:02.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps() {
        let at = |secs: u64, ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn lines_are_appended_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/shim.log");
        for n in 0..2 {
            let mut fields = Map::new();
            fields.insert("n".into(), n.into());
            append(&path, fields);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["n"], 1);
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    }
}
