//! The `trailspike` command line.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use std::sync::atomic::{AtomicBool, Ordering};

use trailspike::config::{Config, LogFormat};
use trailspike::demo;
use trailspike::generate::{self, GenerateArgs};
use trailspike::kafka::pipeline::{
    self, Health, PipelineError, ReloadOptions, RunOptions,
};
use trailspike::kafka::{changelog, scaled};
use trailspike::metrics::Metrics;
use trailspike::parse::{RejectReason, SkipReason};
use trailspike::replay;
use trailspike::server;
use trailspike::store::{self, StateStore};

/// jemalloc for the whole process, librdkafka's C allocations included
/// (`unprefixed_malloc_on_supported_platforms`): librdkafka allocates each
/// fetched message on its broker thread and the pipeline frees it on its
/// own, and glibc's malloc serialises such cross-thread frees on the
/// broker thread's arena lock. A profile of `trailspike run` showed the
/// pipeline thread asleep on that lock more than on anything else.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Alerts when one AWS identity suddenly makes far more API calls than usual"
)]
struct Cli {
    /// TOML config file; `TRAILSPIKE_<SECTION>__<KEY>` variables override it.
    #[arg(long, global = true, env = "TRAILSPIKE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the detection over CloudTrail files and print alerts as JSON lines.
    Replay {
        /// Start from (and update) the baselines in this state directory
        /// instead of an empty baseline.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Files of JSON lines or CloudTrail log files, gzip or not; `-` is stdin.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Build baselines from history without emitting alerts.
    Backfill {
        #[arg(long)]
        state: PathBuf,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Write synthetic CloudTrail records (JSON lines) with injected spikes.
    Generate {
        #[command(flatten)]
        args: GenerateArgs,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also write the injected spikes as JSON lines to this file.
        #[arg(long)]
        spikes_out: Option<PathBuf>,
    },
    /// Inspect or move baselines.
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Run the Kafka pipeline until SIGTERM or SIGINT.
    Run {
        /// Stop cleanly once every assigned partition has been read to its
        /// end, instead of waiting for more (batch jobs and tests).
        #[arg(long)]
        stop_at_end: bool,
    },
    /// Zero-setup demo: an in-process Kafka, bundled CloudTrail with
    /// spikes, the same pipeline as `run`, alerts printed as they arrive.
    Demo {
        /// Keep running after the bundled data is done, until Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
    /// Load and check the config, then print it with secrets redacted.
    CheckConfig,
}

#[derive(Debug, Subcommand)]
enum BaselineCommand {
    /// Write every baseline as CSV with the Splunk lookup's header.
    Export {
        /// The state directory of one instance (only once it has stopped).
        #[arg(long, required_unless_present = "from_kafka")]
        state: Option<PathBuf>,
        /// Read the baselines of a whole scaled-out deployment from its
        /// changelog topic (the config's kafka and scale_out sections).
        #[arg(long, conflicts_with = "state")]
        from_kafka: bool,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Load baselines from a CSV with the lookup's columns.
    Import {
        #[arg(long)]
        state: PathBuf,
        file: PathBuf,
    },
    /// Print one ARN's baseline.
    Show {
        #[arg(long)]
        state: PathBuf,
        arn: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("trailspike: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config, &cli.command);
    match run(cli.command, &config, cli.config) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("trailspike: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config, command: &Command) {
    // Offline commands print their results on stdout; their logs stay on
    // stderr and quiet unless asked for.
    let default_level = match command {
        Command::Replay { .. }
        | Command::Backfill { .. }
        | Command::Generate { .. }
        | Command::Demo { .. } => "warn",
        _ => config.log.level.as_str(),
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        // Colour only for a person at a terminal, not for log collectors.
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(
    command: Command,
    config: &Config,
    config_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Replay { state, inputs } => {
            replay_files(config, state.as_deref(), &inputs, true)
        }
        Command::Backfill { state, inputs } => {
            replay_files(config, Some(&state), &inputs, false)
        }
        Command::Generate {
            args,
            output,
            spikes_out,
        } => generate_records(&args, output.as_deref(), spikes_out.as_deref()),
        Command::Baseline { command } => baseline(command, config),
        Command::Run { stop_at_end } => service(
            config,
            Service::Run {
                stop_at_end,
                config_file,
            },
        ),
        Command::Demo { follow } => service(config, Service::Demo { follow }),
        Command::CheckConfig => {
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

enum Service {
    Run {
        stop_at_end: bool,
        config_file: Option<PathBuf>,
    },
    Demo {
        follow: bool,
    },
}

/// Exit code of a stop that did not finish within `kafka.shutdown_timeout`.
const EXIT_SHUTDOWN_TIMEOUT: u8 = 3;
/// Exit code after a second signal forced the process down.
const EXIT_FORCED: i32 = 130;
/// How long past `kafka.shutdown_timeout` a stop may run before the
/// process ends regardless: the pipeline enforces the timeout itself, so
/// only a stop stuck inside a library call reaches this.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the pipeline (or the demo) on a blocking thread, with the metrics
/// server and signal handling on a small tokio runtime beside it.
fn service(config: &Config, service: Service) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let (address, server) =
            server::bind(config.metrics.listen, metrics.clone(), health.clone()).await?;
        tokio::spawn(server);
        tracing::info!(%address, "serving /metrics, /healthz and /readyz");
        let shutdown = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        let stop_limit = config.kafka.shutdown_timeout + STOP_GRACE;
        tokio::spawn(watch_signals(shutdown.clone(), stop_limit));
        tokio::spawn(watch_reload_signal(reload.clone()));
        let state_dir = config.state.dir.clone();
        let config = config.clone();
        let outcome = tokio::task::spawn_blocking(move || match service {
            Service::Run {
                stop_at_end,
                config_file,
            } => {
                if config_file.is_none() {
                    tracing::info!("no --config file: the tuning cannot be reloaded");
                }
                let options = RunOptions {
                    stop_at_end,
                    reload: config_file.map(|config_file| ReloadOptions {
                        config_file,
                        requested: reload,
                    }),
                };
                if config.scale_out.enabled {
                    scaled::run(&config, metrics, health, shutdown, options)
                        .map_err(Into::into)
                } else {
                    pipeline::run(&config, metrics, health, shutdown, options)
                        .map_err(Into::into)
                }
            }
            Service::Demo { follow } => {
                eprintln!("demo: metrics at http://{address}/metrics");
                let printed = demo::run(config, follow, metrics, health, shutdown)?;
                eprintln!("demo: {printed} alerts read back from the alerts topic; done");
                Ok(())
            }
        })
        .await
        .context("pipeline thread")?;
        exit_code(outcome, &state_dir)
    })
}

fn exit_code(outcome: anyhow::Result<()>, state_dir: &Path) -> anyhow::Result<ExitCode> {
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            let timed_out = matches!(
                error.downcast_ref::<PipelineError>(),
                Some(PipelineError::ShutdownIncomplete(..))
            );
            if timed_out {
                eprintln!("trailspike: {error:#}");
                return Ok(ExitCode::from(EXIT_SHUTDOWN_TIMEOUT));
            }
            // The line log collectors see (a failed store, a failed
            // delivery): main's plain stderr line is not in the log format.
            tracing::error!(
                error = format!("{error:#}"),
                state_dir = %state_dir.display(),
                "stopped by an error; input after the last checkpoint is read again on restart"
            );
            Err(error)
        }
    }
}

/// The first SIGTERM or SIGINT asks for a clean stop, which may take
/// `stop_limit`; a second signal, or the limit passing, ends the process at
/// once. Ending it there is a crash as far as state goes, which loses
/// nothing: what was not committed is read again on restart.
async fn watch_signals(shutdown: Arc<AtomicBool>, stop_limit: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let mut stop_deadline = None;
    loop {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            () = sleep_until_some(stop_deadline) => {
                tracing::error!(
                    limit_secs = stop_limit.as_secs_f64(),
                    "the stop did not finish within kafka.shutdown_timeout; exiting \
                     without it, and input after the last commit is read again on restart"
                );
                std::process::exit(i32::from(EXIT_SHUTDOWN_TIMEOUT));
            }
        }
        if stop_deadline.is_some() {
            tracing::warn!("second signal: exiting without saving state");
            std::process::exit(EXIT_FORCED);
        }
        tracing::info!("signal received: stopping cleanly (send again to force)");
        shutdown.store(true, Ordering::Relaxed);
        stop_deadline = Some(tokio::time::Instant::now() + stop_limit);
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// SIGHUP asks the pipeline to read the tuning from the config file again.
async fn watch_reload_signal(reload: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "cannot handle SIGHUP; the tuning reloads only when the file changes"
        );
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the tuning from the config file");
        reload.store(true, Ordering::Relaxed);
    }
}

fn open_store(state: Option<&Path>) -> anyhow::Result<StateStore> {
    match state {
        Some(dir) => StateStore::open(dir).with_context(|| "opening --state".to_string()),
        None => StateStore::temporary().context("creating a temporary state store"),
    }
}

fn replay_files(
    config: &Config,
    state: Option<&Path>,
    inputs: &[PathBuf],
    print_alerts: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(state)?;
    let metrics = Arc::new(Metrics::new());
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut on_alert = |alert: &trailspike::alert::Alert| {
        if print_alerts {
            writeln!(out, "{}", config.alerts.format.render(alert))?;
        }
        Ok(())
    };
    let report = match replay::run(inputs, config, &store, metrics.clone(), &mut on_alert)
    {
        // The reader of stdout went away (`| head`): stop quietly, as
        // other command-line filters do.
        Err(replay::ReplayError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            return Ok(ExitCode::SUCCESS)
        }
        other => other?,
    };
    out.flush()?;
    eprintln!("{}", summary(&metrics, print_alerts));
    for failure in &report.failures {
        eprintln!("trailspike: {}: {}", failure.path.display(), failure.error);
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn summary(metrics: &Metrics, alerts_printed: bool) -> String {
    let by_reason = |vec, labels: &[&str]| {
        labels
            .iter()
            .map(|label| format!("{label}={}", Metrics::count(vec, label)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let skipped = by_reason(
        &metrics.records_skipped,
        &SkipReason::ALL.map(SkipReason::as_str),
    );
    let bad_input: Vec<&str> = RejectReason::bad_input()
        .map(RejectReason::as_str)
        .collect();
    let rejected = by_reason(&metrics.records_rejected, &bad_input);
    let alerts_word = if alerts_printed {
        "alerts"
    } else {
        "alerts (not emitted: backfill)"
    };
    format!(
        "messages {}\ncounted {}\nlate {}\nskipped {skipped}\nrejected {rejected}\n\
         windows closed {}\n{alerts_word} {}\nsuppressed {}\nbaselines {}\n\
         already in baseline (not applied again) {}",
        metrics.messages_consumed.get(),
        metrics.records_counted.get(),
        metrics.records_late.get(),
        metrics.windows_closed.get(),
        metrics.alerts_produced.get(),
        by_reason(&metrics.alerts_suppressed, &["rule", "throttle", "stale"]),
        metrics.baseline_arns.get(),
        metrics.baseline_updates_skipped.get(),
    )
}

fn generate_records(
    args: &GenerateArgs,
    output: Option<&Path>,
    spikes_out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let generated = match output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = BufWriter::new(file);
            let summary = generate::generate(args, &mut out)?;
            out.flush()?;
            summary
        }
        None => {
            let mut out = BufWriter::new(io::stdout().lock());
            let summary = generate::generate(args, &mut out)?;
            out.flush()?;
            summary
        }
    };
    if let Some(path) = spikes_out {
        let mut text = String::new();
        for spike in &generated.spikes {
            text.push_str(&serde_json::to_string(spike)?);
            text.push('\n');
        }
        std::fs::write(path, text)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "generated {} records ({} bytes), {} spikes injected",
        generated.records,
        generated.bytes,
        generated.spikes.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn baseline(command: BaselineCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        BaselineCommand::Export {
            state,
            from_kafka,
            output,
        } => {
            let stores = match state {
                Some(dir) if !from_kafka => StateStore::open_every(&dir)?,
                _ => changelog::read_all(config)?,
            };
            let rows = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    store::export_csv(&stores, BufWriter::new(file))?
                }
                None => store::export_csv(&stores, io::stdout().lock())?,
            };
            eprintln!("exported {rows} baselines");
        }
        BaselineCommand::Import { state, file } => {
            let stores = StateStore::open_every(&state)?;
            let [store] = stores.as_slice() else {
                anyhow::bail!(
                    "{} holds the partitions of a scaled-out instance; baselines can \
                     be imported only into a single instance's state.dir",
                    state.display()
                );
            };
            let input = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let rows = store
                .import_csv(io::BufReader::new(input), now)
                .with_context(|| format!("importing {}", file.display()))?;
            eprintln!("imported {rows} baselines");
        }
        BaselineCommand::Show { state, arn } => return show_baseline(&state, &arn),
    }
    Ok(ExitCode::SUCCESS)
}

/// `baseline show`: one ARN's baseline, open incident and usual APIs,
/// from whichever of the state directory's stores holds it.
fn show_baseline(state: &Path, arn: &str) -> anyhow::Result<ExitCode> {
    let stores = StateStore::open_every(state)?;
    let mut found = None;
    for store in &stores {
        if let Some(b) = store.baseline(arn)? {
            found = Some((store, b));
            break;
        }
    }
    let Some((store, b)) = found else {
        eprintln!("no baseline for {arn}");
        return Ok(ExitCode::FAILURE);
    };
    println!("arn             {arn}");
    println!("latestCount     {}", b.latest_count);
    println!("numDataPoints   {}", b.num_data_points);
    println!("avgApiCalls     {}", b.avg_api_calls);
    println!("stdevApiCalls   {}", b.stdev_api_calls);
    println!(
        "lastWindow      {}",
        trailspike::alert::rfc3339(b.last_window_start)
    );
    let last_alert = b.last_alert_window_start.map(trailspike::alert::rfc3339);
    println!("lastAlertWindow {}", last_alert.as_deref().unwrap_or("-"));
    let known = store.known_apis(arn)?;
    match store.incident(arn)? {
        Some(incident) => {
            println!(
                "openIncident    since {}, {} spike window(s), peak {} calls",
                trailspike::alert::rfc3339(incident.first_window_start),
                incident.spike_windows,
                incident.peak_api_calls
            );
        }
        None => println!("openIncident    -"),
    }
    println!(
        "usualApis       {} remembered, with the windows each was called in:",
        known.len()
    );
    for api in known.usual(known.len()) {
        println!("  {:<40} {}", api.value, api.count);
    }
    Ok(ExitCode::SUCCESS)
}
