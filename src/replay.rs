//! The file driver: `trailspike replay` and `trailspike backfill`.
//!
//! Each input file (or `-` for stdin) is one source with its own
//! watermark, as a Kafka partition is. Inputs are read interleaved, always
//! from the one that is furthest behind in event time, so files that
//! cover the same hours (one per region, say) do not make each other's
//! records late. When every input is exhausted, every open window closes.
//!
//! A file is JSON lines (each line a record or a `{"Records": [...]}`
//! body) or one whole CloudTrail log file; either may be gzip-compressed.
//! The format is told from the first line: a JSON value that ends there
//! means JSON lines.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::alert::Alert;
use crate::config::{Config, ConfigError};
use crate::engine::{DeadLetter, Engine};
use crate::metrics::Metrics;
use crate::store::{StateStore, StoreError};
use crate::window::SourceId;

/// Messages between two commits of the state store.
const MESSAGES_PER_COMMIT: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing alerts failed")]
    Output(#[source] io::Error),
}

/// An input that could not be read; the others still are.
#[derive(Debug)]
pub struct InputFailure {
    pub path: PathBuf,
    pub error: io::Error,
}

/// How a replay ended, beyond what its metrics count.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub failures: Vec<InputFailure>,
    pub alerts: u64,
}

/// Reads `inputs`, runs the detection with `store` as its baseline, and
/// hands each alert to `on_alert`, oldest window first.
pub fn run(
    inputs: &[PathBuf],
    config: &Config,
    store: &StateStore,
    metrics: Arc<Metrics>,
    on_alert: &mut dyn FnMut(&Alert) -> io::Result<()>,
) -> Result<ReplayReport, ReplayError> {
    let mut engine = Engine::new(config, metrics)?;
    engine.spill_to(store)?;
    let mut report = ReplayReport::default();
    let mut inputs = open_inputs(inputs, &mut report);
    // The wall clock stands in for the message time of the future-skew
    // guard: a record from after the replay started is certainly corrupt.
    let arrival_unix = time::OffsetDateTime::now_utc().unix_timestamp();
    // And for the catch-up age of alerts (`alerts.max_alert_age`).
    let closed_at_ms = arrival_unix * 1000;
    let mut changes = store.changes();
    let mut pending_alerts = Vec::new();
    let mut since_commit = 0;
    while let Some(index) = furthest_behind(&inputs, &engine) {
        let input = &mut inputs[index];
        match input.messages.next_message() {
            Ok(Some((line, message))) => {
                let origin = FileLine {
                    name: &input.name,
                    line,
                };
                let mut ignore = |_: DeadLetter<'_>| {};
                engine.process_message(
                    input.source,
                    &message,
                    arrival_unix,
                    0,
                    &origin,
                    &mut ignore,
                );
            }
            Ok(None) => finish_input(&mut inputs, index, &mut engine),
            Err(error) => {
                tracing::error!(input = %input.name, %error, "cannot read input");
                report.failures.push(InputFailure {
                    path: PathBuf::from(&input.name),
                    error,
                });
                finish_input(&mut inputs, index, &mut engine);
            }
        }
        pending_alerts.extend(engine.close_ready(&mut changes, closed_at_ms)?);
        since_commit += 1;
        if since_commit >= MESSAGES_PER_COMMIT {
            changes.commit()?;
            changes = store.changes();
            emit(&mut pending_alerts, engine.metrics(), on_alert, &mut report)?;
            since_commit = 0;
        }
    }
    pending_alerts.extend(engine.close_all(&mut changes, closed_at_ms)?);
    changes.commit()?;
    emit(&mut pending_alerts, engine.metrics(), on_alert, &mut report)?;
    // Replay produces to stdout, not to a broker: nothing waits in the
    // outbox for an acknowledgement.
    for (seq, _) in store.outbox()? {
        store.acknowledge(seq)?;
    }
    engine
        .metrics()
        .baseline_arns
        .set(store.baseline_count() as i64);
    Ok(report)
}

fn emit(
    alerts: &mut Vec<Alert>,
    metrics: &Metrics,
    on_alert: &mut dyn FnMut(&Alert) -> io::Result<()>,
    report: &mut ReplayReport,
) -> Result<(), ReplayError> {
    for alert in alerts.drain(..) {
        on_alert(&alert).map_err(ReplayError::Output)?;
        metrics.alert_produced();
        report.alerts += 1;
    }
    Ok(())
}

struct Input {
    name: String,
    source: SourceId,
    messages: MessageReader,
}

fn open_inputs(paths: &[PathBuf], report: &mut ReplayReport) -> Vec<Input> {
    let mut inputs = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        match MessageReader::open(path) {
            Ok(messages) => inputs.push(Input {
                name: path.display().to_string(),
                source: index as SourceId,
                messages,
            }),
            Err(error) => {
                tracing::error!(input = %path.display(), %error, "cannot open input");
                report.failures.push(InputFailure {
                    path: path.clone(),
                    error,
                });
            }
        }
    }
    inputs
}

fn finish_input(inputs: &mut Vec<Input>, index: usize, engine: &mut Engine) {
    let input = inputs.swap_remove(index);
    engine.windows_mut().remove_source(input.source);
}

/// The input whose source has seen the least event time; one that has
/// seen none yet comes first.
fn furthest_behind(inputs: &[Input], engine: &Engine) -> Option<usize> {
    let sources = engine.windows().sources();
    (0..inputs.len()).min_by_key(|&i| {
        let seen = sources
            .get(&inputs[i].source)
            .and_then(|c| c.max_event_time);
        (seen, inputs[i].source)
    })
}

/// `file:line`, built only when a log line needs it.
struct FileLine<'a> {
    name: &'a str,
    line: u64,
}

impl fmt::Display for FileLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.line)
    }
}

/// Splits an input into messages.
pub struct MessageReader {
    reader: Box<dyn BufRead>,
    /// The first line, read ahead to tell the format.
    pending: Option<Vec<u8>>,
    whole_document: bool,
    line: u64,
}

impl MessageReader {
    /// Opens a path (`-` is stdin), undoing gzip when the content is gzip.
    pub fn open(path: &Path) -> io::Result<MessageReader> {
        let raw: Box<dyn Read> = if path.as_os_str() == "-" {
            Box::new(io::stdin().lock())
        } else {
            Box::new(File::open(path)?)
        };
        Self::new(raw)
    }

    pub fn new(raw: impl Read + 'static) -> io::Result<MessageReader> {
        let mut buffered = BufReader::with_capacity(256 * 1024, raw);
        let is_gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let mut reader: Box<dyn BufRead> = if is_gzip {
            Box::new(BufReader::with_capacity(
                256 * 1024,
                flate2::read::MultiGzDecoder::new(buffered),
            ))
        } else {
            Box::new(buffered)
        };
        // Blank lines before the first content do not decide the format.
        let mut first = Vec::new();
        let mut blank_lines = 0;
        while reader.read_until(b'\n', &mut first)? > 0 && is_blank(&first) {
            first.clear();
            blank_lines += 1;
        }
        let whole_document = starts_log_file(&first);
        Ok(MessageReader {
            reader,
            pending: Some(first),
            whole_document,
            line: blank_lines,
        })
    }

    /// The next non-empty message and the line it starts on.
    pub fn next_message(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.whole_document {
            return self.read_document();
        }
        loop {
            let mut line = match self.pending.take() {
                Some(first) => first,
                None => {
                    let mut buffer = Vec::new();
                    if self.reader.read_until(b'\n', &mut buffer)? == 0 {
                        return Ok(None);
                    }
                    buffer
                }
            };
            self.line += 1;
            if line.is_empty() {
                return Ok(None);
            }
            while line.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some((self.line, line)));
            }
        }
    }

    fn read_document(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let Some(mut document) = self.pending.take() else {
            return Ok(None);
        };
        self.reader.read_to_end(&mut document)?;
        self.line = 1;
        Ok(Some((1, document)))
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Whether `first_line` opens a pretty-printed CloudTrail log file: a lone
/// `{`, or `{"Records": [` continued on the next lines. Any other first
/// line means JSON lines, so a first record cut short costs only itself.
fn starts_log_file(first_line: &[u8]) -> bool {
    let text = first_line.trim_ascii();
    if text == b"{" {
        return true;
    }
    let opens_records = text
        .strip_prefix(b"{")
        .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"\"Records\""));
    opens_records
        && serde_json::from_slice::<serde::de::IgnoredAny>(text)
            .is_err_and(|e| e.is_eof())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(text: &[u8]) -> Vec<(u64, String)> {
        let mut reader = MessageReader::new(io::Cursor::new(text.to_vec())).unwrap();
        let mut seen = Vec::new();
        while let Some((line, message)) = reader.next_message().unwrap() {
            seen.push((line, String::from_utf8(message).unwrap()));
        }
        seen
    }

    fn record(arn: &str, event_time: i64) -> String {
        format!(
            r#"{{"eventTime":"{}","eventType":"AwsApiCall","eventName":"X","userIdentity":{{"arn":"{arn}"}}}}"#,
            crate::alert::rfc3339(event_time)
        )
    }

    #[test]
    fn baselines_idle_longer_than_the_ttl_expire() {
        let mut lines = vec![record("gone", 3_600)];
        for hour in 1..72 {
            lines.push(record("active", hour * 3_600));
        }
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, lines.join("\n")).unwrap();
        let config = Config::from_toml("[state]\nbaseline_ttl = \"1day\"\n").unwrap();
        let store = StateStore::temporary().unwrap();
        let metrics = Arc::new(Metrics::new());
        run(&[input], &config, &store, metrics.clone(), &mut |_| Ok(())).unwrap();
        assert_eq!(store.baseline("gone").unwrap(), None);
        assert_eq!(
            store.baseline("active").unwrap().unwrap().num_data_points,
            71
        );
        assert_eq!(metrics.baselines_expired.get(), 1);
        assert_eq!(store.baseline_count(), 1);
    }

    #[test]
    fn json_lines_are_split_and_blank_lines_skipped() {
        let seen = messages(b"{\"a\":1}\r\n\n  \n{\"b\":2}");
        assert_eq!(seen, [(1, "{\"a\":1}".into()), (4, "{\"b\":2}".into())]);
    }

    #[test]
    fn a_pretty_printed_log_file_is_one_message() {
        let seen = messages(b"{\n  \"Records\": [\n {\"x\": 1}\n ]\n}\n");
        assert_eq!(seen.len(), 1);
        assert!(seen[0].1.contains("Records"));
    }

    #[test]
    fn a_log_file_after_blank_lines_is_still_one_message() {
        let seen = messages(b"\n  \n{\"Records\": [\n {\"x\": 1}\n ]}\n");
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_first_record_cut_short_costs_only_itself() {
        let seen = messages(b"{\"eventTime\":\"x\",\"userIdentity\":{\n{\"b\":2}\n");
        assert_eq!(
            seen,
            [
                (1, "{\"eventTime\":\"x\",\"userIdentity\":{".into()),
                (2, "{\"b\":2}".into())
            ]
        );
    }

    #[test]
    fn a_malformed_first_line_is_still_json_lines() {
        let seen = messages(b"{oops}\n{\"b\":2}\n");
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn gzip_input_is_decompressed() {
        use std::io::Write;
        let mut encoder =
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        assert_eq!(messages(&encoder.finish().unwrap()).len(), 2);
    }
}
